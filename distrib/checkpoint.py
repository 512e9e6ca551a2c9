"""Checkpoints: a dict of parts under constant keys, written by rank 0 atomically (temp file, fsync,
rename), the previous good one kept, and loaded with a fallback when the newest is cut off or corrupt.

Layout in run.dir/checkpoints/: last.pt (newest), last.1.pt (the one before, when keep >= 2), best.pt.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch

from distrib.errors import UserError

log = logging.getLogger("distrib")

KEYS = ("model", "optimizer", "scheduler", "early_stopping", "progress", "rng", "config")


def atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as handle:
        torch.save(obj, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_last(state: dict, ckpt_dir: Path, keep: int = 2) -> None:
    """Rotate last.pt -> last.1.pt ... so a write cut off midway never costs the only good checkpoint."""
    last = ckpt_dir / "last.pt"
    for i in range(keep - 1, 0, -1):
        older = ckpt_dir / (f"last.{i - 1}.pt" if i > 1 else "last.pt")
        if older.exists():
            os.replace(older, ckpt_dir / f"last.{i}.pt")
    atomic_save(state, last)


def candidates(ckpt_dir: Path) -> list[Path]:
    found = [ckpt_dir / "last.pt"] + sorted(ckpt_dir.glob("last.[0-9]*.pt"), key=lambda p: int(p.stem.split(".")[1]))
    return [p for p in found if p.exists()]


class UnsafeCheckpoint(UserError):
    """A checkpoint holds pickled objects other than tensors and plain containers: never unpickled."""


def read(path: Path, map_location="cpu") -> dict:
    """Load a checkpoint with torch's weights-only unpickler: tensors, numbers, strings, lists and dicts,
    which is all distrib saves. Anything else (a pickled callable, a class) is refused, never run."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights_only" in str(err) or "Unsupported" in str(err):
            raise UnsafeCheckpoint(f"{path}: refused to load: it holds pickled objects that are not weights "
                                   "(loading them could run code); use a checkpoint distrib wrote") from None
        raise
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise ValueError("not a distrib checkpoint (no 'model' state dict)")
    return state


def load_latest(ckpt_dir: Path) -> tuple[dict | None, Path | None]:
    """The newest checkpoint that loads; a corrupt one is reported and skipped, an unsafe one refused."""
    for path in candidates(ckpt_dir):
        try:
            state = read(path)
            if "progress" not in state:
                raise ValueError("missing progress")
            return state, path
        except UnsafeCheckpoint:
            raise
        except Exception as err:  # a truncated zip raises RuntimeError, a garbled pickle others
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, type(err).__name__)
    return None, None


def describe_mismatch(err: RuntimeError) -> str:
    """The first telling line of load_state_dict's error (size mismatch, missing or unexpected key)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "size mismatch" in line or "Missing key" in line or "Unexpected key" in line]
    return (telling or lines or ["state dict mismatch"])[0].rstrip(".")[:200]


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
