"""distrib against the article's plain loop, side by side in one run.

    python -m benchmarks.throughput --quick                 # ~1 min: 3 epochs each, samples/s only
    python -m benchmarks.throughput                         # ~3 min: every variant to early stopping
    python -m benchmarks.throughput --variants fp32 bf16 bf16+compile
    python -m benchmarks.throughput --quick --variants      # the article loop alone

The article's configuration (configs/ml-100k-article.yaml) on ml-100k u1, one process, default threads. Prints this
machine's measured fp32 and bf16 matmul rates; then per variant: samples/s, the ratio to the article loop run
in the same process, achieved matmul FLOP/s and its share of each peak and of the roofline (this model's own
training matmuls timed alone, in the precision the variant trained in: `%roof`), and (full mode) test RMSE of the
best-validation weights and wall time until the test RMSE first reaches the article loop's final RMSE.
Asserts nothing about time.
"""
from __future__ import annotations

import argparse
import logging
import time

import torch

from benchmarks.article_baseline import train_article
from benchmarks.harness import (
    article_config,
    fmt_rate,
    load_article_data,
    matmul_rates,
    model_matmul_rates,
    rmse_str,
    run_distrib,
    train_flops_per_sample,
)
from distrib.training.precision import cpu_description, native_bf16, resolve_precision

VARIANTS = {
    "auto": ["train.precision=auto"],  # bf16 where the CPU has it natively and it is faster, else fp32
    "fp32": ["train.precision=fp32"],
    "bf16": ["train.precision=bf16"],
    "fp32+compile": ["train.precision=fp32", "train.compile=true"],
    "bf16+compile": ["train.precision=bf16", "train.compile=true"],
    # time to quality: the same model, schedule and early stopping, with the article's optional-in-distrib
    # user/item bias terms (model.bias), which converge in fewer epochs; judged by the same final test RMSE
    "bf16+bias": ["train.precision=bf16", "model.bias=true"],
    "fp32+bias": ["train.precision=fp32", "model.bias=true"],
    "bf16+lr2x": ["train.precision=bf16", "train.lr=2e-3"],
    "bf16+batch4000": ["train.precision=bf16", "train.batch_size=4000"],  # lr x sqrt(2) by train.lr_scaling=sqrt
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 epochs per variant: throughput only")
    parser.add_argument("--epochs", type=int, default=0, help="cap epochs (default: 3 with --quick, else 100)")
    parser.add_argument("--variants", nargs="*", default=["auto", "fp32", "bf16"], choices=list(VARIANTS),
                        help="distrib's variants to run after the article loop (none: the loop alone)")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--target-rmse", type=float, default=0.0,
                        help="with --no-baseline: report the time to this test RMSE (an earlier loop's result)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    epochs = args.epochs or (3 if args.quick else 100)
    cfg = article_config(f"train.epochs={epochs}")
    data = load_article_data(cfg)
    flops = train_flops_per_sample(cfg)
    print(f"{data.description}; threads {torch.get_num_threads()}; {flops / 1e6:.2f} MFLOP per training sample")
    print(f"CPU: {cpu_description()}; native bf16: {native_bf16(torch.device('cpu'))}; "
          f"train.precision=auto -> {resolve_precision('auto', torch.device('cpu'))}")
    peaks = matmul_rates()
    print("measured matmul peaks: " + ", ".join(f"{k} {fmt_rate(v)}" for k, v in peaks.items()))
    roof = model_matmul_rates(cfg, cfg.train.batch_size)
    print(f"roofline (this model's own training matmuls at batch {cfg.train.batch_size}): "
          + ", ".join(f"{k} {fmt_rate(v)}" for k, v in roof.items()), flush=True)
    peaks.update({f"roof_{k}": v for k, v in roof.items()})
    if torch.get_num_threads() == 1:  # CPU seconds: the same figures without a busy host's waits
        cpu_roof = model_matmul_rates(cfg, cfg.train.batch_size, clock=time.process_time)
        print("roofline per CPU second (1 thread): " + ", ".join(f"{k} {fmt_rate(v)}" for k, v in cpu_roof.items()))
        peaks.update({f"cpu_roof_{k}": v for k, v in cpu_roof.items()})

    results = {}
    if not args.no_baseline:
        base = train_article(data, epochs=epochs, log=lambda *_: None)
        results["article loop"] = base
        target = base["test_rmse"]
        print(f"article loop: {base['samples_per_s']:.0f} samples/s, test RMSE {base['test_rmse']:.4f}", flush=True)
    else:
        target = args.target_rmse
    for name in args.variants:
        variant_cfg = article_config(f"train.epochs={epochs}", *VARIANTS[name])
        out = run_distrib(variant_cfg, data, target_rmse=target)
        results[f"distrib {name}"] = {"samples_per_s": out["samples_per_s"], "total_s": out["total_s"],
                                      "samples_per_cpu_s": out["samples_per_cpu_s"],
                                      "precision": resolve_precision(variant_cfg.train.precision, torch.device("cpu")),
                                      "epochs": out["epochs"], "test_rmse": out["summary"].get("test_rmse"),
                                      "best_epoch": out["summary"]["best_epoch"], "reached_s": out["reached_s"]}
        print(f"distrib {name}: {out['samples_per_s']:.0f} samples/s, test RMSE {out['summary'].get('test_rmse'):.4f}",
              flush=True)  # a run cut off by a timeout still leaves its figures
    report(results, flops, peaks, quick=args.quick)


def report(results: dict, flops: float, peaks: dict, quick: bool) -> None:
    base = results.get("article loop")
    print(f"\n{'variant':22s} {'samples/s':>10s} {'x loop':>7s} {'matmul FLOP/s':>14s} {'%fp32pk':>8s} {'%bf16pk':>8s} "
          f"{'prec':>5s} {'%roof':>6s} {'epochs':>6s} {'best':>5s} {'test RMSE':>9s} {'wall s':>7s} {'to-target s':>11s} "
          f"{'x loop':>7s}")
    for name, r in results.items():
        rate = r["samples_per_s"] * flops
        prec = r.get("precision", "fp32")  # the article loop trains in fp32
        speedup = r["samples_per_s"] / base["samples_per_s"] if base else float("nan")
        reached = r.get("reached_s")
        ttq = f"{reached:11.1f}" if reached else ""
        if base and reached:
            ttq += f" {base['total_s'] / reached:6.1f}x"
        print(f"{name:22s} {r['samples_per_s']:10.0f} {speedup:6.2f}x {fmt_rate(rate):>14s} "
              f"{100 * rate / peaks['fp32']:7.1f}% {100 * rate / peaks['bf16']:7.1f}% {prec:>5s} "
              f"{100 * rate / peaks['roof_' + prec]:5.1f}% {r['epochs']:6d} "
              f"{r['best_epoch']:5d} {rmse_str(r['test_rmse']):>9s} {r['total_s']:7.1f} {ttq}")
    if "cpu_roof_fp32" in peaks:
        print("\nper CPU second (1 thread; the host's waits left out):")
        for name, r in results.items():
            if "samples_per_cpu_s" in r:
                prec = r.get("precision", "fp32")
                rate = r["samples_per_cpu_s"] * flops
                print(f"  {name:20s} {r['samples_per_cpu_s']:8.0f} samples/CPU-s = {fmt_rate(rate)}, "
                      f"{100 * rate / peaks['cpu_roof_' + prec]:5.1f}% of the {prec} roofline")
    if base and not quick:
        print("\ntime-to-quality ratio (loop wall time to its final test RMSE / variant's time to reach it; "
              "target >= 5):")
        for name, r in results.items():
            if name == "article loop":
                continue
            reached = r.get("reached_s")
            if reached:
                print(f"  {name:20s} {base['total_s'] / reached:5.2f}x vs the loop's whole run, "
                      f"{base['best_at_s'] / reached:5.2f}x vs the loop's best epoch ({reached:.1f}s)")
            else:
                print(f"  {name:20s} never reached {base['test_rmse']:.4f} (final {rmse_str(r['test_rmse'])})")
        print(f"\ntime to quality: target = the article loop's final test RMSE {base['test_rmse']:.4f}; the loop itself "
              f"took {base['total_s']:.1f}s to finish ({base['best_at_s']:.1f}s to its best epoch). "
              "'x loop' in the last column = loop's total wall time / variant's time to reach the target.")


if __name__ == "__main__":
    main()
