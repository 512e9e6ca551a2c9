"""Submit training to SLURM through submitit, or run it locally; a sweep goes out as one job array.

    python -m launch.submit CONFIG [key=value ...] [--local] [--wait] [--sweep 'key=v1,v2' ...]

    python -m launch.submit configs/ml-100k.yaml slurm.nodes=2 slurm.gpus_per_node=8 slurm.timeout_min=720
    python -m launch.submit configs/ml-100k.yaml run.dir=runs/lr --sweep train.lr=1e-3,3e-3 --sweep model.n_factors=32,64
    python -m launch.submit configs/ml-100k.yaml slurm.tasks_per_node=2 --local --wait

The job's shape comes from the config's slurm.* section (one task per GPU: with slurm.gpus_per_node=G
each node runs G tasks). The config, with every sweep member's overrides, is validated here before
anything is submitted. Sweep flags multiply (a grid); the members share one array, each with its own
run.dir (<run.dir>/<member>) and tracking.group (the sweep's name, run.dir's last part, unless set).
Logs go to slurm.folder, or <run.dir>/slurm. A job that reaches its time limit (USR2
slurm.signal_delay_s before it) or is preempted is requeued and resumes from run.dir's last.pt.
With --wait the command prints rank 0's console (the run's header, one line per epoch, its closing
line) as the job's log receives it, waits for the jobs, ends a sweep with a table of its runs (swept values,
best validation RMSE, test RMSE, how each job ended) and exits 1 if any failed.
"""
from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import sys
import time
from pathlib import Path

from distrib.config import Config, SlurmConfig, load_config
from distrib.errors import UserError, exit_on_user_error

USAGE = "python -m launch.submit CONFIG [key=value ...] [--local] [--wait] [--sweep 'key=v1,v2' ...]"
LIST_SPLIT = re.compile(r",(?![^\[]*\])")  # commas outside [...]: model.hidden=[16,16],[32] is two values


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m launch.submit", usage=USAGE,
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("args", nargs="*", metavar="CONFIG | key=value")
    parser.add_argument("--local", action="store_true", help="run here with submitit's LocalExecutor")
    parser.add_argument("--wait", action="store_true", help="wait for the jobs; exit 1 if any failed")
    parser.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                        help="a grid axis; repeat for a cartesian product")
    ns = parser.parse_intermixed_args(argv)
    ns.config, ns.overrides = None, list(ns.args)
    if ns.overrides and "=" not in ns.overrides[0]:
        ns.config = ns.overrides.pop(0)
    for item in ns.overrides:
        if "=" not in item:
            raise UserError(f"argument {item!r}: expected key=value (only the first argument may be a config file)")
    return ns


def parse_sweep(flags: list[str]) -> list[tuple[str, list[str]]]:
    axes = []
    for flag in flags:
        key, sep, values = flag.partition("=")
        items = [v.strip() for v in LIST_SPLIT.split(values)] if sep else []
        if not key.strip() or not items or any(v == "" for v in items):
            raise UserError(f"--sweep {flag!r}: expected key=v1,v2,...")
        if key in (k for k, _ in axes):
            raise UserError(f"--sweep: {key} given twice")
        axes.append((key.strip(), items))
    return axes


def member_name(assignment: list[tuple[str, str]]) -> str:
    return "_".join(re.sub(r"[^A-Za-z0-9.+-]", "-", f"{k}-{v}") for k, v in assignment)


def plan_runs(config: str | None, overrides: list[str], axes) -> tuple[Config, Path, list[tuple[str, Config, list[str]]]]:
    """The base config, its absolute run.dir, and (name, validated config, argv for distrib.train)
    for the job or for each sweep member."""
    base = load_config(config, overrides)
    root = Path(base.run.dir).expanduser().resolve()  # absolute: the job may start elsewhere
    head = [config] if config else []
    if not axes:
        return base, root, [(root.name, base, head + overrides + [f"run.dir={root}"])]
    for key, _ in axes:
        if key.startswith("slurm.") or key == "run.dir":
            raise UserError(f"--sweep {key}: the members of one job array share slurm.* and run.dir")
    group = [] if base.tracking.group else [f"tracking.group={root.name}"]
    runs = []
    for values in itertools.product(*(vals for _, vals in axes)):
        assignment = [(k, v) for (k, _), v in zip(axes, values)]
        name = member_name(assignment)
        argv = head + overrides + [f"{k}={v}" for k, v in assignment] + group + [f"run.dir={root / name}"]
        runs.append((name, load_config(config, argv[len(head):]), argv))
    return base, root, runs


def check_world_size(cfg: Config) -> None:
    """What distrib.train checks once the ranks exist, checked here before anything waits in a queue."""
    from distrib.parallel.distributed import DistEnv
    from distrib.train import check_world

    tasks = cfg.slurm.gpus_per_node or cfg.slurm.tasks_per_node
    check_world(cfg, DistEnv(0, 0, cfg.slurm.nodes * tasks, "127.0.0.1", 0, "slurm"))


def slurm_parameters(cfg: SlurmConfig, name: str) -> dict:
    """submitit parameters from slurm.*; the cluster shape is written only there."""
    tasks = cfg.tasks_per_node
    if cfg.gpus_per_node > 0:
        if tasks not in (1, cfg.gpus_per_node):
            raise UserError(f"slurm.tasks_per_node={tasks} with slurm.gpus_per_node={cfg.gpus_per_node}: "
                            "one task per GPU (leave tasks_per_node out)")
        tasks = cfg.gpus_per_node
    if cfg.nodes < 1 or tasks < 1 or cfg.cpus_per_task < 1 or cfg.timeout_min < 1:
        raise UserError("slurm.nodes, tasks_per_node, cpus_per_task and timeout_min must be >= 1")
    params = dict(name=name, nodes=cfg.nodes, tasks_per_node=tasks, cpus_per_task=cfg.cpus_per_task,
                  timeout_min=cfg.timeout_min, slurm_signal_delay_s=cfg.signal_delay_s)
    if cfg.gpus_per_node > 0:
        params["gpus_per_node"] = cfg.gpus_per_node
    if cfg.mem_gb > 0:
        params["mem_gb"] = cfg.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cfg, key):
            params[f"slurm_{key}"] = getattr(cfg, key)
    return params


def build_executor(cfg: SlurmConfig, folder: Path, name: str, local: bool, array_size: int):
    import submitit

    if not local and shutil.which("sbatch") is None:
        raise UserError("no SLURM here (sbatch not found on PATH): use --local to run on this machine")
    # One folder per job on SLURM. The local executor's controller would create the pattern's folder literally
    # (an empty `%j`); its logs are named by job id already, so they go straight into the folder.
    executor = submitit.AutoExecutor(folder=folder if local else folder / "%j", cluster="local" if local else "slurm")
    params = slurm_parameters(cfg, name)
    if array_size > 1:
        params["slurm_array_parallelism"] = array_size
    executor.update_parameters(**params)
    return executor


def submit(ns: argparse.Namespace) -> tuple[list, list]:
    """The submitted jobs and, for each, its (name, config, argv) from plan_runs."""
    from launch.job import TrainJob

    base, root, runs = plan_runs(ns.config, ns.overrides, parse_sweep(ns.sweep))
    sweep = bool(ns.sweep)
    folder = Path(base.slurm.folder).expanduser().resolve() if base.slurm.folder else root / "slurm"
    for _, cfg, _ in runs:
        check_world_size(cfg)
    executor = build_executor(base.slurm, folder, f"distrib-{root.name}", ns.local, len(runs))
    if sweep:
        with executor.batch():  # one job array on SLURM
            jobs = [executor.submit(TrainJob(argv)) for _, _, argv in runs]
    else:
        jobs = [executor.submit(TrainJob(runs[0][2]))]
    kind = "local job" if ns.local else "SLURM job"
    for job, (member, cfg, _) in zip(jobs, runs):
        label = f" [{member}]" if sweep else ""
        print(f"{kind} {job.job_id}{label}: run.dir {cfg.run.dir} log {job.paths.stdout}", flush=True)
    return jobs, runs


def stream_main_logs(jobs, labels: list[str], poll_s: float = 1.0) -> None:
    """Print each job's rank-0 stdout as it grows, complete lines only, until every job has ended."""
    seen = [0] * len(jobs)
    while True:
        ended = all(job.done() for job in jobs)  # before reading, so the last lines are read after the end
        for n, (job, label) in enumerate(zip(jobs, labels)):
            seen[n] += _print_new_lines(job.paths.stdout, seen[n], label, final=ended)
        if ended:
            return
        time.sleep(poll_s)


def _print_new_lines(path, offset: int, label: str, final: bool) -> int:
    """Print the complete lines of `path` after byte `offset`; the number of bytes printed."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            chunk = handle.read()
    except FileNotFoundError:  # the job has not started yet
        return 0
    if not final:
        chunk = chunk[:chunk.rfind(b"\n") + 1]
    for line in chunk.decode(errors="replace").splitlines():
        print(f"{label}{line}", flush=True)
    return len(chunk)


def wait_for(jobs) -> list[str]:
    """Each job's end, `done` or `FAILED` (with its reason on stderr)."""
    states = []
    for job in jobs:
        try:
            job.results()  # every task's; raises if one of them failed
            print(f"job {job.job_id}: done", flush=True)
            states.append("done")
        except Exception as err:  # submitit's FailedJobError / UncompletedJobError carry the job's trace
            states.append("FAILED")
            print(f"job {job.job_id}: FAILED: {reason(job, err)} (log {job.paths.stderr})", file=sys.stderr,
                  flush=True)
    return states


def sweep_table(runs, axes, states: list[str]) -> str:
    """The sweep's runs side by side once they have ended: each member's run.dir (under the sweep's), its
    values of the swept keys, its best validation RMSE (the first phase's, with train.refit), its test RMSE
    (the shipped model's) and how its job ended; `*` marks the lowest validation RMSE, the one to choose."""
    keys = [key for key, _ in axes]
    rows = []
    for (name, cfg, argv), state in zip(runs, states):
        summary = read_summary(Path(cfg.run.dir))
        best_val = summary.get("phase1", summary).get("best_val_rmse")
        values = [next(a.split("=", 1)[1] for a in reversed(argv) if a.startswith(f"{key}=")) for key in keys]
        rows.append([name, *values, best_val, summary.get("test_rmse"), state])
    scored = [row[-3] for row in rows if isinstance(row[-3], (int, float))]
    lowest = min(scored) if scored else None
    table = [["run.dir", *keys, "best val RMSE", "test RMSE", "state"]]
    for row in rows:
        *head, best_val, test, state = row
        table.append([*head, _figure(best_val) + (" *" if best_val == lowest else ""), _figure(test), state])
    widths = [max(len(line[col]) for line in table) for col in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    root = Path(runs[0][1].run.dir).parent
    return f"sweep of {len(runs)} runs in {root} (* lowest validation RMSE):\n" + "\n".join(lines)


def read_summary(run_dir: Path) -> dict:
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}  # the run ended before its summary (failed, or still requeued)
    return summary if isinstance(summary, dict) else {}


def _figure(value) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def reason(job, err: Exception) -> str:
    """The trainer's one-line `distrib: error: ...` from any task's log, else the exception's last line."""
    for path in sorted(job.paths.folder.glob(f"{job.job_id}_*_log.*")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("distrib: error:"):
                return line
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(err).__name__


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    ns = parse_args(sys.argv[1:] if argv is None else argv)
    jobs, runs = submit(ns)
    if not ns.wait:
        return 0
    stream_main_logs(jobs, [f"[{job.job_id}] " if len(jobs) > 1 else "" for job in jobs])
    states = wait_for(jobs)
    if ns.sweep:
        print(sweep_table(runs, parse_sweep(ns.sweep), states), flush=True)
    return 1 if "FAILED" in states else 0


if __name__ == "__main__":
    sys.exit(main())
