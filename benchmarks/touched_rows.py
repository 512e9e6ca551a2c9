"""A replicated step's time against the tables' size: the dense update against the touched-rows one.

    python -m benchmarks.touched_rows [--config configs/ml-25m.yaml] [--steps 30] [--rounds 3]

One process, as `python -m distrib.train` runs it (a gloo process group of one, the model in DDP), the
trainer's own `train_step` (autocast, loss, backward, optimizer, schedule) at the shapes of ml-100k, ml-1m,
ml-25m and ml-32m (uniform synthetic ids: a batch touches as many rows as a real one at most). For each shape
both updates (`dist.embedding_update=dense` and `touched_rows`) are timed in alternating rounds, so a shared
host's load falls on both alike. Prints ms per step (median of the rounds; wall and CPU), each update's time
against its own ml-100k figure, and dense / touched_rows, side by side; the ratios are of CPU time, which
the waits of a busy host leave out (one thread: the CPU time is the step's compute).
"""
from __future__ import annotations

import argparse
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
from distrib.parallel.distributed import DistEnv
from distrib.training.trainer import Trainer

SHAPES = {"ml-100k": (943, 1682), "ml-1m": (6040, 3706), "ml-25m": (162541, 59047), "ml-32m": (200948, 87585)}
UPDATES = ("dense", "touched_rows")
SINGLE = DistEnv(rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=0, launcher="single")


def cpu_name() -> str:
    """lscpu's model name and whether the CPU computes bf16 natively (AVX512-BF16, AMX)."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    native = [flag for flag in ("avx512_bf16", "amx_bf16") if flag in flags]
    return f"{fields.get('Model name', '?').strip()} ({', '.join(native) or 'no native bf16'})"


def build_trainer(config: str, overrides: list[str], update: str, data, run_dir: Path) -> Trainer:
    cfg = load_config(config, [*overrides, f"dist.embedding_update={update}", "dist.embedding_sharding=none"])
    run = RunDir(run_dir)
    run.open()
    trainer = Trainer(cfg, SINGLE, torch.device("cpu"), data, run)
    trainer.ddp.train()
    return trainer


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
    trainers = {update: build_trainer(args.config, args.overrides, update, data, tmp / f"{n_users}-{update}")
                for update in UPDATES}
    times = {update: [] for update in UPDATES}
    for update, trainer in trainers.items():
        time_steps(trainer, 3, 0)  # warm-up: allocator, Adam's state, the first sparse gradients
    for _ in range(args.rounds):
        for update, trainer in trainers.items():
            times[update].append(time_steps(trainer, args.steps, 3))
    for trainer in trainers.values():
        trainer.run.close()
    medians = {update: sorted(rounds)[len(rounds) // 2] for update, rounds in times.items()}
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
    dist.init_process_group("gloo", rank=0, world_size=1)  # as a one-process run forms it: the model goes in DDP
    cfg = load_config(args.config, args.overrides)
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, capability {torch.backends.cpu.get_cpu_capability()}, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.2f} at start")
    print(f"{Path(args.config).name} {' '.join(args.overrides)}: {cfg.model.name}, n_factors {cfg.model.n_factors}, "
          f"hidden {cfg.model.hidden}, batch {cfg.train.batch_size}, {cfg.train.optimizer}, precision "
          f"{cfg.train.precision}; ms per step, median of {args.rounds} rounds of {args.steps} steps (CPU ms)")
    print(f"{'shape':8} {'users':>7} {'movies':>7} | {'dense: wall (CPU)':>17} {'x ml-100k':>9} | "
          f"{'touched: wall (CPU)':>19} {'x ml-100k':>9} | {'dense/touched':>13}")
    base = {}
    with tempfile.TemporaryDirectory(prefix="distrib-bench-touched-") as tmp:
        for name in args.shapes:
            n_users, n_items = SHAPES[name]
            result = measure_shape(args, n_users, n_items, Path(tmp))
            cells = []
            for update in UPDATES:
                wall, cpu = result[update]
                base.setdefault(update, cpu)
                cells.append(f"{1e3 * wall:8.1f} ({1e3 * cpu:6.1f}) {cpu / base[update]:8.2f}x")
            ratio = result["dense"][1] / result["touched_rows"][1]
            print(f"{name:8} {n_users:7d} {n_items:7d} | {cells[0]} | {cells[1]}   | {ratio:12.2f}x  "
                  f"{result['precision']}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
