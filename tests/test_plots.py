"""Run pictures: valid PNGs, the LR plot shows the restarts, PCA ends name the planted movies."""
from __future__ import annotations

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

from distrib.config import TrainConfig  # noqa: E402
from distrib.report.analysis import embedding_pca, find_restarts, movie_counts
from distrib.report.plots import (  # noqa: E402
    last_row_per_epoch,
    lr_figure,
    plot_embedding_pca,
    plot_learning_curves,
    plot_lr_schedule,
    write_run_plots,
)
from distrib.training.schedule import (
    lr_factor,  # noqa: E402
    schedule_curve,  # noqa: E402
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_side=200):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    pixels = mpimg.imread(path)
    height, width = pixels.shape[:2]
    assert min_side <= height <= 4000 and min_side <= width <= 4000
    assert pixels[..., :3].std() > 0.01  # not a blank canvas


def _rows(n=5):
    return [{"epoch": e + 1, "train_loss": 1.0 / (e + 1), "val_loss": 1.1 / (e + 1), "val_rmse": 1.0 - 0.05 * e,
             "val_mae": 0.8 - 0.04 * e, "lr": 1e-3} for e in range(n)]


def test_learning_curves_png(tmp_path):
    path = plot_learning_curves(_rows(), tmp_path / "plots" / "learning_curves.png")
    assert_png(path)


def test_learning_curves_keep_last_row_of_a_rerun_epoch():
    rows = _rows(3) + [{"epoch": 3, "train_loss": 0.1, "val_rmse": 0.5}]
    kept = last_row_per_epoch(rows)
    assert [r["epoch"] for r in kept] == [1, 2, 3] and kept[-1]["val_rmse"] == 0.5


def _article_schedule(steps_per_epoch=20, epochs=6, warmup=0):
    cfg = TrainConfig(cycle_epochs=2.0, eta_min_ratio=0.1, warmup_steps=warmup)
    steps = np.arange(steps_per_epoch * epochs)
    return steps, np.array([1e-3 * lr_factor(int(s), cfg, steps_per_epoch) for s in steps])


def test_lr_plot_shows_warm_restarts(tmp_path):
    steps, lrs = _article_schedule(warmup=5)
    restarts = plot_lr_schedule(steps, lrs, tmp_path / "lr.png")
    assert_png(tmp_path / "lr.png")
    assert restarts == [45, 85]  # 5 warmup steps, then a restart every 2 epochs of 20 steps

    fig = lr_figure(steps, lrs)
    line_y = fig.axes[0].lines[0].get_ydata()
    plt.close(fig)
    peaks = [i for i in range(1, len(line_y) - 1) if line_y[i] >= line_y[i - 1] and line_y[i] > line_y[i + 1]]
    assert len(peaks) >= 3  # the first cycle's peak and one per restart: the drawn line rises again


def test_one_cycle_plot_has_no_restarts_and_says_none():
    cfg = TrainConfig(schedule="one_cycle", epochs=6)
    steps = np.arange(20 * 6)
    lrs = np.array([1e-3 * lr_factor(int(s), cfg, 20) for s in steps])
    assert find_restarts(lrs) == [] and lrs.argmax() == 29  # up for the first quarter, then only down
    fig = lr_figure(steps, lrs)
    assert fig.axes[0].get_title() == "learning-rate schedule"
    plt.close(fig)


def test_find_restarts_ignores_warmup_and_flat():
    assert find_restarts([0.1, 0.2, 0.3, 0.2, 0.1]) == []
    assert find_restarts([1.0] * 10) == []
    assert find_restarts([3, 2, 1, 3, 2, 1, 3]) == [3, 6]


def _planted(n=60, dim=6, seed=0):
    """Movies 0..4 far along +d, movies 5..9 far along -d, the rest small noise."""
    rng = np.random.default_rng(seed)
    d = rng.normal(size=dim)
    d /= np.linalg.norm(d)
    vectors = rng.normal(scale=0.05, size=(n, dim))
    vectors[:5] += 3.0 * d * np.linspace(1.0, 1.4, 5)[:, None]
    vectors[5:10] -= 3.0 * d * np.linspace(1.0, 1.4, 5)[:, None]
    titles = [f"movie {i}" for i in range(n)]
    return vectors, titles


def test_pca_ends_name_planted_movies(tmp_path):
    vectors, titles = _planted()
    counts = np.full(len(titles), 50)
    ends = plot_embedding_pca(vectors, titles, counts, tmp_path / "pca.png", n_components=3, n_show=5)
    assert_png(tmp_path / "pca.png")
    plus, minus = {f"movie {i}" for i in range(5)}, {f"movie {i}" for i in range(5, 10)}
    assert {frozenset(ends["pc1"]["low"]), frozenset(ends["pc1"]["high"])} == {frozenset(plus), frozenset(minus)}
    extreme = {ends["pc1"]["low"][0], ends["pc1"]["high"][0]}
    assert extreme == {"movie 4", "movie 9"}  # ordered from the extreme inwards
    assert ends["pc1"]["explained_variance"] > 0.9 and set(ends) == {"pc1", "pc2", "pc3"}


def test_pca_uses_counts_to_pick_movies_not_as_indices(tmp_path):
    """Only the most-rated movies enter the PCA: with the planted movies rarely rated, they vanish."""
    vectors, titles = _planted()
    counts = np.full(len(titles), 100)
    counts[:10] = 1  # the planted movies are the least rated
    counts[10] = 5  # an index that indexing-by-counts would have picked
    ends = plot_embedding_pca(vectors, titles, counts, tmp_path / "pca.png", top_k_movies=40, n_show=5)
    shown = set(ends["pc1"]["low"]) | set(ends["pc1"]["high"])
    assert not shown & {f"movie {i}" for i in range(11)}


def test_pca_scores_match_projection():
    vectors, _ = _planted(seed=1)
    scores, ratio = embedding_pca(vectors, 2)
    centred = vectors - vectors.mean(0)
    cov_eig = np.sort(np.linalg.eigvalsh(centred.T @ centred))[::-1]
    assert np.allclose((scores ** 2).sum(0), cov_eig[:2])
    assert np.isclose(ratio.sum(), cov_eig[:2].sum() / cov_eig.sum())


def test_pca_rejects_mismatched_inputs(tmp_path):
    with pytest.raises(ValueError, match="differ"):
        plot_embedding_pca(np.zeros((3, 2)), ["a", "b"], np.ones(3), tmp_path / "x.png")


def test_movie_counts():
    assert movie_counts(4, np.array([0, 1, 1]), np.array([3])).tolist() == [1, 2, 0, 1]


def test_write_run_plots_with_trainer_schedule(tmp_path):
    cfg = TrainConfig(lr=1e-3, batch_size=2000, ref_batch_size=2000, cycle_epochs=2.0, eta_min_ratio=0.1)
    steps, lrs = schedule_curve(cfg, steps_per_epoch=10, total_steps=60)
    assert lrs.max() == pytest.approx(1e-3) and find_restarts(lrs) == [20, 40]
    vectors, titles = _planted()
    images, ends = write_run_plots(tmp_path / "plots", _rows(), steps, lrs, vectors, titles, np.arange(60))
    assert set(images) == {"plots/learning_curves", "plots/lr_schedule", "plots/embedding_pca"}
    for path in images.values():
        assert_png(path)
    assert set(ends) == {"pc1", "pc2", "pc3"}
    images, ends = write_run_plots(tmp_path / "bare", _rows(2))
    assert list(images) == ["plots/learning_curves"] and ends == {}
