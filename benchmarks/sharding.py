"""Issue 12: embedding tables sharded with TorchRec against replicated DDP, side by side in one run.

    python -m benchmarks.sharding                      # ml-25m shape, 2 gloo ranks x 1 thread, ~5 min
    python -m benchmarks.sharding --steps 5 --users 20000 --movies 8000      # a smaller, quicker shape
    python -m benchmarks.sharding --accuracy           # also test RMSE, sharded vs replicated, real data

Per mode, on 2 real gloo ranks (1 thread each), EmbeddingNet with `--factors` factors on synthetic ids of the
given shape (uniform over users and movies), global batch `--batch`, torch's fused Adam:
- bytes per step: every collective of one training step, read from torch's profiler (each `c10d::` op with its
  input dims and dtype, so DDP's bucket all-reduces inside the C++ reducer are counted too). All-reduce: the
  buffer; all-to-all: the part of the input addressed to the other rank (its own part never leaves); others:
  the input. Rank 0's count (the ranks are symmetric up to a few ids).
- samples/s over `--steps` timed steps after 2 warm-up steps (the slowest rank's time).
- embedding memory per rank: the tables' parameters plus Adam's two moments, as allocated on that rank.
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


def step_fn(model, optimizer, world_size: int, users, items, ratings):
    def step():
        pred = model(users, items)
        loss = (pred - ratings).pow(2).sum() * world_size
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


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


def worker(rank: int, world_size: int, port: int, args, out_dir: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    from distrib.models import EmbeddingNet
    from distrib.parallel.distributed import wrap_ddp
    from distrib.parallel.sharding import build_sharded, dense_kernels, embedding_bytes
    from distrib.parallel.touched_rows import attach_to_optimizer

    torch.manual_seed(0)
    model = EmbeddingNet(args.users, args.movies, args.factors, [100, 100], [0.0, 0.0], 0.0, 1, 5)
    if args.mode == "none":
        wrapped = wrap_ddp(model, torch.device("cpu"))
        tables = [model.u.weight, model.m.weight]
    else:
        wrapped, _ = build_sharded(model, "embeddingnet", args.mode, torch.device("cpu"),
                                   embedding_update=args.update)
        tables = None
    optimizer = torch.optim.Adam(wrapped.parameters(), lr=1e-3, fused=True)
    if args.update == "touched_rows":
        attach_to_optimizer(dense_kernels(wrapped), optimizer)
    g = torch.Generator().manual_seed(rank + 1)
    local = args.batch // world_size
    users = torch.randint(0, args.users, (local,), generator=g)
    items = torch.randint(0, args.movies, (local,), generator=g)
    ratings = torch.randint(1, 6, (local,), generator=g).float()
    step = step_fn(wrapped, optimizer, world_size, users, items, ratings)
    for _ in range(2):
        step()
    trace = Path(out_dir) / f"trace{rank}.json"
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    prof.export_chrome_trace(str(trace))
    dist.barrier()
    started = time.perf_counter()
    for _ in range(args.steps):
        step()
    dist.barrier()
    seconds = time.perf_counter() - started
    if tables is not None:
        mem = sum(t.numel() * t.element_size() * (1 + len([v for v in optimizer.state[t].values() if v.dim() > 0]))
                  for t in tables)
    else:
        mem = embedding_bytes(wrapped, optimizer)
    result = {"rank": rank, "bytes": wire_bytes(trace, rank, world_size), "seconds": seconds, "mem": mem}
    (Path(out_dir) / f"result{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def run_mode(mode: str, world_size: int, args, update: str = "dense") -> dict:
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        ns = argparse.Namespace(**vars(args), mode=mode, update=update)
        port = 29000 + os.getpid() % 1000 + world_size
        mp.spawn(worker, args=(world_size, port, ns, out), nprocs=world_size, join=True)
        results = [json.loads((Path(out) / f"result{r}.json").read_text()) for r in range(world_size)]
    seconds = max(r["seconds"] for r in results)
    return {"bytes": results[0]["bytes"], "samples_per_s": args.steps * args.batch / seconds,
            "mem": max(r["mem"] for r in results)}


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
    parser.add_argument("--factors", type=int, default=150)
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--accuracy", action="store_true")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=10, help="--accuracy: epochs per run")
    parser.add_argument("--accuracy-only", action="store_true")
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    if args.accuracy_only:
        return accuracy(args.seeds, args.epochs)
    print(f"{args.users} users x {args.movies} movies, {args.factors} factors, global batch {args.batch}, "
          f"2 gloo ranks x 1 thread, {args.steps} timed steps")
    columns = {"replicated": run_mode("none", 2, args), "row_wise dense": run_mode("row_wise", 2, args),
               "row_wise touched": run_mode("row_wise", 2, args, "touched_rows")}
    one = run_mode("row_wise", 1, args)
    rep = columns["replicated"]
    print(f"{'':34s}" + "".join(f"{name:>18s}" for name in columns) + "   ratios to replicated")
    rows = [("bytes to collectives / step / rank", "bytes", lambda v: f"{v / 1e6:.2f} MB"),
            ("samples/s", "samples_per_s", lambda v: f"{v:.0f}"),
            ("embedding params+Adam / rank", "mem", lambda v: f"{v / 1e6:.1f} MB")]
    for label, key, show in rows:
        ratios = "  ".join(f"{columns[name][key] / rep[key]:.3f}" for name in list(columns)[1:])
        print(f"{label:34s}" + "".join(f"{show(c[key]):>18s}" for c in columns.values()) + f"   {ratios}")
    sharded = columns["row_wise dense"]
    print(f"row_wise on 1 rank: {one['mem'] / 1e6:.1f} MB embedding params+Adam; 2 ranks hold "
          f"{sharded['mem'] / one['mem']:.3f} of it each")
    if args.accuracy:
        accuracy(args.seeds, args.epochs)


if __name__ == "__main__":
    main()
