"""launch.submit --local: submitit's LocalExecutor runs 2 ranks here, no SLURM needed."""
from __future__ import annotations

import json
import sys

import pytest

from tests.launch.common import REPO, epochs_done, job_env, run, tiny

pytestmark = pytest.mark.slow  # every test here launches processes or trains


@pytest.mark.timeout(150)
def test_local_two_tasks(tmp_path):
    proc = run([sys.executable, "-m", "launch.submit", *tiny(tmp_path, "local", "slurm.tasks_per_node=2"),
                "--local", "--wait"], timeout_s=120, cwd=REPO, env=job_env(tmp_path))
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-3000:]}"
    assert "local job" in proc.stdout and str(tmp_path / "local") in proc.stdout
    assert json.loads((tmp_path / "local" / "summary.json").read_text())["world_size"] == 2
    assert epochs_done(tmp_path / "local") == [0, 1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("extra, fragment", [
    (["train.lr=-1"], "train.lr must be > 0"),
    (["--sweep", "train.lr"], "expected key=v1,v2"),
    (["--sweep", "train.nope=1,2"], "unknown config key train.nope"),
    (["--sweep", "slurm.nodes=1,2"], "share slurm"),
    (["slurm.tasks_per_node=2", "train.batch_size=1"], "smaller than the world size"),
])
def test_bad_input_is_rejected_before_submission(tmp_path, extra, fragment):
    proc = run([sys.executable, "-m", "launch.submit", *tiny(tmp_path, "bad"), *extra, "--local"],
               timeout_s=60, cwd=REPO, env=job_env(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("distrib: error:") and fragment in proc.stderr
    assert not (tmp_path / "bad" / "slurm").exists()  # nothing was submitted
