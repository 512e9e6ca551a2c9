"""The console's header pieces, closing line and the top-level summary of a refit run (no processes)."""
from __future__ import annotations

from distrib.config import load_config
from distrib.report.console import changed_keys, closing_line, plural, refit_summary

FIRST = {"best_val_rmse": 0.91, "best_epoch": 1, "epochs_run": 3,
         "stopped_early": True, "world_size": 2, "device": "cpu", "steps": 30}
REFIT = {"best_val_rmse": None, "best_epoch": 1, "test_rmse": 0.896, "test_mae": 0.70, "epochs_run": 1,
         "stopped_early": False, "world_size": 2, "device": "cpu", "steps": 11}


def test_changed_keys_are_only_those_that_differ_from_the_defaults():
    cfg = load_config(None, ["train.epochs=7", "model.hidden=[8]", "model.dropouts=[]", "train.lr=0.001",
                              "run.dir=/tmp/x"])
    # train.lr is the default, run.dir has its own line in the header
    assert changed_keys(cfg) == {"train.epochs": 7, "model.hidden": [8], "model.dropouts": []}


def test_one_epoch_is_singular():
    assert (plural(1, "epoch"), plural(3, "epoch")) == ("1 epoch", "3 epochs")


def test_refit_summary_puts_the_final_model_first_and_keeps_the_first_phase():
    top = refit_summary(FIRST, REFIT)
    assert top["test_rmse"] == 0.896 and top["final_model"] == "refit" and top["phase1"] == FIRST
    assert "best_val_rmse" not in top and "best_epoch" not in top  # the refit validates nothing


def test_closing_line_never_prints_none():
    line = closing_line(refit_summary(FIRST, REFIT), "runs/x")
    assert line.startswith("done: refit model (refit/): test_rmse=0.8960") and "None" not in line
    assert "first phase: best_val_rmse=0.9100, best_epoch=1, epochs_run=3 |" in line
    assert line.endswith("runs/x/summary.json")
    assert closing_line(REFIT, "runs/x/refit").startswith("done: test_rmse=0.8960, test_mae=0.7000, best_epoch=1")
