"""`RawRatings`: what every reader and the synthetic generator hand over before encoding and splitting,
plus the checks that apply to any source (rating scale)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from distrib.errors import UserError

# The largest rating magnitude taken as a rating scale. Scales in use are a handful of levels (0.5-5, 1-10,
# 0-100); a value far beyond them is a broken line (a price, an id, a timestamp in the rating column) that
# would only make the loss overflow float32 (a squared error of 1e30 is inf) and the run end in NaN.
RATING_LIMIT = 1e6


@dataclass
class RawRatings:
    users: np.ndarray  # raw user ids: int64, or strings for data.name=file
    items: np.ndarray  # raw item ids
    ratings: np.ndarray  # float32
    timestamps: np.ndarray | None  # int64 seconds, where the source has them
    source: str  # the file (or description) named in error messages
    scale: tuple[float, float] | None = None  # the layout's documented scale, if it has one
    meta_ids: np.ndarray | None = None  # raw item ids that have a title / genres
    titles: list[str] | None = None  # parallel to meta_ids
    genres: list[str] | None = None  # parallel to meta_ids, '|'-joined
    is_test: np.ndarray | None = None  # bool per rating, for canonical splits shipped as files
    first_line: int = 1  # file line of row 0, so errors can name a line
    unique_pairs: bool = False  # the source guarantees no repeated (user, item): skip the check

    def __len__(self) -> int:
        return int(self.ratings.shape[0])


def resolve_scale(raw: RawRatings, rating_min: float | None, rating_max: float | None) -> tuple[float, float]:
    """The declared scale wins, then the layout's own, then the data's range; ratings outside are an error."""
    declared = rating_min is not None or rating_max is not None
    lo_data, hi_data = float(raw.ratings.min()), float(raw.ratings.max())
    base = raw.scale or (lo_data, hi_data)
    lo = float(rating_min) if rating_min is not None else base[0]
    hi = float(rating_max) if rating_max is not None else base[1]
    if lo >= hi and (declared or raw.scale):
        raise UserError(f"data.rating_min/rating_max: need rating_min < rating_max, got [{lo}, {hi}]")
    for key, value in (("data.rating_min", rating_min), ("data.rating_max", rating_max)):
        if value is not None and abs(value) > RATING_LIMIT:
            raise UserError(f"{key}={value:g} cannot be a rating scale's end: ratings must lie within "
                            f"[-{RATING_LIMIT:g}, {RATING_LIMIT:g}]")
    if not declared:
        _refuse_off_scale(raw)
    outside = (raw.ratings < lo) | (raw.ratings > hi)
    n_out = int(outside.sum())
    if n_out:
        first = int(np.argmax(outside))
        where = f"first at line {first + raw.first_line}" if raw.is_test is None else "e.g."
        raise UserError(f"{raw.source}: {n_out} ratings outside the {'declared ' if declared else ''}scale "
                        f"[{lo:g}, {hi:g}], {where} (value {float(raw.ratings[first]):g})")
    return lo, hi


def _refuse_off_scale(raw: RawRatings) -> None:
    """A scale taken from the data must look like one: every rating finite and within RATING_LIMIT of zero."""
    off = ~(np.abs(raw.ratings) <= RATING_LIMIT)  # also catches inf: a float64 rating beyond float32's range
    if off.any():
        first = int(np.argmax(off))
        where = f"line {first + raw.first_line}" if raw.is_test is None else "one line"
        raise UserError(f"{raw.source}: rating {float(raw.ratings[first]):g} at {where} cannot be on a rating "
                        f"scale ({int(off.sum())} such; ratings must lie within [-{RATING_LIMIT:g}, "
                        f"{RATING_LIMIT:g}]): fix or remove those lines")
