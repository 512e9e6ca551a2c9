"""The job part of `benchmarks.gpu`: the real job, `python -m distrib.train` under a 1-process torchrun (NCCL on
CUDA, gloo on CPU), as a user runs it, each run under its own time limit.

    python -m benchmarks.gpu_job --out DIR --work DIR --data-root DIR [--device cuda] [--smoke]

Runs, in this order:
- ml-25m replicated, killed and resumed: configs/ml-25m.yaml (configs/ml-100k-article.yaml where there is none)
  on synthetic ratings of ml-25m's shape for a fixed number of epochs; once the first epoch's checkpoint is
  written, SIGKILL to the whole process group half an epoch later, then the same command again: it must resume
  from that checkpoint and end with every epoch in metrics.jsonl exactly once.
- ml-25m sharded: the same with dist.embedding_sharding=row_wise (TorchRec; NCCL all-to-all on CUDA).
- the quick start: configs/quickstart.yaml.
- configs/ml-100k.yaml on ml-100k u1 from --data-root (the shipped ensemble with its refit phase).
- the captured step through the entry point: configs/ml-100k-article.yaml with train.cuda_graph=true for a few
  epochs (the entry point forms a process group even for one process, so the step is captured around DDP).
Per run: status, wall time with start-up, epochs, test RMSE, the median epoch's samples/s.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.gpu import (
    SMOKE_MODEL,
    Figures,
    kill_tree,
    machine,
    part_arguments,
    scale,
    wait_or_kill,
)
from benchmarks.harness import REPO

RUN_LIMITS_S = {"ml-25m replicated, killed and resumed": 75, "ml-25m sharded": 45, "quick start": 35,
                "ml-100k.yaml on u1": 85, "article, train.cuda_graph via the CLI": 30}  # 270 s, the part's limit
ML_25M_CONFIG = REPO / "configs" / "ml-25m.yaml"
SMOKE_SLOWER = 3  # a 2-core CPU takes longer to start a run than a GPU machine takes for the whole of it
POLL_S = 0.05
AGENT_EXIT_S = 30  # torchrun's wait for its lost worker before it exits


def torchrun(config: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", "-m",
            "distrib.train", config, *overrides]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "a") as handle:
        return subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1"}, stdout=handle,
                                stderr=subprocess.STDOUT)


def read_rows(run_dir: Path) -> list[dict]:
    try:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return []


def kill_mid_epoch(proc: subprocess.Popen, run_dir: Path, deadline: float) -> dict:
    """SIGKILL the run half an epoch after its first checkpoint; what state it was killed in."""
    checkpoint = run_dir / "checkpoints" / "last.pt"
    while proc.poll() is None and time.monotonic() < deadline and not (checkpoint.exists() and read_rows(run_dir)):
        time.sleep(POLL_S)
    if proc.poll() is not None or time.monotonic() >= deadline:
        return {"killed": False, "why": "ended or ran out of time before its first checkpoint"}
    time.sleep(read_rows(run_dir)[0]["epoch_seconds"] / 2)
    if proc.poll() is not None:
        return {"killed": False, "why": "finished before the kill"}
    epochs_done = len(read_rows(run_dir))
    kill_tree(proc.pid, only_descendants=True)  # the training rank dies, as under the OOM killer; torchrun sees it
    agent = wait_or_kill(proc, AGENT_EXIT_S)
    return {"killed": True, "epochs_checkpointed_at_kill": epochs_done, "torchrun_after_kill": agent}


def run_one(name: str, config: str, overrides: list[str], run_dir: Path, log: Path, kill: bool, limit_s: float) -> dict:
    deadline = time.monotonic() + limit_s
    cmd = torchrun(config, [*overrides, f"run.dir={run_dir}"])
    row = {"run": name, "command": " ".join(cmd[1:])}
    started = time.perf_counter()
    proc = start(cmd, log)
    if kill:
        row.update(kill_mid_epoch(proc, run_dir, deadline))
        if row["killed"]:
            proc = start(cmd, log)  # the same command again: it resumes
    row["status"] = wait_or_kill(proc, deadline - time.monotonic())
    row["wall_s"] = time.perf_counter() - started
    row.update(outcome(run_dir, log.read_text(errors="replace")))
    if kill:
        # metrics.jsonl is written just before the checkpoint: a kill between the two resumes one epoch earlier
        epochs = [r["epoch"] for r in read_rows(run_dir)]
        resumed_at = re.search(r"at epoch (\d+)", row.get("resumed_line", ""))
        row["resumed_at_epoch"] = int(resumed_at.group(1)) if resumed_at else None
        row["resumed_exactly"] = bool(row["status"] == "ok" and row.get("killed") and resumed_at
                                      and row["resumed_at_epoch"] >= 1
                                      and epochs == list(range(1, row.get("epochs_run", -1) + 1)))
    return row


def outcome(run_dir: Path, log_text: str) -> dict:
    result = {}
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        result.update({k: summary.get(k) for k in ("test_rmse", "best_epoch", "epochs_run")})
    except (OSError, ValueError):
        pass
    rates = sorted(r["samples_per_s"] for r in read_rows(run_dir) if "samples_per_s" in r)
    if rates:
        result["samples_per_s_median_epoch"] = rates[len(rates) // 2]
    lines = log_text.splitlines()
    resumed = [line for line in lines if "resumed from" in line]
    if resumed:
        result["resumed_line"] = resumed[-1].strip()
    errors = [line for line in lines if line.startswith(("distrib: error", "Traceback")) or "Error:" in line]
    if errors:
        result["first_error"] = errors[0].strip()[:300]
    return result


TOY_DATA = ["data.name=synthetic", "data.split=random", "data.synthetic.n_users=300", "data.synthetic.n_items=200",
            "data.synthetic.n_ratings=12000"]  # smoke: in place of ml-100k u1 for the ensemble


def runs(sizes, data_root: Path, work: Path, device: str) -> list[tuple[str, str, list[str], bool]]:
    """(name, config, overrides, kill) of each run, in order. Smoke: toy data, a small model, one epoch (three
    for the killed run), and on CPU no captured-step run (there the step runs eagerly, as in the other runs)."""
    smoke = sizes.smoke
    common = [f"train.device={device}", f"data.cache_dir={work / 'cache'}"]
    small = list(SMOKE_MODEL) if smoke else []  # not for the killed run: its epoch must last long enough to hit
    synthetic_root = f"data.root={work / 'data'}"
    ml25m_config = str(ML_25M_CONFIG if ML_25M_CONFIG.exists() else REPO / "configs" / "ml-100k-article.yaml")
    ml25m = [*common, synthetic_root, "data.name=synthetic", "data.split=random",
             f"data.synthetic.n_users={sizes.users}", f"data.synthetic.n_items={sizes.items}",
             f"data.synthetic.n_ratings={40_000 if smoke else 2_000_000}", "train.patience=0", "train.epochs=3",
             *(["train.batch_size=2000", "train.batch_size_per_rank=0"] if smoke else [])]
    short = ["train.epochs=1"] if smoke else []
    listed = [
        ("ml-25m replicated, killed and resumed", ml25m_config, [*ml25m, "dist.embedding_sharding=none"], True),
        ("ml-25m sharded", ml25m_config, [*ml25m, "dist.embedding_sharding=row_wise", "train.epochs=2", *small, *short],
         False),
        ("quick start", "configs/quickstart.yaml",
         [*common, synthetic_root, *short, *(["data.synthetic.n_ratings=30000"] if smoke else [])], False),
        ("ml-100k.yaml on u1", "configs/ml-100k.yaml",
         [*common, *([synthetic_root, *TOY_DATA] if smoke else [f"data.root={data_root}"]), *short], False),
        ("article, train.cuda_graph via the CLI", "configs/ml-100k-article.yaml",
         [*common, f"data.root={data_root}", "train.cuda_graph=true", "train.precision=bf16", "train.epochs=3"], False),
    ]
    return listed[:-1] if smoke and device == "cpu" else listed


def line(row: dict) -> str:
    def show(key, fmt):
        return format(row[key], fmt) if row.get(key) is not None else ""

    note = row.get("first_error", "") if row["status"] != "ok" else ""
    if "resumed_exactly" in row:
        note = (f"killed with {row['epochs_checkpointed_at_kill']} epoch(s) done, resumed at epoch "
                f"{row['resumed_at_epoch']}, every epoch once: {row['resumed_exactly']}"
                if row.get("killed") else f"not killed: {row.get('why')}") + (f"; {note}" if note else "")
    return (f"| {row['run']} | {row['status']} | {row['wall_s']:.0f} | {show('epochs_run', 'd')} | "
            f"{show('test_rmse', '.4f')} | {show('samples_per_s_median_epoch', ',.0f')} | {note} |")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    part_arguments(parser)
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    sizes = scale(args.smoke)
    figures = Figures(args.out / "job.json", machine=machine(args.device), smoke=sizes.smoke,
                      ml25m_config=str(ML_25M_CONFIG.relative_to(REPO)) if ML_25M_CONFIG.exists() else
                      "configs/ml-100k-article.yaml (no configs/ml-25m.yaml)")
    print("| run | status | wall s (with start-up) | epochs | test RMSE | samples/s (median epoch) | note |\n"
          "|---|---|---|---|---|---|---|", flush=True)
    for index, (name, config, overrides, kill) in enumerate(runs(sizes, args.data_root, args.work, args.device)):
        log = args.work / f"run{index}.log"
        limit_s = RUN_LIMITS_S[name] * (SMOKE_SLOWER if sizes.smoke else 1)
        row = figures.add_row(run_one(name, config, overrides, args.work / f"run{index}", log, kill, limit_s))
        print(f"  {name}: {row['command']}", flush=True)
        if row["status"] != "ok":
            print("  " + "\n  ".join(log.read_text(errors="replace").splitlines()[-12:]), flush=True)
        print(line(row), flush=True)


if __name__ == "__main__":
    main()
