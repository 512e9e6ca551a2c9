"""`auto`, the default of train.batch_ramp_epochs and train.warmup_epochs: from 4x train.ref_batch_size a batch
ramp of 2.5 epochs per doubling of the batch, without warmup, else 2 warmup epochs of at most 50 steps; explicit
values honoured; resolved once into the numbers a run saves, so a run at the reference batch trains exactly as
before and a resumed run keeps what it started with."""
from __future__ import annotations

import dataclasses

import pytest
import yaml

from distrib.config import TrainConfig, check_resume, load_config, to_dict
from distrib.errors import UserError
from distrib.training.schedule import batch_at, describe_ramp, lr_at, resolve_auto, warmup_steps
from tests.helpers import assert_equal_weights, check_ok, metrics, tiny, train_cli, weights

OLD_DEFAULTS = ["train.batch_ramp_epochs=0", "train.warmup_epochs=2"]  # what every run had before `auto`


def numbers(cfg: TrainConfig) -> tuple:
    return cfg.batch_ramp_epochs, cfg.warmup_epochs


@pytest.mark.parametrize("overrides, expected", [
    ([], (0, 2.0)),  # the reference batch: nothing changes
    (["train.batch_size=7999"], (0, 2.0)),  # below 4x: a fixed batch with warmup
    (["train.batch_size=8000"], (5, 0.0)),  # from 4x: the ramp, without warmup, 2.5 epochs per doubling rounded up
    (["train.batch_size=8001"], (6, 0.0)),
    (["train.batch_size=16000"], (8, 0.0)),
    (["train.batch_size=32000"], (10, 0.0)),
    (["train.batch_size=128000"], (15, 0.0)),
    (["train.batch_size=24000", "train.ref_batch_size=8000"], (0, 2.0)),  # the ratio counts, not the batch
    (["train.batch_size=32000", "train.batch_ramp_epochs=4"], (4, 0.0)),  # explicit values are honoured
    (["train.batch_size=32000", "train.warmup_epochs=1"], (10, 1.0)),
    (["train.batch_size=32000", "train.batch_ramp_epochs=0"], (0, 2.0)),
    (["train.batch_size=32000", "train.cuda_graph=true"], (0, 2.0)),  # a captured step has one batch size
    (["train.batch_size=32000", "train.schedule=one_cycle"], (0, 2.0)),  # the ramp was measured with restarts
])
def test_auto_resolves_by_the_ratio_to_the_reference_batch(overrides, expected):
    cfg = load_config(None, overrides).train
    assert numbers(resolve_auto(cfg)) == expected


def test_an_unresolved_config_trains_on_the_same_schedule_as_its_resolved_numbers():
    """A Trainer built directly (the benchmarks) reads `auto` the same way the entry point resolves it."""
    for batch in (2000, 8000, 32000):
        cfg = TrainConfig(batch_size=batch)
        resolved = resolve_auto(cfg)
        n_train = 72_000
        assert [batch_at(cfg, e) for e in range(12)] == [batch_at(resolved, e) for e in range(12)]
        assert [lr_at(s, cfg, n_train // batch, n_train) for s in range(60)] == \
               [lr_at(s, resolved, n_train // batch, n_train) for s in range(60)]
    # the batch doubles every 2.5 epochs
    assert [batch_at(TrainConfig(batch_size=32000), e) for e in range(11)] == \
           [2000, 2639, 3482, 4595, 6063, 8000, 10556, 13929, 18379, 24251, 32000]


@pytest.mark.parametrize("batch, n_train, steps", [
    (6000, 72_000, 24),  # ml-100k at 3x: 12 steps an epoch, 2 epochs
    (4000, 80_000, 40),  # 20 steps an epoch: 2 epochs are under the cap
    (4000, 100_000, 50),  # 25 steps an epoch: exactly the cap
    (4000, 2_000_000, 50),  # a tenth of ml-25m at 2 GPUs' batch, where the cap was chosen
    (4000, 18_000_000, 50),  # ml-25m's training part at 2 GPUs' batch: 4,500 steps an epoch, capped
])
def test_auto_warmup_is_two_epochs_but_at_most_50_steps(batch, n_train, steps):
    cfg = TrainConfig(batch_size=batch)
    resolved = resolve_auto(cfg, None, n_train)
    per_epoch = n_train // batch
    # the resolved epochs (config.yaml's) and a Trainer built on `auto` directly give the same steps
    assert warmup_steps(resolved, per_epoch) == warmup_steps(cfg, per_epoch) == steps
    assert resolved.warmup_epochs == pytest.approx(steps / per_epoch)
    # an explicit value is not capped, and a resumed run keeps the epochs it started with
    assert warmup_steps(TrainConfig(batch_size=batch, warmup_epochs=2.0), per_epoch) == 2 * per_epoch
    assert resolve_auto(cfg, {"batch_ramp_epochs": 0, "warmup_epochs": 2.0}, n_train).warmup_epochs == 2.0


@pytest.mark.parametrize("batch", [8000, 8001, 10000, 16000, 32000, 100000, 128000, 512000])
def test_the_auto_ramp_doubles_the_batch_no_faster_than_every_two_and_a_half_epochs(batch):
    cfg = resolve_auto(TrainConfig(batch_size=batch))
    batches = [batch_at(cfg, e) for e in range(cfg.batch_ramp_epochs + 1)]
    assert batches[0] == 2000 and batches[-1] == batch and batches == sorted(batches)
    growth = [later / earlier for earlier, later in zip(batches, batches[1:])]
    assert max(growth) <= 2 ** (1 / 2.5) * 1.001  # 1.001: the batches are rounded to whole samples
    # and no longer than that needs: one epoch fewer would grow faster
    assert (batch / 2000) ** (1 / (cfg.batch_ramp_epochs - 1)) > 2 ** (1 / 2.5)


def test_a_resumed_run_keeps_the_numbers_it_started_with():
    cfg = TrainConfig(batch_size=32000)
    assert numbers(resolve_auto(cfg, {"batch_ramp_epochs": 0, "warmup_epochs": 2.0})) == (0, 2.0)
    # started when `auto` ramped over 6 epochs at 16x: it keeps 6, not today's 10
    assert numbers(resolve_auto(cfg, {"batch_ramp_epochs": 6, "warmup_epochs": 0.0})) == (6, 0.0)
    # written by a version without the keys: no ramp and no warmup in epochs, as that version trained
    assert numbers(resolve_auto(cfg, {})) == (0, 0.0)
    # explicit values are the user's, saved or not (check_resume refuses a change of them)
    assert numbers(resolve_auto(TrainConfig(batch_size=32000, batch_ramp_epochs=3), {"batch_ramp_epochs": 0})) \
        == (3, 0.0)


def test_check_resume_accepts_a_checkpoint_that_predates_the_keys():
    requested = load_config(None, ["train.batch_size=32000"])
    saved = to_dict(requested)
    for key in ("batch_ramp_epochs", "warmup_epochs"):
        del saved["train"][key]
    check_resume(saved, dataclasses.replace(requested, train=resolve_auto(requested.train, saved["train"])), "r")
    # a checkpoint that states its numbers refuses a change of them, as for any key that identifies the run
    ramped = to_dict(dataclasses.replace(requested, train=resolve_auto(requested.train)))
    with pytest.raises(UserError, match=r"train.warmup_epochs \(0.0 -> 2.0\), train.batch_ramp_epochs \(10 -> 0\)"):
        check_resume(ramped, load_config(None, ["train.batch_size=32000", *OLD_DEFAULTS]), "r")


@pytest.mark.parametrize("override, message", [
    ("train.batch_ramp_epochs=six", "train.batch_ramp_epochs: expected int or auto, got 'six'"),
    ("train.batch_ramp_epochs=1.5", "train.batch_ramp_epochs: expected int or auto, got 1.5"),
    ("train.warmup_epochs=Auto", "train.warmup_epochs: expected float or auto, got 'Auto'"),
    ("train.warmup_epochs=-1", "train.warmup_epochs: must be >= 0.0, got -1.0"),
])
def test_wrong_values_are_one_line_naming_the_key(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_auto_is_the_default_and_allowed_with_a_captured_step():
    cfg = load_config(None, ["train.cuda_graph=true", "train.batch_ramp_epochs=auto"]).train
    assert numbers(TrainConfig()) == ("auto", "auto") and cfg.batch_ramp_epochs == "auto"
    with pytest.raises(UserError, match="train.batch_ramp_epochs: a captured step has one batch size"):
        load_config(None, ["train.cuda_graph=true", "train.batch_ramp_epochs=2"])


def test_the_header_says_when_a_ramp_runs_and_why():
    big = TrainConfig(batch_size=32000)
    line = describe_ramp(big, resolve_auto(big))
    assert line.startswith("batch ramp: 2,000 to 32,000 over the first 10 epochs, lr 0.001 to 0.004, no warmup")
    assert "train.batch_ramp_epochs=auto: the global batch is 16x train.ref_batch_size, at least 4x" in line
    assert "2.5 epochs per doubling of the batch" in line
    assert "train.batch_ramp_epochs=0 turns it off" in line
    explicit = TrainConfig(batch_size=32000, batch_ramp_epochs=4)
    assert describe_ramp(explicit, resolve_auto(explicit)).endswith("(train.batch_ramp_epochs=4)")
    assert describe_ramp(big, resolve_auto(big, {"batch_ramp_epochs": 0, "warmup_epochs": 2.0})) == \
        "no batch ramp at 16x train.ref_batch_size (train.batch_ramp_epochs=auto): the run being resumed started " \
        "without one"
    graphed = TrainConfig(batch_size=32000, cuda_graph=True)
    assert describe_ramp(graphed, resolve_auto(graphed)).endswith("train.cuda_graph captures one batch size")
    for quiet in (TrainConfig(), TrainConfig(batch_size=7999)):
        assert describe_ramp(quiet, resolve_auto(quiet)) == ""


def unwrapped(text: str) -> str:
    """The console's lines with the header's wrapping undone."""
    return " ".join(text.split())


def _saved_train(run) -> dict:
    return yaml.safe_load((run / "config.yaml").read_text())["train"]


@pytest.mark.slow
def test_at_the_reference_batch_the_new_defaults_train_the_same_weights_as_the_old(tmp_path):
    """batch == ref_batch_size (500 here): `auto` and the values every run had before give identical weights."""
    common = ["train.epochs=2", "train.ref_batch_size=500"]
    new = check_ok(train_cli(tiny(tmp_path, "new", *common), timeout=180))
    check_ok(train_cli(tiny(tmp_path, "old", *common, *OLD_DEFAULTS), timeout=180))
    assert_equal_weights(weights(tmp_path / "new/checkpoints/last.pt"), weights(tmp_path / "old/checkpoints/last.pt"))
    assert [r["train_loss"] for r in metrics(tmp_path / "new")] == [r["train_loss"] for r in metrics(tmp_path / "old")]
    assert numbers(TrainConfig(**_saved_train(tmp_path / "new"))) == (0, 2.0)  # config.yaml states the numbers
    assert "batch ramp" not in new.stdout
    assert "train.batch_ramp_epochs" not in new.stdout and "train.warmup_epochs" not in new.stdout  # not changed


@pytest.mark.slow
def test_a_run_started_before_auto_resumes_as_it_ran(tmp_path):
    """5x the reference batch (500 against 100), where `auto` now ramps: a run whose saved config has the old
    defaults (no ramp, 2 warmup epochs) resumes without a ramp and ends with the weights of an uninterrupted run
    with those values; a new run at the same batch ramps, and its config.yaml says so in numbers."""
    common = ["train.ref_batch_size=100", "train.patience=0"]
    check_ok(train_cli(tiny(tmp_path, "straight", *common, *OLD_DEFAULTS, "train.epochs=2"), timeout=180))
    check_ok(train_cli(tiny(tmp_path, "old", *common, *OLD_DEFAULTS, "train.epochs=1"), timeout=180))
    resumed = check_ok(train_cli(tiny(tmp_path, "old", *common, "train.epochs=2"), timeout=180))
    assert "resumed from" in resumed.stdout
    assert "no batch ramp at 5x train.ref_batch_size (train.batch_ramp_epochs=auto): the run being resumed " \
           "started without one" in unwrapped(resumed.stdout)
    assert numbers(TrainConfig(**_saved_train(tmp_path / "old"))) == (0, 2.0)
    assert [r["step"] for r in metrics(tmp_path / "old")] == [17, 34]  # 8640 training ratings, batch 500
    assert_equal_weights(weights(tmp_path / "old/checkpoints/last.pt"),
                         weights(tmp_path / "straight/checkpoints/last.pt"))

    fresh = check_ok(train_cli(tiny(tmp_path, "new", *common, "train.epochs=2"), timeout=180))
    assert "batch ramp: 100 to 500 over the first 6 epochs, lr 0.001 to 0.00224, no warmup " \
           "(train.batch_ramp_epochs=auto: the global batch is 5x train.ref_batch_size, at least 4x" in unwrapped(fresh.stdout)
    assert numbers(TrainConfig(**_saved_train(tmp_path / "new"))) == (6, 0.0)  # 2.5 x log2(5), rounded up
    assert [r["step"] for r in metrics(tmp_path / "new")] == [86, 86 + 65]  # batches 100, then 131
