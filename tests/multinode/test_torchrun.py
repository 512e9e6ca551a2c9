"""torchrun across two nodes: one agent per node namespace, c10d rendezvous on node1's address. World size 4,
the weights of 1 node x 4 processes, the run directory written by global rank 0 alone, and each node
preparing its own data on a disk the other cannot see."""
from __future__ import annotations

import json
import random
import subprocess

import pytest

from tests.helpers import weights
from tests.launch.common import REPO, job_env
from tests.multinode.common import (
    ADDRESS,
    NODES,
    PYTHON,
    copy_from_node,
    node_local,
    node_run,
    on_node,
    rel_l2,
    remove_node_local,
    tiny,
)

pytestmark = [pytest.mark.multinode, pytest.mark.slow]


def agents(args: list[str], tmp_path, port: int) -> list[subprocess.Popen]:
    """A torchrun agent per node, each with 2 workers; they meet at node1's c10d store."""
    procs = []
    for node in NODES:
        cmd = [PYTHON, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=2", "--rdzv_backend=c10d",
               f"--rdzv_endpoint={ADDRESS['node1']}:{port}", f"--rdzv_id=distrib-test-{port}",
               "-m", "distrib.train", *args]
        log = (tmp_path / f"{node}.log").open("w")
        procs.append(subprocess.Popen(on_node(node, cmd), cwd=REPO, env=job_env(tmp_path), stdout=log,
                                      stderr=subprocess.STDOUT))
        log.close()
    return procs


@pytest.mark.timeout(540)  # with the session reference, when it is trained here
def test_two_agents_train_the_one_node_weights_and_only_rank_0_writes(tmp_path, reference):
    local = node_local("torchrun")  # run.dir and data.root on each node's private disk
    args = tiny(tmp_path, "unused", f"data.root={local / 'data'}", f"run.dir={local / 'run'}")
    procs = agents(args, tmp_path, random.randint(30000, 39999))
    try:
        codes = [p.wait(timeout=240) for p in procs]
        logs = {node: (tmp_path / f"{node}.log").read_text() for node in NODES}
        assert codes == [0, 0], "\n".join(f"--- {n}\n{text[-3000:]}" for n, text in logs.items())
        assert "world size 4" in logs["node1"] and "2 hosts, master node1" in logs["node1"], logs["node1"][-3000:]
        # Rank 0 (node1) wrote the run directory; node2's ranks wrote nothing on their disk.
        assert node_run("node2", ["test", "-e", str(local / "run")]).returncode == 1
        run_dir = copy_from_node("node1", local / "run", tmp_path / "node1-run")
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["world_size"] == 4 and summary["epochs_run"] == 3
        assert rel_l2(weights(run_dir / "checkpoints" / "last.pt"), reference) <= 1e-4
        # Each node built its own cache once, in one folder, by one of its own processes.
        for node in NODES:
            listing = node_run(node, ["sh", "-c", f"cat {local}/data/cache/*/meta.json"])
            assert listing.returncode == 0, listing.stderr
            meta = json.loads(listing.stdout)  # one folder: a second would make this two documents
            assert meta["built_by"]["host"] == node
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        remove_node_local(local)
