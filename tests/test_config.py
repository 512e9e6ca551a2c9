import re
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest

from distrib.config import Config, ModelConfig, check_resume, load_config, refit_config, to_dict, with_refit_group
from distrib.errors import UserError
from distrib.options import iter_keys

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
    ("train.optimizer=sgd", "train.optimizer: unknown value 'sgd' (choose from adam, adamw, lamb)"),
    ("train.betas=[0.9]", "train.betas: two values"),
    ("train.schedule=step", "train.schedule: unknown value 'step' (choose from cosine_restarts, one_cycle)"),
    ("train.epochs", "expected key=value"),
    ('train={"a\\nb": 1}', "unknown config key 'train.a\\nb'"),
    ('data.split_seed={"\\n": 0}', "data.split_seed: expected int, got {'\\n': 0}"),
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


@pytest.mark.parametrize("override, message", [
    ("train.ref_batch_size=0", "train.ref_batch_size: must be in [1, 2147483647], got 0"),
    ("dist.timeout_s=inf", "dist.timeout_s: must be a finite number, got inf"),
    ("dist.timeout_s=0.001", "dist.timeout_s: must be in [1.0, 604800.0], got 0.001"),
    ("train.weight_decay=-1", "train.weight_decay: must be >= 0.0, got -1.0"),
    ("data.split_seed=-1", "data.split_seed: must be in [0, 4294967295], got -1"),
    ("train.seed=100000000000000000000000", "train.seed: must be in [0, 4294967295], got 100000000000000000000000"),
    ("train.eta_min_ratio=-5", "train.eta_min_ratio: must be in [0.0, 1.0], got -5.0"),
    ("run.dir=", "run.dir: must not be empty"),
    ("train.lr=.nan", "train.lr: must be a finite number, got nan"),
    ("train.lr=1" + "0" * 400, "train.lr: must be a finite number, got inf"),
    ("model.dropouts=[0.5, 1.0]", "model.dropouts[1]: must be in [0.0, 1.0), got 1.0"),
    ("model.members=[mf, svd]", "model.members[1]: unknown value 'svd' (choose from embeddingnet, mf, autorec, uautorec, kernelnet)"),
    ("data.sha256=abc", "data.sha256: expected 64 hexadecimal digits"),
])
def test_ranges_are_declared_beside_each_key_and_checked_generically(override, message):
    with pytest.raises(UserError) as err:
        load_config(None, [override])
    assert str(err.value) == message


def test_resume_refuses_changed_identity_keys_and_allows_run_time_knobs():
    saved = to_dict(load_config(None, ["model.dropouts=[0.1]", "train.epochs=3"]))
    same = load_config(None, ["model.dropouts=[0.1]", "train.epochs=9", "train.patience=2", "dist.timeout_s=60",
                              "tracking.mode=offline", "train.device=cpu", "run.dir=elsewhere"])
    check_resume(saved, same, "runs/x")  # epochs, patience, tracking, timeouts, device, run.dir may change
    changed = load_config(None, ["model.dropouts=[0.5]", "data.split_seed=7"])
    with pytest.raises(UserError) as err:
        check_resume(saved, changed, "runs/x")
    assert str(err.value) == ("run.dir runs/x: resumed with changed keys data.split_seed (1 -> 7), "
                              "model.dropouts ([0.1] -> [0.5]); use a new run.dir (or the config it was trained with)")
    # one_cycle spans train.epochs, so there the epoch count identifies the run
    cycle = to_dict(load_config(None, ["train.schedule=one_cycle", "train.epochs=3"]))
    with pytest.raises(UserError, match=r"train.epochs \(3 -> 5\)"):
        check_resume(cycle, load_config(None, ["train.schedule=one_cycle", "train.epochs=5"]), "runs/x")
    # a checkpoint saved before a key existed compares that key with its default
    del saved["model"]["bias"]
    check_resume(saved, same, "runs/x")
    with pytest.raises(UserError, match=r"model.bias \(false -> true\)"):
        check_resume(saved, load_config(None, ["model.dropouts=[0.1]", "model.bias=true"]), "runs/x")


def test_config_imports_no_torch():
    code = "import sys, distrib.config, distrib.train; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=60)


@pytest.mark.slow
def test_train_help_lists_keys_configs_and_launchers_and_answers_fast():
    times = []
    for _ in range(3):  # the best of three: a shared machine's load spikes are not the command's cost
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "distrib.train", "--help"], cwd=REPO, capture_output=True,
                              text=True, timeout=60)
        times.append(time.perf_counter() - started)
    seconds = min(times)
    assert proc.returncode == 0 and proc.stderr == ""
    out = proc.stdout
    for key, _, f in iter_keys(Config):  # every key, with its default and its help
        assert re.search(rf"^ [ *]{re.escape(key)}=.*{re.escape(f.metadata['help'])}$", out, re.M), key
    assert "train.epochs=20  (int >= 1)" in out and "data.name=synthetic  (synthetic | ml-100k" in out
    for path in (REPO / "configs").glob("*.yaml"):
        assert f"configs/{path.name}" in out
    for launcher in ("python -m distrib.train", "torchrun --standalone", "sbatch", "python -m launch.submit"):
        assert launcher in out
    assert seconds < 1.5, f"--help took {seconds:.2f} s"


def test_model_choices_are_the_registry_names():
    from distrib.models import MODELS  # torch: the config itself names the models without importing them

    hint = next(h for key, h, _ in iter_keys(ModelConfig) if key == "name")
    assert set(typing.get_args(hint)) == set(MODELS)
