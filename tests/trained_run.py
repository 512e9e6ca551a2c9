"""A tiny finished training run for tests that need a run directory (recommend, evaluate): trained once
per test session, through the real entry point, on a small synthetic dataset."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.helpers import clean_env

REPO = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = [
    "data.name=synthetic", "data.synthetic.n_users=200", "data.synthetic.n_items=150",
    "data.synthetic.n_ratings=5000", "model.n_factors=8", "model.hidden=[16]", "model.dropouts=[0.1]",
    "train.epochs=2", "train.batch_size=500", "train.ref_batch_size=500", "train.lr=0.01",
]
_RUNS: dict = {}


def run_module(module: str, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    env = {**clean_env(), "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout_s)


def tiny_run(tmp_path_factory) -> Path:
    """The run directory of one tiny training run, shared by every test of the session."""
    base = tmp_path_factory.getbasetemp()
    if base not in _RUNS:
        root = tmp_path_factory.mktemp("tiny_run")
        out = run_module("distrib.train", *TINY_OVERRIDES, f"run.dir={root / 'run'}", f"data.root={root / 'data'}")
        assert out.returncode == 0, out.stderr[-3000:]
        _RUNS[base] = root / "run"
    return _RUNS[base]
