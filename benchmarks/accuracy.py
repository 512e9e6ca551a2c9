"""Accuracy side by side: distrib's shipped configurations and classic peers on the same splits.

    python -m benchmarks.accuracy [--data-root DIR] [--seeds 3] [--datasets ml-100k,ml-latest-small]
                                  [--methods "NAME" ...] [--out results.json]

For each dataset and seed s (0, 1, ...), every method sees the same prepared split: `train.seed=s`,
`data.split_seed=s+1` (the validation carve, and for ml-latest-small the 80/20 test split too; ml-100k u1's
test part is fixed). distrib's methods are whole training jobs (`python -m distrib.train CONFIG`, one
process, early stopping on validation; with `train.refit` the second phase's model), then `distrib.evaluate`
on the best checkpoint. Surprise's SVD and
SVD++ (optional: `pip install -e .[bench]`) use their default hyper-parameters and fit the same training
rows (the validation part is left out for them too). Every model is scored by the same code: RMSE and MAE
of predictions clipped to the rating scale, HR@10 and NDCG@10 as `distrib.metrics.ranking` defines them.

Prints one table: dataset, split, method, test RMSE, MAE, HR@10, NDCG@10 (mean +- std over seeds) and the
mean training time (distrib: the run's epoch seconds, validation included; Surprise: fit()). Asserts nothing.
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

import numpy as np

from distrib.config import load_config
from distrib.data import load_dataset
from distrib.metrics.ranking import KnownItems, ranking_metrics

REPO = Path(__file__).resolve().parents[1]

# The shipped configs' autoencoders before model.hide_target (with their lambda then): the rows measured so keep them
PLAIN_INPUT = ["model.hide_target=false", "model.autorec.l2=200"]  # ml-100k.yaml
PLAIN_INPUT_SMALL = ["model.hide_target=false", "model.autorec.l2=100"]  # ml-latest-small.yaml

DATASETS = {  # name -> (split label, {method: (distrib config, extra overrides)})
    "ml-100k": ("u1", {
        "distrib EmbeddingNet (article)": ("configs/ml-100k-article.yaml", []),
        "distrib EmbeddingNet (tuned, no refit)": ("configs/ml-100k-embeddingnet.yaml", ["train.refit=false"]),
        "distrib EmbeddingNet (tuned, ml-100k-embeddingnet.yaml)": ("configs/ml-100k-embeddingnet.yaml", []),
        "distrib biased MF": ("configs/ml-100k.yaml", ["model.name=mf", "train.lr=3e-3", "train.refit=false"]),
        "distrib I-AutoRec": ("configs/ml-100k.yaml", [
            "model.name=autorec", "train.lr=1e-3", "train.refit=false", *PLAIN_INPUT]),
        "distrib I-AutoRec + MF, plain mean (no refit)": ("configs/ml-100k.yaml", [
            "model.members=[autorec,mf]", "model.blend=mean", "train.refit=false", *PLAIN_INPUT]),
        "distrib I-AutoRec + MF, plain mean": ("configs/ml-100k.yaml", [
            "model.members=[autorec,mf]", "model.blend=mean", *PLAIN_INPUT]),
        "distrib kernelNet / Sparse FC": ("configs/ml-100k.yaml", [
            "model.name=kernelnet", "train.refit=false", *PLAIN_INPUT]),
        "distrib I-AutoRec + MF, stacked": ("configs/ml-100k.yaml", ["model.members=[autorec,mf]", *PLAIN_INPUT]),
        "distrib I-AutoRec + MF + kernelNet, stacked": ("configs/ml-100k.yaml", [
            "model.members=[autorec,mf,kernelnet]", *PLAIN_INPUT]),
        "distrib I-AutoRec + MF + kernelNet + U-AutoRec, stacked": ("configs/ml-100k.yaml", [
            "model.uautorec.l2=200", *PLAIN_INPUT]),
        "distrib I-AutoRec + MF + kernelNet, hidden targets, stacked": ("configs/ml-100k.yaml", [
            "model.members=[autorec,mf,kernelnet]"]),
        "distrib I-AutoRec + MF + kernelNet + U-AutoRec, hidden targets, stacked (no refit)": (
            "configs/ml-100k.yaml", ["train.refit=false"]),
        "distrib I-AutoRec + MF + kernelNet + U-AutoRec, hidden targets, stacked (ml-100k.yaml)": (
            "configs/ml-100k.yaml", []),
        "distrib EmbeddingNet + implicit (tuned, no refit)": ("configs/ml-100k-embeddingnet-plus.yaml",
                                                              ["model.dot=false", "train.refit=false"]),
        "distrib EmbeddingNet + implicit + dot (no refit)": ("configs/ml-100k-embeddingnet-plus.yaml",
                                                             ["train.refit=false"]),
        "distrib EmbeddingNet + implicit + dot (ml-100k-embeddingnet-plus.yaml)": (
            "configs/ml-100k-embeddingnet-plus.yaml", []),
    }),
    "ml-latest-small": ("random 80/20", {
        "distrib EmbeddingNet (article)": ("configs/ml-100k-article.yaml", []),  # the model; data overridden
        "distrib I-AutoRec + MF (no refit)": ("configs/ml-latest-small.yaml", [
            "model.members=[autorec,mf]", "model.blend=mean", "train.refit=false", *PLAIN_INPUT_SMALL]),
        "distrib I-AutoRec + MF": ("configs/ml-latest-small.yaml", [
            "model.members=[autorec,mf]", "model.blend=mean", *PLAIN_INPUT_SMALL]),
        "distrib I-AutoRec + MF + kernelNet, stacked": ("configs/ml-latest-small.yaml", PLAIN_INPUT_SMALL),
        "distrib I-AutoRec + MF + kernelNet, hidden targets, stacked (no refit)": ("configs/ml-latest-small.yaml",
                                                                                   ["train.refit=false"]),
        "distrib I-AutoRec + MF + kernelNet, hidden targets, stacked (ml-latest-small.yaml)": (
            "configs/ml-latest-small.yaml", []),
    }),
}
SURPRISE_METHODS = ("Surprise SVD", "Surprise SVD++")


def seed_overrides(seed: int) -> list[str]:
    return [f"train.seed={seed}", f"data.split_seed={seed + 1}"]


def data_overrides(dataset: str, data_root: str, cache_dir: str) -> list[str]:
    extra = [] if dataset == "ml-100k" else [f"data.name={dataset}", "data.split=random", "data.test_fraction=0.2"]
    return [f"data.root={data_root}", f"data.cache_dir={cache_dir}", *extra]


def run_distrib(config: str, overrides: list[str], work: Path) -> dict:
    run_dir = work / f"run-{time.monotonic_ns()}"
    cmd = [sys.executable, "-m", "distrib.train", config, *overrides, f"run.dir={run_dir}", "train.log_every_steps=100000"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    # train.refit: the model to score is the second phase's (trained on training + validation ratings)
    phases = [run_dir] + ([run_dir / "refit"] if (run_dir / "refit").is_dir() else [])
    rows = [json.loads(line) for phase in phases for line in (phase / "metrics.jsonl").read_text().splitlines() if line]
    # The evaluation CLI in its own process, as a user would run it (and with the code that trained the run).
    cmd = [sys.executable, "-m", "distrib.evaluate", str(phases[-1]), "--split", "test", "--max-users", "0", "--json"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["train_s"] = sum(row["epoch_seconds"] for row in rows)
    return result


def surprise_scores(method: str, data, seed: int) -> tuple[np.ndarray, float]:
    """(n_users, n_items) predicted ratings from Surprise's model, clipped to the scale, and the fit seconds.

    Raw ids are distrib's contiguous indices, so rows and columns line up with distrib's splits."""
    import pandas as pd
    from surprise import SVD, Dataset, Reader, SVDpp

    train = data.train
    frame = pd.DataFrame({"u": np.asarray(train.users), "i": np.asarray(train.items), "r": np.asarray(train.ratings)})
    reader = Reader(rating_scale=(data.rating_min, data.rating_max))
    trainset = Dataset.load_from_df(frame, reader).build_full_trainset()
    algo = (SVD if method == "Surprise SVD" else SVDpp)(random_state=seed)
    started = time.perf_counter()
    algo.fit(trainset)
    seconds = time.perf_counter() - started
    return _surprise_matrix(algo, trainset, data, method == "Surprise SVD++"), seconds


def _surprise_matrix(algo, trainset, data, implicit: bool) -> np.ndarray:
    """SVD's (and SVD++'s) estimate in bulk: mu + b_u + b_i + q_i . (p_u [+ |N(u)|^-1/2 sum y_j]).

    Users or items unseen in training fall back to the terms Surprise itself would use (their factors are 0)."""
    users = np.full(data.n_users, -1)
    items = np.full(data.n_items, -1)
    for inner in trainset.all_users():
        users[trainset.to_raw_uid(inner)] = inner
    for inner in trainset.all_items():
        items[trainset.to_raw_iid(inner)] = inner
    k = algo.pu.shape[1]
    pu = np.zeros((data.n_users, k))
    bu = np.zeros(data.n_users)
    known_u = users >= 0
    pu[known_u], bu[known_u] = algo.pu[users[known_u]], algo.bu[users[known_u]]
    if implicit:
        for raw in np.flatnonzero(known_u):
            rated = [j for j, _ in trainset.ur[users[raw]]]
            pu[raw] += algo.yj[rated].sum(axis=0) / np.sqrt(len(rated))
    qi = np.zeros((data.n_items, k))
    bi = np.zeros(data.n_items)
    known_i = items >= 0
    qi[known_i], bi[known_i] = algo.qi[items[known_i]], algo.bi[items[known_i]]
    scores = trainset.global_mean + bu[:, None] + bi[None, :] + pu @ qi.T
    return np.clip(scores, data.rating_min, data.rating_max)


def score_matrix_metrics(scores: np.ndarray, data) -> dict:
    test = data.test
    err = scores[np.asarray(test.users), np.asarray(test.items)] - np.asarray(test.ratings, dtype=np.float64)
    known = KnownItems(data.n_users, data.n_items, data.train, data.val, data.test)
    ranking = ranking_metrics(lambda chunk: scores[chunk], test, known)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err))), **ranking}


def measure(dataset: str, method: str, seed: int, args, work: Path) -> dict:
    label, configs = DATASETS[dataset]
    overrides = data_overrides(dataset, args.data_root, args.cache_dir) + seed_overrides(seed)
    if method in configs:
        config, extra = configs[method]
        return run_distrib(config, overrides + extra, work)
    cfg = load_config(next(iter(configs.values()))[0], overrides)
    data = load_dataset(cfg.data)
    scores, seconds = surprise_scores(method, data, seed)
    return {**score_matrix_metrics(scores, data), "train_s": seconds}


def format_table(rows: list[dict]) -> str:
    head = "| dataset | split | method | test RMSE | MAE | HR@10 | NDCG@10 | train s |"
    lines = [head, "|" + "---|" * 8]
    for row in rows:
        def stat(key, digits=4):
            values = np.asarray(row[key])
            return f"{values.mean():.{digits}f} ± {values.std(ddof=1) if values.size > 1 else 0:.{digits}f}"
        lines.append(f"| {row['dataset']} | {row['split']} | {row['method']} | {stat('rmse')} | {stat('mae')} | "
                     f"{stat('hr@10', 3)} | {stat('ndcg@10', 3)} | {np.mean(row['train_s']):.1f} |")
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("DISTRIB_TEST_DATA", "/work/shared/data"))
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "distrib-accuracy-cache"))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--methods", nargs="+", default=[], metavar="NAME",
                        help="only these methods, each name quoted whole (they hold commas); default: all")
    parser.add_argument("--out", default="", help="also write the raw per-seed results here (JSON)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    wanted = set(args.methods)
    unknown = wanted - {method for dataset in args.datasets.split(",") for method in DATASETS[dataset][1]}
    unknown -= set(SURPRISE_METHODS)
    if unknown:
        print(f"--methods: no such method: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    try:
        import surprise  # noqa: F401
        peers = SURPRISE_METHODS
    except ImportError:
        print("scikit-surprise is not installed (pip install -e .[bench]): Surprise rows skipped", flush=True)
        peers = ()
    rows = []
    with tempfile.TemporaryDirectory(prefix="distrib-accuracy-") as tmp:
        for dataset in args.datasets.split(","):
            label, configs = DATASETS[dataset]
            for method in [*configs, *peers]:
                if wanted and method not in wanted:
                    continue
                per_seed = [measure(dataset, method, seed, args, Path(tmp)) for seed in range(args.seeds)]
                row = {"dataset": dataset, "split": label, "method": method}
                row.update({key: [r[key] for r in per_seed] for key in ("rmse", "mae", "hr@10", "ndcg@10", "train_s")})
                rows.append(row)
                print(f"{dataset} {method}: rmse {np.mean(row['rmse']):.4f} ({', '.join(f'{v:.4f}' for v in row['rmse'])})",
                      flush=True)
                if args.out:
                    Path(args.out).write_text(json.dumps(rows, indent=1))
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
