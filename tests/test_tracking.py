"""The W&B tracker, checked against the run's own `.wandb` transaction log (offline: no server here)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from distrib.config import TrackingConfig  # noqa: E402
from distrib.errors import UserError  # noqa: E402
from distrib.report.tracking import (  # noqa: E402
    RUN_ID_FILE,
    STATE_FILE,
    NullTracker,
    artifact_name,
    build_tracker,
    check_saved_state,
    has_api_key,
    saved_run_id,
)
from tests.helpers import TINY  # noqa: E402
from tests.wandb_records import media_files, read_wandb_run  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VAL_RMSE = [1.10, 0.95, 0.97]
TINY_RUN = [*TINY, "train.epochs=1"]


@pytest.fixture(autouse=True)
def wandb_sandbox(tmp_path_factory, monkeypatch):
    """Keep W&B's caches, staging and settings out of the home directory, and never reach a server."""
    home = tmp_path_factory.mktemp("wandb_home")
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(home / sub))
    monkeypatch.setenv("NETRC", str(home / "no-netrc"))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR"):
        monkeypatch.delenv(var, raising=False)


def _png(path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(path)
    plt.close(fig)
    return path


def _next_second() -> None:
    """Offline run folders are named to the second; two runs in one second would share a folder."""
    time.sleep(1.05 - time.time() % 1.0)


def _train(tracker, first_step: int, epochs: range, run_dir: Path) -> None:
    step = first_step
    for epoch in epochs:
        for _ in range(3):
            step += 10
            tracker.log_step(step, {"train/loss": 1.0 / step, "train/lr": 1e-3})
        tracker.log_epoch(step, {"epoch": epoch + 1, "val/rmse": VAL_RMSE[epoch], "val/mae": 0.7,
                                 "train/loss": 0.5, "time/epoch_s": 1.5, "dist/world_size": 2,
                                 "device": "cpu"})
    tracker.log_images(step, {"plots/curve": _png(run_dir / f"curve{first_step}.png")})


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory):
    """One offline run in two processes' worth of trackers: 2 epochs, close, then resume for a third."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("wandb_home_mod")
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"), ("WANDB_CONFIG_DIR", "config")):
        mp.setenv(var, str(home / sub))
    mp.delenv("WANDB_MODE", raising=False)
    run_dir = tmp_path_factory.mktemp("run")
    cfg = TrackingConfig(mode="offline", project="distrib-test", group="g", tags=["t1"], name="unit")
    config = {"model": {"n_factors": 8}, "train": {"lr": 0.001}}

    first = build_tracker(cfg, run_dir, config, is_main=True)
    _train(first, 0, range(2), run_dir)
    first.log_table_embeddings(60, np.eye(3), ["A", "B", "C"], ["x", "y", "z"], counts=np.array([1, 5, 3]),
                               max_rows=2)
    first.set_summary({"test_rmse": 0.91, "test_mae": 0.72, "epochs_run": 2, "stopped_early": False,
                       "best_val_rmse": None})
    ckpt = run_dir / "best.pt"
    ckpt.write_bytes(b"weights")
    first.log_artifact(ckpt, name="model best", type="model")
    first_id = first.run_id
    first.close(0)
    first.close(0)  # idempotent: train.py may close on both the normal and the error path

    _next_second()
    second = build_tracker(cfg, run_dir, config, is_main=True)
    second.log_step(30, {"train/loss": 9.0})  # a step that goes back: dropped, not sent
    _train(second, 60, range(2, 3), run_dir)
    second_id = second.run_id
    second.close(0)
    mp.undo()
    return {"run_dir": run_dir, "ids": (first_id, second_id), "record": read_wandb_run(run_dir)}


@pytest.mark.slow
def test_one_run_per_process_same_id(tracked_run):
    rec, run_dir = tracked_run["record"], tracked_run["run_dir"]
    first_id, second_id = tracked_run["ids"]
    assert first_id == second_id == (run_dir / RUN_ID_FILE).read_text().strip()
    assert len(rec["files"]) == 2  # one .wandb log per process, both under run_dir/wandb
    assert rec["run_ids"] == [first_id, first_id]
    assert rec["exit_codes"] == [0, 0]


@pytest.mark.slow
def test_config_and_epoch_metrics(tracked_run):
    rec = tracked_run["record"]
    assert rec["config"]["model"] == {"n_factors": 8} and rec["config"]["train"] == {"lr": 0.001}
    epochs = [(row["epoch"], row["val/rmse"]) for row in rec["history"] if "val/rmse" in row]
    assert epochs == [(1, VAL_RMSE[0]), (2, VAL_RMSE[1]), (3, VAL_RMSE[2])]
    assert all("train_epoch/loss" in row for row in rec["history"] if "val/rmse" in row)
    metrics = {m.get("name") or m.get("glob_name"): m for m in rec["metrics"]}
    assert metrics["val/*"]["step_metric"] == "epoch"
    assert metrics["val/rmse"]["summary"] == {"min": True}


@pytest.mark.slow
def test_steps_keep_increasing_across_resume(tracked_run):
    rec = tracked_run["record"]
    steps = [row["_step"] for row in rec["history"]]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)
    assert 9.0 not in [row.get("train/loss") for row in rec["history"]]  # step 30 after 60: dropped
    assert max(steps) == 90
    state = json.loads((tracked_run["run_dir"] / STATE_FILE).read_text())
    assert state["last_step"] == 90 and state["best"]["val/rmse"] == min(VAL_RMSE)


@pytest.mark.slow
def test_summary(tracked_run):
    first = read_wandb_run(tracked_run["run_dir"], files=tracked_run["record"]["files"][:1])["summary"]
    assert first["val/rmse"] == {"min": min(VAL_RMSE[:2])}  # define_metric(summary="min")
    summary = tracked_run["record"]["summary"]
    assert summary["best/val_rmse"] == min(VAL_RMSE)  # holds across the resume
    assert summary["test_rmse"] == 0.91 and summary["epochs_run"] == 2 and summary["stopped_early"] is False
    assert "best_val_rmse" not in summary and summary["device"] == "cpu"


@pytest.mark.slow
def test_images_table_and_artifact(tracked_run):
    rec, run_dir = tracked_run["record"], tracked_run["run_dir"]
    media = {p.as_posix().rpartition("/files/")[2] for p in media_files(run_dir)}
    images = [row["plots/curve"] for row in rec["history"] if "plots/curve" in row]
    assert len(images) == 2 and all(img["_type"] == "image-file" for img in images)
    for img in images:
        assert img["path"] in media
    tables = [row["embeddings/movies"] for row in rec["history"] if "embeddings/movies" in row]
    assert len(tables) == 1 and tables[0]["nrows"] == 2
    models = [a for a in rec["artifacts"] if a["type"] == "model"]
    assert models == [{"name": "model-best", "type": "model", "paths": ["best.pt"]}]


@pytest.mark.slow
def test_embedding_table_rows_are_most_rated(tmp_path):
    run_dir = tmp_path / "run"
    tracker = build_tracker(TrackingConfig(mode="offline"), run_dir, {}, is_main=True)
    tracker.log_table_embeddings(1, np.arange(6.0).reshape(3, 2), ["A", "B", "C"], ["x", "y", "z"],
                                 counts=np.array([1, 5, 3]), max_rows=2)
    tracker.close(0)
    (table,) = [p for p in media_files(run_dir) if p.name.endswith(".table.json")]
    data = json.loads(table.read_text())
    assert data["columns"] == ["title", "genres", "embedding"]
    assert data["data"] == [["B", "y", [2.0, 3.0]], ["C", "z", [4.0, 5.0]]]


def test_disabled_and_non_main_write_nothing(tmp_path):
    for tracker in (build_tracker(TrackingConfig(mode="disabled"), tmp_path, {}, is_main=True),
                    build_tracker(TrackingConfig(mode="offline"), tmp_path, {}, is_main=False)):
        assert type(tracker) is NullTracker and not tracker.enabled
        tracker.log_step(1, {"train/loss": 1.0})
        tracker.log_epoch(1, {"epoch": 1})
        tracker.log_images(1, {"x": tmp_path / "missing.png"})
        tracker.set_summary({"a": 1})
        tracker.log_artifact(tmp_path, "m")
        tracker.close(0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_null_tracker_never_imports_wandb(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from distrib.config import TrackingConfig
        from distrib.report.tracking import build_tracker
        for mode, main in (("online", False), ("offline", False), ("disabled", True)):
            t = build_tracker(TrackingConfig(mode=mode), {str(tmp_path)!r}, {{}}, is_main=main)
            t.log_step(1, {{"train/loss": 1.0}}); t.close(0)
        print("wandb" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_online_without_key_falls_back_offline(tmp_path, capsys):
    assert not has_api_key()
    tracker = build_tracker(TrackingConfig(mode="online"), tmp_path, {}, is_main=True)
    tracker.close(0)
    notice = capsys.readouterr().out
    assert tracker.mode == "offline" and "wandb sync" in notice and "offline-run-*" in notice
    assert list((tmp_path / "wandb").glob("offline-run-*/run-*.wandb"))


def test_api_key_detection(tmp_path, monkeypatch):
    netrc_path = tmp_path / "netrc"
    netrc_path.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc_path.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc_path))
    assert has_api_key()
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.org")
    assert not has_api_key()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert has_api_key()


def test_artifact_names_are_sanitised():
    assert artifact_name("model best/v1") == "model-best-v1"
    assert artifact_name("///") == "artifact"


@pytest.mark.parametrize("name, text, fragment", [
    (RUN_ID_FILE, "../../etc\n", "is not a W&B run id"),
    (RUN_ID_FILE, "a" * 65, "is not a W&B run id"),
    (STATE_FILE, "{not json", "unreadable"),
    (STATE_FILE, '["a list"]', "not a JSON object"),
    (STATE_FILE, '{"last_step": "12"}', "last_step '12' is not a step"),
    (STATE_FILE, '{"last_step": 3, "best": {"val/rmse": "low"}}', "best is not a map"),
    (STATE_FILE, '{"last_step": 3, "best": [1]}', "best is not a map"),
])
def test_damaged_wandb_files_in_run_dir_are_one_line_naming_the_file(tmp_path, name, text, fragment):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError) as info:
        check_saved_state(TrackingConfig(mode="offline"), tmp_path)
    assert str(info.value).startswith(str(tmp_path / name)) and fragment in str(info.value)
    assert "\n" not in str(info.value)
    check_saved_state(TrackingConfig(mode="disabled"), tmp_path)  # files a disabled tracker never reads


def test_saved_run_id_and_state_as_the_tracker_writes_them_pass(tmp_path):
    (tmp_path / RUN_ID_FILE).write_text("ab12cd34\n")
    (tmp_path / STATE_FILE).write_text(json.dumps({"run_id": "ab12cd34", "last_step": 40, "best": {"val/rmse": 0.9}}))
    check_saved_state(TrackingConfig(mode="offline"), tmp_path)
    assert saved_run_id(tmp_path) == "ab12cd34"


@pytest.mark.slow
@pytest.mark.parametrize("nproc", [0, 2])
def test_a_path_as_the_saved_run_id_stops_every_rank_with_one_line_and_writes_outside_nothing(tmp_path, nproc):
    """A run.dir whose wandb_run_id was replaced by a path: the job stops before training (every rank, no
    W&B traceback) and nothing appears outside run.dir."""
    run_dir = tmp_path / "a" / "b" / "run"
    run_dir.mkdir(parents=True)
    (run_dir / RUN_ID_FILE).write_text("../../../escaped\n")
    env = {**os.environ, "WANDB_MODE": "", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc else []
    proc = subprocess.run([sys.executable, *launcher, "-m", "distrib.train", *TINY_RUN, f"data.root={tmp_path / 'data'}",
                           f"run.dir={run_dir}", "tracking.mode=offline"], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=180)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("distrib: error:")]
    assert errors and all(f"{run_dir / RUN_ID_FILE}: '../../../escaped' is not a W&B run id" in line
                          for line in errors), proc.stderr[-3000:]
    assert "wandb" not in proc.stderr.replace(RUN_ID_FILE, "").replace("W&B", "")  # no W&B traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "data"] and not (tmp_path / "a" / "escaped").exists()
    assert not (run_dir / "wandb").exists()
