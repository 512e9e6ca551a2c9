"""The data path at ml-25m scale on one node: how long the ratings take to prepare and parse, and how much memory
1 and 2 ranks hold while they train on them.

    python -m benchmarks.data_scale [--parts pipeline csv memory] [--ratings 25000095] [--epochs 3] [--keep DIR]

Builds the synthetic set with ml-25m's shape (162,541 users, 59,047 movies, 25M ratings) once, then per part:
- pipeline: seconds to generate, encode, split and cache it, and to reopen the cache;
- csv: the same ratings written as an ml-25m style ratings.csv, and the seconds the reader takes to parse it;
- memory: the real job under torchrun with 1 rank and with 2 gloo ranks (a small model and a large batch, so an
  epoch over 18M training ratings takes seconds; the ratings path is the article's). A sampler polls every
  rank's /proc/PID/smaps while it trains and prints, per world size:
  - ratings PSS: the proportional resident size of the memory-mapped cache files (the ratings), summed over
    ranks. Pages two ranks share count half to each, so the sum is the node's real cost of the ratings;
  - private: each rank's anonymous (unshared) resident memory (model, optimizer, permutation, batches);
  - total PSS summed over ranks, and each rank's RSS and anonymous memory at the end of every epoch (growth =
    last - first; RSS also counts cache pages as epochs first touch them, anonymous memory is what a leak grows).
Needs ~4 GB of RAM and ~2 GB of temp disk. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from distrib.config import DataConfig, SyntheticConfig
from distrib.data import load_dataset
from distrib.data.delimited import read_table

REPO = Path(__file__).resolve().parents[1]

ML25M_USERS, ML25M_ITEMS, ML25M_RATINGS = 162_541, 59_047, 25_000_095
MODEL = ["model.n_factors=16", "model.hidden=[32]", "model.dropouts=[0.1]", "train.batch_size=100000",
         "train.batch_ramp_epochs=0",  # every epoch at batch 100000 (the default ramps up to it)
         "train.precision=bf16", "train.patience=0", "train.log_every_steps=1000000"]
PARTS = ("pipeline", "csv", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--ratings", type=int, default=ML25M_RATINGS)
    parser.add_argument("--epochs", type=int, default=3, help="memory part: epochs per world size")
    parser.add_argument("--keep", default="", help="work in this folder and keep it (the data cache too)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="distrib-bench-"))
    try:
        cfg = synthetic_config(work / "data", args.ratings)
        data = bench_synthetic(cfg) if "pipeline" in args.parts else load_dataset(cfg)
        if "csv" in args.parts:
            bench_csv(work, data)
        if "memory" in args.parts:
            bench_memory(work, data, args.ratings, args.epochs)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def synthetic_config(root: Path, n_ratings: int) -> DataConfig:
    return DataConfig(name="synthetic", root=str(root), synthetic=SyntheticConfig(
        n_users=ML25M_USERS, n_items=ML25M_ITEMS, n_ratings=n_ratings, rank=8, seed=0))


def bench_synthetic(cfg: DataConfig):
    n_ratings = cfg.synthetic.n_ratings
    start = time.perf_counter()
    data = load_dataset(cfg)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    load_dataset(cfg)
    warm = time.perf_counter() - start
    print(f"synthetic {n_ratings:,} ratings: generate+encode+split+cache {cold:.1f} s "
          f"(in-process build {data.info['build_s']:.1f} s); cached reopen {warm:.3f} s")
    print(f"  {data.description}; mean rating {data.info['rating_mean']:.3f}")
    return data


def bench_csv(work: Path, data) -> None:
    """Write the synthetic ratings as an ml-25m style ratings.csv, then time the reader on it."""
    path = work / "ratings.csv"
    start = time.perf_counter()
    parts = [data.train] + [s for s in (data.val, data.test) if s is not None]
    with open(path, "w") as f:
        f.write("userId,movieId,rating,timestamp\n")
        for part in parts:
            for lo in range(0, len(part), 2_000_000):
                sl = slice(lo, lo + 2_000_000)
                block = np.column_stack([part.users[sl] + 1, part.items[sl] + 1,
                                         part.ratings[sl].astype(np.int64), part.timestamps[sl]])
                np.savetxt(f, block, fmt="%d", delimiter=",")
    n_lines = sum(len(p) for p in parts)
    print(f"wrote {n_lines:,}-line ratings.csv ({path.stat().st_size / 2**20:.0f} MiB) "
          f"in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    df, _ = read_table(path, ",", header=True, int_ids=True)
    print(f"parsed ratings.csv ({len(df):,} rows, ids validated) in {time.perf_counter() - start:.1f} s")


def bench_memory(work: Path, data, n_ratings: int, epochs: int) -> None:
    """Train 1, then 2 ranks on the cached set while sampling their memory; print both side by side."""
    cache_dir = str(data.cache_dir)
    ratings_mb = sum(f.stat().st_size for f in Path(cache_dir).glob("[tv]*_*.npy")) / 2**20
    print(f"{data.description}; cache files of the splits {ratings_mb:.0f} MB")
    data_args = ["data.name=synthetic", f"data.root={work / 'data'}",
                 f"data.synthetic.n_users={ML25M_USERS}", f"data.synthetic.n_items={ML25M_ITEMS}",
                 f"data.synthetic.n_ratings={n_ratings}", "data.synthetic.rank=8", "data.synthetic.seed=0"]
    results = {world: run(world, data_args, cache_dir, epochs, work) for world in (1, 2)}
    print(f"\n{'ranks':>5} {'ratings PSS':>12} {'private (anon)':>15} {'total PSS':>10}  "
          f"RSS (anonymous) per rank at each epoch end, MB   epoch s")
    for world, r in results.items():
        p = r["peak"]
        epoch_ends = " | ".join("/".join(f"{rss / 1024:.0f} ({anon / 1024:.0f})" for rss, anon in ranks)
                                for ranks in r["per_epoch"])
        print(f"{world:>5} {p['ratings_pss'] / 1024:>9.0f} MB {p['anon'] / 1024:>12.0f} MB "
              f"{p['pss'] / 1024:>7.0f} MB  {epoch_ends}   {r['epoch_s']}")
    one, two = results[1]["peak"], results[2]["peak"]
    print(f"\n2 ranks / 1 rank: ratings PSS {two['ratings_pss'] / one['ratings_pss']:.2f}x, "
          f"total PSS {two['pss'] / one['pss']:.2f}x, private {two['anon'] / one['anon']:.2f}x")
    for world, r in results.items():
        first, last = r["per_epoch"][0], r["per_epoch"][-1]
        growth = ", ".join(f"rank {i}: RSS {(b[0] - a[0]) / 1024:+.0f} MB, anonymous {(b[1] - a[1]) / 1024:+.0f} MB"
                           for i, (a, b) in enumerate(zip(first, last)))
        print(f"{world} rank(s), from epoch 1's end to epoch {len(r['per_epoch'])}'s end: {growth}")


def smaps_totals(pid: int, cache_dir: str) -> dict:
    """kB of RSS and PSS of this process: all, the cache files' mappings, and anonymous memory."""
    out = {"rss": 0, "pss": 0, "ratings_rss": 0, "ratings_pss": 0, "anon": 0}
    in_cache = False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=1)[0]
            if not head.endswith(":"):  # a mapping's header line: address range ... [path]
                parts = line.split()
                in_cache = len(parts) >= 6 and parts[5].startswith(cache_dir)
                continue
            if head in ("Rss:", "Pss:", "Anonymous:"):
                kb = int(line.split()[1])
                key = {"Rss:": "rss", "Pss:": "pss", "Anonymous:": "anon"}[head]
                out[key] += kb
                if in_cache and key != "anon":
                    out[f"ratings_{key}"] += kb
    return out


def rank_pids(launcher: subprocess.Popen) -> list[int]:
    """The torchrun agent's worker processes (its children)."""
    try:
        text = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def run(world: int, data_args: list[str], cache_dir: str, epochs: int, work: Path) -> dict:
    run_dir = work / f"run-w{world}"
    shutil.rmtree(run_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={world}",
           "-m", "distrib.train", *data_args, *MODEL, f"train.epochs={epochs}", f"run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"ratings_pss": 0, "pss": 0, "anon": 0}
    per_epoch: list[list[tuple[int, int]]] = []  # each rank's (RSS, anonymous) kB when an epoch's row appeared
    stop = threading.Event()

    def sample() -> None:
        seen = 0
        while not stop.is_set():
            snaps = []
            for pid in rank_pids(launcher):
                try:
                    snaps.append(smaps_totals(pid, cache_dir))
                except OSError:
                    pass
            if len(snaps) == world:
                for key in peak:
                    peak[key] = max(peak[key], sum(s[key] for s in snaps))
                metrics = run_dir / "metrics.jsonl"
                rows = len(metrics.read_text().splitlines()) if metrics.exists() else 0
                if rows > seen:
                    seen = rows
                    per_epoch.append([(s["rss"], s["anon"]) for s in snaps])
            stop.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = launcher.communicate()
    stop.set()
    sampler.join()
    if launcher.returncode:
        raise SystemExit(f"world size {world} failed:\n{output[-3000:]}")
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return {"peak": peak, "per_epoch": per_epoch, "epoch_s": [round(r["epoch_seconds"], 1) for r in rows]}


if __name__ == "__main__":
    main()
