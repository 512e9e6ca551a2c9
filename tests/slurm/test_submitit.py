"""launch.submit on a real SLURM: a 2-task job, and a 2-member sweep that goes out as one job array."""
from __future__ import annotations

import json
import re
import sys

import pytest

from tests.launch.common import REPO, accounting, epochs_done, job_env, run, tiny

pytestmark = pytest.mark.slurm


def submit(args: list[str], tmp_path, timeout_s: float = 150):
    proc = run([sys.executable, "-m", "launch.submit", *args, "--wait"], timeout_s=timeout_s, cwd=REPO,
               env=job_env(tmp_path))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.timeout(180)
def test_two_task_job(tmp_path):
    out = submit(tiny(tmp_path, "job", "slurm.tasks_per_node=2"), tmp_path)
    job = re.search(r"SLURM job (\d+): run.dir (\S+) log (\S+)", out)
    assert job and job.group(2) == str(tmp_path / "job"), out
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert epochs_done(tmp_path / "job") == [0, 1, 2]
    steps = {r["job"]: r for r in accounting(job.group(1))}
    assert steps[f"{job.group(1)}.0"]["ntasks"] == "2"


@pytest.mark.timeout(180)
def test_sweep_is_one_array_with_a_run_dir_per_member(tmp_path):
    out = submit(tiny(tmp_path, "sweep") + ["--sweep", "train.lr=1e-3,3e-3"], tmp_path)
    members = re.findall(r"SLURM job (\d+)_(\d+) \[(\S+)\]: run.dir (\S+)", out)
    assert len(members) == 2, out
    assert len({array for array, _, _, _ in members}) == 1  # one array job
    for _, _, name, run_dir in members:
        assert run_dir == str(tmp_path / "sweep" / name)
        summary = json.loads((tmp_path / "sweep" / name / "summary.json").read_text())
        assert summary["world_size"] == 1 and summary["epochs_run"] == 3
        config = (tmp_path / "sweep" / name / "config.yaml").read_text()
        assert "group: sweep" in config
    lrs = {re.search(r"\n  lr: (\S+)", (tmp_path / "sweep" / name / "config.yaml").read_text()).group(1)
           for _, _, name, _ in members}
    assert lrs == {"0.001", "0.003"}
