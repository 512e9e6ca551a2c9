"""train.precision: auto picks bf16 where the device computes it natively and faster than fp32, else fp32.

Native bf16: a CUDA GPU that supports it (torch.cuda.is_bf16_supported), or a CPU with AVX512-BF16 or AMX tiles
(the avx512_bf16 / amx_bf16 flags of /proc/cpuinfo; where that file is absent, oneDNN's own bf16 check). On a CPU
without them (AVX2) oneDNN emulates bf16 matmuls, which run an order of magnitude slower than fp32: an explicit
train.precision=bf16 there still runs, after one warning that names the CPU and the measured slowdown.

The flags alone do not make bf16 pay on a CPU: AMX runs a hidden layer's matmul several times faster in bf16, an
AMD EPYC with AVX512-BF16 about 5x, but some Intel VMs that report avx512_bf16 without AMX run it 1.5x slower than
fp32. So on a CPU `auto` also times that matmul in both precisions once per process and takes bf16 only when it is
clearly faster; ranks of one job then agree on the slowest rank's verdict (`agree_across_ranks`).
"""
from __future__ import annotations

import time
import warnings
from functools import lru_cache
from pathlib import Path

import torch
import torch.distributed as dist

NATIVE_CPU_FLAGS = {"avx512_bf16", "amx_bf16"}
# auto takes bf16 on a CPU only when its matmul takes at most this share of fp32's time: near parity fp32's
# exactness wins, and the margin keeps a noisy measurement from flipping the choice between runs
BF16_MAX_TIME_SHARE = 0.8
_warned: set[str] = set()


@lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where it cannot be read (not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


def cpu_description() -> str:
    """The CPU's model name and torch's vector capability, e.g. 'AMD EPYC (AVX2)'."""
    name = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({torch.backends.cpu.get_cpu_capability()})"


def native_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    flags = cpu_flags()
    if flags is not None:
        return bool(NATIVE_CPU_FLAGS & flags)
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_precision(requested: str, device: torch.device) -> str:
    """fp32 or bf16 for train.precision on `device`; warns once per process about bf16 without native support."""
    if requested == "auto":
        return "bf16" if native_bf16(device) and bf16_pays(device) else "fp32"
    if requested == "bf16" and not native_bf16(device) and device.type not in _warned:
        _warned.add(device.type)
        warnings.warn(f"train.precision=bf16: {_describe(device)} has no native bf16 (bf16 matmul measured "
                      f"{bf16_slowdown(device):.0f}x slower than fp32 here); train.precision=auto picks fp32",
                      stacklevel=2)
    return requested


@lru_cache(maxsize=None)
def bf16_pays(device: torch.device) -> bool:
    """Whether bf16 autocast speeds up this device's matmuls: always on a CUDA GPU with native bf16; on a CPU, a
    hidden layer's matmul timed in both precisions must take at most BF16_MAX_TIME_SHARE of fp32's time in bf16."""
    if device.type != "cpu":
        return True
    return bf16_slowdown(device, rows=1024, repeats=5) <= BF16_MAX_TIME_SHARE


def agree_across_ranks(precision: str, device: torch.device) -> str:
    """fp32 on every rank if any rank resolved fp32: a CPU's timed verdict may differ between hosts (or, near the
    margin, between processes), and ranks of one job must train in one precision."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return precision
    vote = torch.tensor([int(precision == "bf16")], device=device)
    dist.all_reduce(vote, op=dist.ReduceOp.MIN)
    return "bf16" if vote.item() else "fp32"


def _describe(device: torch.device) -> str:
    return cpu_description() if device.type == "cpu" else str(device)


def bf16_slowdown(device: torch.device, rows: int = 512, width: int = 500, repeats: int = 3) -> float:
    """Time of a (rows x width) @ (width x width) matmul in bf16 over fp32 (a hidden layer's shape), best of
    `repeats` (the first call of each precision pays one-time kernel setup; the best of several skips it)."""
    def best(dtype):
        a = torch.randn(rows, width, dtype=dtype, device=device)
        b = torch.randn(width, width, dtype=dtype, device=device)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        return min(times)

    return best(torch.bfloat16) / max(best(torch.float32), 1e-9)
