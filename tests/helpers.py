"""Shared test helpers: real subprocess launches (python -m, torchrun) and real gloo process groups."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "data.name=synthetic", "data.synthetic.n_users=300", "data.synthetic.n_items=200",
    "data.synthetic.n_ratings=12000", "model.n_factors=8", "model.hidden=[32]", "model.dropouts=[0.1]",
    "model.embedding_dropout=0.02", "train.batch_size=500", "train.epochs=3", "train.log_every_steps=5",
    "dist.timeout_s=60", "train.precision=fp32",  # fp32 everywhere: bf16 (auto on AMX CPUs) is not exact across world sizes
]


NO_DROPOUT = ["model.dropouts=[0]", "model.embedding_dropout=0"]
# What the sharded runs compared with replicated ones train (test_sharding, test_sharded_parity): exact arithmetic
# without dropout, the bias tables sharded too, 2 epochs (a rotated last.1 checkpoint)
SHARDED_COMPARISON = [*NO_DROPOUT, "train.epochs=2", "model.bias=true"]


def tiny(tmp_path: Path, run: str = "run", *extra: str) -> list[str]:
    return TINY + [f"data.root={tmp_path / 'data'}", f"run.dir={tmp_path / run}", *extra]


def in_ci() -> bool:
    """Whether this is CI: `CI` set to anything but an explicit no."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def skip_or_fail(reason: str) -> None:
    """A missing prerequisite: a skip locally, a failure in CI (where nothing required may skip)."""
    if in_ci():
        pytest.fail(f"CI: {reason}")
    pytest.skip(reason)


def clean_env(threads: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "TORCHELASTIC_")) and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1", WANDB_MODE="offline", WANDB_SILENT="true")
    return env


def train_cli(args: list[str], nproc: int = 0, timeout: float = 300, env: dict | None = None,
              extra_torchrun: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """nproc=0: plain `python -m distrib.train`; otherwise torchrun --standalone with nproc ranks."""
    if nproc:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               *extra_torchrun, "-m", "distrib.train", *args]
    else:
        cmd = [sys.executable, "-m", "distrib.train", *args]
    return subprocess.run(cmd, cwd=REPO, env=env or clean_env(), capture_output=True, text=True, timeout=timeout)


def run_module(module: str, *args, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root, W&B off; output captured."""
    env = {**clean_env(), "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout_s)


def check_ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return proc


def summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


def weights(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def sharded_weights(run_dir: Path, name: str = "last") -> dict:
    """The whole model's state dict from a sharded run's checkpoint (name.dcp), read in this one process."""
    from distrib.checkpoint.sharded import read_meta, read_model_state
    from distrib.config import load_config
    from distrib.models import build_model

    cfg = load_config(str(run_dir / "config.yaml"))
    sizes = read_meta(run_dir / "checkpoints" / f"{name}.dcp")["data"]
    model = build_model(cfg.model, sizes["n_users"], sizes["n_items"], sizes["rating_min"], sizes["rating_max"])
    return read_model_state(run_dir / "checkpoints" / f"{name}.dcp", model)


def assert_equal_weights(got: dict, want: dict) -> None:
    """The same tensors under the same keys, bit for bit."""
    assert got.keys() == want.keys()
    for key in want:
        assert torch.equal(got[key], want[key]), key


def digest(path: Path) -> dict:
    """Every file under path (but `.lock`, which names whoever holds run.dir now) by its SHA-256."""
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


def max_rel_diff(a: dict, b: dict) -> float:
    return max(((a[k].float() - b[k].float()).abs().max() / a[k].float().abs().max().clamp_min(1e-12)).item()
               for k in a)


def _worker(rank: int, world_size: int, store_path: str, fn, args, results):
    from distrib.parallel.distributed import import_before_group

    torch.set_num_threads(1)
    import_before_group()  # so that destroy_process_group below really ends gloo's threads
    store = dist.FileStore(store_path, world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size)
    try:
        results[rank] = fn(rank, world_size, *args)
    finally:
        dist.destroy_process_group()


def spawn_ranks(fn, world_size: int, *args) -> list:
    """Run fn(rank, world_size, *args) in world_size real processes joined by a gloo group; return results."""
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_worker, args=(world_size, os.path.join(tmp, "store"), fn, args, results),
                           nprocs=world_size, join=True, start_method="spawn")
        return [results[r] for r in range(world_size)]


def fill(point: Path, leave_bytes: int) -> Path:
    """Fill the filesystem to the last byte, then give back `leave_bytes`."""
    filler = point / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 65536):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(filler.stat().st_size - leave_bytes, 0))
    return filler


def check_sharded_config(cfg) -> None:
    """The sharded trainer's checks before any collective. Its config conflicts come first and always run; where
    TorchRec is not installed (the unit layer's newest-torch environment) the one refusal left is TorchRec's
    absence, which then means the config itself passed."""
    from distrib.errors import UserError
    from distrib.training.sharded_trainer import check_sharding_config

    try:
        check_sharding_config(cfg)
    except UserError as err:
        try:
            import torchrec  # noqa: F401
        except Exception:  # noqa: BLE001 (absent, or a CUDA fbgemm that cannot load on this torch)
            if "needs TorchRec and FBGEMM" in str(err):
                return
        raise
