"""Embedding tables sharded with TorchRec (dist.embedding_sharding): real torchrun ranks, real gloo, real
TorchRec and DCP. Weights compared with the replicated run of the same config; checkpoints resumed at the
same and at another world size; the single-process readers (evaluate, recommend, PCA) on a sharded run."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from distrib.checkpoint.sharded import read_meta
from distrib.config import load_config
from distrib.models import build_model
from tests.helpers import (
    NO_DROPOUT,
    REPO,
    SHARDED_COMPARISON,
    check_ok,
    clean_env,
    digest,
    metrics,
    sharded_weights,
    summary,
    tiny,
    train_cli,
    weights,
)
from tests.wandb_records import read_wandb_run

pytestmark = pytest.mark.slow


def rel_l2(a: dict, b: dict) -> float:
    return max(((a[k].float() - b[k].float()).norm() / a[k].float().norm().clamp_min(1e-12)).item() for k in a)


@pytest.mark.timeout(900)  # six short trainings and two readers
def test_sharded_weights_equal_replicated_on_1_2_3_ranks_and_readers_need_no_group(tmp_path, sharded_dense_run):
    args = SHARDED_COMPARISON
    check_ok(train_cli(tiny(tmp_path, "replicated", *args)))
    reference = weights(tmp_path / "replicated/checkpoints/last.pt")
    # dense: replicated mode's update, so the replicated weights; touched_rows: lazy Adam, the same on any
    # number of ranks (compared with its own 1-rank run)
    runs = {"s2d": (2, "row_wise", "dense"), "s3": (3, "table_wise", "dense"),
            "t1": (0, "row_wise", "touched_rows"), "s2": (2, "row_wise", "touched_rows"),
            "t3": (3, "table_wise", "touched_rows")}
    shutil.copytree(sharded_dense_run, tmp_path / "s2d")  # "s2d", trained once for the session
    for name, (nproc, mode, update) in runs.items():
        if name == "s2d":
            continue
        extra = ["tracking.mode=offline"] if name == "s2" else []
        check_ok(train_cli(tiny(tmp_path, name, *args, *extra, f"dist.embedding_sharding={mode}",
                                f"dist.embedding_update={update}"), nproc=nproc))
    references = {"dense": ("replicated", reference), "touched_rows": ("t1", sharded_weights(tmp_path / "t1"))}
    assert rel_l2(reference, references["touched_rows"][1]) > 1e-3  # the lazy update really differs
    for name, (_, mode, update) in runs.items():
        reference_run, reference_weights = references[update]
        if name == reference_run:
            continue
        diff = rel_l2(reference_weights, sharded_weights(tmp_path / name))
        print(f"{name} ({mode}, {update}): max relative L2 distance to {reference_run} {diff:.2e}")
        assert diff <= 1e-4
        assert summary(tmp_path / name)["best_val_rmse"] == pytest.approx(
            summary(tmp_path / reference_run)["best_val_rmse"], rel=1e-5)
    run = tmp_path / "s2"
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["best.dcp", "last.1.dcp", "last.dcp"], names  # the rotation contract, no temp dirs left
    record = read_wandb_run(run)  # the PCA plot and the movie-embedding table from the gathered tables
    assert any("plots/embedding_pca" in row for row in record["history"])
    tables = [row["embeddings/movies"] for row in record["history"] if "embeddings/movies" in row]
    assert tables and (run / "plots" / "embedding_pca.png").is_file()
    proc = check_ok(subprocess.run([sys.executable, "-m", "distrib.evaluate", str(run), "--json"], cwd=REPO,
                                   check=False, env=clean_env(), capture_output=True, text=True, timeout=120))
    assert json.loads(proc.stdout)["rmse"] == pytest.approx(summary(run)["test_rmse"], rel=1e-6)
    proc = check_ok(subprocess.run([sys.executable, "-m", "distrib.recommend", str(run), "--user", "1", "--top", "3"],
                                   cwd=REPO, check=False, env=clean_env(), capture_output=True, text=True, timeout=120))
    assert "1." in proc.stdout and "3." in proc.stdout


def test_sharded_resume_is_exact_at_the_same_world_size_and_reshards_2_to_3(tmp_path):
    args = NO_DROPOUT + ["dist.embedding_sharding=row_wise"]
    check_ok(train_cli(tiny(tmp_path, "whole", *args, "train.epochs=3"), nproc=2))
    check_ok(train_cli(tiny(tmp_path, "split", *args, "train.epochs=2"), nproc=2))
    shutil.copytree(tmp_path / "split", tmp_path / "moved")
    proc = check_ok(train_cli(tiny(tmp_path, "split", *args, "train.epochs=3"), nproc=2))
    assert "resumed from" in proc.stdout and "at epoch 2" in proc.stdout
    whole, split = sharded_weights(tmp_path / "whole"), sharded_weights(tmp_path / "split")
    assert all(torch.equal(whole[k], split[k]) for k in whole)
    assert metrics(tmp_path / "whole")[-1]["val_rmse"] == metrics(tmp_path / "split")[-1]["val_rmse"]
    proc = check_ok(train_cli(tiny(tmp_path, "moved", *args, "train.epochs=3"), nproc=3))
    assert "resumed from" in proc.stdout
    assert summary(tmp_path / "moved")["world_size"] == 3
    diff = rel_l2(whole, sharded_weights(tmp_path / "moved"))
    print(f"resumed 2 -> 3 ranks: max relative L2 distance {diff:.2e}")
    assert diff <= 1e-4


def test_a_model_without_lookups_is_refused_in_one_line(tmp_path):
    proc = train_cli(tiny(tmp_path, "run", "model.name=autorec", "dist.embedding_sharding=row_wise"))
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("distrib: error:")]
    assert len(lines) == 1 and "autorec" in lines[0] and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_sharding_without_torchrec_names_the_install_command(tmp_path):
    shim = tmp_path / "shim" / "torchrec"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named torchrec')\n")
    env = clean_env() | {"PYTHONPATH": str(shim.parent)}
    proc = train_cli(tiny(tmp_path, "run", "dist.embedding_sharding=row_wise"), env=env)
    assert proc.returncode == 2
    assert proc.stderr.count("distrib: error:") == 1 and "pip install -e '.[torchrec]'" in proc.stderr
    assert "Traceback" not in proc.stderr
    check_ok(train_cli(tiny(tmp_path, "replicated", "train.epochs=1"), env=env))  # replicated needs no TorchRec


def test_a_rank_killed_inside_sharded_training_ends_the_other_in_one_line(tmp_path):
    args = tiny(tmp_path, "run", "train.epochs=200", "data.synthetic.n_ratings=30000", "dist.timeout_s=30",
                "dist.embedding_sharding=row_wise")
    port = 29900 + os.getpid() % 90
    procs = []
    for rank in range(2):
        env = clean_env() | {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
                             "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        procs.append(subprocess.Popen([sys.executable, "-m", "distrib.train", *args], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    run = tmp_path / "run"
    deadline = time.time() + 240
    while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 1):
        assert time.time() < deadline and all(p.poll() is None for p in procs), "no progress"
        time.sleep(0.2)
    time.sleep(0.3)  # inside an epoch: every step is an all-to-all
    procs[1].send_signal(signal.SIGKILL)
    try:
        _, err = procs[0].communicate(timeout=60)
    finally:
        for p in procs:
            p.kill()
    assert procs[0].returncode != 0
    assert "lost rank 1" in err and err.count("distrib: error:") == 1, err[-2000:]


def test_nan_on_one_rank_stops_a_sharded_job_before_saving(tmp_path):
    env = clean_env() | {"DISTRIB_FAULT_NAN": "1:20"}  # 17 steps an epoch: in the second epoch
    proc = train_cli(tiny(tmp_path, "run", "dist.embedding_sharding=row_wise"), nproc=2, env=env)
    assert proc.returncode != 0 and "NaN or Inf at step 20 on rank 1" in proc.stderr, proc.stderr[-2000:]
    assert read_meta(tmp_path / "run/checkpoints/last.dcp")["progress"]["epoch"] == 1


@pytest.fixture(scope="module")
def sharded_refit_run(tmp_path_factory):
    """A 2-rank row_wise job with a refit phase: its run directory and the finished launch (output read below)."""
    root = tmp_path_factory.mktemp("sharded_refit")
    args = tiny(root, "run", "dist.embedding_sharding=row_wise", "train.epochs=4", "train.patience=2",
                "train.refit=true")
    return root / "run", check_ok(train_cli(args, nproc=2))


def test_sharded_refit_trains_a_second_phase_and_evaluates_it(sharded_refit_run):
    run, _ = sharded_refit_run
    refit = run / "refit"
    assert (refit / "checkpoints" / "last.dcp").is_dir()
    assert summary(refit)["epochs_run"] == summary(run)["phase1"]["best_epoch"]
    assert summary(refit)["test_rmse"] > 0


# Third-party notices a sharded run once printed (distrib.training.sharded_trainer.quiet_third_party drops them).
THIRD_PARTY_NOTICES = ("deprecating ShardedTensor", "`broadcast_buffers` is deprecated",
                       "caching params will be ignored", "is_fx_tracing", "an autograd kernel was not registered", "Feature Gates",
                       "Collective validation initialized", "index dedup enabled")


def test_a_sharded_run_prints_only_its_own_lines_and_counts_the_whole_model(sharded_refit_run):
    run, proc = sharded_refit_run  # both phases' output: the first phase's and the refit's
    output = proc.stdout + proc.stderr
    assert not [notice for notice in THIRD_PARTY_NOTICES if notice in output], output[-3000:]
    assert "Warning" not in proc.stderr and "[rank 1]" not in proc.stdout, output[-3000:]
    # The header counts the whole model (both tables whole, on 2 ranks), not this rank's shards or the MLP alone.
    cfg = load_config(str(run / "config.yaml"))
    sizes = read_meta(run / "checkpoints" / "last.dcp")["data"]
    model = build_model(cfg.model, sizes["n_users"], sizes["n_items"], sizes["rating_min"], sizes["rating_max"])
    whole = sum(p.numel() for p in model.parameters())
    assert f"model: embeddingnet, {whole:,} parameters |" in proc.stdout, proc.stdout


@pytest.fixture(scope="module")
def finished_sharded(tiny_sharded_run):
    """One finished two-epoch sharded run (1 rank, the session's) beside its data root; tests work on copies."""
    return tiny_sharded_run.parent


@pytest.mark.parametrize("remove, fragment", [
    (["last.dcp", "last.1.dcp"], "no checkpoint to resume from (no last.dcp)"),
    (["last.dcp/.metadata", "last.1.dcp/meta.pt"],
     "no checkpoint to resume from (last.dcp: incomplete, no .metadata; last.1.dcp: incomplete, no meta.pt)"),
], ids=["no_last_dcp", "incomplete_dcps"])
def test_a_sharded_run_dir_without_a_checkpoint_is_refused_and_left_untouched(finished_sharded, tmp_path, remove,
                                                                              fragment):
    for name in ("run", "data"):
        shutil.copytree(finished_sharded / name, tmp_path / name)
    args = tiny(tmp_path, "run", "dist.embedding_sharding=row_wise", "train.epochs=2")
    for name in remove:
        path = tmp_path / "run" / "checkpoints" / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    before = digest(tmp_path / "run")
    proc = train_cli(args[:-1] + ["train.epochs=3"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("distrib: error:")]
    assert len(lines) == 1 and "holds a run (metrics.jsonl, summary.json" in lines[0] and fragment in lines[0], lines
    assert "Traceback" not in proc.stderr and "[001/" not in proc.stdout
    assert digest(tmp_path / "run") == before


def test_a_sharded_run_killed_while_saving_its_first_checkpoint_starts_over(finished_sharded, tmp_path):
    for name in ("run", "data"):
        shutil.copytree(finished_sharded / name, tmp_path / name)
    run = tmp_path / "run"
    # What such a death leaves: the first epoch's metrics row (written first), half a DCP directory, no checkpoint.
    for path in (run / "checkpoints").iterdir():
        shutil.rmtree(path)
    (run / "checkpoints" / ".last.dcp.tmp").mkdir()
    (run / "checkpoints" / ".last.dcp.tmp" / "__0_0.distcp").write_bytes(b"cut off")
    (run / "summary.json").unlink()
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text().splitlines(keepends=True)[0])
    proc = check_ok(train_cli(tiny(tmp_path, "run", "dist.embedding_sharding=row_wise", "train.epochs=2")))
    assert "resumed from" not in proc.stdout and "[001/002]" in proc.stdout
    assert [row["epoch"] for row in metrics(run)] == [1, 2] and summary(run)["epochs_run"] == 2
