"""Console: a progress bar on a terminal, plain epoch lines (no carriage returns) in log files."""
import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios

import pytest

from tests.helpers import REPO, check_ok, clean_env, tiny, train_cli

pytestmark = pytest.mark.slow  # every test here launches processes or trains


def test_log_files_get_plain_epoch_lines_without_carriage_returns(tmp_path):
    proc = check_ok(train_cli(tiny(tmp_path), nproc=2))
    assert "\r" not in proc.stdout + proc.stderr
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("[00")]
    assert [line[:9] for line in epoch_lines] == ["[001/003]", "[002/003]", "[003/003]"]


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
