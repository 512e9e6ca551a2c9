"""End of a run on rank 0: pictures into run.dir/plots and W&B, the summary, the best model as an artifact."""
from __future__ import annotations

import logging

log = logging.getLogger("distrib")


def finish_run(trainer, tracker, summary: dict) -> None:
    tracker.set_summary(summary)
    best = trainer.run.checkpoints / "best.pt"
    if best.exists():
        tracker.log_artifact(best, name="model", type="model")
