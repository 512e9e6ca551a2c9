"""What rank 0 prints around a run: a compact header at its start and one closing line, and the top-level
summary of a run with train.refit.

The header says what runs where (data and split sizes, model and parameter count, world size, device,
precision, run.dir) and only the config keys that differ from the defaults; the full resolved config is in
run.dir/config.yaml, and `python -m distrib.train ... --print-config` prints it too.
"""
from __future__ import annotations

import json
import math
import textwrap

from distrib.config import load_config, to_dict

PRINT_CONFIG_FLAG = "--print-config"
WIDTH = 110


def flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def changed_keys(cfg) -> dict:
    """Dotted keys whose value differs from the defaults; run.dir aside, which the header names anyway."""
    defaults = flatten(to_dict(load_config(None)))
    return {key: value for key, value in flatten(to_dict(cfg)).items()
            if key != "run.dir" and defaults.get(key) != value}


def _show(value) -> str:
    return json.dumps(value, separators=(",", ":")) if isinstance(value, (list, dict)) else str(value)


def describe_model(model_cfg, n_params: int) -> str:
    """`n_params`: the whole model's, whether or not its tables are sharded across ranks."""
    name = model_cfg.name
    if model_cfg.members:
        name = f"{name} of {', '.join(model_cfg.members)}"
    return f"{name}, {n_params:,} parameters"


def header(cfg, env, device, data, n_params: int, precision: str, hosts: int = 1, batch_schedule: str = "",
           threads: str = "") -> str:
    """The few lines a run starts with; `precision` is what train.precision resolved to on this device,
    `batch_schedule` (from the training schedule) says whether the global batch ramps up, and why, and `threads`
    how many CPU threads each rank computes with, and why."""
    if cfg.train.precision == "auto":
        precision = f"{precision} (auto)"
    changed = ", ".join(f"{key}={_show(value)}" for key, value in changed_keys(cfg).items()) or "none"
    lines = [
        f"data: {data.description}",
        f"model: {describe_model(cfg.model, n_params)} | world size {env.world_size} on {device} ({env.launcher}), "
        f"{precision}" + (f", {threads}" if threads else "")
        + (f" | {plural(hosts, 'host')}, master {env.master_addr}:{env.master_port}" if env.world_size > 1 else ""),
        f"run.dir: {cfg.run.dir} (full config in its config.yaml; {PRINT_CONFIG_FLAG} prints it here)",
        textwrap.fill(f"changed from the defaults: {changed}", WIDTH, subsequent_indent="  ",
                      break_on_hyphens=False),
    ]
    if batch_schedule:
        lines.append(textwrap.fill(batch_schedule, WIDTH, subsequent_indent="  ", break_on_hyphens=False))
    return "\n".join(lines)


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _figures(summary: dict, keys) -> str:
    return ", ".join(f"{k}={summary[k]:.4f}" if isinstance(summary[k], float) else f"{k}={summary[k]}"
                     for k in keys if summary.get(k) is not None)


FINAL_KEYS = ("test_rmse", "test_mae", "best_val_rmse", "best_epoch", "epochs_run", "stopped_early", "steps")
SELECTION_KEYS = ("best_val_rmse", "best_epoch", "epochs_run")


def closing_line(summary: dict, run_dir) -> str:
    """The run's last line: the final model's figures (with train.refit, the refit's, then the first phase's
    that chose it) and where the results are."""
    if "phase1" not in summary:
        return f"done: {_figures(summary, FINAL_KEYS)} | {run_dir}/summary.json"
    return (f"done: refit model ({summary['final_model']}/): {_figures(summary, FINAL_KEYS)} | "
            f"first phase: {_figures(summary['phase1'], SELECTION_KEYS)} | {run_dir}/summary.json")


def refit_summary(first: dict, refit: dict) -> dict:
    """run.dir/summary.json with train.refit: the final (refit) model's figures at the top, with where its
    checkpoints are, and the first phase's (validation, the chosen epoch count; it never reads the test part)
    beside them. The refit has no validation part, so it carries no best_val_rmse or best_epoch of its own."""
    final = {key: value for key, value in refit.items() if key not in ("best_val_rmse", "best_epoch")}
    return final | {"final_model": "refit", "phase1": first}


def epoch_line(row: dict, epochs: int, members: int, improved: bool) -> str:
    """`[012/030] train: 0.8123 - val: 0.8456 - val_rmse: 0.9196 - 2.4s - 36000 samples/s *` (* : a new best)."""
    has_val = not math.isnan(row["val_loss"])
    mark = " *" if improved and has_val else ""
    val = f" - val: {row['val_loss']:.4f} - val_rmse: {row['val_rmse']:.4f}" if has_val else ""
    train = "train" if members == 1 else f"train (mean of {members} members)"
    return (f"[{row['epoch']:03d}/{epochs:03d}] {train}: {row['train_loss']:.4f}{val} - "
            f"{row['epoch_seconds']:.1f}s - {row['samples_per_s']:.0f} samples/s{mark}")
