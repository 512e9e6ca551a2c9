"""A run killed anywhere in its end (the plots, W&B's finish, refit/summary.json, the combined summary.json) is
completed by the same command again: the final state equals that of a run never killed.

The end is killed for real: a driver runs distrib.train in a subprocess with the end's steps wrapped
(RunDir.write_text: the summaries; the plots; the W&B tracker's close) and SIGKILLs itself at one of them, named
by its path in run.dir; then the plain command runs again.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO, check_ok, clean_env, summary, tiny, train_cli
from tests.wandb_records import read_wandb_run

DRIVER = """
import os, signal, sys
from pathlib import Path
from distrib.checkpoint.rundir import RunDir
from distrib.report import plots, tracking
from distrib.train import main
from distrib.training.trainer import Trainer

kill_at = sys.argv[1]  # the end step to die right after ("" : none)
root = Path(next(a for a in sys.argv if a.startswith("run.dir=")).split("=", 1)[1])
state = {"ending": False}

def reached(path):
    step = Path(path).relative_to(root).as_posix()
    print(f"END {step}", flush=True)
    if step == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

def phase_start(init):
    def wrapper(self, *args, **kwargs):
        state["ending"] = False  # a phase's training writes (metrics, config.yaml) are not its end
        init(self, *args, **kwargs)
    return wrapper

def end_start(finish):
    def wrapper(self):
        state["ending"] = True
        reached(self.run.path / "(end starts)")
        return finish(self)
    return wrapper

def after(write, path_of):
    def wrapper(*args, **kwargs):
        result = write(*args, **kwargs)
        if state["ending"]:
            reached(path_of(*args))
        return result
    return wrapper

Trainer.__init__ = phase_start(Trainer.__init__)
Trainer.finish = end_start(Trainer.finish)
RunDir.write_text = after(RunDir.write_text, lambda run_dir, name, text: run_dir.path / name)
plots._save = after(plots._save, lambda fig, path: path)
tracking.WandbTracker.close = after(tracking.WandbTracker.close, lambda tracker, *_: tracker.run_dir / "wandb")
sys.exit(main(sys.argv[2:]))
"""

ARGS = ["train.epochs=2", "train.refit=true", "tracking.mode=offline"]
END_STEPS = [  # the end of a refit job, in order: each is a place to be killed
    "(end starts)", "plots/learning_curves.png", "plots/lr_schedule.png", "plots/embedding_pca.png", "wandb",
    "summary.json",
    "refit/(end starts)", "refit/plots/learning_curves.png", "refit/plots/lr_schedule.png",
    "refit/plots/embedding_pca.png", "refit/wandb", "refit/summary.json",
    "summary.json",  # the combined one: after it the job has ended
]


def _drive(root: Path, run: str, kill_at: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", DRIVER, kill_at, *tiny(root, run, *ARGS)], cwd=REPO,
                          env=clean_env(), capture_output=True, text=True, timeout=300)


def _final_state(run_dir: Path) -> dict:
    """What a finished run shows: both summaries, the plots, and each W&B run's summary and last exit code."""
    state = {"summary": summary(run_dir), "refit_summary": summary(run_dir / "refit")}
    for phase, folder in (("phase1", run_dir), ("refit", run_dir / "refit")):
        state[f"{phase}_plots"] = sorted(p.name for p in (folder / "plots").glob("*.png") if p.stat().st_size)
        wandb = read_wandb_run(folder)
        state[f"{phase}_wandb"] = ({k: wandb["summary"].get(k) for k in ("best_epoch", "epochs_run", "test_rmse")},
                                   wandb["exit_codes"][-1:])
    return state


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[list[str], dict]:
    """An unkilled job: the steps of its end, in order, and its final state."""
    root = tmp_path_factory.mktemp("end_reference")
    proc = check_ok(_drive(root, "run", ""))
    steps = [line.split(" ", 1)[1] for line in proc.stdout.splitlines() if line.startswith("END ")]
    return steps, _final_state(root / "run")


@pytest.mark.slow
def test_the_end_of_a_refit_job_is_these_steps_with_the_summary_last(reference):
    steps, state = reference
    assert steps == END_STEPS
    assert state["summary"]["final_model"] == "refit" and "test_rmse" in state["summary"]
    assert state["phase1_plots"] == state["refit_plots"] == ["embedding_pca.png", "learning_curves.png",
                                                             "lr_schedule.png"]
    assert state["phase1_wandb"][1] == state["refit_wandb"][1] == [0]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(END_STEPS) - 1))  # killed after the last step, the job had ended
def test_a_job_killed_in_its_end_is_completed_by_a_rerun(tmp_path, reference, index):
    kill_at = END_STEPS[index]
    killed = _drive(tmp_path, "run", kill_at)
    assert killed.returncode == -9, f"not killed at {kill_at}: {killed.stderr[-2000:]}"
    rerun = check_ok(train_cli(tiny(tmp_path, "run", *ARGS)))
    assert _final_state(tmp_path / "run") == reference[1], f"killed after {kill_at}:\n{rerun.stdout[-2000:]}"
    if kill_at == "refit/summary.json":  # the job's last gap: once completed, a further start has nothing to redo
        again = check_ok(train_cli(tiny(tmp_path, "run", *ARGS)))
        assert again.stdout.count("run already finished") == 2, again.stdout
