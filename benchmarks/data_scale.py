"""Data-pipeline figures at ml-25m scale: synthetic generate+encode+split+cache, and ratings.csv parsing.

    python -m benchmarks.data_scale [--ratings 25000095] [--keep DIR]

Prints seconds per stage; asserts nothing about time. Needs ~4 GB of RAM and ~2 GB of temp disk.
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from distrib.config import DataConfig, SyntheticConfig
from distrib.data import load_dataset
from distrib.data.delimited import read_table

ML25M_USERS, ML25M_ITEMS, ML25M_RATINGS = 162_541, 59_047, 25_000_095


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratings", type=int, default=ML25M_RATINGS)
    parser.add_argument("--keep", default="", help="work in this folder and keep it (default: a temp dir)")
    args = parser.parse_args()
    work = Path(args.keep or tempfile.mkdtemp(prefix="distrib-bench-"))
    try:
        data = bench_synthetic(work, args.ratings)
        bench_csv(work, data)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def bench_synthetic(work: Path, n_ratings: int):
    cfg = DataConfig(name="synthetic", root=str(work), synthetic=SyntheticConfig(
        n_users=ML25M_USERS, n_items=ML25M_ITEMS, n_ratings=n_ratings, rank=8, seed=0))
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


if __name__ == "__main__":
    main()
