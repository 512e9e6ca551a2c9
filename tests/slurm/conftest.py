"""SLURM tests need a real cluster (slurm/dev-cluster.sh): they fail without one in CI, skip elsewhere."""
from __future__ import annotations

import pytest

from tests.launch.common import cluster_problem, in_ci


@pytest.fixture(autouse=True)
def slurm_cluster():
    problem = cluster_problem()
    if problem:
        if in_ci():
            pytest.fail(f"CI=true but {problem}")
        pytest.skip(problem)
