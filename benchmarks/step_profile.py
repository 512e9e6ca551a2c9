"""Where one training step of the article's configuration spends its time, by operator (torch.profiler).

    python -m benchmarks.step_profile [--precision bf16] [--compile] [--steps 10] [--rows 15]
    python -m benchmarks.step_profile --precision fp32 --roofline --threads 1 2   # share of the matmul roofline
    python -m benchmarks.step_profile --shapes ml-100k ml-25m [--config configs/ml-25m.yaml]   # what grows

One process on CPU, batch 2000 of ml-100k u1, the trainer's own step (`Trainer.train_step`: autocast, summed
MSE, zero_grad, backward, Adam, schedule). Prints ms/step and the operator table sorted by self CPU time.

--roofline: per thread count, the step's CPU time against the roofline (this model's own training matmuls alone,
as benchmarks.throughput times them), timed in turns so both see the same load of a shared host. CPU seconds: a
busy host's waits are left out.

--shapes: the config's model (`configs/ml-25m.yaml` by default, `dist.embedding_update` --update, one process) at
the tables' sizes of those releases (synthetic uniform ids, as benchmarks.touched_rows), profiled in turns
(--rounds): each operator's self CPU ms per step at each shape (median of the rounds) and its difference from
the first shape, largest first: where a larger catalog's extra time goes.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.harness import article_config, load_article_data, open_trainer, train_flops_per_sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--roofline", action="store_true", help="the step against the matmul roofline, CPU time")
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="with --roofline")
    parser.add_argument("--shapes", nargs="+", help="profile --config at these releases' table sizes, side by side")
    parser.add_argument("--config", default="configs/ml-25m.yaml", help="with --shapes")
    parser.add_argument("--rounds", type=int, default=5, help="with --shapes")
    parser.add_argument("--update", default="touched_rows", choices=["touched_rows", "dense"],
                        help="with --shapes: dist.embedding_update at every shape (auto would differ between them)")
    args = parser.parse_args()
    if args.roofline:
        return roofline(args)
    if args.shapes:
        return compare_shapes(args)
    cfg = article_config(f"train.precision={args.precision}", f"train.compile={str(args.compile).lower()}")
    data = load_article_data(cfg)
    with open_trainer(cfg, data) as trainer:
        step = batch_stepper(trainer)
        for k in range(3):
            step(k)
        started = time.perf_counter()
        for k in range(args.steps):
            step(k)
        print(f"{args.precision}{' +compile' if args.compile else ''}, {torch.get_num_threads()} threads: "
              f"{1e3 * (time.perf_counter() - started) / args.steps:.1f} ms/step")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for k in range(args.steps):
                step(k)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


def batch_stepper(trainer):
    """A step over the training split's k-th batch (30 batches in turn), the trainer's own `train_step`."""
    batch = trainer.cfg.train.batch_size

    def step(k: int) -> None:
        trainer.train_step(torch.arange((k % 30) * batch, (k % 30 + 1) * batch))
    return step


def compare_shapes(args) -> None:
    import os
    import tempfile
    from pathlib import Path

    import torch.distributed as dist

    from benchmarks.sharding import synthetic_data
    from benchmarks.touched_rows import SHAPES, build_trainer, cpu_name, time_steps, transparent_huge_pages
    from distrib.config import load_config

    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29518")
    dist.init_process_group("gloo", rank=0, world_size=1)  # as a one-process run forms it
    cfg = load_config(args.config, [])
    print(f"CPU: {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} "
          f"thread(s), transparent huge pages: {transparent_huge_pages()}, load average {os.getloadavg()[0]:.2f}; "
          f"{args.config}, dist.embedding_update={args.update}; self CPU ms per step, median of "
          f"{args.rounds} profiled rounds of {args.steps} steps")
    with tempfile.TemporaryDirectory(prefix="distrib-step-profile-") as tmp:
        trainers = {}
        for name in args.shapes:
            data = synthetic_data(*SHAPES[name], cfg.train.batch_size * (args.steps + 5))
            trainers[name] = build_trainer(args.config, [], args.update, data, Path(tmp) / name)
            time_steps(trainers[name], 3, 0)  # warm-up: allocator, Adam's state, the first sparse gradients
        rounds = {name: {} for name in args.shapes}
        for _ in range(args.rounds):
            for name, trainer in trainers.items():
                with profile(activities=[ProfilerActivity.CPU]) as prof:
                    time_steps(trainer, args.steps, 3)
                for event in prof.key_averages():
                    rounds[name].setdefault(event.key, []).append(event.self_cpu_time_total / 1e3 / args.steps)
        for trainer in trainers.values():
            trainer.run.close()
    dist.destroy_process_group()
    ms = {name: {op: float(np.median(t + [0.0] * (args.rounds - len(t)))) for op, t in ops.items()}
          for name, ops in rounds.items()}
    first, ops = args.shapes[0], sorted({op for per in ms.values() for op in per})
    ops.sort(key=lambda op: -(ms[args.shapes[-1]].get(op, 0.0) - ms[first].get(op, 0.0)))
    print(f"{'operator (self CPU ms/step)':44}" + "".join(f"{name:>10}" for name in args.shapes)
          + "".join(f"{name + ' - ' + first:>20}" for name in args.shapes[1:]))
    for op in [None, *ops[:args.rows]]:
        cells = [sum(ms[name].values()) if op is None else ms[name].get(op, 0.0) for name in args.shapes]
        print(f"{'the step' if op is None else op[:43]:44}" + "".join(f"{c:10.2f}" for c in cells)
              + "".join(f"{c - cells[0]:+20.2f}" for c in cells[1:]))


def roofline(args) -> None:
    cfg = article_config("train.precision=fp32")
    data = load_article_data(cfg)
    batch, flops = cfg.train.batch_size, train_flops_per_sample(cfg)
    widths = [2 * cfg.model.n_factors, *cfg.model.hidden, 1]
    layers = [(torch.randn(batch, a), torch.randn(b, a), torch.randn(batch, b)) for a, b in zip(widths, widths[1:])]

    def roof(_k: int) -> None:  # benchmarks.harness.model_matmul_rates' products
        for x, w, dy in layers:
            x @ w.T, dy @ w, dy.T @ x

    for threads in args.threads:
        torch.set_num_threads(threads)
        with open_trainer(cfg, data) as trainer:
            step = batch_stepper(trainer)
            times = {"roofline": [], "step": []}
            for k in range(3 + args.steps):
                for name, fn in (("roofline", roof), ("step", step)):
                    started = time.process_time()
                    fn(k)
                    if k >= 3:
                        times[name].append(time.process_time() - started)
        med = {name: float(np.median(t)) for name, t in times.items()}
        print(f"{threads} thread(s), {args.steps} steps each, median CPU ms/step: roofline matmuls "
              f"{1e3 * med['roofline']:.1f} ({batch * flops / med['roofline'] / 1e9:.0f} GFLOP/s per CPU-s); "
              f"the trainer's step {1e3 * med['step']:.1f} = {100 * med['roofline'] / med['step']:.1f}% of the roofline",
              flush=True)


if __name__ == "__main__":
    main()
