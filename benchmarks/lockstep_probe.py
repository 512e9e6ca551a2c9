"""How far apart two ranks' identical work runs on this machine, and what a per-step
barrier then costs. No model, no DDP: each rank does the same fixed fp32 matmul work per step.

    OMP_NUM_THREADS=1 torchrun --standalone --nproc_per_node=2 benchmarks/lockstep_probe.py [--steps 60]

Prints, for passes at each rank's own pace and passes with a barrier after every step (alternating, twice):
each rank's mean compute time per step and its standard deviation, the mean over steps of the slower rank's
time, each rank's mean wait in the barrier, and the resulting step. Asserts nothing about time.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist

ROWS, WIDTH, LAYERS = 1000, 500, 12  # about half of the article's fp32 step on one of these vCPUs


def timed_steps(x: torch.Tensor, w: torch.Tensor, steps: int, lockstep: bool) -> tuple[list[float], list[float]]:
    compute, wait = [], []
    dist.barrier()
    for _ in range(steps):
        started = time.perf_counter()
        y = x
        for _ in range(LAYERS):
            y = torch.tanh(y @ w)
        computed = time.perf_counter()
        if lockstep:
            dist.barrier()
        compute.append(computed - started)
        wait.append(time.perf_counter() - computed)
    return compute, wait


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    x, w = torch.randn(ROWS, WIDTH), torch.randn(WIDTH, WIDTH)
    for lockstep in (False, True, False, True):
        compute, wait = timed_steps(x, w, args.steps, lockstep)
        mine = torch.tensor(compute + wait, dtype=torch.float64)
        every = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
        dist.all_gather(every, mine)
        if dist.get_rank() == 0:
            ms = lambda values: 1e3 * statistics.mean(values)  # noqa: E731
            per_rank = [(t[:args.steps].tolist(), t[args.steps:].tolist()) for t in every]
            slowest = [max(step) for step in zip(*(c for c, _ in per_rank))]
            ranks = "; ".join(f"rank {r}: compute {ms(c):.1f} ms (sd {1e3 * statistics.stdev(c):.1f}), wait {ms(wt):.1f}"
                              for r, (c, wt) in enumerate(per_rank))
            step = ms(per_rank[0][0]) + ms(per_rank[0][1])
            print(f"{'lockstep' if lockstep else 'own pace'}: {ranks}; slower rank per step {ms(slowest):.1f} ms; "
                  f"step {step:.1f} ms", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
