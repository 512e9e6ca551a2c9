"""Raw ids -> contiguous int64 indices in order of first appearance, and the duplicate-pair policy."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from distrib.data.raw import RawRatings
from distrib.errors import UserError


@dataclass
class Encoded:
    users: np.ndarray  # int64 index per rating
    items: np.ndarray
    ratings: np.ndarray  # float32
    timestamps: np.ndarray | None
    is_test: np.ndarray | None
    user_ids: np.ndarray  # index -> raw id
    item_ids: np.ndarray
    titles: list[str] | None  # per item index
    genres: list[str] | None
    n_duplicates: int = 0


def encode(raw: RawRatings, duplicates: str) -> Encoded:
    # factorize hashes (O(n)) and numbers ids by first appearance, as the article's notebook did.
    users, user_ids = pd.factorize(raw.users)
    items, item_ids = pd.factorize(raw.items)
    users, items = users.astype(np.int64), items.astype(np.int64)
    enc = Encoded(users=users, items=items, ratings=raw.ratings, timestamps=raw.timestamps,
                  is_test=raw.is_test, user_ids=_id_array(user_ids), item_ids=_id_array(item_ids),
                  titles=None, genres=None)
    enc.titles, enc.genres = _item_text(raw, enc.item_ids)
    return enc if raw.unique_pairs else _dedupe(enc, duplicates, raw)


def _id_array(uniques) -> np.ndarray:
    arr = np.asarray(uniques)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    return arr.astype(str)  # fixed-width unicode: saved as .npy without pickle


def _item_text(raw: RawRatings, item_ids: np.ndarray):
    if raw.meta_ids is None or raw.titles is None:
        return None, None
    meta = pd.Index(raw.meta_ids)
    keep = ~meta.duplicated()
    meta = meta[keep]
    titles = np.asarray(raw.titles, dtype=object)[keep]
    genres = np.asarray(raw.genres if raw.genres is not None else [""] * len(keep), dtype=object)[keep]
    pos = meta.get_indexer(item_ids) if item_ids.dtype.kind in "iu" else np.full(len(item_ids), -1)
    found = pos >= 0
    out_t = np.full(len(item_ids), "", dtype=object)
    out_g = np.full(len(item_ids), "", dtype=object)
    out_t[found], out_g[found] = titles[pos[found]], genres[pos[found]]
    return out_t.tolist(), out_g.tolist()


def _dedupe(enc: Encoded, policy: str, raw: RawRatings) -> Encoded:
    keys = enc.users * max(len(enc.item_ids), 1) + enc.items
    dup_later = pd.Series(keys).duplicated(keep="first").to_numpy()
    n_dup = int(dup_later.sum())
    if n_dup == 0:
        return enc
    if policy == "error":
        line = int(np.argmax(dup_later)) + raw.first_line
        raise UserError(f"{raw.source}: {n_dup} duplicate (user, item) pairs, first repeat at line {line} "
                        f"(set data.duplicates to last, first or mean)")
    warnings.warn(f"{raw.source}: {n_dup} duplicate (user, item) pairs; keeping the {policy} "
                  f"{'rating' if policy != 'mean' else 'of each'} (data.duplicates={policy})", stacklevel=3)
    if policy == "first":
        keep = ~dup_later
    else:
        keep = ~pd.Series(keys).duplicated(keep="last").to_numpy()
    if policy == "mean":
        enc.ratings = enc.ratings.copy()
        means = pd.Series(enc.ratings.astype(np.float64)).groupby(keys).transform("mean").to_numpy()
        enc.ratings[:] = means.astype(np.float32)
    for name in ("users", "items", "ratings", "timestamps", "is_test"):
        arr = getattr(enc, name)
        if arr is not None:
            setattr(enc, name, arr[keep])
    enc.n_duplicates = n_dup
    return enc
