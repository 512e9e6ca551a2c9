"""Session fixtures shared by every suite: tiny finished training runs (replicated, sharded) and the real-data
root.

The CI rule (`tests.helpers.skip_or_fail`): outside CI a test whose prerequisite is missing (real MovieLens
data, a SLURM cluster, root for a mount) is skipped; in CI (`CI` set) it fails, so CI cannot pass by not
running it.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers import SHARDED_COMPARISON, run_module, skip_or_fail, tiny, train_cli


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of one tiny training run through the real entry point, shared by the session's tests
    that need a finished run (evaluate, recommend, checkpoint safety). Copy it before changing it."""
    root = tmp_path_factory.mktemp("tiny_run")
    out = run_module("distrib.train", *tiny(root, "run", "train.epochs=2"))
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="session")
def tiny_sharded_run(tmp_path_factory) -> Path:
    """The run directory of one tiny two-epoch run with sharded embedding tables (TorchRec, 1 process, DCP
    checkpoints), beside its data root, shared by the session's sharded-checkpoint tests. Copy it before
    changing it."""
    root = tmp_path_factory.mktemp("tiny_sharded_run")
    out = train_cli(tiny(root, "run", "dist.embedding_sharding=row_wise", "train.epochs=2"))
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="session")
def sharded_dense_run(tmp_path_factory) -> Path:
    """The run directory of SHARDED_COMPARISON on 2 ranks, row_wise tables with replicated mode's (dense)
    update, fp32: test_sharding compares it with the replicated weights, test_sharded_parity with its bf16 twin.
    Copy it before changing it."""
    root = tmp_path_factory.mktemp("sharded_dense_run")
    out = train_cli(tiny(root, "run", *SHARDED_COMPARISON, "dist.embedding_sharding=row_wise",
                         "dist.embedding_update=dense"), nproc=2)
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "run"


class ResumedRun(NamedTuple):
    after_2_epochs: Path  # a copy of the run directory after the first launch
    run: Path  # the run directory after the resume
    first: subprocess.CompletedProcess  # the first launch (torchrun, 2 ranks, OMP_NUM_THREADS=1)
    resumed: subprocess.CompletedProcess


@pytest.fixture(scope="session")
def two_rank_resumed_run(tmp_path_factory) -> ResumedRun:
    """The tiny config on 2 ranks with W&B offline, trained for 2 epochs and then resumed to 4. test_tracking_e2e
    reads the W&B run continuing, test_train compares the weights with an uninterrupted run's, test_threads reads
    the first launch's header. Read only."""
    root = tmp_path_factory.mktemp("two_rank_resumed_run")
    first = train_cli(tiny(root, "run", "tracking.mode=offline", "train.epochs=2"), nproc=2)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copytree(root / "run", root / "after_2_epochs")
    resumed = train_cli(tiny(root, "run", "tracking.mode=offline", "train.epochs=4"), nproc=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return ResumedRun(root / "after_2_epochs", root / "run", first, resumed)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$DISTRIB_TEST_DATA: the folder holding real MovieLens copies (ml-100k/, ml-latest-small/), read-only."""
    root = os.environ.get("DISTRIB_TEST_DATA", "")
    if not root:
        skip_or_fail("DISTRIB_TEST_DATA is not set (the folder holding ml-100k/ and ml-latest-small/ extracted)")
    if not (Path(root) / "ml-100k").is_dir():
        pytest.fail(f"DISTRIB_TEST_DATA={root} has no ml-100k/ directory")
    return Path(root)


@pytest.fixture
def tmpfs(tmp_path):
    """`tmpfs(options)` mounts a real tmpfs (e.g. "size=1m", "ro,size=1m") and returns its path: a full or
    read-only filesystem for real (root ignores file modes and quotas, so a mount is the honest test)."""
    mounted = []

    def make(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if proc.returncode != 0:
            skip_or_fail(f"cannot mount a tmpfs (needs root): {proc.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield make
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)
