"""A node lost mid-epoch: every task of node2 killed; node1's ranks stop within dist.timeout_s with one line
naming the lost ranks, last.pt stays intact, and the job submitted again resumes from it."""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.launch.common import SLOW, cancel, epochs_done, training_pids, wait_job, wait_until
from tests.multinode.test_sbatch import submit

pytestmark = [pytest.mark.multinode, pytest.mark.slurm, pytest.mark.slow]
TIMEOUT_S = 30


def node_tasks(run_dir: Path, node: str) -> list[int]:
    """The training processes of this run that slurmd started on `node`."""
    return training_pids(run_dir, f"SLURMD_NODENAME={node}")


@pytest.mark.timeout(420)
def test_losing_node2_ends_the_job_naming_its_ranks_and_a_resubmission_resumes(tmp_path):
    run_dir = tmp_path / "lost"
    overrides = ("train.epochs=8", f"dist.timeout_s={TIMEOUT_S}", *SLOW)
    job, log = submit(tmp_path, "lost", *overrides)
    try:
        wait_until(lambda: len(epochs_done(run_dir)) >= 2, 200, "two epochs", on_timeout=lambda: log.read_text())
        assert len(epochs_done(run_dir)) < 8, "the job finished before node2 could be lost"
        pids = wait_until(lambda: len(node_tasks(run_dir, "node2")) == 2 and node_tasks(run_dir, "node2"), 10,
                          "node2's two tasks")
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        lost = time.monotonic()
        state = wait_job(job, 120, log)
        ended_s = time.monotonic() - lost
    finally:
        cancel(job)
    text = log.read_text()
    assert state != "COMPLETED", text[-3000:]
    assert ended_s < TIMEOUT_S, f"node1 took {ended_s:.0f} s to stop"
    # Either survivor may report first (srun then ends the other): the line names node2 and its ranks.
    expected = re.compile(r"distrib: error: rank [01]: lost the connection to host node2 \(rank 2, 3\) during a collective")
    assert any(expected.match(line) for line in text.splitlines()), text[-3000:]
    assert not node_tasks(run_dir, "node1") and not node_tasks(run_dir, "node2"), "no process left behind"
    saved = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)  # intact: it loads
    done = saved["progress"]["epoch"]
    assert done >= 2

    again, again_log = submit(tmp_path, "lost", *overrides)  # the same run.dir
    try:
        assert wait_job(again, 200, again_log) == "COMPLETED", again_log.read_text()[-3000:]
    finally:
        cancel(again)
    second = again_log.read_text().split(f"job {again} restart 0", 1)[1]  # the log is appended to
    assert "resumed from" in second and f"at epoch {done}" in second, second[-3000:]
    assert epochs_done(run_dir) == list(range(1, 9))  # the epochs after last.pt once, none before it again
