"""Ranking metrics on hand-made cases and against a brute-force loop; the evaluate CLI on a tiny run."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distrib.data.types import RatingSplit
from distrib.evaluate import main as evaluate_main
from distrib.metrics.ranking import KnownItems, hit_and_ndcg, ranking_metrics, target_ranks
from tests.helpers import run_module


def _split(users, items, ratings):
    return RatingSplit(np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
                       np.asarray(ratings, dtype=np.float32))


def test_target_ranks_hand_made():
    scores = np.array([[0.9, 0.8, 0.7, 0.1, 0.5]])
    known = np.array([[False, True, False, False, True]])  # items 1 and 4 are rated: not competitors
    ranks = target_ranks(scores, known, rows=[0, 0], targets=[4, 1])
    assert ranks.tolist() == [3, 2]  # 0.5 is beaten by 0.9 and 0.7; 0.8 by 0.9 only


def test_ties_count_against_the_pair():
    scores = np.full((1, 5), 3.0)
    known = np.array([[True, False, False, False, False]])
    assert target_ranks(scores, known, [0], [0]).tolist() == [5]  # a constant model ranks last


def test_hit_and_ndcg_hand_made():
    hr, ndcg, users = hit_and_ndcg(np.array([1, 3, 20]), np.array([7, 7, 9]), k=10)
    assert users == 2
    assert hr == pytest.approx((1.0 + 0.0) / 2)  # user 7 hits both, user 9 none
    assert ndcg == pytest.approx(((1.0 + 0.5) / 2 + 0.0) / 2)  # 1/log2(2) = 1, 1/log2(4) = 0.5
    assert math.isnan(hit_and_ndcg(np.array([]), np.array([]))[0])


def test_known_items_mask():
    known = KnownItems(3, 4, _split([0, 2, 0], [1, 3, 1], [5, 4, 3]), None, _split([2], [0], [1]))
    assert known.mask(np.array([2, 0, 1])).tolist() == [
        [True, False, False, True], [False, True, False, False], [False, False, False, False]]
    assert known.of(0).tolist() == [1]


def test_ranking_metrics_match_brute_force():
    rng = np.random.default_rng(0)
    n_users, n_items = 23, 17
    scores = rng.integers(0, 6, size=(n_users, n_items)).astype(float)  # small ints: many ties
    pairs = rng.permutation(n_users * n_items)[:150]
    users, items = pairs // n_items, pairs % n_items
    ratings = rng.integers(1, 6, size=pairs.size)
    train = _split(users[:100], items[:100], ratings[:100])
    test = _split(users[100:], items[100:], ratings[100:])
    known = KnownItems(n_users, n_items, train, test)
    got = ranking_metrics(lambda chunk: scores[chunk], test, known, k=3, users_per_batch=4)

    rated = {(u, i) for u, i in zip(users, items)}
    per_user: dict = {}
    for u, i, r in zip(test.users, test.items, test.ratings):
        if r < 4:
            continue
        rank = 1 + sum(1 for j in range(n_items) if (u, j) not in rated and scores[u, j] >= scores[u, i])
        per_user.setdefault(u, []).append((rank <= 3, 1 / math.log2(rank + 1) if rank <= 3 else 0.0))
    assert got["ranking_users"] == len(per_user)
    assert got["hr@3"] == pytest.approx(np.mean([np.mean([h for h, _ in v]) for v in per_user.values()]))
    assert got["ndcg@3"] == pytest.approx(np.mean([np.mean([g for _, g in v]) for v in per_user.values()]))


def test_perfect_and_restricted_ranking():
    test = _split([0, 0, 1, 2], [2, 3, 0, 1], [5, 2, 4, 4.5])
    known = KnownItems(3, 4, test)
    oracle = np.zeros((3, 4))
    oracle[[0, 1, 2], [2, 0, 1]] = 9.0  # each relevant item scored above everything
    assert ranking_metrics(lambda c: oracle[c], test, known)["hr@10"] == 1.0
    got = ranking_metrics(lambda c: -oracle[c], test, known, k=1, users=np.array([1]))
    assert got["ranking_pairs"] == 1 and got["hr@1"] == 0.0


@pytest.mark.slow
def test_evaluate_cli_matches_training_summary(tiny_run):
    summary = json.loads((tiny_run / "summary.json").read_text())
    out = run_module("distrib.evaluate", tiny_run, "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["rmse"] == pytest.approx(summary["test_rmse"], rel=1e-5)
    assert result["mae"] == pytest.approx(summary["test_mae"], rel=1e-5)
    assert 0.0 <= result["ndcg@10"] <= result["hr@10"] <= 1.0 and result["ranking_users"] > 0
    val = run_module("distrib.evaluate", tiny_run, "--split", "val")
    assert val.returncode == 0, val.stderr
    assert f"rmse {summary['best_val_rmse']:.4f}" in val.stdout and "hr@10" in val.stdout


@pytest.mark.slow
def test_evaluate_missing_run_is_one_line(tmp_path):
    out = run_module("distrib.evaluate", tmp_path / "nope")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1 and "no such run directory" in out.stderr


@pytest.mark.slow
def test_evaluate_rejects_negative_max_users(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        evaluate_main([str(tiny_run), "--max-users", "-1"])
    assert exit_info.value.code == 2 and "--max-users" in capsys.readouterr().err


@pytest.mark.slow
def test_evaluate_samples_users(tiny_run):
    from distrib.evaluate import evaluate_run, load_run

    result = evaluate_run(load_run(tiny_run), "test", max_users=5)
    assert result["ranking_sampled"] and result["ranking_users"] == 5
