"""Evaluate a finished run's checkpoint on a split: RMSE and MAE of the predicted ratings, and the top-10
ranking metrics HR@10 and NDCG@10 (defined in `distrib.metrics.ranking`: each held-out rating >= 4 ranked
against every movie the user has no known rating for).

    python -m distrib.evaluate RUN_DIR [--split val|test] [--checkpoint best|last] [--max-users N] [--json]

The run directory supplies everything: config.yaml (the resolved config, so the same data and model
shape) and checkpoints/best.pt. Ranking scores every movie for every user; on the largest MovieLens sets
that is billions of (user, movie) pairs, so it ranks a seeded sample of at most --max-users users (0 for
all) and says how many. The default is 10000 users, fewer for a model whose scoring costs more per pair (a
deep MLP over tens of thousands of movies): as many as RANKING_FLOPS allows, at least MIN_RANKING_USERS.
Models that can score all movies at once (`score_items`: embeddingnet, mf and bias) do so; the others score
each pair through their forward. While ranking runs, a line on stderr every PROGRESS_EVERY_S seconds says
how far it is, so a SLURM log shows the job alive.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distrib.errors import UserError, exit_on_user_error

# numpy, torch and the modules that need them are imported inside the functions: `--help` and a mistyped
# command line answer at once instead of after torch's import (seconds on a loaded machine).
TOP_K = 10  # distrib.metrics.ranking's defaults, repeated here so that the command line needs no numpy
RELEVANT_RATING = 4.0

PREDICT_BATCH = 65536  # (user, movie) pairs per forward pass
MAX_RANKING_USERS = 10000
# What the default sample's scoring may cost: about 7 minutes of one core of an AVX-512 Xeon for the article's
# 500-500-500 MLP at ml-25m's 59,047 movies (676 users; benchmarks/evaluate_cost.py); configs/ml-25m.yaml's model
# keeps all 10000 users.
RANKING_FLOPS = 4e13
MIN_RANKING_USERS = 500  # HR@10's standard error over this many users is at most about 0.02
SAMPLE_SEED = 0
PROGRESS_EVERY_S = 30.0  # as training's progress lines in a log (train.log_every_s)


@dataclass
class LoadedRun:
    """A finished run, ready to score: its resolved config, its data and its model with a checkpoint's weights."""
    cfg: object  # distrib.config.Config
    model: object  # torch.nn.Module, in eval mode
    data: object  # distrib.data.PreparedData
    checkpoint: Path
    device: object  # torch.device


def load_run(run_dir: str | Path, checkpoint: str = "best", device="cpu") -> LoadedRun:
    """The resolved config, the dataset it names, and the model with the checkpoint's weights."""
    import torch

    from distrib.checkpoint.replicated import describe_mismatch, read_sharded_weights, read_weights
    from distrib.config import load_config
    from distrib.data import load_dataset
    from distrib.models import build_model

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run directory")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        raise UserError(f"{run_dir}: no config.yaml, not a distrib run directory")
    ckpt_path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    sharded = run_dir / "checkpoints" / f"{checkpoint}.dcp"  # a run with dist.embedding_sharding (a DCP directory)
    if not ckpt_path.is_file() and sharded.is_dir():
        ckpt_path = sharded
    elif not ckpt_path.is_file():
        raise UserError(f"{run_dir}: no checkpoint {ckpt_path.name} in checkpoints/ (has the run finished an epoch?)")
    if (run_dir / "refit" / "checkpoints" / ckpt_path.name).is_file():
        print(f"note: {run_dir / 'refit'} holds this run's refit model (train.refit); pass that directory to use it",
              file=sys.stderr)
    cfg = load_config(str(config_path))
    data = load_dataset(cfg.data)
    model = build_model(cfg.model, data.n_users, data.n_items, data.rating_min, data.rating_max)
    weights = read_sharded_weights(ckpt_path, model) if ckpt_path.is_dir() else read_weights(ckpt_path)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        raise UserError(f"{ckpt_path}: does not fit the model that {config_path.name} describes "
                        f"({describe_mismatch(err)})") from None
    torch_device = torch.device(device)
    return LoadedRun(cfg, model.to(torch_device).eval(), data, ckpt_path, torch_device)


def predict(model: torch.nn.Module, users, items, device: torch.device | str = "cpu") -> np.ndarray:
    """Predicted ratings for parallel arrays of user and item indices, in batches."""
    import torch

    with torch.no_grad():
        return _predict(model, users, items, device)


def _predict(model, users, items, device):
    import numpy as np
    import torch

    users = torch.from_numpy(np.array(users, dtype=np.int64))  # a copy: the data cache is read-only mmap
    items = torch.from_numpy(np.array(items, dtype=np.int64))
    out = np.empty(users.numel(), dtype=np.float32)
    for start in range(0, users.numel(), PREDICT_BATCH):
        u = users[start:start + PREDICT_BATCH].to(device)
        i = items[start:start + PREDICT_BATCH].to(device)
        out[start:start + PREDICT_BATCH] = model(u, i).float().cpu().numpy()
    return out


def score_all_items(model: torch.nn.Module, users, n_items: int, device: torch.device | str = "cpu") -> np.ndarray:
    """(len(users), n_items) predicted ratings: every movie for each user, as one batched matrix. The model's
    `score_items` where it has one; else every (user, movie) pair through forward."""
    import numpy as np
    import torch

    users = np.asarray(users, dtype=np.int64)
    score_items = getattr(model, "score_items", None)
    if score_items is not None:
        with torch.no_grad():
            scores = score_items(torch.from_numpy(users.copy()).to(device))
        if scores is not None:
            return scores.float().cpu().numpy()
    flat = predict(model, np.repeat(users, n_items), np.tile(np.arange(n_items), users.size), device)
    return flat.reshape(users.size, n_items)


class RankingProgress:
    """Progress of the ranking pass: `scored(n)` after each batch of users; a line on `stream` (stderr by
    default) once every `every_s` seconds (0: after every batch), of the form

        ranking: 2560/10000 users (25%) - 2.3M pairs/s - 1m05s, ETA 3m09s
    """

    def __init__(self, total_users: int, n_items: int, every_s: float = PROGRESS_EVERY_S, stream=None,
                 clock=time.monotonic):
        from distrib.report.progress import LineTimer

        self.total_users, self.n_items = total_users, n_items
        self.users = 0
        self._stream = stream
        self._timer = LineTimer(every_s, clock)

    def scored(self, n_users: int) -> None:
        from distrib.report.progress import elapsed_and_eta

        self.users += n_users
        if self.users >= self.total_users:  # the last batch: the result follows at once
            return
        elapsed_s = self._timer.due()
        if elapsed_s is None:
            return
        pairs_per_s = self.users * self.n_items / elapsed_s if elapsed_s > 0 else 0.0
        print(f"ranking: {self.users}/{self.total_users} users ({100 * self.users // self.total_users}%) - "
              f"{pairs_per_s / 1e6:.1f}M pairs/s - {elapsed_and_eta(elapsed_s, self.users, self.total_users)}",
              file=self._stream or sys.stderr, flush=True)


def rating_metrics(model: torch.nn.Module, split, device: torch.device | str = "cpu") -> dict:
    import numpy as np
    import torch

    from distrib.metrics.rating import error_sums, from_sums

    if split is None or len(split) == 0:
        return {"rmse": math.nan, "mae": math.nan, "ratings": 0}
    pred = torch.from_numpy(predict(model, split.users, split.items, device))
    result = from_sums(error_sums(pred, torch.from_numpy(np.array(split.ratings, dtype=np.float32))))
    return {"rmse": result["rmse"], "mae": result["mae"], "ratings": result["count"]}


def default_ranking_users(model, n_items: int) -> int:
    """The default sample's size: MAX_RANKING_USERS, or as many users as RANKING_FLOPS allows where the model's
    `score_items_flops` says scoring them all would cost more (at least MIN_RANKING_USERS)."""
    flops = getattr(model, "score_items_flops", lambda: None)()
    if not flops:
        return MAX_RANKING_USERS
    affordable = int(RANKING_FLOPS // (flops * n_items))
    return max(MIN_RANKING_USERS, min(MAX_RANKING_USERS, affordable))


def evaluate_run(run: LoadedRun, split_name: str = "test", max_users: int | None = None,
                 k: int = TOP_K, relevant_rating: float = RELEVANT_RATING,
                 progress_every_s: float = PROGRESS_EVERY_S) -> dict:
    import numpy as np

    from distrib.metrics.ranking import KnownItems, ranking_metrics

    data = run.data
    split = getattr(data, split_name)
    if split is None or len(split) == 0:
        raise UserError(f"split {split_name!r} is empty in this run's data (data.split={run.cfg.data.split})")
    result = {"split": split_name, "checkpoint": run.checkpoint.name}
    result.update(rating_metrics(run.model, split, run.device))
    known = KnownItems(data.n_users, data.n_items, data.train, data.val, data.test)
    candidates = np.unique(np.asarray(split.users)[np.asarray(split.ratings) >= relevant_rating])
    users = None
    if max_users is None:
        max_users = default_ranking_users(run.model, data.n_items)
    if 0 < max_users < candidates.size:
        users = np.sort(np.random.default_rng(SAMPLE_SEED).choice(candidates, max_users, replace=False))
    progress = RankingProgress(candidates.size if users is None else users.size, data.n_items, progress_every_s)

    def score_users(chunk):
        scores = score_all_items(run.model, chunk, data.n_items, run.device)
        progress.scored(len(chunk))
        return scores

    result.update(ranking_metrics(score_users, split, known, k=k, relevant_rating=relevant_rating, users=users))
    result["ranking_sampled"] = users is not None
    result["ranking_candidates"] = int(candidates.size)  # the users a full ranking would cover
    return result


def format_result(result: dict, run_dir: Path, k: int = TOP_K) -> str:
    users = f"{result['ranking_users']} users"
    sample = ""
    if result["ranking_sampled"]:
        users = f"{result['ranking_users']} of the {result['ranking_candidates']} users"
        sample = " (a seeded sample; --max-users sets its size)"
    ranking = (f"  hr@{k} {result[f'hr@{k}']:.4f}   ndcg@{k} {result[f'ndcg@{k}']:.4f}   over {users} with a "
               f"held-out rating >= {RELEVANT_RATING:g}{sample}, {result['ranking_pairs']} such ratings, each ranked "
               f"against all movies the user has not rated")
    return "\n".join([
        f"{run_dir}: {result['checkpoint']} on {result['split']} ({result['ratings']} ratings)",
        f"  rmse {result['rmse']:.4f}   mae {result['mae']:.4f}",
        ranking,
    ])


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distrib.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--split", choices=("val", "test"), default="test")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--max-users", type=int, default=None,
                        help=f"rank at most this many users, a seeded sample (0: all; default {MAX_RANKING_USERS}, "
                             f"fewer for a model that costs more per pair, at least {MIN_RANKING_USERS})")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.max_users is not None and args.max_users < 0:
        raise UserError("--max-users must be >= 0")
    from distrib.parallel.distributed import select_device

    run = load_run(args.run_dir, args.checkpoint, select_device(args.device, key="--device"))
    result = evaluate_run(run, args.split, args.max_users)
    print(json.dumps(result) if args.json else format_result(result, args.run_dir), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
