"""Sharded (DCP) checkpoints as safe and as checked as replicated ones, on real finished runs: 1 rank through
`python -m distrib.train`, 2 ranks through `python -m distrib.run` (torchrun, one line for the job). A planted
`.metadata` never runs; a resume with changed keys is refused in one line; a damaged shard falls back to the
previous checkpoint and never reaches best.dcp; nothing loadable is one line; a full disk while saving is one
line and leaves no temporary directory."""
from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from distrib.checkpoint.sharded import META, SafeReader, read_meta, read_metadata
from distrib.errors import UnsafeCheckpoint
from tests.helpers import (
    REPO,
    assert_equal_weights,
    check_ok,
    clean_env,
    digest,
    fill,
    metrics,
    run_module,
    sharded_weights,
    tiny,
)

SHARDED = ("dist.embedding_sharding=row_wise",)
WORLDS = (1, 2)


def command(tmp_path: Path, run: str, world: int, *extra: str) -> list[str]:
    args = tiny(tmp_path, run, *SHARDED, *extra)
    if world == 1:
        return [sys.executable, "-m", "distrib.train", *args]
    return [sys.executable, "-m", "distrib.run", "--standalone", f"--nproc_per_node={world}", *args]


def launch(tmp_path: Path, run: str, world: int, *extra: str, timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(tmp_path, run, world, *extra), cwd=REPO, env=clean_env(), capture_output=True, check=False,
                          text=True, timeout=timeout_s)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The failed command's only line on stderr, `distrib: error: ...` (no traceback, nothing else)."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distrib: error: "), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tiny_sharded_run):
    """Two finished two-epoch sharded runs, `run1` on 1 rank (the session's) and `run2` on 2, and their data root."""
    base = tmp_path_factory.mktemp("sharded")
    shutil.copytree(tiny_sharded_run, base / "run1")  # what `launch(base, "run1", 1, "train.epochs=2")` leaves
    check_ok(launch(base, "run2", 2, "train.epochs=2"))
    return base


def copy_of(finished: Path, tmp_path: Path, world: int) -> Path:
    shutil.copytree(finished / "data", tmp_path / "data")
    shutil.copytree(finished / f"run{world}", tmp_path / "run")
    return tmp_path / "run"


class Payload:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path: Path, data: bytes) -> None:
    path.unlink()  # a file of its own, should it ever be a hard link
    path.write_bytes(data)


def saved(tmp_path: Path, state: dict) -> Path:
    """A DCP directory written by torch's own FileSystemWriter, in this process."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "no process group": this one process is the whole job
        dcp.save(state, checkpoint_id=tmp_path / "ckpt", no_dist=True)
    return tmp_path / "ckpt"


def test_what_torch_writes_for_tensors_reads_back_through_the_allowlist(tmp_path):
    state = {"model.u.weight": torch.randn(7, 3), "optim.u.weight.step": torch.tensor(5.0),
             "half": torch.ones(4, dtype=torch.bfloat16), "ids": torch.arange(6).view(2, 3)}
    path = saved(tmp_path, state)
    assert set(read_metadata(path).state_dict_metadata) == set(state)
    loaded = {key: torch.zeros_like(value) for key, value in state.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        dcp.load(loaded, storage_reader=SafeReader(path), no_dist=True)
    assert_equal_weights(loaded, state)


def test_a_planted_payload_a_bytes_entry_or_a_path_outside_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = saved(tmp_path, {"w": torch.ones(2)})
    plant(path / ".metadata", pickle.dumps(Payload(marker)))
    with pytest.raises(UnsafeCheckpoint, match=r"\.metadata: refused to load: .*\(posix\.system; loading"):
        read_metadata(path)
    with pytest.raises(CheckpointException, match="refused to load"):  # the reader alone, no check before it
        dcp.load({"w": torch.zeros(2)}, storage_reader=SafeReader(path), no_dist=True)
    torch.save({"progress": Payload(marker)}, path / META)  # the small parts: torch's weights-only unpickler
    with pytest.raises(UnsafeCheckpoint, match=r"meta\.pt: refused to load"):
        read_meta(path)
    assert not marker.exists()
    # A non-tensor entry: DCP would hand its bytes to torch.load(weights_only=False).
    with pytest.raises(UnsafeCheckpoint, match="BytesStorageMetadata"):
        read_metadata(saved(tmp_path / "bytes", {"w": torch.ones(2), "note": "text"}))
    # Shards named outside the directory.
    path = saved(tmp_path / "outside", {"w": torch.ones(2)})
    with open(path / ".metadata", "rb") as handle:
        metadata = pickle.load(handle)  # torch's own output, read here to forge it
    for info in metadata.storage_data.values():
        info.relative_path = "../../elsewhere.distcp"
    plant(path / ".metadata", pickle.dumps(metadata))
    with pytest.raises(UnsafeCheckpoint, match="it names a file outside its directory"):
        read_metadata(path)


@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", ["last", "best"])
def test_a_planted_metadata_never_runs_on_resume_evaluate_or_recommend(finished, tmp_path, world, name):
    run = copy_of(finished, tmp_path, world)
    marker = tmp_path / "ran"
    plant(run / "checkpoints" / f"{name}.dcp" / ".metadata", pickle.dumps(Payload(marker)))
    before = digest(run)
    line = one_error_line(launch(tmp_path, "run", world, "train.epochs=3"))
    assert f"{name}.dcp/.metadata: refused to load" in line, line
    assert not marker.exists() and digest(run) == before
    if world == 2:
        return  # the readers below are single processes: one run of them is enough
    for tool, args in (("distrib.evaluate", ["--checkpoint", name]),
                       ("distrib.recommend", ["--user", "1", "--checkpoint", name])):
        line = one_error_line(run_module(tool, run, *args))
        assert f"{name}.dcp/.metadata: refused to load" in line, line
    assert not marker.exists() and digest(run) == before


@pytest.mark.slow
@pytest.mark.parametrize("world, changes, expected", [
    (1, ["data.split_seed=7", "train.lr=0.01", "model.hidden=[16]", "model.n_factors=4"],
     ["data.split_seed (1 -> 7)", "train.lr (0.001 -> 0.01)", "model.hidden ([32] -> [16])",
      "model.n_factors (8 -> 4)"]),
    (2, ["data.synthetic.seed=3", "model.hidden=[16]"], ["data.synthetic.seed (0 -> 3)", "model.hidden ([32] -> [16])"]),
])
def test_a_resume_with_changed_keys_is_refused_in_one_line(finished, tmp_path, world, changes, expected):
    run = copy_of(finished, tmp_path, world)
    before = digest(run)
    line = one_error_line(launch(tmp_path, "run", world, "train.epochs=3", *changes))
    assert "resumed with changed keys" in line and all(text in line for text in expected), line
    assert digest(run) == before  # config.yaml is not rewritten


def shard(run: Path, name: str, world: int) -> Path:
    """The shard file a checkpoint's last rank wrote (__0_0.distcp on 1 rank, __1_0.distcp on 2)."""
    return run / "checkpoints" / name / f"__{world - 1}_0.distcp"


def damage(path: Path, how: str) -> None:
    size = path.stat().st_size
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        os.truncate(path, size // 2)
    else:  # 4 KB overwritten: in the middle, or (no digests to catch it) at the start, where DCP reads it
        with open(path, "r+b") as handle:
            handle.seek(0 if how == "overwritten at the start, no digests" else size // 2)
            handle.write(b"\x7f" * 4096)


def drop_digests(checkpoint: Path) -> None:
    """meta.pt as a checkpoint without shard digests has it: only DCP's own read can find the damage."""
    meta = read_meta(checkpoint)
    meta.pop("files")
    torch.save(meta, checkpoint / META)


EXPECTED_PROBLEM = {
    "missing": "is missing", "truncated": "is cut off", "overwritten": "is damaged (its SHA-256",
    "overwritten at the start, no digests": "unreadable (rank ",
}


@pytest.mark.slow
@pytest.mark.parametrize("world, how", [
    (1, "truncated"), (1, "overwritten"), (1, "overwritten at the start, no digests"),
    (2, "missing"), (2, "truncated"), (2, "overwritten"), (2, "overwritten at the start, no digests"),
])
def test_a_damaged_shard_falls_back_to_the_previous_checkpoint_and_spares_best(finished, tmp_path, world, how):
    run = copy_of(finished, tmp_path, world)
    last, best = sharded_weights(run, "last"), sharded_weights(run, "best")
    if "no digests" in how:
        drop_digests(run / "checkpoints" / "last.dcp")
    damage(shard(run, "last.dcp", world), how)
    assert_equal_weights(sharded_weights(run, "best"), best)  # best.dcp has files of its own
    proc = check_ok(launch(tmp_path, "run", world, "train.epochs=2"))
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("checkpoint last.dcp: ")]
    assert len(warnings) == 1 and EXPECTED_PROBLEM[how] in warnings[0], proc.stdout[-3000:]
    assert warnings[0].endswith("; resuming from last.1.dcp") and "at epoch 1" in proc.stdout, proc.stdout[-3000:]
    assert [row["epoch"] for row in metrics(run)] == [1, 2]
    assert_equal_weights(sharded_weights(run, "last"), last)  # epoch 2 trained again, exactly


@pytest.mark.slow
@pytest.mark.parametrize("world, how", [(1, "truncated"), (2, "overwritten at the start, no digests")])
def test_nothing_loadable_left_is_refused_in_one_line_and_changes_nothing(finished, tmp_path, world, how):
    run = copy_of(finished, tmp_path, world)
    for name in ("last.dcp", "last.1.dcp"):
        if "no digests" in how:
            drop_digests(run / "checkpoints" / name)
        damage(shard(run, name, world), how)
    before = digest(run)
    line = one_error_line(launch(tmp_path, "run", world, "train.epochs=3"))
    assert "no checkpoint to resume from (last.dcp: " in line and "; last.1.dcp: " in line, line
    assert line.count(EXPECTED_PROBLEM[how]) == 2, line
    assert digest(run) == before
    if world == 1:
        line = one_error_line(run_module("distrib.evaluate", run, "--checkpoint", "last"))
        assert "last.dcp: " in line and EXPECTED_PROBLEM[how] in line, line


@pytest.mark.slow
def test_a_damaged_best_dcp_is_refused_before_a_resumed_run_trains(finished, tmp_path):
    run = copy_of(finished, tmp_path, 1)
    damage(shard(run, "best.dcp", 1), "truncated")
    before = digest(run)
    line = one_error_line(launch(tmp_path, "run", 1, "train.epochs=3"))
    assert "best.dcp: __0_0.distcp is cut off" in line and "weights are lost" in line, line
    assert digest(run) == before
    line = one_error_line(run_module("distrib.recommend", run, "--user", "1"))
    assert "best.dcp: __0_0.distcp is cut off" in line, line


@pytest.mark.slow
@pytest.mark.parametrize("world", WORLDS)
def test_a_full_disk_while_saving_is_one_line_leaves_no_temporary_directory_and_resumes(tmp_path, tmpfs, world):
    point = tmpfs("size=72m")  # above the 64 MiB the start-up check asks for
    extra = ("train.epochs=200", "data.synthetic.n_ratings=30000", "model.n_factors=64", f"run.dir={point / 'run'}")
    proc = subprocess.Popen(command(tmp_path, "unused", world, *extra), cwd=REPO, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    run = point / "run"
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 2):
        assert time.time() < deadline and proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGSTOP)  # the launcher and every rank
    filler = fill(point, 16384)  # room for metrics.jsonl, not for a checkpoint's shards
    os.killpg(proc.pid, signal.SIGCONT)
    out, err = proc.communicate(timeout=180)
    line = one_error_line(subprocess.CompletedProcess([], proc.returncode, out, err))
    assert "no space left on its filesystem" in line, line
    checkpoints = run / "checkpoints"
    assert not list(checkpoints.glob(".*")), sorted(p.name for p in checkpoints.iterdir())
    epoch = read_meta(checkpoints / "last.dcp")["progress"]["epoch"]
    assert epoch >= 1  # the last checkpoint written in full before the disk filled
    filler.unlink()
    proc = check_ok(launch(tmp_path, "unused", world, *extra[1:], f"train.epochs={epoch + 1}"))
    assert f"at epoch {epoch}" in proc.stdout and f"[{epoch + 1:03d}/" in proc.stdout, proc.stdout[-3000:]
