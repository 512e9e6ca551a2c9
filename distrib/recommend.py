"""A user's top-N movies from a finished run: every movie the user has no known rating for, scored by
the best checkpoint, highest predicted rating first.

    python -m distrib.recommend RUN_DIR --user ID [--top N] [--checkpoint best|last]

ID is the raw user id as in the ratings file. Every movie the user rated in any split is excluded:
train and val (the model saw or tuned on them) and test too, since recommending a movie the user has
already rated is no recommendation, whether or not the model saw that rating.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from distrib.errors import UserError, exit_on_user_error

TOP_N = 10  # numpy and torch are imported inside the functions: `--help` answers at once


def user_index(user_ids: np.ndarray, raw: str) -> int:
    """The contiguous index of raw user id `raw` (given as text on the command line)."""
    import numpy as np

    user_ids = np.asarray(user_ids)
    if np.issubdtype(user_ids.dtype, np.integer):
        try:
            value = int(raw)
        except ValueError:
            raise UserError(f"user {raw!r}: user ids in this data are integers") from None
        hits = np.flatnonzero(user_ids == value)
    else:
        hits = np.flatnonzero(user_ids.astype(str) == str(raw))
    if hits.size == 0:
        raise UserError(f"user {raw} is not in this run's data ({user_ids.size} users)")
    return int(hits[0])


def rated_items(data, user: int) -> np.ndarray:
    """Item indices the user has a rating for in any split."""
    import numpy as np

    parts = [np.asarray(s.items)[np.asarray(s.users) == user] for s in (data.train, data.val, data.test)
             if s is not None]
    return np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)


def recommend(model, data, user: int, top_n: int = TOP_N, device="cpu") -> list[dict]:
    """The top-n unrated movies for user index `user`: item index, raw id, title, genres, prediction."""
    import numpy as np

    from distrib.evaluate import score_all_items

    scores = score_all_items(model, [user], data.n_items, device)[0].astype(np.float64)
    scores[rated_items(data, user)] = -np.inf
    n = min(top_n, int(np.isfinite(scores).sum()))
    top = np.argsort(-scores, kind="stable")[:n]
    return [{
        "item": int(i), "item_id": _plain(data.item_ids[i]),
        "title": data.titles[i] if data.titles is not None else f"item {data.item_ids[i]}",
        "genres": data.genres[i] if data.genres is not None else "", "predicted": float(scores[i]),
    } for i in top]


def _plain(value):
    return value.item() if hasattr(value, "item") else value  # a numpy scalar to its Python value


def format_recommendations(raw_user: str, n_rated: int, recs: list[dict]) -> str:
    if not recs:
        return f"user {raw_user} has rated every movie ({n_rated}); nothing left to recommend"
    lines = [f"top {len(recs)} for user {raw_user} (excluding the {n_rated} movies they rated)"]
    for rank, rec in enumerate(recs, 1):
        genres = f"  [{rec['genres']}]" if rec["genres"] else ""
        lines.append(f"{rank:3d}. {rec['predicted']:.2f}  {rec['title']}{genres}")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m distrib.recommend", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--user", required=True, help="the raw user id, as in the ratings file")
    parser.add_argument("--top", type=int, default=TOP_N)
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    return parser.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    from distrib.evaluate import load_run

    if args.top < 1:
        raise UserError("--top must be >= 1")
    run = load_run(args.run_dir, args.checkpoint)
    user = user_index(run.data.user_ids, args.user)
    recs = recommend(run.model, run.data, user, args.top, run.device)
    print(format_recommendations(args.user, rated_items(run.data, user).size, recs), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
