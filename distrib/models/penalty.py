"""The per-rating L2 penalty that the trainer adds to its summed squared error.

Regularisation is *per rating*, as in the classic SGD recipe (Koren, Bell, Volinsky 2009): every rating in
a batch adds `factor_reg * (|u_u|^2 + |m_i|^2) + bias_reg * (b_u^2 + b_i^2)`, so a user's (or item's)
total penalty scales with its number of ratings and rows not in the batch are not touched. Adam's
`train.weight_decay` instead shrinks every row at every step, rated or not, which for embeddings is a
different (and on MovieLens worse) prior.
"""
from __future__ import annotations

from typing import Callable

import torch

from distrib.config import ModelConfig
from distrib.models.base import RatingModel

Penalty = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_penalty(cfg: ModelConfig, model: RatingModel) -> Penalty | None:
    """penalty(users, items): the batch's L2 term that the trainer adds to the summed squared error, or None.

    A model that owns its penalty (autorec, ensemble) uses it. Otherwise the per-rating term of
    `cfg.factor_reg` on the "user" and "movie" tables and `cfg.bias_reg` on "user_bias" and "movie_bias"
    where the model has them (None when both are 0). Each rank passes its own shard of the batch; the
    trainer scales it like the summed squared error, so the penalty of the global batch is what every
    world size optimises."""
    if model.owns_penalty:
        return model.penalty
    factor_reg, bias_reg = cfg.factor_reg, cfg.bias_reg
    if factor_reg == 0 and bias_reg == 0:
        return None

    def penalty(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        # Tables looked up at each call: sharded tables (distrib.parallel.sharding) take their place after this is built
        tables = model.embedding_tables()
        user, movie = tables.get("user"), tables.get("movie")
        user_bias, movie_bias = tables.get("user_bias"), tables.get("movie_bias")
        total = torch.zeros((), device=users.device)
        if factor_reg and user is not None and movie is not None:  # the baseline (bias) has no factors
            total = factor_reg * (user(users).float().pow(2).sum() + movie(items).float().pow(2).sum())
        if bias_reg and user_bias is not None and movie_bias is not None:
            total = total + bias_reg * (user_bias(users).float().pow(2).sum() + movie_bias(items).float().pow(2).sum())
        return total

    return penalty
