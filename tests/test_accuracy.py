"""Real-data accuracy: the shipped ml-100k configuration, cut to a few epochs, on the canonical split u1.

The data directory is the session's data_root (DISTRIB_TEST_DATA, holding ml-100k/): without it the tests
skip locally and fail in CI, so CI cannot pass by not running them.
The bound is loose (the full run reaches about 0.896, README "Accuracy"): it catches a model, sampler or
split that stopped learning, within well under a minute of one CPU thread.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import check_ok, clean_env, metrics, summary, train_cli

pytestmark = pytest.mark.slow  # every test here launches processes or trains

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 3  # validation RMSE after epochs 1-3: 1.001, 0.981, 0.952 (0.918 after 6, at twice the time)
RMSE_BOUND = 1.0


def test_shipped_ml100k_config_learns_u1_within_a_few_epochs(data_root, tmp_path):
    root = data_root
    run_dir = tmp_path / "run"
    proc = check_ok(train_cli([str(REPO / "configs/ml-100k.yaml"), f"data.root={root}",
                               f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={run_dir}",
                               f"train.epochs={EPOCHS}", "train.log_every_steps=1000"], env=clean_env(1), timeout=240))
    top, refit = summary(run_dir), summary(run_dir / "refit")
    result = top["phase1"]  # the top level is the shipped (refit) model's, the first phase's sits beside it
    assert top["test_rmse"] == refit["test_rmse"] and top["final_model"] == "refit"
    assert "ml-100k u1" in proc.stdout
    assert "test_rmse" not in result, result  # the first phase never reads the test part
    assert result["best_val_rmse"] < RMSE_BOUND, result
    # the shipped config refits on all of u1.base (80,000 ratings) for the validated epoch count
    assert "train 80000 / val 0 / test 20000" in proc.stdout
    assert refit["epochs_run"] == result["best_epoch"] and refit["test_rmse"] < RMSE_BOUND, refit


def test_shipped_embeddingnet_config_runs_its_one_cycle_on_u1(data_root, tmp_path):
    """configs/ml-100k-embeddingnet.yaml cut to 3 epochs: the one-cycle schedule spans exactly those epochs (its
    lr ends near zero), no early stopping cuts it, and the refit trains on all of u1.base."""
    root = data_root
    run_dir = tmp_path / "run"
    proc = check_ok(train_cli([str(REPO / "configs/ml-100k-embeddingnet.yaml"), f"data.root={root}",
                               f"data.cache_dir={tmp_path / 'cache'}", f"run.dir={run_dir}",
                               "train.epochs=3", "train.log_every_steps=10000"], env=clean_env(1), timeout=240))
    result, refit = summary(run_dir)["phase1"], summary(run_dir / "refit")
    assert result["epochs_run"] == 3 and not result["stopped_early"], result
    lrs = [row["lr"] for row in metrics(run_dir)]
    assert lrs[0] > lrs[1] > lrs[2] and lrs[2] < 5e-3 * 1e-3, lrs  # past the peak after 3/4 of an epoch, then to ~0
    assert "test_rmse" not in result and refit["test_rmse"] < RMSE_BOUND, (result, refit)
    assert "train 80000 / val 0 / test 20000" in proc.stdout
