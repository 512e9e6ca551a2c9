"""launch.submit with slurm.nodes=2 slurm.tasks_per_node=2: submitit's four tasks on two nodes train the
weights of one node x 4 processes, with the first host of the node list as master."""
from __future__ import annotations

import json
import re
import sys

import pytest

from tests.helpers import weights
from tests.launch.common import REPO, job_env, run, settled_accounting
from tests.multinode.common import rel_l2, tiny

pytestmark = [pytest.mark.multinode, pytest.mark.slurm, pytest.mark.slow]


@pytest.mark.timeout(480)  # with the session reference, when it is trained here
def test_two_node_job(tmp_path, reference):
    args = tiny(tmp_path, "job", "slurm.nodes=2", "slurm.tasks_per_node=2")
    proc = run([sys.executable, "-m", "launch.submit", *args, "--wait"], timeout_s=200, cwd=REPO,
               env=job_env(tmp_path))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    found = re.search(r"SLURM job (\d+): run.dir (\S+) log (\S+)", proc.stdout)
    assert found, proc.stdout
    job, main_log = found.group(1), open(found.group(3)).read()
    assert "world size 4" in main_log and "(slurm), " in main_log and "2 hosts, master node1:" in main_log, main_log[-3000:]
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["world_size"] == 4 and summary["epochs_run"] == 3
    assert rel_l2(weights(tmp_path / "job" / "checkpoints" / "last.pt"), reference) <= 1e-4
    steps = {r["job"]: r for r in settled_accounting(job)}
    assert steps[f"{job}.0"]["ntasks"] == "4"
