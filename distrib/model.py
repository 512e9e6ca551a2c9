"""EmbeddingNet, as the article builds and initialises it, and the factory that sizes it from config.

User and movie embeddings are concatenated (user first), embedding dropout applied, then
Linear -> ReLU -> Dropout for each hidden size, a final Linear to one unit, and a sigmoid scaled so
outputs span [min_rating - 0.5, max_rating + 0.5]. `model.bias=true` adds user and item bias terms
to the logit (an option of issue 6's tuning; off by default to keep the article's model).

The modules are the article's (same state_dict keys), but forward fuses each hidden ReLU with its dropout and
draws masks with `distrib.ops`, which on CPU is several times cheaper than `nn.Dropout`'s bernoulli.
"""
from __future__ import annotations

from dataclasses import replace

import torch
from torch import nn

from distrib.config import ModelConfig
from distrib.ops import dropout, relu_dropout

EMBEDDING_INIT_RANGE = 0.05
LINEAR_BIAS_INIT = 0.01


class EmbeddingNet(nn.Module):
    def __init__(self, n_users: int, n_items: int, n_factors: int, hidden: list[int], dropouts: list[float],
                 embedding_dropout: float, rating_min: float, rating_max: float, bias: bool = False):
        super().__init__()
        self.u = nn.Embedding(n_users, n_factors)
        self.m = nn.Embedding(n_items, n_factors)
        self.drop = nn.Dropout(embedding_dropout)
        layers: list[nn.Module] = []
        self._blocks: list[tuple[nn.Linear, nn.Dropout | None]] = []  # views into self.hidden, for forward
        width = 2 * n_factors
        for i, size in enumerate(hidden):
            linear = nn.Linear(width, size)
            layers += [linear, nn.ReLU()]
            drop = nn.Dropout(dropouts[i]) if i < len(dropouts) and dropouts[i] > 0 else None
            if drop is not None:
                layers.append(drop)
            self._blocks.append((linear, drop))
            width = size
        self.hidden = nn.Sequential(*layers)
        self.fc = nn.Linear(width, 1)
        self.user_bias = nn.Embedding(n_users, 1) if bias else None
        self.item_bias = nn.Embedding(n_items, 1) if bias else None
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)
        self._init()

    def _init(self) -> None:
        for emb in (self.u, self.m):
            emb.weight.data.uniform_(-EMBEDDING_INIT_RANGE, EMBEDDING_INIT_RANGE)
        for bias in (self.user_bias, self.item_bias):
            if bias is not None:
                bias.weight.data.zero_()
        for layer in list(self.hidden) + [self.fc]:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                layer.bias.data.fill_(LINEAR_BIAS_INIT)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        x = dropout(torch.cat([self.u(users), self.m(items)], dim=1), self.drop.p, self.training)
        for linear, drop in self._blocks:
            x = relu_dropout(linear(x), drop.p if drop is not None else 0.0, self.training)
        logit = self.fc(x).squeeze(-1)
        if self.user_bias is not None:
            logit = logit + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        span = self.rating_max - self.rating_min + 1
        return torch.sigmoid(logit.float()) * span + self.rating_min - 0.5


def build_model(cfg: ModelConfig, n_users: int, n_items: int, rating_min: float, rating_max: float) -> nn.Module:
    """The model `cfg.name` picks: embeddingnet (the article's, the default), mf (`distrib.model_mf`) or
    autorec (`distrib.model_autorec`, whose input the trainer fills with `attach_train`) or an ensemble of
    them (`distrib.model_ensemble`)."""
    if cfg.name == "mf":
        from distrib.model_mf import BiasedMF

        return BiasedMF(n_users, n_items, cfg.n_factors, rating_min, rating_max)
    if cfg.name == "autorec":
        from distrib.model_autorec import IAutoRec

        return IAutoRec(n_users, n_items, cfg.autorec.hidden, cfg.autorec.l2, rating_min, rating_max)
    if cfg.name == "ensemble":
        from distrib.model_ensemble import Ensemble

        members = [build_model(replace(cfg, name=name, members=[]), n_users, n_items, rating_min, rating_max)
                   for name in cfg.members]
        return Ensemble(cfg, members, rating_min, rating_max)
    return EmbeddingNet(
        n_users=n_users, n_items=n_items, n_factors=cfg.n_factors, hidden=list(cfg.hidden),
        dropouts=list(cfg.dropouts), embedding_dropout=cfg.embedding_dropout,
        rating_min=rating_min, rating_max=rating_max, bias=cfg.bias,
    )
