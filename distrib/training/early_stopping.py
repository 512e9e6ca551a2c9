"""Early stopping on the global validation loss, identical on every rank.

`observe` takes the loss of the whole validation split, which the trainer's sharded validation has already
all-reduced (sums and counts), so every rank makes the same decision at the same point of every epoch (a
barrier would not share the decision: Lightning#379).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass


@dataclass
class EarlyStopping:
    patience: int  # 0 disables stopping (the best weights are still tracked)
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    should_stop: bool = False

    def observe(self, epoch: int, global_loss: float) -> bool:
        improved = global_loss < self.best
        if improved:
            self.best, self.best_epoch, self.bad_epochs = global_loss, epoch, 0
        else:
            self.bad_epochs += 1
        self.should_stop = bool(self.patience) and self.bad_epochs >= self.patience
        return improved

    def take_unvalidated(self, epoch: int) -> bool:
        """An epoch with no validation part to judge it (train.refit's second phase): its weights are the run's
        choice, so it counts as the best."""
        self.best_epoch = epoch
        return True

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
