"""`dist.embedding_update=touched_rows`: sharded tables updated only in the rows a step looked up.

With TorchRec's DENSE kernel each rank's shard gets a dense gradient and torch's Adam walks the whole shard
every step: O(catalog / ranks) of memory traffic for a batch that touches at most 2 x batch rows. In this
mode the kernel looks its rows up itself, records the looked-up rows' gradients in backward (no dense
gradient is made), and after the optimizer's step applies the same Adam/AdamW update (the group's current lr,
betas, eps and weight decay) to those rows alone: "lazy Adam", the semantics of FBGEMM's fused sparse
optimizers and of `torch.optim.SparseAdam`. What differs from the dense update: a row's moments advance and
its weight decays only in the steps that look it up (Adam's bias correction counts every step). The state
is Adam's own (`step`, `exp_avg`, `exp_avg_sq` per table), so checkpoints do not change and a run may
switch between the two updates when it resumes.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class _RecordedLookup(torch.autograd.Function):
    """Rows of a kernel's flat storage; backward hands their gradients to `record` and gives the storage
    none (the optimizer's hook applies them)."""

    @staticmethod
    def forward(ctx, weights, row_index, width, record):
        ctx.row_index, ctx.record = row_index, record
        return weights.detach().view(-1, width).index_select(0, row_index)

    @staticmethod
    def backward(ctx, grad_rows):
        ctx.record((ctx.row_index, grad_rows))
        return None, None, None, None


def touched_rows_kernel(base: type) -> type:
    """A subclass of TorchRec's BatchedDenseEmbedding whose lookup records touched rows (sequence output:
    one row per id, feature-major, as TorchRec's sequence kernels return)."""

    class TouchedRowsEmbedding(base):
        touched: list

        def forward(self, features):
            values = features.values().long()
            start = self._feature_starts.to(values.device)
            counts = torch.tensor(features.length_per_key(), device=values.device)
            row_index = values + torch.repeat_interleave(start, counts, output_size=values.numel())
            return _RecordedLookup.apply(self._emb_module.weights, row_index, self._width, self.touched.append)

    return TouchedRowsEmbedding


def convert_kernel(kernel: nn.Module, cls: type) -> None:
    """Turn a BatchedDenseEmbedding into `cls` (from touched_rows_kernel) in place."""
    emb = kernel._emb_module
    widths = {dim for _, dim in emb.embedding_specs}
    if len(widths) != 1:
        raise RuntimeError(f"a touched-rows kernel needs one width per kernel, got {sorted(widths)}")
    kernel.__class__ = cls
    kernel._width = widths.pop()
    kernel._feature_starts = emb.weights_offsets.detach().cpu() // kernel._width  # each feature's first row
    kernel.touched = []


def attach_to_optimizer(kernels: list[nn.Module], optimizer: torch.optim.Optimizer) -> None:
    """After each `optimizer.step()` (which skips the tables: their gradients are None), the touched rows
    of each table get the optimizer's Adam update with its param group's settings."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    tables = []
    for kernel in kernels:
        for table in kernel._param_per_table.values():
            if id(table) not in group_of:
                raise RuntimeError("a sharded table is not among the optimizer's parameters")
            first = table._start_offset // kernel._width
            tables.append((kernel, table, first, first + table.shape[0], group_of[id(table)]))

    def update(opt, args, kwargs) -> None:
        recorded = {}
        for kernel in kernels:
            if kernel.touched:
                index, grads = zip(*kernel.touched)
                recorded[id(kernel)] = (torch.cat(index), torch.cat(grads))
                kernel.touched.clear()
        for kernel, table, first, last, group in tables:
            if id(kernel) in recorded:
                index, grads = recorded[id(kernel)]
                inside = (index >= first) & (index < last)
                _adam_rows(opt.state[table], table, index[inside] - first, grads[inside], group)

    optimizer.register_step_post_hook(update)


@torch.no_grad()
def _adam_rows(state: dict, table: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor, group: dict) -> None:
    """torch's Adam/AdamW step (as `torch.optim.adam`, amsgrad off) on the given rows of `table`; the
    gradients of repeated rows are summed first."""
    weight = table.data.as_subclass(torch.Tensor)
    if not state:  # Adam's own layout, so checkpoints and the dense update read it unchanged
        state["step"] = torch.zeros((), dtype=torch.float32, device=weight.device)
        state["exp_avg"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
    state["step"] += 1
    if rows.numel() == 0:
        return
    rows, position = torch.unique(rows, return_inverse=True)
    grad = torch.zeros(rows.numel(), weight.shape[1], dtype=grads.dtype, device=grads.device)
    grad.index_add_(0, position, grads)
    lr, (beta1, beta2), eps, decay = group["lr"], group["betas"], group["eps"], group["weight_decay"]
    step = state["step"].item()
    values = weight.index_select(0, rows)
    if decay and group.get("decoupled_weight_decay"):
        values.mul_(1 - lr * decay)
    elif decay:
        grad.add_(values, alpha=decay)
    exp_avg = state["exp_avg"].index_select(0, rows).lerp_(grad, 1 - beta1)
    exp_avg_sq = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
    values.addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
    weight.index_copy_(0, rows, values)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)
