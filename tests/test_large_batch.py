"""The large-batch tools beyond the LR rules: LAMB's layer-wise trust ratio (train.optimizer=lamb) and the batch
ramp-up (train.batch_ramp_epochs)."""
from __future__ import annotations

import math

import pytest
import torch

from distrib.config import TrainConfig, load_config
from distrib.errors import UserError
from distrib.training.lamb import EPS, Lamb
from distrib.training.schedule import batch_at, build_scheduler, lr_factor, ramp_position, scaled_lr, schedule_curve
from tests.helpers import check_ok, metrics, tiny, train_cli, weights


def test_lamb_step_is_adams_step_scaled_to_lr_times_the_tensors_norm():
    w0 = torch.tensor([3.0, -4.0])  # norm 5
    g = torch.tensor([0.5, 2.0])
    p = torch.nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.999), weight_decay=0.01)
    p.grad = g.clone()
    opt.step()
    adam = g / (g.abs() + EPS)  # the first bias-corrected step: m_hat = g, v_hat = g^2
    update = adam + 0.01 * w0
    expected = w0 - 0.1 * w0.norm() / update.norm() * update
    assert torch.allclose(p.detach(), expected, rtol=1e-6)
    assert (p.detach() - w0).norm().item() == pytest.approx(0.1 * 5.0, rel=1e-6)  # lr times ||w||


def test_lamb_moves_every_tensor_by_the_same_share_of_its_norm_and_zero_tensors_like_adamw():
    big, small = torch.nn.Parameter(torch.full((10,), 100.0)), torch.nn.Parameter(torch.full((3,), 0.01))
    zero = torch.nn.Parameter(torch.zeros(4))
    opt = Lamb([big, small, zero], lr=0.05)
    before = [t.detach().clone() for t in (big, small, zero)]
    for t, scale in ((big, 1e-3), (small, 1e3), (zero, 1.0)):
        t.grad = torch.linspace(1, 2, t.numel()) * scale
    opt.step()
    for t, b in zip((big, small), before):
        assert ((t.detach() - b).norm() / b.norm()).item() == pytest.approx(0.05, rel=1e-5)
    assert torch.allclose(zero.detach(), -0.05 * torch.ones(4), rtol=1e-5)  # ratio 1: adam's first step, sign(g)


def test_batch_ramp_grows_the_batch_geometrically_and_scales_the_lr_by_the_rule():
    cfg = TrainConfig(batch_size=32000, batch_ramp_epochs=4, warmup_epochs=0, cycle_epochs=100, eta_min_ratio=1.0)
    assert [batch_at(cfg, e) for e in range(6)] == [2000, 4000, 8000, 16000, 32000, 32000]
    assert batch_at(TrainConfig(batch_size=1000, batch_ramp_epochs=4), 0) == 1000  # at or below the reference: off
    n = 72000  # steps per epoch: 36, 18, 9, 4, then 2
    assert [ramp_position(s, cfg, n)[0] for s in (0, 35, 36, 53, 54, 62, 63, 66, 67, 68, 69)] == \
        [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5]
    assert ramp_position(36, cfg, n)[1] == 2.0 and ramp_position(67, cfg, n)[1] == 8.0  # epoch starts: 2 per epoch
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, n // 32000, n)
    lrs = []
    for _ in range(70):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    # sqrt rule at each epoch's batch (a flat schedule here): 1e-3 x 1, sqrt 2, 2, sqrt 8, 4
    assert [lrs[s] for s in (0, 36, 54, 63, 67, 69)] == pytest.approx(
        [1e-3, 1e-3 * math.sqrt(2), 2e-3, 1e-3 * math.sqrt(8), 4e-3, 4e-3])
    assert list(schedule_curve(cfg, n // 32000, 70, n)[1]) == lrs  # the run's lr plot draws the same curve


def test_without_a_ramp_the_schedule_is_unchanged():
    cfg = TrainConfig(batch_size=6000, warmup_epochs=1.0)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, cfg, 12, 72000)
    for step in range(40):
        assert opt.param_groups[0]["lr"] == scaled_lr(cfg) * lr_factor(step, cfg, 12)
        sched.step()


@pytest.mark.parametrize("overrides, message", [
    (["train.cuda_graph=true", "train.batch_ramp_epochs=2"], "train.batch_ramp_epochs"),
    (["train.cuda_graph=true", "train.optimizer=lamb"], "train.optimizer=lamb"),
])
def test_what_a_captured_step_cannot_do_is_refused_at_start(overrides, message):
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


@pytest.mark.slow
def test_lamb_with_a_ramp_trains_and_resumes_mid_ramp_exactly(tmp_path):
    """12000 ratings (8640 for training), batch 250 -> 2000 over 3 epochs: 34, 17, 8, then 4 steps per epoch. A run
    stopped after epoch 2 and resumed ends with the uninterrupted run's weights."""
    args = ["train.optimizer=lamb", "train.lr=0.01", "train.batch_size=2000", "train.ref_batch_size=250",
            "train.batch_ramp_epochs=3", "train.patience=0"]
    check_ok(train_cli(tiny(tmp_path, "straight", *args, "train.epochs=4"), timeout=120))
    check_ok(train_cli(tiny(tmp_path, "resumed", *args, "train.epochs=2"), timeout=120))
    check_ok(train_cli(tiny(tmp_path, "resumed", *args, "train.epochs=4"), timeout=120))
    rows = metrics(tmp_path / "straight")
    assert [r["step"] for r in rows] == [34, 51, 59, 63]
    assert rows[-1]["val_rmse"] < rows[0]["val_rmse"]
    assert [r["train_loss"] for r in metrics(tmp_path / "resumed")] == [r["train_loss"] for r in rows]
    wa, wb = weights(tmp_path / "straight/checkpoints/last.pt"), weights(tmp_path / "resumed/checkpoints/last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
