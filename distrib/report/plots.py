"""Pictures of a run, written as PNGs into `run_dir/plots/` (matplotlib's Agg backend: no display needed):
learning curves from metrics.jsonl, the learning-rate schedule with its warm restarts, and the article's
bonus, a PCA of the movie embeddings with the titles at both ends of the first components. The numbers
drawn come from `distrib.report.analysis`; this module only draws.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from distrib.report.analysis import PCA_COMPONENTS, PCA_SHOW, PCA_TOP_MOVIES, find_restarts, pca_ends

DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def last_row_per_epoch(rows: list[dict]) -> list[dict]:
    """A resumed run may have written an epoch twice; the later row is the one that counted."""
    by_epoch = {int(row["epoch"]): row for row in rows if "epoch" in row}
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_learning_curves(rows: list[dict], path: Path) -> Path:
    """Train and val loss (left) and val RMSE/MAE (right) per epoch, from metrics.jsonl rows (keys
    epoch (from 1, as the trainer writes it and the console prints it), train_loss, val_loss, val_rmse, val_mae)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = last_row_per_epoch(rows)
    epochs = [int(r["epoch"]) for r in rows]
    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys in ((loss_ax, ("train_loss", "val_loss")), (err_ax, ("val_rmse", "val_mae"))):
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    loss_ax.set_title("loss (MSE)")
    err_ax.set_title("validation error")
    best = [(r["val_rmse"], e) for e, r in zip(epochs, rows) if r.get("val_rmse") is not None]
    if best:
        rmse, epoch = min(best)
        err_ax.axvline(epoch, color="grey", linestyle=":", label=f"best {rmse:.4f}")
        err_ax.legend()
    return _save(fig, path)


def lr_figure(steps, lrs):
    """The schedule's figure, kept separate so tests can read the plotted line back."""
    plt = _pyplot()
    steps, lrs = np.asarray(steps), np.asarray(lrs, dtype=float)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(steps, lrs, linewidth=1.2)
    for i in find_restarts(lrs):
        ax.axvline(steps[i], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    restarts = len(find_restarts(lrs))  # none under train.schedule=one_cycle: then the title does not count them
    ax.set_title(f"learning-rate schedule ({restarts} warm restarts)" if restarts else "learning-rate schedule")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return fig


def plot_lr_schedule(steps, lrs, path: Path) -> list[int]:
    """The learning rate over steps with each warm restart marked; returns the restart steps."""
    _save(lr_figure(steps, lrs), path)
    return [int(np.asarray(steps)[i]) for i in find_restarts(lrs)]


def plot_embedding_pca(vectors: np.ndarray, titles: list[str], counts: np.ndarray, path: Path,
                       n_components: int = PCA_COMPONENTS, top_k_movies: int = PCA_TOP_MOVIES,
                       n_show: int = PCA_SHOW) -> dict:
    """The PCA of `distrib.report.analysis.pca_ends`, one row of bar charts per component: the titles with the
    lowest and the highest scores. Returns pca_ends' dict."""
    plt = _pyplot()
    ends = pca_ends(vectors, titles, counts, n_components, top_k_movies, n_show)
    show = len(next(iter(ends.values()))["low"]) if ends else 0
    fig, axes = plt.subplots(max(len(ends), 1), 2, figsize=(12, 2.4 + 0.28 * show * len(ends)), squeeze=False)
    for c, sides in enumerate(ends.values()):
        for ax, side, color in ((axes[c, 0], "low", "tab:blue"), (axes[c, 1], "high", "tab:red")):
            names, scores = sides[side], sides[f"{side}_scores"]
            ax.barh(range(len(names)), scores, color=color)
            ax.set_yticks(range(len(names)), [_short(name) for name in names], fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"PC{c + 1} ({sides['explained_variance']:.1%} of variance): {side} end", fontsize=9)
    fig.suptitle(f"PCA of movie embeddings, {min(top_k_movies, len(vectors))} most-rated movies")
    fig.tight_layout()
    _save(fig, path)
    return ends


def _short(title: str, width: int = 40) -> str:
    return title if len(title) <= width else title[: width - 1] + "…"


def write_run_plots(plots_dir: Path, rows: list[dict], lr_steps=None, lrs=None, vectors=None, titles=None,
                    counts=None) -> tuple[dict, dict]:
    """Every picture of a finished run into `plots_dir`: ({"plots/<name>": png path}, PCA ends or {}).
    Pass what exists: metrics rows always; the LR curve and the movie embeddings when available."""
    plots_dir = Path(plots_dir)
    images = {"plots/learning_curves": plot_learning_curves(rows, plots_dir / "learning_curves.png")}
    if lrs is not None and len(lrs):
        plot_lr_schedule(lr_steps if lr_steps is not None else np.arange(len(lrs)), lrs, plots_dir / "lr_schedule.png")
        images["plots/lr_schedule"] = plots_dir / "lr_schedule.png"
    ends: dict = {}
    if vectors is not None and len(vectors) >= 2:
        titles = list(titles) if titles is not None else [f"item {i}" for i in range(len(vectors))]
        counts = np.ones(len(vectors)) if counts is None else counts
        ends = plot_embedding_pca(vectors, titles, counts, plots_dir / "embedding_pca.png")
        images["plots/embedding_pca"] = plots_dir / "embedding_pca.png"
    return images, ends
