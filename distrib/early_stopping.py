"""Early stopping on the global validation loss, identical on every rank.

Each rank contributes its local sum and count; one all-reduce gives the global loss, so every rank makes
the same decision at the same point of every epoch (a barrier would not share the decision: Lightning#379).
gloo lacks ReduceOp.AVG before 2025, so SUM is used and divided here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist


@dataclass
class EarlyStopping:
    patience: int  # 0 disables stopping (the best weights are still tracked)
    best: float = math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    should_stop: bool = False

    def update(self, epoch: int, local_loss_sum: float, local_count: float, device="cpu") -> bool:
        """Record one epoch's validation result; return True if it is the new best."""
        totals = torch.tensor([local_loss_sum, local_count], dtype=torch.float64, device=device)
        if dist.is_initialized():
            dist.all_reduce(totals, op=dist.ReduceOp.SUM)
        loss = (totals[0] / totals[1].clamp_min(1)).item()
        return self.observe(epoch, loss)

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
