"""Where one training step of the article's configuration spends its time, by operator (torch.profiler).

    python -m benchmarks.step_profile [--precision bf16] [--compile] [--steps 10] [--rows 15]
    python -m benchmarks.step_profile --precision fp32 --roofline --threads 1 2   # share of the matmul roofline

One process on CPU, batch 2000 of ml-100k u1, distrib's model and optimizer, the trainer's step (autocast,
summed MSE, zero_grad, backward, Adam). Prints ms/step and the operator table sorted by self CPU time.

--roofline: per thread count, the step's CPU time against the roofline (this model's own training matmuls alone,
as benchmarks.throughput times them), timed in turns so both see the same load of a shared host, for the model
as shipped and for the previous path (the hidden layers' ReLU + dropout out of place, `relu_dropout`), which
must train bit for bit the same. CPU seconds: a busy host's waits are left out.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.harness import article_config, load_article_data, train_flops_per_sample
from distrib.models import build_model, embeddingnet
from distrib.models.dropout import relu_dropout
from distrib.training.trainer import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--roofline", action="store_true", help="the step against the matmul roofline, CPU time")
    parser.add_argument("--threads", nargs="+", type=int, default=[1], help="with --roofline")
    args = parser.parse_args()
    if args.roofline:
        return roofline(args)
    cfg = article_config(f"train.precision={args.precision}")
    data = load_article_data(cfg)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_users, data.n_items, data.rating_min, data.rating_max)
    if args.compile:
        model.compile()
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    users, items, ratings = (torch.from_numpy(np.array(a)) for a in (data.train.users, data.train.items,
                                                                       data.train.ratings))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16")
    batch = cfg.train.batch_size

    def step(k: int) -> None:
        idx = slice(k * batch, (k + 1) * batch)
        with autocast:
            pred = model(users[idx], items[idx])
        loss = (pred.float() - ratings[idx]).pow(2).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for k in range(3):
        step(k)
    started = time.perf_counter()
    for k in range(args.steps):
        step(k % 30)
    print(f"{args.precision}{' +compile' if args.compile else ''}, {torch.get_num_threads()} threads: "
          f"{1e3 * (time.perf_counter() - started) / args.steps:.1f} ms/step")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for k in range(args.steps):
            step(k % 30)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40))


def make_step(cfg, data, previous: bool):
    """A fresh model (seed 0), its optimizer, and a step over batch k (masks seeded by k); previous: the hidden
    layers' ReLU + dropout out of place, as before relu_dropout_."""
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_users, data.n_items, data.rating_min, data.rating_max)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    users, items, ratings = (torch.from_numpy(np.array(a)) for a in (data.train.users, data.train.items,
                                                                       data.train.ratings))
    fused = embeddingnet.relu_dropout_
    batch = cfg.train.batch_size

    def step(k: int) -> None:
        embeddingnet.relu_dropout_ = relu_dropout if previous else fused
        try:
            torch.manual_seed(k)
            idx = slice((k % 30) * batch, (k % 30 + 1) * batch)
            loss = (model(users[idx], items[idx]) - ratings[idx]).pow(2).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        finally:
            embeddingnet.relu_dropout_ = fused
    return model, step


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
        (old_model, old), (new_model, new) = make_step(cfg, data, True), make_step(cfg, data, False)
        times = {"roofline": [], "previous": [], "shipped": []}
        for k in range(3 + args.steps):
            for name, fn in (("roofline", roof), ("previous", old), ("shipped", new)):
                started = time.process_time()
                fn(k)
                if k >= 3:
                    times[name].append(time.process_time() - started)
        same = all(torch.equal(a, b) for a, b in zip(old_model.state_dict().values(), new_model.state_dict().values()))
        med = {name: float(np.median(t)) for name, t in times.items()}
        print(f"{threads} thread(s), {args.steps} steps each, median CPU ms/step: roofline matmuls "
              f"{1e3 * med['roofline']:.1f} ({batch * flops / med['roofline'] / 1e9:.0f} GFLOP/s per CPU-s)"
              + "".join(f"; {name} {1e3 * med[name]:.1f} = {100 * med['roofline'] / med[name]:.1f}% of the roofline"
                        for name in ("previous", "shipped"))
              + f"; weights after {3 + args.steps} steps bit-identical: {same}", flush=True)


if __name__ == "__main__":
    main()
