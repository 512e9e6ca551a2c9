"""The sharded batch sampler: one seeded permutation per epoch, shared by every rank.

Global step t of an epoch always covers the same ratings, perm[t*B:(t+1)*B], whatever the world size;
each rank takes a contiguous slice of it (sizes differ by at most one when B does not divide). The last
partial global batch is dropped, as the article does, so every rank runs the same number of steps and no
rating is seen twice in an epoch.
"""
from __future__ import annotations

import torch


def epoch_permutation(n: int, seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Identical on every rank: depends only on (seed, epoch). int32 where it fits: the same permutation as int64
    (the generator's draws do not depend on the dtype) at half of each rank's private memory (72 MB instead of 144
    for ml-25m's 18M training ratings)."""
    generator = torch.Generator().manual_seed(_mix(seed, epoch))
    dtype = torch.int32 if n < 2**31 else torch.int64
    return torch.randperm(n, generator=generator, dtype=dtype).to(device)


def steps_per_epoch(n: int, global_batch: int) -> int:
    return n // global_batch


def rank_slice(global_batch: int, rank: int, world_size: int) -> tuple[int, int]:
    """[start, stop) of this rank's part of a global batch; sizes differ by at most one."""
    base, extra = divmod(global_batch, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous, unpadded shard of n items (for validation): every item on exactly one rank."""
    return rank_slice(n, rank, world_size)


def rank_batches(perm: torch.Tensor, global_batch: int, rank: int, world_size: int, start_step: int = 0):
    """Yield this rank's index tensor for each global step from start_step to the end of the epoch."""
    lo, hi = rank_slice(global_batch, rank, world_size)
    for step in range(start_step, steps_per_epoch(perm.numel(), global_batch)):
        offset = step * global_batch
        yield perm[offset + lo: offset + hi]


def _mix(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63 - 1)
