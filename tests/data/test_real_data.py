"""Real MovieLens copies, from $DISTRIB_TEST_DATA (ml-100k/ and ml-latest-small/ extracted; read-only)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from distrib.data import load_dataset

from .conftest import cfg_for

DATA = os.environ.get("DISTRIB_TEST_DATA", "")


@pytest.fixture(autouse=True)
def real_data():
    """In CI these tests must run: a missing DISTRIB_TEST_DATA fails them instead of skipping them."""
    if not DATA:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but DISTRIB_TEST_DATA is not set (the folder holding ml-100k/ and ml-latest-small/)")
        pytest.skip("set DISTRIB_TEST_DATA to a folder with ml-100k/ and ml-latest-small/ extracted")


def test_ml100k_canonical_u1(tmp_path):
    data = load_dataset(cfg_for(tmp_path, name="ml-100k", root=DATA, split="u1", val_fraction=0.0))
    assert (len(data.train), len(data.test), len(data.val)) == (80_000, 20_000, 0)
    assert (data.n_users, data.n_items) == (943, 1682)
    assert (data.rating_min, data.rating_max) == (1.0, 5.0)
    index = int(np.flatnonzero(np.asarray(data.item_ids) == 1)[0])
    assert data.titles[index] == "Toy Story (1995)"
    assert data.genres[index] == "Animation|Children's|Comedy"


@pytest.mark.parametrize("split", ["ua", "u5"])
def test_ml100k_other_canonical_splits(tmp_path, split):
    data = load_dataset(cfg_for(tmp_path, name="ml-100k", root=DATA, split=split, val_fraction=0.0))
    assert len(data.train) + len(data.test) == 100_000
    assert len(data.test) == (9430 if split == "ua" else 20_000)


def test_ml100k_random_80_20(tmp_path):
    data = load_dataset(cfg_for(tmp_path, name="ml-100k", root=DATA, test_fraction=0.2, val_fraction=0.1))
    assert (len(data.train), len(data.val), len(data.test)) == (72_000, 8_000, 20_000)
    assert not list(Path(DATA).glob("cache"))  # the read-only data root was left alone


def test_ml_latest_small(tmp_path):
    data = load_dataset(cfg_for(tmp_path, name="ml-latest-small", root=DATA, split="temporal"))
    assert data.n_users == 610 and len(data.train) + len(data.val) + len(data.test) == 100_836
    assert (data.rating_min, data.rating_max) == (0.5, 5.0)
    assert sum(t == "" for t in data.titles) == 0
