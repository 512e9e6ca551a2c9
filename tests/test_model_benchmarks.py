"""The model benchmarks. benchmarks/accuracy.py's rows: every one is a configuration the job accepts, the rows of
earlier configurations keep the settings they were measured with, and --methods selects rows by their whole
name. benchmarks/model_cost.py: it times every variant it names, each a model the job builds."""
from __future__ import annotations

import pytest

from benchmarks import accuracy, model_cost
from distrib.config import load_config

ROWS = [(dataset, method, config, extra) for dataset, (_, rows) in accuracy.DATASETS.items()
        for method, (config, extra) in rows.items()]


@pytest.mark.parametrize("dataset, method, config, extra", ROWS, ids=[f"{d}: {m}" for d, m, _, _ in ROWS])
def test_each_row_is_a_config_the_job_accepts(dataset, method, config, extra):
    overrides = accuracy.data_overrides(dataset, "/data", "/cache") + accuracy.seed_overrides(2) + extra
    cfg = load_config(str(accuracy.REPO / config), overrides)
    assert (cfg.train.seed, cfg.data.split_seed) == (2, 3)
    if "hidden targets" in method:  # the shipped ensembles
        assert cfg.model.hide_target and {"autorec", "mf", "kernelnet"} <= set(cfg.model.members)
    elif cfg.model.name in ("autorec", "kernelnet", "ensemble"):  # measured before model.hide_target existed
        assert not cfg.model.hide_target


def test_methods_are_chosen_by_their_whole_name_and_an_unknown_one_is_refused(capsys):
    name = "distrib I-AutoRec + MF, plain mean"  # a name with a comma in it
    assert accuracy.parse_args(["--methods", name, "Surprise SVD"]).methods == [name, "Surprise SVD"]
    assert accuracy.main(["--datasets", "ml-100k", "--methods", name, "no such row"]) == 2
    assert "--methods: no such method: no such row" in capsys.readouterr().err


@pytest.mark.slow
def test_model_cost_prints_one_row_per_variant_against_the_two_member_ensemble(data_root, capsys):
    model_cost.main(["--steps", "1", "--rounds", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "ms / step" not in line]
    assert [row.split(" | ")[0][2:] for row in rows] == list(model_cost.VARIANTS)
    assert rows[0].endswith("| 1.00 |") and all(float(row.split(" | ")[1]) > 0 for row in rows)
