"""A sharded-embedding job (dist.embedding_sharding=row_wise) on a real SLURM: two srun tasks, TorchRec's
all-to-all between them, DCP checkpoints in the run directory; USR2 requeues it and it resumes from last.dcp."""
from __future__ import annotations

import json

import pytest

from tests.helpers import assert_equal_weights, check_ok, sharded_weights, train_cli
from tests.launch.common import (
    REPO,
    SLOW,
    assert_requeued_then_completed,
    cancel,
    epochs_done,
    job_env,
    requeue_once_with_usr2,
    sbatch,
    tiny,
    wait_job,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]
TEMPLATE = str(REPO / "slurm" / "train.sbatch")
SHARDED = ["dist.embedding_sharding=row_wise", "model.dropouts=[0]", "model.embedding_dropout=0"]


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


@pytest.mark.timeout(360)
def test_usr2_requeues_a_sharded_job_and_it_resumes_from_last_dcp_to_the_uninterrupted_weights(tmp_path):
    log = tmp_path / "cut.out"
    job = sbatch(["--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--job-name=distrib-test-sharded-cut",
                  f"--output={log}", TEMPLATE, *tiny(tmp_path, "cut", "train.epochs=6", *SLOW, *SHARDED)],
                 job_env(tmp_path))
    try:
        requeue_once_with_usr2(job, log, tmp_path / "cut", 6, last="last.dcp", first_epoch_s=150, finish_s=200)
    finally:
        cancel(job)
    # The uninterrupted run on 2 torchrun ranks: the same world size, so the same weights bit for bit.
    check_ok(train_cli(tiny(tmp_path, "ref", "train.epochs=6", *SLOW, *SHARDED), nproc=2, timeout=200,
                       env=job_env(tmp_path)))
    assert_equal_weights(sharded_weights(tmp_path / "cut"), sharded_weights(tmp_path / "ref"))
    assert_requeued_then_completed(job)
