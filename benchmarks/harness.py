"""Shared pieces of the benchmarks: the article's configuration, an in-process distrib Trainer with a clock
that can pause for test evaluations, FLOP counting, and matmul peak rates measured on this machine.

Not a benchmark itself; the scripts next to it import it (run them from the repository root as
`python -m benchmarks.NAME`).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from distrib.checkpoint.rundir import RunDir
from distrib.config import Config, load_config
from distrib.data import PreparedData, load_dataset
from distrib.parallel.distributed import DistEnv
from distrib.report.tracking import NullTracker
from distrib.training.precision import native_bf16
from distrib.training.trainer import Trainer, to_device

REPO = Path(__file__).resolve().parents[1]

ARTICLE_CONFIG = REPO / "configs" / "ml-100k-article.yaml"  # 150 factors, [500,500,500], batch 2000, Adam 1e-3, wd 1e-5
DATA_ROOT = os.environ.get("DISTRIB_TEST_DATA", "/work/shared/data")
SINGLE = DistEnv(rank=0, local_rank=0, world_size=1, master_addr="127.0.0.1", master_port=0, launcher="single")


def article_config(*overrides: str) -> Config:
    base = [f"data.root={DATA_ROOT}", f"data.cache_dir={tempfile.gettempdir()}/distrib-bench-cache"]
    return load_config(str(ARTICLE_CONFIG), base + list(overrides))


def load_article_data(cfg: Config) -> PreparedData:
    return load_dataset(cfg.data)


def train_flops_per_sample(cfg: Config) -> float:
    """Matmul FLOPs of one training sample, forward + backward (backward = 2x forward: input and weight grads)."""
    widths = [2 * cfg.model.n_factors, *cfg.model.hidden, 1]
    macs = sum(a * b for a, b in zip(widths, widths[1:]))
    return 3 * 2 * macs


class TimedTrainer(Trainer):
    """A Trainer that, after each epoch, evaluates the test split with the current weights on a paused clock,
    so the benchmark can report the wall time at which a target test RMSE was first reached."""

    def __init__(self, *args, target_rmse: float = 0.0, **kwargs):
        self.clock_start = time.perf_counter()
        self.paused_s = 0.0
        super().__init__(*args, **kwargs)
        self.test_split = to_device(self.data.test, self.device)
        self.target_rmse = target_rmse
        self.reached_s: float | None = None
        self.epoch_rows: list[dict] = []
        self.train_s = 0.0  # the training phases only (as the article loop's samples/s counts them)
        self.train_cpu_s = 0.0  # their CPU time: on a shared, oversubscribed host the compute without the waits

    def train_epoch(self, epoch: int) -> float:
        started, cpu_started = time.perf_counter(), time.process_time()
        try:
            return super().train_epoch(epoch)
        finally:
            self.train_s += time.perf_counter() - started
            self.train_cpu_s += time.process_time() - cpu_started

    def elapsed(self) -> float:
        return time.perf_counter() - self.clock_start - self.paused_s

    def run_epoch(self, epoch: int) -> None:
        super().run_epoch(epoch)
        at = self.elapsed()
        paused = time.perf_counter()
        test = self.evaluate(self.test_split)
        self.paused_s += time.perf_counter() - paused
        row = self.metrics[-1]
        self.epoch_rows.append({"epoch": epoch + 1, "elapsed_s": at, "test_rmse": test["rmse"],
                                "val_rmse": row["val_rmse"], "epoch_s": row["epoch_seconds"]})
        if self.reached_s is None and test["rmse"] <= self.target_rmse:
            self.reached_s = at


@contextmanager
def open_trainer(cfg: Config, data: PreparedData, device: str = "cpu"):
    """distrib's own Trainer in this process (one rank) over a throw-away run directory: benchmarks that time a
    step call `trainer.train_step(idx)`, the very step the training loop runs."""
    with tempfile.TemporaryDirectory(prefix="distrib-bench-run-") as tmp:
        run = RunDir(tmp)
        run.open()
        try:
            trainer = Trainer(cfg, SINGLE, torch.device(device), data, run)
            trainer.ddp.train()
            yield trainer
        finally:
            run.close()


def run_distrib(cfg: Config, data: PreparedData, target_rmse: float = 0.0) -> dict:
    """Train in this process (one rank) and return the summary plus per-epoch figures."""
    with tempfile.TemporaryDirectory(prefix="distrib-bench-run-") as tmp:
        run = RunDir(tmp)
        run.open()
        try:
            trainer = TimedTrainer(cfg, SINGLE, torch.device("cpu"), data, run, target_rmse=target_rmse)
            summary = trainer.fit(NullTracker())
            total_s = trainer.elapsed()
        finally:
            run.close()
    rows = trainer.epoch_rows
    train_s = trainer.train_s  # not the validation pass: the article loop's figure excludes it too
    samples = sum(trainer.epoch_samples(epoch) for epoch in range(len(trainer.metrics)))
    return {"summary": summary, "rows": rows, "total_s": total_s, "reached_s": trainer.reached_s,
            "samples_per_s": samples / train_s, "samples_per_cpu_s": samples / trainer.train_cpu_s, "epochs": len(rows)}


def time_epochs(trainer, epochs: int, sync=lambda: None) -> tuple[float, float]:
    """Seconds of one warm-up epoch (compilation, cuBLAS heuristics, the allocator, a graph capture), then of
    `epochs` timed ones; each epoch ends in .item(), its only host sync."""
    started = time.perf_counter()
    trainer.train_epoch(0)
    warm_s = time.perf_counter() - started
    sync()
    started = time.perf_counter()
    for epoch in range(1, 1 + epochs):
        trainer.train_epoch(epoch)
    return warm_s, time.perf_counter() - started


def time_in_turns(steppers: dict, rounds: int, steps: int) -> dict:
    """CPU seconds per step of each `stepper.step()`, the variants timed in turns (`steps` each per round) so all of
    them see the same load of a shared host; after a warm-up of 3 steps each (the allocator, Adam's state)."""
    for stepper in steppers.values():
        for _ in range(3):
            stepper.step()
    per_step = {name: [] for name in steppers}
    for _ in range(rounds):
        for name, stepper in steppers.items():
            started = time.process_time()
            for _ in range(steps):
                stepper.step()
            per_step[name].append((time.process_time() - started) / steps)
    return per_step


def time_call(fn, repeat: int, warmup: int = 2, clock=time.perf_counter) -> float:
    """Median seconds of fn() over repeat calls (clock=time.process_time: CPU seconds, blind to waits)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    times.sort()
    return times[len(times) // 2]


def matmul_rates(device: str = "cpu", n: int = 2048, repeat: int = 5) -> dict:
    """Achieved FLOP/s of a big square matmul in fp32 and bf16, and of the article's hidden Linear shape."""
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        # emulated bf16 (no AVX512-BF16/AMX) runs at a few GFLOP/s: a smaller, single timing says as much
        slow = name == "bf16" and not native_bf16(torch.device(device))
        size, reps = (min(n, 512), 1) if slow else (n, repeat)
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        seconds = time_call(lambda: (a @ b, sync()), reps, warmup=1 if slow else 2)
        rates[name] = 2 * size ** 3 / seconds
        x = torch.randn(2000, 500, device=device, dtype=dtype)
        w = torch.randn(500, 500, device=device, dtype=dtype)
        seconds = time_call(lambda: (x @ w, sync()), reps if slow else repeat * 4, warmup=1 if slow else 2)
        rates[f"{name}_2000x500x500"] = 2 * 2000 * 500 * 500 / seconds
    return rates


def model_matmul_rates(cfg: Config, batch: int, device: str = "cpu", repeat: int = 3, clock=time.perf_counter) -> dict:
    """The roofline for this model: FLOP/s of exactly its training matmuls (each Linear's forward, input-gradient
    and weight-gradient products at this batch), timed back to back, per precision."""
    widths = [2 * cfg.model.n_factors, *cfg.model.hidden, 1]
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    rates = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        slow = name == "bf16" and not native_bf16(torch.device(device))  # emulated: 256 rows tell the rate
        rows = min(batch, 256) if slow else batch
        layers = [(torch.randn(rows, a, device=device, dtype=dtype), torch.randn(b, a, device=device, dtype=dtype),
                   torch.randn(rows, b, device=device, dtype=dtype)) for a, b in zip(widths, widths[1:])]

        def step():
            for x, w, dy in layers:
                x @ w.T, dy @ w, dy.T @ x  # forward, grad of the input, grad of the weight
            sync()

        rates[name] = rows * train_flops_per_sample(cfg) / time_call(step, 1 if slow else repeat, warmup=1, clock=clock)
    return rates


def fmt_rate(flops: float) -> str:
    if flops < 1e10:
        return f"{flops / 1e9:.2f} GFLOP/s"
    return f"{flops / 1e9:.0f} GFLOP/s" if flops < 1e12 else f"{flops / 1e12:.2f} TFLOP/s"


def rmse_str(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"
