"""The prepared dataset handed to the trainer."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class RatingSplit:
    """Parallel arrays, one entry per rating; read-only memory maps of the cache."""

    users: np.ndarray  # int64 contiguous user index
    items: np.ndarray  # int64 contiguous item index
    ratings: np.ndarray  # float32
    timestamps: np.ndarray | None = None  # int64 seconds, where the source has them

    def __len__(self) -> int:
        return int(self.ratings.shape[0])


@dataclass
class PreparedData:
    train: RatingSplit
    val: RatingSplit  # carved from the training part; drives early stopping
    test: RatingSplit | None  # touched once at the end; None when the split has no test part
    n_users: int
    n_items: int
    rating_min: float
    rating_max: float
    user_ids: np.ndarray  # index -> raw user id
    item_ids: np.ndarray  # index -> raw item id
    titles: list[str] | None = None  # per item index
    genres: list[str] | None = None  # per item index, '|'-joined
    cache_dir: Path | None = None
    description: str = ""  # one line for the console, e.g. "ml-100k u1: 943 users, 1682 items, ..."
    info: dict = field(default_factory=dict)
