"""Train / val / test row indices: random, temporal (per user), or a canonical split shipped as files.

Indices come back sorted so each split reads the cache in file order (sequential pages, shared by ranks).
"""
from __future__ import annotations

import numpy as np

from distrib.errors import UserError


def split_indices(split: str, n: int, *, test_fraction: float, val_fraction: float, seed: int,
                  users: np.ndarray, timestamps: np.ndarray | None, is_test: np.ndarray | None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(train, val, test) row indices; test is None for a random split with test_fraction=0."""
    rng = np.random.default_rng(seed)
    if is_test is not None:  # ml-100k u1..ub: the files decide, test_fraction does not apply
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    elif split == "temporal":
        if timestamps is None:
            raise UserError("data.split=temporal: this data has no timestamps (a 4th column); use random")
        train, test = _temporal(users, timestamps, test_fraction)
    elif split == "random":
        train, test = _random(rng, np.arange(n), test_fraction)
        if test_fraction == 0:
            test = None
    else:
        raise UserError(f"data.split: {split} needs its ml-100k files; use random or temporal")
    train, val = _random(rng, train, val_fraction)
    return train, val, test


def _random(rng, rows: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Exactly round(fraction * len) rows out, both parts in row order; O(n), no full permutation."""
    n_out = int(round(len(rows) * fraction))
    if n_out == 0:
        return rows, rows[:0]
    r = rng.random(len(rows))
    out = r <= np.partition(r, n_out - 1)[n_out - 1]  # float64 draws: ties have probability ~0
    return rows[~out], rows[out]


def _temporal(users: np.ndarray, timestamps: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Each user's latest round(fraction * count) ratings go to test; ties broken by file order."""
    order = _by_user_then_time(users, timestamps)
    sorted_users = users[order]
    counts = np.bincount(users)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(users)) - starts[sorted_users]  # position within the user's history
    n_test = np.floor(counts * fraction + 0.5).astype(np.int64)
    is_test = rank >= (counts - n_test)[sorted_users]
    return np.sort(order[~is_test]), np.sort(order[is_test])


def _by_user_then_time(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Row order by user, then time, then file order; one stable int64 sort when the key fits."""
    t0, span = int(timestamps.min()), int(timestamps.max()) - int(timestamps.min()) + 1
    if (int(users.max()) + 1) * span < 2**62:
        return np.argsort(users * span + (timestamps - t0), kind="stable")
    return np.lexsort((np.arange(len(users)), timestamps, users))
