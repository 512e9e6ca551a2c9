"""Stacking (model.blend=validation): the simplex least-squares solve, and the sharded moments it reads
(1 and 2 real gloo ranks sum to the same figures)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from distrib.config import load_config, refit_config
from distrib.errors import UserError
from distrib.training.blend import blend_moments, solve_blend
from tests.helpers import spawn_ranks


def _moments(preds: np.ndarray, y: np.ndarray):
    return preds.T @ preds, preds.T @ y


def test_the_solve_recovers_a_convex_blend_and_drops_a_useless_member():
    rng = np.random.default_rng(0)
    a, b, noise = rng.normal(3, 1, 500), rng.normal(3, 1, 500), rng.normal(3, 1, 500)
    y = 0.3 * a + 0.7 * b
    assert np.allclose(solve_blend(*_moments(np.stack([a, b, noise], 1), y)), [0.3, 0.7, 0.0], atol=1e-9)


def test_the_weights_stay_on_the_simplex_when_least_squares_would_leave_it():
    rng = np.random.default_rng(1)
    y = rng.normal(3, 1, 400)
    noise = rng.normal(0, 0.1, 400)
    good, worse = y + noise, y + 2 * noise  # the same errors, doubled: least squares puts a negative weight on it
    assert np.linalg.lstsq(np.stack([good, worse], 1), y, rcond=None)[0][1] < -0.5
    assert solve_blend(*_moments(np.stack([good, worse], 1), y)) == [1.0, 0.0]
    assert sum(solve_blend(*_moments(np.stack([good, good + 0.01], 1), y))) == pytest.approx(1.0)


class _Constant(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def forward(self, users, items):
        return (users + items).float() * self.scale


def _sharded(rank: int, world_size: int):
    users, items = torch.arange(101), torch.arange(101) % 7
    ratings = (users % 5 + 1).float()
    gram, cross = blend_moments([_Constant(0.1), _Constant(0.01)], users, items, ratings, rank, world_size)
    return gram.tolist(), cross.tolist()


@pytest.mark.slow
def test_the_moments_are_the_same_on_1_and_2_ranks():
    one = spawn_ranks(_sharded, 1)[0]
    two = spawn_ranks(_sharded, 2)
    assert two[0] == two[1]
    assert np.allclose(one[0], two[0][0], rtol=1e-12) and np.allclose(one[1], two[0][1], rtol=1e-12)


def test_the_refit_keeps_the_fitted_weights_and_blend_needs_no_weights_of_its_own():
    cfg = load_config(None, ["model.name=ensemble", "model.members=[autorec,mf]", "model.blend=validation",
                             "train.refit=true"])
    refit = refit_config(cfg, 7, [0.25, 0.75])
    assert (refit.model.blend, refit.model.member_weights, refit.train.epochs) == ("mean", [0.25, 0.75], 7)
    assert refit_config(cfg, 7).model == cfg.model  # a plain mean ensemble: the model is unchanged
    with pytest.raises(UserError, match="member_weights"):
        load_config(None, ["model.name=ensemble", "model.members=[autorec,mf]", "model.blend=validation",
                           "model.member_weights=[1,2]"])
    # a member the fit leaves out (weight 0: an undertrained kernelNet after a few epochs) stays out in the refit
    zero = refit_config(cfg, 7, [0.0, 1.0])
    assert zero.model.member_weights == [0.0, 1.0]
    assert load_config(None, ["model.name=ensemble", "model.members=[autorec,mf]", "model.member_weights=[0,1]"])
    with pytest.raises(UserError, match="model.member_weights: at least one weight must be > 0"):
        load_config(None, ["model.name=ensemble", "model.members=[autorec,mf]", "model.member_weights=[0,0]"])
