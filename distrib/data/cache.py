"""The prepared-data cache: one folder per configuration under data.cache_dir (default: `prepare.default_cache_root`).

The folder name hashes everything that changes the result, so a changed setting builds a new folder and
never reuses a stale one. A folder is written under a temp name and renamed, so its existence means it is
complete. meta.json also records every file's size and CRC-32, and each open checks them (a truncated or deleted
array would otherwise break every later run): a damaged folder is rebuilt under the lock. Readers open the arrays
with mmap_mode='r': N ranks on one node share one copy in the page cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from distrib.data.types import PreparedData, RatingSplit

CACHE_VERSION = 3  # bump when the layout or the preparation changes
SPLITS = ("train", "val", "test")
FIELDS = ("users", "items", "ratings", "timestamps")
META = "meta.json"


def cache_key(parts: dict) -> str:
    blob = json.dumps({"cache_version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_CHUNK = 16 << 20


def is_complete(folder: Path) -> bool:
    return (folder / META).is_file()


def damage(folder: Path) -> str | None:
    """None when the folder is complete and every file has the size and CRC-32 written with it; else what is
    wrong ("missing", "train_users.npy: 812 bytes, expected 48000"). CRC-32 reads ~0.4-1 GB/s: ml-25m's 0.5 GB
    costs about a second per rank."""
    if not is_complete(folder):
        return "missing"
    try:
        with open(folder / META) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{META} unreadable"
    for name, (size, crc) in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} missing"
        if path.stat().st_size != size:
            return f"{name}: {path.stat().st_size} bytes, expected {size}"
        if _crc32(path) != crc:
            return f"{name}: checksum mismatch"
    return None


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            crc = zlib.crc32(chunk, crc)
    return crc


def write_cache(folder: Path, arrays: dict[str, dict[str, np.ndarray] | None], user_ids: np.ndarray,
                item_ids: np.ndarray, titles: list[str] | None, genres: list[str] | None, meta: dict) -> None:
    """`arrays[split][field]`; a None split (no test part) is recorded as absent."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for split, fields in arrays.items():
            if fields is None:
                continue
            for field, arr in fields.items():
                if arr is not None:
                    np.save(tmp / f"{split}_{field}.npy", np.ascontiguousarray(arr))
        np.save(tmp / "user_ids.npy", user_ids)
        np.save(tmp / "item_ids.npy", item_ids)
        if titles is not None:
            with open(tmp / "items.json", "w", encoding="utf-8") as f:
                json.dump({"titles": titles, "genres": genres}, f, ensure_ascii=False)
        files = {p.name: [p.stat().st_size, _crc32(p)] for p in sorted(tmp.iterdir())}
        meta = {**meta, "splits": {s: arrays[s] is not None for s in SPLITS}, "files": files}
        with open(tmp / META, "w") as f:  # written last: its presence marks the folder complete
            json.dump(meta, f, indent=1, default=str)
        if damage(folder) is None:
            # Built meanwhile by a process whose lock this one could not see (nodes sharing a file system
            # that does not pass flock between them): keep theirs, which readers may already have open.
            return
        if folder.exists():  # a stale incomplete folder from an older crash (rename is atomic)
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:
            if not is_complete(folder):  # lost the same race in the last instant: theirs is as good
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def open_cache(folder: Path) -> PreparedData:
    with open(folder / META) as f:
        meta = json.load(f)
    splits = {s: _open_split(folder, s) if meta["splits"][s] else None for s in SPLITS}
    titles = genres = None
    if (folder / "items.json").is_file():
        with open(folder / "items.json", encoding="utf-8") as f:
            text = json.load(f)
        titles, genres = text["titles"], text["genres"]
    return PreparedData(
        train=splits["train"], val=splits["val"], test=splits["test"],
        n_users=int(meta["n_users"]), n_items=int(meta["n_items"]),
        rating_min=float(meta["rating_min"]), rating_max=float(meta["rating_max"]),
        user_ids=np.load(folder / "user_ids.npy", mmap_mode="r"),
        item_ids=np.load(folder / "item_ids.npy", mmap_mode="r"),
        titles=titles, genres=genres, cache_dir=folder, description=meta["description"], info=meta,
    )


def _open_split(folder: Path, split: str) -> RatingSplit:
    def load(field):
        path = folder / f"{split}_{field}.npy"
        return np.load(path, mmap_mode="r") if path.is_file() else None

    return RatingSplit(users=load("users"), items=load("items"), ratings=load("ratings"),
                       timestamps=load("timestamps"))
