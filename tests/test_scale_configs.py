"""The shipped configurations for large catalogs (configs/ml-25m.yaml, configs/ml-32m.yaml): they load, every
command line in their header passes the checks a job makes before it starts, the model builds at the
release's size, and one process takes the touched-rows update there."""
import shlex

import pytest
import torch

from distrib.config import load_config
from distrib.models import build_model
from distrib.parallel.sparse_tables import replicated_touched_rows
from tests.helpers import REPO, check_sharded_config

SIZES = {"ml-25m": (162_541, 59_047), "ml-32m": (200_948, 87_585)}  # users, movies of the releases
LAUNCHERS = ("python -m distrib.train", "torchrun", "sbatch", "python -m launch.submit")


def header_commands(path) -> list[list[str]]:
    """The command lines of a config's opening comment, one per line."""
    lines = [line.lstrip("#").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    return [shlex.split(line) for line in lines if line.startswith(LAUNCHERS)]


@pytest.mark.parametrize("name", list(SIZES))
def test_every_header_command_passes_the_checks_before_a_job_starts(name):
    path = REPO / "configs" / f"{name}.yaml"
    cfg = load_config(str(path))
    assert cfg.data.name == name
    commands = header_commands(path)
    assert {launcher for launcher in LAUNCHERS if any(" ".join(c).startswith(launcher) for c in commands)} == \
        set(LAUNCHERS), commands
    for command in commands:
        overrides = [arg for arg in command[command.index(f"configs/{name}.yaml") + 1:] if "=" in arg]
        resolved = load_config(str(path), overrides)
        if resolved.dist.embedding_sharding != "none":
            check_sharded_config(resolved)  # TorchRec's limits, as the job checks them before any rank waits


@pytest.mark.parametrize("name", list(SIZES))
def test_the_model_builds_at_the_release_size_and_one_process_updates_touched_rows(name):
    cfg = load_config(str(REPO / "configs" / f"{name}.yaml"))
    n_users, n_items = SIZES[name]
    with torch.device("meta"):  # shapes only: the dense AutoRec family would refuse here, this model must not
        model = build_model(cfg.model, n_users, n_items, 0.5, 5.0)
    assert sum(p.numel() for p in model.parameters()) > 0
    assert replicated_touched_rows(cfg.dist.embedding_update, 1, n_users + n_items, cfg.train.batch_size,
                                   cfg.train.optimizer, cfg.train.compile, cfg.train.cuda_graph)


def test_the_sbatch_script_names_a_shipped_config():
    text = (REPO / "slurm" / "train.sbatch").read_text()
    assert "configs/ml-25m.yaml" in text and (REPO / "configs" / "ml-25m.yaml").exists()
