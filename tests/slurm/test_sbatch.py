"""slurm/train.sbatch on a real SLURM: two srun tasks form one gloo group; USR2 requeues and resumes."""
from __future__ import annotations

import json

import pytest

from tests.helpers import assert_equal_weights, weights
from tests.launch.common import (
    REPO,
    SLOW,
    assert_requeued_then_completed,
    cancel,
    checked_accounting,
    epochs_done,
    job_env,
    requeue_once_with_usr2,
    sbatch,
    tiny,
    wait_job,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TEMPLATE = str(REPO / "slurm" / "train.sbatch")
TWO_RANKS = ["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1"]


def submit(tmp_path, name: str, *overrides: str) -> tuple[str, object]:
    log = tmp_path / f"{name}.out"
    job = sbatch([*TWO_RANKS, f"--job-name=distrib-test-{name}", f"--output={log}", TEMPLATE,
                  *tiny(tmp_path, name, *overrides)], job_env(tmp_path))
    return job, log


@pytest.mark.timeout(180)
def test_two_tasks_form_one_group(tmp_path):
    job, log = submit(tmp_path, "two")
    try:
        assert wait_job(job, 150, log) == "COMPLETED", log.read_text()[-3000:]
    finally:
        cancel(job)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 3
    assert epochs_done(tmp_path / "two") == [1, 2, 3]
    assert "world size 2" in log.read_text() and "(slurm)" in log.read_text()
    # Both ranks ran as tasks of one step, and the batch shell itself did not train (sacct's step rows).
    steps = {r["job"]: r for r in checked_accounting(job)}
    assert steps[f"{job}.0"]["ntasks"] == "2" and steps[f"{job}.0"]["state"] == "COMPLETED"
    assert steps[f"{job}.batch"]["ntasks"] == "1"


@pytest.mark.timeout(300)
def test_usr2_requeues_and_resumes_to_the_uninterrupted_weights(tmp_path):
    epochs = "train.epochs=6"
    job, log = submit(tmp_path, "cut", epochs, *SLOW)
    try:
        requeue_once_with_usr2(job, log, tmp_path / "cut", 6)
    finally:
        cancel(job)
    ref, ref_log = submit(tmp_path, "ref", epochs, *SLOW)
    try:
        assert wait_job(ref, 150, ref_log) == "COMPLETED", ref_log.read_text()[-3000:]
    finally:
        cancel(ref)
    assert_equal_weights(weights(tmp_path / "cut/checkpoints/last.pt"), weights(tmp_path / "ref/checkpoints/last.pt"))
    assert_requeued_then_completed(job)
