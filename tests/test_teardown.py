"""The process group's teardown: when a job's entry point returns, gloo's backend is gone with its threads.

A group that outlives `destroy_process_group` is torn down inside the interpreter's finalization, where a native
thread that meets the exiting interpreter aborts the process ("terminate called without an active exception");
torch.distributed.nn's `group=group.WORLD` defaults, read when torch imports that module lazily after the group
formed, were such a holder (distrib.parallel.distributed.import_before_group).
"""
from __future__ import annotations

import subprocess
import sys

from tests.helpers import REPO, clean_env, tiny

LIST_THREADS = """
import os, sys
from distrib.train import main
code = main(sys.argv[1:])
names = []
for tid in os.listdir("/proc/self/task"):
    try:
        names.append(open(f"/proc/self/task/{tid}/comm").read().strip())
    except OSError:  # a thread that ended meanwhile
        pass
print("THREADS", sorted(names))
sys.exit(code)
"""


def test_no_gloo_thread_outlives_the_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-c", LIST_THREADS, *tiny(tmp_path, "run", "train.epochs=1")], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("THREADS")]
    assert "gloo" not in line, line  # gloo_tcp_loop, pt_gloo_runloop: the backend was not destroyed
