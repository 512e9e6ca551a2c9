from pathlib import Path

import pytest

from distrib.config import Config, load_config, refit_config, with_refit_group
from distrib.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_file_and_overrides_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.01\n  epochs: 7\nmodel:\n  hidden: [8, 4]\n  dropouts: [0.1]\n")
    cfg = load_config(str(path), ["train.lr=3e-3", "model.hidden=[500,500,500]", "model.dropouts=[0.5,0.5,0.25]"])
    assert cfg.train.lr == pytest.approx(3e-3)  # CLI beats file
    assert cfg.train.epochs == 7  # file beats default
    assert cfg.train.batch_size == Config().train.batch_size  # default
    assert cfg.model.hidden == [500, 500, 500] and cfg.model.dropouts == [0.5, 0.5, 0.25]


@pytest.mark.parametrize("override, fragment", [
    ("train.epochz=3", "unknown config key train.epochz"),
    ("nope.x=1", "unknown config key nope"),
    ("train.epochs=abc", "train.epochs: expected int"),
    ("train.epochs=1.5", "train.epochs: expected int"),
    ("model.hidden=[10,x]", "model.hidden[1]: expected int"),
    ("train.compile=maybe", "train.compile: expected bool"),
    ("data.name=ml-7m", "data.name: unknown value 'ml-7m'"),
    ("train.precision=fp8", "train.precision"),
    ("train.optimizer=sgd", "train.optimizer: unknown value 'sgd' (choose from adam, adamw)"),
    ("train.betas=[0.9]", "train.betas: two values"),
    ("train.schedule=step", "train.schedule: unknown value 'step' (choose from cosine_restarts, one_cycle)"),
    ("train.epochs", "expected key=value"),
])
def test_bad_keys_and_types_are_one_line_errors(override, fragment):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_one_cycle_has_its_own_warmup():
    with pytest.raises(UserError, match="train.warmup_steps: one_cycle warms up by itself"):
        load_config(None, ["train.schedule=one_cycle", "train.warmup_steps=100"])
    assert load_config(None, ["train.schedule=one_cycle"]).train.schedule == "one_cycle"


def test_validation_fraction_zero_with_early_stopping_is_rejected():
    with pytest.raises(UserError, match="val_fraction=0"):
        load_config(None, ["data.val_fraction=0", "train.patience=5"])
    assert load_config(None, ["data.val_fraction=0", "train.patience=0"]).train.patience == 0


def test_refit_needs_a_validation_part_and_its_second_phase_has_none():
    with pytest.raises(UserError, match="train.refit needs a validation part"):
        load_config(None, ["data.val_fraction=0", "train.patience=0", "train.refit=true"])
    cfg = load_config(None, ["train.refit=true", "run.dir=runs/x", "tracking.name=exp", "train.seed=3"])
    second = refit_config(cfg, epochs=7)
    assert (second.data.val_fraction, second.train.epochs, second.train.patience, second.train.refit) == (0.0, 7, 0, False)
    assert second.run.dir == str(Path("runs/x/refit")) and second.tracking.name == "exp-refit"
    assert second.train.seed == 3 and second.model == cfg.model and second.data.split == cfg.data.split
    # both phases' W&B runs in one group: the run directory's name unless tracking.group says otherwise
    assert with_refit_group(cfg).tracking.group == "x"
    assert with_refit_group(load_config(None, ["train.refit=true", "tracking.group=g"])).tracking.group == "g"
    assert with_refit_group(load_config(None, ["run.dir=runs/x"])).tracking.group == ""


def test_missing_and_directory_config_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(UserError, match="is a directory"):
        load_config(str(tmp_path))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_config(str(bad))


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_opens_with_its_command(path):
    load_config(str(path))
    assert path.read_text().startswith("#"), "each YAML opens with a comment showing the command that runs it"
