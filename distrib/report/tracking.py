"""Experiment tracking: one W&B run per job, created by global rank 0; every other rank gets a tracker
whose methods do nothing, so the training loop has no `if rank == 0` branches and never imports wandb.

    tracker = build_tracker(cfg.tracking, run_dir, to_dict(cfg), env.is_main)
    tracker.log_step(step, {"train/loss": ..., "train/lr": ...})
    tracker.log_epoch(step, {"epoch": 3, "val/rmse": ..., "train/loss": ...})
    tracker.close(exit_code)

W&B files live in `run_dir/wandb/`. The run id is kept in `run_dir/wandb_run_id` and passed back with
`resume="allow"`, so a resumed or requeued job continues the same run. `tracking.mode=online` without an
API key (no WANDB_API_KEY, no netrc entry for the W&B host) falls back to offline with a one-line notice;
upload an offline run once the job has finished (syncing a run still being written uploads an empty file):

    wandb sync RUN_DIR/wandb/offline-run-*

Steps: the trainer passes its global training step, restored from the checkpoint on resume, so steps keep
increasing. W&B drops rows whose step goes back; the tracker drops them itself, with one warning.

`define_metric(..., summary="min")` keeps the best val RMSE of the process that logged it, but an offline
resumed run starts its summary afresh, so the tracker also keeps `best/val_rmse` (and mae, loss) itself.
The last step and these minima persist in `run_dir/wandb_state.json`, so both hold across restarts.
"""
from __future__ import annotations

import json
import logging
import math
import netrc
import os
import re
from pathlib import Path
from urllib.parse import urlparse

from distrib.config import TrackingConfig
from distrib.errors import UserError
from distrib.fsutil import atomic_write_text

log = logging.getLogger("distrib")

RUN_ID_FILE = "wandb_run_id"
STATE_FILE = "wandb_state.json"
DEFAULT_HOST = "https://api.wandb.ai"
EPOCH_AXIS_GLOBS = ("val/*", "test/*", "time/*", "throughput/*", "dist/*", "train_epoch/*")
MIN_SUMMARY_METRICS = ("val/rmse", "val/mae", "val/loss")
EMBEDDING_TABLE_ROWS = 1000
# What distrib accepts back from RUN_ID_FILE: the characters of W&B's own ids (and of ids users choose) and
# W&B's length limit. W&B names folders after the id, so nothing like a path may pass.
RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def epoch_metrics(row: dict, world_size: int, device: str) -> dict:
    """An epoch's row of metrics.jsonl under W&B's names (validation's only when the epoch was validated)."""
    metrics = {
        "epoch": row["epoch"], "train/loss": row["train_loss"], "time/epoch_s": row["epoch_seconds"],
        "throughput/samples_per_s": row["samples_per_s"], "dist/world_size": world_size, "device": device,
    }
    if not math.isnan(row["val_loss"]):
        metrics.update({"val/rmse": row["val_rmse"], "val/mae": row["val_mae"], "val/loss": row["val_loss"]})
    return metrics


class NullTracker:
    """The tracker of non-main ranks and of `tracking.mode=disabled`: every method does nothing."""

    enabled = False
    run_id: str | None = None

    def log_step(self, step: int, metrics: dict) -> None:
        pass

    def log_epoch(self, step: int, metrics: dict) -> None:
        pass

    def log_images(self, step: int, images: dict) -> None:
        pass

    def log_table_embeddings(self, step: int, vectors, titles, genres=None, counts=None,
                             key: str = "embeddings/movies", max_rows: int = EMBEDDING_TABLE_ROWS) -> None:
        pass

    def set_summary(self, summary: dict) -> None:
        pass

    def log_artifact(self, path: Path, name: str, type: str = "model") -> None:  # noqa: A002 (W&B's word)
        pass

    def close(self, exit_code: int = 0) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(0 if exc_type is None else 1)


def build_tracker(cfg: TrackingConfig, run_dir: Path, config: dict, is_main: bool) -> NullTracker:
    """The W&B tracker on the main rank, unless tracking is disabled; a null tracker everywhere else."""
    if not is_main or cfg.mode == "disabled":
        return NullTracker()
    mode = cfg.mode
    if mode == "online" and not has_api_key():
        print("distrib: no W&B API key (WANDB_API_KEY or netrc): tracking offline; "
              f"upload later with `wandb sync {Path(run_dir) / 'wandb'}/offline-run-*`", flush=True)
        mode = "offline"
    return WandbTracker(cfg, Path(run_dir), config, mode)


def has_api_key() -> bool:
    """Whether W&B could authenticate without prompting: WANDB_API_KEY, an identity token, or netrc."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_HOST)).hostname or ""
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc")).expanduser()
    try:
        return bool(path.is_file() and netrc.netrc(path).authenticators(host))
    except (OSError, netrc.NetrcParseError):
        return False


def check_saved_state(cfg: TrackingConfig, run_dir: Path) -> None:
    """The W&B files a resumed run reads back (its run id and state), checked before the run starts, so damage
    there is one line naming the file (UserError) rather than W&B's traceback."""
    if cfg.mode != "disabled":
        saved_run_id(run_dir)
        read_state(run_dir / STATE_FILE)


def saved_run_id(run_dir: Path) -> str | None:
    """The run id in RUN_ID_FILE, None without one; anything but an id is a UserError."""
    path = run_dir / RUN_ID_FILE
    try:
        run_id = path.read_text().strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: unreadable ({getattr(err, 'strerror', None) or err}); remove it to start a new "
                        "W&B run") from None
    if run_id and not RUN_ID.fullmatch(run_id):
        raise UserError(f"{path}: {run_id[:40]!r} is not a W&B run id (at most 64 letters, digits, '-' or '_'): "
                        "write the run's id there, or remove the file to start a new W&B run")
    return run_id or None


def load_or_create_run_id(run_dir: Path) -> str:
    """The run id saved in the run directory, or a new one saved there before the run starts."""
    run_id = saved_run_id(run_dir)
    if run_id:
        return run_id
    from wandb.sdk.lib.runid import generate_id  # where wandb draws its own run ids (wandb.util's alias is gone)

    run_id = generate_id()
    atomic_write_text(run_dir / RUN_ID_FILE, run_id + "\n")
    return run_id


def artifact_name(name: str) -> str:
    """W&B artifact names allow letters, digits, '-', '_' and '.'."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "artifact"


class WandbTracker(NullTracker):
    """One W&B run, created on the main rank; wandb is imported here and nowhere else."""

    enabled = True

    def __init__(self, cfg: TrackingConfig, run_dir: Path, config: dict, mode: str):
        import wandb

        self._wandb = wandb
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_id = load_or_create_run_id(run_dir)
        self.mode = mode
        self._closed = False
        self._warned_step = False
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity or None, group=cfg.group or None,
            name=cfg.name or None, tags=list(cfg.tags) or None, mode=mode, dir=str(run_dir),
            id=self.run_id, resume="allow", config=config, settings=_quiet_settings(wandb),
        )
        # Online, a resumed run reports the server's next step; offline it starts at 0, hence the file.
        state = read_state(run_dir / STATE_FILE)
        self._last_step = max(state.get("last_step", -1), int(self.run.step or 0) - 1)
        self._best = dict(state.get("best", {}))
        self._define_metrics()

    def _define_metrics(self) -> None:
        self.run.define_metric("epoch")
        for glob in EPOCH_AXIS_GLOBS:
            self.run.define_metric(glob, step_metric="epoch")
        for name in MIN_SUMMARY_METRICS:
            self.run.define_metric(name, step_metric="epoch", summary="min")

    def _accept(self, step: int) -> bool:
        step = int(step)
        if step < self._last_step:
            if not self._warned_step:
                log.warning("W&B: step %d is below the last logged step %d; dropping such rows", step,
                            self._last_step)
                self._warned_step = True
            return False
        self._last_step = step
        return True

    def log_step(self, step: int, metrics: dict) -> None:
        if self._accept(step):
            self.run.log(dict(metrics), step=int(step))

    def log_epoch(self, step: int, metrics: dict) -> None:
        """Per-epoch metrics, plotted against `epoch`. `train/*` keys become `train_epoch/*` so the epoch
        mean does not interleave with the per-step series of the same name; text values (the device)
        go to the summary, since history rows hold numbers."""
        numbers, text = {}, {}
        for key, value in metrics.items():
            if key.startswith("train/"):
                key = "train_epoch/" + key[len("train/"):]
            (numbers if isinstance(value, (int, float)) else text)[key] = value
        if not self._accept(step):
            return
        for name in MIN_SUMMARY_METRICS:
            value = numbers.get(name)
            if value is not None and math.isfinite(value) and value < self._best.get(name, math.inf):
                self._best[name] = float(value)
        text.update({"best/" + name.replace("/", "_"): v for name, v in self._best.items()})
        self.run.summary.update(text)
        self.run.log(numbers, step=int(step))
        self._save_state()

    def _save_state(self) -> None:
        atomic_write_text(self.run_dir / STATE_FILE,
                          json.dumps({"run_id": self.run_id, "last_step": self._last_step, "best": self._best}))

    def log_images(self, step: int, images: dict) -> None:
        """`{"plots/learning_curves": Path(...png)}`: each existing file as a W&B image."""
        logged = {key: self._wandb.Image(str(path)) for key, path in images.items() if Path(path).is_file()}
        for key in images.keys() - logged.keys():
            log.warning("W&B: image %s not found at %s; skipped", key, images[key])
        if logged and self._accept(step):
            self.run.log(logged, step=int(step))

    def log_table_embeddings(self, step: int, vectors, titles, genres=None, counts=None,
                             key: str = "embeddings/movies", max_rows: int = EMBEDDING_TABLE_ROWS) -> None:
        """A table of movie embeddings (title, genres, vector) for W&B's embedding projector: the
        `max_rows` most-rated movies when `counts` is given, else the first `max_rows`."""
        import numpy as np

        vectors = np.asarray(vectors, dtype=np.float32)
        order = np.arange(len(vectors)) if counts is None else np.argsort(-np.asarray(counts), kind="stable")
        rows = [[str(titles[i]), str(genres[i]) if genres is not None else "", vectors[i].tolist()]
                for i in order[:max_rows]]
        table = self._wandb.Table(columns=["title", "genres", "embedding"], data=rows)
        if self._accept(step):
            self.run.log({key: table}, step=int(step))

    def set_summary(self, summary: dict) -> None:
        """Final values (test RMSE/MAE, best val RMSE, epochs run, stopped early); None and NaN skipped."""
        for key, value in summary.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            self.run.summary[key] = value

    def log_artifact(self, path: Path, name: str, type: str = "model") -> None:  # noqa: A002
        path = Path(path)
        artifact = self._wandb.Artifact(artifact_name(name), type=type)
        if path.is_dir():
            artifact.add_dir(str(path))
        else:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self, exit_code: int = 0) -> None:
        """Finish the run and wait until its files are written (idempotent). Offline, say how to upload."""
        if self._closed:
            return
        self._closed = True
        self._save_state()
        self.run.finish(exit_code=exit_code)
        # finish() can return before the W&B service has flushed and closed the .wandb file; teardown
        # waits for it, so the file is complete (and safe to `wandb sync`) once close() returns.
        teardown = getattr(self._wandb, "teardown", None)
        if teardown is not None:
            teardown()
        if self.mode == "offline":
            print(f"distrib: W&B run {self.run_id} saved offline; upload it with "
                  f"`wandb sync {self.run_dir / 'wandb'}/offline-run-*`", flush=True)


def _quiet_settings(wandb):
    """No console capture (SLURM logs stay ours), no system-stats sampler, no git or pip snapshot."""
    wanted = {"console": "off", "quiet": True, "disable_git": True, "save_code": False,
              "x_disable_stats": True, "x_disable_machine_info": True, "x_save_requirements": False,
              "init_timeout": 120.0}
    known = set(getattr(wandb.Settings, "model_fields", {}))
    if not known:  # an older wandb without pydantic fields: pass only what every version takes
        wanted = {"console": "off", "quiet": True, "_disable_stats": True}
    return wandb.Settings(**{k: v for k, v in wanted.items() if not known or k in known})


def read_state(path: Path) -> dict:
    """STATE_FILE as the tracker wrote it ({} when absent): last_step an int, best a name -> number map. Anything
    else is a UserError naming the file."""
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as err:
        raise _bad_state(path, f"unreadable: {getattr(err, 'strerror', None) or err}") from None
    if not isinstance(state, dict):
        raise _bad_state(path, "not a JSON object")
    step, best = state.get("last_step", -1), state.get("best", {})
    if type(step) is not int:
        raise _bad_state(path, f"last_step {str(step)[:40]!r} is not a step")
    if not isinstance(best, dict) or not all(type(v) in (int, float) and math.isfinite(v) for v in best.values()):
        raise _bad_state(path, "best is not a map of metric names to numbers")
    return {**state, "best": {str(k): float(v) for k, v in best.items()}}


def _bad_state(path: Path, problem: str) -> UserError:
    return UserError(f"{path}: not the W&B state distrib writes ({problem}); remove it to go on with the same "
                     "W&B run (its best/* values then count from the next epoch)")
