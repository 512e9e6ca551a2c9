"""Batch-scaling study: does the model keep its accuracy when the global batch grows 4x, 16x, 64x?

    OMP_NUM_THREADS=1 python -m benchmarks.batch_scaling --datasets ml-100k [--out results.jsonl]
    python -m benchmarks.batch_scaling --table results.jsonl          # print the table of saved rows

The article's EmbeddingNet (configs/ml-100k-article.yaml: Adam 1e-3 at batch 2000, cosine restarts every 2
epochs, patience 10) trained through the public Trainer, one process (the GPU where there is one), at global batch 2k (the reference),
8k, 32k and 128k (where the training part holds at least two steps of it) under each LR rule: the peak lr
scaled from train.ref_batch_size by `sqrt` or `linear`, without and with a linear warmup of
train.warmup_epochs. Datasets: ml-100k u1, ml-latest-small (seeded random 80/20), and `synthetic-25m`, a
reduced variant of ml-25m's shape (see SYNTHETIC_25M).

Per row: best validation RMSE and the test RMSE of the best-validation weights (validation alone chooses),
epochs until the validation RMSE first comes within 0.005 of the batch-2000 row's best, the best epoch,
samples/s of the training phases and wall time. The larger batches run at most --cap-factor (2) times the
batch-2000 row's best epoch: the issue's target is its accuracy within twice its epochs. Rows are appended to
--out as they finish, so an interrupted study resumes where it stopped. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.harness import SINGLE, article_config
from distrib.checkpoint.rundir import RunDir
from distrib.data import load_dataset
from distrib.parallel.distributed import select_device
from distrib.report.tracking import NullTracker
from distrib.training.trainer import Trainer

WITHIN = 0.005  # the issue's tolerance on validation RMSE against the batch-2000 row
REF_BATCH = 2000
# ml-25m's shape reduced to what a 2-core CPU trains in minutes: ml-25m's ratings per user (153) and per item
# (423) kept, users and items divided by 50; 500k ratings so batch 128k still takes 2+ steps per epoch after
# the test and validation carves (the planted rank-8 generator of data.name=synthetic).
SYNTHETIC_25M = ["data.name=synthetic", "data.split=random", "data.synthetic.n_users=3251",
                 "data.synthetic.n_items=1181", "data.synthetic.n_ratings=500000"]
DATASETS = {
    "ml-100k": [],  # the article config's own data: ml-100k u1
    "ml-latest-small": ["data.name=ml-latest-small", "data.split=random", "data.test_fraction=0.2"],
    "synthetic-25m": SYNTHETIC_25M,
    # ml-25m's own counts, for a GPU (train.device=auto picks it): 162,541 users, 59,047 items, 25 M ratings
    "synthetic-25m-full": ["data.name=synthetic", "data.split=random", "data.synthetic.n_users=162541",
                           "data.synthetic.n_items=59047", "data.synthetic.n_ratings=25000095"],
}
RULES = {  # name -> overrides; warmup length in epochs of the row's own batch
    # what a user gets without setting anything: lr_scaling=sqrt, and batch_ramp_epochs / warmup_epochs at `auto`
    # (from 4x the reference batch a ramp of 2.5 epochs per doubling, 5 at 4x, 10 at 16x, without warmup; else 2 warmup
    # epochs, at most 50 steps)
    "defaults": [],
    "sqrt": ["train.lr_scaling=sqrt", "train.warmup_epochs=0"],
    "linear": ["train.lr_scaling=linear", "train.warmup_epochs=0"],
    "sqrt+warmup": ["train.lr_scaling=sqrt", "train.warmup_epochs=2"],
    "linear+warmup": ["train.lr_scaling=linear", "train.warmup_epochs=2"],
    # fastai's one cycle over the run's epochs instead of the article's restarts: warmup for its first quarter,
    # then one long anneal (at 32k on ml-100k, restarts every 2 epochs are cycles of 4 steps)
    "sqrt+one_cycle": ["train.lr_scaling=sqrt", "train.warmup_epochs=0", "train.schedule=one_cycle"],
    "linear+one_cycle": ["train.lr_scaling=linear", "train.warmup_epochs=0", "train.schedule=one_cycle"],
    # what the issue names where the rules above fail: a longer warmup, ...
    "sqrt+warmup6": ["train.lr_scaling=sqrt", "train.warmup_epochs=6"],
    # ... batch ramp-up (2k, 4k, 8k, 16k, then the row's batch; lr by the rule at each epoch's batch) ...
    "sqrt+ramp4": ["train.lr_scaling=sqrt", "train.warmup_epochs=0", "train.batch_ramp_epochs=4"],
    "none+ramp4": ["train.lr_scaling=none", "train.warmup_epochs=0", "train.batch_ramp_epochs=4"],
    "sqrt+ramp6": ["train.lr_scaling=sqrt", "train.warmup_epochs=0", "train.batch_ramp_epochs=6"],
    # ramps that double the batch every 2 epochs and every 2.5 (what `auto` resolves to at 16x)
    "sqrt+ramp8": ["train.lr_scaling=sqrt", "train.warmup_epochs=0", "train.batch_ramp_epochs=8"],
    "sqrt+ramp10": ["train.lr_scaling=sqrt", "train.warmup_epochs=0", "train.batch_ramp_epochs=10"],
    "sqrt+one_cycle+ramp4": ["train.lr_scaling=sqrt", "train.warmup_epochs=0", "train.schedule=one_cycle",
                             "train.batch_ramp_epochs=4"],
    "linear+one_cycle+ramp4": ["train.lr_scaling=linear", "train.warmup_epochs=0", "train.schedule=one_cycle",
                               "train.batch_ramp_epochs=4"],
    # ... and LAMB's layer-wise trust ratio, whose lr is a fraction of each tensor's norm per step: Adam's 1e-3
    # per element is about 0.03 of these weights' rms (0.03-0.045), hence the two lrs tried
    "lamb1e-2+one_cycle": ["train.optimizer=lamb", "train.lr=1e-2", "train.lr_scaling=sqrt", "train.warmup_epochs=0",
                           "train.schedule=one_cycle"],
    "lamb3e-2+one_cycle": ["train.optimizer=lamb", "train.lr=3e-2", "train.lr_scaling=sqrt", "train.warmup_epochs=0",
                           "train.schedule=one_cycle"],
}


def rule_overrides(rule: str) -> list[str]:
    """A rule's overrides; the rules without a ramp pin it off (the default, `auto`, ramps from 4x)."""
    overrides = RULES[rule]
    if rule == "defaults" or any(o.startswith("train.batch_ramp_epochs=") for o in overrides):
        return overrides
    return [*overrides, "train.batch_ramp_epochs=0"]


def train_row(dataset: str, batch: int, rule: str, epochs: int, seed: int, extra: list[str]) -> dict:
    cfg = article_config(*DATASETS[dataset], *rule_overrides(rule), f"train.batch_size={batch}",
                         f"train.epochs={epochs}", f"train.seed={seed}", "train.log_every_steps=1000000", *extra)
    data = load_dataset(cfg.data)
    n_train = len(data.train.ratings)
    if n_train < 2 * batch:
        return {"skipped": f"{n_train} training ratings: fewer than 2 steps of {batch}"}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distrib-batchscale-") as tmp:
        run = RunDir(tmp)
        run.open()
        try:
            trainer = Trainer(cfg, SINGLE, select_device(cfg.train.device, 0), data, run)
            summary = trainer.fit(NullTracker())
        finally:
            run.close()
    wall = time.perf_counter() - started
    rows = trainer.metrics
    train_s = sum(r["epoch_seconds"] for r in rows)
    return {"val_curve": [r["val_rmse"] for r in rows], "best_val": summary["best_val_rmse"],
            "test": summary.get("test_rmse"), "best_epoch": summary["best_epoch"], "epochs_run": len(rows),
            "steps_per_epoch": trainer.steps_per_epoch, "steps": summary["steps"], "lr": trainer.scheduler.peak_lr,
            "samples_per_s": sum(r["samples_per_s"] * r["epoch_seconds"] for r in rows) / max(train_s, 1e-9),
            "wall_s": wall, "threads": torch.get_num_threads(), "cpu": machine()}


def machine() -> str:
    """lscpu's model name and torch's CPU capability (AVX512 on a CPU with avx512_bf16 runs `auto` precision bf16)."""
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in lscpu.splitlines() if line.startswith("Flags")), "")
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if f" {flag}" in flags]
    return f"{model}, {torch.backends.cpu.get_cpu_capability()}, {' '.join(native) or 'no native bf16'}"


def epochs_within(curve: list[float], target: float) -> int | None:
    for i, value in enumerate(curve):
        if value <= target + WITHIN:
            return i + 1
    return None


def reference_key(row: dict) -> tuple[str, int]:
    """Rows compare with the batch-2000 row of the same dataset and seed (rows without a seed ran seed 0)."""
    return row["dataset"], row.get("seed", 0)


def print_table(results: list[dict]) -> None:
    print("CPU of the rows:", "; ".join(sorted({r.get("cpu", "not recorded") for r in results})))
    ref = {reference_key(r): r for r in results
           if r["batch"] == REF_BATCH and r["rule"] == "sqrt" and "best_val" in r}
    print(f"{'dataset':16s} {'seed':>4s} {'batch':>7s} {'rule':22s} {'peak lr':>8s} {'steps/ep':>8s} {'best val':>8s} "
          f"{'test':>7s} {'d test':>7s} {'ep<=ref+.005':>12s} {'x ref':>6s} {'best ep':>7s} {'run':>4s} "
          f"{'samples/s':>9s} {'wall s':>7s}")
    for r in results:
        dataset, seed = reference_key(r)
        if "skipped" in r:
            print(f"{dataset:16s} {seed:4d} {r['batch']:7d} {r['rule']:22s} skipped: {r['skipped']}")
            continue
        base = ref.get((dataset, seed))
        reach = epochs_within(r["val_curve"], base["best_val"]) if base else None
        base_reach = epochs_within(base["val_curve"], base["best_val"]) if base else None
        ratio = f"{reach / base_reach:6.2f}" if reach and base_reach else f"{'-':>6s}"
        d_test = r["test"] - base["test"] if base else math.nan
        print(f"{dataset:16s} {seed:4d} {r['batch']:7d} {r['rule']:22s} {r['lr']:8.2e} {r['steps_per_epoch']:8d} "
              f"{r['best_val']:8.4f} {r['test']:7.4f} {d_test:+7.4f} {reach or '>' + str(r['epochs_run']):>12} "
              f"{ratio} {r['best_epoch']:7d} {r['epochs_run']:4d} {r['samples_per_s']:9.0f} {r['wall_s']:7.0f}")
    print(f"\nep<=ref+.005: first epoch whose validation RMSE is within {WITHIN} of the batch-{REF_BATCH} row's best; "
          "'x ref': that count over the batch-2000 row's own. d test: test RMSE minus the batch-2000 row's. "
          "Test RMSE: the best-validation epoch's weights.")


def plan(datasets: list[str], batches: list[int], rules: list[str]) -> list[tuple[str, int, str]]:
    jobs = []
    for dataset in datasets:
        if REF_BATCH in batches:
            jobs.append((dataset, REF_BATCH, "sqrt"))  # every rule is the identity at the reference batch
        jobs += [(dataset, b, rule) for b in batches if b != REF_BATCH for rule in rules]
    return jobs


def epoch_cap(results: list[dict], dataset: str, batch: int, args) -> int:
    """--epochs, and for the larger batches at most --cap-factor times the epochs the batch-2000 row took to its
    best validation RMSE: the issue's target is the same accuracy in at most twice the epochs."""
    ref = [r for r in results if reference_key(r) == (dataset, args.seed) and r["batch"] == REF_BATCH
           and "best_epoch" in r]
    if batch == REF_BATCH or not ref or not args.cap_factor:
        return args.epochs
    return min(args.epochs, math.ceil(args.cap_factor * ref[0]["best_epoch"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["ml-100k", "ml-latest-small"], choices=list(DATASETS))
    parser.add_argument("--batches", nargs="+", type=int, default=[2000, 8000, 32000, 128000],
                        help="the larger batches' epoch cap needs the 2000 row (run in the same --out)")
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--epochs", type=int, default=40, help="cap per run (early stopping usually ends it)")
    parser.add_argument("--cap-factor", type=float, default=2.0,
                        help="larger batches stop after this many times the batch-2000 row's best epoch (0: no cap)")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every run (rows compare within a seed)")
    parser.add_argument("--set", nargs="*", default=[], help="extra config overrides for every run")
    parser.add_argument("--out", default="", help="append each finished row here (JSON lines); resumes from it")
    parser.add_argument("--table", default="", help="only print the table of the rows in this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.table:
        return print_table([json.loads(x) for x in Path(args.table).read_text().splitlines() if x])
    out = Path(args.out) if args.out else None
    done = [json.loads(x) for x in out.read_text().splitlines() if x] if out and out.exists() else []
    results = list(done)
    for dataset, batch, rule in plan(args.datasets, args.batches, args.rules):
        key = {"dataset": dataset, "batch": batch, "rule": rule, "seed": args.seed, "set": args.set}
        if any(reference_key(r) == (dataset, args.seed) and all(r.get(k) == key[k] for k in ("batch", "rule", "set"))
               for r in done):
            continue
        row = {**key, **train_row(dataset, batch, rule, epoch_cap(results, dataset, batch, args), args.seed,
                                  args.set)}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "val_curve"}), flush=True)
        if out:
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
    print_table(results)


if __name__ == "__main__":
    main()
