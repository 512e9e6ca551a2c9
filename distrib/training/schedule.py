"""Learning rate: given for a reference batch, scaled to the global batch, then one of two shapes over the
steps (`train.schedule`), stepped once per batch:

- cosine_restarts (the article's): linear warmup (train.warmup_steps, and train.warmup_epochs above the reference
  batch), then cosine annealing with warm restarts, from lr
  down to eta_min_ratio * lr over cycle_epochs epochs' worth of steps, then restart.
- one_cycle (fastai's `fit_one_cycle`, which the collaborative-filtering lesson trains with): over all of
  train.epochs, a cosine warm-up from lr/25 to lr in the first quarter of the steps, then a cosine decay to
  lr/25e4; Adam's beta1 moves the other way, 0.95 -> 0.85 -> 0.95. The constants are torch's OneCycleLR
  defaults with fastai's pct_start of 0.25.

Batch ramp-up (train.batch_ramp_epochs): the global batch of epoch e < ramp is ref_batch_size *
(batch_size / ref_batch_size) ** (e / ramp) (at 32k over 4 epochs: 2k, 4k, 8k, 16k, then 32k), with the lr scaled
to that epoch's batch by the rule; the schedule's shape runs on a clock of fractional epochs measured in the final
batch's steps, so warmup, restarts and one_cycle span the same epochs as without the ramp.

`auto`, the default of train.batch_ramp_epochs and train.warmup_epochs, follows docs/batch_scaling.md: below 4x the
reference batch a fixed batch with 2 warmup epochs, at most 50 steps; from 4x a ramp without warmup. At 4x with 9
steps an epoch the fixed batch fell behind on a seed of ml-latest-small, at 16x no fixed-batch rule kept the
reference's accuracy, and a ramp without warmup did once it doubled the batch no faster than every 2.5 epochs (10
epochs at 16x; with 6 or 8, ml-latest-small's validation RMSE missed the reference's by more than 0.005 on a seed:
its best epoch comes early at any batch, so the ramp's early, smaller batches are the ones that reach the
reference's accuracy).
`resolve_auto` turns `auto` into those numbers once, before training, so a run's config.yaml and checkpoints state
what it ran with; the functions below read `auto` the same way for callers that build a Trainer directly.

For Adam the square-root rule is the usual choice (Malladi et al., arXiv:2205.10287); linear scaling with
warmup (Goyal et al., arXiv:1706.02677) was shown for SGD.
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from distrib.config import TrainConfig
from distrib.parallel import sampler

ONE_CYCLE_PCT_START = 0.25
ONE_CYCLE_DIV = 25.0  # the first lr is the peak over this
ONE_CYCLE_FINAL_DIV = 1e4  # the last lr is the first over this
ONE_CYCLE_BETA1 = (0.95, 0.85)  # at the ends of the cycle, and at the peak lr

AUTO = "auto"
AUTO_RAMP_FROM = 4  # `auto` ramps when the global batch is at least this many times train.ref_batch_size
AUTO_RAMP_EPOCHS_PER_DOUBLING = 2.5  # `auto` ramps the batch by at most 2x every this many epochs
AUTO_WARMUP_EPOCHS = 2.0  # `auto` warmup without a ramp (with one: none) ...
AUTO_WARMUP_MAX_STEPS = 50  # ... and at most this many steps: on large data 2 epochs are thousands of slow steps


def ramp_epochs(cfg: TrainConfig) -> int:
    """train.batch_ramp_epochs, `auto` read as: when the global batch is at least 4x the reference, under the
    article's restarts (where the ramp was measured) and not captured as a CUDA graph (one batch size), 2.5 epochs
    per doubling of the batch, rounded up (4x: 5 epochs, 8x: 8, 16x: 10, 64x: 15); else none."""
    if cfg.batch_ramp_epochs != AUTO:
        return cfg.batch_ramp_epochs
    return auto_ramp_length(cfg) if should_auto_ramp(cfg) and ramp_allowed(cfg) else 0


def auto_ramp_length(cfg: TrainConfig) -> int:
    return math.ceil(AUTO_RAMP_EPOCHS_PER_DOUBLING * math.log2(cfg.batch_size / cfg.ref_batch_size))


def should_auto_ramp(cfg: TrainConfig) -> bool:
    return cfg.batch_size >= AUTO_RAMP_FROM * cfg.ref_batch_size


def ramp_allowed(cfg: TrainConfig) -> bool:
    return cfg.schedule == "cosine_restarts" and not cfg.cuda_graph


def warmup_epochs(cfg: TrainConfig, steps_per_epoch: int | None = None) -> float:
    """train.warmup_epochs, `auto` read as: none under a batch ramp (its first epochs run near the reference
    batch, where the lr is not scaled up), else 2 epochs of `steps_per_epoch` (when given) but at most 50 steps.
    Two epochs are 18 steps at a fixed 4x batch on ml-100k, where the warmup was measured; on ml-25m they are over
    9,000, and the run was still far behind the unwarmed one after them, while 50 steps kept its accuracy
    (docs/batch_scaling.md)."""
    if cfg.warmup_epochs != AUTO:
        return cfg.warmup_epochs
    if ramp_epochs(cfg) and cfg.batch_size > cfg.ref_batch_size:
        return 0.0
    if steps_per_epoch and AUTO_WARMUP_EPOCHS * steps_per_epoch > AUTO_WARMUP_MAX_STEPS:
        return AUTO_WARMUP_MAX_STEPS / steps_per_epoch
    return AUTO_WARMUP_EPOCHS


def resolve_auto(cfg: TrainConfig, saved: dict | None = None, n_train: int | None = None) -> TrainConfig:
    """cfg with its `auto` keys as numbers. `saved`: the train section of the run being resumed, which states what
    it ran with; its numbers are kept (a key it lacks was written by a version without that key: 0, which is
    what that version ran). Without `saved`, the rule above for this global batch and `n_train` training ratings
    (the warmup's cap in steps). Explicit values stay."""
    per_epoch = sampler.steps_per_epoch(n_train, cfg.batch_size) if n_train else None
    rules = (("batch_ramp_epochs", ramp_epochs, int),
             ("warmup_epochs", lambda c: warmup_epochs(c, per_epoch), float))
    resolved = cfg
    for key, rule, number in rules:
        if getattr(cfg, key) != AUTO:
            continue
        value = AUTO if saved is None else saved.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, (int, float)):  # auto (or not a number): the rule
            value = rule(resolved)
        resolved = dataclasses.replace(resolved, **{key: number(value)})
    return resolved


def describe_ramp(requested: TrainConfig, resolved: TrainConfig) -> str:
    """For the run's header: the batch ramp in effect and why (`requested`: the keys as the user gave them,
    `resolved`: as the run trains), or why `auto` chose none for a batch of 4x the reference or more; else ""."""
    ratio = f"{resolved.batch_size / resolved.ref_batch_size:.3g}x train.ref_batch_size"
    ramp = ramp_epochs(resolved) if resolved.batch_size > resolved.ref_batch_size else 0
    auto, kept = requested.batch_ramp_epochs == AUTO, ramp_epochs(requested) != ramp
    if ramp:
        why = (f"train.batch_ramp_epochs={ramp}" if not auto else "as the run being resumed started" if kept else
               f"train.batch_ramp_epochs=auto: the global batch is {ratio}, at least {AUTO_RAMP_FROM}x, where a fixed "
               f"batch lost accuracy; {AUTO_RAMP_EPOCHS_PER_DOUBLING:g} epochs per doubling of the batch "
               "(docs/batch_scaling.md); train.batch_ramp_epochs=0 turns it off")
        warmup = warmup_epochs(resolved)
        return (f"batch ramp: {resolved.ref_batch_size:,} to {resolved.batch_size:,} over the first "
                f"{ramp} epochs, lr {scaled_lr(resolved, resolved.ref_batch_size):.3g} to {scaled_lr(resolved):.3g}, "
                f"{f'{warmup:g} warmup epochs' if warmup else 'no warmup'} ({why})")
    if not (auto and should_auto_ramp(resolved)):
        return ""
    why = ("train.cuda_graph captures one batch size" if resolved.cuda_graph else
           f"train.schedule={resolved.schedule} (the ramp was measured with cosine_restarts)"
           if not ramp_allowed(resolved) else "the run being resumed started without one")
    return f"no batch ramp at {ratio} (train.batch_ramp_epochs=auto): {why}"


def scaled_lr(cfg: TrainConfig, batch: int | None = None) -> float:
    """train.lr scaled from the reference batch to `batch` (default: train.batch_size) by train.lr_scaling."""
    ratio = (batch or cfg.batch_size) / cfg.ref_batch_size
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]
    return cfg.lr * factor


def batch_at(cfg: TrainConfig, epoch: int) -> int:
    """The global batch of `epoch` (0-based): train.batch_size, or on the ramp a geometric step towards it."""
    ramp = ramp_epochs(cfg)
    if not ramp or epoch >= ramp or cfg.batch_size <= cfg.ref_batch_size:
        return cfg.batch_size
    return round(cfg.ref_batch_size * (cfg.batch_size / cfg.ref_batch_size) ** (epoch / ramp))


def ramp_position(step: int, cfg: TrainConfig, n_train: int) -> tuple[int, float]:
    """(epoch, position on the schedule's clock) of global step `step`: the position counts the final batch's steps,
    fractional inside a ramp epoch, and equals `step` when there is no ramp."""
    final = n_train // cfg.batch_size
    ramp = ramp_epochs(cfg) if cfg.batch_size > cfg.ref_batch_size else 0
    done = 0  # steps of the ramp's epochs before `epoch`
    for epoch in range(ramp):
        steps = n_train // batch_at(cfg, epoch)
        if step < done + steps:
            return epoch, final * (epoch + (step - done) / steps)
        done += steps
    return ramp + (step - done) // max(final, 1), float(final * ramp + step - done)


def warmup_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """Steps of linear warmup: train.warmup_steps, plus train.warmup_epochs of this batch's steps when the global
    batch exceeds train.ref_batch_size. Warmup protects an lr scaled up for a larger batch (Goyal et al.); at or
    below the reference batch the lr is not scaled up and the article's schedule runs unchanged."""
    epochs = warmup_epochs(cfg, steps_per_epoch) if cfg.batch_size > cfg.ref_batch_size else 0.0
    return cfg.warmup_steps + round(epochs * steps_per_epoch)


def lr_factor(step: float, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the scaled peak lr at global step `step` (0-based)."""
    if cfg.schedule == "one_cycle":
        first, last = 1 / ONE_CYCLE_DIV, 1 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV)
        return _one_cycle(step, cfg.epochs * steps_per_epoch, (first, 1.0, last))
    warmup = warmup_steps(cfg, steps_per_epoch)
    if warmup and step < warmup:
        return (step + 1) / warmup
    t = step - warmup
    t_max = max(1, round(cfg.cycle_epochs * steps_per_epoch))
    cosine = (1 + math.cos(math.pi * (t % t_max) / t_max)) / 2
    return cfg.eta_min_ratio + (1 - cfg.eta_min_ratio) * cosine


def beta1_at(step: float, cfg: TrainConfig, steps_per_epoch: int) -> float | None:
    """Adam's beta1 at `step` under one_cycle; None where the schedule leaves train.betas alone."""
    if cfg.schedule != "one_cycle":
        return None
    outer, inner = ONE_CYCLE_BETA1
    return _one_cycle(step, cfg.epochs * steps_per_epoch, (outer, inner, outer))


def _one_cycle(step: int, total_steps: int, values: tuple[float, float, float]) -> float:
    """Cosine from values[0] to values[1] over the first ONE_CYCLE_PCT_START of the steps, then to values[2]."""
    start, peak, end = values
    peak_step = max(1.0, ONE_CYCLE_PCT_START * total_steps - 1)
    if step <= peak_step:
        return _cosine(start, peak, step / peak_step)
    return _cosine(peak, end, min(1.0, (step - peak_step) / max(1.0, total_steps - 1 - peak_step)))


def _cosine(start: float, end: float, fraction: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * fraction)) / 2


def lr_at(step: int, cfg: TrainConfig, steps_per_epoch: int, n_train: int) -> tuple[float, float | None]:
    """(lr, beta1 or None) at global step `step`: the rule's peak at this epoch's batch times the schedule's shape."""
    peak, clock = scaled_lr(cfg), float(step)
    if ramp_epochs(cfg):
        epoch, clock = ramp_position(step, cfg, n_train)
        peak = scaled_lr(cfg, batch_at(cfg, epoch))
    return peak * lr_factor(clock, cfg, steps_per_epoch), beta1_at(clock, cfg, steps_per_epoch)


class StepSchedule:
    """Sets each param group's lr (and beta1, under one_cycle) for the coming step from the step count alone, so
    a resumed run continues the same curve. state_dict holds just that count."""

    def __init__(self, optimizer, cfg: TrainConfig, steps_per_epoch: int, n_train: int | None = None):
        self.optimizer, self.cfg, self.steps_per_epoch = optimizer, cfg, steps_per_epoch
        self.n_train = n_train if n_train is not None else steps_per_epoch * cfg.batch_size
        self.peak_lr = scaled_lr(cfg)  # at train.batch_size (the ramp's epochs scale from their own batch)
        self.last_step = 0
        self._apply()

    def step(self) -> None:
        self.last_step += 1
        self._apply()

    def _apply(self) -> None:
        lr, beta1 = lr_at(self.last_step, self.cfg, self.steps_per_epoch, self.n_train)
        for group in self.optimizer.param_groups:
            if isinstance(group["lr"], torch.Tensor):  # a captured step reads its lr from the device
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr
            if beta1 is not None:
                group["betas"] = (beta1, group["betas"][1])

    def state_dict(self) -> dict:
        return {"last_step": self.last_step}

    def load_state_dict(self, state: dict) -> None:
        # last_epoch: checkpoints written before this class, by torch's LambdaLR (it counts steps the same way)
        self.last_step = int(state["last_step"] if "last_step" in state else state["last_epoch"])
        self._apply()


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int, n_train: int | None = None) -> StepSchedule:
    """n_train: the training ratings, which the ramp's epochs divide by their batch (needed with a ramp)."""
    return StepSchedule(optimizer, cfg, steps_per_epoch, n_train)


def schedule_curve(train_cfg, steps_per_epoch: int, total_steps: int,
                   n_train: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The learning rate the trainer's scheduler gives at each step (`train_cfg` is the TrainConfig; n_train, the
    training ratings, places the steps of a batch ramp)."""
    steps = np.arange(max(1, total_steps))
    n = n_train if n_train is not None else steps_per_epoch * train_cfg.batch_size
    return steps, np.array([lr_at(int(s), train_cfg, steps_per_epoch, n)[0] for s in steps])
