"""`dist.embedding_update` for whole (replicated) embedding tables in one process: the touched-rows update.

A step looks up at most 2 x batch rows (a user's and a movie's per rating), yet the dense update makes a
gradient as large as every table, and Adam walks every row: at ml-25m's size (221,588 rows) most of a step's
time for rows it never looked up, and more the larger the catalog. Here the tables' lookups give sparse
gradients instead (`nn.Embedding(sparse=True)`: the looked-up rows only), the optimizer's fused dense Adam
skips them, and after its step the looked-up rows get the same Adam/AdamW update as sharded tables
(`distrib.parallel.touched_rows._adam_rows`: lazy Adam, as FBGEMM's fused optimizers and torch's SparseAdam).
The tables and their moments go on 2 MB pages (`advise_huge_pages`): on 4 KB pages each of a step's few
thousand scattered rows of a large table also costs a page walk. A step's cost then hardly depends on the
tables' size (benchmarks/touched_rows.py; docs/large-catalogs.md says where the rest goes).

What differs from the dense update, as with sharded tables: a row's moments advance and its weight decays
only in the steps that look it up (Adam's bias correction counts every step). That is the choice here because
the exact dense update cannot avoid the walk (every row's moments decay every step), and because it is
the update sharded runs already use, whose accuracy matched the dense one's (docs/sharding.md). The state is
Adam's own, so checkpoints do not change and a run may switch updates when it resumes.

Only in one process: on several ranks DDP would all-reduce sparse gradients, which NCCL cannot; shard the
tables there (`dist.embedding_sharding`), where the same update is the default.
"""
from __future__ import annotations

import ctypes
import sys

import torch
from torch import nn

from distrib.errors import UserError
from distrib.parallel.touched_rows import _adam_rows

# Under `auto`, whole tables take the touched-rows update when a step looks up at most this share of their
# rows (ml-10m and larger at batch 2000): there the dense walk is a large part of a step, and smaller data
# keeps the dense update its published results were trained with.
AUTO_MAX_TOUCHED_SHARE = 0.1

# Linux's transparent huge pages (x86-64, and arm64 with 4 KB base pages) and the madvise advice that asks
# for them: MADV_HUGEPAGE keeps a range on them from now on, MADV_COLLAPSE (Linux 6.1+) moves the pages the
# range already has onto them at once.
HUGE_PAGE_BYTES = 2 << 20
_MADV_HUGEPAGE, _MADV_COLLAPSE = 14, 25


def replicated_touched_rows(update: str, world_size: int, n_rows: int, batch_size: int, optimizer: str,
                            compiled: bool, graphed: bool) -> bool:
    """Whether whole tables take the touched-rows update (`dist.embedding_update`): possible in one process
    with adam or adamw, eager and uncaptured. n_rows: users + movies; batch_size: the global batch."""
    possible = world_size == 1 and optimizer in ("adam", "adamw") and not compiled and not graphed
    if update == "touched_rows" and not possible:
        raise UserError("dist.embedding_update=touched_rows: replicated tables (dist.embedding_sharding=none) take "
                        "it in one process with train.optimizer adam or adamw, without train.compile or "
                        "train.cuda_graph; on several ranks shard the tables, or use dist.embedding_update=auto")
    if update == "auto":
        return possible and 2 * batch_size <= AUTO_MAX_TOUCHED_SHARE * n_rows
    return update == "touched_rows"


def lookup_tables(model: nn.Module) -> list[nn.Embedding]:
    """Every table the model (or an ensemble member) names in `embedding_tables()`, once each."""
    tables = {}
    for module in model.modules():
        if callable(getattr(module, "embedding_tables", None)):
            tables.update({id(table): table for table in module.embedding_tables().values()})
    return list(tables.values())


def attach_sparse_tables(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Sparse gradients for the model's tables and the touched-rows update in `optimizer`: before each
    `step()` the tables' sparse gradients are taken out of its way (a parameter without a gradient is
    skipped), after it the looked-up rows are updated."""
    tables = lookup_tables(model)
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    for table in tables:
        if id(table.weight) not in group_of:
            raise RuntimeError("an embedding table is not among the optimizer's parameters")
        table.sparse = True
    pending: dict[int, torch.Tensor] = {}

    def take_gradients(opt, args, kwargs) -> None:
        for table in tables:
            grad = table.weight.grad
            if grad is not None and grad.is_sparse:
                pending[id(table)] = grad
                table.weight.grad = None

    @torch.profiler.record_function("touched_rows: update")
    def update(opt, args, kwargs) -> None:
        seen: list[tuple[torch.Tensor, tuple]] = []  # this step's ids and their torch.unique
        for table in tables:
            grad = pending.pop(id(table), None)
            distinct = None
            if grad is None:  # not looked up in this step: Adam's step count still advances
                rows = torch.empty(0, dtype=torch.int64, device=table.weight.device)
                values = table.weight.new_empty(0, table.embedding_dim)
            else:  # uncoalesced: _adam_rows sums the gradients of repeated rows itself
                rows, values = grad._indices()[0], grad._values()
                distinct = distinct_rows(rows, seen)
            state = opt.state[table.weight]
            first_step = not state  # _adam_rows makes the moments in a table's first step
            _adam_rows(state, table.weight, rows, values, group_of[id(table.weight)], distinct=distinct)
            if first_step:
                advise_table_and_moments(table.weight, state)

    def advise_loaded_moments(opt) -> None:  # a checkpoint's moments replace the ones the optimizer had
        for table in tables:
            if opt.state.get(table.weight):
                advise_table_and_moments(table.weight, opt.state[table.weight])

    optimizer.register_step_pre_hook(take_gradients)
    optimizer.register_step_post_hook(update)
    optimizer.register_load_state_dict_post_hook(advise_loaded_moments)


def advise_table_and_moments(weight: torch.Tensor, state: dict) -> None:
    """A table and its Adam moments on huge pages; called where the moments are made or loaded rather than at
    every step (the table's own memory stays where it is: loading a checkpoint copies into it)."""
    for tensor in (weight, state["exp_avg"], state["exp_avg_sq"]):
        advise_huge_pages(tensor)


def distinct_rows(ids: torch.Tensor, seen: list) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.unique(ids, return_inverse=True)`, sorted once per step for tables looked up with the same ids
    (a user table and the user biases); `seen` holds this step's ids and their result so far."""
    for earlier, distinct in seen:
        if earlier.shape == ids.shape and torch.equal(earlier, ids):
            return distinct
    distinct = torch.unique(ids, return_inverse=True)
    seen.append((ids, distinct))
    return distinct


def _libc_madvise():
    if not sys.platform.startswith("linux"):
        return None
    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes, madvise.restype = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int], ctypes.c_int
    return madvise


_madvise = _libc_madvise()


def advise_huge_pages(tensor: torch.Tensor) -> bool:
    """Back a CPU tensor's memory with 2 MB pages where Linux offers them (transparent huge pages not set to
    `never`); elsewhere, or where the kernel declines, nothing changes. Whether its whole 2 MB pages are huge
    pages now (False for a tensor smaller than one).

    A step reads and writes a few thousand rows scattered over tables of tens of MB (ml-25m's user table and
    its two Adam moments: 125 MB). On 4 KB pages nearly every row is on a page of its own, and each costs an
    address translation (a TLB miss and a page walk) on top of its own cache misses; a 2 MB page covers 8,192
    rows of 64 floats. benchmarks/touched_rows.py times the step both ways."""
    if _madvise is None or tensor.device.type != "cpu":
        return False
    storage = tensor.untyped_storage()
    start, end = storage.data_ptr(), storage.data_ptr() + storage.nbytes()
    first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES  # the whole huge pages inside the storage
    last = end // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if last <= first:
        return False
    _madvise(first, last - first, _MADV_HUGEPAGE)
    return _madvise(first, last - first, _MADV_COLLAPSE) == 0  # an older kernel refuses: the pages follow later
