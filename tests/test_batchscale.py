"""Large-batch support: precision=auto, warmup in epochs, and the static-shape (CUDA-graph) step, which on CPU
runs eagerly and must train exactly like the plain loop."""
from __future__ import annotations

import warnings

import pytest
import torch

from distrib.config import TrainConfig, load_config
from distrib.training import precision
from distrib.training.schedule import lr_factor, warmup_steps
from tests.helpers import check_ok, metrics, spawn_ranks, tiny, train_cli, weights

CPU = torch.device("cpu")


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(precision, "_warned", set())


@pytest.mark.parametrize("flags, bf16_time_share, expected", [
    ({"avx2", "fma"}, 0.1, "fp32"),  # emulated bf16: never auto, however the timing came out
    ({"avx512f", "avx512_bf16"}, 0.2, "bf16"),  # AVX512-BF16 that pays (an AMD EPYC's ~5x)
    ({"avx512f", "avx512_bf16"}, 1.5, "fp32"),  # AVX512-BF16 slower than fp32 (an Intel VM without AMX)
    ({"avx512f", "avx512_bf16"}, 0.9, "fp32"),  # near parity: fp32's exactness wins
    ({"amx_bf16", "amx_tile"}, 0.3, "bf16"),
])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it_natively_and_it_is_faster(monkeypatch, flags,
                                                                                     bf16_time_share, expected):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))
    monkeypatch.setattr(precision, "bf16_slowdown", lambda *args, **kwargs: bf16_time_share)
    precision.bf16_pays.cache_clear()
    try:
        assert precision.resolve_precision("auto", CPU) == expected
        assert precision.resolve_precision("fp32", CPU) == "fp32"
        assert precision.resolve_precision("bf16", CPU) == "bf16"  # explicit wins
    finally:
        precision.bf16_pays.cache_clear()


def test_auto_is_the_default_and_follows_this_machine():
    assert load_config(None, []).train.precision == "auto"
    flags = precision.cpu_flags()
    if flags is not None:
        native = bool({"avx512_bf16", "amx_bf16"} & flags)
        # the verdict is timed once per process and kept: asking again gives the same answer
        assert precision.resolve_precision("auto", CPU) == ("bf16" if native and precision.bf16_pays(CPU) else "fp32")
        assert precision.resolve_precision("auto", CPU) == precision.resolve_precision("auto", CPU)


def test_explicit_bf16_without_native_support_runs_and_warns_once(monkeypatch, fresh_warnings):
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2"}))
    with pytest.warns(UserWarning, match=r"train.precision=bf16: .* no native bf16 \(bf16 matmul measured .*x slower"):
        assert precision.resolve_precision("bf16", CPU) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert precision.resolve_precision("bf16", CPU) == "bf16"  # once per process


def test_warmup_epochs_count_in_the_batch_sizes_own_steps_above_the_reference_batch_only():
    cfg = TrainConfig(batch_size=8000, warmup_epochs=1.0, cycle_epochs=100)
    assert warmup_steps(cfg, 4) == 4
    assert [round(lr_factor(s, cfg, 4), 3) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert warmup_steps(TrainConfig(batch_size=8000, warmup_steps=3, warmup_epochs=0.5), 4) == 5
    assert TrainConfig().warmup_epochs == "auto"  # 2 epochs without a batch ramp (docs/batch_scaling.md)
    assert warmup_steps(TrainConfig(), 36) == 0  # batch 2000 = the reference: the article's schedule unchanged
    assert warmup_steps(TrainConfig(batch_size=6000), 12) == 24  # below 4x: 2 epochs
    assert warmup_steps(TrainConfig(batch_size=8000), 9) == 0  # from 4x the batch ramps, without warmup
    assert warmup_steps(TrainConfig(batch_size=32000, batch_ramp_epochs=0), 2) == 4


@pytest.mark.slow
def test_static_step_on_cpu_trains_exactly_like_the_plain_loop(tmp_path, tiny_run):
    """train.cuda_graph on CPU: one line says it is CUDA-only, and the same static-shape step runs eagerly,
    bit for bit the plain loop's weights and losses (12000 ratings, batch 500: the last partial batch dropped).
    The plain loop's run is the session's tiny run (the same config, 2 epochs)."""
    proc = check_ok(train_cli(tiny(tmp_path, "graph", "train.epochs=2", "train.cuda_graph=true"), timeout=120))
    assert "train.cuda_graph: CUDA-only" in proc.stderr + proc.stdout
    a, b = metrics(tiny_run), metrics(tmp_path / "graph")
    assert [r["train_loss"] for r in a] == [r["train_loss"] for r in b]
    assert [r["val_rmse"] for r in a] == [r["val_rmse"] for r in b]
    wa, wb = weights(tiny_run / "checkpoints/last.pt"), weights(tmp_path / "graph/checkpoints/last.pt")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_batch_size_per_rank_makes_the_global_batch_grow_with_the_world():
    from distrib.parallel.distributed import DistEnv
    from distrib.train import with_world_batch

    def env(world):
        return DistEnv(rank=0, local_rank=0, world_size=world, master_addr="127.0.0.1", master_port=0,
                       launcher="torchrun")

    cfg = load_config(None, ["train.batch_size_per_rank=4000"])
    assert [with_world_batch(cfg, env(w)).train.batch_size for w in (1, 2, 8)] == [4000, 8000, 32000]
    plain = load_config(None, ["train.batch_size=32000"])
    assert with_world_batch(plain, env(8)).train.batch_size == 32000  # train.batch_size is global


def test_batch_scaling_study_compares_each_row_with_the_reference_of_its_own_seed(capsys):
    from benchmarks import batch_scaling

    def row(seed, batch, val, test, rule="sqrt"):
        return {"dataset": "ml-100k", "seed": seed, "batch": batch, "rule": rule, "best_val": val, "test": test,
                "val_curve": [val], "best_epoch": 1, "epochs_run": 1, "steps_per_epoch": 1, "lr": 1e-3,
                "samples_per_s": 1.0, "wall_s": 1.0}

    rows = [row(0, 2000, 0.93, 0.95), row(1, 2000, 0.90, 0.91), row(1, 32000, 0.90, 0.92, "sqrt+ramp6")]
    rows[0].pop("seed")  # rows written before the study had seeds ran seed 0
    assert {batch_scaling.reference_key(r) for r in rows} == {("ml-100k", 0), ("ml-100k", 1)}
    batch_scaling.print_table(rows)
    line = next(x for x in capsys.readouterr().out.splitlines() if "sqrt+ramp6" in x)
    assert "+0.0100" in line  # against seed 1's reference (0.91), not seed 0's (0.95)



VERDICTS = [["bf16", "fp32", "bf16"], ["bf16", "bf16", "bf16"], ["fp32", "fp32", "fp32"]]


def _agreed_precisions(rank: int, world_size: int) -> list[str]:
    return [precision.agree_across_ranks(verdicts[rank], CPU) for verdicts in VERDICTS]


@pytest.mark.slow
def test_ranks_whose_timed_verdicts_differ_all_train_in_fp32():
    """Three real gloo ranks: one fp32 verdict makes every rank fp32; bf16 only when all timed bf16 faster."""
    assert spawn_ranks(_agreed_precisions, 3) == [["fp32", "bf16", "fp32"]] * 3
