"""launch.submit --local: submitit's LocalExecutor runs 2 ranks here (replicated, and with sharded tables), no
SLURM needed."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.launch.common import REPO, epochs_done, job_env, run, tiny

pytestmark = pytest.mark.slow  # every test here launches processes or trains


@pytest.mark.timeout(300)
def test_local_two_tasks_stream_rank_0s_lines_as_they_come(tmp_path):
    run_dir = tmp_path / "local"
    cmd = [sys.executable, "-m", "launch.submit", *tiny(tmp_path, "local", "slurm.tasks_per_node=2", "train.epochs=4"),
           "--local", "--wait"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=job_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    lines, plots_when_first_epoch_arrived = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("[001/004]"):  # the job is still running: its plots come after the last epoch
                plots_when_first_epoch_arrived = (run_dir / "plots" / "learning_curves.png").exists()
        err = proc.stderr.read()
        assert proc.wait(timeout=60) == 0, f"stdout:\n{''.join(lines)}\nstderr:\n{err[-3000:]}"
    finally:
        if proc.poll() is None:
            proc.kill()
    out = "".join(lines)
    assert "local job" in out and str(run_dir) in out
    assert plots_when_first_epoch_arrived is False, out
    assert [line[:9] for line in lines if line.startswith("[0")] == ["[001/004]", "[002/004]", "[003/004]", "[004/004]"]
    assert "world size 2" in out and "(submitit-local)" in out and "done: test_rmse=" in out
    assert "torchrun" not in out  # the header names the launcher that ran the job
    assert out.count("Job completed successfully") <= 1  # submitit's own lines are not doubled
    assert json.loads((run_dir / "summary.json").read_text())["world_size"] == 2
    assert epochs_done(run_dir) == [1, 2, 3, 4]
    assert [p.name for p in (run_dir / "slurm").iterdir() if p.is_dir()] == []  # no folder literally named %j


@pytest.mark.timeout(300)  # ~30 s alone; minutes on a loaded 2-core machine
def test_local_two_task_sharded_job_finishes_with_dcp_checkpoints(tmp_path):
    run_dir = tmp_path / "sharded"
    args = tiny(tmp_path, "sharded", "slurm.tasks_per_node=2", "train.epochs=2", "dist.embedding_sharding=row_wise")
    proc = run([sys.executable, "-m", "launch.submit", *args, "--local", "--wait"], timeout_s=280, cwd=REPO,
               env=job_env(tmp_path))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert "world size 2" in proc.stdout and "(submitit-local)" in proc.stdout and "done: test_rmse=" in proc.stdout
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 2
    assert epochs_done(run_dir) == [1, 2]
    assert (run_dir / "checkpoints" / "last.dcp" / ".metadata").is_file()
    assert (run_dir / "checkpoints" / "best.dcp" / "meta.pt").is_file()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra, fragment", [
    (["train.lr=-1"], "train.lr: must be > 0"),
    (["--sweep", "train.lr"], "expected key=v1,v2"),
    (["--sweep", "train.nope=1,2"], "unknown config key train.nope"),
    (["--sweep", "slurm.nodes=1,2"], "share slurm"),
    (["slurm.tasks_per_node=2", "train.batch_size=1"], "smaller than the world size"),
])
def test_bad_input_is_rejected_before_submission(tmp_path, extra, fragment):
    proc = run([sys.executable, "-m", "launch.submit", *tiny(tmp_path, "bad"), *extra, "--local"],
               timeout_s=60, cwd=REPO, env=job_env(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("distrib: error:") and fragment in proc.stderr
    assert not (tmp_path / "bad" / "slurm").exists()  # nothing was submitted


@pytest.mark.timeout(400)
def test_a_sweep_ends_with_a_table_of_its_runs_and_their_final_figures(tmp_path):
    """Two members train, one fails at start (its batch is larger than the data): the table names each with its
    swept values, its figures from summary.json and how its job ended; the command exits 1."""
    args = tiny(tmp_path, "sweep", "train.epochs=2", "--sweep", "train.lr=1e-3,3e-3", "--sweep",
                "train.batch_size=500,100000")
    proc = run([sys.executable, "-m", "launch.submit", *args, "--local", "--wait"], timeout_s=380, cwd=REPO,
               env=job_env(tmp_path))
    assert proc.returncode == 1, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    out = proc.stdout.splitlines()
    title = out.index(f"sweep of 4 runs in {tmp_path / 'sweep'} (* lowest validation RMSE):")
    header, *rows = [line.split() for line in out[title + 1:title + 6]]
    assert header == ["run.dir", "train.lr", "train.batch_size", "best", "val", "RMSE", "test", "RMSE", "state"]
    assert [row[1:3] for row in rows] == [["1e-3", "500"], ["1e-3", "100000"], ["3e-3", "500"], ["3e-3", "100000"]]
    best = {}
    for name, _, batch, *figures in rows:
        if batch == "100000":
            assert figures == ["-", "-", "FAILED"], rows
            continue
        summary = json.loads((tmp_path / "sweep" / name / "summary.json").read_text())
        assert figures[0] == f"{summary['best_val_rmse']:.4f}" and figures[-2:] == [f"{summary['test_rmse']:.4f}", "done"]
        best[name] = summary["best_val_rmse"]
    starred = [row[0] for row in rows if "*" in row]
    assert starred == [min(best, key=best.get)], rows
