"""The whole job at ml-25m or ml-32m size, as a user runs it: the real entry points end to end on synthetic data
with the release's exact counts and its shipped config, timed phase by phase from outside, with every process's
peak resident memory.

    python -m benchmarks.scale_end_to_end --out /work/bench-out/e2e-25m [--dataset ml-25m|ml-32m] [--epochs 2]
        [--scale 0.02] [--parts floor prep modes bias csv evaluate] [--modes 1p-replicated 1p-sharded 2r-sharded]
    python -m benchmarks.scale_end_to_end --out DIR --table     # reprint the tables from DIR/results.json

Modes: `python -m distrib.train` with whole tables (1p-replicated), the same with `dist.embedding_sharding=row_wise`
(1p-sharded), and `torchrun --standalone --nproc_per_node=2` with row_wise tables and
`train.batch_size_per_rank=2000` (2r-sharded, gloo). Each mode: a training run (`tracking.mode=offline`), then
`distrib.recommend` for one user, then a second start with one more epoch that loads the checkpoint and is
stopped at its first progress line (resume), and at the end `distrib.evaluate RUN_DIR` (its default user sample).
Also: the data preparation (generate, encode, split, cache; then the cache reopened), `model.name=bias` on the
same data (the baseline), the generator's noise floor (`distrib.data.synthetic.noise_floor`), and a
`ratings.csv` in ml-25m's layout written from the synthetic ratings: its preparation as `data.name=file` and one
training mode on it.

Phases come from the child's stdout, read line by line and stamped on arrival (`train.log_every_s` progress
lines give each epoch's start and the end of its training steps), and from the run directory polled every
0.5 s (metrics.jsonl is written after validation and before the checkpoint; plots/ files). Peak memory: VmHWM
of every descendant process (/proc/PID/status), polled with the files. `--scale` shrinks users, movies and
ratings for a check at small size; the exact counts are the default. Children run with OMP_NUM_THREADS=1 unless
it is set. Asserts nothing.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COUNTS = {"ml-25m": (162_541, 59_047, 25_000_095), "ml-32m": (200_948, 87_585, 32_000_204)}
SHARDED = ["dist.embedding_sharding=row_wise"]
MODES = {  # name: (ranks, overrides)
    "1p-replicated": (1, []),
    "1p-sharded": (1, SHARDED),
    "2r-sharded": (2, [*SHARDED, "train.batch_size_per_rank=2000"]),
}
PARTS = ("floor", "prep", "modes", "bias", "csv", "evaluate")
PROGRESS = re.compile(r"^epoch (\d+)/(\d+): step (\d+)/(\d+) .* - (\d+h\d\dm|\d+m\d\ds|\d+s), ETA")
EPOCH_LINE = re.compile(r"^\[(\d+)/(\d+)\] train:")
POLL_S = 0.5


# --- one child, watched -------------------------------------------------------------------------------------


def duration_s(text: str) -> float | None:
    """distrib's `42s` / `3m07s` (whole seconds); `2h05m` is too coarse to time with."""
    if "h" in text:
        return None
    minutes, _, seconds = text.rpartition("m")
    return 60 * float(minutes or 0) + float(seconds.rstrip("s"))


def descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def process_label(pid: int) -> str:
    """`rank N` for a training process (its RANK, or the only one), else what it is (torchrun, wandb, ...)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return "?"
    rank = next((e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"RANK=")), None)
    if "wandb" in cmd:
        return "wandb service"
    if "torch.distributed.run" in cmd or "torchrun" in cmd:
        return "torchrun agent"
    if rank is not None:
        return f"rank {rank}"
    if "distrib." in cmd or "-c" in cmd.split()[1:3]:
        return "rank 0"
    return Path(cmd.split()[0]).name if cmd else "?"


def vm_hwm_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def watch(cmd: list[str], log_path: Path, run_dir: Path | None = None, stop_when=None,
          timeout_s: float = 4 * 3600) -> dict:
    """Run `cmd`, stamping each output line as it arrives (seconds since the start) and polling the peak memory
    of every process under it and the mtimes of run_dir's metrics.jsonl and plots. `stop_when(line)` true:
    SIGINT to the whole process group (distrib keeps its last checkpoint), SIGKILL 60 s later."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            bufsize=1, start_new_session=True)
    peaks: dict[str, float] = {}
    labels: dict[int, str] = {}
    metrics_mtimes: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            for pid in descendants(proc.pid):
                if pid not in labels or labels[pid] == "?":
                    labels[pid] = process_label(pid)
                hwm = vm_hwm_mb(pid)
                if hwm is not None:
                    peaks[labels[pid]] = max(peaks.get(labels[pid], 0.0), hwm)
            if run_dir is not None:
                try:
                    mtime = (run_dir / "metrics.jsonl").stat().st_mtime - start
                    if not metrics_mtimes or mtime != metrics_mtimes[-1]:
                        metrics_mtimes.append(mtime)
                except OSError:
                    pass
            done.wait(POLL_S)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    lines: list[tuple[float, str]] = []
    stopped_at = None
    killer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGKILL))
    killer.start()
    with open(log_path, "w") as log:
        for raw in proc.stdout:
            at = time.time() - start
            line = raw.rstrip("\n")
            lines.append((at, line))
            log.write(f"{at:9.2f} {line}\n")
            log.flush()
            if stop_when is not None and stopped_at is None and stop_when(line):
                stopped_at = at
                os.killpg(proc.pid, signal.SIGINT)
                threading.Timer(60, lambda: proc.poll() is None and os.killpg(proc.pid, signal.SIGKILL)).start()
    rc = proc.wait()
    killer.cancel()
    wall = time.time() - start
    done.set()
    poller.join()
    return {"rc": rc, "wall_s": wall, "lines": lines, "peaks_mb": peaks, "metrics_mtimes": metrics_mtimes,
            "stopped_at": stopped_at, "start": start, "timed_out": wall >= timeout_s}


# --- reading a training run's phases ------------------------------------------------------------------------


def first_at(lines, test) -> float | None:
    return next((at for at, line in lines if test(line)), None)


def epoch_phases(lines, metrics_mtimes: list[float]) -> list[dict]:
    """Per epoch: its start (median of each progress line's arrival minus its elapsed time), the end of its
    training steps (the last progress line extrapolated at the epoch's own rate to the last step), validation
    (to metrics.jsonl's write) and the checkpoint (metrics.jsonl to the epoch line, which follows the save)."""
    progress: dict[int, list] = {}
    ends: dict[int, float] = {}
    for at, line in lines:
        if m := PROGRESS.match(line):
            elapsed = duration_s(m.group(5))
            if elapsed is not None and int(m.group(3)) > 0:
                progress.setdefault(int(m.group(1)), []).append((at, int(m.group(3)), int(m.group(4)), elapsed))
        elif m := EPOCH_LINE.match(line):
            ends[int(m.group(1))] = at
    rows = []
    for k in sorted(ends):
        row = {"epoch": k, "end": ends[k]}
        seen = progress.get(k, [])
        if seen:
            start = statistics.median(at - elapsed for at, _, _, elapsed in seen)
            at, step, steps, _ = seen[-1]
            train_end = at + (steps - step) * (at - start) / step
            row.update(start=start, train_s=train_end - start, epoch_s=ends[k] - start)
            if len(metrics_mtimes) >= k:
                written = metrics_mtimes[k - 1]
                row.update(validation_s=written - train_end, checkpoint_s=ends[k] - written)
        rows.append(row)
    return rows


def tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def training_phases(result: dict, run_dir: Path) -> dict:
    lines = result["lines"]
    header = first_at(lines, lambda line: line.startswith("data:"))
    epochs = epoch_phases(lines, result["metrics_mtimes"])
    plots = sorted(p.stat().st_mtime - result["start"] for p in (run_dir / "plots").glob("*.png"))
    wandb_done = first_at(lines, lambda line: "saved offline" in line)
    done = first_at(lines, lambda line: line.startswith("done:"))
    last_epoch = epochs[-1]["end"] if epochs else None
    phases = {"startup_s": header}
    if plots and last_epoch is not None:
        phases.update(test_s=plots[0] - last_epoch, plots_s=plots[-1] - plots[0])
        if wandb_done is not None:
            phases["wandb_s"] = wandb_done - plots[-1]
    if done is not None:
        phases["to_exit_s"] = result["wall_s"] - done
    ckpt = run_dir / "checkpoints"
    best = next((p for p in (ckpt / "best.pt", ckpt / "best.dcp") if p.exists()), ckpt / "best.pt")
    sizes = {"checkpoints_mb": tree_bytes(ckpt) / 1e6, "best_mb": tree_bytes(best) / 1e6,
             "wandb_mb": tree_bytes(run_dir / "wandb") / 1e6, "plots_mb": tree_bytes(run_dir / "plots") / 1e6}
    metrics = [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if (run_dir / "metrics.jsonl").exists() else []
    for row, m in zip(epochs, metrics):
        row.update(val_rmse=m["val_rmse"], samples_per_s=m["samples_per_s"], reported_epoch_s=m["epoch_seconds"])
    summary = json.loads((run_dir / "summary.json").read_text()) if (run_dir / "summary.json").exists() else {}
    return {"rc": result["rc"], "wall_s": result["wall_s"], "phases": phases, "epochs": epochs, "sizes": sizes,
            "peaks_mb": result["peaks_mb"], "test_rmse": summary.get("test_rmse")}


# --- the parts ----------------------------------------------------------------------------------------------


def launcher(ranks: int) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", "distrib.train"]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
            "-m", "distrib.train"]


def train_mode(args, name: str, ranks: int, overrides: list[str], data: list[str]) -> dict:
    run_dir = args.out / "runs" / name
    common = [str(args.config), *data, *overrides, "tracking.mode=offline", f"run.dir={run_dir}",
              f"train.log_every_s={args.log_every_s}"]
    print(f"[{name}] training {args.epochs} epoch(s): {' '.join(common)}", flush=True)
    fresh = watch([*launcher(ranks), *common, f"train.epochs={args.epochs}"], args.out / f"{name}.train.log",
                  run_dir)
    out = training_phases(fresh, run_dir)
    print(f"[{name}] rc {out['rc']}, {out['wall_s']:.0f} s", flush=True)
    if out["rc"] != 0:
        return out
    rec = watch([sys.executable, "-m", "distrib.recommend", str(run_dir), "--user", "1", "--top", "10"],
                args.out / f"{name}.recommend.log")
    out["recommend"] = {"rc": rec["rc"], "wall_s": rec["wall_s"], "peaks_mb": rec["peaks_mb"]}
    again = watch([*launcher(ranks), *common, f"train.epochs={args.epochs + 1}"], args.out / f"{name}.resume.log",
                  run_dir, stop_when=lambda line: PROGRESS.match(line) is not None)
    lines = again["lines"]
    out["resume"] = {
        "header_s": first_at(lines, lambda line: line.startswith("data:")),
        "resumed": first_at(lines, lambda line: line.startswith("resumed from")) is not None,
        "first_progress_s": again["stopped_at"], "peaks_mb": again["peaks_mb"],
    }
    return out


def prepare(args, name: str, data: list[str]) -> dict:
    """load_dataset in a fresh process, as distrib.train's start calls it: cold (an empty cache) then warm."""
    code = ("import sys; from distrib.config import load_config; from distrib.data import load_dataset; "
            "d = load_dataset(load_config(sys.argv[1], sys.argv[2:]).data); "
            "print('prepared', len(d.train), len(d.val), len(d.test), d.n_users, d.n_items)")
    out = {}
    for state in ("cold", "warm"):
        res = watch([sys.executable, "-c", code, str(args.config), *data], args.out / f"{name}.prep-{state}.log")
        out[state] = {"rc": res["rc"], "wall_s": res["wall_s"], "peak_mb": max(res["peaks_mb"].values(), default=0)}
        print(f"[{name}] {state}: {res['wall_s']:.1f} s, rc {res['rc']}, "
              f"{res['lines'][-1][1] if res['lines'] else ''}", flush=True)
    return out


def synthetic_overrides(args) -> list[str]:
    users, items, ratings = (max(1, round(n * args.scale)) for n in COUNTS[args.dataset])
    return ["data.name=synthetic", f"data.synthetic.n_users={users}", f"data.synthetic.n_items={items}",
            f"data.synthetic.n_ratings={ratings}", f"data.cache_dir={args.out / 'cache'}"]


def write_csv(args, data: list[str]) -> Path:
    """ratings.csv in ml-25m's layout (userId,movieId,rating,timestamp; one decimal), the synthetic ratings."""
    import pandas as pd

    from distrib.config import load_config
    from distrib.data.synthetic import generate

    path = args.out / "ratings.csv"
    raw = generate(load_config(str(args.config), data).data.synthetic)
    frame = pd.DataFrame({"userId": raw.users, "movieId": raw.items, "rating": raw.ratings,
                          "timestamp": raw.timestamps})
    frame.to_csv(path, index=False, float_format="%.1f")
    return path


def run_parts(args, results: dict) -> None:
    data = synthetic_overrides(args)
    save = lambda: (args.out / "results.json").write_text(json.dumps(results, indent=1))
    if "floor" in args.parts:
        from distrib.config import load_config
        from distrib.data.synthetic import noise_floor

        started = time.time()
        results["floor"] = noise_floor(load_config(str(args.config), data).data.synthetic)
        print(f"noise floor RMSE {results['floor']:.4f} ({time.time() - started:.0f} s)", flush=True)
        save()
    if "prep" in args.parts:
        results["prep"] = prepare(args, "synthetic", data)
        save()
    for name in args.modes if "modes" in args.parts else []:
        ranks, overrides = MODES[name]
        results.setdefault("modes", {})[name] = train_mode(args, name, ranks, overrides, data)
        save()
    if "bias" in args.parts:
        run_dir = args.out / "runs" / "bias"
        res = watch([*launcher(1), str(args.config), *data, "model.name=bias", f"train.epochs={args.bias_epochs}",
                     f"run.dir={run_dir}", f"train.log_every_s={args.log_every_s}"], args.out / "bias.train.log",
                    run_dir)
        results["bias"] = training_phases(res, run_dir)
        save()
    if "csv" in args.parts:
        started = time.time()
        path = write_csv(args, data)
        csv_data = ["data.name=file", f"data.path={path}", f"data.cache_dir={args.out / 'cache-csv'}"]
        results["csv"] = {"write_s": time.time() - started, "mb": path.stat().st_size / 1e6,
                          "prep": prepare(args, "csv", csv_data)}
        ranks, overrides = MODES[args.csv_mode]
        csv_args = argparse.Namespace(**{**vars(args), "epochs": 1})
        results["csv"]["train"] = train_mode(csv_args, f"csv-{args.csv_mode}", ranks, overrides, csv_data)
        save()
    for name in [m for m in results.get("modes", {}) if m in args.modes] if "evaluate" in args.parts else []:
        res = watch([sys.executable, "-m", "distrib.evaluate", str(args.out / "runs" / name)],
                    args.out / f"{name}.evaluate.log", timeout_s=args.evaluate_timeout_s)
        results["modes"][name]["evaluate"] = {"rc": res["rc"], "wall_s": res["wall_s"], "peaks_mb": res["peaks_mb"],
                                              "timed_out": res["timed_out"],
                                              "output": [line for _, line in res["lines"]][-6:]}
        print(f"[{name}] evaluate: {res['wall_s']:.0f} s, rc {res['rc']}", flush=True)
        save()


# --- the tables ---------------------------------------------------------------------------------------------


def fmt(value, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def phase_rows(run: dict) -> list[tuple[str, str]]:
    p, rows = run.get("phases", {}), []
    rows.append(("start to header (imports, cache, model)", fmt(p.get("startup_s"))))
    for e in run.get("epochs", []):
        k = e["epoch"]
        rows += [(f"epoch {k}: whole", fmt(e.get("epoch_s"))), (f"epoch {k}: training steps", fmt(e.get("train_s"))),
                 (f"epoch {k}: validation", fmt(e.get("validation_s"))),
                 (f"epoch {k}: checkpoint save", fmt(e.get("checkpoint_s"))),
                 (f"epoch {k}: samples/s", fmt(e.get("samples_per_s"), ",.0f"))]
    rows += [("test (best weights loaded, scored)", fmt(p.get("test_s"))), ("plots", fmt(p.get("plots_s"))),
             ("W&B offline (images, table, artifact, finish)", fmt(p.get("wandb_s"))),
             ("done line to exit", fmt(p.get("to_exit_s"))), ("training run, whole (s)", fmt(run.get("wall_s"))),
             ("test RMSE", fmt(run.get("test_rmse"), ".4f"))]
    s = run.get("sizes", {})
    rows += [("checkpoints/ on disk (MB)", fmt(s.get("checkpoints_mb"), ",.0f")),
             ("best checkpoint (MB)", fmt(s.get("best_mb"), ",.0f")), ("wandb/ (MB)", fmt(s.get("wandb_mb"), ",.0f"))]
    for part in ("recommend", "evaluate"):
        if part in run:
            note = " (stopped: time limit)" if run[part].get("timed_out") else ""
            rows.append((f"`distrib.{part}` (s)", fmt(run[part]["wall_s"]) + note))
    hr = [line.split()[1] for line in run.get("evaluate", {}).get("output", []) if line.split()[:1] == ["hr@10"]]
    if hr:
        rows.append(("`distrib.evaluate` HR@10 (test)", hr[0]))
    if "resume" in run:
        r = run["resume"]
        load = None if r["header_s"] is None or p.get("startup_s") is None else r["header_s"] - p["startup_s"]
        rows += [("resume: start to header (s)", fmt(r["header_s"])),
                 ("resume: checkpoint load (header minus a fresh start's)", fmt(load)),
                 ("resume: start to first progress line (s)", fmt(r["first_progress_s"]))]
    for label in sorted(run.get("peaks_mb", {})):
        rows.append((f"peak RSS {label} (MB)", fmt(run["peaks_mb"][label], ",.0f")))
    for part in ("resume", "recommend", "evaluate"):
        peaks = run.get(part, {}).get("peaks_mb", {})
        ranks = {k: v for k, v in peaks.items() if k.startswith("rank")}
        if ranks:
            rows.append((f"peak RSS {part}, per rank (MB)", " / ".join(fmt(ranks[k], ",.0f") for k in sorted(ranks))))
    return rows


def print_table(header: list[str], columns: dict[str, list[tuple[str, str]]]) -> None:
    names = list(dict.fromkeys(name for rows in columns.values() for name, _ in rows))
    cells = {col: dict(rows) for col, rows in columns.items()}
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name in names:
        print(f"| {name} | " + " | ".join(cells[col].get(name, "") for col in columns) + " |")


def first_epoch(run: dict, test) -> tuple[int, float] | None:
    return next(((e["epoch"], e["end"]) for e in run.get("epochs", []) if test(e.get("val_rmse", 9.9))), None)


def reached(hit: tuple[int, float] | None, epochs: int) -> str:
    return f"epoch {hit[0]}, {hit[1]:.0f} s" if hit else f"not in {epochs} epochs"


def print_accuracy(results: dict) -> None:
    bias, floor = results.get("bias"), results.get("floor")
    baseline = min((e["val_rmse"] for e in bias["epochs"] if "val_rmse" in e), default=None) if bias else None
    print(f"\nvalidation RMSE after each epoch (s since the launch at the epoch's end); bias baseline "
          f"{fmt(baseline, '.4f')} (model.name=bias, best of {len(bias['epochs']) if bias else 0} epoch(s), "
          f"{fmt(bias['epochs'][-1]['end'] if bias and bias['epochs'] else None, '.0f')} s), "
          f"generator's noise floor {fmt(floor, '.4f')}")
    modes = results.get("modes", {})
    most = max((len(r.get("epochs", [])) for r in modes.values()), default=0)
    print("| mode | " + " | ".join(f"epoch {k}" for k in range(1, 1 + most)) + " | beats the baseline | floor + 0.01 |")
    print("|---" * (3 + most) + "|")
    for name, run in modes.items():
        cells = [f"{e.get('val_rmse', 0):.4f} ({e['end']:.0f} s)" for e in run.get("epochs", [])]
        n = len(cells)
        cells += ["-"] * (most - n)
        beat = first_epoch(run, lambda r: baseline is not None and r < baseline)
        near = first_epoch(run, lambda r: floor is not None and r <= floor + 0.01)
        print(f"| {name} | " + " | ".join(cells) + f" | {reached(beat, n)} | {reached(near, n)} |")
    one, two = modes.get("1p-replicated"), modes.get("2r-sharded")
    if one and two:
        diffs = [abs(a["val_rmse"] - b["val_rmse"]) for a, b in zip(one["epochs"], two["epochs"])]
        print("1 process replicated vs 2 ranks sharded, |difference| of validation RMSE by epoch: "
              + ", ".join(f"{d:.4f}" for d in diffs) + " (aim: <= 0.005)")


def print_report(results: dict) -> None:
    m = results.get("machine", {})
    print(f"\nCPU {m.get('cpu')}; torch {m.get('torch')}, capability {m.get('capability')}; {m.get('cpus')} CPUs, "
          f"OMP_NUM_THREADS={m.get('threads')}; load average at start {m.get('load_start')}, "
          f"at end {m.get('load_end')}; {m.get('counts')}")
    if len(results.get("loads", [])) > 1:
        print("load average (1, 5, 15 min) at the start and end of each part: " + "; ".join(results["loads"]))
    prep = results.get("prep")
    if prep:
        print(f"data preparation (generate, encode, split, cache): {prep['cold']['wall_s']:.1f} s, peak "
              f"{prep['cold']['peak_mb']:,.0f} MB; the cache reopened: {prep['warm']['wall_s']:.1f} s "
              "(each a fresh process, imports included)")
    csv = results.get("csv")
    if csv:
        print(f"ratings.csv ({csv['mb']:,.0f} MB) written in {csv['write_s']:.0f} s; prepared as data.name=file "
              f"{csv['prep']['cold']['wall_s']:.1f} s (peak {csv['prep']['cold']['peak_mb']:,.0f} MB), "
              f"reopened {csv['prep']['warm']['wall_s']:.1f} s")
    columns = {name: phase_rows(run) for name, run in results.get("modes", {}).items()}
    if csv and "train" in csv:
        columns[f"csv, {results.get('csv_mode')}"] = phase_rows(csv["train"])
    if results.get("bias"):
        columns["bias baseline"] = phase_rows(results["bias"])
    if columns:
        print("\nseconds per phase and peak resident memory (VmHWM) per process")
        print_table(["phase", *columns], columns)
    if results.get("modes"):
        print_accuracy(results)


def machine_info() -> dict:
    import torch

    from benchmarks.touched_rows import cpu_name

    return {"cpu": cpu_name(), "torch": torch.__version__, "capability": torch.backends.cpu.get_cpu_capability(),
            "cpus": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "1 (set here)"),
            "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="run directories, logs and results.json")
    parser.add_argument("--dataset", choices=tuple(COUNTS), default="ml-25m")
    parser.add_argument("--scale", type=float, default=1.0, help="users, movies and ratings times this")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bias-epochs", type=int, default=1)
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--modes", nargs="+", choices=tuple(MODES), default=list(MODES))
    parser.add_argument("--csv-mode", choices=tuple(MODES), default="1p-replicated")
    parser.add_argument("--log-every-s", type=float, default=2.0)
    parser.add_argument("--evaluate-timeout-s", type=float, default=1800)
    parser.add_argument("--table", action="store_true", help="reprint the tables of --out's results.json")
    args = parser.parse_args()
    args.out = args.out.resolve()
    args.config = REPO / "configs" / f"{args.dataset}.yaml"
    path = args.out / "results.json"
    if args.table:
        print_report(json.loads(path.read_text()))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    results = json.loads(path.read_text()) if path.exists() else {}  # parts run later add to earlier ones
    machine = machine_info()
    results["machine"] = {**machine, **results.get("machine", {})}  # the first invocation's start stays
    results["csv_mode"] = args.csv_mode
    results["machine"]["counts"] = " ".join(synthetic_overrides(args)[1:4]) + f" ({args.dataset}, scale {args.scale})"
    print(results["machine"], flush=True)
    run_parts(args, results)
    results["machine"]["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    results.setdefault("loads", []).append(f"{' '.join(args.parts)}: {machine['load_start']} .. "
                                           f"{results['machine']['load_end']}")
    path.write_text(json.dumps(results, indent=1))
    print_report(results)


if __name__ == "__main__":
    main()
