"""Issue 5, target 6: distrib's hot loop on one GPU, the article's configuration, synthetic ratings of ml-100k and
ml-25m size (the GPU machine has no MovieLens files). Run through `benchmarks/gpu.sh`.

    python benchmarks/gpu_bench.py [--variants fp32 bf16 bf16+compile] [--sizes ml-100k ml-25m]
    torchrun --standalone --nproc_per_node=1 benchmarks/gpu_bench.py --ddp      # 1-process NCCL DDP

Prints the GPU's measured fp32/tf32/bf16 matmul rates, then per size and variant: samples/s of the training loop
(`Trainer._train_epoch`, data resident on the GPU), ms/step, and the achieved matmul FLOP/s as a share of the
measured bf16 rate. ml-25m size means its embedding tables (162,541 users, 59,047 items: 33 M of the model's 34 M
parameters, updated densely every step); the timed epoch covers `--ratings` random ratings of that id space,
since the step cost does not depend on the epoch's length. Asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import torch

from harness import SINGLE, article_config, build_trainer, fmt_rate, time_call, train_flops_per_sample
from distrib.data import PreparedData, RatingSplit
from distrib.rundir import RunDir
from distrib.trainer import Trainer

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
        trainer = build_trainer(Trainer, cfg, env, device, data, run)
        started = time.perf_counter()
        trainer._train_epoch(0)  # warm-up: compilation, cuBLAS heuristics, allocator
        warm_s = time.perf_counter() - started
        sync()
        started = time.perf_counter()
        for epoch in range(1, 1 + epochs):
            trainer._train_epoch(epoch)  # ends in .item(): the epoch's only host sync
        seconds = time.perf_counter() - started
        no_sync_s = None
        if hasattr(trainer.ddp, "no_sync"):
            with trainer.ddp.no_sync():
                started = time.perf_counter()
                for epoch in range(1 + epochs, 1 + 2 * epochs):
                    trainer._train_epoch(epoch)
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

    from distrib.distributed import close_process_group, init_process_group, resolve_env, select_device

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["fp32", "bf16", "bf16+compile"], choices=list(VARIANTS))
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--ratings", type=int, default=1_000_000, help="ratings in the timed epochs (ml-25m size)")
    parser.add_argument("--ddp", action="store_true", help="under torchrun: DDP over NCCL, bf16")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a smoke test of this script")
    args = parser.parse_args()
    if args.ddp:
        return ddp_main(args)
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


if __name__ == "__main__":
    main()
