"""Console: a progress bar on a terminal, plain epoch lines (no carriage returns) in log files."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import re

import pytest
import torch

from distrib.report.progress import EpochProgress, LineTimer, elapsed_and_eta, format_duration, progress_line
from tests.helpers import REPO, check_ok, clean_env, tiny, train_cli

PROGRESS_LINE = re.compile(r"^epoch (\d+)/(\d+): step (\d+)/(\d+) \((\d+)%\) - (\d+) samples/s - loss (\d+\.\d{4}) - "
                           r"\S+, ETA \S+$")


@pytest.mark.slow
def test_log_files_get_plain_epoch_lines_without_carriage_returns(tmp_path):
    proc = check_ok(train_cli(tiny(tmp_path), nproc=2))
    assert "\r" not in proc.stdout + proc.stderr
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("[00")]
    assert [line[:9] for line in epoch_lines] == ["[001/003]", "[002/003]", "[003/003]"]


@pytest.mark.slow
def test_a_terminal_gets_a_progress_bar(tmp_path):
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a real terminal has a size
    proc = subprocess.Popen([sys.executable, "-m", "distrib.train", *tiny(tmp_path, "run", "train.epochs=1")],
                            cwd=REPO, env=clean_env(), stdin=follower, stdout=follower, stderr=follower)
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 120)
        if not ready:
            break
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    assert proc.wait(timeout=120) == 0
    text = output.decode(errors="replace")
    assert "epoch 1:" in text and ("it/s" in text or "s/it" in text), text[-2000:]
    assert "[001/001] train:" in text


@pytest.mark.slow
def test_a_log_file_gets_progress_lines_during_the_epoch(tmp_path):
    """stdout to a pipe, as under SLURM or nohup: rank 0 alone prints lines while an epoch runs, then the epoch line."""
    args = tiny(tmp_path, "run", "train.epochs=2", "data.synthetic.n_ratings=40000", "train.batch_size=100",
                "train.log_every_s=0.05")
    proc = check_ok(train_cli(args, nproc=2))
    lines = proc.stdout.splitlines()
    progress = [m for m in map(PROGRESS_LINE.match, lines) if m]
    assert len(progress) >= 4, proc.stdout[-3000:]
    steps = int(progress[0].group(4))
    assert steps == 40000 * 0.8 * 0.9 // 100  # the global steps of an epoch, not one rank's share
    assert {m.group(1) for m in progress} == {"1", "2"} and {m.group(2) for m in progress} == {"2"}
    first_epoch = [int(m.group(3)) for m in progress if m.group(1) == "1"]
    assert first_epoch == sorted(first_epoch) and 0 < first_epoch[-1] <= steps
    assert all(0.0 < float(m.group(7)) < 20.0 and int(m.group(6)) > 0 for m in progress)  # a loss, a rate
    epoch_one = next(i for i, line in enumerate(lines) if line.startswith("[001/002] train:"))
    assert any(PROGRESS_LINE.match(line) for line in lines[:epoch_one])  # during the epoch, before its line
    assert "\r" not in proc.stdout + proc.stderr
    assert not any(PROGRESS_LINE.match(line.split("] ", 1)[-1]) for line in proc.stderr.splitlines())


@pytest.mark.slow
def test_log_every_s_zero_prints_no_progress_line(tmp_path):
    args = tiny(tmp_path, "run", "train.epochs=1", "train.log_every_s=0")
    proc = check_ok(train_cli(args))
    assert not any(PROGRESS_LINE.match(line) for line in proc.stdout.splitlines())
    assert "[001/001] train:" in proc.stdout


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class CountingSum:
    """A running loss that counts how often it is read (each read is a host sync on a GPU)."""

    def __init__(self):
        self.value, self.reads = torch.zeros((), dtype=torch.float64), 0

    def item(self) -> float:
        self.reads += 1
        return self.value.item()


def test_lines_come_at_the_interval_and_read_the_loss_only_then(tmp_path, caplog):
    clock, running = FakeClock(), CountingSum()
    with open(tmp_path / "log.txt", "w") as log_file:  # not a terminal
        bar = EpochProgress(True, steps=100, epoch=2, epochs=5, samples_per_step=1000, log_every_s=30.0,
                            log_stream=log_file, clock=clock)
    with caplog.at_level("INFO", logger="distrib"):
        for _ in range(100):
            clock.now += 1.0  # one second a step
            running.value += 500 * 0.25  # each step: 500 ratings of squared error 0.25 on this rank
            bar.update(running, 500)
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "epoch 2/5: step 30/100 (30%) - 1000 samples/s - loss 0.2500 - 30s, ETA 1m10s",
        "epoch 2/5: step 60/100 (60%) - 1000 samples/s - loss 0.2500 - 1m00s, ETA 40s",
        "epoch 2/5: step 90/100 (90%) - 1000 samples/s - loss 0.2500 - 1m30s, ETA 10s",
    ]
    assert running.reads == 3  # not once a step


def test_a_terminal_or_another_rank_gets_no_lines(caplog):
    class Terminal:
        def isatty(self):
            return True

    clock = FakeClock()
    with caplog.at_level("INFO", logger="distrib"):
        for enabled, stream in ((True, Terminal()), (False, None)):
            bar = EpochProgress(enabled, 10, 1, 1, 100, log_every_s=1.0, log_stream=stream, clock=clock)
            for _ in range(10):
                clock.now += 5.0
                bar.update(torch.ones(()), 1)
            bar.close()
    assert not caplog.records


def test_durations_are_short():
    assert [format_duration(s) for s in (0, 42.4, 187, 3599.6, 7500)] == ["0s", "42s", "3m07s", "1h00m", "2h05m"]
    assert progress_line(1, 1, 0, 10, 0.0, 1.0, 0.0).endswith("ETA 0s")


def test_a_line_is_due_every_interval_after_the_previous_one():
    clock = FakeClock()
    timer = LineTimer(30.0, clock)
    due = []
    for now in (10, 29.9, 30, 45, 59.9, 75, 200):
        clock.now = now
        due.append(timer.due())
    assert due == [None, None, 30, None, None, 75, 200]  # after the line at 30 s, the first call from 60 s on
    every_call = LineTimer(0.0, clock)
    assert [every_call.due() for _ in range(3)] == [0.0, 0.0, 0.0]


def test_elapsed_and_eta_at_the_pace_so_far():
    assert elapsed_and_eta(65, 2560, 10000) == "1m05s, ETA 3m09s"
    assert elapsed_and_eta(30, 0, 100) == "30s, ETA 0s"  # nothing done yet: no pace to go by
    assert elapsed_and_eta(90, 100, 100) == "1m30s, ETA 0s"
