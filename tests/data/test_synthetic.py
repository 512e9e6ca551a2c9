"""The synthetic generator: deterministic, MovieLens-shaped, unique pairs."""
from __future__ import annotations

import numpy as np

from distrib.config import SyntheticConfig
from distrib.data.synthetic import (
    NOISE_SD,
    generate,
    noise_floor,
    planted_scores,
    star_probabilities,
)

CFG = SyntheticConfig(n_users=3000, n_items=2000, n_ratings=150_000, rank=8, seed=3)


def test_deterministic_by_seed():
    a, b = generate(CFG), generate(CFG)
    for field in ("users", "items", "ratings", "timestamps"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    c = generate(SyntheticConfig(**{**CFG.__dict__, "seed": 4}))
    assert not np.array_equal(a.ratings, c.ratings)


def test_shape_scale_and_unique_pairs():
    raw = generate(CFG)
    assert len(raw) == CFG.n_ratings
    keys = raw.users.astype(np.int64) * (CFG.n_items + 1) + raw.items
    assert len(np.unique(keys)) == len(keys)
    assert set(np.unique(raw.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.35 < raw.ratings.mean() < 3.7
    assert raw.users.min() >= 1 and raw.users.max() <= CFG.n_users
    assert raw.timestamps.min() > 7e8 and raw.timestamps.max() < 1.6e9
    assert raw.titles[16] == "Synthetic Movie 17 (" + raw.titles[16].split("(")[1]
    assert all(g for g in raw.genres[:100])


def test_every_user_is_represented():
    """Surplus draws are dropped at random, not from the end where the last user ids sit (sparse case,
    where few draws collide and the surplus is large, as at ml-25m scale)."""
    sparse = SyntheticConfig(n_users=20_000, n_items=20_000, n_ratings=200_000, rank=4, seed=0)
    raw = generate(sparse)
    assert np.bincount(raw.users)[-2000:].sum() > 0.05 * sparse.n_ratings  # last 10% of ids keep a share
    assert len(np.unique(raw.users)) > 0.85 * sparse.n_users


def test_long_tailed_users_and_items():
    raw = generate(CFG)
    for ids in (raw.users, raw.items):
        counts = np.sort(np.bincount(ids))[::-1]
        assert counts[: len(counts) // 10].sum() > 0.3 * counts.sum()


def test_planted_structure_is_learnable():
    """Ratings carry signal beyond noise: user means differ well beyond chance would make them."""
    raw = generate(CFG)
    sums = np.bincount(raw.users, raw.ratings)
    n = np.bincount(raw.users)
    busy = n >= 50
    assert np.std(sums[busy] / n[busy]) > 2 * raw.ratings.std() / np.sqrt(50)  # ml-100k: 0.45 vs 0.16


def test_near_dense_request_completes():
    raw = generate(SyntheticConfig(n_users=30, n_items=20, n_ratings=590, rank=2, seed=0))
    assert len(np.unique(raw.users * 100 + raw.items)) == 590


def _rmse(a, b) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - b) ** 2)))


def test_noise_floor_matches_monte_carlo_and_is_below_every_predictor():
    cfg = SyntheticConfig(n_users=400, n_items=300, n_ratings=30_000, rank=4, seed=5)
    floor = noise_floor(cfg)
    clean, cuts = planted_scores(cfg)
    # Fresh noise on the same scores, cut at the same cuts: each rating's spread of stars around its mean.
    draws = np.searchsorted(cuts, clean[:, None] + NOISE_SD * np.random.default_rng(0).standard_normal(
        (len(clean), 200)).astype(np.float32)) + 1
    monte_carlo = float(np.sqrt(draws.var(axis=1, ddof=1).mean()))
    assert abs(floor - monte_carlo) < 0.003, (floor, monte_carlo)
    # The best predictor scores generate's own stars at the floor: the regenerated scores are the ones it used.
    ratings = generate(cfg).ratings
    best = star_probabilities(clean, cuts) @ np.arange(1.0, 6.0)
    assert abs(_rmse(ratings, best) - floor) < 0.01
    # Anything else does worse: the global mean, user + movie biases fitted on these very ratings, and the
    # noiseless score cut into stars.
    raw = generate(cfg)
    users, items, target = raw.users - 1, raw.items - 1, ratings.astype(np.float64)
    per_user = np.maximum(np.bincount(users, minlength=cfg.n_users), 1)
    per_item = np.maximum(np.bincount(items, minlength=cfg.n_items), 1)
    mean, b_i = target.mean(), np.zeros(cfg.n_items)
    for _ in range(10):  # alternating least squares of mean + b_u + b_i
        b_u = np.bincount(users, target - mean - b_i[items], cfg.n_users) / per_user
        b_i = np.bincount(items, target - mean - b_u[users], cfg.n_items) / per_item
    assert floor + 0.05 < _rmse(target, mean + b_u[users] + b_i[items]) < _rmse(target, mean)
    assert floor + 0.02 < _rmse(target, np.searchsorted(cuts, clean) + 1)
