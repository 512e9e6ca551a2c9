"""Helpers for the launcher tests: waiting on files and on SLURM jobs, reading results (the tiny config is
tests.helpers')."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO, TINY, clean_env, skip_or_fail, tiny  # noqa: F401  (re-exported for the launcher tests)

# Epochs long enough (~1 s on 2 ranks of a 2-core machine) to interrupt one while it runs.
SLOW = ["data.synthetic.n_users=1000", "data.synthetic.n_items=500", "data.synthetic.n_ratings=30000"]


def job_env(tmp_path: Path) -> dict:
    """A launcher-free environment whose jobs use this interpreter (the venv) and write W&B nowhere."""
    env = clean_env()
    env.update(DISTRIB_PYTHON=sys.executable, PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               WANDB_MODE="disabled", MPLCONFIGDIR=str(tmp_path / "mpl"))
    return env


def epochs_done(run_dir: Path) -> list[int]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line)["epoch"])
        except (ValueError, KeyError):
            pass  # a line being written
    return rows


def wait_until(predicate, timeout_s: float, what: str, poll_s: float = 0.2, on_timeout=lambda: ""):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}\n{on_timeout()}")


def run(cmd: list[str], timeout_s: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, **kwargs)


def sbatch(args: list[str], env: dict) -> str:
    proc = run(["sbatch", "--parsable", f"--chdir={REPO}", *args], env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def job_fields(job_id: str) -> dict:
    """scontrol's view of a job (JobState, Reason, Restarts, ...); {} once it has left the controller."""
    proc = run(["scontrol", "-o", "show", "job", job_id])
    return dict(re.findall(r"(\w+)=(\S*)", proc.stdout)) if proc.returncode == 0 else {}


def accounting(job_id: str) -> list[dict]:
    """sacct rows for the job and its steps (every run of a requeued job)."""
    proc = run(["sacct", "-n", "-P", "-D", "-j", job_id, "-o", "JobID,State,ExitCode,NTasks"])
    keys = ("job", "state", "exit", "ntasks")
    return [dict(zip(keys, line.split("|"))) for line in proc.stdout.splitlines() if line]


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def accounting_problem() -> str:
    """Why sacct cannot answer here ('' when it can): a cluster without slurmdbd has no job accounting, and
    sacct then fails at once (storage disabled, or no database connection)."""
    try:
        proc = run(["sacct", "-n", "-P", "-X", "-o", "JobID", "-S", "now-1minutes"], timeout_s=20)
    except FileNotFoundError:
        return "sacct not found"
    except subprocess.TimeoutExpired:
        return "sacct timed out"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        return f"sacct fails: {lines[-1] if lines else f'exit {proc.returncode}'}"
    return ""


def checked_accounting(job_id: str) -> list[dict]:
    """settled_accounting() where the cluster keeps job accounting. Elsewhere the calling test has made every
    check that holds without it and ends as skipped, saying why; in CI (slurmdbd is part of its cluster) the
    missing accounting is a failure."""
    problem = accounting_problem()
    if problem:
        skip_or_fail(f"the remaining checks need SLURM job accounting (slurmdbd), absent here: {problem}")
    return settled_accounting(job_id)


def settled_accounting(job_id: str, timeout_s: float = 60) -> list[dict]:
    """accounting() once slurmdbd has caught up with a job that has ended: every row final (or REQUEUED, an
    earlier run's). The controller says COMPLETED before the accounting daemon does (a row still RUNNING
    was seen in a local run)."""
    def settled():
        rows = accounting(job_id)
        return rows and all(r["state"].split()[0] in FINAL + ("REQUEUED",) for r in rows)

    wait_until(settled, timeout_s, f"sacct to record job {job_id}'s end", on_timeout=lambda: str(accounting(job_id)))
    return accounting(job_id)


def wait_job(job_id: str, timeout_s: float, log: Path | None = None) -> str:
    """Wait until the job has ended; its final state (from scontrol, else sacct)."""
    def ended():
        state = job_fields(job_id).get("JobState", "")
        if not state:  # aged out of the controller: accounting has it
            rows = [r for r in accounting(job_id) if r["job"] == job_id]
            state = rows[-1]["state"] if rows else ""
        return state.split()[0] if state.startswith(FINAL) else ""

    return wait_until(ended, timeout_s, f"job {job_id} to end", poll_s=0.5,
                      on_timeout=lambda: log.read_text()[-3000:] if log and log.exists() else "")


def release_requeued(job_id: str, on_timeout=lambda: "") -> None:
    """Start a requeued job now instead of after its ~2 min BeginTime. Not in the same second as the requeue:
    slurmd revokes the old run's credential with one-second resolution, and a run allocated within that
    second is killed as "non-startable batch job: Job credential revoked" (seen in CI)."""
    wait_until(lambda: job_fields(job_id).get("Restarts") == "1" and job_fields(job_id).get("JobState") == "PENDING",
               60, "the requeue", on_timeout=on_timeout)
    wait_until(lambda: "comp" not in run(["sinfo", "-h", "-N", "-o", "%t"]).stdout, 60, "the old run to finish completing")
    time.sleep(2.0)
    assert run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"]).returncode == 0


def resumed_from(text: str, last: str) -> bool:
    """Whether a run's output says it resumed from a checkpoint of `last`'s kind (last.pt, last.dcp, or the one
    before it, last.1.*, when the interrupt came mid-rotation)."""
    return re.search(rf"resumed from \S+/last(\.\d+)?\.{last.rsplit('.', 1)[1]} at epoch", text) is not None


def requeue_once_with_usr2(job_id: str, log: Path, run_dir: Path, epochs: int, last: str = "last.pt",
                           first_epoch_s: float = 120, finish_s: float = 150) -> str:
    """Interrupt a running slurm/train.sbatch job as its time limit does (USR2 to the batch shell, whose trap
    requeues it) once its first checkpoint (`last`) is saved, release the requeued job at once and wait for it
    to complete. Checks that the second run resumed instead of starting over and that metrics.jsonl holds
    every one of `epochs` once; returns the job's log. The caller cancels the job in its `finally`."""
    tail = lambda: log.read_text()[-3000:] if log.exists() else ""  # noqa: E731
    # The checkpoint, not only the epoch's metrics row (written first): an interrupt in between replays the epoch.
    wait_until(lambda: (run_dir / "checkpoints" / last).exists(), first_epoch_s, f"the first epoch's {last}",
               on_timeout=tail)
    assert len(epochs_done(run_dir)) < epochs, "the job finished before it could be interrupted"
    assert run(["scancel", "--signal=USR2", "--batch", job_id]).returncode == 0
    release_requeued(job_id, on_timeout=tail)  # requeued: pending with reason BeginTime (~2 min) otherwise
    assert wait_job(job_id, finish_s, log) == "COMPLETED", tail()
    text = log.read_text()
    assert "restart 0" in text and "USR2 received" in text and "restart 1" in text, text[-3000:]
    assert resumed_from(text.split("restart 1", 1)[1], last), text[-3000:]  # not a fresh start
    assert epochs_done(run_dir) == list(range(1, epochs + 1))  # each epoch once: none repeated or skipped
    return text


def assert_requeued_then_completed(job_id: str) -> None:
    """sacct's rows of the job itself: a requeued first run, a completed last one."""
    states = [r["state"] for r in checked_accounting(job_id) if r["job"] == job_id]
    assert states[0] == "REQUEUED" and states[-1] == "COMPLETED", states


def cancel(job_id: str) -> None:
    run(["scancel", job_id])


def cluster_problem() -> str:
    """Why SLURM tests cannot run here; '' when sinfo shows a usable node."""
    try:
        proc = run(["sinfo", "-h", "-N", "-o", "%t"], timeout_s=20)
    except FileNotFoundError:
        return "sinfo not found: no SLURM here (run slurm/dev-cluster.sh as root)"
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld not answering"
    states = proc.stdout.split()
    if proc.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc") for s in states):
        return f"no usable SLURM node (sinfo: {proc.stdout.strip() or proc.stderr.strip()})"
    return ""


def training_pids(run_dir: Path, environ_entry: str) -> list[int]:
    """The training processes of this run whose environment holds `environ_entry` (e.g. SLURM_PROCID=1):
    every SLURM task, on every node of the dev cluster, is a process of this machine."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"distrib.train" in cmdline and f"run.dir={run_dir}".encode() in cmdline \
                and environ_entry.encode() in environ:
            pids.append(int(entry.name))
    return pids
