"""Two-node tests need the namespace cluster (slurm/dev-cluster.sh --nodes 2): they fail without it in CI,
skip elsewhere. The reference every two-node run is compared with, 1 node x 4 processes, is trained once."""
from __future__ import annotations

import pytest

from tests.helpers import skip_or_fail
from tests.multinode.common import multinode_problem, reference_run


@pytest.fixture(autouse=True)
def two_node_cluster():
    problem = multinode_problem()
    if problem:
        skip_or_fail(problem)


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """Final weights of the tiny run on this host as one node x 4 torchrun processes."""
    return reference_run(tmp_path_factory.mktemp("reference"))
