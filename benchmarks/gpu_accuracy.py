"""The accuracy part of `benchmarks.gpu`: does the fastest configuration keep the article model's accuracy?

    python -m benchmarks.gpu_accuracy --out DIR --work DIR --data-root DIR [--device cuda] [--smoke]

The fastest replicated configuration of the throughput part (read from --out/throughput.json; bf16 with
train.cuda_graph at the largest batch when that file is missing) trains configs/ml-100k-article.yaml to early
stopping (patience 10, seed 0) on ml-100k u1 and on ml-latest-small (80/20, split seed 1), in this process on
one device through distrib's own Trainer. Per dataset three rows: bf16 eager at batch 2000 (the device's
numerics alone), the fastest configuration at batch 2000 (the step alone), and at the fastest batch (the
largest throughput batch that leaves at least MIN_STEPS_PER_EPOCH steps per epoch on this dataset, with the
config's defaults for larger batches, `auto` resolved as distrib.train resolves it: a batch ramp where allowed).
Test RMSE of the best-validation weights beside the batch-2000 figure it should match. Smoke: one epoch of a
small model each.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from benchmarks.gpu import SMOKE_MODEL, Figures, machine, part_arguments, scale
from benchmarks.gpu_throughput import REPLICATED
from benchmarks.harness import article_config, open_trainer
from distrib.data import load_dataset
from distrib.errors import UserError
from distrib.report.tracking import NullTracker
from distrib.training.schedule import resolve_auto

REFERENCE_BATCH = 2000
MIN_STEPS_PER_EPOCH = 2
DATASETS = {  # name -> (overrides on configs/ml-100k-article.yaml, the batch-2000 test RMSE to match, its source)
    "ml-100k u1": ([], 0.9509, "README results table: the article's EmbeddingNet, 3 seeds, sd 0.0023"),
    "ml-latest-small": (["data.name=ml-latest-small", "data.split=random", "data.test_fraction=0.2"], 0.8720,
                        "docs/batch_scaling.md: the batch-2000 row, seed 0"),
}
FALLBACK = {"config": "bf16 cuda_graph", "batch": None}  # when the throughput part left no figures


def fastest_config(out_dir, batches) -> tuple[dict, str]:
    path = out_dir / "throughput.json"
    try:
        fastest = json.loads(path.read_text())["fastest"]
        return fastest, f"the throughput part's fastest ({path.name})"
    except (OSError, ValueError, KeyError):
        return {**FALLBACK, "batch": max(batches)}, f"no fastest in {path.name}: {FALLBACK['config']} assumed"


def rows_to_run(fastest: dict, batches, n_train: int) -> list[tuple[str, int]]:
    """(configuration, batch) pairs for one dataset, without repeats."""
    usable = [b for b in batches if n_train // b >= MIN_STEPS_PER_EPOCH and b <= fastest["batch"]]
    large = max(usable, default=REFERENCE_BATCH)
    wanted = [("bf16 eager", REFERENCE_BATCH), (fastest["config"], REFERENCE_BATCH), (fastest["config"], large)]
    return list(dict.fromkeys(wanted))


def train_to_early_stop(overrides: list[str], data, device: str) -> dict:
    cfg = article_config(*overrides)
    # train's `auto` keys as distrib.train resolves them: a batch ramp from 4x the reference (not when captured),
    # else a warmup of 2 epochs of this data's steps, at most 50
    cfg = dataclasses.replace(cfg, train=resolve_auto(cfg.train, None, len(data.train.ratings)))
    started = time.perf_counter()
    with open_trainer(cfg, data, device) as trainer:
        summary = trainer.fit(NullTracker())
        rates = sorted(row["samples_per_s"] for row in trainer.metrics)
    return {"test_rmse": summary.get("test_rmse"), "best_val_rmse": summary.get("best_val_rmse"),
            "best_epoch": summary["best_epoch"], "epochs_run": summary["epochs_run"],
            "wall_s": time.perf_counter() - started, "samples_per_s_median_epoch": rates[len(rates) // 2],
            "precision": trainer.precision, "batch_ramp_epochs": cfg.train.batch_ramp_epochs,
            "warmup_epochs": cfg.train.warmup_epochs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    part_arguments(parser)
    args = parser.parse_args(argv)
    sizes = scale(args.smoke)
    fastest, source = fastest_config(args.out, sizes.batches)
    figures = Figures(args.out / "accuracy.json", machine=machine(args.device), smoke=sizes.smoke, fastest=fastest,
                      fastest_from=source)
    print(f"= fastest configuration: {fastest['config']} at batch {fastest['batch']:,} ({source})", flush=True)
    print("| data | configuration | batch | test RMSE | batch-2000 figure | difference | epochs (best) | "
          "wall s | samples/s |\n|---|---|---|---|---|---|---|---|---|", flush=True)
    base = [f"data.root={args.data_root}", f"data.cache_dir={args.work / 'cache'}", f"train.device={args.device}",
            "train.log_every_steps=1000000", *(["train.epochs=1", *SMOKE_MODEL] if sizes.smoke else [])]
    for name, (data_overrides, reference, reference_source) in DATASETS.items():
        try:
            data = load_dataset(article_config(*base, *data_overrides).data)
        except UserError as err:  # the data is not under --data-root: the other dataset still runs
            print(f"= {name}: {err}", flush=True)
            figures.add_row({"data": name, "error": str(err)})
            continue
        for config, batch in rows_to_run(fastest, sizes.batches, len(data.train.ratings)):
            row = {"data": name, "config": config, "batch": batch, "reference": reference,
                   "reference_source": reference_source}
            try:
                row.update(train_to_early_stop([*base, *data_overrides, *REPLICATED[config],
                                                f"train.batch_size={batch}"], data, args.device))
                row["difference"] = row["test_rmse"] - reference
            except (RuntimeError, UserError) as err:
                row["error"] = str(err).splitlines()[0][:200]
            figures.add_row(row)
            print(line(row), flush=True)


def line(row: dict) -> str:
    ramp = f", ramp {row['batch_ramp_epochs']} epochs" if row.get("batch_ramp_epochs") else ""
    head = f"| {row['data']} | {row['config']}{ramp} | {row['batch']:,} | "
    if "error" in row:
        return head + f"error: {row['error']} | {row['reference']:.4f} | | | | |"
    return head + (f"{row['test_rmse']:.4f} | {row['reference']:.4f} | {row['difference']:+.4f} | "
                   f"{row['epochs_run']} ({row['best_epoch']}) | {row['wall_s']:.1f} | "
                   f"{row['samples_per_s_median_epoch']:,.0f} |")


if __name__ == "__main__":
    main()
