"""Biased matrix factorisation (`model.name=mf`).

    prediction(u, i) = global_bias + user_bias[u] + item_bias[i] + <u[u], m[i]>

clamped to the rating scale in eval mode only (a clamp in training would zero the gradient of the
predictions outside it). The global bias starts at the middle of the scale; the factors start small
(std `MF_INIT_STD`), the biases at zero.

Its regularisation is the per-rating L2 of `distrib.models.penalty` (`model.factor_reg`, `model.bias_reg`).
"""
from __future__ import annotations

import torch
from torch import nn

from distrib.models.base import RatingModel

MF_INIT_STD = 0.01


class BiasedMF(RatingModel):
    def __init__(self, n_users: int, n_items: int, n_factors: int, rating_min: float, rating_max: float):
        super().__init__()
        self.u = nn.Embedding(n_users, n_factors)  # EmbeddingNet's names, so checkpoints read alike
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

    @torch.no_grad()
    def score_items(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), n_items) eval-mode predictions of every movie: one matrix product plus the biases."""
        dot = self.u(users).float() @ self.m.weight.float().T
        pred = self.global_bias + self.user_bias(users) + self.item_bias.weight.T + dot
        return pred.clamp(self.rating_min, self.rating_max)

    def score_items_flops(self) -> float:
        return float(2 * self.m.embedding_dim + 4)

    def embedding_tables(self) -> dict[str, nn.Embedding]:
        return {"user": self.u, "movie": self.m, "user_bias": self.user_bias, "movie_bias": self.item_bias}
