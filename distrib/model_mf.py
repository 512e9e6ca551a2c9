"""Biased matrix factorisation (`model.name=mf`) and the per-rating L2 penalty that the trainer adds to its loss.

    prediction(u, i) = global_bias + user_bias[u] + item_bias[i] + <u[u], m[i]>

clamped to the rating scale in eval mode only (a clamp in training would zero the gradient of the
predictions outside it). The global bias starts at the middle of the scale; the factors start small
(std `MF_INIT_STD`), the biases at zero.

Regularisation is *per rating*, as in the classic SGD recipe (Koren, Bell, Volinsky 2009): every rating in
a batch adds `factor_reg * (|u_u|^2 + |m_i|^2) + bias_reg * (b_u^2 + b_i^2)`, so a user's (or item's)
total penalty scales with its number of ratings and rows not in the batch are not touched. Adam's
`train.weight_decay` instead shrinks every row at every step, rated or not, which for embeddings is a
different (and on MovieLens worse) prior. `build_penalty` gives the same penalty to EmbeddingNet's
embeddings (and its bias terms, when `model.bias=true`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from distrib.config import ModelConfig

MF_INIT_STD = 0.01


class BiasedMF(nn.Module):
    def __init__(self, n_users: int, n_items: int, n_factors: int, rating_min: float, rating_max: float):
        super().__init__()
        self.u = nn.Embedding(n_users, n_factors)  # the names EmbeddingNet uses: penalty and reports share them
        self.m = nn.Embedding(n_items, n_factors)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.tensor((rating_min + rating_max) / 2))
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)
        nn.init.normal_(self.u.weight, std=MF_INIT_STD)
        nn.init.normal_(self.m.weight, std=MF_INIT_STD)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        dot = (self.u(users).float() * self.m(items).float()).sum(-1)
        pred = self.global_bias + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1) + dot
        return pred if self.training else pred.clamp(self.rating_min, self.rating_max)


def build_penalty(cfg: ModelConfig, model: nn.Module) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None:
    """penalty(users, items): the batch's L2 term that the trainer adds to the summed squared error, or None.

    A model with its own `penalty` method (autorec) uses it. Otherwise, for a model with embeddings `u` and
    `m` and optional `user_bias` / `item_bias`, the per-rating term of `cfg.factor_reg` and `cfg.bias_reg`
    (None when both are 0). Each rank passes its own shard of the batch; the trainer scales it like the
    summed squared error, so the penalty of the global batch is what every world size optimises."""
    if callable(getattr(model, "penalty", None)):
        return model.penalty
    factor_reg, bias_reg = cfg.factor_reg, cfg.bias_reg
    if factor_reg == 0 and bias_reg == 0:
        return None
    user_bias, item_bias = getattr(model, "user_bias", None), getattr(model, "item_bias", None)

    def penalty(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        total = factor_reg * (model.u(users).float().pow(2).sum() + model.m(items).float().pow(2).sum())
        if bias_reg and user_bias is not None and item_bias is not None:
            total = total + bias_reg * (user_bias(users).float().pow(2).sum() + item_bias(items).float().pow(2).sum())
        return total

    return penalty
