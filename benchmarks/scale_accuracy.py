"""Validation RMSE per epoch of configs/ml-25m.yaml's model against the baseline and biased MF, on synthetic
data with ml-25m's ratings per user and per movie at a tenth of its users and movies (a short probe, not the
full-size run).

    python -m benchmarks.scale_accuracy [--epochs 3] [--scale 0.1] [--compare models|warmup]

Each model trains in its own `python -m distrib.train` process, one after the other, on the touched-rows
update the full-size one-process run takes (`dist.embedding_update=touched_rows`: at a tenth of the size `auto`
would pick the dense update). Prints val RMSE after each epoch and seconds per epoch, side by side.

`--compare warmup`: the same model at the batch of 2 GPUs (4000, twice train.ref_batch_size) with no warmup, 50 and
200 warmup steps, `train.warmup_epochs=auto` and 2 whole epochs of warmup, beside batch 2000.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from benchmarks.harness import REPO
from distrib.training.precision import cpu_description, resolve_precision

ML25M = (162_541, 59_047, 25_000_095)  # users, movies, ratings
CANDIDATES = {
    "models": {
        "bias (baseline)": ["model.name=bias"],
        "ml-25m.yaml": [],  # the shipped config's model and training as they are
        "mf 64": ["model.name=mf", "model.n_factors=64", "model.factor_reg=0.02", "model.bias_reg=0.005"],
    },
    "warmup": {
        "batch 2000": [],
        "4000 no warmup": ["train.batch_size=4000", "train.warmup_epochs=0"],
        "4000 50-step warmup": ["train.batch_size=4000", "train.warmup_epochs=0", "train.warmup_steps=50"],
        "4000 200-step warmup": ["train.batch_size=4000", "train.warmup_epochs=0", "train.warmup_steps=200"],
        "4000 auto warmup": ["train.batch_size=4000", "train.warmup_epochs=auto"],
        "4000 2-epoch warmup": ["train.batch_size=4000", "train.warmup_epochs=2"],
    },
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--scale", type=float, default=0.1, help="share of ml-25m's users, movies and ratings")
    parser.add_argument("--compare", choices=list(CANDIDATES), default="models")
    args = parser.parse_args()
    users, movies, ratings = (round(n * args.scale) for n in ML25M)
    data = [f"data.name=synthetic", f"data.synthetic.n_users={users}", f"data.synthetic.n_items={movies}",
            f"data.synthetic.n_ratings={ratings}", f"train.epochs={args.epochs}", "train.patience=0",
            "dist.embedding_update=touched_rows", "train.log_every_s=0"]
    print(f"synthetic {users} users x {movies} movies, {ratings} ratings; one process, load average "
          f"{os.getloadavg()[0]:.2f} at start; CPU {cpu_description()}, train.precision=auto -> "
          f"{resolve_precision('auto', torch.device('cpu'))}")
    rows = {}
    with tempfile.TemporaryDirectory(prefix="distrib-scale-acc-") as tmp:
        for name, overrides in CANDIDATES[args.compare].items():
            run_dir = Path(tmp) / name.replace(" ", "-")
            cmd = [sys.executable, "-m", "distrib.train", str(REPO / "configs" / "ml-25m.yaml"), *data, *overrides,
                   f"data.root={tmp}/data", f"run.dir={run_dir}"]
            subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            rows[name] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
            resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
            print(f"  {name}: done (train.batch_size {resolved['batch_size']}, train.warmup_epochs "
                  f"{resolved['warmup_epochs']:.4g})", flush=True)
    print(f"{'epoch':>5} | " + " | ".join(f"{name:>22}" for name in rows))
    for epoch in range(args.epochs):
        cells = [f"{r[epoch]['val_rmse']:.4f} ({r[epoch]['epoch_seconds']:5.0f} s)" for r in rows.values()]
        print(f"{epoch + 1:>5} | " + " | ".join(f"{cell:>22}" for cell in cells))
    print(f"load average {os.getloadavg()[0]:.2f} at the end")


if __name__ == "__main__":
    main()
