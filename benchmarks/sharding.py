"""Sharded embedding tables (TorchRec, row_wise) against replicated DDP: samples/s side by side, fp32 and bf16.

    python -m benchmarks.sharding                     # ml-25m's shape, 2 gloo ranks x 1 thread, 10-20 min
    python -m benchmarks.sharding --rounds 2 --steps 10 --users 20000 --movies 8000      # a quick look
    python -m benchmarks.sharding --profile           # + where a sharded step's time goes (torch.profiler)
    python -m benchmarks.sharding --accuracy-only     # test RMSE, sharded vs replicated, real data

On 2 real gloo ranks (1 thread each), distrib's own trainers (`Trainer`, `ShardedTrainer`: the step the training
loop runs, `train_step`: autocast, summed MSE, backward, optimizer, schedule) for the article's model
(configs/ml-100k-article.yaml: 150 factors, [500, 500, 500], dropouts [0.5, 0.5, 0.25], embedding dropout
0.05, Adam, global batch 2000) on synthetic ratings of the given shape (user and movie ids uniform: the most
distinct rows a batch can touch). Four trainers live in the same two processes (replicated and row_wise,
each in fp32 and bf16) and take turns, `--steps` steps each per round, `--rounds` rounds in a rotating
order, so that a shared machine's load falls on all of them alike; samples/s is over all timed steps (the
slowest rank's clock: each turn ends in a barrier). Also: the bytes one step hands to collectives (torch's
profiler: each `c10d::` op's input dims and dtype; all-to-all: the part addressed to the other rank) and the
tables' parameters + Adam moments per rank.
With --accuracy (or --accuracy-only): ml-100k u1 and ml-latest-small, the article's EmbeddingNet config cut to
--epochs, seeds --seeds, `dist.embedding_sharding` none against row_wise, both on 2 ranks (the same dropout
masks), test RMSE of each (the MovieLens files from DISTRIB_TEST_DATA, else data.root's default).
Prints figures; asserts nothing about time.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ML_25M = (162_541, 59_047)
MODES = ("none", "row_wise")
PRECISIONS = ("fp32", "bf16")


def wire_bytes(trace: Path, rank: int, world_size: int) -> int:
    """Bytes this rank hands to collectives in the profiled step (see the module docstring)."""
    total = 0
    for event in json.loads(trace.read_text())["traceEvents"]:
        name, args = event.get("name", ""), event.get("args", {})
        if not name.startswith("c10d::") or "Input Dims" not in args:
            continue
        dims, types, concrete = args["Input Dims"], args.get("Input type", []), args.get("Concrete Inputs", [])
        if "alltoall" in name:  # alltoall_base_(output, input, group, output_splits, input_splits, ...)
            numel = _numel(dims[1])
            splits = json.loads(concrete[4]) if len(concrete) > 4 and concrete[4] else []
            rows = sum(splits) or world_size
            own = splits[rank] if splits else 1
            total += numel * (rows - own) // rows * DTYPE_BYTES.get(types[1], 4)
        else:  # all-reduce, all-gather, broadcast: a tensor list; the profiler records no dtype for one (fp32 here)
            total += sum(_numel(d) for d in dims[0]) * DTYPE_BYTES.get(types[0], 4) if dims and dims[0] else 0
    return total


DTYPE_BYTES = {"float": 4, "c10::BFloat16": 2, "c10::Half": 2, "long int": 8, "int": 4, "double": 8}


def _numel(dims) -> int:
    numel = 1
    for d in dims:
        numel *= d
    return numel


def synthetic_data(n_users: int, n_movies: int, n_ratings: int, seed: int = 0):
    """PreparedData of the given shape: uniform ids, ratings 1..5 (the same on every rank)."""
    import numpy as np

    from distrib.data import PreparedData, RatingSplit

    rng = np.random.default_rng(seed)

    def split(n):
        return RatingSplit(users=rng.integers(0, n_users, n), items=rng.integers(0, n_movies, n),
                           ratings=rng.integers(1, 6, n).astype(np.float32))

    return PreparedData(train=split(n_ratings), val=split(0), test=None, n_users=n_users, n_items=n_movies,
                        rating_min=1.0, rating_max=5.0, user_ids=np.arange(n_users), item_ids=np.arange(n_movies))


def build_trainers(rank: int, world_size: int, args, run_root: Path) -> dict:
    """(precision, mode) -> a distrib trainer of this rank, over a throw-away run directory each."""
    import torch

    from benchmarks.harness import ARTICLE_CONFIG
    from distrib.checkpoint.rundir import RunDir
    from distrib.config import load_config
    from distrib.parallel.distributed import DistEnv
    from distrib.training.sharded_trainer import ShardedTrainer
    from distrib.training.trainer import Trainer

    env = DistEnv(rank=rank, local_rank=rank, world_size=world_size, master_addr="127.0.0.1", master_port=0,
                  launcher="torchrun")
    data = synthetic_data(args.users, args.movies, args.batch * args.batches)
    trainers = {}
    for precision in PRECISIONS:
        for mode in MODES:
            cfg = load_config(str(ARTICLE_CONFIG), [f"train.batch_size={args.batch}", f"train.precision={precision}",
                                                    f"dist.embedding_sharding={mode}"])
            run = RunDir(run_root / f"{precision}-{mode}-rank{rank}")
            run.open()
            cls = ShardedTrainer if mode != "none" else Trainer
            trainers[precision, mode] = cls(cfg, env, torch.device("cpu"), data, run)
            trainers[precision, mode].ddp.train()
    return trainers


def batch_indices(trainer, step: int):
    """This rank's part of the step-th global batch (cycling through the training split)."""
    import torch

    from distrib.parallel.sampler import rank_slice

    batch, env = trainer.cfg.train.batch_size, trainer.env
    lo, hi = rank_slice(batch, env.rank, env.world_size)
    offset = (step % trainer.steps_per_epoch) * batch
    return torch.arange(offset + lo, offset + hi)


def worker(rank: int, world_size: int, port: int, args, out_dir: str) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    sys.path.insert(0, str(REPO))
    with tempfile.TemporaryDirectory(prefix="distrib-bench-sharding-") as tmp:
        trainers = build_trainers(rank, world_size, args, Path(tmp))
        keys = list(trainers)
        for key in keys:  # warm-up: allocator, oneDNN's kernels, Adam's state
            for step in range(3):
                trainers[key].train_step(batch_indices(trainers[key], step))
        result = {"bytes": {}, "mem": {}, "seconds": {f"{p} {m}": 0.0 for p, m in keys}}
        for key in keys:
            result["bytes"][" ".join(key)] = profiled_bytes(trainers[key], rank, world_size, Path(tmp))
            result["mem"][" ".join(key)] = table_bytes(trainers[key])
        step = 3
        for round_ in range(args.rounds):
            for key in keys[round_ % len(keys):] + keys[:round_ % len(keys)]:
                trainer = trainers[key]
                dist.barrier()
                started = time.perf_counter()
                for _ in range(args.steps):
                    trainer.train_step(batch_indices(trainer, step))
                    step += 1
                dist.barrier()
                result["seconds"][" ".join(key)] += time.perf_counter() - started
        if args.profile:
            result["profile"] = {precision: profile_sharded(trainers[precision, "row_wise"], args.steps)
                                 for precision in PRECISIONS}
        for trainer in trainers.values():
            trainer.run.close()
    (Path(out_dir) / f"result{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def profiled_bytes(trainer, rank: int, world_size: int, tmp: Path) -> int:
    from torch.profiler import ProfilerActivity, profile

    trace = tmp / f"trace{rank}.json"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        trainer.train_step(batch_indices(trainer, 0))
    prof.export_chrome_trace(str(trace))
    return wire_bytes(trace, rank, world_size)


def table_bytes(trainer) -> int:
    """The tables' parameters plus their optimizer moments on this rank."""
    from distrib.parallel.sharding import embedding_bytes

    if trainer.cfg.dist.embedding_sharding != "none":
        return embedding_bytes(trainer.ddp, trainer.optimizer)
    model, state = trainer.model, trainer.optimizer.state
    tables = [model.u.weight, model.m.weight]
    return sum(t.numel() * t.element_size() * (1 + len([v for v in state[t].values() if v.dim() > 0]))
               for t in tables)


# Where a sharded step's time goes: the profiler's operators (self CPU time) grouped by what they do.
PROFILE_GROUPS = (
    ("collectives: all-to-all (ids, rows, row gradients), all-reduce (MLP), waits",
     ("c10d::", "alltoall", "all_to_all", "allreduce", "wait")),
    ("MLP matmuls (forward and backward)", ("aten::addmm", "aten::mm", "mkldnn", "aten::bmm")),
    ("touched-row update (Adam/LAMB on the looked-up rows)", ("touched_rows:",)),
    ("lookups and input bookkeeping (KJT, index_select, permutes)",
     ("index_select", "fbgemm::", "torchrec::", "aten::cat", "repeat_interleave", "aten::unique")),
)


def profile_sharded(trainer, steps: int) -> dict:
    """ms per step by group of operators, and the top operators, over `steps` profiled steps."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        started = time.perf_counter()
        for step in range(steps):
            trainer.train_step(batch_indices(trainer, step))
        wall_ms = 1e3 * (time.perf_counter() - started) / steps
    events = prof.key_averages()
    groups = {label: 0.0 for label, _ in PROFILE_GROUPS}
    groups["everything else"] = 0.0
    for event in events:
        if event.key.startswith("touched_rows:"):  # our own range: its whole time
            groups[PROFILE_GROUPS[2][0]] += event.cpu_time_total / 1e3 / steps
            continue
        label = next((label for label, patterns in PROFILE_GROUPS if any(p in event.key for p in patterns)),
                     "everything else")
        groups[label] += event.self_cpu_time_total / 1e3 / steps
    top = sorted(events, key=lambda e: -e.self_cpu_time_total)[:15]
    return {"wall_ms": wall_ms, "groups": groups,
            "top": [(e.key[:60], e.self_cpu_time_total / 1e3 / steps, e.count // steps) for e in top]}


def run_side_by_side(args) -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        port = 29000 + os.getpid() % 1000
        mp.spawn(worker, args=(2, port, args, out), nprocs=2, join=True)
        return [json.loads((Path(out) / f"result{r}.json").read_text()) for r in range(2)]


def print_side_by_side(results: list[dict], args) -> None:
    timed = args.rounds * args.steps * args.batch
    seconds = {key: max(r["seconds"][key] for r in results) for key in results[0]["seconds"]}
    rate = {key: timed / s for key, s in seconds.items()}
    rows = [("samples/s", rate, lambda v: f"{v:,.0f}"),
            ("bytes to collectives / step / rank", results[0]["bytes"], lambda v: f"{v / 1e6:.2f} MB"),
            ("tables + Adam moments / rank", {k: max(r["mem"][k] for r in results) for k in rate},
             lambda v: f"{v / 1e6:.1f} MB")]
    print(f"{'':36s}" + "".join(f"{p + ' ' + m:>18s}" for p in PRECISIONS for m in MODES)
          + "   row_wise / none: fp32, bf16")
    for label, values, show in rows:
        ratios = "  ".join(f"{values[p + ' row_wise'] / values[p + ' none']:.2f}" for p in PRECISIONS)
        print(f"{label:36s}" + "".join(f"{show(values[p + ' ' + m]):>18s}" for p in PRECISIONS for m in MODES)
              + f"   {ratios}")
    print(f"bf16 over fp32: replicated {rate['bf16 none'] / rate['fp32 none']:.2f}x, "
          f"row_wise {rate['bf16 row_wise'] / rate['fp32 row_wise']:.2f}x")
    if "profile" in results[0]:
        for precision, prof in results[0]["profile"].items():
            print(f"\nrow_wise {precision}, rank 0, {args.steps} profiled steps: {prof['wall_ms']:.1f} ms/step "
                  "(profiler on); self CPU ms per step by group:")
            for label, ms in prof["groups"].items():
                print(f"  {ms:7.2f}  {label}")
            print("  top operators (self CPU ms/step, calls/step):")
            for name, ms, count in prof["top"]:
                print(f"  {ms:7.2f}  {count:4d}  {name}")


ACCURACY_CASES = {  # the article's EmbeddingNet (configs/ml-100k-article.yaml), cut to --epochs epochs
    "ml-100k u1": [],
    "ml-latest-small": ["data.name=ml-latest-small", "data.split=random", "data.test_fraction=0.2",
                        "data.split_seed=1"],
}


def accuracy(seeds: list[int], epochs: int) -> None:
    data = os.environ.get("DISTRIB_TEST_DATA")
    print(f"\ntest RMSE (best-validation weights), configs/ml-100k-article.yaml for {epochs} epochs, 2 ranks each:")
    for label, extra in ACCURACY_CASES.items():
        for seed in seeds:
            rmse = {}
            for mode in ("none", "row_wise"):  # row_wise with the default dist.embedding_update=touched_rows
                with tempfile.TemporaryDirectory() as tmp:
                    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "distrib.train", "configs/ml-100k-article.yaml", *extra, f"train.seed={seed}",
                           f"train.epochs={epochs}", f"run.dir={tmp}/run", f"dist.embedding_sharding={mode}",
                           *([f"data.root={data}"] if data else [])]
                    proc = subprocess.run(cmd, cwd=REPO, check=False, capture_output=True, text=True,
                                          env=os.environ | {"OMP_NUM_THREADS": "1"})
                    if proc.returncode:
                        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
                    rmse[mode] = json.loads((Path(tmp) / "run/summary.json").read_text())["test_rmse"]
            print(f"  {label:16s} seed {seed}: replicated {rmse['none']:.4f}  row_wise touched_rows {rmse['row_wise']:.4f}  "
                  f"difference {rmse['row_wise'] - rmse['none']:+.6f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=ML_25M[0])
    parser.add_argument("--movies", type=int, default=ML_25M[1])
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=50, help="distinct global batches the steps cycle through")
    parser.add_argument("--steps", type=int, default=25, help="steps per trainer per round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10, help="--accuracy: epochs per run")
    parser.add_argument("--accuracy-only", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.accuracy_only:
        return accuracy(args.seeds, args.epochs)
    import torch

    from distrib.training.precision import cpu_description

    print(f"{cpu_description()}, torch {torch.__version__}; {args.users:,} users x {args.movies:,} movies, the "
          f"article's model, global batch {args.batch}, 2 gloo ranks x 1 thread; {args.rounds} rounds x "
          f"{args.steps} steps per trainer, interleaved")
    print_side_by_side(run_side_by_side(args), args)
    if args.accuracy:
        accuracy(args.seeds, args.epochs)


if __name__ == "__main__":
    main()
