"""Checkpoints of a sharded run (`dist.embedding_sharding` != none), with torch.distributed.checkpoint (DCP).

Layout in run.dir/checkpoints/: last.dcp/ (newest), last.1.dcp/ (the one before, when keep >= 2), best.dcp/,
each a DCP directory (every rank writes its own shards; `.metadata` is written last, by rank 0) plus
`meta.pt`: the small parts (scheduler, early stopping, progress, rng, config, data sizes), written by rank 0.
Keys are the unsharded model's: `model.u.weight`, `model.hidden.0.weight`, and the optimizer state of each
parameter under `optim.<same key>.<exp_avg|exp_avg_sq|step>`, the tables' state sharded like the tables.
DCP reshards on load, so a run saved on 2 ranks resumes on 3, and one process with no process group reads
the whole tables back (`read_model_state`: evaluate, recommend).

Atomic as replicated checkpoints are: all ranks write into `.last.dcp.tmp/`, rank 0 adds meta.pt, and only
then renames it into place (the previous one rotated to last.1.dcp); best.dcp is the same files, hard-linked.
A directory without `.metadata` or meta.pt is incomplete and never loaded.
"""
from __future__ import annotations

import logging
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn

from distrib.errors import UserError
from distrib.parallel.sharding import ShardedLookupModel, table_state_keys

log = logging.getLogger("distrib")
META = "meta.pt"
ADAM_STATE = ("exp_avg", "exp_avg_sq")


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / META).is_file()


def missing_part(path: Path) -> str:
    """What makes an incomplete checkpoint directory incomplete, for messages."""
    return ".metadata" if not (path / ".metadata").is_file() else META


def candidates(ckpt_dir: Path) -> list[Path]:
    found = [ckpt_dir / "last.dcp"] + sorted(ckpt_dir.glob("last.[0-9]*.dcp"), key=lambda p: int(p.name.split(".")[1]))
    return [p for p in found if p.is_dir()]


def read_meta(path: Path) -> dict:
    return torch.load(path / META, map_location="cpu", weights_only=True)


def build_state(dmp: nn.Module, wrapper: ShardedLookupModel, optimizer: torch.optim.Optimizer | None) -> dict:
    """The DCP state dict of model and optimizer (None: the model only), aliasing the live tensors (so dcp.load
    fills them in place)."""
    from torch.distributed._shard.sharded_tensor import Shard, ShardedTensor

    model_state = dmp.state_dict()
    table_keys = table_state_keys(dmp, wrapper)
    state = {}
    for key, value in model_state.items():
        name = table_keys.get(key) or (key[len("model."):] if key.startswith("model.") else None)
        if name is not None:
            state[f"model.{name}"] = value
    for key, param in dmp.named_parameters() if optimizer is not None else ():
        if not param.requires_grad:
            continue
        slot = optimizer.state[param]
        if not slot:  # not stepped yet (a fresh optimizer that is about to load): zero state to load into
            slot["step"] = torch.zeros((), dtype=torch.float32)
            for name in ADAM_STATE:
                slot[name] = torch.zeros_like(param, memory_format=torch.preserve_format)
        name = table_keys.get(key) or key[len("model."):]
        state[f"optim.{name}.step"] = slot["step"]
        for part in ADAM_STATE:
            if key in table_keys:
                weight = model_state[key]
                shards = [Shard(tensor=slot[part].view_as(shard.tensor), metadata=shard.metadata)
                          for shard in weight.local_shards()]
                state[f"optim.{name}.{part}"] = ShardedTensor._init_from_local_shards_and_global_metadata(
                    shards, weight.metadata(), process_group=dist.group.WORLD)
            else:
                state[f"optim.{name}.{part}"] = slot[part]
    return state


def save(dmp, wrapper, optimizer, meta: dict, ckpt_dir: Path, improved: bool, keep: int) -> None:
    """A collective: every rank writes its shards, rank 0 the meta part and the renames."""
    tmp = ckpt_dir / ".last.dcp.tmp"
    if dist.get_rank() == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    dcp.save(build_state(dmp, wrapper, optimizer), checkpoint_id=tmp)
    if dist.get_rank() == 0:
        _write_meta(meta, tmp / META)
        if improved:
            _link_into_place(tmp, ckpt_dir / "best.dcp")
        _rotate_into_place(tmp, ckpt_dir, keep)
    dist.barrier()


def load(dmp, wrapper, optimizer, path: Path) -> dict:
    """Load model and optimizer state in place (resharded to this world size); returns the meta part."""
    try:
        dcp.load(build_state(dmp, wrapper, optimizer), checkpoint_id=path)
    except Exception as err:  # noqa: BLE001 (DCP wraps every rank's failure in one CheckpointException)
        raise UserError(f"{path}: does not fit this model ({_first_line(err)}); use a new run.dir or the config "
                        "it was trained with") from None
    return read_meta(path)


def load_model_only(dmp, wrapper, path: Path) -> None:
    """The weights of a checkpoint (best.dcp for the test metrics), without its optimizer state."""
    dcp.load(build_state(dmp, wrapper, None), checkpoint_id=path)


def read_model_state(path: Path, model: nn.Module) -> dict:
    """One process, no process group: the unsharded model's state dict from a sharded checkpoint."""
    state = {f"model.{k}": torch.empty_like(v) for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to load in a single process": it is
        dcp.load(state, checkpoint_id=path, no_dist=True)
    return {k[len("model."):]: v for k, v in state.items()}


def _write_meta(meta: dict, path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(meta, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _link_into_place(src: Path, dst: Path) -> None:
    """dst becomes a copy of src made of hard links (no second write of the tables)."""
    staging = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(src, staging, copy_function=os.link)
    _swap(staging, dst)


def _rotate_into_place(src: Path, ckpt_dir: Path, keep: int) -> None:
    """last.dcp -> last.1.dcp ... (the oldest dropped), then src -> last.dcp: the previous good one survives a
    death at any point (the newest complete directory is what resume reads)."""
    names = ["last.dcp"] + [f"last.{i}.dcp" for i in range(1, max(keep, 1))]
    if keep > 1:
        shutil.rmtree(ckpt_dir / names[-1], ignore_errors=True)
    for i in range(len(names) - 1, 0, -1):
        if (ckpt_dir / names[i - 1]).exists():
            os.replace(ckpt_dir / names[i - 1], ckpt_dir / names[i])
    _swap(src, ckpt_dir / "last.dcp")


def _swap(src: Path, dst: Path) -> None:
    old = dst.with_name(f".{dst.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    telling = [line for line in lines if "size" in line.lower() or "missing" in line.lower() or "key" in line.lower()]
    return (telling or lines or [type(err).__name__])[0][:200]
