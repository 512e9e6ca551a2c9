"""Checkpoints: a dict of parts under constant keys, written by rank 0 atomically (temp file, fsync,
rename), the previous good one kept, and loaded with a fallback when the newest is cut off or corrupt.
`read_weights` / `read_sharded_weights` give a finished run's weights to the tools that use a trained model.

Layout in run.dir/checkpoints/: last.pt (newest), last.1.pt (the one before, when keep >= 2), best.pt.
"""
from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from distrib.errors import UnsafeCheckpoint, UserError
from distrib.fsutil import atomic_torch_save, torch_bytes, write_temp

log = logging.getLogger("distrib")

WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers, should one slip through


def save_last(state: dict, ckpt_dir: Path, keep: int = 2) -> None:
    """Rotate last.pt -> last.1.pt ... only once the new file is written in full, so neither a write cut off
    midway nor a full disk ever costs a good checkpoint."""
    last = ckpt_dir / "last.pt"
    data = torch_bytes(state)
    tmp = write_temp(last, lambda handle: handle.write(data))
    for i in range(keep - 1, 0, -1):
        older = ckpt_dir / (f"last.{i - 1}.pt" if i > 1 else "last.pt")
        if older.exists():
            os.replace(older, ckpt_dir / f"last.{i}.pt")
    os.replace(tmp, last)


def save(state: dict, ckpt_dir: Path, improved: bool, keep: int = 2) -> None:
    """An epoch's checkpoint: best.pt too when validation improved, then last.pt (rotated)."""
    if improved:
        atomic_torch_save(state, ckpt_dir / "best.pt")
    save_last(state, ckpt_dir, keep)


def replace_model(path: Path, model_state: dict) -> None:
    """Rewrite a checkpoint with other model weights (an ensemble's fitted blend), the rest kept."""
    state = read_or_refuse(path, map_location="cpu")
    state["model"] = {key: value.cpu() for key, value in model_state.items()}
    atomic_torch_save(state, path)


def check_best_loads(best: Path) -> None:
    """best.pt must load before a resumed run trains: the end of the run evaluates it, and a damaged one found
    only then would cost the whole resumed run."""
    if not best.exists():
        return
    try:
        read(best)
    except UnsafeCheckpoint:
        raise
    except Exception as err:
        raise UserError(f"{best}: {describe_unreadable(err)}; nothing was changed: the best model's weights "
                        "are lost (`python -m distrib.evaluate RUN_DIR --checkpoint last` still works); "
                        "to train again, choose a new run.dir") from None


def candidates(ckpt_dir: Path) -> list[Path]:
    found = [ckpt_dir / "last.pt"] + sorted(ckpt_dir.glob("last.[0-9]*.pt"), key=lambda p: int(p.stem.split(".")[1]))
    return [p for p in found if p.exists()]


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


def load_latest(ckpt_dir: Path) -> tuple[dict | None, Path | None, list[str]]:
    """The newest checkpoint that loads, and why each newer one did not ("last.pt: cut off ..."); an unsafe one
    is refused. A corrupt newest one is reported and the previous one used."""
    problems = []
    for path in candidates(ckpt_dir):
        try:
            state = read(path)
            if "progress" not in state:
                raise ValueError("missing progress")
            for problem in problems:
                name, reason = problem.split(": ", 1)
                log.warning("checkpoint %s is unreadable (%s); resuming from %s", name, reason, path.name)
            return state, path, problems
        except UnsafeCheckpoint:
            raise
        except Exception as err:  # a truncated zip raises RuntimeError, a garbled pickle others
            problems.append(f"{path.name}: {describe_unreadable(err)}")
    return None, None, problems


def describe_unreadable(err: Exception) -> str:
    """A short reason a checkpoint did not load: torch's zip reader says 'failed finding central directory'
    for a file cut off midway."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if "central directory" in text or "zip archive" in text or isinstance(err, EOFError):
        return "cut off or not a checkpoint file"
    return f"unreadable ({type(err).__name__}: {text[:120]})"


def read_or_refuse(path: Path, map_location="cpu") -> dict:
    """`read`, with any failure as one line naming the file."""
    try:
        return read(path, map_location)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{path}: {describe_unreadable(err)}") from None


def describe_mismatch(err: RuntimeError) -> str:
    """The first telling line of load_state_dict's error (size mismatch, missing or unexpected key)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "size mismatch" in line or "Missing key" in line or "Unexpected key" in line]
    return (telling or lines or ["state dict mismatch"])[0].rstrip(".")[:200]



def read_sharded_weights(path: Path, model: torch.nn.Module) -> dict:
    """The whole tables of a sharded run's DCP checkpoint, read in this one process (no process group), with
    its metadata and files checked first (`distrib.checkpoint.sharded.verify`); errors as one UserError line."""
    from distrib.checkpoint.sharded import Unreadable, read_model_state

    try:
        return read_model_state(path, model)
    except ValueError as err:  # missing, cut off or damaged files
        raise UserError(f"{path}: {err}") from None
    except Unreadable as err:  # a shard that does not read, or a key or size the model lacks
        raise UserError(f"{path}: does not fit the model that config.yaml describes, or is damaged ({err})") from None


def read_weights(path: Path) -> dict:
    """The model's state dict from a checkpoint, any wrapper prefixes removed; errors as one UserError line."""
    try:
        state = read(path)
    except UserError:
        raise
    except ValueError as err:
        raise UserError(f"{path}: {err}") from None
    except Exception as err:  # a truncated zip raises RuntimeError, a garbled pickle others
        raise UserError(f"{path}: unreadable checkpoint ({type(err).__name__})") from None
    weights = state["model"]
    for prefix in WRAPPER_PREFIXES:
        consume_prefix_in_state_dict_if_present(weights, prefix)
    return weights
