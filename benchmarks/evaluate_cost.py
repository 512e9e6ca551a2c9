"""What `python -m distrib.evaluate` costs at ml-25m's size: every (user, movie) pair through forward against
the model's `score_items`, side by side, and the default sample's cost extrapolated.

    OMP_NUM_THREADS=1 python -m benchmarks.evaluate_cost [--users 64] [--configs configs/ml-25m.yaml ...]

For each config's model (default: configs/ml-25m.yaml's and the article's, configs/ml-100k-article.yaml),
built at ml-25m's shape (162,541 users x 59,047 movies) with random weights, the same seeded users are scored
three ways, timed in turns (16 users each per turn) so a shared host's load falls on all alike:
- pairs: every (user, movie) pair through forward in batches (evaluate's path for models without score_items);
- fast fp32: `score_items`;
- fast bf16: `score_items` of the model cast to bf16, with how far its scores are from fp32's (the largest
  difference, the share of fp32's top 10 it keeps, and the share of a user's scores that tie another).
Then the ranking arithmetic alone (known movies masked, each held-out rating ranked) on ratings of ml-25m's
density (154 per user, configs/ml-25m.yaml's 10% test part), and the whole evaluation extrapolated: the
default sample's users x (scoring + ranking per user) + RMSE over the test part (2.5 M ratings, the pair path).
CPU seconds (one thread: the compute without the waits of a busy host); the CPU and its capability printed.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from benchmarks.harness import REPO
from benchmarks.touched_rows import cpu_name
from distrib.config import load_config
from distrib.data.types import RatingSplit
from distrib.evaluate import MAX_RANKING_USERS, default_ranking_users, predict, score_all_items
from distrib.metrics.ranking import KnownItems, ranking_metrics
from distrib.models import build_model

N_USERS, N_ITEMS = 162541, 59047  # ml-25m
RATINGS_PER_USER = 154  # ml-25m: 25,000,095 ratings / 162,541 users
TEST_RATINGS = 2_500_010  # configs/ml-25m.yaml's test_fraction 0.1
CONFIGS = ["configs/ml-25m.yaml", "configs/ml-100k-article.yaml"]
TURN_USERS = 16


def build(config: str) -> torch.nn.Module:
    cfg = load_config(str(REPO / config))
    torch.manual_seed(0)
    return build_model(cfg.model, N_USERS, N_ITEMS, 0.5, 5.0).eval()


def pair_scores(model, users: np.ndarray) -> np.ndarray:
    """evaluate's path for a model without score_items: every (user, movie) pair through forward."""
    flat = predict(model, np.repeat(users, N_ITEMS), np.tile(np.arange(N_ITEMS), users.size))
    return flat.reshape(users.size, N_ITEMS)


def time_in_turns(variants: dict, users: np.ndarray) -> tuple[dict, dict]:
    """CPU seconds per user of each variant and its scores, the variants taking turns on TURN_USERS users."""
    seconds = {name: 0.0 for name in variants}
    scores = {name: [] for name in variants}
    for start in range(0, users.size, TURN_USERS):
        chunk = users[start:start + TURN_USERS]
        for name, score in variants.items():
            began = time.process_time()
            scores[name].append(score(chunk))
            seconds[name] += time.process_time() - began
    return ({name: s / users.size for name, s in seconds.items()},
            {name: np.concatenate(parts) for name, parts in scores.items()})


def agreement(reference: np.ndarray, other: np.ndarray, k: int = 10) -> str:
    """How far `other`'s scores are from `reference`'s, as ranking sees them."""
    top_ref = np.argsort(-reference, axis=1, kind="stable")[:, :k]
    top_other = np.argsort(-other, axis=1, kind="stable")[:, :k]
    kept = np.mean([np.intersect1d(a, b).size / k for a, b in zip(top_ref, top_other)])
    tied = np.mean([1 - np.unique(row).size / row.size for row in other])
    return (f"max |diff| {np.abs(reference - other).max():.4f}, top-{k} kept {kept:.1%}, "
            f"scores tied {tied:.1%} (fp32 {np.mean([1 - np.unique(r).size / r.size for r in reference]):.1%})")


def ranking_seconds_per_user(users: np.ndarray) -> tuple[float, float]:
    """CPU seconds per user of the ranking arithmetic alone (scores given), at ml-25m's density; and the
    held-out ratings >= 4 ranked per user."""
    rng = np.random.default_rng(1)
    rated = np.repeat(users, RATINGS_PER_USER)
    items = rng.integers(0, N_ITEMS, rated.size)
    stars = rng.integers(1, 6, rated.size).astype(np.float32) + rng.choice([0.0, 0.5], rated.size)
    test = rng.random(rated.size) < TEST_RATINGS / 25_000_095
    train = RatingSplit(rated[~test], items[~test], stars[~test])
    held_out = RatingSplit(rated[test], items[test], stars[test])
    known = KnownItems(N_USERS, N_ITEMS, train, held_out)
    scores = rng.random((256, N_ITEMS), dtype=np.float32)
    began = time.process_time()
    result = ranking_metrics(lambda chunk: scores[:chunk.size].copy(), held_out, known, users=users)
    return (time.process_time() - began) / users.size, result["ranking_pairs"] / result["ranking_users"]


def fmt_s(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=64, help="users scored by every variant")
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    args = parser.parse_args()
    print(f"CPU: {cpu_name()}, capability {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s); shape {N_USERS:,} users x {N_ITEMS:,} movies; "
          f"{args.users} users per variant")
    users = np.sort(np.random.default_rng(0).choice(N_USERS, args.users, replace=False))
    rank_s, pairs = ranking_seconds_per_user(np.sort(np.random.default_rng(2).choice(N_USERS, 1024, replace=False)))
    print(f"ranking arithmetic (known movies masked, {pairs:.1f} held-out ratings >= 4 ranked per user): "
          f"{rank_s * 1e3:.1f} ms per user")
    for config in args.configs:
        model = build(config)
        half = build(config).to(torch.bfloat16)
        per_user, scores = time_in_turns({
            "pairs": lambda chunk, model=model: pair_scores(model, chunk),
            "fast fp32": lambda chunk, model=model: score_all_items(model, chunk, N_ITEMS),
            "fast bf16": lambda chunk, half=half: score_all_items(half, chunk, N_ITEMS),
        }, users)
        pairs_s, fast_s, bf16_s = per_user["pairs"], per_user["fast fp32"], per_user["fast bf16"]
        print(f"\n{config} ({model.score_items_flops() / 1e3:,.1f} kFLOP per pair in score_items)")
        print(f"  CPU ms per user: pairs {pairs_s * 1e3:.0f} | fast fp32 {fast_s * 1e3:.0f} | fast bf16 "
              f"{bf16_s * 1e3:.0f};  pairs / fast fp32 {pairs_s / fast_s:.2f}x, bf16 / fp32 {bf16_s / fast_s:.2f}x")
        same = np.abs(scores["pairs"] - scores["fast fp32"]).max()
        print(f"  fast fp32 vs pairs: max |diff| {same:.2e};  fast bf16 vs fast fp32: "
              f"{agreement(scores['fast fp32'], scores['fast bf16'])}")
        sample = default_ranking_users(model, N_ITEMS)
        rmse_s = TEST_RATINGS * pairs_s / N_ITEMS
        before = MAX_RANKING_USERS * (pairs_s + rank_s) + rmse_s
        after = sample * (fast_s + rank_s) + rmse_s
        print(f"  evaluate, extrapolated (one thread, ranking as now): before, {MAX_RANKING_USERS} users through "
              f"pairs: {fmt_s(before)};  now, the default {sample} users: {fmt_s(after)} "
              f"(scoring {fmt_s(sample * fast_s)}, ranking {fmt_s(sample * rank_s)}, test RMSE {fmt_s(rmse_s)});  "
              f"{MAX_RANKING_USERS} users now: {fmt_s(MAX_RANKING_USERS * (fast_s + rank_s) + rmse_s)}")


if __name__ == "__main__":
    main()
