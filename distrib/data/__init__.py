"""Ratings data: readers for every MovieLens layout and plain files, GroupLens downloads, the synthetic
generator, id encoding, splits, and the memory-mapped cache that every rank shares.

The one entry the trainer uses is `load_dataset(cfg.data)`, which returns a `PreparedData`.
Modules: movielens (layout readers), delimited (fast parsing + bad-input checks), download (GroupLens,
checksums, atomic extract), synthetic, encode (ids, duplicates), splits, cache, prepare.
"""
from distrib.data.prepare import load_dataset  # noqa: F401
from distrib.data.types import PreparedData, RatingSplit  # noqa: F401

__all__ = ["load_dataset", "PreparedData", "RatingSplit"]
