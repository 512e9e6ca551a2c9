"""`load_dataset(cfg.data)`: locate or download the source, then build the cache once and open it.

Every rank calls this. The first one to take the cache lock reads, encodes, splits and writes; the
others block on the lock, then find the finished folder and only memory-map it. The lock is an flock
beside the cache, so its reach is the file system's: on a node-local data.root one process per node
builds; on a shared one, one process per job where the file system passes flock between nodes (NFSv4,
Lustre with -o flock, and several namespaces on one kernel), else one per node, the first rename winning.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
from pathlib import Path

import numpy as np

from distrib.data.cache import cache_key, damage, open_cache, write_cache
from distrib.data.download import LOCK_HINT, ensure_movielens
from distrib.data.encode import encode
from distrib.data.movielens import ML100K_SPLITS, RATINGS_FILE, read_file, read_movielens
from distrib.data.raw import resolve_scale
from distrib.data.splits import split_indices
from distrib.data.synthetic import generate
from distrib.data.types import PreparedData
from distrib.errors import UserError
from distrib.fsutil import FileLock

log = logging.getLogger("distrib")


def load_dataset(cfg) -> PreparedData:
    """`cfg` is the DataConfig section. Returns memory-mapped, read-only train/val/test arrays."""
    if cfg.name != "synthetic" and cfg.name != "file" and cfg.name not in RATINGS_FILE:
        raise UserError(f"data.name: unknown dataset {cfg.name!r}")
    root = Path(cfg.root).expanduser()
    source = _locate(cfg, root)  # first: a download creates root
    if getattr(cfg, "cache_dir", ""):
        cache_root = Path(cfg.cache_dir).expanduser()
    else:
        cache_root = default_cache_root(root)
        _say_where_the_cache_goes(root, cache_root)
    parts = _key_parts(cfg, source)
    folder = cache_root / f"{cfg.name}-{cache_key(parts)}"
    built = False
    if damage(folder):
        with FileLock(cache_root / f".{folder.name}.lock", hint=LOCK_HINT):
            problem = damage(folder)  # another rank may have built it while we waited
            if problem:
                if problem != "missing":
                    log.warning("data cache %s is damaged (%s): rebuilding it", folder, problem)
                _build(cfg, source, folder, parts)
                built = True
    data = open_cache(folder)
    data.info["built"] = built
    return data


def default_cache_root(root: Path) -> Path:
    """data.root/cache (created with it if data.root does not exist yet), unless data.root is a read-only
    directory (a shared dataset copy): then the user's cache, $XDG_CACHE_HOME/distrib or ~/.cache/distrib. The
    permission bits are read as well as access(), because root (the user in most containers) may write
    anywhere and would otherwise fill a share that is marked read-only."""
    if not root.exists() or (os.access(root, os.W_OK) and root.stat().st_mode & 0o222):
        return root / "cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "distrib"


_ANNOUNCED: set[Path] = set()


def _say_where_the_cache_goes(root: Path, cache_root: Path) -> None:
    """One line per process when a read-only data.root sends the cache elsewhere (rank 0's log shows it)."""
    if cache_root == root / "cache" or cache_root in _ANNOUNCED:
        return
    _ANNOUNCED.add(cache_root)
    log.info("data.root %s is read-only: prepared data is cached in %s (data.cache_dir sets another place)",
             root, cache_root)


def _locate(cfg, root: Path) -> Path | None:
    if cfg.name == "synthetic":
        return None
    if cfg.name == "file":
        return Path(cfg.path).expanduser()
    return ensure_movielens(cfg.name, root, cfg.base_url, getattr(cfg, "sha256", ""))


def _key_parts(cfg, source: Path | None) -> dict:
    """Everything that changes the prepared arrays; the source file's size and mtime catch edits."""
    parts = {k: getattr(cfg, k) for k in ("name", "split", "test_fraction", "val_fraction", "split_seed",
                                          "duplicates", "rating_min", "rating_max")}
    if cfg.name == "synthetic":
        parts["synthetic"] = dataclasses.asdict(cfg.synthetic)
        return parts
    files = [source] if cfg.name == "file" else [source / RATINGS_FILE[cfg.name]]
    if cfg.split in ML100K_SPLITS and cfg.name == "ml-100k":
        files += [source / f"{cfg.split}.base", source / f"{cfg.split}.test"]
    if cfg.name == "file":
        parts["sep"] = cfg.sep
    parts["files"] = [_stat(p) for p in files]
    return parts


def _stat(path: Path):
    try:
        st = path.stat()
    except OSError:
        return [str(path)]  # the reader reports the missing file with a proper message
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


def _build(cfg, source: Path | None, folder: Path, parts: dict) -> None:
    start = time.perf_counter()
    if cfg.name == "synthetic":
        raw = generate(cfg.synthetic)
    elif cfg.name == "file":
        raw = read_file(source, cfg.sep)
    else:
        raw = read_movielens(cfg.name, source, cfg.split)
    lo, hi = resolve_scale(raw, cfg.rating_min, cfg.rating_max)
    enc = encode(raw, cfg.duplicates)
    train, val, test = split_indices(
        cfg.split, len(enc.ratings), test_fraction=cfg.test_fraction, val_fraction=cfg.val_fraction,
        seed=cfg.split_seed, users=enc.users, timestamps=enc.timestamps, is_test=enc.is_test)
    arrays = {"train": _take(enc, train), "val": _take(enc, val), "test": None if test is None else _take(enc, test)}
    counts = {s: 0 if arrays[s] is None else len(arrays[s]["ratings"]) for s in arrays}
    n_users, n_items = len(enc.user_ids), len(enc.item_ids)
    label = cfg.name + (f" {cfg.split}" if cfg.split in ML100K_SPLITS else "")
    description = (f"{label}: {n_users} users, {n_items} items, {len(enc.ratings)} ratings "
                   f"(train {counts['train']} / val {counts['val']} / test {counts['test']}), "
                   f"scale {lo:g}-{hi:g}")
    meta = {"name": cfg.name, "source": raw.source, "n_users": n_users, "n_items": n_items,
            "n_ratings": len(enc.ratings), "rating_min": lo, "rating_max": hi, "counts": counts,
            "rating_mean": float(np.mean(enc.ratings, dtype=np.float64)), "n_duplicates": enc.n_duplicates,
            "has_timestamps": enc.timestamps is not None, "description": description, "key": parts,
            "build_s": round(time.perf_counter() - start, 3),
            "built_by": {"host": socket.gethostname(), "pid": os.getpid()}}  # which process of which node
    write_cache(folder, arrays, enc.user_ids, enc.item_ids, enc.titles, enc.genres, meta)


def _take(enc, rows: np.ndarray) -> dict:
    return {"users": enc.users[rows], "items": enc.items[rows], "ratings": enc.ratings[rows].astype(np.float32),
            "timestamps": None if enc.timestamps is None else enc.timestamps[rows]}
