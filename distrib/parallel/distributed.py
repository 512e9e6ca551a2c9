"""One resolver from any launcher's environment to torch.distributed, the device choice, the process-group
lifecycle, and the DDP wrap with its gradient-communication hook.

Order matters: a full torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK) wins over SLURM's, so that
`srun torchrun` gets torchrun's ranks (Lightning and dinov2 both got this wrong); then SLURM tasks
(SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID), master = first host of the node list, port derived from
the job id; then a plain single process. A partial environment is an error.
"""
from __future__ import annotations

import datetime
import os
import re
import socket
import subprocess
import time
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from distrib.config import DistConfig
from distrib.errors import UserError

TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
SLURM_KEYS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")
PORT_BASE, PORT_SPAN = 20000, 20000


@dataclass(frozen=True)
class DistEnv:
    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int
    launcher: str  # torchrun, slurm, single, or submitit-local (a torchrun-style environment from launch.job)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_env(environ: dict | None = None) -> DistEnv:
    env = os.environ if environ is None else environ
    torchrun = [k for k in TORCHRUN_KEYS if k in env]
    if len(torchrun) == len(TORCHRUN_KEYS):
        return DistEnv(
            rank=_int(env, "RANK"), local_rank=_int(env, "LOCAL_RANK"), world_size=_int(env, "WORLD_SIZE"),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"), master_port=_int(env, "MASTER_PORT", 29500),
            # launch.job exports this torchrun-style environment for submitit's local executor and names itself
            launcher=env.get("DISTRIB_LAUNCHER") or "torchrun",
        )
    if torchrun:
        missing = ", ".join(k for k in TORCHRUN_KEYS if k not in env)
        raise UserError(f"partial torchrun environment: {', '.join(torchrun)} set but {missing} missing")
    slurm = [k for k in SLURM_KEYS if k in env]
    # Only an srun task is a rank. The batch shell itself (sbatch -n2) also has SLURM_PROCID=0,
    # SLURM_LOCALID=0 and SLURM_NTASKS=2 (Slurm 22.05, checked), but no SLURM_STEP_ID: srun sets that
    # (with SLURM_STEP_NUM_TASKS) only in a step's tasks. Without it, this is one process.
    if len(slurm) == len(SLURM_KEYS) and _int(env, "SLURM_NTASKS") >= 1 and "SLURM_STEP_ID" in env:
        # SLURM_JOB_ID is unique per array member (the array's id is SLURM_ARRAY_JOB_ID) and stays
        # the same across requeues, so the port is too.
        port = env.get("MASTER_PORT") or str(port_from_job_id(env.get("SLURM_JOB_ID", "0")))
        return DistEnv(
            rank=_int(env, "SLURM_PROCID"), local_rank=_int(env, "SLURM_LOCALID"),
            world_size=_int(env, "SLURM_NTASKS"),
            master_addr=env.get("MASTER_ADDR") or first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")),
            master_port=int(port), launcher="slurm",
        )
    if slurm and "SLURM_STEP_ID" in env:
        missing = ", ".join(k for k in SLURM_KEYS if k not in env)
        raise UserError(f"partial SLURM task environment: {missing} missing")
    return DistEnv(0, 0, 1, "127.0.0.1", _int(env, "MASTER_PORT", 0) or _free_port(), "single")


def port_from_job_id(job_id: str, task_id: str = "0") -> int:
    """A port every task of a job derives alike, spread so concurrent jobs on a node rarely collide."""
    digits = int(re.sub(r"\D", "", f"{job_id}{task_id}") or 0)
    return PORT_BASE + digits % PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: `scontrol show hostnames` when present, else parsed here."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                             timeout=10, check=True).stdout.split()
        if out:
            return out[0]
    except (OSError, subprocess.SubprocessError):
        pass
    head = re.split(r",(?![^\[]*\])", nodelist)[0]  # first comma-separated entry outside brackets
    match = re.match(r"([^\[]*)\[([^\]]+)\]", head)
    if not match:
        return head
    first = match.group(2).split(",")[0].split("-")[0]
    return match.group(1) + first


def select_device(requested: str, local_rank: int = 0, key: str = "train.device") -> torch.device:
    """The device `requested` (auto, cpu or cuda) names for this local rank; `key` is the setting that
    asked, named in the error when CUDA is asked for and absent."""
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserError(f"{key}=cuda but no CUDA device is available")
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)  # before init_process_group, so NCCL binds the right GPU
        return device
    return torch.device("cpu")


def init_process_group(env: DistEnv, device: torch.device, backend: str, timeout_s: float) -> None:
    """Form the group (also for one process, so the code path is the same everywhere)."""
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    os.environ.setdefault("MASTER_ADDR", env.master_addr)
    os.environ.setdefault("MASTER_PORT", str(env.master_port))
    kwargs = {}
    if backend == "nccl":
        kwargs["device_id"] = device
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    if env.launcher == "torchrun" and restart != "0":
        kwargs["store"] = _fresh_round_store(env, restart, timeout_s)
    import_before_group()
    dist.init_process_group(
        backend=backend, rank=env.rank, world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s), **kwargs,
    )


def import_before_group() -> None:
    """Import torch.distributed.nn before any process group exists, so that nothing outlives the group.

    Its functions take `group=group.WORLD` as a default argument, read when the module is imported. torch imports
    it lazily (the first optimizer loads torch._dynamo, which loads FSDP and sharded tensors), which happens after
    the group formed: the defaults then hold the default group for good, `destroy_process_group` cannot free it,
    and gloo's backend with its threads (two workers and the TCP loop) is torn down inside the interpreter's
    finalization instead, where a native thread that needs the exiting interpreter is ended by pthread_exit and
    C++ turns that into "terminate called without an active exception" (SIGABRT) after a job that ended well.
    Imported first, the defaults are None (the current default group at call time)."""
    import torch.distributed.nn  # noqa: F401


_PEERS: list[tuple[str, int, str]] = []  # (host, pid, address) of every rank, gathered once the group forms


def record_peers() -> None:
    _PEERS.clear()
    if dist.is_initialized():
        peers: list = [None] * dist.get_world_size()
        dist.all_gather_object(peers, (socket.gethostname(), os.getpid(), _own_address()))
        _PEERS.extend(peers)


def host_count() -> int:
    """How many hosts the ranks run on (1 before the group forms)."""
    return len({peer_host for peer_host, _, _ in _PEERS}) or 1


def _own_address() -> str:
    """The address gloo gives the other ranks (its default device is the one the hostname resolves to)."""
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return ""


def is_peer_failure(err: BaseException) -> bool:
    """A collective broke because another rank went away (gloo closes the socket; NCCL or gloo time out)."""
    text = str(err)
    return isinstance(err, getattr(dist, "DistBackendError", ())) or any(
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Timed out",
                                      "timed out", "NCCL", "gloo"))


def describe_lost_peers(error: str = "", grace_s: float = 3.0) -> str:
    """Which ranks are gone, as far as this rank can tell. A peer address in gloo's error ("Connection closed
    by peer [10.0.0.2]:41234") that belongs to another host names that host and its ranks; it is read first,
    because this host's other ranks see the same loss and exit on their own. Otherwise this host's ranks are
    probed by process, each given a moment to finish dying (its sockets close while it is still exiting)."""
    host = socket.gethostname()
    peer = re.search(r"\[([0-9A-Fa-f.:]+)\]:\d+", error)
    hosts = {peer_host for peer_host, _, address in _PEERS if peer and address == peer.group(1) and peer_host != host}
    if len(hosts) == 1:
        (gone,) = hosts
        ranks = [rank for rank, (peer_host, _, _) in enumerate(_PEERS) if peer_host == gone]
        return f"lost the connection to host {gone} (rank {', '.join(map(str, ranks))})"
    local = [(rank, pid) for rank, (peer_host, pid, _) in enumerate(_PEERS) if peer_host == host]
    remote = [rank for rank, (peer_host, _, _) in enumerate(_PEERS) if peer_host != host]
    deadline = time.monotonic() + grace_s
    while True:
        lost = [rank for rank, pid in local if not _alive(pid)]
        if lost or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    if lost:
        return f"lost rank {', '.join(map(str, lost))}"
    return f"lost a rank on another host (ranks {remote})" if remote else "lost a peer rank"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a killed, unreaped rank is a zombie
    except OSError:
        return False


def failure_reason(err: BaseException) -> str:
    text = str(err)
    for marker in ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out"):
        if marker in text:
            return marker.lower()
    return text.strip().splitlines()[-1][:120] if text.strip() else type(err).__name__


def _fresh_round_store(env: DistEnv, restart: str, timeout_s: float) -> dist.Store:
    """After a torchrun restart, the store torchrun shares with its workers still holds the previous round's
    addresses, and gloo's connectFullMesh reads them (pytorch/pytorch#135712). A prefix per restart round
    keeps each round's keys apart."""
    agent_hosts = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
    store = dist.TCPStore(env.master_addr, env.master_port, env.world_size, is_master=env.is_main and not agent_hosts,
                          timeout=datetime.timedelta(seconds=timeout_s))
    return dist.PrefixStore(f"distrib/restart-{restart}", store)


def wrap_ddp(model: torch.nn.Module, device: torch.device, cfg: DistConfig | None = None) -> torch.nn.Module:
    """DDP around `model` when a process group exists (the model itself otherwise)."""
    if not dist.is_initialized():
        return model
    cfg = cfg or DistConfig()
    ids = [device.index] if device.type == "cuda" else None
    # Buffers are identical on every rank (autorec's rating matrix): no need to broadcast them each step.
    # Small buckets (dist.bucket_cap_mb): the MLP's gradients are all-reduced while the embeddings' backward runs.
    # gradient_as_bucket_view: .grad is a view of DDP's bucket, which saves a copy of every gradient per step.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.13 renames broadcast_buffers; older torch lacks the new name
        ddp = DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False,
                                      bucket_cap_mb=cfg.bucket_cap_mb, gradient_as_bucket_view=True)
    if cfg.grad_compression == "bf16":
        ddp.register_comm_hook(None, bf16_allreduce_hook)
    return ddp


def bf16_allreduce_hook(group, bucket):
    """DDP's bf16_compress_hook (average in bf16 on the wire, back to fp32), which torch refuses outside CUDA/XPU;
    gloo all-reduces bf16 on CPU. Every rank decompresses the same bf16 sum, so ranks stay identical."""
    group = group if group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(group.size())
    future = dist.all_reduce(compressed, group=group, async_op=True).get_future()

    def decompress(fut):
        buffer.copy_(fut.value()[0])
        return buffer

    return future.then(decompress)


def close_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _int(env, key: str, default: int | None = None) -> int:
    value = env.get(key)
    if value is None or value == "":
        if default is None:
            raise UserError(f"environment variable {key} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"environment variable {key}={value!r} is not an integer") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
