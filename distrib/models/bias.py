"""The baseline predictor (`model.name=bias`): the global mean plus a user and a movie bias,

    prediction(u, i) = global_bias + user_bias[u] + item_bias[i]

clamped to the rating scale in eval mode only, as mf. It is the yardstick a recommender must beat: a model
whose test RMSE is not below this one's has learnt nothing about who likes what.

It starts at the classic baseline estimates (Koren 2008, "Factorization meets the neighborhood", section 2.1),
computed from the training ratings in one pass: the global mean, then each movie's mean deviation from it
shrunk towards 0 by ITEM_SHRINKAGE pseudo-ratings, then each user's mean deviation from both, shrunk by
USER_SHRINKAGE. Training then refines them like any other model (Adam on the summed squared error, plus
`model.bias_reg`'s per-rating L2 if set), so after its first epoch it is at least as good as those estimates
on the training ratings. A resumed run loads its weights over the start.
"""
from __future__ import annotations

import torch
from torch import nn

from distrib.models.base import RatingModel

ITEM_SHRINKAGE = 25.0  # Koren's lambda_2 and lambda_3 for the Netflix data
USER_SHRINKAGE = 10.0


class BiasBaseline(RatingModel):
    needs_train_ratings = True  # its start is computed from them

    def __init__(self, n_users: int, n_items: int, rating_min: float, rating_max: float):
        super().__init__()
        self.user_bias = nn.Embedding(n_users, 1)  # mf's names, so the tables read alike
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Parameter(torch.tensor((rating_min + rating_max) / 2))
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)
        nn.init.zeros_(self.user_bias.weight)
        nn.init.zeros_(self.item_bias.weight)

    @torch.no_grad()
    def attach_train(self, train) -> None:
        """Start at the shrunk mean deviations of the training ratings (parallel arrays users, items, ratings)."""
        device = self.global_bias.device
        users = torch.as_tensor(train.users, dtype=torch.int64).to(device)
        items = torch.as_tensor(train.items, dtype=torch.int64).to(device)
        ratings = torch.as_tensor(train.ratings, dtype=torch.float64).to(device)
        if not ratings.numel():
            return
        mean = ratings.mean()
        item = _shrunk_means(items, ratings - mean, self.item_bias.num_embeddings, ITEM_SHRINKAGE)
        user = _shrunk_means(users, ratings - mean - item[items], self.user_bias.num_embeddings, USER_SHRINKAGE)
        self.global_bias.copy_(mean)
        self.item_bias.weight.copy_(item[:, None])
        self.user_bias.weight.copy_(user[:, None])

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        pred = self.global_bias + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return pred.float() if self.training else pred.float().clamp(self.rating_min, self.rating_max)

    @torch.no_grad()
    def score_items(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), n_items) eval-mode predictions of every movie: the biases broadcast."""
        pred = self.global_bias + self.user_bias(users) + self.item_bias.weight.T
        return pred.float().clamp(self.rating_min, self.rating_max)

    def score_items_flops(self) -> float:
        return 4.0

    def embedding_tables(self) -> dict[str, nn.Embedding]:
        return {"user_bias": self.user_bias, "movie_bias": self.item_bias}

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """Each movie's bias, a one-column vector: its principal component ranks movies from the least to the
        most liked once users' leniency is taken out."""
        return self.item_bias.weight.detach()


def _shrunk_means(index: torch.Tensor, deviation: torch.Tensor, size: int, shrinkage: float) -> torch.Tensor:
    """sum(deviation) / (count + shrinkage) per index value."""
    sums = torch.zeros(size, dtype=torch.float64, device=index.device).index_add_(0, index, deviation)
    counts = torch.bincount(index, minlength=size).to(torch.float64)
    return sums / (counts + shrinkage)
