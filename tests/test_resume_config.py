"""Resume compares the saved config: through the real command line, a finished run started again with a key
that identifies the run changed is refused in one line naming each changed key, and its run.dir stays
byte-identical; a key that may change on resume (train.epochs) resumes it."""
import hashlib
import shutil

import pytest

from tests.helpers import check_ok, metrics, tiny, train_cli

pytestmark = pytest.mark.slow


def _digest(path):
    return {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def finished(tiny_run, tmp_path):
    """A copy of the session's tiny finished run (2 epochs)."""
    shutil.copytree(tiny_run, tmp_path / "run")
    return tmp_path


@pytest.mark.parametrize("change, named", [
    ("data.split_seed=7", "data.split_seed (1 -> 7)"),
    ("model.dropouts=[0.5]", "model.dropouts ([0.1] -> [0.5])"),
])
def test_changed_identity_keys_are_refused_and_nothing_is_written(finished, change, named):
    run = finished / "run"
    before = _digest(run)
    proc = train_cli(tiny(finished, "run", "train.epochs=2", change), timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("distrib: error:")]
    assert len(errors) == 1 and f"run.dir {run}: resumed with changed keys {named}" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert _digest(run) == before


def test_a_changeable_key_resumes(finished):
    run = finished / "run"
    proc = check_ok(train_cli(tiny(finished, "run", "train.epochs=3", "train.patience=5"), timeout=300))
    assert "resumed from" in proc.stdout
    steps = [row["step"] for row in metrics(run)]
    assert len(steps) == 3 and steps[2] == 3 * steps[0]  # the first two epochs kept, the third run once
