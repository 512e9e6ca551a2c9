"""Real MovieLens copies, from the session's data_root ($DISTRIB_TEST_DATA: ml-100k/ and ml-latest-small/
extracted; read-only)."""
from __future__ import annotations

import numpy as np
import pytest

from distrib.data import load_dataset

from .conftest import cfg_for


def test_ml100k_canonical_u1(data_root, tmp_path):
    data = load_dataset(cfg_for(tmp_path, name="ml-100k", root=str(data_root), split="u1", val_fraction=0.0))
    assert (len(data.train), len(data.test), len(data.val)) == (80_000, 20_000, 0)
    assert (data.n_users, data.n_items) == (943, 1682)
    assert (data.rating_min, data.rating_max) == (1.0, 5.0)
    index = int(np.flatnonzero(np.asarray(data.item_ids) == 1)[0])
    assert data.titles[index] == "Toy Story (1995)"
    assert data.genres[index] == "Animation|Children's|Comedy"


@pytest.mark.parametrize("split", ["ua", "u5"])
def test_ml100k_other_canonical_splits(data_root, tmp_path, split):
    data = load_dataset(cfg_for(tmp_path, name="ml-100k", root=str(data_root), split=split, val_fraction=0.0))
    assert len(data.train) + len(data.test) == 100_000
    assert len(data.test) == (9430 if split == "ua" else 20_000)


def test_ml100k_random_80_20(data_root, tmp_path):
    before = listing(data_root)  # a root that training has used holds a cache/ of its own: it stays as it was
    data = load_dataset(cfg_for(tmp_path, name="ml-100k", root=str(data_root), test_fraction=0.2, val_fraction=0.1))
    assert (len(data.train), len(data.val), len(data.test)) == (72_000, 8_000, 20_000)
    assert listing(data_root) == before  # data.cache_dir took the prepared arrays; the data root was left alone
    assert data.cache_dir.parent == tmp_path / "cache"


def listing(root):
    return sorted((p.relative_to(root).as_posix(), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_ml_latest_small(data_root, tmp_path):
    data = load_dataset(cfg_for(tmp_path, name="ml-latest-small", root=str(data_root), split="temporal"))
    assert data.n_users == 610 and len(data.train) + len(data.val) + len(data.test) == 100_836
    assert (data.rating_min, data.rating_max) == (0.5, 5.0)
    assert sum(t == "" for t in data.titles) == 0
