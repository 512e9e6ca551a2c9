"""Checkpoints of a sharded run (`dist.embedding_sharding` != none), with torch.distributed.checkpoint (DCP).

Layout in run.dir/checkpoints/: last.dcp/ (newest), last.1.dcp/ (the one before, when keep >= 2), best.dcp/,
each a DCP directory (every rank writes its own shards; `.metadata` is written last, by rank 0) plus
`meta.pt`: the small parts (scheduler, early stopping, progress, rng, config, data sizes, and each file's
SHA-256), written by rank 0. Keys are the unsharded model's: `model.u.weight`, `model.hidden.0.weight`, and the
optimizer state of each parameter under `optim.<same key>.<exp_avg|exp_avg_sq|step>`, the tables' state
sharded like the tables. DCP reshards on load, so a run saved on 2 ranks resumes on 3, and one process with no
process group reads the whole tables back (`read_model_state`: evaluate, recommend).

Atomic as replicated checkpoints are: all ranks write into `.last.dcp.tmp/`, rank 0 adds meta.pt, and only
then renames it into place (the previous one rotated to last.1.dcp); best.dcp is a copy with files of its own,
so damage to last.dcp never reaches it. A failure on any rank while saving (a full disk included) removes the
temporary directory and ends every rank with the same line.

Nothing is loaded before it is checked (`verify`), on every rank alike and before any collective: `.metadata`
is unpickled with an allowlist of DCP's own record classes (torch's reader would `pickle.load` it, running
whatever it carries), meta.pt with torch's weights-only unpickler, and every shard file must be there, long
enough and unchanged since the save. A checkpoint that fails these checks, or whose shards fail to read on any
rank, is passed over for the previous one, as replicated mode does; one carrying code is refused outright.
"""
from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata

from distrib.errors import JobError, UnsafeCheckpoint, UserError
from distrib.fsutil import NO_SPACE, NoSpace, torch_bytes
from distrib.parallel.sharding import ShardedLookupModel, table_state_keys

log = logging.getLogger("distrib")
META = "meta.pt"
TMP_NAME = ".last.dcp.tmp"
ADAM_STATE = ("exp_avg", "exp_avg_sq")

# What FileSystemWriter pickles into `.metadata` for a state of tensors (read off a real save with pickletools,
# torch 2.13): DCP's metadata classes, torch.Size, a layout looked up by name, and the checkpoint's path
# (StorageMeta.checkpoint_id; `pathlib._local` is where Python 3.13 defines the path classes). Dtypes, layouts
# and memory formats are taken by type, so new ones read too; a new field of these records needs nothing here;
# a record class a later torch adds is refused by name, in one line, until it is added below. Left out on
# purpose: BytesStorageMetadata, whose entries the loader unpickles with a full, code-running torch.load;
# distrib saves tensors only.
_PATHS = {"Path", "PosixPath", "WindowsPath", "PurePath", "PurePosixPath", "PureWindowsPath"}
METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "MetadataIndex", "StorageMeta", "TensorStorageMetadata",
                                              "TensorProperties", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": _PATHS,
    "pathlib._local": _PATHS,
}
TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)  # torch.float32 and the like: values, not callables


class Unreadable(Exception):
    """A checkpoint's shards failed to load on some rank: raised on every rank alike (DCP gathers the failures)."""


class _Refused(pickle.UnpicklingError):
    """A `.metadata` names a class or function outside METADATA_CLASSES."""


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if name in METADATA_CLASSES.get(module, ()):
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), TORCH_VALUES):
            return getattr(torch, name)
        raise _Refused(f"{module}.{name}")


def _unsafe(file: Path, why: str) -> UnsafeCheckpoint:
    return UnsafeCheckpoint(f"{file}: refused to load: {why}; use a checkpoint distrib wrote")


def read_metadata(path: Path) -> Metadata:
    """A DCP directory's `.metadata`, unpickled with METADATA_CLASSES only and checked to describe tensors stored in
    files of this directory. Raises UnsafeCheckpoint for anything else, ValueError when the file is damaged."""
    file = path / ".metadata"
    try:
        with open(file, "rb") as handle:
            metadata = _MetadataUnpickler(handle).load()
    except _Refused as err:
        raise _unsafe(file, f"it holds pickled objects that are not checkpoint records ({err}; loading them "
                            "could run code)") from None
    except Exception as err:  # noqa: BLE001 (a damaged pickle raises whatever the unpickler meets first)
        raise ValueError(f".metadata is damaged ({type(err).__name__})") from None
    if not (isinstance(metadata, Metadata) and isinstance(metadata.state_dict_metadata, dict)
            and isinstance(metadata.storage_data, dict)
            and all(isinstance(md, TensorStorageMetadata) for md in metadata.state_dict_metadata.values())):
        raise ValueError(".metadata is not a DCP checkpoint's metadata of tensors")
    for info in metadata.storage_data.values():
        name = getattr(info, "relative_path", None)
        if not isinstance(name, str) or name in ("", ".", "..") or Path(name).name != name:
            raise _unsafe(file, f"it names a file outside its directory ({name!r})")
    return metadata


class SafeReader(FileSystemReader):
    """torch's FileSystemReader with `.metadata` read by `read_metadata` instead of pickle.load; given metadata
    already read and checked, it uses that (the file is not read twice). It never reads per-rank metadata files
    (torch asks for those only of a reader whose read_metadata takes `**kwargs`)."""

    def __init__(self, path: Path, metadata: Metadata | None = None):
        super().__init__(path)
        self.metadata = metadata

    def read_metadata(self, *args, **options) -> Metadata:
        if self.metadata is None:
            self.metadata = read_metadata(Path(self.path))
        if self.metadata.storage_meta is None:
            self.metadata.storage_meta = StorageMeta()
        self.metadata.storage_meta.load_id = self.load_id  # as FileSystemReader does
        return self.metadata


class _Writer(FileSystemWriter):
    """torch's FileSystemWriter with a full disk kept recognisable on every rank: torch's zip writer reports the
    failed write as a RuntimeError ("unexpected pos") whose cause, the OSError, is lost when DCP sends a rank's
    failure to the others."""

    def write_data(self, plan, planner):
        try:
            return super().write_data(plan, planner)
        except Exception as err:
            if _is_no_space(err):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)) from None
            raise


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / META).is_file()


def missing_part(path: Path) -> str:
    """What makes an incomplete checkpoint directory incomplete, for messages."""
    return ".metadata" if not (path / ".metadata").is_file() else META


def candidates(ckpt_dir: Path) -> list[Path]:
    found = [ckpt_dir / "last.dcp"] + sorted(ckpt_dir.glob("last.[0-9]*.dcp"), key=lambda p: int(p.name.split(".")[1]))
    return [p for p in found if p.is_dir()]


def read_meta(path: Path) -> dict:
    """meta.pt, with torch's weights-only unpickler (an object that is not plain data is refused, never built)."""
    try:
        meta = torch.load(path / META, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # A class or function named ("Unsupported global: GLOBAL os.system ...", "unsupported GLOBAL posix.system
        # whose module posix is blocked") is refused; any other failure is damage.
        if "unsupported global" in str(err).lower():
            raise _unsafe(path / META, "it holds pickled objects that are not weights (loading them could run "
                                       "code)") from None
        raise ValueError(f"{META} is damaged") from None
    except (RuntimeError, EOFError):  # torch's zip reader on a file cut off or overwritten
        raise ValueError(f"{META} is damaged") from None
    if not isinstance(meta, dict) or "progress" not in meta:
        raise ValueError(f"{META} is not a checkpoint's meta part")
    return meta


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def check_files(path: Path, metadata: Metadata, digests: dict | None) -> None:
    """Every file the metadata names is there and long enough, and every file with a saved SHA-256 unchanged
    (checkpoints written before meta.pt carried digests get the first two checks)."""
    lengths: dict[str, int] = {}
    for info in metadata.storage_data.values():
        lengths[info.relative_path] = max(lengths.get(info.relative_path, 0), info.offset + info.length)
    for name, length in sorted(lengths.items()):
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
        if (path / name).stat().st_size < length:
            raise ValueError(f"{name} is cut off")
    for name, digest in sorted((digests or {}).items()):
        if not (path / name).is_file():
            raise ValueError(f"{name} is missing")
        if file_digest(path / name) != digest:
            raise ValueError(f"{name} is damaged (its SHA-256 is not the one saved with it)")


def verify(path: Path) -> tuple[Metadata, dict]:
    """A checkpoint directory's metadata and meta part, once both proved safe and its files intact: reads files
    only, no collective, so every rank reaches the same verdict. Raises UnsafeCheckpoint, or ValueError saying
    what is missing or damaged."""
    if not is_complete(path):
        raise ValueError(f"incomplete, no {missing_part(path)}")
    metadata = read_metadata(path)
    meta = read_meta(path)
    check_files(path, metadata, meta.get("files"))
    return metadata, meta


def loadable(ckpt_dir: Path, problems: list[str]) -> Iterator[tuple[Path, Metadata, dict]]:
    """The checkpoints that pass `verify`, newest first, each with its metadata and meta part; why each other one
    was passed over is appended to `problems` ("last.dcp: __1_0.distcp is cut off"). An unsafe one is refused."""
    for path in candidates(ckpt_dir):
        try:
            metadata, meta = verify(path)
        except UnsafeCheckpoint:
            raise
        except Exception as err:  # noqa: BLE001 (a damaged file raises whatever its reader meets first)
            problems.append(f"{path.name}: {_reason(err)}")
            continue
        yield path, metadata, meta


def check_same_data(meta: dict, data, path: Path, run_dir: Path) -> None:
    """The tables' shapes come from the data: a checkpoint of other data cannot be loaded, say so in one line."""
    saved = meta.get("data", {})
    changed = [f"{key} ({saved[key]} -> {now})" for key, now in (("n_users", data.n_users), ("n_items", data.n_items))
               if key in saved and saved[key] != now]
    if changed:
        raise UserError(f"run.dir {run_dir}: {path.name} was trained on other data ({', '.join(changed)}); use a new "
                        "run.dir or the data it was trained with")


def check_best(best: Path) -> None:
    """best.dcp must be intact before a resumed run trains: the end of the run evaluates it, and a damaged one
    found only then would cost the whole resumed run."""
    if not best.exists():
        return
    try:
        verify(best)
    except UnsafeCheckpoint:
        raise
    except Exception as err:  # noqa: BLE001
        raise UserError(f"{best}: {_reason(err)}; nothing was changed: the best model's weights are lost "
                        "(`python -m distrib.evaluate RUN_DIR --checkpoint last` still works); to train again, "
                        "choose a new run.dir") from None


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
    """A collective: every rank writes its shards, rank 0 the meta part and the renames. A failure on any rank
    leaves no temporary directory and raises the same one line (NoSpace for a full disk) on every rank."""
    tmp = ckpt_dir / TMP_NAME

    def publish() -> None:  # rank 0, once every shard is written: meta.pt, best.dcp, the rotation
        _write_meta(meta | {"files": _digests(tmp)}, tmp / META)
        if improved:
            _copy_into_place(tmp, ckpt_dir / "best.dcp")
        _rotate_into_place(tmp, ckpt_dir, keep)

    _write_then_publish(build_state(dmp, wrapper, optimizer), tmp, ckpt_dir, publish)


def replace_best_model(dmp, wrapper, ckpt_dir: Path) -> None:
    """best.dcp written again from the live model, which holds best.dcp's weights (the end of training loaded
    them) and what was fitted since (an ensemble's blend weights, model.blend=validation); its meta part is
    kept, its optimizer state dropped (nothing resumes from best.dcp). A collective, failing as `save` does."""
    best = ckpt_dir / "best.dcp"
    staging = best.with_name(f".{best.name}.tmp")

    def publish() -> None:
        _write_meta(read_meta(best) | {"files": _digests(staging)}, staging / META)
        _swap(staging, best)

    _write_then_publish(build_state(dmp, wrapper, None), staging, ckpt_dir, publish)


def _write_then_publish(state: dict, tmp: Path, ckpt_dir: Path, publish) -> None:
    """Every rank writes its shards of `state` into `tmp`, then rank 0 runs `publish` (moves them into place).
    A failure on any rank leaves no `tmp` and raises the same one line on every rank (NoSpace for a full disk)."""
    is_main = dist.get_rank() == 0
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    try:
        dcp.save(state, storage_writer=_Writer(tmp))
    except CheckpointException as err:  # every rank gets it, with each failed rank's exception
        rank, cause = _first_failure(err)
        failure = _is_no_space(cause), f"rank {rank}: {_first_line(cause)}"
    else:
        failure = None
        if is_main:
            try:
                publish()
            except Exception as err:  # noqa: BLE001 (reported on every rank as one line)
                failure = _is_no_space(err), f"rank 0: {_first_line(err)}"
        box = [failure]
        dist.broadcast_object_list(box, src=0)  # rank 0's part: the others must not wait at a barrier for it
        failure = box[0]
    if failure is None:
        return
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    no_space, text = failure
    if no_space:
        raise NoSpace(f"{ckpt_dir}: no space left on its filesystem; nothing was left half-written and the earlier "
                      "checkpoints are intact: free some space and start the same command again to resume")
    raise JobError(f"{ckpt_dir}: writing a checkpoint failed ({text}); the earlier checkpoints are intact: start "
                   "the same command again to resume")


def _digests(directory: Path) -> dict:
    """Each file's SHA-256, stored in meta.pt so that a damaged shard is found before DCP reads it."""
    return {p.name: file_digest(p) for p in sorted(directory.iterdir()) if p.is_file()}


def load(dmp, wrapper, optimizer, path: Path, metadata: Metadata) -> None:
    """Load model and optimizer state in place (resharded to this world size) from a checkpoint that passed
    `verify`. A collective: a shard that fails to read on any rank raises Unreadable on every rank, the state
    then partly overwritten (load another checkpoint into it, or stop)."""
    _load(build_state(dmp, wrapper, optimizer), path, metadata)


def load_model_only(dmp, wrapper, path: Path) -> None:
    """The weights of a checkpoint (best.dcp for the test metrics), without its optimizer state; any failure
    as one line, on every rank alike."""
    try:
        metadata, _ = verify(path)
        _load(build_state(dmp, wrapper, None), path, metadata)
    except UserError:
        raise
    except (ValueError, Unreadable) as err:
        raise UserError(f"{path}: {_reason(err)}; the best model's weights are lost (`python -m distrib.evaluate "
                        "RUN_DIR --checkpoint last` still works)") from None


def read_model_state(path: Path, model: nn.Module) -> dict:
    """One process, no process group: the unsharded model's state dict from a sharded checkpoint. Raises
    UnsafeCheckpoint, ValueError (missing or damaged files) or Unreadable (a shard that does not read or fit)."""
    metadata, _ = verify(path)
    state = {f"model.{k}": torch.empty_like(v) for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "assuming the intent is to load in a single process": it is
        _load(state, path, metadata, no_dist=True)
    return {k[len("model."):]: v for k, v in state.items()}


def _load(state: dict, path: Path, metadata: Metadata, no_dist: bool = False) -> None:
    try:
        dcp.load(state, storage_reader=SafeReader(path, metadata), no_dist=no_dist)
    except CheckpointException as err:  # a BaseException: `except Exception` never sees it
        rank, cause = _first_failure(err)
        if isinstance(cause, UserError):
            raise cause from None
        raise Unreadable(f"unreadable (rank {rank}: {_first_line(cause)})") from None


def _first_failure(err: CheckpointException) -> tuple[int | None, BaseException]:
    """The lowest failed rank and its exception; a full disk first, wherever it happened."""
    failures = sorted((rank, exc) for rank, (exc, _) in err.failures.items())
    for rank, exc in failures:
        if _is_no_space(exc):
            return rank, exc
    return failures[0] if failures else (None, err)


def _is_no_space(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in NO_SPACE:
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _reason(err: BaseException) -> str:
    """A short reason a checkpoint did not load: our own checks' text as it is, anything else's first line."""
    if isinstance(err, (ValueError, Unreadable)) and str(err) and "\n" not in str(err).strip():
        return str(err)
    return f"unreadable ({_first_line(err)})"


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0][:160] if lines else 'no message'}"


def _write_meta(meta: dict, path: Path) -> None:
    data = torch_bytes(meta)  # in memory first: torch's zip writer turns a full disk into an unrelated error
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def _copy_into_place(src: Path, dst: Path) -> None:
    """dst becomes a copy of src with files of its own: damage to one checkpoint never reaches the other. This
    costs a second write of the tables on each improved epoch (copy_file_range where the filesystem has it)."""
    staging = dst.with_name(f".{dst.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        shutil.copytree(src, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
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
