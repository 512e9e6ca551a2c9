"""A checkpoint is data, never code: one carrying a pickled callable is refused by every command that
loads checkpoints (train's resume, evaluate, recommend), with one line, and its payload never runs."""
import shutil

import pytest
import torch

from tests.helpers import clean_env, run_module, tiny, train_cli

pytestmark = pytest.mark.slow  # every test here launches processes or trains


class _Payload:
    """Unpickling this calls open(marker, "w"): proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(checkpoint, marker):
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    state["progress"] = {"epoch": 1, "step": 1, "hook": _Payload(marker)}
    torch.save(state, checkpoint)


@pytest.fixture
def poisoned_run(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    marker = tmp_path / "payload-ran"
    for name in ("last.pt", "best.pt"):
        _plant(run / "checkpoints" / name, marker)
    return run, marker


def _one_refusal(proc, marker):
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("distrib: error:") and "refused to load" in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), "the checkpoint's payload ran"


def test_evaluate_and_recommend_refuse_a_checkpoint_that_carries_code(poisoned_run):
    run, marker = poisoned_run
    _one_refusal(run_module("distrib.evaluate", run, "--split", "test"), marker)
    _one_refusal(run_module("distrib.recommend", run, "--user", "1"), marker)


def test_resume_refuses_a_checkpoint_that_carries_code_and_keeps_the_run(tmp_path, tiny_run):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)  # a finished 2-epoch run, resumed below for a third epoch
    marker = tmp_path / "payload-ran"
    _plant(run / "checkpoints" / "last.pt", marker)
    before = _files(run)
    proc = train_cli(tiny(tmp_path, "run", "train.epochs=3"), env=clean_env())
    _one_refusal(proc, marker)
    assert _files(run) == before


def _files(run):
    """Every file's bytes but the lock's, which names whichever process holds run.dir now."""
    return {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != ".lock"}
