"""Scoring every movie at once (`score_items`) against the pair path through forward: the same predictions and
the same ranking metrics for every model that has it; the ranking pass's progress line in a log; the default
sample's size."""
from __future__ import annotations

import io
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from distrib.config import load_config
from distrib.data.types import RatingSplit
from distrib.evaluate import (MAX_RANKING_USERS, MIN_RANKING_USERS, LoadedRun, RankingProgress,
                              default_ranking_users, evaluate_run, format_result, predict, score_all_items)
from distrib.metrics.ranking import KnownItems, ranking_metrics
from distrib.models import build_model

N_USERS, N_ITEMS = 40, 70
REPO = Path(__file__).resolve().parents[1]

# every model and option combination that has score_items, by its config overrides
FAST_MODELS = {
    "embeddingnet": [],
    "embeddingnet-bias": ["model.bias=true"],
    "embeddingnet-dot": ["model.dot=true"],
    "embeddingnet-bias-dot": ["model.bias=true", "model.dot=true"],
    "embeddingnet-implicit": ["model.implicit=true", "model.dot=true"],
    "embeddingnet-one-layer": ["model.hidden=[24]", "model.dropouts=[0.0]"],
    "embeddingnet-deep": ["model.hidden=[24,16,8]", "model.dropouts=[0.5,0.5,0.25]"],
    "embeddingnet-no-hidden": ["model.hidden=[]", "model.dropouts=[]"],
    "mf": ["model.name=mf"],
    "bias": ["model.name=bias"],
}


def _splits(seed: int = 0, n_users: int = N_USERS):
    """Random train and test ratings, 1 to 5 stars, over n_users x N_ITEMS (about a third of them rated)."""
    rng = np.random.default_rng(seed)
    pairs = rng.permutation(n_users * N_ITEMS)[:n_users * N_ITEMS // 3]
    ratings = rng.integers(1, 6, size=pairs.size).astype(np.float32)
    users, items = pairs // N_ITEMS, pairs % N_ITEMS
    cut = pairs.size * 4 // 5
    train = RatingSplit(users[:cut], items[:cut], ratings[:cut])
    test = RatingSplit(users[cut:], items[cut:], ratings[cut:])
    return train, test


def _model(overrides: list[str], train: RatingSplit, n_users: int = N_USERS) -> torch.nn.Module:
    cfg = load_config(None, ["model.n_factors=6", "model.hidden=[24,12]", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg.model, n_users, N_ITEMS, 1.0, 5.0)
    with torch.no_grad():  # weights far from their start, so every term of the prediction matters
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.3)
    if model.needs_train_ratings:
        model.attach_train(train)
    return model.eval()


def _pair_path(model, users: np.ndarray) -> np.ndarray:
    return predict(model, np.repeat(users, N_ITEMS), np.tile(np.arange(N_ITEMS), users.size)).reshape(users.size, -1)


@pytest.mark.parametrize("name", list(FAST_MODELS))
def test_score_items_equals_the_pair_path(name):
    train, test = _splits()
    model = _model(FAST_MODELS[name], train)
    users = np.array([0, 7, 39, 7, 12])
    fast = model.score_items(torch.from_numpy(users))
    assert fast is not None and fast.shape == (users.size, N_ITEMS) and fast.dtype == torch.float32
    pairs = _pair_path(model, users)
    np.testing.assert_allclose(fast.numpy(), pairs, rtol=1e-5, atol=1e-5)
    assert pairs.std() > 0.05  # predictions that differ, not a constant both paths agree on trivially

    known = KnownItems(N_USERS, N_ITEMS, train, test)
    by_fast = ranking_metrics(lambda chunk: score_all_items(model, chunk, N_ITEMS), test, known, users_per_batch=8)
    by_pairs = ranking_metrics(lambda chunk: _pair_path(model, chunk), test, known, users_per_batch=8)
    assert by_fast == by_pairs and by_fast["ranking_users"] > 20


def test_score_items_in_small_chunks(monkeypatch):
    """Chunks of a few pairs (a catalog too large for one chunk) give the same scores as one chunk."""
    from distrib.models import embeddingnet

    train, _ = _splits()
    model = _model(FAST_MODELS["embeddingnet-bias-dot"], train)
    users = torch.arange(N_USERS)
    whole = model.score_items(users)
    monkeypatch.setattr(embeddingnet, "SCORE_CHUNK_BYTES", 24 * 4 * 5)  # five pairs of the widest layer
    assert torch.allclose(model.score_items(users), whole, rtol=1e-6, atol=1e-6)


def test_models_without_score_items_keep_the_pair_path():
    """An ensemble (its members, by the config's rules, include a model of the pair path) and the autoencoders."""
    train, _ = _splits()
    model = _model(["model.name=ensemble", "model.members=[autorec,mf]", "model.autorec.hidden=8"], train)
    users = np.array([3, 5])
    assert model.score_items(torch.from_numpy(users)) is None and model.score_items_flops() is None
    np.testing.assert_array_equal(score_all_items(model, users, N_ITEMS), _pair_path(model, users))


def test_default_sample_bounds_the_cost():
    article = load_config(str(REPO / "configs" / "ml-100k-article.yaml")).model
    large = load_config(str(REPO / "configs" / "ml-25m.yaml")).model
    deep, shallow = (build_model(cfg, 10, 10, 1.0, 5.0) for cfg in (article, large))
    assert default_ranking_users(shallow, 59047) == MAX_RANKING_USERS
    assert default_ranking_users(deep, 1682) == MAX_RANKING_USERS  # ml-100k's catalog: all of its users
    at_scale = default_ranking_users(deep, 59047)
    assert MIN_RANKING_USERS < at_scale < MAX_RANKING_USERS / 5
    assert default_ranking_users(deep, 10_000_000) == MIN_RANKING_USERS
    pair_path = build_model(load_config(None, ["model.name=autorec"]).model, 10, 10, 1.0, 5.0)
    assert default_ranking_users(pair_path, 59047) == MAX_RANKING_USERS


def test_progress_line_on_a_log_stream():
    now = [0.0]
    stream = io.StringIO()  # not a terminal, as a SLURM output file
    progress = RankingProgress(1000, 59047, every_s=30.0, stream=stream, clock=lambda: now[0])
    for _ in range(3):
        now[0] += 10.0
        progress.scored(100)
    assert stream.getvalue() == "ranking: 300/1000 users (30%) - 0.6M pairs/s - 30s, ETA 1m10s\n"
    now[0] += 10.0
    progress.scored(100)  # 10 s after the last line: none yet
    assert len(stream.getvalue().splitlines()) == 1
    now[0] += 30.0
    progress.scored(600)  # the last batch: the result follows, no line
    assert len(stream.getvalue().splitlines()) == 1


def _loaded_run(n_users: int) -> LoadedRun:
    """A run as load_run returns it, over random ratings, with an mf model."""
    train, test = _splits(1, n_users)
    model = _model(FAST_MODELS["mf"], train, n_users)
    data = SimpleNamespace(train=train, val=None, test=test, n_users=n_users, n_items=N_ITEMS)
    return LoadedRun(cfg=None, model=model, data=data, checkpoint=Path("best.pt"), device=torch.device("cpu"))


def test_the_output_says_how_many_users_were_ranked():
    sampled = evaluate_run(_loaded_run(N_USERS), "test", max_users=25)
    everyone = evaluate_run(_loaded_run(N_USERS), "test", max_users=0)
    assert sampled["ranking_users"] == 25 and sampled["ranking_candidates"] == everyone["ranking_users"] > 25
    assert f"over 25 of the {everyone['ranking_users']} users with a held-out rating >= 4 (a seeded sample" in \
        format_result(sampled, Path("run"))
    everyone_line = f"over {everyone['ranking_users']} users with a held-out rating >= 4, "
    assert everyone_line in format_result(everyone, Path("run"))


def test_evaluate_run_prints_progress_to_stderr(capsys):
    result = evaluate_run(_loaded_run(600), "test", max_users=0, progress_every_s=0.0)  # three batches of users
    lines = capsys.readouterr().err.splitlines()
    assert result["ranking_users"] > 0 and not result["ranking_sampled"]
    assert len(lines) == 2
    assert all(line.startswith("ranking: ") and "pairs/s" in line and "ETA" in line for line in lines)
