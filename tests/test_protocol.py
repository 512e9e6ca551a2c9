"""The accuracy protocol: the test part is read once, at the end, and nothing chosen depends on it.

Two data files identical but for the test part's ratings (every one flipped, r -> 6 - r) must give the same
first phase (epochs, best epoch), the same validation-fitted blend weights, the same refit weights, and only a
different test figure; one job on 1 rank and the other on 2 gloo ranks (stacking's sums are all-reduced)."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from distrib.config import load_config
from distrib.data import load_dataset
from tests.helpers import check_ok, max_rel_diff, summary, train_cli, weights

pytestmark = pytest.mark.slow  # trains

N_USERS, N_ITEMS, N_RATINGS = 120, 80, 4000
MODEL = ["model.name=ensemble", "model.members=[autorec,mf]", "model.blend=validation", "model.autorec.hidden=8",
         "model.autorec.l2=1.0", "model.n_factors=4", "model.factor_reg=0.05"]
TRAIN = ["train.batch_size=400", "train.epochs=4", "train.patience=2", "train.refit=true", "train.weight_decay=0",
         "train.lr=0.01", "train.precision=fp32", "dist.timeout_s=60", "data.val_fraction=0.2",
         "data.test_fraction=0.2"]


def _ratings() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    pairs = rng.choice(N_USERS * N_ITEMS, N_RATINGS, replace=False)
    users, items = pairs // N_ITEMS + 1, pairs % N_ITEMS + 1
    taste = rng.normal(size=N_USERS + 1)[users] + rng.normal(size=N_ITEMS + 1)[items]
    ratings = np.clip(np.round(3 + taste + rng.normal(0, 0.5, N_RATINGS)), 1, 5).astype(int)
    return users, items, ratings


def _write(path, users, items, ratings):
    path.write_text("".join(f"{u}\t{i}\t{r}\n" for u, i, r in zip(users, items, ratings)))
    return path


def _args(tmp_path, path, run: str) -> list[str]:
    return ["data.name=file", f"data.path={path}", f"data.root={tmp_path / 'root'}",
            f"data.cache_dir={tmp_path / ('cache-' + run)}", f"run.dir={tmp_path / run}", *MODEL, *TRAIN]


def _flip_test(tmp_path, users, items, ratings):
    """The file with the test part's ratings flipped: the test pairs as distrib's own split picks them."""
    cfg = load_config(None, _args(tmp_path, tmp_path / "a.tsv", "probe"))
    data = load_dataset(cfg.data)
    test = SimpleNamespace(users=data.user_ids[np.asarray(data.test.users)],
                           items=data.item_ids[np.asarray(data.test.items)])
    in_test = set(zip(test.users.tolist(), test.items.tolist()))
    flipped = np.array([6 - r if (u, i) in in_test else r for u, i, r in zip(users, items, ratings)])
    assert (flipped != ratings).sum() > 0.1 * N_RATINGS  # most test ratings changed (3 stays 3)
    return _write(tmp_path / "b.tsv", users, items, flipped)


def test_the_test_part_changes_the_test_figure_and_nothing_else(tmp_path):
    users, items, ratings = _ratings()
    a = _write(tmp_path / "a.tsv", users, items, ratings)
    b = _flip_test(tmp_path, users, items, ratings)
    check_ok(train_cli(_args(tmp_path, a, "a")))
    check_ok(train_cli(_args(tmp_path, b, "b"), nproc=2))
    one, two = summary(tmp_path / "a"), summary(tmp_path / "b")
    first, second = one["phase1"], two["phase1"]
    assert (first["best_epoch"], first["epochs_run"]) == (second["best_epoch"], second["epochs_run"])
    assert np.allclose(first["blend_weights"], second["blend_weights"], atol=1e-4)
    assert math.isclose(sum(first["blend_weights"]), 1.0, rel_tol=1e-9) and min(first["blend_weights"]) >= 0
    assert first["blend_val_rmse"] <= first["best_val_rmse"] + 1e-9  # the mean is one of the candidates
    blend = weights(tmp_path / "a/checkpoints/best.pt")["blend"].tolist()
    assert np.allclose(blend, first["blend_weights"], atol=1e-6)  # the first phase's checkpoint predicts with them
    for part in ("checkpoints/best.pt", "refit/checkpoints/last.pt"):
        assert max_rel_diff(weights(tmp_path / "a" / part), weights(tmp_path / "b" / part)) <= 1e-4, part
    assert abs(one["test_rmse"] - two["test_rmse"]) > 0.1  # the flipped test part is read, at the end
    refit_cfg = (tmp_path / "a/refit/config.yaml").read_text()
    assert "blend: mean" in refit_cfg and "member_weights" in refit_cfg  # the refit keeps the fitted weights
    again = check_ok(train_cli(_args(tmp_path, a, "a")))  # a finished job resumes as finished: same figures
    assert "already finished" in again.stdout and summary(tmp_path / "a") == one
