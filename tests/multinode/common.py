"""Helpers for the two-node tests: running a command on a node, node-local paths, the reference run."""
from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import torch

from tests.helpers import check_ok, train_cli, weights
from tests.launch.common import REPO, job_env, run
from tests.launch.common import tiny as launch_tiny

CLUSTER = REPO / "slurm" / "dev-cluster.sh"
PYTHON = sys.executable  # the venv, which every node sees as the host does
NODES = ("node1", "node2")
ADDRESS = {"node1": "10.77.0.11", "node2": "10.77.0.12"}
NODE_LOCAL = Path("/srv/distrib-local")  # a private tmpfs in each node: the same path, a different disk
# Dropout off: the same weights whatever the launcher and layout, up to the order of float sums.
NO_DROPOUT = ["model.dropouts=[0.0]", "model.embedding_dropout=0.0"]


def tiny(tmp_path: Path, run_name: str = "run", *extra: str) -> list[str]:
    return launch_tiny(tmp_path, run_name, *NO_DROPOUT, *extra)


def on_node(node: str, cmd: list[str]) -> list[str]:
    """`cmd` run on a node: in its network, hostname and mount namespaces, in the current directory."""
    return ["bash", str(CLUSTER), "exec", node, *cmd]


def node_run(node: str, cmd: list[str], timeout_s: float = 60) -> subprocess.CompletedProcess:
    return run(on_node(node, cmd), timeout_s=timeout_s, cwd=REPO)


def node_local(tag: str) -> Path:
    """A fresh path under each node's private disk (the host's own directory of that name stays empty)."""
    return NODE_LOCAL / f"{tag}-{uuid.uuid4().hex[:8]}"


def remove_node_local(path: Path) -> None:
    for node in NODES:
        node_run(node, ["rm", "-rf", str(path)])


def copy_from_node(node: str, path: Path, dest: Path) -> Path:
    """Copy a node-local file or folder to a shared path that the test can read."""
    proc = node_run(node, ["cp", "-r", str(path), str(dest)])
    assert proc.returncode == 0, proc.stderr
    return dest


def rel_l2(a: dict, b: dict) -> float:
    """||a - b|| / ||b|| over all parameters together."""
    assert a.keys() == b.keys()
    diff = torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in b))
    norm = torch.sqrt(sum((b[k].double() ** 2).sum() for k in b))
    return (diff / norm).item()


def reference_run(tmp_path: Path) -> dict:
    check_ok(train_cli(tiny(tmp_path, "ref"), nproc=4, timeout=240, env=job_env(tmp_path)))
    return weights(tmp_path / "ref" / "checkpoints" / "last.pt")


def multinode_problem() -> str:
    """Why the two-node tests cannot run here; '' when node1 and node2 are up and reachable."""
    if shutil.which("sinfo") is None:
        return "sinfo not found: no SLURM here (run slurm/dev-cluster.sh --nodes 2 as root)"
    try:
        proc = run(["sinfo", "-h", "-N", "-o", "%N %t"], timeout_s=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld not answering"
    states = dict(line.split() for line in proc.stdout.splitlines() if len(line.split()) == 2)
    # A node still completing the previous test's job ("comp") is up: the next job waits for it.
    usable = [n for n in NODES if states.get(n, "").rstrip("*~#") in ("idle", "mix", "alloc", "comp")]
    if len(usable) < len(NODES):
        return f"the two-node cluster is not up (sinfo: {proc.stdout.strip() or proc.stderr.strip()}; " \
               "run slurm/dev-cluster.sh --nodes 2 as root)"
    if not all(Path(f"/run/netns/distrib-{n}").exists() for n in NODES):
        return "node namespaces missing (run slurm/dev-cluster.sh --nodes 2 as root)"
    return ""

