"""Faults with real processes: a rank killed mid-epoch, a NaN on one rank, repeated kill-and-resume,
an unusable run directory."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import REPO, check_ok, clean_env, metrics, summary, tiny, train_cli, weights

pytestmark = pytest.mark.slow  # every test here launches processes or trains


def _wait_for_epochs(run, count, procs, timeout_s=240):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len(metrics(run)) >= count:
            return
        assert all(p.poll() is None for p in procs), "a rank ended before the fault was injected"
        time.sleep(0.2)
    raise AssertionError("the job made no progress")


def _start_ranks_by_hand(args, world):
    port = 29400 + os.getpid() % 500 + world
    procs = []
    for rank in range(world):
        env = clean_env() | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "distrib.train", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


@pytest.mark.parametrize("world", [2, 3])
def test_a_rank_killed_mid_epoch_ends_the_others_quickly_and_leaves_last_pt_intact(tmp_path, world):
    args = tiny(tmp_path, "run", "train.epochs=200", "data.synthetic.n_ratings=30000", "dist.timeout_s=30")
    procs = _start_ranks_by_hand(args, world)
    run = tmp_path / "run"
    _wait_for_epochs(run, 2, procs)
    time.sleep(0.3)  # land inside an epoch
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.time()
    for rank, proc in enumerate(procs):
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise AssertionError(f"rank {rank} still running 60 s after rank 1 died")
        if rank != 1:
            assert proc.returncode != 0
            # The killed rank is named; a third rank may also see rank 0 leave first (a race), which is fine.
            named = re.search(r"lost rank ([\d, ]+)", err)
            assert named and "1" in named.group(1).replace(" ", "").split(","), err[-2000:]
    assert time.time() - killed_at < 60
    state = torch.load(run / "checkpoints/last.pt", weights_only=True)
    assert state["progress"]["epoch"] >= 2


def test_nan_on_one_rank_stops_every_rank_at_the_same_step_before_saving(tmp_path):
    args = tiny(tmp_path, "run", "train.epochs=5", "train.log_every_steps=4")
    env = clean_env() | {"DISTRIB_FAULT_NAN": "1:50"}  # 17 steps an epoch: step 50 ends the third epoch
    proc = train_cli(args, nproc=2, env=env)
    assert proc.returncode != 0
    lines = [l for l in proc.stderr.splitlines() if l.startswith("distrib: error:")]
    # both ranks stop with the same line; under torchrun they share stderr, and it is written once
    assert len(lines) == 1 and "at step 50 on rank 1" in lines[0], proc.stderr[-2000:]
    # what is on disk, and only the fixes that apply: train.lr identifies the run, and fp32 is used already
    assert "last.pt and best.pt are from before it: start a new run.dir with a lower train.lr" in lines[0], lines
    assert "precision" not in lines[0]
    run = tmp_path / "run"
    assert [r["epoch"] for r in metrics(run)] == [1, 2]  # the third epoch is never recorded
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["progress"]["step"] == 34
        assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_before_any_checkpoint_says_so_and_starting_again_as_advised_works(tmp_path):
    proc = train_cli(tiny(tmp_path, "run"), env=clean_env() | {"DISTRIB_FAULT_NAN": "0:3"})
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "at step 3 on rank 0" in line, proc.stderr[-2000:]
    assert "no checkpoint was saved yet: start again with a lower train.lr" in line and ".pt" not in line, line
    assert not list((tmp_path / "run" / "checkpoints").iterdir())
    check_ok(train_cli(tiny(tmp_path, "run", "train.lr=5e-4")))


def test_nan_in_bf16_advises_resuming_in_fp32_which_resumes(tmp_path):
    proc = train_cli(tiny(tmp_path, "run", "train.precision=bf16"), env=clean_env() | {"DISTRIB_FAULT_NAN": "0:30"})
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "at step 30 on rank 0" in line, proc.stderr[-2000:]
    assert ("last.pt and best.pt are from before it: resume with train.precision=fp32, or start a new run.dir "
            "with a lower train.lr") in line, line
    resumed = check_ok(train_cli(tiny(tmp_path, "run", "train.precision=fp32")))
    assert "resumed from" in resumed.stdout and [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2, 3]


def test_killed_and_restarted_repeatedly_ends_exactly_like_an_uninterrupted_run(tmp_path):
    args = ["train.epochs=6", "data.synthetic.n_ratings=30000"]
    check_ok(train_cli(tiny(tmp_path, "whole", *args)))
    run = tmp_path / "chopped"
    for stop_after in (2, 4):
        proc = subprocess.Popen([sys.executable, "-m", "distrib.train", *tiny(tmp_path, "chopped", *args)],
                                cwd=REPO, env=clean_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_epochs(run, stop_after, [proc])
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    check_ok(train_cli(tiny(tmp_path, "chopped", *args)))
    assert [r["epoch"] for r in metrics(run)] == list(range(1, 7)), "each epoch exactly once"
    a, b = weights(tmp_path / "whole/checkpoints/last.pt"), weights(run / "checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    whole, chopped = metrics(tmp_path / "whole"), metrics(run)
    assert [r["val_rmse"] for r in whole] == [r["val_rmse"] for r in chopped]
    assert summary(run)["test_rmse"] == summary(tmp_path / "whole")["test_rmse"]


def test_writer_killed_between_temp_file_and_rename_leaves_last_pt_and_is_cleaned(tmp_path, tiny_run):
    shutil.copytree(tiny_run, tmp_path / "run")  # a finished 2-epoch run, resumed below for a third epoch
    stale = tmp_path / "run/checkpoints/.last.pt.tmp.99999"
    stale.write_bytes(b"half a checkpoint")
    proc = check_ok(train_cli(tiny(tmp_path, "run", "train.epochs=3")))
    assert "at epoch 2" in proc.stdout and not stale.exists()


@pytest.mark.parametrize("run_dir, fragment", [
    ("/proc/distrib-run", "not writable"),
    ("FILE", "exists and is not a directory"),
])
def test_unusable_run_dir_is_reported_before_any_training(tmp_path, run_dir, fragment):
    if run_dir == "FILE":
        run_dir = tmp_path / "taken"
        run_dir.write_text("not a directory")
    proc = train_cli(tiny(tmp_path, "x") + [f"run.dir={run_dir}"])
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr
    assert "[001/" not in proc.stdout


@pytest.mark.parametrize("options, fragment", [("size=1m", "MiB free"), ("ro,size=1m", "not writable")])
def test_full_or_read_only_run_dir_is_refused_before_training(tmp_path, tmpfs, options, fragment):
    point = tmpfs(options)
    proc = train_cli(tiny(tmp_path, "x") + [f"run.dir={point / 'run'}"])
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert "[001/" not in proc.stdout
