"""Where one training step of the article's configuration spends its time, by operator (torch.profiler).

    python -m benchmarks.step_profile [--precision bf16] [--compile] [--steps 10] [--rows 15]

One process on CPU, batch 2000 of ml-100k u1, distrib's model and optimizer, the trainer's step (autocast,
summed MSE, zero_grad, backward, Adam). Prints ms/step and the operator table sorted by self CPU time.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.harness import article_config, load_article_data
from distrib.models import build_model
from distrib.trainer import build_optimizer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
