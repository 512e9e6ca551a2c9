"""End-to-end runs of `python -m distrib.train` and torchrun with real gloo process groups on CPU."""
import fcntl
import hashlib
import json
import shutil

import pytest
import torch
import yaml

from distrib.config import load_config
from distrib.data import load_dataset
from distrib.models import build_model
from distrib.training.trainer import sharded_metrics, to_device
from tests.helpers import check_ok, max_rel_diff, metrics, run_module, spawn_ranks, summary, tiny, train_cli, weights

pytestmark = pytest.mark.slow  # every test here launches processes or trains

NO_DROPOUT = ["model.dropouts=[0]", "model.embedding_dropout=0"]


def test_single_process_writes_every_output(tmp_path):
    proc = check_ok(train_cli(tiny(tmp_path)))
    run = tmp_path / "run"
    assert load_config(str(run / "config.yaml")).model.hidden == [32]
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]  # numbered as the console prints them
    for key in ("epoch", "train_loss", "val_rmse", "val_mae", "lr", "epoch_seconds", "samples_per_s"):
        assert key in rows[0]
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        for key in ("model", "optimizer", "scheduler", "early_stopping", "progress", "rng"):
            assert key in state, f"{name} lacks {key}"
        assert not any(k.startswith("module.") for k in state["model"]), "unwrapped state dict"
    result = summary(run)
    for key in ("best_val_rmse", "test_rmse", "test_mae", "epochs_run", "stopped_early", "world_size"):
        assert key in result
    assert result["epochs_run"] == 3 and result["world_size"] == 1
    assert result["best_val_rmse"] == pytest.approx(min(r["val_rmse"] for r in rows))
    assert "[001/003] train:" in proc.stdout
    _check_compact_header(proc.stdout, run)


def _check_compact_header(stdout: str, run):
    """A few lines before the first epoch instead of the whole config, which run.dir/config.yaml holds."""
    head = stdout.split("[001/")[0]
    fixed = head.split("changed from the defaults:")[0]  # then the changed keys, as many as the command gave
    assert "resolved config" not in stdout and "n_factors: 8" not in stdout and len(fixed.splitlines()) == 3, head
    assert "synthetic: 300 users" in head and "(train " in head and " / val " in head and " / test " in head
    assert head.splitlines()[0].endswith(", scale 1-5"), head  # the rating range the model's output spans
    n_params = sum(t.numel() for t in weights(run / "checkpoints/last.pt").values())
    assert (f"model: embeddingnet, {n_params:,} parameters | world size 1 on cpu (single), fp32, "
            "1 CPU thread (OMP_NUM_THREADS)") in head, head  # train_cli sets OMP_NUM_THREADS=1
    assert f"run.dir: {run} " in head
    changed = head.split("changed from the defaults:")[1]
    assert "model.n_factors=8" in changed and "model.hidden=[32]" in changed and "train.epochs=3" in changed
    assert "train.lr=" not in changed and "run.dir" not in changed  # defaults left out; run.dir has its line
    assert "generated new fontManager" not in stdout
    assert stdout.strip().splitlines()[-1].startswith("done: test_rmse=")


def test_print_config_prints_the_whole_config(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("a file where run.dir should be: the run stops right after the config is printed")
    proc = train_cli(tiny(tmp_path, "x", f"run.dir={taken}") + ["--print-config"])
    assert proc.returncode == 2 and "exists and is not a directory" in proc.stderr
    assert "config:\n" in proc.stdout and "  n_factors: 8\n" in proc.stdout and "  lr_scaling: sqrt\n" in proc.stdout


@pytest.fixture(scope="module")
def one_rank_no_dropout(tmp_path_factory):
    """The 2-epoch run without dropout on one process that the multi-rank runs below are compared with: its
    last weights. One process all-reduces nothing, so dist.bucket_cap_mb cannot change them."""
    root = tmp_path_factory.mktemp("one_rank_no_dropout")
    check_ok(train_cli(tiny(root, "w1", *NO_DROPOUT, "train.epochs=2")))
    return weights(root / "w1/checkpoints/last.pt")


def test_same_global_batch_gives_same_weights_on_1_2_3_ranks(tmp_path, one_rank_no_dropout):
    args = NO_DROPOUT + ["train.epochs=2"]
    reference = one_rank_no_dropout
    for world in (2, 3):
        proc = check_ok(train_cli(tiny(tmp_path, f"w{world}", *args), nproc=world))
        assert summary(tmp_path / f"w{world}")["world_size"] == world
        assert max_rel_diff(reference, weights(tmp_path / f"w{world}/checkpoints/last.pt")) <= 1e-4
        assert proc.stdout.count("[002/002]") == 1, "only rank 0 prints epoch lines"


def test_bf16_gradient_compression_trains_2_ranks_close_to_1(tmp_path, one_rank_no_dropout):
    args = NO_DROPOUT + ["train.epochs=2", "dist.bucket_cap_mb=0.05"]  # several buckets, each through the hook
    check_ok(train_cli(tiny(tmp_path, "w2", *args, "dist.grad_compression=bf16"), nproc=2))
    diff = max_rel_diff(one_rank_no_dropout, weights(tmp_path / "w2/checkpoints/last.pt"))
    print("bf16 compression max rel diff", diff)
    assert 0 < diff <= 0.1  # bf16-rounded gradients: close (0.03 measured), not the fp32 equivalence


def test_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, two_rank_resumed_run):
    check_ok(train_cli(tiny(tmp_path, "whole", "train.epochs=4"), nproc=2))
    split, proc = two_rank_resumed_run.run, two_rank_resumed_run.resumed  # 2 epochs, then resumed to 4 (W&B offline)
    assert "resumed from" in proc.stdout and "at epoch 2" in proc.stdout
    assert [r["epoch"] for r in metrics(split)] == [1, 2, 3, 4]
    a, b = weights(tmp_path / "whole/checkpoints/last.pt"), weights(split / "checkpoints/last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # dropout on: masks are keyed by (seed, step, position)
    assert metrics(tmp_path / "whole")[-1]["val_rmse"] == metrics(split)[-1]["val_rmse"]


def _sharded_val(rank, world_size, data_args):
    cfg = load_config(None, data_args)
    data = load_dataset(cfg.data)
    torch.manual_seed(0)
    model = build_model(cfg.model, data.n_users, data.n_items, data.rating_min, data.rating_max)
    return sharded_metrics(model, to_device(data.val, torch.device("cpu")), rank, world_size)


def test_validation_metrics_are_exact_over_the_whole_set(tmp_path):
    args = tiny(tmp_path, "x", "data.synthetic.n_ratings=10007")
    load_dataset(load_config(None, args).data)  # prepare the cache once
    single = _sharded_val(0, 1, args)
    for world in (2, 3):
        results = spawn_ranks(_sharded_val, world, args)
        assert all(r == results[0] for r in results)
        assert results[0]["count"] == single["count"]  # no padding, no duplicates
        assert results[0]["rmse"] == pytest.approx(single["rmse"], rel=1e-9)
        assert results[0]["mae"] == pytest.approx(single["mae"], rel=1e-9)


def _tree_digest(path):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("extra, fragment, nproc", [
    (["train.epochz=3"], "unknown config key train.epochz", 0),
    (["train.batch_size=x"], "train.batch_size: expected int", 0),
    (["data.name=ml-7m"], "data.name: unknown value", 0),
    (["train.batch_size=1"], "smaller than the world size 2", 2),
])
def test_bad_input_is_one_line_and_leaves_the_run_dir_intact(tmp_path, tiny_run, extra, fragment, nproc):
    shutil.copytree(tiny_run, tmp_path / "run")  # a finished run (the session's 2-epoch one) to leave intact
    before = _tree_digest(tmp_path / "run")
    proc = train_cli(tiny(tmp_path, "run", *extra), nproc=nproc)
    assert proc.returncode != 0
    assert fragment in proc.stderr
    # torchrun's own agent prints its ChildFailedError traceback; our ranks print none.
    assert "Traceback" not in proc.stderr if not nproc else "distrib/" not in proc.stderr.split("Traceback")[-1]
    if not nproc:
        assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert _tree_digest(tmp_path / "run") == before


@pytest.mark.parametrize("nproc", [0, 2])
def test_a_failed_download_leaves_no_run_dir_behind(tmp_path, nproc):
    """Nothing to resume and nothing written: run.dir (its .lock, an empty checkpoints/) is created only once
    the data is ready."""
    proc = train_cli(tiny(tmp_path, "runs/new", "data.name=ml-100k", "data.base_url=http://127.0.0.1:9/none"),
                     nproc=nproc, timeout=120)
    assert proc.returncode != 0 and "ml-100k" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "runs").exists()


def test_a_start_that_fails_before_writing_anything_removes_the_run_dir_it_created(tmp_path):
    proc = train_cli(tiny(tmp_path, "run", "train.batch_size=100000"))
    assert proc.returncode == 2 and "larger than the training split" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()


def test_an_unwritable_run_dir_is_refused_before_the_data_is_prepared(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    proc = train_cli(tiny(tmp_path, "file/run"))
    assert proc.returncode == 2 and "run.dir" in proc.stderr and "is not a directory" in proc.stderr, proc.stderr
    assert not (tmp_path / "data").exists()  # the synthetic data was never generated nor cached


def test_a_second_job_on_the_same_run_dir_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with open(run / ".lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        proc = train_cli(tiny(tmp_path))
    assert proc.returncode == 2 and "in use by another job" in proc.stderr
    assert not (run / "config.yaml").exists()


def test_cut_off_checkpoint_falls_back_to_the_previous_one(tmp_path, tiny_run):
    shutil.copytree(tiny_run, tmp_path / "run")  # a finished 2-epoch run: last.pt (epoch 2) and last.1.pt (epoch 1)
    last = tmp_path / "run/checkpoints/last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # a write cut off midway
    proc = check_ok(train_cli(tiny(tmp_path, "run", "train.epochs=3")))
    assert "unreadable" in proc.stdout + proc.stderr and "at epoch 1" in proc.stdout
    assert [r["epoch"] for r in metrics(tmp_path / "run")] == [1, 2, 3]
    assert json.loads((tmp_path / "run/summary.json").read_text())["epochs_run"] == 3


def test_refit_trains_again_on_train_plus_validation_for_the_best_epoch_count(tmp_path):
    """train.refit on 2 ranks: the first phase early-stops on validation; the second trains every training rating
    (no validation carve) for the first phase's best epoch count in run.dir/refit; a rerun of the finished job
    (as a requeue would) passes both phases without training again."""
    args = tiny(tmp_path, "run", "train.epochs=6", "train.patience=2", "train.refit=true")
    proc = check_ok(train_cli(args, nproc=2))
    second = summary(tmp_path / "run" / "refit")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("done: refit model (refit/): test_rmse=") and "None" not in last, last
    assert "| first phase: best_val_rmse=" in last, last
    first = summary(tmp_path / "run")["phase1"]
    assert second["epochs_run"] == second["best_epoch"] == first["best_epoch"]
    assert second["best_val_rmse"] is None and second["world_size"] == 2
    # The top-level summary.json is the shipped (refit) model's, with the first phase's that chose it beside it.
    top = summary(tmp_path / "run")
    assert top["final_model"] == "refit" and top["test_rmse"] == second["test_rmse"]
    assert top["epochs_run"] == second["epochs_run"] and "best_val_rmse" not in top
    assert first["best_val_rmse"] > 0 and first["stopped_early"] in (True, False)
    assert "test_rmse" not in first  # the first phase chooses the epoch count; only the refit reads the test part
    # more training ratings per epoch: the validation tenth is trained on
    assert second["steps"] / second["epochs_run"] > first["steps"] / first["epochs_run"]
    refit_cfg = yaml.safe_load((tmp_path / "run" / "refit" / "config.yaml").read_text())
    assert refit_cfg["data"]["val_fraction"] == 0 and refit_cfg["train"]["patience"] == 0
    best = weights(tmp_path / "run" / "refit" / "checkpoints" / "best.pt")
    # evaluate scores the refit model from run.dir/refit, and points at it when given the first phase's directory
    refit_eval = run_module("distrib.evaluate", tmp_path / "run" / "refit", "--json")
    assert refit_eval.returncode == 0, refit_eval.stderr
    assert json.loads(refit_eval.stdout)["rmse"] == pytest.approx(second["test_rmse"], rel=1e-5)
    first_eval = run_module("distrib.evaluate", tmp_path / "run", "--json")
    assert first_eval.returncode == 0 and "refit model" in first_eval.stderr, first_eval.stderr
    assert json.loads(first_eval.stdout)["rmse"] != pytest.approx(second["test_rmse"], rel=1e-5)  # best.pt of phase 1
    proc = check_ok(train_cli(args, nproc=2))
    assert proc.stdout.count("run already finished") == 2
    assert all(torch.equal(best[k], v) for k, v in weights(tmp_path / "run" / "refit" / "checkpoints" / "best.pt").items())
