"""Encoding, splits and the shared cache, end to end through load_dataset."""
from __future__ import annotations

import logging

import numpy as np
import pytest

from distrib.config import SyntheticConfig
from distrib.data import load_dataset

from .conftest import cfg_for

SMALL = SyntheticConfig(n_users=500, n_items=300, n_ratings=20_000, rank=4, seed=1)


def _rows(split):
    return set(zip(np.asarray(split.users).tolist(), np.asarray(split.items).tolist()))


@pytest.mark.parametrize("split", ["random", "temporal"])
def test_splits_partition_the_ratings(tmp_path, split):
    data = load_dataset(cfg_for(tmp_path, synthetic=SMALL, split=split, test_fraction=0.2, val_fraction=0.1))
    train, val, test = _rows(data.train), _rows(data.val), _rows(data.test)
    assert not (train & val) and not (train & test) and not (val & test)
    assert len(train) + len(val) + len(test) == SMALL.n_ratings
    assert len(data.test) == pytest.approx(0.2 * SMALL.n_ratings, rel=0.02)
    assert len(data.val) == round(0.1 * (SMALL.n_ratings - len(data.test)))
    for part in (data.train, data.val, data.test):
        assert part.users.dtype == np.int64 and part.ratings.dtype == np.float32
        assert part.timestamps.dtype == np.int64
        assert part.users.max() < data.n_users and part.items.max() < data.n_items


def test_temporal_test_holds_each_users_latest(tmp_path):
    data = load_dataset(cfg_for(tmp_path, synthetic=SMALL, split="temporal", val_fraction=0.0))
    last_train = np.full(data.n_users, -1, np.int64)
    np.maximum.at(last_train, np.asarray(data.train.users), np.asarray(data.train.timestamps))
    first_test = np.full(data.n_users, 2**62, np.int64)
    np.minimum.at(first_test, np.asarray(data.test.users), np.asarray(data.test.timestamps))
    has_both = (last_train >= 0) & (first_test < 2**62)
    assert has_both.sum() > 100
    assert (last_train[has_both] <= first_test[has_both]).all()


def test_no_test_part_and_no_val(tmp_path):
    data = load_dataset(cfg_for(tmp_path, synthetic=SMALL, test_fraction=0.0, val_fraction=0.0))
    assert data.test is None and len(data.val) == 0 and len(data.train) == SMALL.n_ratings


def test_split_seed_changes_split_not_data(tmp_path):
    a = load_dataset(cfg_for(tmp_path, synthetic=SMALL, split_seed=1))
    b = load_dataset(cfg_for(tmp_path, synthetic=SMALL, split_seed=2))
    assert a.cache_dir != b.cache_dir
    assert _rows(a.test) != _rows(b.test)
    assert np.array_equal(a.item_ids, b.item_ids)


def test_encoding_is_first_appearance_order(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("30,7,1\n10,7,2\n30,9,3\n20,8,4\n")
    data = load_dataset(cfg_for(tmp_path, name="file", path=str(path), test_fraction=0.0, val_fraction=0.0))
    assert np.asarray(data.user_ids).tolist() == [30, 10, 20]
    assert np.asarray(data.item_ids).tolist() == [7, 9, 8]
    assert np.asarray(data.train.users).tolist() == [0, 1, 0, 2]


def test_cache_is_reused_and_memory_mapped(tmp_path):
    cfg = cfg_for(tmp_path, synthetic=SMALL)
    first = load_dataset(cfg)
    stamp = (first.cache_dir / "meta.json").stat().st_mtime_ns
    second = load_dataset(cfg)
    assert first.info["built"] and not second.info["built"]
    assert second.cache_dir == first.cache_dir
    assert (second.cache_dir / "meta.json").stat().st_mtime_ns == stamp
    assert isinstance(second.train.users, np.memmap) and not second.train.users.flags.writeable
    assert "synthetic: " in second.description and "train" in second.description


def test_cache_key_follows_the_source_file(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("1,1,4\n2,1,3\n")
    cfg = cfg_for(tmp_path, name="file", path=str(path), test_fraction=0.0, val_fraction=0.0)
    assert len(load_dataset(cfg).train) == 2
    path.write_text("1,1,4\n2,1,3\n3,2,5\n")
    assert len(load_dataset(cfg).train) == 3


def test_default_cache_is_under_a_writable_root_and_never_in_a_read_only_one(tmp_path, monkeypatch, caplog):
    """data.cache_dir unset: the cache goes to data.root/cache, but a data.root marked read-only (a shared
    dataset copy) is left untouched even by root, who may write anywhere: the cache goes to $XDG_CACHE_HOME."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    writable = tmp_path / "writable"
    writable.mkdir()
    data = load_dataset(cfg_for(tmp_path, root=str(writable), cache_dir="", synthetic=SMALL))
    assert data.cache_dir.parent == writable / "cache"

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o555)
    try:
        with caplog.at_level(logging.INFO, logger="distrib"):
            for _ in range(2):  # the second load (a refit phase, evaluate) does not repeat the line
                data = load_dataset(cfg_for(tmp_path, root=str(shared), cache_dir="", synthetic=SMALL))
        assert data.cache_dir.parent == tmp_path / "xdg" / "distrib"
        assert list(shared.iterdir()) == []
        said = [r.getMessage() for r in caplog.records if "read-only" in r.getMessage()]
        assert len(said) == 1 and str(tmp_path / "xdg" / "distrib") in said[0], said
    finally:
        shared.chmod(0o755)


def test_a_cache_completed_meanwhile_elsewhere_is_kept(tmp_path):
    """Two nodes whose lock does not reach each other (a shared file system without flock across clients)
    both build: the second writer keeps the first complete folder, which readers may have open."""
    import os
    import socket

    from distrib.data.cache import write_cache

    data = load_dataset(cfg_for(tmp_path, synthetic=SMALL))
    folder = data.cache_dir
    assert data.info["built_by"] == {"host": socket.gethostname(), "pid": os.getpid()}
    stamp = (folder / "meta.json").stat().st_mtime_ns
    arrays = {"train": {"ratings": np.zeros(3, np.float32)}, "val": None, "test": None}
    write_cache(folder, arrays, np.arange(2), np.arange(2), None, None, {"late": True})
    assert (folder / "meta.json").stat().st_mtime_ns == stamp and "late" not in (folder / "meta.json").read_text()
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == [f".{folder.name}.lock"]
