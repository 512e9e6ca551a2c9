"""The default dataset: MovieLens-shaped synthetic ratings, deterministic by seed, fast at ml-25m size.

Long-tailed user activity and item popularity (lognormal weights), planted rank-`rank` preferences
plus user and item biases, mapped to whole stars 1..5 with MovieLens-100k's rating histogram (mean ~3.53),
timestamps inside each user's active period, unique (user, item) pairs. Everything is vectorized numpy:
25M ratings take seconds, not minutes.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from distrib.data.raw import RawRatings

# Share of 1..5 stars in ml-100k; the synthetic ratings copy it so losses are comparable to the real data.
STAR_SHARES = np.array([0.061, 0.114, 0.271, 0.342, 0.212])
GENRES = ("Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War",
          "Western")
FIRST_TS, LAST_TS = 789_652_009, 1_574_327_703  # ml-25m's first and last rating, 1995-01-09 .. 2019-11-21
_CHUNK = 1 << 21
NOISE_SD = 0.5  # the Gaussian noise on each score before it is cut into stars


def generate(cfg) -> RawRatings:
    """`cfg` is a SyntheticConfig; raw ids are 1-based like MovieLens'."""
    rng = np.random.default_rng(cfg.seed)
    users, items = _sample_pairs(rng, cfg.n_users, cfg.n_items, cfg.n_ratings)
    score = _planted_scores(rng, users, items, cfg.n_users, cfg.n_items, cfg.rank)
    score += _noise(rng, len(score))
    ratings = (np.searchsorted(_star_cuts(rng, score), score) + 1).astype(np.float32)
    timestamps = _timestamps(rng, users, cfg.n_users)
    meta_ids = np.arange(1, cfg.n_items + 1, dtype=np.int64)
    titles, genres = _item_text(rng, cfg.n_items)
    return RawRatings(users=users + 1, items=items + 1, ratings=ratings, timestamps=timestamps,
                      source=f"synthetic(seed={cfg.seed})", scale=(1.0, 5.0), meta_ids=meta_ids,
                      titles=titles, genres=genres, unique_pairs=True)


def _sample_pairs(rng, n_users: int, n_items: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    total = n_users * n_items
    if n > total // 2:  # near-dense: rejection sampling would stall, so sample the pair grid directly
        keys = rng.choice(total, size=n, replace=False)
        return keys // n_items, keys % n_items
    user_w = rng.lognormal(0.0, 1.2, n_users)  # sigma 1.2: top 10% of users hold ~40% of the ratings
    item_w = rng.lognormal(0.0, 1.6, n_items)
    user_p, item_p = user_w / user_w.sum(), item_w / item_w.sum()
    keys = np.empty(0, np.int64)
    for attempt in range(12):
        need = n - len(keys)
        if need <= 0:
            break
        m = int(need * 1.3) + 1024
        if attempt < 8:  # later rounds go uniform so heavy-tailed collisions can't stall the loop
            # users stay grouped (like MovieLens files, sorted by user); shuffled items keep pairs independent
            u, i = _weighted_draw(rng, user_p, m, shuffle=False), _weighted_draw(rng, item_p, m)
        else:
            u, i = rng.integers(0, n_users, m), rng.integers(0, n_items, m)
        keys = np.concatenate([keys, u.astype(np.int64) * n_items + i])
        keys = keys[~pd.Series(keys).duplicated().to_numpy()]  # hash dedupe keeps sampling order
    if len(keys) > n:  # drop the surplus at random: keys are grouped by user, so [:n] would cut off users
        r = rng.random(len(keys))
        keys = keys[r <= np.partition(r, n - 1)[n - 1]][:n]
    return keys // n_items, keys % n_items


def _weighted_draw(rng, p: np.ndarray, m: int, shuffle: bool = True) -> np.ndarray:
    """m draws from p: multinomial counts + repeat is O(m), much faster than searchsorted on a CDF."""
    draws = np.repeat(np.arange(len(p), dtype=np.int64), rng.multinomial(m, p))
    return rng.permutation(draws) if shuffle else draws


def _planted_scores(rng, users, items, n_users: int, n_items: int, rank: int) -> np.ndarray:
    """The noiseless score <p_u, q_i> + b_u + b_i of each pair."""
    p = (rng.standard_normal((n_users, rank)) / np.sqrt(rank)).astype(np.float32)
    q = rng.standard_normal((n_items, rank)).astype(np.float32)
    b_u = (0.5 * rng.standard_normal(n_users)).astype(np.float32)
    b_i = (0.5 * rng.standard_normal(n_items)).astype(np.float32)
    score = np.empty(len(users), np.float32)
    for start in range(0, len(users), _CHUNK):  # chunked so the (n, rank) gathers stay small
        u, i = users[start:start + _CHUNK], items[start:start + _CHUNK]
        score[start:start + _CHUNK] = np.einsum("nr,nr->n", p[u], q[i]) + b_u[u] + b_i[i]
    return score


def _noise(rng, n: int) -> np.ndarray:
    return (NOISE_SD * rng.standard_normal(n)).astype(np.float32)


def _star_cuts(rng, score: np.ndarray) -> np.ndarray:
    """The 4 cuts between 1..5 stars: quantiles of the noisy scores at STAR_SHARES (score > cut k: more than k
    stars)."""
    probe = score if len(score) <= 1_000_000 else score[rng.integers(0, len(score), 1_000_000)]
    return np.quantile(probe, np.cumsum(STAR_SHARES)[:-1]).astype(np.float32)


def planted_scores(cfg) -> tuple[np.ndarray, np.ndarray]:
    """What `generate(cfg)` drew before the noise, regenerated from the same seed: each rating's noiseless score
    (in the order of generate's ratings) and the 4 star cuts."""
    rng = np.random.default_rng(cfg.seed)
    users, items = _sample_pairs(rng, cfg.n_users, cfg.n_items, cfg.n_ratings)
    clean = _planted_scores(rng, users, items, cfg.n_users, cfg.n_items, cfg.rank)
    cuts = _star_cuts(rng, clean + _noise(rng, len(clean)))
    return clean, cuts


def star_probabilities(clean: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """(n, 5): P(1..5 stars | noiseless score) under the generator: more than k stars when the noisy score
    passes cut k, which the Gaussian noise does with probability Phi((score - cut_k) / NOISE_SD)."""
    import torch

    z = (torch.from_numpy(clean.astype(np.float64))[:, None] - torch.from_numpy(cuts.astype(np.float64))) / NOISE_SD
    above = torch.special.ndtr(z).numpy()  # P(more than k stars), k = 1..4, falling with k
    ones, zeros = np.ones((len(clean), 1)), np.zeros((len(clean), 1))
    return np.hstack([ones, above]) - np.hstack([above, zeros])


def noise_floor(cfg) -> float:
    """The RMSE of the best possible predictor of `generate(cfg)`'s stars, E[stars | noiseless score]: the root
    of the mean conditional variance of the stars over the generated ratings. No model can do better in
    expectation on ratings drawn this way."""
    clean, cuts = planted_scores(cfg)
    stars = np.arange(1.0, 6.0)
    total = 0.0
    for start in range(0, len(clean), _CHUNK):
        prob = star_probabilities(clean[start:start + _CHUNK], cuts)
        mean = prob @ stars
        total += float((prob @ stars ** 2 - mean ** 2).sum())
    return float(np.sqrt(total / len(clean)))


def _timestamps(rng, users, n_users: int) -> np.ndarray:
    span = LAST_TS - FIRST_TS
    start = rng.integers(FIRST_TS, LAST_TS, n_users)
    active = np.minimum(rng.exponential(0.05 * span, n_users), LAST_TS - start).astype(np.int64)
    return start[users] + (rng.random(len(users)) * active[users]).astype(np.int64)


def _item_text(rng, n_items: int) -> tuple[list[str], list[str]]:
    years = rng.integers(1920, 2020, n_items)
    n_genres = rng.integers(1, 4, n_items)
    picks = rng.integers(0, len(GENRES), (n_items, 3))
    titles = [f"Synthetic Movie {k} ({y})" for k, y in zip(range(1, n_items + 1), years.tolist())]
    genres = ["|".join(dict.fromkeys(GENRES[g] for g in row[:c]))
              for row, c in zip(picks.tolist(), n_genres.tolist())]
    return titles, genres
