"""One GPU, the article's EmbeddingNet at ml-25m's shape: samples/s and the share of the device's measured bf16
matmul rate at global batch 2k, 32k and 256k, eager against the captured step (train.cuda_graph). Under 5 minutes.

    python -m benchmarks.gpu_large_batch            # one CUDA GPU, from the repo root (python -m benchmarks.gpu
                                                    # runs it as its large-batch part)
    python -m benchmarks.gpu_large_batch --smoke    # CPU, tiny shape: checks that the script works

ml-25m's shape: its embedding tables (162,541 users x 59,047 items x 150 factors, 33 M of the model's 34 M
parameters, all updated by Adam every step). Each timed epoch covers --steps random ratings batches of that id
space (the step's cost does not depend on the epoch's length); a first, untimed epoch warms up (and captures the
graph). Precision: train.precision=auto, bf16 on a GPU that has it. Share of the rate: the model's matmul FLOPs
per training sample (forward + backward) x samples/s over a measured 8192^3 matmul in the precision trained in
(bf16 on the GPU). Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import tempfile

import torch

from benchmarks.gpu import SIZES, gpu_rates, synthetic
from benchmarks.harness import SINGLE, article_config, fmt_rate, time_call, time_epochs, train_flops_per_sample
from distrib.checkpoint.rundir import RunDir
from distrib.training.precision import cpu_description, resolve_precision
from distrib.training.trainer import Trainer

VARIANTS = {"eager": [], "graphed": ["train.cuda_graph=true"]}


def time_batch(data, batch: int, variant: str, device: torch.device, epochs: int) -> dict:
    cfg = article_config(f"train.batch_size={batch}", "train.patience=0", "train.log_every_steps=1000000",
                         f"train.device={device.type}", *VARIANTS[variant])
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="distrib-gpu-batch-") as tmp:
        run = RunDir(tmp)
        run.open()
        try:
            trainer = Trainer(cfg, SINGLE, device, data, run)
            warm_s, seconds = time_epochs(trainer, epochs, sync)
        finally:
            run.close()
    steps = trainer.steps_per_epoch * epochs
    return {"batch": batch, "variant": variant, "precision": trainer.precision,
            "samples_per_s": steps * batch / seconds, "step_ms": 1e3 * seconds / steps, "warmup_s": warm_s,
            "flops_per_sample": train_flops_per_sample(cfg)}


def cpu_rates(n: int = 512) -> dict:
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = (torch.randn(n, n, dtype=dtype) for _ in range(2))
        rates[name] = 2 * n ** 3 / time_call(lambda: a @ b, repeat=3, warmup=1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", nargs="+", type=int, default=[2000, 32000, 256000])
    parser.add_argument("--steps", type=int, default=40, help="steps per timed epoch")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per row")
    parser.add_argument("--smoke", action="store_true", help="CPU, ml-100k's id space, batches 256 and 512, tiny epochs")
    args = parser.parse_args()
    if args.smoke:
        device, (n_users, n_items, _) = torch.device("cpu"), SIZES["ml-100k"]
        args.batches, args.steps, args.epochs = [256, 512], 2, 1
        print(f"smoke run on {cpu_description()}; torch {torch.__version__}", flush=True)
        rates = cpu_rates()
    else:
        device, (n_users, n_items, _) = torch.device("cuda", torch.cuda.current_device()), SIZES["ml-25m"]
        print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
        rates = gpu_rates()
    print("measured matmul rates: " + ", ".join(f"{k} {fmt_rate(v)}" for k, v in rates.items()), flush=True)
    print(f"precision: train.precision=auto -> {resolve_precision('auto', device)}", flush=True)
    rows = []
    for batch in args.batches:
        data = synthetic(n_users, n_items, batch * args.steps)
        for variant in VARIANTS:
            r = time_batch(data, batch, variant, device, args.epochs)
            achieved = r["samples_per_s"] * r["flops_per_sample"]
            r["share"] = achieved / rates[r["precision"]]  # of the measured rate in the precision it trained in
            rows.append(r)
            print(f"batch {batch:7d} {variant:8s} {r['precision']}: {r['samples_per_s']:14,.0f} samples/s "
                  f"{r['step_ms']:8.2f} ms/step {fmt_rate(achieved):>14s} = {100 * r['share']:6.2f}% of the "
                  f"{r['precision']} rate (warm-up epoch {r['warmup_s']:.1f}s)", flush=True)
        del data
    print("JSON " + json.dumps({"rates": rates, "rows": rows}))


if __name__ == "__main__":
    main()
