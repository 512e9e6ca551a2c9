"""Pictures of a run, written as PNGs into `run_dir/plots/` (matplotlib's Agg backend: no display needed):
learning curves from metrics.jsonl, the learning-rate schedule with its warm restarts, and the article's
bonus, a PCA of the movie embeddings with the titles at both ends of the first components.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PCA_COMPONENTS = 3
PCA_TOP_MOVIES = 1000
PCA_SHOW = 10
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def last_row_per_epoch(rows: list[dict]) -> list[dict]:
    """A resumed run may have written an epoch twice; the later row is the one that counted."""
    by_epoch = {int(row["epoch"]): row for row in rows if "epoch" in row}
    return [by_epoch[e] for e in sorted(by_epoch)]


def plot_learning_curves(rows: list[dict], path: Path) -> Path:
    """Train and val loss (left) and val RMSE/MAE (right) per epoch, from metrics.jsonl rows (keys
    epoch (0-based, as the trainer writes it; drawn 1-based), train_loss, val_loss, val_rmse, val_mae)."""
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    rows = last_row_per_epoch(rows)
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, keys in ((loss_ax, ("train_loss", "val_loss")), (err_ax, ("val_rmse", "val_mae"))):
        for key in keys:
            points = [(e, r[key]) for e, r in zip(epochs, rows) if r.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    loss_ax.set_title("loss (MSE)")
    err_ax.set_title("validation error")
    best = [(r["val_rmse"], e) for e, r in zip(epochs, rows) if r.get("val_rmse") is not None]
    if best:
        rmse, epoch = min(best)
        err_ax.axvline(epoch, color="grey", linestyle=":", label=f"best {rmse:.4f}")
        err_ax.legend()
    return _save(fig, path)


def find_restarts(lrs) -> list[int]:
    """Indices where the learning rate jumps back up after falling: the warm restarts."""
    lrs = np.asarray(lrs, dtype=float)
    if lrs.size < 3:
        return []
    diff = np.diff(lrs)
    tol = 1e-12 * max(1.0, float(np.abs(lrs).max()))
    falling = np.maximum.accumulate(np.where(diff < -tol, np.arange(diff.size), -1))
    # a rise at i+1 that follows a fall seen at or before i (warmup rises do not count)
    return [int(i + 1) for i in np.flatnonzero(diff > tol) if i > 0 and falling[i - 1] >= 0]


def lr_figure(steps, lrs):
    """The schedule's figure, kept separate so tests can read the plotted line back."""
    plt = _pyplot()
    steps, lrs = np.asarray(steps), np.asarray(lrs, dtype=float)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(steps, lrs, linewidth=1.2)
    for i in find_restarts(lrs):
        ax.axvline(steps[i], color="grey", linestyle=":", linewidth=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    restarts = len(find_restarts(lrs))  # none under train.schedule=one_cycle: then the title does not count them
    ax.set_title(f"learning-rate schedule ({restarts} warm restarts)" if restarts else "learning-rate schedule")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return fig


def plot_lr_schedule(steps, lrs, path: Path) -> list[int]:
    """The learning rate over steps with each warm restart marked; returns the restart steps."""
    _save(lr_figure(steps, lrs), path)
    return [int(np.asarray(steps)[i]) for i in find_restarts(lrs)]


def embedding_pca(vectors: np.ndarray, n_components: int = PCA_COMPONENTS):
    """Principal components by SVD of the centred vectors: (scores, explained variance ratio). Each
    component's sign is fixed so its largest-magnitude score is positive, so reruns read the same way."""
    x = np.asarray(vectors, dtype=np.float64)
    x = x - x.mean(axis=0)
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    k = min(n_components, s.size)
    scores = u[:, :k] * s[:k]
    flip = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(k)])
    scores *= np.where(flip == 0, 1.0, flip)
    total = float((s ** 2).sum())
    ratio = (s[:k] ** 2) / total if total > 0 else np.zeros(k)
    return scores, ratio


def plot_embedding_pca(vectors: np.ndarray, titles: list[str], counts: np.ndarray, path: Path,
                       n_components: int = PCA_COMPONENTS, top_k_movies: int = PCA_TOP_MOVIES,
                       n_show: int = PCA_SHOW) -> dict:
    """PCA of the movie embeddings of the `top_k_movies` most-rated movies, one row of bar charts per
    component: the `n_show` titles with the lowest and the highest scores.

    `vectors[i]`, `titles[i]` and `counts[i]` all describe item index i; the most-rated movies are picked
    by sorting the counts and taking those item indices (the article's notebook indexed the embeddings
    by the counts themselves). Returns {"pc1": {"low": [...], "high": [...], "explained_variance": r}, ...},
    titles from the extreme inwards.
    """
    plt = _pyplot()
    vectors, counts = np.asarray(vectors), np.asarray(counts)
    if not (len(vectors) == len(titles) == len(counts)):
        raise ValueError(f"vectors ({len(vectors)}), titles ({len(titles)}) and counts ({len(counts)}) differ")
    top = np.argsort(-counts, kind="stable")[:top_k_movies]
    scores, ratio = embedding_pca(vectors[top], n_components)
    names = [str(titles[i]) for i in top]
    show = min(n_show, len(top))
    ends: dict = {}
    fig, axes = plt.subplots(scores.shape[1], 2, figsize=(12, 2.4 + 0.28 * show * scores.shape[1]),
                             squeeze=False)
    for c in range(scores.shape[1]):
        order = np.argsort(scores[:, c], kind="stable")
        low, high = order[:show], order[::-1][:show]
        key = f"pc{c + 1}"
        ends[key] = {"low": [names[i] for i in low], "high": [names[i] for i in high],
                     "explained_variance": float(ratio[c])}
        for ax, idx, side, color in ((axes[c, 0], low, "low", "tab:blue"), (axes[c, 1], high, "high", "tab:red")):
            ax.barh(range(len(idx)), scores[idx, c], color=color)
            ax.set_yticks(range(len(idx)), [_short(names[i]) for i in idx], fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"PC{c + 1} ({ratio[c]:.1%} of variance): {side} end", fontsize=9)
    fig.suptitle(f"PCA of movie embeddings, {len(top)} most-rated movies")
    fig.tight_layout()
    _save(fig, path)
    return ends


def _short(title: str, width: int = 40) -> str:
    return title if len(title) <= width else title[: width - 1] + "…"


def movie_counts(n_items: int, *item_arrays) -> np.ndarray:
    """Ratings per item index over the given item arrays (e.g. the train split's items)."""
    counts = np.zeros(n_items, dtype=np.int64)
    for items in item_arrays:
        counts += np.bincount(np.asarray(items, dtype=np.int64), minlength=n_items)[:n_items]
    return counts


def schedule_curve(train_cfg, steps_per_epoch: int, total_steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The learning rate the trainer's scheduler gives at each step (`train_cfg` is the TrainConfig)."""
    from distrib.schedule import lr_factor, scaled_lr

    steps = np.arange(max(1, total_steps))
    peak = scaled_lr(train_cfg)
    return steps, np.array([peak * lr_factor(int(s), train_cfg, steps_per_epoch) for s in steps])


def write_run_plots(plots_dir: Path, rows: list[dict], lr_steps=None, lrs=None, vectors=None, titles=None,
                    counts=None) -> tuple[dict, dict]:
    """Every picture of a finished run into `plots_dir`: ({"plots/<name>": png path}, PCA ends or {}).
    Pass what exists: metrics rows always; the LR curve and the movie embeddings when available."""
    plots_dir = Path(plots_dir)
    images = {"plots/learning_curves": plot_learning_curves(rows, plots_dir / "learning_curves.png")}
    if lrs is not None and len(lrs):
        plot_lr_schedule(lr_steps if lr_steps is not None else np.arange(len(lrs)), lrs, plots_dir / "lr_schedule.png")
        images["plots/lr_schedule"] = plots_dir / "lr_schedule.png"
    ends: dict = {}
    if vectors is not None and len(vectors) >= 2:
        titles = list(titles) if titles is not None else [f"item {i}" for i in range(len(vectors))]
        counts = np.ones(len(vectors)) if counts is None else counts
        ends = plot_embedding_pca(vectors, titles, counts, plots_dir / "embedding_pca.png")
        images["plots/embedding_pca"] = plots_dir / "embedding_pca.png"
    return images, ends
