import math

import pytest
import torch

from distrib.config import TrainConfig
from distrib.training.schedule import build_scheduler, lr_factor, scaled_lr


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


def test_one_cycle_matches_torchs_one_cycle_lr_with_its_momentum():
    """train.schedule=one_cycle follows torch's OneCycleLR (pct_start 0.25, the rest its defaults) step for step,
    lr and Adam's beta1 both, over train.epochs * steps_per_epoch steps."""
    cfg = TrainConfig(lr=5e-3, lr_scaling="none", schedule="one_cycle", epochs=5, betas=[0.9, 0.99])
    steps_per_epoch, total = 20, 100
    ours_param, ref_param = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    ours_opt = torch.optim.AdamW([ours_param], lr=scaled_lr(cfg), betas=(0.9, 0.99))
    ref_opt = torch.optim.AdamW([ref_param], lr=scaled_lr(cfg), betas=(0.9, 0.99))
    ours = build_scheduler(ours_opt, cfg, steps_per_epoch)
    ref = torch.optim.lr_scheduler.OneCycleLR(ref_opt, max_lr=5e-3, total_steps=total, pct_start=0.25)
    for step in range(total):
        for key in ("lr", "betas"):
            assert ours_opt.param_groups[0][key] == pytest.approx(ref_opt.param_groups[0][key], rel=1e-9)
        ours_opt.step()
        ref_opt.step()
        ours.step()
        if step < total - 1:  # OneCycleLR refuses a step past total_steps
            ref.step()
    assert ours_opt.param_groups[0]["betas"][1] == 0.99  # beta2 is left alone


def test_scheduler_resumes_from_its_state_and_from_lambda_lr_checkpoints():
    cfg = TrainConfig(lr=1e-3, cycle_epochs=1)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=scaled_lr(cfg))
    sched = build_scheduler(opt, cfg, steps_per_epoch=10)
    for _ in range(7):
        sched.step()
    expected = opt.param_groups[0]["lr"]
    for state in (sched.state_dict(), {"last_epoch": 7, "base_lrs": [1e-3], "_step_count": 8}):  # the latter: LambdaLR's
        fresh_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=scaled_lr(cfg))
        fresh = build_scheduler(fresh_opt, cfg, steps_per_epoch=10)
        fresh.load_state_dict(state)
        assert fresh_opt.param_groups[0]["lr"] == pytest.approx(expected) and expected < 1e-3
