"""CPU threads per rank from the launcher's allocation (distrib.parallel.threads), through real launches."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from distrib.parallel.threads import allocation
from tests.helpers import REPO, check_ok, clean_env, tiny

USABLE = len(os.sched_getaffinity(0))


def _env_without_threads() -> dict:
    env = clean_env()
    env.pop("OMP_NUM_THREADS")
    return env


def _threads_in_header(stdout: str) -> str:
    found = re.search(r"^model: .*?, (\d+ CPU threads? \([^)]*\))", stdout, re.MULTILINE)
    assert found, stdout[-3000:]
    return found.group(1)


def _plural(count: int) -> str:
    return f"{count} CPU thread" + ("" if count == 1 else "s")


def test_slurm_cpus_per_task_wins_and_never_exceeds_the_usable_cpus():
    assert allocation({"SLURM_CPUS_PER_TASK": "1"}, 4) == (1, "SLURM_CPUS_PER_TASK")
    assert allocation({"SLURM_CPUS_PER_TASK": str(USABLE + 8)}, 1) == (USABLE, "SLURM_CPUS_PER_TASK")


def test_the_usable_cpus_are_shared_by_the_ranks_of_a_node_with_at_least_one_each():
    assert allocation({}, 1)[0] == USABLE
    assert allocation({}, 2) == (max(USABLE // 2, 1), f"{USABLE} usable CPU{'s' * (USABLE != 1)} / 2 ranks on this node")
    assert allocation({}, 4 * USABLE)[0] == 1


@pytest.mark.slow
def test_distrib_run_gives_two_torchrun_workers_half_the_cpus_each(tmp_path):
    """Without OMP_NUM_THREADS, torchrun alone would give each of 2 workers 1 thread whatever the machine; the
    launcher shares the usable CPUs instead, and the header says how many and why."""
    proc = check_ok(subprocess.run(
        [sys.executable, "-m", "distrib.run", "--standalone", "--nproc_per_node=2",
         *tiny(tmp_path, "run", "train.epochs=1")],
        cwd=REPO, env=_env_without_threads(), capture_output=True, text=True, timeout=240))
    assert _threads_in_header(proc.stdout) == f"{_plural(max(USABLE // 2, 1))} ({USABLE} usable CPU" \
        f"{'s' * (USABLE != 1)} / 2 ranks on this node)"


@pytest.mark.slow
def test_threads_the_user_set_are_kept_and_named(two_rank_resumed_run):
    """The session's 2-rank torchrun job, launched with OMP_NUM_THREADS=1 (tests.helpers.clean_env)."""
    assert _threads_in_header(two_rank_resumed_run.first.stdout) == "1 CPU thread (OMP_NUM_THREADS)"


@pytest.mark.slow
def test_one_process_under_a_narrowed_cpu_set_uses_just_those(tmp_path):
    """taskset narrows the CPUs this process may run on, as a cgroup or SLURM's binding would."""
    proc = check_ok(subprocess.run(
        ["taskset", "-c", "0", sys.executable, "-m", "distrib.train", *tiny(tmp_path, "run", "train.epochs=1")],
        cwd=REPO, env=_env_without_threads(), capture_output=True, text=True, timeout=240))
    assert _threads_in_header(proc.stdout) == "1 CPU thread (1 usable CPU)"
