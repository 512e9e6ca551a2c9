"""resolve_env: which launcher's environment wins, and what each launcher's real variables resolve to.

The SLURM environments below are what Slurm 22.05 gives (captured on the dev cluster from
slurm/dev-cluster.sh): the batch shell of `sbatch -n2` looks like rank 0 of 2 except for SLURM_STEP_ID,
which only srun's tasks have.
"""
from __future__ import annotations

import pytest

from distrib.errors import UserError
from distrib.parallel.distributed import first_host, port_from_job_id, resolve_env

BATCH_SHELL = {  # sbatch -n2, the script itself (no srun)
    "SLURM_JOB_ID": "4", "SLURM_JOBID": "4", "SLURM_JOB_NODELIST": "vm", "SLURM_NODELIST": "vm",
    "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1", "SLURM_NTASKS": "2", "SLURM_NPROCS": "2",
    "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "SLURM_TASKS_PER_NODE": "2",
}


def srun_task(procid: int, localid: int, ntasks: int = 2, job_id: str = "4", nodelist: str = "vm", **extra) -> dict:
    env = dict(BATCH_SHELL, SLURM_JOB_ID=job_id, SLURM_JOBID=job_id, SLURM_JOB_NODELIST=nodelist,
               SLURM_NODELIST=nodelist, SLURM_NTASKS=str(ntasks), SLURM_PROCID=str(procid),
               SLURM_LOCALID=str(localid), SLURM_STEP_ID="0", SLURM_STEPID="0",
               SLURM_STEP_NUM_TASKS=str(ntasks), SLURM_STEP_NODELIST=nodelist)
    env.update(extra)
    return env


def torchrun(rank: int, world: int, local: int, **extra) -> dict:
    env = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local),
           "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "29400"}
    env.update(extra)
    return env


def test_plain_process_is_single():
    env = resolve_env({})
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("single", 0, 1, 0)
    assert env.is_main and env.master_port > 0


def test_batch_shell_is_single_not_rank_zero_of_two():
    env = resolve_env(BATCH_SHELL)
    assert (env.launcher, env.world_size) == ("single", 1)


def test_srun_task_is_a_slurm_rank():
    env = resolve_env(srun_task(procid=1, localid=1))
    assert (env.launcher, env.rank, env.local_rank, env.world_size) == ("slurm", 1, 1, 2)
    assert not env.is_main
    assert env.master_addr == "vm"
    assert env.master_port == port_from_job_id("4")


def test_every_task_of_a_job_agrees_on_the_rendezvous():
    tasks = [resolve_env(srun_task(p, p % 4, ntasks=8, nodelist="gpu[07-08]")) for p in range(8)]
    assert {(t.master_addr, t.master_port) for t in tasks} == {("gpu07", port_from_job_id("4"))}
    assert [t.rank for t in tasks] == list(range(8))
    assert [t.local_rank for t in tasks] == [0, 1, 2, 3] * 2


def test_requeue_keeps_the_port():
    before = resolve_env(srun_task(0, 0, job_id="812"))
    after = resolve_env(srun_task(0, 0, job_id="812", SLURM_RESTART_COUNT="1"))
    assert before.master_port == after.master_port


def test_array_members_get_their_own_port():
    # Each member of array 50 has its own SLURM_JOB_ID (here 50 and 51); 50_1 and 501_0 must not collide.
    ports = {resolve_env(srun_task(0, 0, job_id=job, SLURM_ARRAY_JOB_ID=array, SLURM_ARRAY_TASK_ID=task)).master_port
             for job, array, task in (("50", "50", "0"), ("51", "50", "1"), ("501", "501", "0"))}
    assert len(ports) == 3


def test_explicit_master_overrides_slurm_derivation():
    env = resolve_env(srun_task(0, 0, MASTER_ADDR="10.1.2.3", MASTER_PORT="31000"))
    assert (env.master_addr, env.master_port) == ("10.1.2.3", 31000)


def test_torchrun_inside_srun_uses_torchrun_ranks():
    # srun -n1 torchrun --nproc_per_node=4: SLURM says rank 0 of 1, torchrun says rank 3 of 4.
    env = resolve_env({**srun_task(0, 0, ntasks=1), **torchrun(3, 4, 3)})
    assert (env.launcher, env.rank, env.world_size, env.local_rank) == ("torchrun", 3, 4, 3)
    assert (env.master_addr, env.master_port) == ("10.0.0.1", 29400)


@pytest.mark.parametrize("missing", ["RANK", "WORLD_SIZE", "LOCAL_RANK"])
def test_partial_torchrun_environment_is_an_error(missing):
    env = torchrun(0, 2, 0)
    del env[missing]
    with pytest.raises(UserError, match=missing):
        resolve_env(env)


def test_partial_srun_environment_is_an_error():
    env = srun_task(0, 0)
    del env["SLURM_LOCALID"]
    with pytest.raises(UserError, match="SLURM_LOCALID"):
        resolve_env(env)


def test_non_integer_rank_is_an_error():
    with pytest.raises(UserError, match="SLURM_PROCID"):
        resolve_env(srun_task(0, 0, SLURM_PROCID="x"))


@pytest.mark.parametrize("nodelist, first", [
    ("vm", "vm"),
    ("node[01-04,07]", "node01"),
    ("gpu-[3,5-6],cpu1", "gpu-3"),
    ("a1,b[2-3]", "a1"),
])
def test_first_host(nodelist, first):
    assert first_host(nodelist) == first


def test_port_is_in_range_and_stable():
    assert port_from_job_id("123456") == port_from_job_id("123456")
    assert all(20000 <= port_from_job_id(str(j)) < 40000 for j in (0, 1, 19999, 20000, 10**9))


def test_a_lost_remote_host_is_named_with_its_ranks_from_the_peer_address(monkeypatch):
    import socket

    from distrib.parallel import distributed
    monkeypatch.setattr(socket, "gethostname", lambda: "node1")
    peers = [("node1", 11, "10.77.0.11"), ("node1", 12, "10.77.0.11"), ("node2", 21, "10.77.0.12"),
             ("node2", 22, "10.77.0.12")]
    monkeypatch.setattr(distributed, "_PEERS", peers)
    error = "[gloo/transport/tcp/pair.cc:534] Connection closed by peer [10.77.0.12]:45679"
    assert distributed.describe_lost_peers(error) == "lost the connection to host node2 (rank 2, 3)"
    assert distributed.host_count() == 2
    # No address to go by (a timeout): the remote ranks are listed as candidates, after this host's are probed.
    monkeypatch.setattr(distributed, "_alive", lambda pid: True)
    assert distributed.describe_lost_peers("Timed out", grace_s=0) == "lost a rank on another host (ranks [2, 3])"
