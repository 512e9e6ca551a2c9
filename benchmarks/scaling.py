"""Same global batch on 1 rank x 1 thread against 2 gloo ranks x 1 thread, and the share of
a step spent synchronising gradients.

    python -m benchmarks.scaling [--precision bf16] [--epochs 2] [--ranks 1 2] [--setups ddp-default buckets-1mb ...]

Launches `torchrun --standalone --nproc_per_node=N -m benchmarks.scaling --worker` for each N with
OMP_NUM_THREADS=1 (the machine has 2 cores). Each worker builds distrib's real Trainer (DDP, the article's
configuration, ml-100k u1), runs a warm-up epoch, then times the hot loop `Trainer.train_epoch` with gradient sync and
inside `ddp.no_sync()` (each rank at its own pace), then in lockstep (`no_sync()` with a barrier after each step:
every step waits for the slower rank, but no gradients move; its step time gives the `ceiling`, the speedup that
a free all-reduce would reach here), and times `dist.all_reduce` of a gradient-sized fp32 buffer. Prints samples/s per world
size, the speedup, and the all-reduce share of a step. Multi-rank runs are repeated for each DDP setup
(`SETUPS`: DDP's default single 25 MB bucket, 1 MB buckets, 1 MB buckets + bf16 gradient compression), each against
the same 1-rank run. Asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist

from benchmarks.harness import REPO, article_config, load_article_data, time_call

SETUPS = {  # DDP setups compared (dist.* overrides)
    "ddp-default": ["dist.bucket_cap_mb=25", "dist.grad_compression=none"],  # DDP's default: one bucket
    "buckets-1mb": ["dist.bucket_cap_mb=1", "dist.grad_compression=none"],  # distrib's default now
    "buckets-1mb+bf16": ["dist.bucket_cap_mb=1", "dist.grad_compression=bf16"],
}


def worker(args) -> None:
    from distrib.checkpoint.rundir import RunDir
    from distrib.parallel.distributed import close_process_group, init_process_group, resolve_env
    from distrib.training.trainer import Trainer

    env = resolve_env()
    device = torch.device("cpu")
    init_process_group(env, device, "gloo", 120.0)
    cfg = article_config(f"train.precision={args.precision}", f"train.compile={str(args.compile).lower()}",
                         "train.log_every_steps=1000000", *SETUPS[args.setup])
    data = load_article_data(cfg)
    with tempfile.TemporaryDirectory(prefix="distrib-scaling-") as tmp:
        run = RunDir(f"{tmp}/rank{env.rank}")
        run.open()
        trainer = Trainer(cfg, env, device, data, run)
        trainer.train_epoch(0)  # warm-up (and compilation, if on)
        synced = _time_epochs(trainer, range(1, 1 + args.epochs))
        with trainer.ddp.no_sync():
            local = _time_epochs(trainer, range(1 + args.epochs, 1 + 2 * args.epochs))
            # Lockstep without gradients on the wire: a barrier after every optimizer step, so each step waits
            # for the slower rank, as a synced step must, while communication costs next to nothing. Its step
            # time bounds what any all-reduce scheme could reach on this machine.
            barrier = trainer.optimizer.register_step_post_hook(lambda *_: dist.barrier())
            lockstep = _time_epochs(trainer, range(1 + 2 * args.epochs, 1 + 3 * args.epochs))
            barrier.remove()
        n_params = sum(p.numel() for p in trainer.model.parameters())
        wire = torch.bfloat16 if cfg.dist.grad_compression == "bf16" else torch.float32
        buffer = torch.zeros(n_params, dtype=wire)
        allreduce_s = time_call(lambda: dist.all_reduce(buffer), repeat=20, warmup=3)
        run.close()
    steps = trainer.steps_per_epoch * args.epochs
    if env.is_main:
        print("RESULT " + json.dumps({
            "world_size": env.world_size, "samples_per_s": steps * cfg.train.batch_size / synced,
            "step_ms": 1e3 * synced / steps, "step_no_sync_ms": 1e3 * local / steps,
            "step_lockstep_ms": 1e3 * lockstep / steps,
            "allreduce_ms": 1e3 * allreduce_s, "grad_mb": buffer.element_size() * n_params / 2**20,
        }), flush=True)
    close_process_group()


def _time_epochs(trainer, epochs) -> float:
    dist.barrier()
    start = time.perf_counter()
    for epoch in epochs:
        trainer.train_epoch(epoch)
    dist.barrier()
    return time.perf_counter() - start


def launch(nproc: int, args, setup: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                            "MASTER_PORT") and not k.startswith("SLURM_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "benchmarks.scaling", "--worker", "--precision", args.precision, "--epochs", str(args.epochs), "--setup", setup]
    if args.compile:
        cmd.append("--compile")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"world size {nproc} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs per measurement (36 steps each)")
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=list(SETUPS))
    parser.add_argument("--setup", default="ddp-default", choices=list(SETUPS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    base = launch(args.ranks[0], args, args.setups[0])
    results = [dict(base, setup="-")]
    for setup in args.setups:  # interleaved by setup; each multi-rank run against the same 1-rank run
        for n in args.ranks[1:]:
            results.append(dict(launch(n, args, setup), setup=setup))
    print(f"article config, ml-100k u1, global batch 2000, {args.precision}{' +compile' if args.compile else ''}, "
          "gloo, 1 thread per rank")
    print(f"{'setup':20s} {'ranks':>5s} {'samples/s':>10s} {'speedup':>8s} {'step ms':>8s} {'no-sync ms':>10s} "
          f"{'lockstep ms':>11s} {'ceiling':>8s} {'sync share':>10s} {'all_reduce ms':>13s} {'grad MB':>8s}")
    for r in results:
        share = max(0.0, r["step_ms"] - r["step_no_sync_ms"]) / r["step_ms"]
        ceiling = base["step_ms"] / r["step_lockstep_ms"]  # the speedup if gradients cost nothing to exchange
        print(f"{r['setup']:20s} {r['world_size']:5d} {r['samples_per_s']:10.0f} {r['samples_per_s'] / base['samples_per_s']:7.2f}x "
              f"{r['step_ms']:8.1f} {r['step_no_sync_ms']:10.1f} {r['step_lockstep_ms']:11.1f} {ceiling:7.2f}x "
              f"{100 * share:9.1f}% {r['allreduce_ms']:13.2f} {r['grad_mb']:8.2f}")


if __name__ == "__main__":
    main()
