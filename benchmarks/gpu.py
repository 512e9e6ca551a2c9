"""Everything that needs a GPU machine, in one prepared pass: the one GPU entry point.

    python -m benchmarks.gpu [--parts hot-loop ddp e2e cpu] [--data-root DIR] [--out DIR]
    python -m benchmarks.gpu --parts hot-loop --device cpu --sizes ml-100k --variants fp32   # a CPU smoke test
    python -m benchmarks.gpu --parts large-batch --device cpu   # the large-batch part's CPU smoke test

Parts (each in its own time limit; logs and figures under --out):
- hot-loop: the GPU's measured fp32/tf32/bf16 matmul rates, then per size and variant samples/s of the training
  loop (`Trainer.train_epoch`, data resident on the GPU), ms/step, and the achieved matmul FLOP/s as a share of
  the measured bf16 rate. The article's configuration on synthetic ratings of ml-100k and ml-25m size (no data
  files needed); ml-25m size means its embedding tables (162,541 users, 59,047 items: 33 M of the model's 34 M
  parameters, updated densely every step); the timed epoch covers `--ratings` random ratings of that id space,
  since the step cost does not depend on the epoch's length.
- large-batch: the article's model at ml-25m's shape (its embedding tables, all updated by Adam every step),
  global batch 2k/32k/256k, eager against the captured step (train.cuda_graph): samples/s, ms/step and the share
  of the measured 8192^3 matmul rate in the precision trained in (train.precision=auto, bf16 on a GPU that has
  it). Each timed epoch covers --steps random batches of that id space; a first, untimed epoch warms up (and
  captures the graph). With --device cpu: ml-100k's id space, batches 256 and 512, tiny epochs (a smoke test).
- ddp: a 1-process NCCL DDP run under torchrun: ms/step with and without gradient sync, all_reduce of the grads.
- e2e: the real job end to end on CUDA under torchrun (NCCL, bf16): the quick start, then configs/ml-100k.yaml
  (I-AutoRec + MF with its refit phase) on ml-100k u1 from --data-root.
- cpu: 1 rank x 1 thread against 2 gloo ranks x 1 thread (`benchmarks.scaling`) and the article loop against
  distrib at 1 thread (`benchmarks.throughput --quick`), on the GPU machine's quiet many-core host.
Asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, SINGLE, article_config, fmt_rate, time_call, time_epochs, train_flops_per_sample
from distrib.checkpoint.rundir import RunDir
from distrib.data import PreparedData, RatingSplit
from distrib.training.precision import cpu_description, resolve_precision
from distrib.training.trainer import Trainer

SIZES = {"ml-100k": (943, 1682, 100_000), "ml-25m": (162_541, 59_047, 25_000_095)}
VARIANTS = {"fp32": ["train.precision=fp32"], "bf16": ["train.precision=bf16"],
            "fp32+compile": ["train.precision=fp32", "train.compile=true"],
            "bf16+compile": ["train.precision=bf16", "train.compile=true"]}


def synthetic(n_users: int, n_items: int, n_ratings: int, seed: int = 0) -> PreparedData:
    rng = np.random.default_rng(seed)

    def split(n):
        return RatingSplit(rng.integers(0, n_users, n), rng.integers(0, n_items, n),
                           rng.integers(1, 6, n).astype(np.float32))

    n_val = max(2000, n_ratings // 100)
    return PreparedData(train=split(n_ratings), val=split(n_val), test=None, n_users=n_users, n_items=n_items,
                        rating_min=1.0, rating_max=5.0, user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                        description=f"synthetic {n_users} users, {n_items} items, {n_ratings} ratings")


def gpu_rates() -> dict:
    rates = {}
    n = 8192
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a = torch.randn(n, n, device="cuda", dtype=dtype)
        b = torch.randn(n, n, device="cuda", dtype=dtype)
        seconds = time_call(lambda: (a @ b, torch.cuda.synchronize()), repeat=10, warmup=3)
        rates[name] = 2 * n ** 3 / seconds
    torch.backends.cuda.matmul.allow_tf32 = False
    return rates


def time_variant(data: PreparedData, overrides: list[str], env=SINGLE, epochs: int = 2, device: str = "cuda") -> dict:
    cfg = article_config("data.name=synthetic", "data.split=random", f"train.device={device}",
                         "train.log_every_steps=1000000", *overrides)
    device = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="distrib-gpu-") as tmp:
        run = RunDir(tmp)
        run.open()
        trainer = Trainer(cfg, env, device, data, run)
        warm_s, seconds = time_epochs(trainer, epochs, sync)
        no_sync_s = None
        if hasattr(trainer.ddp, "no_sync"):
            with trainer.ddp.no_sync():
                started = time.perf_counter()
                for epoch in range(1 + epochs, 1 + 2 * epochs):
                    trainer.train_epoch(epoch)
                no_sync_s = time.perf_counter() - started
        run.close()
    steps = trainer.steps_per_epoch * epochs
    out = {"samples_per_s": steps * cfg.train.batch_size / seconds, "step_ms": 1e3 * seconds / steps,
           "warmup_s": warm_s, "flops_per_sample": train_flops_per_sample(cfg),
           "params_m": sum(p.numel() for p in trainer.model.parameters()) / 1e6}
    if no_sync_s is not None:
        out["step_no_sync_ms"] = 1e3 * no_sync_s / steps
    return out


def ddp_main(args) -> None:
    import torch.distributed as dist

    from distrib.parallel.distributed import close_process_group, init_process_group, resolve_env, select_device

    env = resolve_env()
    print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
    device = select_device("cuda", env.local_rank)
    init_process_group(env, device, "nccl", 120.0)
    for size in args.sizes:
        n_users, n_items, _ = SIZES[size]
        data = synthetic(n_users, n_items, min(SIZES[size][2], args.ratings))
        r = time_variant(data, VARIANTS["bf16"], env=env)
        buffer = torch.zeros(int(r["params_m"] * 1e6), device=device)
        r["allreduce_ms"] = 1e3 * time_call(lambda: (dist.all_reduce(buffer), torch.cuda.synchronize()), repeat=20)
        if env.is_main:
            print(f"DDP nccl x{env.world_size} {size:8s} bf16: {r['samples_per_s']:12,.0f} samples/s "
                  f"{r['step_ms']:7.2f} ms/step, no_sync {r['step_no_sync_ms']:7.2f} ms/step, "
                  f"all_reduce of {4 * r['params_m']:.0f} MB grads {r['allreduce_ms']:.2f} ms", flush=True)
    close_process_group()


def hot_loop(args) -> None:
    if args.device == "cuda":
        print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
        rates = gpu_rates()
    else:
        rates = {"bf16": float("nan")}
    print("measured matmul rates (8192^3): " + ", ".join(f"{k} {fmt_rate(v)}" for k, v in rates.items()), flush=True)
    rows = []
    for size in args.sizes:
        n_users, n_items, n_ratings = SIZES[size]
        data = synthetic(n_users, n_items, min(n_ratings, args.ratings))
        for name in args.variants:
            r = time_variant(data, VARIANTS[name], device=args.device)
            achieved = r["samples_per_s"] * r["flops_per_sample"]
            rows.append({"size": size, "variant": name, **r})
            print(f"{size:8s} {name:13s} {r['samples_per_s']:12,.0f} samples/s {r['step_ms']:7.2f} ms/step "
                  f"{fmt_rate(achieved):>14s} = {100 * achieved / rates['bf16']:5.2f}% of bf16 peak "
                  f"({r['params_m']:.1f} M params, warm-up epoch {r['warmup_s']:.1f}s)", flush=True)
    print("JSON " + json.dumps({"rates": rates, "rows": rows}))


LARGE_BATCH_VARIANTS = {"eager": [], "graphed": ["train.cuda_graph=true"]}


def time_batch(data: PreparedData, batch: int, variant: str, device: torch.device, epochs: int) -> dict:
    cfg = article_config(f"train.batch_size={batch}", "train.patience=0", "train.log_every_steps=1000000",
                         f"train.device={device.type}", *LARGE_BATCH_VARIANTS[variant])
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


def large_batch(args) -> None:
    if args.device == "cpu":  # the smoke test: small shapes, so that it checks the part works in a few minutes
        device, (n_users, n_items, _) = torch.device("cpu"), SIZES["ml-100k"]
        batches, steps, epochs = [256, 512], 2, 1
        print(f"smoke run on {cpu_description()}; torch {torch.__version__}", flush=True)
        rates = cpu_rates()
    else:
        device, (n_users, n_items, _) = torch.device("cuda", torch.cuda.current_device()), SIZES["ml-25m"]
        batches, steps, epochs = args.batches, args.steps, 2
        print(f"{torch.cuda.get_device_name()}; torch {torch.__version__}", flush=True)
        rates = gpu_rates()
    print("measured matmul rates: " + ", ".join(f"{k} {fmt_rate(v)}" for k, v in rates.items()), flush=True)
    print(f"precision: train.precision=auto -> {resolve_precision('auto', device)}", flush=True)
    rows = []
    for batch in batches:
        data = synthetic(n_users, n_items, batch * steps)
        for variant in LARGE_BATCH_VARIANTS:
            r = time_batch(data, batch, variant, device, epochs)
            achieved = r["samples_per_s"] * r["flops_per_sample"]
            r["share"] = achieved / rates[r["precision"]]  # of the measured rate in the precision it trained in
            rows.append(r)
            print(f"batch {batch:7d} {variant:8s} {r['precision']}: {r['samples_per_s']:14,.0f} samples/s "
                  f"{r['step_ms']:8.2f} ms/step {fmt_rate(achieved):>14s} = {100 * r['share']:6.2f}% of the "
                  f"{r['precision']} rate (warm-up epoch {r['warmup_s']:.1f}s)", flush=True)
        del data
    print("JSON " + json.dumps({"rates": rates, "rows": rows}))


FIGURES = ("batch ", "world size", "done:", "refit:", "samples/s", "speedup", "x loop", "ranks", "article loop", "distrib ",
           "sync", "DDP nccl", "measured matmul")


def step(name: str, limit_s: int, cmd: list[str], out: Path, env: dict | None = None) -> bool:
    """Run one part as a subprocess, keep its log in `out`, print the lines that carry figures."""
    print(f"== {name}", flush=True)
    started = time.perf_counter()
    log = out / f"{name}.log"
    try:
        with open(log, "w") as handle:
            code = subprocess.run(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                  stdout=handle, stderr=subprocess.STDOUT, timeout=limit_s).returncode
    except subprocess.TimeoutExpired:
        code = "timeout"
    lines = log.read_text(errors="replace").splitlines()
    if code != 0:
        print(f"FAILED ({code}): {name}\n" + "\n".join(lines[-20:]), flush=True)
    shown = [line for line in lines if any(mark in line for mark in FIGURES) and not line.startswith("[0")]
    print("\n".join(shown[-14:]) + f"\n   ({time.perf_counter() - started:.0f} s)", flush=True)
    return code == 0


def run_parts(args) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py, ok = sys.executable, True
    torchrun = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    single_thread = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    parts = {
        "hot-loop": lambda: step("hot-loop", 200, [py, "-m", "benchmarks.gpu", "--hot-loop", "--device", args.device,
                                                   "--sizes", *args.sizes, "--variants", *args.variants,
                                                   "--ratings", str(args.ratings)], out),
        "large-batch": lambda: step("large-batch", 240, [py, "-m", "benchmarks.gpu", "--large-batch",
                                                         "--device", args.device, "--steps", str(args.steps),
                                                         "--batches", *map(str, args.batches)], out),
        "ddp": lambda: step("ddp", 90, [*torchrun, "-m", "benchmarks.gpu", "--ddp", "--sizes", *args.sizes], out),
        "e2e": lambda: step("quickstart-cuda", 150, [*torchrun, "-m", "distrib.train", "configs/quickstart.yaml",
                                                     "train.device=cuda", "train.precision=bf16",
                                                     f"run.dir={out}/runs/quickstart"], out)
        & step("ml100k-cuda", 200, [*torchrun, "-m", "distrib.train", "configs/ml-100k.yaml", "train.device=cuda",
                                    f"data.root={args.data_root}", f"data.cache_dir={out}/cache",
                                    f"run.dir={out}/runs/ml100k", "train.log_every_steps=100000"], out),
        "cpu": lambda: step("scaling-bf16", 150, [py, "-m", "benchmarks.scaling", "--precision", "bf16", "--epochs", "2",
                                                  "--setups", "buckets-1mb"], out, single_thread)
        & step("throughput-1thread", 150, [py, "-m", "benchmarks.throughput", "--quick"], out,
               {**single_thread, "DISTRIB_TEST_DATA": str(args.data_root)}),
    }
    for part in args.parts:
        ok = parts[part]() and ok
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=["hot-loop", "large-batch", "ddp", "e2e", "cpu"],
                        choices=["hot-loop", "large-batch", "ddp", "e2e", "cpu"])
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("DISTRIB_TEST_DATA", "data")).resolve(),
                        help="holds ml-100k/ (e2e and cpu parts)")
    parser.add_argument("--out", default=os.environ.get("OUT") or "/tmp/distrib-gpu", help="logs and runs")
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16+compile"], choices=list(VARIANTS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--ratings", type=int, default=1_000_000, help="ratings in the timed epochs (ml-25m size)")
    parser.add_argument("--batches", nargs="+", type=int, default=[2000, 32000, 256000], help="large-batch part")
    parser.add_argument("--steps", type=int, default=40, help="large-batch part: steps per timed epoch")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: a smoke test of hot-loop and large-batch")
    parser.add_argument("--hot-loop", action="store_true", help=argparse.SUPPRESS)  # the hot-loop part, in-process
    parser.add_argument("--ddp", action="store_true", help=argparse.SUPPRESS)  # the ddp part's torchrun worker
    parser.add_argument("--large-batch", action="store_true", help=argparse.SUPPRESS)  # the large-batch part
    args = parser.parse_args()
    if args.ddp:
        return ddp_main(args) or 0
    if args.hot_loop:
        return hot_loop(args) or 0
    if args.large_batch:
        return large_batch(args) or 0
    try:
        subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                       check=False, timeout=30)
    except (OSError, subprocess.SubprocessError):
        print("nvidia-smi: not available", flush=True)
    return run_parts(args)


if __name__ == "__main__":
    sys.exit(main())
