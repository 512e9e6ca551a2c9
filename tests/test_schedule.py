import math

import pytest
import torch

from distrib.config import TrainConfig
from distrib.schedule import build_scheduler, lr_factor, scaled_lr


def test_lr_scaling_rules():
    assert scaled_lr(TrainConfig(lr=1e-3, batch_size=8000, ref_batch_size=2000, lr_scaling="linear")) == pytest.approx(4e-3)
    assert scaled_lr(TrainConfig(lr=1e-3, batch_size=8000, ref_batch_size=2000, lr_scaling="sqrt")) == pytest.approx(2e-3)
    assert scaled_lr(TrainConfig(lr=1e-3, batch_size=8000, ref_batch_size=2000, lr_scaling="none")) == pytest.approx(1e-3)


def test_cosine_restarts_every_cycle_like_the_article():
    cfg = TrainConfig(cycle_epochs=2, eta_min_ratio=0.1)
    steps = 50  # per epoch -> t_max = 100
    values = [lr_factor(s, cfg, steps) for s in range(300)]
    assert values[0] == pytest.approx(1.0)
    assert values[50] == pytest.approx(0.1 + 0.9 * (1 + math.cos(math.pi / 2)) / 2)
    assert min(values) >= 0.1
    assert values[100] == pytest.approx(1.0) and values[200] == pytest.approx(1.0)  # restarts
    assert values[99] < 0.11


def test_warmup_then_cosine():
    cfg = TrainConfig(warmup_steps=10, cycle_epochs=1)
    assert lr_factor(0, cfg, 100) == pytest.approx(0.1)
    assert lr_factor(9, cfg, 100) == pytest.approx(1.0)
    assert lr_factor(10, cfg, 100) == pytest.approx(1.0)


def test_scheduler_drives_the_optimizer_per_step():
    param = torch.nn.Parameter(torch.zeros(1))
    cfg = TrainConfig(lr=1e-3, cycle_epochs=1)
    opt = torch.optim.Adam([param], lr=scaled_lr(cfg))
    sched = build_scheduler(opt, cfg, steps_per_epoch=4)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(1e-3) and seen[4] == pytest.approx(1e-3) and seen[3] < seen[2]
