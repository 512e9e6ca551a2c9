"""Everything that needs a GPU machine, in one prepared pass: the one GPU entry point.

    python -m benchmarks.gpu --out $OUT [--data-root DIR]                # one CUDA GPU, from the repo root
    python -m benchmarks.gpu --out DIR --device cpu --smoke              # every part at toy sizes, on CPU
    python -m benchmarks.gpu --out $OUT --parts job --limit job=300      # one part, a longer limit

Parts, in this order, each a subprocess under its own time limit (`--limit PART=SECONDS`); each writes
PART.json (its figures, rewritten after every row, so a part stopped at its limit keeps what it measured) and
PART.log (all it printed) to --out, and the figure lines are echoed here:
- throughput (`benchmarks.gpu_throughput`): the article's model at ml-25m's shape, global batch 2k/32k/128k,
  replicated (fp32 eager; bf16 eager / train.compile / train.cuda_graph) and sharded (row_wise, 1-process
  torchrun): samples/s and the share of the measured bf16 matmul rate side by side; a profile of the fastest.
- accuracy (`benchmarks.gpu_accuracy`): the fastest replicated configuration (read from throughput.json)
  trained to early stopping on ml-100k u1 and ml-latest-small, test RMSE beside the batch-2000 figures.
- job (`benchmarks.gpu_job`): the real job under torchrun (NCCL on CUDA): ml-25m's config on synthetic data of
  its shape, replicated (SIGKILLed mid-epoch, then resumed) and sharded; the quick start; configs/ml-100k.yaml;
  the captured step through the entry point.
- cpu (only when named): 1 rank x 1 thread against 2 gloo ranks (`benchmarks.scaling`) and the article loop
  against distrib (`benchmarks.throughput --quick`), on the GPU machine's quiet many-core host.
Run directories and data caches go to --work (a temporary folder by default), never to --out: what comes back
from a lent machine is a handful of files. Asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.harness import REPO, time_call
from distrib.data import PreparedData, RatingSplit

ML_25M = (162_541, 59_047)  # users, movies of MovieLens 25M
PARTS = ("throughput", "accuracy", "job", "cpu")
DEFAULT_PARTS = ("throughput", "accuracy", "job")
# A lent GPU machine runs one command for at most 10 minutes: the default parts' limits add up to 9.5 (CPU
# smoke runs get SMOKE_CPU_LIMIT_FACTOR times as long).
LIMITS_S = {"throughput": 190, "accuracy": 110, "job": 270, "cpu": 300}
FIGURE_MARKS = ("|", "=")  # the lines a part prints for this summary: table rows and one-line results


@dataclass(frozen=True)
class Scale:
    """The throughput sizes of one pass (the other parts keep their own smoke settings): the real pass on a GPU,
    or toy sizes that check every part in a minute or two."""

    users: int
    items: int
    batches: tuple[int, ...]
    steps: int  # steps per timed epoch: the step's cost does not depend on the epoch's length
    epochs: int  # timed epochs per row
    profile_steps: int
    smoke: bool = False


FULL = Scale(users=ML_25M[0], items=ML_25M[1], batches=(2000, 32000, 128000), steps=30, epochs=2, profile_steps=20)
SMOKE = Scale(users=2000, items=1000, batches=(256, 512, 1024), steps=2, epochs=1, profile_steps=2, smoke=True)


# Smoke runs of the accuracy and job parts train a small model: they check the runs, not the article's figures.
SMOKE_MODEL = ("model.n_factors=8", "model.hidden=[32]", "model.dropouts=[0.1]")
SMOKE_CPU_LIMIT_FACTOR = 3  # a loaded 2-core CPU starts processes and trains slower than a GPU machine


def scale(smoke: bool) -> Scale:
    return SMOKE if smoke else FULL


def part_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every part takes (the entry point passes them on)."""
    parser.add_argument("--out", type=Path, required=True, help="figures (PART.json) and logs")
    parser.add_argument("--work", type=Path, required=True, help="run directories and data caches")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="toy sizes: checks that the part works")
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("DISTRIB_TEST_DATA", "data")),
                        help="holds ml-100k/ and ml-latest-small/")


class Figures:
    """One part's PART.json, rewritten whole after each change (atomically: a reader never sees half a file)."""

    def __init__(self, path: Path, **header):
        self.path = path
        self.data = {**header, "rows": []}
        self.save()

    def add_row(self, row: dict) -> dict:
        self.data["rows"].append(row)
        self.save()
        return row

    def set(self, **values) -> None:
        self.data.update(values)
        self.save()

    def save(self) -> None:
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)


def machine(device: str) -> dict:
    """What the figures were measured on."""
    from distrib.training.precision import cpu_description

    info = {"cpu": cpu_description(), "torch": torch.__version__, "python": platform.python_version()}
    if device == "cuda":
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    nccl=".".join(map(str, torch.cuda.nccl.version())))
    return info


def synthetic(n_users: int, n_items: int, n_ratings: int, seed: int = 0) -> PreparedData:
    """Uniform random ratings over an id space: enough for timing a step (its cost ignores the values)."""
    rng = np.random.default_rng(seed)

    def split(n):
        return RatingSplit(rng.integers(0, n_users, n), rng.integers(0, n_items, n),
                           rng.integers(1, 6, n).astype(np.float32))

    n_val = max(2000, n_ratings // 100)
    return PreparedData(train=split(n_ratings), val=split(n_val), test=None, n_users=n_users, n_items=n_items,
                        rating_min=1.0, rating_max=5.0, user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                        description=f"synthetic {n_users} users, {n_items} items, {n_ratings} ratings")


def device_rates(device: str) -> dict:
    """Measured matmul FLOP/s per precision (square products: 8192 on a GPU, 512 on a CPU) and the device's
    copy bandwidth (bytes read + written per second)."""
    on_gpu = device == "cuda"
    n = 8192 if on_gpu else 512
    sync = torch.cuda.synchronize if on_gpu else (lambda: None)
    rates = {}
    for name, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                              ("bf16", torch.bfloat16, False)):
        if tf32 and not on_gpu:
            continue
        torch.backends.cuda.matmul.allow_tf32 = tf32
        a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
        rates[name] = 2 * n ** 3 / time_call(lambda a=a, b=b: (a @ b, sync()), repeat=10 if on_gpu else 3, warmup=2)
    torch.backends.cuda.matmul.allow_tf32 = False
    source = torch.empty(2 ** 28 if on_gpu else 2 ** 22, device=device)  # 1 GiB on a GPU
    target = torch.empty_like(source)
    seconds = time_call(lambda: (target.copy_(source), sync()), repeat=10 if on_gpu else 3)
    rates["copy_bytes_per_s"] = 2 * source.numel() * source.element_size() / seconds
    return rates


# ---- the entry point ---------------------------------------------------------------------------------------
@dataclass
class Outcome:
    part: str
    status: str  # ok, failed (exit code N), timed out after N s
    seconds: float
    figures: list[str] = field(default_factory=list)


def run_part(part: str, args, work: Path, say) -> Outcome:
    """One part as a subprocess under its limit; its output goes to PART.log, its figure lines to `say`."""
    limit = args.limits[part]
    say(f"== {part} (limit {limit} s)")
    log = args.out / f"{part}.log"
    py = sys.executable
    if part == "cpu":
        return run_cpu_part(args, log, limit, say)
    cmd = [py, "-m", f"benchmarks.gpu_{part}", "--out", str(args.out), "--work", str(work / part),
           "--device", args.device, "--data-root", str(args.data_root), *(["--smoke"] if args.smoke else [])]
    started = time.perf_counter()
    status = launch(cmd, log, limit)
    outcome = Outcome(part, status, time.perf_counter() - started)
    lines = log.read_text(errors="replace").splitlines()
    outcome.figures = [line for line in lines if line.startswith(FIGURE_MARKS)]
    for line in outcome.figures:
        say(line)
    if status != "ok":
        say(f"{part}: {status}; the last lines of {log.name}:")
        for line in lines[-15:]:
            say("   " + line)
    say(f"   {part}: {status}, {outcome.seconds:.0f} s")
    return outcome


def launch(cmd: list[str], log: Path, limit_s: float, env: dict | None = None) -> str:
    """Run `cmd` from the repo root with its output in `log`; at the limit it is killed with all it started."""
    with open(log, "a") as handle:
        proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                stdout=handle, stderr=subprocess.STDOUT)
        return wait_or_kill(proc, limit_s)


def wait_or_kill(proc: subprocess.Popen, limit_s: float) -> str:
    try:
        code = proc.wait(timeout=max(limit_s, 0.1))
    except subprocess.TimeoutExpired:
        kill_tree(proc.pid)
        proc.wait()
        return f"timed out after {limit_s:.0f} s"
    return "ok" if code == 0 else f"failed (exit code {code})"


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc. torchrun starts each worker in a session of its own, so killing a
    process group would leave the workers running (and holding the GPU) after their part ended."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])  # the field after the command's name
        except (OSError, IndexError, ValueError):
            continue  # ended meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(pid: int, only_descendants: bool = False) -> None:
    """SIGKILL `pid` and every process below it (only those below it: a crash of the workers alone)."""
    for target in descendants(pid) + ([] if only_descendants else [pid]):
        try:
            os.kill(target, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_cpu_part(args, log: Path, limit_s: float, say) -> Outcome:
    """The host CPU's figures: two scripts that print their own tables (in cpu.log)."""
    py, started = sys.executable, time.perf_counter()
    single_thread = {"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    statuses = [launch([py, "-m", "benchmarks.scaling", "--precision", "bf16", "--epochs", "2", "--setups",
                        "buckets-1mb"], log, limit_s / 2, single_thread),
                launch([py, "-m", "benchmarks.throughput", "--quick"], log, limit_s / 2,
                       {**single_thread, "DISTRIB_TEST_DATA": str(args.data_root)})]
    status = next((s for s in statuses if s != "ok"), "ok")
    say(f"   cpu: {status}, {time.perf_counter() - started:.0f} s (tables in {log.name})")
    return Outcome("cpu", status, time.perf_counter() - started)


def parse_limits(items: list[str], default_factor: float = 1) -> dict:
    limits = {part: seconds * default_factor for part, seconds in LIMITS_S.items()}
    for item in items:
        part, _, seconds = item.partition("=")
        if part not in PARTS or not seconds.replace(".", "", 1).isdigit():
            raise SystemExit(f"--limit {item}: expected PART=SECONDS with PART one of {', '.join(PARTS)}")
        limits[part] = float(seconds)
    return limits


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or "/tmp/distrib-gpu"),
                        help="figures and logs (default $OUT)")
    parser.add_argument("--work", type=Path, help="run directories and caches (default: a new temporary folder)")
    parser.add_argument("--parts", nargs="+", default=list(DEFAULT_PARTS), choices=PARTS)
    parser.add_argument("--data-root", type=Path, default=Path(os.environ.get("DISTRIB_TEST_DATA", REPO / "data")),
                        help="holds ml-100k/ and ml-latest-small/ (default $DISTRIB_TEST_DATA, else data/)")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--smoke", action="store_true", help="every part at toy sizes (a minute or two on CPU)")
    parser.add_argument("--limit", dest="limits", action="append", default=[], metavar="PART=SECONDS",
                        help=f"a part's time limit (defaults: {LIMITS_S})")
    args = parser.parse_args(argv)
    args.limits = parse_limits(args.limits, SMOKE_CPU_LIMIT_FACTOR if args.smoke and args.device == "cpu" else 1)
    args.out, args.data_root = args.out.resolve(), args.data_root.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    work = (args.work or Path(tempfile.mkdtemp(prefix="distrib-gpu-work-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    with open(args.out / "gpu.log", "w") as transcript:
        def say(line: str) -> None:
            print(line, flush=True)
            transcript.write(line + "\n")
            transcript.flush()

        say(f"benchmarks.gpu: parts {' '.join(args.parts)} on {args.device}{' at toy sizes' if args.smoke else ''}; "
            f"figures in {args.out}, runs in {work}")
        say("= " + json.dumps(host(args.device)))
        outcomes = [run_part(part, args, work, say) for part in args.parts]
        say("== done: " + ", ".join(f"{o.part} {o.status} ({o.seconds:.0f} s)" for o in outcomes))
    return 0 if all(o.status == "ok" for o in outcomes) else 1


def host(device: str) -> dict:
    """The machine, without initialising CUDA in this process (the parts need the whole GPU)."""
    from distrib.training.precision import cpu_description

    info = {"cpu": cpu_description(), "torch": torch.__version__}
    if device == "cuda":
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
            smi = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
            info["gpu"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.SubprocessError) as err:
            info["gpu"] = f"nvidia-smi: {err}"
    return info


if __name__ == "__main__":
    sys.exit(main())
