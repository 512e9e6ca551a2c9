"""The two-node dev cluster itself: two hosts with their own names and addresses, and another cluster's
slurmctld state reported in one line and left alone."""
from __future__ import annotations

import pytest

from tests.launch.common import run
from tests.multinode.common import ADDRESS, CLUSTER, NODES, node_run

pytestmark = pytest.mark.multinode
STATE = "/var/spool/slurmctld/clustername"


@pytest.mark.timeout(60)
def test_srun_on_two_nodes_runs_on_two_hosts():
    proc = run(["srun", "-N2", "-n2", "--label", "sh", "-c", "echo $(hostname) $(hostname -i)"])
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == [f"{i}: {n} {ADDRESS[n]}" for i, n in enumerate(NODES)]


@pytest.mark.timeout(60)
def test_nodes_reach_each_other_but_not_each_others_disk():
    assert node_run("node1", ["python3", "-c", f"import socket; socket.create_connection(('{ADDRESS['node2']}', "
                                               "6818), timeout=5)"]).returncode == 0  # node2's slurmd
    assert node_run("node2", ["sh", "-c", "mountpoint -q /srv/distrib-local"]).returncode == 0
    assert run(["mountpoint", "-q", "/srv/distrib-local"]).returncode != 0  # the host's is a plain folder


@pytest.mark.timeout(120)
def test_state_of_another_cluster_name_is_named_in_one_line_and_kept():
    before = open(STATE).read()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DISTRIB_SLURM_CLUSTER": "some-other-cluster"}
    proc = run(["bash", str(CLUSTER), "--nodes", "2"], timeout_s=100, env=env)
    assert proc.returncode == 1
    assert proc.stderr.splitlines() == [
        f"dev-cluster: error: /var/spool/slurmctld holds the state of another cluster, '{before.strip()}' "
        "(slurmctld would stop with CLUSTER NAME MISMATCH); rerun with --reset to move it aside, or with "
        f"DISTRIB_SLURM_CLUSTER={before.strip()} to run as that cluster"], proc.stderr
    assert open(STATE).read() == before
    assert run(["sinfo", "-h", "-N", "-o", "%N"]).stdout.split() == list(NODES)  # still up, untouched
