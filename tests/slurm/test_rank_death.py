"""A rank killed under srun: the surviving task names the lost rank and the job ends in bounded time."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.launch.common import SLOW, cancel, epochs_done, training_pids, wait_job, wait_until
from tests.slurm.test_sbatch import submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def _task_pid(run_dir: Path, procid: str) -> int | None:
    """The training process of SLURM task `procid` writing to run_dir."""
    pids = training_pids(run_dir, f"SLURM_PROCID={procid}")
    return pids[0] if pids else None


@pytest.mark.timeout(240)
def test_a_task_killed_under_srun_ends_the_job_and_names_the_lost_rank(tmp_path):
    run_dir = tmp_path / "death"
    job, log = submit(tmp_path, "death", "train.epochs=200", "dist.timeout_s=30", *SLOW)
    try:
        wait_until(lambda: len(epochs_done(run_dir)) >= 2, 150, "two epochs", on_timeout=lambda: log.read_text())
        pid = wait_until(lambda: _task_pid(run_dir, "1"), 10, "rank 1's process")
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        state = wait_job(job, 90, log)
        assert time.monotonic() - killed < 60
    finally:
        cancel(job)
    assert state != "COMPLETED"
    text = log.read_text()
    assert "lost rank 1" in text, text[-3000:]
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert saved["progress"]["epoch"] >= 2
    assert not _task_pid(run_dir, "0") and not _task_pid(run_dir, "1"), "no process left behind"
