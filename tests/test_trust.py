"""Trust: no run is lost or mixed, no bad input ends in a traceback or a silent success. Every case goes through
the real command line against a copy of one finished tiny run; where a case says so, the run directory must
stay byte for byte as it was (all but `.lock`, which names whoever holds run.dir now)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from distrib.checkpoint.replicated import load_latest
from tests.helpers import REPO, check_ok, clean_env, digest, fill, metrics, tiny, train_cli

pytestmark = pytest.mark.slow

RATINGS = "".join(f"{u},{i},{(u + i) % 5 + 1}\n" for u in range(1, 40) for i in range(1, 30, 3))


@pytest.fixture(scope="module")
def finished(tiny_run):
    """One finished two-epoch run (the session's) beside its data root; tests work on copies."""
    return tiny_run.parent


@pytest.fixture
def copy(finished, tmp_path):
    for name in ("run", "data"):
        shutil.copytree(finished / name, tmp_path / name)
    return tmp_path


def error_lines(proc) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.startswith("distrib: error:")]


def _cut(path: Path, keep: int = 100) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _config(tmp: Path, text: bytes) -> Path:
    path = tmp / "config.yaml"
    path.write_bytes(text)
    return path


def _fifo(tmp: Path) -> Path:
    path = tmp / "config-fifo.yaml"
    os.mkfifo(path)
    return path


def _ratings(tmp: Path, data: bytes) -> str:
    path = tmp / "ratings.csv"
    path.write_bytes(data)
    return f"data.path={path}"


def _cut_checkpoints(*names):
    def prepare(tmp, run):
        for name in names:
            _cut(run / "checkpoints" / name)
        return [], []
    return prepare


def _remove_checkpoints(*names):
    def prepare(tmp, run):
        for name in names:
            (run / "checkpoints" / name).unlink()
        return [], []
    return prepare


def _overrides(*items):
    return lambda tmp, run: ([], list(items))


def _own_file(data: bytes):
    return lambda tmp, run: ([], ["data.name=file", _ratings(tmp, data)])


def _config_file(make):
    return lambda tmp, run: ([str(make(tmp))], [])


LATIN1_IDS = RATINGS.encode() + "caf\u00e9,1,4\ncaf\u00e8,1,3\n".encode("latin-1")
LATIN1_CONFIG = "train:\n  # caf\u00e9\n  epochs: 2\n".encode("latin-1")

# name: (prepare(tmp, run) -> (arguments before the overrides, extra overrides), exit code, part of the one line)
CASES = {
    "last.pt and last.1.pt both cut off": (_cut_checkpoints("last.pt", "last.1.pt"), 2,
                                           "no checkpoint to resume from (last.pt: cut off"),
    "only best.pt left": (_remove_checkpoints("last.pt", "last.1.pt"), 2, "no checkpoint to resume from (no last.pt)"),
    "best.pt cut off on a finished run": (_cut_checkpoints("best.pt"), 2, "best.pt: cut off"),
    "batch larger than the training split": (_overrides("train.batch_size=50000"), 2,
                                             "train.batch_size=50000 is larger than the training split (8640 ratings)"),
    "a three-line ratings file": (_own_file(b"1,1,4\n2,1,3\n1,2,5\n"), 2, "larger than the training split"),
    "config file in latin-1": (_config_file(lambda t: _config(t, LATIN1_CONFIG)), 2,
                               "not UTF-8 text (byte 0xe9 on line 2)"),
    "a FIFO as the config file": (_config_file(_fifo), 2, "not a regular file"),
    "ids in latin-1": (_own_file(LATIN1_IDS), 2, f"line {RATINGS.count(chr(10)) + 1} is not valid UTF-8"),
    "first line 1,2,abc,0": (_own_file(("1,2,abc,0\n" + RATINGS).encode()), 2, "non-numeric rating 'abc' at line 1"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_state_or_input_is_one_line_and_the_run_is_untouched(case, copy):
    prepare, code, fragment = CASES[case]
    run = copy / "run"
    head, extra = prepare(copy, run)
    before = digest(run)
    proc = train_cli([*head, *tiny(copy, "run", "train.epochs=2", *extra)], timeout=120)
    assert proc.returncode == code, proc.stderr[-2000:]
    lines = error_lines(proc)
    assert len(lines) == 1 and fragment in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "[001/" not in proc.stdout
    assert digest(run) == before


def test_a_finished_run_started_again_prints_one_line_and_writes_nothing(copy):
    run = copy / "run"
    before = digest(run)
    proc = check_ok(train_cli(tiny(copy, "run", "train.epochs=2")))
    assert proc.stdout.strip().splitlines() == [
        f"run already finished at epoch 2: its results are in {run} (summary.json, plots/, checkpoints/)"]
    assert digest(run) == before


def test_a_damaged_data_cache_is_found_and_rebuilt(copy):
    (cache,) = (copy / "data/cache").glob("synthetic-*")
    _cut(cache / "train_ratings.npy", 200)
    (cache / "val_users.npy").unlink()
    before = digest(copy / "run")
    proc = check_ok(train_cli(tiny(copy, "run", "train.epochs=2")))
    assert "is damaged (" in proc.stdout and "rebuilding it" in proc.stdout, proc.stdout
    assert digest(copy / "run") == before
    proc = check_ok(train_cli(tiny(copy, "run", "train.epochs=3")))  # and training goes on from the rebuilt one
    assert "is damaged (" not in proc.stdout and "resumed from" in proc.stdout and "[003/003]" in proc.stdout


def _start(args, module="distrib.train", **popen):
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=clean_env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _wait_for_epochs(run: Path, count: int, proc, timeout_s: float = 180) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if (run / "metrics.jsonl").exists() and len(metrics(run)) >= count:
            return
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    raise AssertionError("no progress")


def test_a_full_disk_mid_run_is_one_line_and_the_next_start_resumes(tmp_path, tmpfs):
    point = tmpfs("size=72m")  # above the 64 MiB the start-up check asks for
    args = tiny(tmp_path, "unused", "train.epochs=200", "model.n_factors=64", f"run.dir={point / 'run'}")
    proc = _start(args)
    _wait_for_epochs(point / "run", 2, proc)
    proc.send_signal(signal.SIGSTOP)
    filler = fill(point, 16384)  # room for metrics.jsonl, not for a checkpoint of ~250 KB
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no space left on its filesystem" in lines[0], err[-2000:]
    checkpoints = point / "run/checkpoints"
    assert not list(checkpoints.glob(".*tmp*")), "a temp file was left behind"
    epoch = torch.load(checkpoints / "last.pt", weights_only=True)["progress"]["epoch"]
    assert epoch >= 1  # the last checkpoint written in full before the disk filled
    filler.unlink()
    proc = check_ok(train_cli([*args, f"train.epochs={epoch + 1}"]))
    assert f"at epoch {epoch}" in proc.stdout and f"[{epoch + 1:03d}/" in proc.stdout


def test_run_dir_stays_locked_through_the_refit_phase(tmp_path):
    args = tiny(tmp_path, "run", "train.epochs=4", "train.refit=true", "data.val_fraction=0.2")
    first = _start(args)
    for line in first.stdout:
        if line.startswith("refit:"):
            first.send_signal(signal.SIGSTOP)  # held inside the second phase
            break
    else:
        raise AssertionError(first.communicate()[1][-2000:])
    try:
        before = digest(tmp_path / "run")
        second = train_cli(args, timeout=120)
        assert second.returncode == 2 and "in use by another job" in second.stderr, second.stderr[-2000:]
        assert digest(tmp_path / "run") == before
    finally:
        first.send_signal(signal.SIGCONT)
    first.communicate(timeout=240)
    assert first.returncode == 0


def test_ctrl_c_is_one_line_and_the_run_resumes(tmp_path):
    args = tiny(tmp_path, "run", "train.epochs=200")
    proc = _start(args)
    _wait_for_epochs(tmp_path / "run", 2, proc)  # the first checkpoint is written
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "interrupted (SIGINT)" in lines[0], err[-2000:]
    state, _, _ = load_latest(tmp_path / "run/checkpoints")  # a Ctrl-C during a save leaves last.1.pt to resume from
    epoch = state["progress"]["epoch"]
    proc = check_ok(train_cli(tiny(tmp_path, "run", f"train.epochs={epoch + 1}")))
    assert f"at epoch {epoch}" in proc.stdout


LAUNCH = ("--standalone", "--nproc_per_node=2")


def test_launcher_reports_a_config_mistake_before_any_worker_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distrib.run", *LAUNCH, *tiny(tmp_path, "run"), "model.n_factors=many"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distrib: error:") and "model.n_factors" in lines[0], proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "data").exists()


def test_plain_torchrun_writes_a_line_every_rank_reports_once(tmp_path):
    """Plain torchrun: each rank finds the typo; their shared stderr carries the line once (torchrun's own
    ChildFailedError report follows it: python -m distrib.run is the launcher without it)."""
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", *LAUNCH, "-m", "distrib.train",
                           *tiny(tmp_path, "run"), "train.epochz=3"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert error_lines(proc) == ["distrib: error: unknown config key train.epochz"], proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr  # both ranks did fail: torchrun reports each


def test_launcher_turns_a_worker_error_into_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "distrib.run", *LAUNCH, *tiny(tmp_path, "run"), "data.name=file",
                           f"data.path={tmp_path / 'nope.csv'}"],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"distrib: error: {tmp_path / 'nope.csv'}: ratings file not found"]


def test_launcher_ctrl_c_on_two_ranks_is_one_line(tmp_path):
    proc = _start([*LAUNCH, *tiny(tmp_path, "run", "train.epochs=200")], module="distrib.run", start_new_session=True)
    _wait_for_epochs(tmp_path / "run", 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the launcher and every worker
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in out + err and "KeyboardInterrupt" not in out + err
    assert len(error_lines(subprocess.CompletedProcess([], 0, out, err))) == 1, err[-2000:]
    assert "interrupted (SIGINT)" in err
