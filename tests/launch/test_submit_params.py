"""The submitit parameters and sweep plan that launch.submit derives from the config, without submitting."""
from __future__ import annotations

import pytest

from distrib.config import load_config
from distrib.errors import UserError
from launch.submit import parse_sweep, plan_runs, slurm_parameters


def test_parameters_come_from_the_slurm_section():
    cfg = load_config(None, ["slurm.nodes=2", "slurm.gpus_per_node=8", "slurm.cpus_per_task=6", "slurm.mem_gb=200",
                             "slurm.partition=gpu", "slurm.account=ml", "slurm.qos=high", "slurm.timeout_min=720",
                             "slurm.signal_delay_s=300"])
    assert slurm_parameters(cfg.slurm, "distrib-x") == dict(
        name="distrib-x", nodes=2, tasks_per_node=8, gpus_per_node=8, cpus_per_task=6, mem_gb=200,
        timeout_min=720, slurm_signal_delay_s=300, slurm_partition="gpu", slurm_account="ml", slurm_qos="high")


def test_cpu_job_sets_no_gpus_memory_or_partition():
    params = slurm_parameters(load_config(None, ["slurm.tasks_per_node=2"]).slurm, "n")
    assert params["tasks_per_node"] == 2 and not {"gpus_per_node", "mem_gb", "slurm_partition"} & params.keys()


def test_tasks_must_match_gpus():
    with pytest.raises(UserError, match="one task per GPU"):
        slurm_parameters(load_config(None, ["slurm.gpus_per_node=4", "slurm.tasks_per_node=2"]).slurm, "n")


def test_sweep_is_a_grid_with_a_run_dir_and_group_per_member(tmp_path):
    axes = parse_sweep(["train.lr=1e-3,3e-3", "model.hidden=[16,16],[32]"])
    assert axes == [("train.lr", ["1e-3", "3e-3"]), ("model.hidden", ["[16,16]", "[32]"])]
    _, root, runs = plan_runs(None, [f"run.dir={tmp_path}/lr", "model.dropouts=[0.1]"], axes)
    assert root == tmp_path / "lr" and len(runs) == 4
    assert len({cfg.run.dir for _, cfg, _ in runs}) == 4
    assert all(cfg.run.dir.startswith(f"{root}/") and cfg.tracking.group == "lr" for _, cfg, _ in runs)
    assert {tuple(cfg.model.hidden) for _, cfg, _ in runs} == {(16, 16), (32,)}


def test_a_group_given_by_the_user_is_kept(tmp_path):
    _, _, runs = plan_runs(None, [f"run.dir={tmp_path}/s", "tracking.group=mine"], parse_sweep(["train.lr=1,2"]))
    assert {cfg.tracking.group for _, cfg, _ in runs} == {"mine"}
