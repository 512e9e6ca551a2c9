"""SLURM tests need a real cluster (slurm/dev-cluster.sh): they fail without one in CI, skip elsewhere."""
from __future__ import annotations

import pytest

from tests.helpers import skip_or_fail
from tests.launch.common import cluster_problem


@pytest.fixture(autouse=True)
def slurm_cluster():
    problem = cluster_problem()
    if problem:
        skip_or_fail(problem)
