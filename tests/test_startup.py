"""The command-line tools answer `--help` and a bare (argument-less) call at once: arguments are read before
torch, numpy and the rest are imported."""
from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, clean_env

MAX_SECONDS = 1.5
TOOLS = ["distrib.evaluate", "distrib.recommend"]
# Runs the tool as `python -m` does, then says whether the heavy modules were imported.
PROBE = """
import runpy, sys
sys.argv = [sys.argv[1]] + sys.argv[2:]
try:
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
except SystemExit:
    pass
print("heavy:", sorted(m for m in ("torch", "numpy", "pandas") if m in sys.modules))
"""


@pytest.mark.slow
@pytest.mark.parametrize("args", [["--help"], []], ids=["help", "bare"])
@pytest.mark.parametrize("tool", TOOLS)
def test_answers_in_well_under_a_second(tool, args):
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", tool, *args], cwd=REPO, env=clean_env(), capture_output=True,
                          text=True, timeout=30)
    seconds = time.perf_counter() - started
    assert proc.returncode == (0 if args else 2), proc.stderr
    assert "usage: python -m " + tool in proc.stdout + proc.stderr
    assert seconds < MAX_SECONDS, f"{tool} {' '.join(args)} took {seconds:.2f} s"


@pytest.mark.slow
@pytest.mark.parametrize("tool", TOOLS)
def test_reading_arguments_imports_no_torch_or_numpy(tool):
    proc = subprocess.run([sys.executable, "-c", PROBE, tool, "--help"], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip().splitlines()[-1] == "heavy: []", proc.stdout + proc.stderr


def test_evaluate_repeats_the_ranking_defaults():
    from distrib import evaluate
    from distrib.metrics import ranking

    assert (evaluate.TOP_K, evaluate.RELEVANT_RATING) == (ranking.TOP_K, ranking.RELEVANT_RATING)
