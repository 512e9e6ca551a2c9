"""A replicated step's time against the tables' size: the dense update against the touched-rows one.

    python -m benchmarks.touched_rows [--config configs/ml-25m.yaml] [--steps 30] [--rounds 3]

One process, as `python -m distrib.train` runs it (a gloo process group of one; the dense update's model in
DDP, the touched-rows update's unwrapped), the trainer's own `train_step` (autocast, loss, backward,
optimizer, schedule) at the shapes of ml-100k, ml-1m, ml-25m and ml-32m (uniform synthetic ids: a batch
touches as many rows as a real one at most). For each shape three variants are timed in alternating rounds,
so a shared host's load falls on all alike: `dist.embedding_update=dense`, `touched_rows`, and
`touched_rows` with its tables and moments left on 4 KB pages (what `advise_huge_pages` in
distrib/parallel/sparse_tables.py saves). Prints ms per step (median of the rounds; wall and CPU), each
variant's time against its own ml-100k figure, and dense / touched_rows, side by side; the ratios are of CPU
time, which the waits of a busy host leave out (one thread: the CPU time is the step's compute).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from benchmarks.harness import REPO
from benchmarks.sharding import synthetic_data
from distrib.checkpoint.rundir import RunDir
from distrib.config import load_config
from distrib.parallel import sparse_tables
from distrib.parallel.distributed import DistEnv
from distrib.training.trainer import Trainer

SHAPES = {"ml-100k": (943, 1682), "ml-1m": (6040, 3706), "ml-25m": (162541, 59047), "ml-32m": (200948, 87585)}
# variant: (dist.embedding_update, whether the tables go on huge pages)
VARIANTS = {"dense": ("dense", True), "touched_rows": ("touched_rows", True), "4 KB pages": ("touched_rows", False)}
SINGLE = DistEnv(rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=0, launcher="single")


def cpu_name() -> str:
    """lscpu's model name and whether the CPU computes bf16 natively (AVX512-BF16, AMX)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{fields.get('Model name', '?').strip()} ({', '.join(native) or 'no native bf16'})"


def transparent_huge_pages() -> str:
    """The kernel's mode, the bracketed word of /sys/kernel/mm/transparent_hugepage/enabled."""
    try:
        modes = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text().split()
    except OSError:
        return "none"
    return next((mode.strip("[]") for mode in modes if mode.startswith("[")), "?")


def build_trainer(config: str, overrides: list[str], update: str, data, run_dir: Path) -> Trainer:
    cfg = load_config(config, [*overrides, f"dist.embedding_update={update}", "dist.embedding_sharding=none"])
    run = RunDir(run_dir)
    run.open()
    trainer = Trainer(cfg, SINGLE, torch.device("cpu"), data, run)
    trainer.ddp.train()
    return trainer


@contextlib.contextmanager
def huge_pages(allowed: bool):
    """While a trainer takes its first steps (where the tables and their moments are advised): with
    allowed=False they stay on the base pages, as on a system without transparent huge pages."""
    saved = sparse_tables._madvise
    sparse_tables._madvise = saved if allowed else None
    try:
        yield
    finally:
        sparse_tables._madvise = saved


def time_steps(trainer: Trainer, steps: int, first: int) -> tuple[float, float]:
    """Seconds per step (wall, CPU) over `steps` consecutive batches from batch number `first`."""
    batch = trainer.cfg.train.batch_size
    wall, cpu = time.perf_counter(), time.process_time()
    for k in range(first, first + steps):
        k %= trainer.steps_per_epoch
        trainer.train_step(torch.arange(k * batch, (k + 1) * batch))
    return (time.perf_counter() - wall) / steps, (time.process_time() - cpu) / steps


def measure_shape(args, n_users: int, n_items: int, tmp: Path) -> dict:
    cfg = load_config(args.config, args.overrides)
    batch = cfg.train.batch_size
    data = synthetic_data(n_users, n_items, batch * (args.steps + 5))
    trainers = {}
    for k, (variant, (update, huge)) in enumerate(VARIANTS.items()):
        trainers[variant] = build_trainer(args.config, args.overrides, update, data, tmp / f"{n_users}-{k}")
        with huge_pages(huge):
            time_steps(trainers[variant], 3, 0)  # warm-up: allocator, Adam's state, the first sparse gradients
    times = {variant: [] for variant in VARIANTS}
    for _ in range(args.rounds):
        for variant, trainer in trainers.items():
            times[variant].append(time_steps(trainer, args.steps, 3))
    for trainer in trainers.values():
        trainer.run.close()
    medians = {variant: sorted(rounds, key=lambda t: t[1])[len(rounds) // 2] for variant, rounds in times.items()}
    return medians | {"precision": trainers["dense"].precision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "ml-25m.yaml"))
    parser.add_argument("--steps", type=int, default=30, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("overrides", nargs="*", help="key=value on top of the config")
    args = parser.parse_args()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    dist.init_process_group("gloo", rank=0, world_size=1)  # as a one-process run forms it
    cfg = load_config(args.config, args.overrides)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f} at start, "
          f"transparent huge pages: {transparent_huge_pages()}")
    print(f"{Path(args.config).name} {' '.join(args.overrides)}: {cfg.model.name}, n_factors {cfg.model.n_factors}, "
          f"hidden {cfg.model.hidden}, batch {cfg.train.batch_size}, {cfg.train.optimizer}, precision "
          f"{cfg.train.precision}; ms per step, median of {args.rounds} rounds of {args.steps} steps (CPU ms)")
    print(f"{'shape':8} {'users':>7} {'movies':>7} | "
          + " | ".join(f"{variant + ': wall (CPU)':>24} {'x ml-100k':>9}" for variant in VARIANTS)
          + f" | {'dense/touched':>13}")
    base = {}
    with tempfile.TemporaryDirectory(prefix="distrib-bench-touched-") as tmp:
        for name in args.shapes:
            n_users, n_items = SHAPES[name]
            result = measure_shape(args, n_users, n_items, Path(tmp))
            cells = []
            for variant in VARIANTS:
                wall, cpu = result[variant]
                base.setdefault(variant, cpu)
                cells.append(f"{1e3 * wall:15.1f} ({1e3 * cpu:6.1f}) {cpu / base[variant]:8.2f}x")
            ratio = result["dense"][1] / result["touched_rows"][1]
            print(f"{name:8} {n_users:7d} {n_items:7d} | {' | '.join(cells)} | {ratio:12.2f}x  "
                  f"{result['precision']}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
