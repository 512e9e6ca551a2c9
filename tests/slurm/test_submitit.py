"""launch.submit on a real SLURM: a 2-task job (replicated, and with sharded tables), a 2-member sweep that goes
out as one job array, and a preempted job that submitit requeues and that resumes to the weights of an
uninterrupted run."""
from __future__ import annotations

import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import assert_equal_weights, check_ok, train_cli, weights
from tests.launch.common import (
    REPO,
    SLOW,
    assert_requeued_then_completed,
    cancel,
    checked_accounting,
    epochs_done,
    job_env,
    release_requeued,
    run,
    tiny,
    wait_job,
    wait_until,
)

pytestmark = [pytest.mark.slurm, pytest.mark.slow]


def submit(args: list[str], tmp_path, timeout_s: float = 150):
    proc = run([sys.executable, "-m", "launch.submit", *args, "--wait"], timeout_s=timeout_s, cwd=REPO,
               env=job_env(tmp_path))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sharding, last", [("none", "last.pt"), ("row_wise", "last.dcp/.metadata")])
def test_two_task_job(tmp_path, sharding, last):
    out = submit(tiny(tmp_path, "job", "slurm.tasks_per_node=2", f"dist.embedding_sharding={sharding}"), tmp_path,
                 timeout_s=270)
    job = re.search(r"SLURM job (\d+): run.dir (\S+) log (\S+)", out)
    assert job and job.group(2) == str(tmp_path / "job"), out
    summary = json.loads((tmp_path / "job" / "summary.json").read_text())
    assert summary["world_size"] == 2
    assert epochs_done(tmp_path / "job") == [1, 2, 3]
    assert (tmp_path / "job" / "checkpoints" / last).is_file()
    steps = {r["job"]: r for r in checked_accounting(job.group(1))}
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
    table = out[out.index(f"sweep of 2 runs in {tmp_path / 'sweep'}"):].splitlines()[2:4]  # after title and header
    assert [row.split()[0] for row in table] == [name for _, _, name, _ in members]
    assert all(row.split()[1] in ("1e-3", "3e-3") and row.split()[-1] == "done" for row in table), table


@pytest.mark.timeout(240)
def test_preempted_job_requeues_and_resumes_to_the_uninterrupted_weights(tmp_path):
    epochs = "train.epochs=10"
    cmd = [sys.executable, "-m", "launch.submit", *tiny(tmp_path, "cut", "slurm.tasks_per_node=2", epochs, *SLOW),
           "--wait"]
    submitter = subprocess.Popen(cmd, cwd=REPO, env=job_env(tmp_path), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    job, out, err, ended = None, "", "", False
    try:
        first = submitter.stdout.readline()
        found = re.search(r"SLURM job (\d+): run.dir \S+ log (\S+)", first)
        assert found, first + submitter.stderr.read()
        job, log = found.group(1), Path(found.group(2))
        tail = lambda: log.read_text()[-3000:] if log.exists() else ""  # noqa: E731
        wait_until(lambda: epochs_done(tmp_path / "cut"), 90, "the first epoch", on_timeout=tail)
        assert len(epochs_done(tmp_path / "cut")) < 10, "the job finished before it could be interrupted"
        # A preemption as submitit's own SlurmJob._interrupt() sends it to every task: TERM, then USR2
        # (the time-limit signal of --signal=USR2@signal_delay_s is the same USR2 to the same handler).
        for sig in ("TERM", "USR2"):
            assert run(["scancel", f"--signal={sig}", job]).returncode == 0
        # Rank 0's checkpoint() requeued it: pending with reason BeginTime (~2 min); release it now.
        release_requeued(job, on_timeout=tail)
        out, err = submitter.communicate(timeout=150)  # --wait: the requeued run's outcome, not the first's
        if submitter.returncode == 0:
            wait_job(job, 60)  # its pickles are written: let the tasks exit before reading their files
            ended = True
    finally:
        if job and not ended:
            cancel(job)
        if submitter.poll() is None:
            submitter.kill()
            submitter.communicate()
    assert submitter.returncode == 0 and f"job {job}: done" in out, f"stdout:\n{out}\nstderr:\n{err[-3000:]}"
    folder = tmp_path / "cut" / "slurm" / job
    main_log, other_log = (folder / f"{job}_0_log.out").read_text(), (folder / f"{job}_1_log.out").read_text()
    first_run, _, second_run = main_log.partition("Requeued job")
    assert "Calling checkpoint method" in first_run and second_run, main_log[-3000:]
    assert "resumed from" in second_run, main_log[-3000:]  # not a fresh start
    assert "Not checkpointing nor requeuing since I am a slave" in other_log  # only rank 0 requeues
    assert "was requeued: task 0 of this run ends here" in (folder / f"{job}_0_log.err").read_text()
    for task in (0, 1):  # each task's result is the requeued run's success
        assert pickle.loads((folder / f"{job}_{task}_result.pkl").read_bytes()) == ("success", 0)
    assert epochs_done(tmp_path / "cut") == list(range(1, 11))  # each epoch once: none repeated or skipped
    check_ok(train_cli(tiny(tmp_path, "ref", epochs, *SLOW), nproc=2, timeout=150, env=job_env(tmp_path)))
    assert_equal_weights(weights(tmp_path / "cut/checkpoints/last.pt"), weights(tmp_path / "ref/checkpoints/last.pt"))
    assert_requeued_then_completed(job)
