"""Per-step progress on rank 0, in the form its output can show.

On a terminal, a tqdm bar (on stderr). Where the log is not a terminal (a SLURM output file, nohup, `| tee`),
a short line every `train.log_every_s` seconds of the epoch, so a long epoch shows that the job is alive, how
far it is and when the epoch will end:

    epoch 3/20: step 1200/12500 (10%) - 6412 samples/s - loss 0.8123 - 3m07s, ETA 29m22s

The loss is the running mean of rank 0's share of the epoch so far (other ranks are not asked: a collective
at a time only rank 0's clock chose would hang them). It lives on the device and is read only when a line
is due, so the hot loop gains no host sync per step. Carriage returns never reach a log file.
"""
from __future__ import annotations

import logging
import sys
import time

import torch
from tqdm import tqdm

log = logging.getLogger("distrib")


def _is_terminal(stream) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def format_duration(seconds: float) -> str:
    """`42s`, `3m07s`, `2h05m`: short enough for a log line."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def elapsed_and_eta(elapsed_s: float, done: int, total: int) -> str:
    """`1m05s, ETA 3m09s`: the time so far, and the time the rest of `total` takes at the pace of `done`."""
    eta_s = elapsed_s / done * (total - done) if done else 0.0
    return f"{format_duration(elapsed_s)}, ETA {format_duration(eta_s)}"


class LineTimer:
    """When the next progress line of a long pass is due: `every_s` seconds after the previous one (the first
    `every_s` after the start; 0: at every call), on `clock`. Training's epochs and the ranking pass of
    distrib.evaluate print their lines by it."""

    def __init__(self, every_s: float, clock=time.monotonic):
        self.every_s, self._clock = every_s, clock
        self._started = clock()
        self._next_line_at = self._started + every_s

    def due(self) -> float | None:
        """The seconds since the start when a line is due now (the next one then waits every_s), else None."""
        now = self._clock()
        if now < self._next_line_at:
            return None
        self._next_line_at = now + self.every_s
        return now - self._started


def progress_line(epoch: int, epochs: int, step: int, steps: int, samples_per_s: float, loss: float,
                  elapsed_s: float) -> str:
    """One log line of an epoch in progress; `epoch` counts from 1."""
    return (f"epoch {epoch}/{epochs}: step {step}/{steps} ({100 * step // max(steps, 1)}%) - "
            f"{samples_per_s:.0f} samples/s - loss {loss:.4f} - {elapsed_and_eta(elapsed_s, step, steps)}")


class EpochProgress:
    """`update` once per step; `close` at the epoch's end.

    enabled: rank 0 (the others show nothing); steps: the epoch's steps; epoch, epochs: for the label;
    samples_per_step: the global batch; log_every_s: seconds between log lines where the log is not a
    terminal (0: none); log_stream: where the log goes (the trainer's logger writes to stdout)."""

    def __init__(self, enabled: bool, steps: int, epoch: int, epochs: int, samples_per_step: int = 0,
                 log_every_s: float = 0.0, log_stream=None, clock=time.monotonic):
        self.steps, self.epoch, self.epochs, self.samples_per_step = steps, epoch, epochs, samples_per_step
        self.step = 0
        self.ratings = 0  # predictions in the running loss
        # disable=None: tqdm draws only when its file is a terminal
        self._bar = tqdm(total=steps, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True, file=sys.stderr,
                         disable=None if enabled else True)
        log_to_file = not _is_terminal(sys.stdout if log_stream is None else log_stream)
        self.log_every_s = log_every_s if enabled and log_to_file else 0.0
        self._timer = LineTimer(self.log_every_s, clock)

    def update(self, loss_sum: torch.Tensor | None = None, step_ratings: int = 0) -> None:
        """One step done. loss_sum: this rank's summed squared error of the epoch so far (on its device,
        read only when a line is due); step_ratings: the predictions this step added to it."""
        self.step += 1
        self.ratings += step_ratings
        self._bar.update()
        if not self.log_every_s:
            return
        elapsed_s = self._timer.due()
        if elapsed_s is None:
            return
        loss = float(loss_sum.item()) / max(self.ratings, 1) if loss_sum is not None else float("nan")
        rate = self.step * self.samples_per_step / elapsed_s if elapsed_s > 0 else 0.0
        log.info(progress_line(self.epoch, self.epochs, self.step, self.steps, rate, loss, elapsed_s))

    def close(self) -> None:
        self._bar.close()
