"""End of a run on rank 0: pictures into run.dir/plots and W&B, the movie-embedding table, the summary
(with the titles at both ends of the first principal components) and the best model as an artifact."""
from __future__ import annotations

import logging

from distrib.report.analysis import movie_counts
from distrib.report.plots import write_run_plots

log = logging.getLogger("distrib")


def finish_run(trainer, tracker, summary: dict) -> None:
    data, step = trainer.data, trainer.progress.step
    steps, lrs = trainer.lr_curve()
    counts = movie_counts(data.n_items, data.train.items)
    # sharded tables (distrib.training.sharded_trainer): the whole model, gathered to rank 0
    model = trainer.model if getattr(trainer, "report_model", None) is None else trainer.report_model
    vectors = model.item_vectors().detach().float().cpu().numpy()
    titles = data.titles or [str(raw) for raw in data.item_ids]
    images, ends = write_run_plots(trainer.run.plots, trainer.metrics, steps, lrs, vectors, titles, counts)
    tracker.log_images(step, images)
    tracker.log_table_embeddings(step, vectors, titles, data.genres, counts=counts)
    for component, sides in ends.items():
        log.info("PCA %s: low end %s | high end %s", component, "; ".join(sides["low"][:3]),
                 "; ".join(sides["high"][:3]))
    tracker.set_summary(summary | {f"pca/{k}_{side}": ", ".join(v[side][:5])
                                   for k, v in ends.items() for side in ("low", "high")})
    best = trainer.run.checkpoints / "best.pt"
    best = best if best.exists() else trainer.run.checkpoints / "best.dcp"  # a sharded run's (a directory)
    if best.exists():
        tracker.log_artifact(best, name="model", type="model")
