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

import torch
from torch import nn
from torch.optim.adam import adam


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


def attach_to_optimizer(kernels: list[nn.Module], optimizer: torch.optim.Optimizer, trust_ratio: bool = False) -> None:
    """After each `optimizer.step()` (which skips the tables: their gradients are None), the touched rows
    of each table get the optimizer's Adam update with its param group's settings (trust_ratio, for
    train.optimizer=lamb: LAMB's update, each row with its own trust ratio)."""
    group_of = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    tables = []
    for kernel in kernels:
        for table in kernel._param_per_table.values():
            if id(table) not in group_of:
                raise RuntimeError("a sharded table is not among the optimizer's parameters")
            first = table._start_offset // kernel._width
            tables.append((kernel, table, first, first + table.shape[0], group_of[id(table)]))

    @torch.profiler.record_function("touched_rows: update")
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
                _adam_rows(opt.state[table], table, index[inside] - first, grads[inside], group, trust_ratio)

    optimizer.register_step_post_hook(update)


@torch.no_grad()
def _adam_rows(state: dict, table: torch.Tensor, rows: torch.Tensor, grads: torch.Tensor, group: dict,
               trust_ratio: bool = False, distinct: tuple[torch.Tensor, torch.Tensor] | None = None) -> None:
    """torch's Adam/AdamW step (its fused kernel, amsgrad off) on the given rows of `table`; the gradients of
    repeated rows are summed first. trust_ratio: LAMB's step instead, each row its own trust ratio.
    distinct: `torch.unique(rows, return_inverse=True)` where the caller already has it (another table
    looked up with the same ids), so the ids are sorted once."""
    weight = table.data.as_subclass(torch.Tensor)
    if not state:  # Adam's own layout, so checkpoints and the dense update read it unchanged
        state["step"] = torch.zeros((), dtype=torch.float32, device=weight.device)
        state["exp_avg"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(weight, memory_format=torch.preserve_format)
    if rows.numel() == 0:
        state["step"] += 1  # bias correction counts every step
        return
    rows, position = distinct if distinct is not None else torch.unique(rows, return_inverse=True)
    grad = torch.zeros(rows.numel(), weight.shape[1], dtype=grads.dtype, device=grads.device)
    grad.index_add_(0, position, grads)
    values = weight.index_select(0, rows)
    exp_avg, exp_avg_sq = state["exp_avg"].index_select(0, rows), state["exp_avg_sq"].index_select(0, rows)
    (beta1, beta2), settings = group["betas"], {"lr": group["lr"], "weight_decay": group["weight_decay"],
                                                 "eps": group["eps"]}
    if trust_ratio:
        state["step"] += 1
        _lamb_rows(values, grad, exp_avg, exp_avg_sq, float(state["step"]), beta1, beta2, **settings)
    else:  # one fused pass over the gathered rows (it advances state["step"])
        adam([values], [grad], [exp_avg], [exp_avg_sq], [], [state["step"]], fused=True,
                              decoupled_weight_decay=bool(group.get("decoupled_weight_decay")), amsgrad=False,
                              beta1=beta1, beta2=beta2, maximize=False, **settings)
    weight.index_copy_(0, rows, values)
    state["exp_avg"].index_copy_(0, rows, exp_avg)
    state["exp_avg_sq"].index_copy_(0, rows, exp_avg_sq)


def _lamb_rows(values, grad, exp_avg, exp_avg_sq, step: float, beta1: float, beta2: float, lr: float,
               weight_decay: float, eps: float) -> None:
    """LAMB's step (distrib.training.lamb) on gathered rows, in place, with each row's own trust ratio
    ||row|| / ||row's step||: a row moves by lr times its norm, as a whole tensor does under LAMB, and the
    figure is the same on any number of ranks (a shard's norm would not be)."""
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    denom = (exp_avg_sq / (1 - beta2**step)).sqrt_().add_(eps)
    update = (exp_avg / (1 - beta1**step)).div_(denom)
    if weight_decay:
        update.add_(values, alpha=weight_decay)
    w_norm = torch.linalg.vector_norm(values, dim=1, keepdim=True)
    u_norm = torch.linalg.vector_norm(update, dim=1, keepdim=True)
    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
    values.sub_(update.mul_(ratio * lr))
