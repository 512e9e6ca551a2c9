"""The throughput part of `benchmarks.gpu`: the article's EmbeddingNet at ml-25m's shape on one device, samples/s
and the share of the measured bf16 matmul rate, per global batch and configuration, side by side.

    python -m benchmarks.gpu_throughput --out DIR --work DIR [--device cuda] [--smoke]   # (benchmarks.gpu runs it)

The model: configs/ml-100k-article.yaml's keys (150 factors, MLP 500-500-500, Adam), on synthetic ratings of
ml-25m's id space (162,541 users, 59,047 movies: 33 M of the model's 34 M parameters are its embedding tables).
Each row builds distrib's own Trainer and times `Trainer.train_epoch` (its `train_step` per batch, data resident
on the device): one untimed warm-up epoch (compilation, cuBLAS heuristics, the allocator, the graph capture),
then the timed epochs of --steps batches each, ending in a host sync.
- replicated, one process, no process group: fp32 eager; bf16 eager, train.cuda_graph, train.compile.
- sharded: dist.embedding_sharding=row_wise under a 1-process torchrun (NCCL on CUDA, gloo on CPU), fp32 and
  bf16 eager; train.compile and the captured step, which distrib refuses for sharded tables, are reported so.
Share of the bf16 rate: the model's matmul FLOPs per training sample (forward + backward) x samples/s over a
measured 8192^3 bf16 matmul, for every row. A torch.profiler pass over the fastest replicated row (before the
train.compile rows, which come last: their warm-ups take longest): kernel time by kind, the gaps between
kernels, kernels per step, and the dense Adam update's memory traffic at the measured copy bandwidth.
Smoke (CPU): toy id space, batches 256-1024, 2 steps, no train.compile (minutes of C++ builds).
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

import torch

from benchmarks.gpu import (
    Figures,
    device_rates,
    machine,
    part_arguments,
    scale,
    synthetic,
    wait_or_kill,
)
from benchmarks.harness import (
    article_config,
    open_trainer,
    time_epochs,
    train_flops_per_sample,
)
from distrib.errors import UserError

REPLICATED = {  # configuration name -> overrides
    "fp32 eager": ["train.precision=fp32"],
    "bf16 eager": ["train.precision=bf16"],
    "bf16 cuda_graph": ["train.precision=bf16", "train.cuda_graph=true"],
    "bf16 compile": ["train.precision=bf16", "train.compile=true"],  # last: its warm-up is the longest
}
SHARDED = {  # what distrib refuses for sharded tables is reported as refused, not timed
    "fp32 eager": ["train.precision=fp32"],
    "bf16 eager": ["train.precision=bf16"],
    "fp32 compile": ["train.precision=fp32", "train.compile=true"],
    "fp32 cuda_graph": ["train.precision=fp32", "train.cuda_graph=true"],
}
BYTES_PER_PARAMETER_UPDATE = 32  # dense Adam step: reads p, g, m, v, writes p, m, v (28 B) + the zeroed grad (4 B)


def row_config(batch: int, device: str, overrides: list[str], *extra: str):
    # batch_ramp_epochs=0: every timed epoch at `batch` (the default ramps up to batches of 4x the reference or more)
    return article_config(f"train.batch_size={batch}", "train.patience=0", "train.log_every_steps=1000000",
                          "train.batch_ramp_epochs=0", f"train.device={device}", *overrides, *extra)


def sync_for(device: torch.device):
    return torch.cuda.synchronize if device.type == "cuda" else (lambda: None)


def time_trainer(trainer, epochs: int, batch: int) -> dict:
    warm_s, seconds = time_epochs(trainer, epochs, sync_for(trainer.device))
    steps = trainer.steps_per_epoch * epochs
    return {"samples_per_s": steps * batch / seconds, "step_ms": 1e3 * seconds / steps, "warmup_s": warm_s,
            "precision": trainer.precision, "params_m": trainer.n_parameters / 1e6,
            "flops_per_sample": train_flops_per_sample(trainer.cfg)}


def replicated_row(data, batch: int, name: str, device: str, epochs: int) -> dict:
    cfg = row_config(batch, device, REPLICATED[name])
    with open_trainer(cfg, data, device) as trainer:
        return time_trainer(trainer, epochs, batch)


# ---- sharded rows: a torchrun worker -------------------------------------------------------------------------
def sharded_rows(args, sizes, rows_path: Path, limit_s: float) -> str:
    """Run this module as a 1-process torchrun worker that appends its rows to rows_path; its status."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
           "benchmarks.gpu_throughput", "--sharded-worker", str(rows_path), "--out", str(args.out), "--work",
           str(args.work), "--device", args.device, *(["--smoke"] if args.smoke else [])]
    sys.stdout.flush()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=sys.stdout,
                            stderr=subprocess.STDOUT)
    return wait_or_kill(proc, limit_s)


def sharded_worker(args) -> None:
    from distrib.checkpoint.rundir import RunDir
    from distrib.parallel.distributed import (
        close_process_group,
        init_process_group,
        resolve_env,
        select_device,
    )
    from distrib.training.sharded_trainer import ShardedTrainer, check_sharding_config

    env = resolve_env()
    device = select_device(args.device, env.local_rank)
    init_process_group(env, device, "auto", 300.0)
    sizes = scale(args.smoke)
    out = Path(args.sharded_worker)
    try:
        for batch in sizes.batches:
            for name, overrides in SHARDED.items():
                cfg = row_config(batch, device.type, overrides, "dist.embedding_sharding=row_wise")
                row = {"mode": "sharded", "config": name, "batch": batch}
                try:
                    check_sharding_config(cfg)
                except UserError as err:  # distrib's own refusal (or TorchRec missing): reported as such
                    append_json_line(out, {**row, "refused": str(err)})
                    continue
                data = synthetic(sizes.users, sizes.items, batch * sizes.steps)
                with tempfile.TemporaryDirectory(prefix="distrib-gpu-sharded-") as tmp:
                    run = RunDir(tmp)
                    run.open()
                    try:
                        trainer = ShardedTrainer(cfg, env, device, data, run)
                        append_json_line(out, {**row, **time_trainer(trainer, sizes.epochs, batch)})
                    finally:
                        run.close()
    finally:
        close_process_group()


def append_json_line(path: Path, row: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")
    result = f"{row['samples_per_s']:,.0f} samples/s" if "samples_per_s" in row else row.get("refused", "")
    print(f"  {row['mode']} {row['config']} batch {row['batch']}: {result}", flush=True)


# ---- the profile of the fastest row --------------------------------------------------------------------------
def profile_row(row: dict, data, device: str, steps: int, trace: Path, copy_bytes_per_s: float) -> dict:
    """torch.profiler over `steps` of the row's own `train_step`: where the device's time went."""
    from torch.profiler import ProfilerActivity, profile

    cfg = row_config(row["batch"], device, REPLICATED[row["config"]])
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with open_trainer(cfg, data, device) as trainer:
        sync = sync_for(trainer.device)
        trainer.train_epoch(0)  # warm-up: compile or capture, allocator
        batch = row["batch"]
        batches = [torch.arange(k * batch, (k + 1) * batch, device=trainer.device) for k in range(steps)]
        sync()
        with profile(activities=activities) as prof:
            started = time.perf_counter()
            for idx in batches:
                trainer.train_step(idx)
            sync()
            wall_s = time.perf_counter() - started
        n_params = trainer.n_parameters
    prof.export_chrome_trace(str(trace))
    summary = kernel_summary(json.loads(trace.read_text())["traceEvents"], steps, wall_s)
    summary["top_ops"] = [(e.key, round(e.self_cpu_time_total / 1e3 / steps, 3)) for e in
                          sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]]
    update_bytes = BYTES_PER_PARAMETER_UPDATE * n_params
    summary.update(config=row["config"], batch=batch, step_ms=1e3 * wall_s / steps, dense_update_mb=update_bytes / 1e6,
                   dense_update_ms_at_copy_rate=1e3 * update_bytes / copy_bytes_per_s)
    return summary


KERNEL_KINDS = (  # kind -> substrings of kernel names (lower case); the first match wins
    ("matmul", ("gemm", "cutlass", "nvjet", "xmma", "cublas")),
    ("optimizer", ("adam", "multi_tensor")),
    ("embedding", ("embedding", "index", "scatter", "gather", "indexing")),
    ("dropout/random", ("philox", "bernoulli", "rand", "dropout")),
    ("memset/copy", ("memset", "memcpy", "copy")),
)


def kernel_summary(events: list[dict], steps: int, wall_s: float) -> dict:
    """Device time per step by kind of kernel, the time the device was busy, and the gaps (launch-bound
    stretches where no kernel ran) from a chrome trace's kernel records."""
    kernels = [e for e in events if e.get("cat") in ("kernel", "gpu_memset", "gpu_memcpy") and "dur" in e]
    if not kernels:
        return {"kernels_per_step": 0, "note": "no device kernel records (CPU, or graph replays the profiler "
                                               "cannot see into)"}
    by_kind: dict[str, float] = {}
    for e in kernels:
        name = e.get("name", "").lower()
        kind = next((k for k, marks in KERNEL_KINDS if any(m in name for m in marks)), "other elementwise")
        by_kind[kind] = by_kind.get(kind, 0.0) + e["dur"]
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in kernels)
    busy, end = 0.0, float("-inf")
    for start, stop in spans:  # the union of the kernel intervals
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    wall_us = 1e6 * wall_s
    return {"kernels_per_step": len(kernels) / steps, "busy_ms_per_step": busy / 1e3 / steps,
            "idle_ms_per_step": max(wall_us - busy, 0.0) / 1e3 / steps,
            "kernel_ms_per_step_by_kind": {k: round(v / 1e3 / steps, 4) for k, v in
                                           sorted(by_kind.items(), key=lambda kv: -kv[1])}}


# ---- the part ---------------------------------------------------------------------------------------------------
def figure_lines(rows: list[dict], bf16_rate: float) -> list[str]:
    """The side-by-side table: a row per global batch, a column per configuration."""
    columns = list(dict.fromkeys(f"{r['mode']} {r['config']}" for r in rows))
    lines = ["| global batch | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for batch in dict.fromkeys(r["batch"] for r in rows):
        cells = []
        for column in columns:
            row = next((r for r in rows if r["batch"] == batch and f"{r['mode']} {r['config']}" == column), None)
            cells.append(cell(row, bf16_rate))
        lines.append(f"| {batch:,} | " + " | ".join(cells) + " |")
    return lines


def cell(row: dict | None, bf16_rate: float) -> str:
    if row is None:
        return "not run"
    if "refused" in row:  # distrib's own one-line refusal, or TorchRec/FBGEMM not installed
        return "TorchRec/FBGEMM missing" if "needs TorchRec" in row["refused"] else "refused by distrib"
    if "error" in row:
        return "error: " + row["error"][:60]
    share = row["samples_per_s"] * row["flops_per_sample"] / bf16_rate
    return f"{row['samples_per_s']:,.0f}/s, {row['step_ms']:.2f} ms ({100 * share:.2f}%)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    part_arguments(parser)
    parser.add_argument("--sharded-worker", metavar="ROWS", help=argparse.SUPPRESS)  # the torchrun worker
    args = parser.parse_args(argv)
    if args.sharded_worker:
        return sharded_worker(args)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = scale(args.smoke)
    figures = Figures(args.out / "throughput.json", machine=machine(args.device), smoke=sizes.smoke,
                      shape={"users": sizes.users, "movies": sizes.items}, batches=list(sizes.batches))
    rates = device_rates(args.device)
    figures.set(rates=rates)
    print("= measured: " + ", ".join(f"{k} {v / 1e12:.3g} T/s" for k, v in rates.items()), flush=True)
    names = [n for n in REPLICATED if not (sizes.smoke and args.device == "cpu" and "compile" in n)]
    for name in (n for n in names if "compile" not in n):
        measure_replicated(figures, sizes, name, args.device)
    rows_path = args.work / "sharded.jsonl"
    rows_path.unlink(missing_ok=True)
    status = sharded_rows(args, sizes, rows_path, limit_s=120 if sizes.smoke else 90)
    for line in rows_path.read_text().splitlines() if rows_path.exists() else []:
        figures.add_row(json.loads(line))
    if status != "ok":
        print(f"= sharded rows: {status}", flush=True)
    # The profile before train.compile's rows, whose warm-ups take longest: a part stopped at its limit during
    # them has already said what bounds the fastest step measured.
    fastest = choose_fastest(figures)
    data = synthetic(sizes.users, sizes.items, fastest["batch"] * max(sizes.steps, sizes.profile_steps))
    profile = profile_row(fastest, data, args.device, sizes.profile_steps, args.work / "trace.json",
                          rates["copy_bytes_per_s"])
    figures.set(profile=profile)
    print("= profile: " + json.dumps({k: v for k, v in profile.items() if k != "top_ops"}), flush=True)
    del data
    compiled = [n for n in names if "compile" in n]
    if compiled:  # the table so far, in case the part's limit stops it during the compiles
        print("\n".join(figure_lines(figures.data["rows"], rates["bf16"])), flush=True)
    for name in compiled:
        measure_replicated(figures, sizes, name, args.device)
    if compiled:
        choose_fastest(figures)
    print("\n".join(figure_lines(figures.data["rows"], rates["bf16"])), flush=True)


def choose_fastest(figures: Figures) -> dict:
    """The fastest replicated row so far, recorded for the accuracy part."""
    timed = [r for r in figures.data["rows"] if r["mode"] == "replicated" and "samples_per_s" in r]
    if not timed:
        raise SystemExit("no replicated row was timed")
    fastest = max(timed, key=lambda r: r["samples_per_s"])
    figures.set(fastest={k: fastest[k] for k in ("mode", "config", "batch", "samples_per_s")})
    print(f"= fastest: replicated {fastest['config']} at batch {fastest['batch']:,}: "
          f"{fastest['samples_per_s']:,.0f} samples/s", flush=True)
    return fastest


def measure_replicated(figures: Figures, sizes, name: str, device: str) -> None:
    for batch in sizes.batches:
        row = {"mode": "replicated", "config": name, "batch": batch}
        data = synthetic(sizes.users, sizes.items, batch * sizes.steps)
        try:
            row.update(replicated_row(data, batch, name, device, sizes.epochs))
        except (RuntimeError, UserError) as err:  # e.g. out of memory at 128k: the row says so, the others go on
            row["error"] = str(err).splitlines()[0][:200]
        figures.add_row(row)
        print(f"  replicated {name} batch {batch}: " + (f"{row['samples_per_s']:,.0f} samples/s, "
              f"{row['step_ms']:.2f} ms/step, warm-up {row['warmup_s']:.1f} s" if "error" not in row else row["error"]),
              flush=True)
        del data
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
