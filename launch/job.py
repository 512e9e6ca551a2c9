"""The callable that submitit runs on every task of a job: distrib.train's entry, in-process.

It lives outside launch/submit.py so that its pickle names an importable module, not `__main__`.
On SLURM each task is an srun task, so distrib.distributed.resolve_env reads its rank from SLURM's
variables; submitit's local executor sets only its own (SUBMITIT_LOCAL_*), which are exported here as
a torchrun-style environment. A timeout or preemption calls `checkpoint()` (on global rank 0 only):
it returns a fresh submission of the same command, and the requeued job resumes from
run.dir/checkpoints/last.pt because the command names the same run.dir.
"""
from __future__ import annotations

import os

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, argv: list[str]):
        self.argv = list(argv)  # CONFIG and key=value overrides, run.dir included and absolute

    def __call__(self) -> int:
        export_local_rank_env(submitit.JobEnvironment())
        from distrib.train import main  # lazily: the submitting process never imports torch's trainer

        try:
            status = main(self.argv)
        except SystemExit as exit_:  # a UserError exits 2 after printing its one line
            status = exit_.code
        if status not in (0, None):
            raise RuntimeError(f"distrib.train exited with status {status}")
        return 0

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        return submitit.helpers.DelayedSubmission(TrainJob(self.argv))

    def __repr__(self) -> str:
        return f"TrainJob({' '.join(self.argv)})"


def export_local_rank_env(job_env) -> None:
    """Give a local (non-SLURM) submitit task the RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* torch expects."""
    if job_env.cluster == "slurm":
        return  # an srun task: resolve_env derives rank, master and port from SLURM_* itself
    from distrib.distributed import port_from_job_id

    os.environ.update(
        RANK=str(job_env.global_rank), WORLD_SIZE=str(job_env.num_tasks), LOCAL_RANK=str(job_env.local_rank),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port_from_job_id(str(job_env.job_id))),
    )
