"""A sharded-embedding job (dist.embedding_sharding=row_wise) on a real SLURM: two srun tasks, TorchRec's
all-to-all between them, DCP checkpoints in the run directory."""
from __future__ import annotations

import json

import pytest

from tests.launch.common import REPO, cancel, epochs_done, job_env, sbatch, tiny, wait_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TEMPLATE = str(REPO / "slurm" / "train.sbatch")


@pytest.mark.timeout(300)
def test_two_task_sharded_job_completes_with_dcp_checkpoints(tmp_path):
    log = tmp_path / "sharded.out"
    job = sbatch(["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--job-name=distrib-test-sharded",
                  f"--output={log}", TEMPLATE, *tiny(tmp_path, "sharded", "dist.embedding_sharding=row_wise")],
                 job_env(tmp_path))
    try:
        assert wait_job(job, 270, log) == "COMPLETED", log.read_text()[-3000:]
    finally:
        cancel(job)
    run = tmp_path / "sharded"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 3
    assert epochs_done(run) == [1, 2, 3]
    assert (run / "checkpoints" / "last.dcp" / "meta.pt").is_file()
    assert (run / "checkpoints" / "best.dcp" / ".metadata").is_file()
    assert "(slurm)" in log.read_text()
