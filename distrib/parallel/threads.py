"""CPU threads per rank: torch's intra-op thread count from the launcher's allocation, unless the user set it.

torch gives every process as many threads as the machine has cores, so N ranks on one node run N times too
many, and one process on a machine shared with others competes for cores it was never given. The count, in
order of precedence:

1. OMP_NUM_THREADS, where the user set it (torch reads it at start; kept as it is). Plain torchrun sets it to 1
   for each of several workers when it is unset; distrib cannot tell that from the user's, so it is kept too.
2. SLURM_CPUS_PER_TASK (a SLURM task's own allocation, `--cpus-per-task`, `slurm.cpus_per_task`), at most the
   CPUs this process may run on.
3. The CPUs this process may run on (os.sched_getaffinity: a cgroup, taskset or SLURM's binding narrow it),
   shared evenly by the ranks on this node (torchrun's and submitit's LOCAL_WORLD_SIZE); at least 1.

`python -m distrib.run` computes rule 3 before torchrun would set 1, and marks the value as its own
(THREADS_FROM_LAUNCHER), so its workers report where the count came from.
"""
from __future__ import annotations

import os

THREADS_FROM_LAUNCHER = "DISTRIB_THREADS_FROM_LAUNCHER"  # set by distrib.run beside the OMP_NUM_THREADS it chose

_chosen = ""  # what set_cpu_threads chose and why, for the run's header


def allocation(environ, local_ranks: int) -> tuple[int, str]:
    """Threads per rank from the launcher's allocation (rules 2 and 3), and where that number comes from."""
    usable = len(os.sched_getaffinity(0))
    per_task = environ.get("SLURM_CPUS_PER_TASK", "")
    if per_task.isdigit() and int(per_task) > 0:
        return min(int(per_task), usable), "SLURM_CPUS_PER_TASK"
    local_ranks = max(local_ranks, 1)
    if local_ranks == 1:
        return usable, plural(usable, 'usable CPU')
    return max(usable // local_ranks, 1), f"{plural(usable, 'usable CPU')} / {local_ranks} ranks on this node"


def set_cpu_threads(environ=None) -> int:
    """Set torch's threads by the rules above; returns the count (cpu_threads() describes it)."""
    import torch

    global _chosen
    environ = os.environ if environ is None else environ
    if environ.get("OMP_NUM_THREADS") and not environ.get(THREADS_FROM_LAUNCHER):
        count, why = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        local = environ.get("LOCAL_WORLD_SIZE", "")
        count, why = allocation(environ, int(local) if local.isdigit() else 1)
        torch.set_num_threads(count)
    _chosen = f"{plural(count, 'CPU thread')} ({why})"
    return count


def cpu_threads() -> str:
    """`2 CPU threads (4 usable CPUs / 2 ranks on this node)`, once set_cpu_threads has run ('' before)."""
    return _chosen


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
