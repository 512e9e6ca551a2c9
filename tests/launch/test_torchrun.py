"""torchrun --max-restarts=1: a worker SIGKILLed mid-run is restarted with the others, and the run
resumes from its last checkpoint (last.pt, or last.dcp with sharded tables) and finishes with every epoch in
metrics.jsonl once and the step count continuous. No SLURM needed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import metrics
from tests.launch.common import REPO, SLOW, epochs_done, job_env, resumed_from, tiny, wait_until

pytestmark = pytest.mark.slow  # every test here launches processes or trains


def children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


@pytest.mark.timeout(300)  # ~40 s alone; minutes on a loaded 2-core machine
@pytest.mark.parametrize("sharding, last", [("none", "last.pt"), ("row_wise", "last.dcp")])
def test_killed_worker_restarts_and_resumes(tmp_path, sharding, last):
    run_dir = tmp_path / "run"
    log = (tmp_path / "torchrun.log").open("w")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts=1",
           "-m", "distrib.train",
           *tiny(tmp_path, "run", "train.epochs=6", *SLOW, f"dist.embedding_sharding={sharding}")]
    # torchrun shares its rendezvous TCPStore with the workers, and a restarted round could read the previous
    # round's gloo addresses (pytorch/pytorch#135712): distrib prefixes its keys per restart round, so the
    # plain torchrun command must work without TORCH_DISABLE_SHARE_RDZV_TCP_STORE.
    env = job_env(tmp_path)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # The first epoch's checkpoint, not only its metrics row (written first): a kill in between replays it.
        wait_until(lambda: (run_dir / "checkpoints" / last).exists(), 150, f"the first epoch's {last}",
                   on_timeout=lambda: (tmp_path / "torchrun.log").read_text()[-3000:])
        assert len(epochs_done(run_dir)) < 6, "finished before a worker could be killed"
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        assert proc.wait(timeout=180) == 0, (tmp_path / "torchrun.log").read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
    text = (tmp_path / "torchrun.log").read_text()
    assert "SIGKILL" in text or "Signal 9" in text or "exitcode: -9" in text, text[-3000:]
    # A restart from scratch would also rewrite metrics.jsonl 0..5: the trainer must say it resumed.
    assert resumed_from(text, last), text[-3000:]
    assert epochs_done(run_dir) == list(range(1, 7))  # nothing repeated or skipped
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs_run"] == 6
    steps = [row["step"] for row in metrics(run_dir)]  # the resumed run counts on from the checkpoint's step
    assert steps == [summary["steps"] // 6 * epoch for epoch in range(1, 7)], steps
