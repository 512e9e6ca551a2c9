"""LAMB (`train.optimizer=lamb`; You et al., "Large Batch Optimization for Deep Learning", arXiv:1904.00962).

Adam's bias-corrected step plus decoupled weight decay, scaled per parameter tensor by the trust ratio
||w|| / ||step||: each layer, and each embedding table, moves by lr times its own norm whatever the scale of its
gradients, which is what keeps accuracy at very large batches in the paper. Where either norm is 0 (a tensor
initialised to zero) the ratio is 1. The lr therefore means a fraction of each tensor's norm per step, not
Adam's per-element step: the same train.lr does not carry over from Adam (docs/batch_scaling.md).

Written here because torch has no LAMB and the PyPI packages that do (torch-optimizer, last release 2021) are not
maintained; timm's is, but timm is a vision library far heavier than these lines.
"""
from __future__ import annotations

import torch

EPS = 1e-6  # the paper's (Adam's default is 1e-8)


class Lamb(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = EPS,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]  # read each step: one_cycle moves beta1
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb: sparse gradients are not supported")
                state = self.state[p]
                if not state:  # Adam's layout (a tensor step): a sharded checkpoint loads it in place
                    state.update(step=torch.zeros((), dtype=torch.float32), exp_avg=torch.zeros_like(p),
                                 exp_avg_sq=torch.zeros_like(p))
                state["step"] += 1
                p.sub_(_trusted_step(p, state, beta1, beta2, group))
        return loss


def _trusted_step(p: torch.Tensor, state: dict, beta1: float, beta2: float, group: dict) -> torch.Tensor:
    """lr * trust ratio * (Adam's bias-corrected step + weight_decay * w)."""
    m, v, t = state["exp_avg"], state["exp_avg_sq"], float(state["step"])  # an int in older checkpoints
    m.lerp_(p.grad, 1 - beta1)
    v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
    denom = (v / (1 - beta2 ** t)).sqrt_().add_(group["eps"])
    update = (m / (1 - beta1 ** t)).div_(denom)
    if group["weight_decay"]:
        update.add_(p, alpha=group["weight_decay"])
    w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
    ratio = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
    return update.mul_(ratio * group["lr"])
