"""Recommendations: only unrated movies, ordered by the model's own predictions; clear errors."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import yaml

from distrib.errors import UserError
from distrib.evaluate import load_run
from distrib.recommend import main as recommend_main
from distrib.recommend import rated_items, recommend, user_index
from tests.helpers import run_module


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run)


@pytest.mark.slow
def test_never_recommends_a_rated_movie_and_follows_the_model(loaded):
    data, model = loaded.data, loaded.model
    for raw in data.user_ids[:: max(1, len(data.user_ids) // 8)]:
        user = user_index(data.user_ids, str(raw))
        rated = set(rated_items(data, user).tolist())
        recs = recommend(model, data, user, top_n=7)
        items = [r["item"] for r in recs]
        assert len(recs) == 7 and not rated & set(items)
        unrated = np.array(sorted(set(range(data.n_items)) - rated))
        with torch.no_grad():
            direct = model(torch.full((unrated.size,), user), torch.from_numpy(unrated)).numpy()
        best = unrated[np.argsort(-direct, kind="stable")[:7]]
        assert np.allclose([r["predicted"] for r in recs], np.sort(direct)[::-1][:7], atol=1e-6)
        assert set(items) == set(best.tolist()) or np.isclose(np.sort(direct)[::-1][6], np.sort(direct)[::-1][7])
        assert [r["title"] for r in recs] == [data.titles[i] for i in items]


@pytest.mark.slow
def test_rated_items_covers_every_split(loaded):
    data = loaded.data
    user = int(data.test.users[0])
    expected = set()
    for split in (data.train, data.val, data.test):
        expected |= set(np.asarray(split.items)[np.asarray(split.users) == user].tolist())
    assert set(rated_items(data, user).tolist()) == expected and int(data.test.items[0]) in expected


def test_user_index_for_integer_and_text_ids():
    assert user_index(np.array([10, 30, 20]), "20") == 2
    assert user_index(np.array(["ab", "cd"]), "cd") == 1
    with pytest.raises(UserError, match="user 5 is not"):
        user_index(np.array([1, 2]), "5")
    with pytest.raises(UserError, match="integers"):
        user_index(np.array([1, 2]), "x")


@pytest.mark.slow
def test_cli_prints_top_n(loaded, tiny_run):
    raw = str(loaded.data.user_ids[0])
    out = run_module("distrib.recommend", tiny_run, "--user", raw, "--top", "4")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 5 and f"user {raw}" in lines[0] and lines[1].lstrip().startswith("1.")


def _copy(tiny_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tiny_run, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy


def _no_checkpoint(tiny_run, tmp_path):
    copy = _copy(tiny_run, tmp_path)
    shutil.rmtree(copy / "checkpoints")
    return copy


def _other_shape(tiny_run, tmp_path):
    copy = _copy(tiny_run, tmp_path)
    cfg = yaml.safe_load((copy / "config.yaml").read_text())
    cfg["model"]["n_factors"] = 12
    (copy / "config.yaml").write_text(yaml.safe_dump(cfg))
    return copy


@pytest.mark.slow
def test_cli_unknown_user_is_one_line(tiny_run):
    out = run_module("distrib.recommend", tiny_run, "--user", "987654")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distrib: error: user 987654 is not in")


@pytest.mark.parametrize("make, args, message", [
    (_no_checkpoint, ["--user", "1"], "no checkpoint best.pt"),
    (_other_shape, ["--user", "1"], "does not fit the model"),
    (lambda r, t: t / "missing", ["--user", "1"], "no such run directory"),
    (lambda r, t: r, ["--user", "1", "--top", "0"], "--top must be >= 1"),
])
@pytest.mark.slow
def test_errors_exit_2_with_one_line(tiny_run, tmp_path, capsys, make, args, message):
    """In-process (the subprocess path is covered above): the entry point's UserError handling."""
    with pytest.raises(SystemExit) as exit_info:
        recommend_main([str(make(tiny_run, tmp_path)), *args])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
