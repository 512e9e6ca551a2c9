"""The maths behind a run's pictures and summary: where the learning-rate curve (the trainer hands it over)
restarts, ratings per movie, and the PCA of the movie embeddings (scikit-learn's `PCA`, as the article)
with the titles at both ends of each component. `distrib.report.plots` only draws what these return.
"""
from __future__ import annotations

import numpy as np

PCA_COMPONENTS = 3
PCA_TOP_MOVIES = 1000
PCA_SHOW = 10


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


def movie_counts(n_items: int, *item_arrays) -> np.ndarray:
    """Ratings per item index over the given item arrays (e.g. the train split's items)."""
    counts = np.zeros(n_items, dtype=np.int64)
    for items in item_arrays:
        counts += np.bincount(np.asarray(items, dtype=np.int64), minlength=n_items)[:n_items]
    return counts


def embedding_pca(vectors: np.ndarray, n_components: int = PCA_COMPONENTS) -> tuple[np.ndarray, np.ndarray]:
    """Principal components of the vectors: (scores, explained variance ratio). Each component's sign is
    fixed so its largest-magnitude score is positive, so reruns read the same way."""
    from sklearn.decomposition import PCA

    x = np.asarray(vectors, dtype=np.float64)
    k = min(n_components, *x.shape)
    if k == 0 or not np.ptp(x, axis=0).any():  # no variance: sklearn's ratio would divide by zero
        return np.zeros((x.shape[0], k)), np.zeros(k)
    pca = PCA(n_components=k, svd_solver="full")
    scores = pca.fit_transform(x)
    flip = np.sign(scores[np.abs(scores).argmax(axis=0), np.arange(k)])
    scores *= np.where(flip == 0, 1.0, flip)
    return scores, pca.explained_variance_ratio_


def pca_ends(vectors: np.ndarray, titles: list[str], counts: np.ndarray, n_components: int = PCA_COMPONENTS,
             top_k_movies: int = PCA_TOP_MOVIES, n_show: int = PCA_SHOW) -> dict:
    """PCA of the movie embeddings of the `top_k_movies` most-rated movies, and for each component the
    `n_show` titles with the lowest and the highest scores.

    `vectors[i]`, `titles[i]` and `counts[i]` all describe item index i; the most-rated movies are picked
    by sorting the counts and taking those item indices (the article's notebook indexed the embeddings
    by the counts themselves). Returns {"pc1": {"low": [...], "high": [...], "explained_variance": r,
    "low_scores": [...], "high_scores": [...]}, ...}, titles from the extreme inwards."""
    vectors, counts = np.asarray(vectors), np.asarray(counts)
    if not (len(vectors) == len(titles) == len(counts)):
        raise ValueError(f"vectors ({len(vectors)}), titles ({len(titles)}) and counts ({len(counts)}) differ")
    top = np.argsort(-counts, kind="stable")[:top_k_movies]
    scores, ratio = embedding_pca(vectors[top], n_components)
    names = [str(titles[i]) for i in top]
    show = min(n_show, len(top))
    ends: dict = {}
    for c in range(scores.shape[1]):
        order = np.argsort(scores[:, c], kind="stable")
        low, high = order[:show], order[::-1][:show]
        ends[f"pc{c + 1}"] = {
            "low": [names[i] for i in low], "high": [names[i] for i in high], "explained_variance": float(ratio[c]),
            "low_scores": scores[low, c].tolist(), "high_scores": scores[high, c].tolist(),
        }
    return ends
