"""Stop every rank at the same step when any rank's loss turns NaN or Inf, before anything is saved.

Each step records, on the device and without a host sync, the first step whose local loss was not finite.
At the loop's existing sync points (every log_every_steps, and the epoch's end) the ranks all-gather that
record, so all of them see the same verdict at the same step and raise the same error naming step and rank.
DISTRIB_FAULT_NAN="RANK:STEP" poisons one rank's loss at one global step: the fault tests use it.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from distrib.errors import JobError


class DivergenceGuard:
    def __init__(self, rank: int, device: torch.device):
        self.rank = rank
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        fault = os.environ.get("DISTRIB_FAULT_NAN", "")
        fault_rank, _, fault_step = fault.partition(":")
        self.fault_step = int(fault_step) if fault and int(fault_rank) == rank else None

    def observe(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        if step == self.fault_step:
            loss = loss * float("nan")
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad < 0)
        self.first_bad = torch.where(bad, torch.full_like(self.first_bad, step), self.first_bad)
        return loss

    def check(self) -> None:
        """A collective: every rank must call it at the same point."""
        records = [self.first_bad.clone()]
        if dist.is_initialized():
            records = [torch.empty_like(self.first_bad) for _ in range(dist.get_world_size())]
            dist.all_gather(records, self.first_bad)
        bad = [(int(step), rank) for rank, step in enumerate(records) if int(step) >= 0]
        if bad:
            raise Diverged(*min(bad))


class Diverged(JobError):
    """The loss turned NaN or Inf: where, and (once `explained` by whoever knows run.dir) what is on disk and
    which fixes apply."""

    def __init__(self, step: int, rank: int, advice: str = ""):
        self.step, self.rank = step, rank
        super().__init__(f"loss became NaN or Inf at step {step} on rank {rank}; stopped all ranks there, before "
                         f"anything of this epoch was saved{'. ' + advice if advice else ''}")

    def explained(self, checkpoints: list[str], precision: str) -> Diverged:
        """`checkpoints`: the names of the run's saved checkpoints; `precision`: what this run computed in.
        train.lr identifies a run (it may not change on resume), train.precision may change."""
        fp32 = precision != "fp32"
        if checkpoints:
            fixes = ["resume with train.precision=fp32"] if fp32 else []
            fixes.append("start a new run.dir with a lower train.lr (train.lr cannot change on resume)")
            verb = "are" if len(checkpoints) > 1 else "is"
            advice = f"{' and '.join(checkpoints)} {verb} from before it: {', or '.join(fixes)}"
        else:
            advice = ("no checkpoint was saved yet: start again with a lower train.lr"
                      + (" or train.precision=fp32" if fp32 else ""))
        return Diverged(self.step, self.rank, advice)
