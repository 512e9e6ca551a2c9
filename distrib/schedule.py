"""Learning rate: given for a reference batch, scaled to the global batch, optional linear warmup, then the
article's cosine annealing with warm restarts (from lr down to eta_min_ratio * lr over cycle_epochs
epochs' worth of steps, then restart), stepped once per batch.

For Adam the square-root rule is the usual choice (Malladi et al., arXiv:2205.10287); linear scaling with
warmup (Goyal et al., arXiv:1706.02677) was shown for SGD.
"""
from __future__ import annotations

import math

from distrib.config import TrainConfig


def scaled_lr(cfg: TrainConfig) -> float:
    ratio = cfg.batch_size / cfg.ref_batch_size
    factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "none": 1.0}[cfg.lr_scaling]
    return cfg.lr * factor


def lr_factor(step: int, cfg: TrainConfig, steps_per_epoch: int) -> float:
    """Multiplier of the scaled peak lr at global step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    t = step - cfg.warmup_steps
    t_max = max(1, round(cfg.cycle_epochs * steps_per_epoch))
    cosine = (1 + math.cos(math.pi * (t % t_max) / t_max)) / 2
    return cfg.eta_min_ratio + (1 - cfg.eta_min_ratio) * cosine


def build_scheduler(optimizer, cfg: TrainConfig, steps_per_epoch: int):
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg, steps_per_epoch))
