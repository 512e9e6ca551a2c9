"""Session fixtures shared by every suite: a tiny finished training run and the real-data root.

The CI rule (`tests.helpers.skip_or_fail`): outside CI a test whose prerequisite is missing (real MovieLens
data, a SLURM cluster, root for a mount) is skipped; in CI (`CI` set) it fails, so CI cannot pass by not
running it.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.helpers import run_module, skip_or_fail, tiny


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """The run directory of one tiny training run through the real entry point, shared by the session's tests
    that need a finished run (evaluate, recommend, checkpoint safety). Copy it before changing it."""
    root = tmp_path_factory.mktemp("tiny_run")
    out = run_module("distrib.train", *tiny(root, "run", "train.epochs=2"))
    assert out.returncode == 0, out.stderr[-3000:]
    return root / "run"


@pytest.fixture(scope="session")
def data_root() -> Path:
    """$DISTRIB_TEST_DATA: the folder holding real MovieLens copies (ml-100k/, ml-latest-small/), read-only."""
    root = os.environ.get("DISTRIB_TEST_DATA", "")
    if not root:
        skip_or_fail("DISTRIB_TEST_DATA is not set (the folder holding ml-100k/ and ml-latest-small/ extracted)")
    if not (Path(root) / "ml-100k").is_dir():
        pytest.fail(f"DISTRIB_TEST_DATA={root} has no ml-100k/ directory")
    return Path(root)
