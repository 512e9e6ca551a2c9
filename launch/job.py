"""The callable that submitit runs on every task of a job: distrib.train's entry, in-process.

It lives outside launch/submit.py so that its pickle names an importable module, not `__main__`.
On SLURM each task is an srun task, so distrib.parallel.distributed.resolve_env reads its rank from SLURM's
variables; submitit's local executor sets only its own (SUBMITIT_LOCAL_*), which submitit's
`TorchDistributedEnvironment` exports here as a torchrun-style environment (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT). A timeout or preemption (USR2) calls `checkpoint()` on global rank 0
only (submitit#9): it returns a fresh submission of the same command, submitit runs `scontrol
requeue` and exits that task, and the requeued job resumes from run.dir/checkpoints/last.pt because
the command names the same run.dir. The other ranks ignore the signal and then lose rank 0 (or are
killed by the requeue).

A task of a run that SLURM has requeued ends without a result: submitit would otherwise pickle its
exit (rank 0's sys.exit, another rank's "lost rank 0") as the job's error, and `--wait` or
`job.results()` would report a failure for a job that is in fact back in the queue.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import submitit


class TrainJob(submitit.helpers.Checkpointable):
    def __init__(self, argv: list[str]):
        self.argv = list(argv)  # CONFIG and key=value overrides, run.dir included and absolute

    def __call__(self) -> int:
        job_env = submitit.JobEnvironment()
        export_local_rank_env(job_env)
        from distrib.train import main  # lazily: the submitting process never imports torch's trainer

        self.requeueing = False
        try:
            status = main(self.argv)
        except SystemExit as exit_:  # a UserError exits 2 after printing its one line
            if self.requeueing:  # submitit's sys.exit(-1) once checkpoint() has been dumped and requeued
                end_requeued_run(job_env)
                raise
            status = exit_.code
        except Exception:
            if requeued_since_start(job_env):
                end_requeued_run(job_env, 1)
            raise
        if status not in (0, None):
            if requeued_since_start(job_env):
                end_requeued_run(job_env, status)
            raise RuntimeError(f"distrib.train exited with status {status}")
        return 0

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        self.requeueing = True  # submitit calls this in rank 0's process, in its USR2 handler
        return submitit.helpers.DelayedSubmission(TrainJob(self.argv))

    def __repr__(self) -> str:
        return f"TrainJob({' '.join(self.argv)})"


def export_local_rank_env(job_env) -> None:
    """Give a local (non-SLURM) submitit task the RANK/WORLD_SIZE/LOCAL_RANK/MASTER_* torch expects."""
    if job_env.cluster == "slurm":
        return  # an srun task: resolve_env derives rank, master (first host of the node list) and port itself
    # Every task derives the same port from the job id; the device is chosen from LOCAL_RANK, not by
    # narrowing CUDA_VISIBLE_DEVICES.
    submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    os.environ["DISTRIB_LAUNCHER"] = "submitit-local"  # the log names the launcher that ran it, not torchrun


def requeued_since_start(job_env, tries: int = 5) -> bool:
    """Whether SLURM has requeued this job since this run of it began: its restart count went up.
    scontrol is retried: the requeue's SIGTERM to the step's processes can kill it mid-call."""
    job_id = os.environ.get("SLURM_JOB_ID", "")  # the array task's own id, which scontrol knows
    if job_env.cluster != "slurm" or not job_id:
        return False
    started = int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    for attempt in range(tries):
        if attempt:
            time.sleep(0.5)
        try:
            proc = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                                  timeout=20)
        except (OSError, subprocess.SubprocessError):
            continue
        found = re.search(r"\bRestarts=(\d+)", proc.stdout)
        if proc.returncode == 0 and found:
            return int(found.group(1)) > started
    return False


def end_requeued_run(job_env, status=None) -> None:
    """End a task of a requeued run with no result pickle: SystemExit passes through submitit's
    `except Exception`, so the job's outcome is the requeued run's."""
    print(f"distrib: job {job_env.job_id} was requeued: task {job_env.global_rank} of this run ends here "
          "(no result); the requeued run resumes from the last checkpoint", file=sys.stderr, flush=True)
    if status is not None:
        raise SystemExit(status if isinstance(status, int) and status else 1)
