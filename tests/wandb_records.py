"""Read a W&B run back from its `.wandb` transaction log, for tests that must not need a W&B server.

The `.wandb` file is a LevelDB-style log (32 KiB blocks, 7-byte chunk headers: CRC-32, length, type)
after a 7-byte W&B header (`:W&B`, magic 0xBEE1, version 0); each logical record is one
`wandb.proto.wandb_internal_pb2.Record`. wandb 0.31 ships no Python reader for it (its old
`sdk/internal/datastore.py` went with the Go core), so this is one, checked against every chunk's CRC.

    from tests.wandb_records import read_wandb_run
    run = read_wandb_run(run_dir)   # every run-*.wandb under run_dir/wandb, oldest first
    run["run_ids"], run["config"], run["history"], run["summary"], run["files"], run["artifacts"]
"""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
BLOCK_BYTES = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def iter_records(path: Path):
    """Yield each `Record` of one `.wandb` file, in write order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path}: not a W&B transaction log (header {data[:7]!r})")
    pos, pending = HEADER.size, b""
    while pos < len(data):
        if BLOCK_BYTES - pos % BLOCK_BYTES < CHUNK.size:
            pos += BLOCK_BYTES - pos % BLOCK_BYTES  # the block's tail is padding
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        body = data[pos + CHUNK.size: pos + CHUNK.size + length]
        pos += CHUNK.size + length
        if kind == 0 and length == 0:
            continue
        if zlib.crc32(body, zlib.crc32(bytes([kind]))) != crc:
            raise ValueError(f"{path}: CRC mismatch at byte {pos}")
        if kind in (FULL, FIRST):
            pending = body
        else:
            pending += body
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _keys(item) -> list[str]:
    return list(item.nested_key) if item.nested_key else [item.key]


def _apply(tree: dict, item, value) -> None:
    *parents, leaf = _keys(item)
    for key in parents:
        tree = tree.setdefault(key, {})
    tree[leaf] = value


def read_wandb_run(run_dir: Path, files: list[Path] | None = None) -> dict:
    """Everything the tests assert on, from all `.wandb` logs under `run_dir/wandb` (a resumed run
    writes one log per process), merged oldest first; or only the given `files`.

    Keys: `files` (the .wandb paths), `run_ids`, `groups` and `names` (one per run record), `config` (merged values),
    `history` (one dict per row, `_step` included), `summary` (merged, nested keys as nested dicts),
    `metrics` (define_metric records as dicts), `artifacts` (name, type, file paths), `exit_codes`.
    """
    from google.protobuf.json_format import MessageToDict

    if files is None:
        files = sorted(Path(run_dir).glob("wandb/*run-*/run-*.wandb"), key=lambda p: p.parent.name)
    out = {"files": files, "run_ids": [], "groups": [], "names": [], "config": {}, "history": [], "summary": {},
           "metrics": [], "artifacts": [], "exit_codes": []}
    for path in files:
        for record in iter_records(path):
            kind = record.WhichOneof("record_type")
            if kind == "run":
                out["run_ids"].append(record.run.run_id)
                out["groups"].append(record.run.run_group)
                out["names"].append(record.run.display_name)
                _merge_config(out["config"], record.run.config.update)
            elif kind == "config":
                _merge_config(out["config"], record.config.update)
            elif kind == "history":
                row: dict = {}
                for item in record.history.item:
                    _apply(row, item, json.loads(item.value_json))
                out["history"].append(row)
            elif kind == "summary":
                for item in record.summary.update:
                    _apply(out["summary"], item, json.loads(item.value_json))
            elif kind == "metric":
                out["metrics"].append(MessageToDict(record.metric, preserving_proto_field_name=True))
            elif kind == "artifact":
                art = record.artifact
                out["artifacts"].append({"name": art.name, "type": art.type,
                                         "paths": [e.path for e in art.manifest.contents]})
            elif kind == "exit":
                out["exit_codes"].append(record.exit.exit_code)
    out["config"].pop("_wandb", None)
    return out


def _merge_config(config: dict, updates) -> None:
    for item in updates:
        _apply(config, item, json.loads(item.value_json))


def media_files(run_dir: Path) -> list[Path]:
    """Files W&B saved under each run's `files/media/` (images, tables)."""
    return sorted(Path(run_dir).glob("wandb/*run-*/files/media/**/*.*"))
