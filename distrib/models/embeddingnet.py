"""EmbeddingNet (`model.name=embeddingnet`, the default), as the article builds and initialises it.

User and movie embeddings are concatenated (user first), embedding dropout applied, then
Linear -> ReLU -> Dropout for each hidden size, a final Linear to one unit, and a sigmoid scaled so
outputs span [min_rating - 0.5, max_rating + 0.5]. `model.bias=true` adds user and item bias terms
to the logit (off by default, which keeps the article's model). `model.implicit=true` adds SVD++'s implicit
term (Koren 2008) to the user's vector before the MLP: who rated what, not how,

    user(u) = u[u] + |N(u)|^-1/2 * sum_{j in N(u)} y[j],   N(u) = the movies u rated in training

with y a second movie table. `model.dot=true` also adds the dot product of the user's and the movie's vectors
to the logit (NeuMF's GMF branch beside the MLP: an MLP learns a dot product poorly, Rendle et al. 2020).
The normalised "rated" matrix is a float16 buffer (users x movies) that the
trainer fills once with `attach_train` and the checkpoint carries, as I-AutoRec's rating matrix.

The modules are the article's (same state_dict keys), but forward fuses each hidden ReLU with its dropout and
draws masks with `distrib.models.dropout`, which on CPU is much cheaper than `nn.Dropout`'s bernoulli; in training,
keyed by each sample's position in the global batch (`use_dropout_key`), so the masks do not depend on the world size.
"""
from __future__ import annotations

import torch
from torch import nn

from distrib.errors import UserError
from distrib.models.autorec import MAX_DENSE_ENTRIES
from distrib.models.base import RatingModel
from distrib.models.dropout import dropout, relu_dropout_

EMBEDDING_INIT_RANGE = 0.05
LINEAR_BIAS_INIT = 0.01


class EmbeddingNet(RatingModel):
    def __init__(self, n_users: int, n_items: int, n_factors: int, hidden: list[int], dropouts: list[float],
                 embedding_dropout: float, rating_min: float, rating_max: float, bias: bool = False,
                 implicit: bool = False, dot: bool = False):
        super().__init__()
        self.u = nn.Embedding(n_users, n_factors)
        self.m = nn.Embedding(n_items, n_factors)
        self.dot = dot
        self.implicit = None
        if implicit:
            if n_users * n_items > MAX_DENSE_ENTRIES:
                raise UserError(f"model.implicit keeps the {n_users} x {n_items} rated matrix dense; that is over "
                                f"{MAX_DENSE_ENTRIES:,} entries: use model.implicit=false for this dataset")
            self.needs_train_ratings = True
            # a plain parameter, not an nn.Embedding: every batch reads all of it (a matrix product)
            self.implicit = nn.Parameter(torch.empty(n_items, n_factors))
            self.register_buffer("rated", torch.zeros(n_users, n_items, dtype=torch.float16))
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
        if self.implicit is not None:
            self.implicit.data.uniform_(-EMBEDDING_INIT_RANGE, EMBEDDING_INIT_RANGE)
        for bias in (self.user_bias, self.item_bias):
            if bias is not None:
                bias.weight.data.zero_()
        for layer in list(self.hidden) + [self.fc]:
            if isinstance(layer, nn.Linear):
                nn.init.xavier_uniform_(layer.weight)
                layer.bias.data.fill_(LINEAR_BIAS_INIT)

    @torch.no_grad()
    def attach_train(self, train) -> None:
        """The implicit term's input: 1/sqrt(|N(u)|) where user u rated movie j in training, else 0."""
        if self.implicit is None:
            return
        device = self.rated.device
        users = torch.as_tensor(train.users, dtype=torch.int64).to(device)
        items = torch.as_tensor(train.items, dtype=torch.int64).to(device)
        counts = torch.bincount(users, minlength=self.rated.shape[0]).clamp(min=1).double()
        self.rated.zero_()
        self.rated[users, items] = counts.rsqrt()[users].to(torch.float16)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        vectors = self.u(users)
        if self.implicit is None:
            return vectors
        return vectors + (self.rated[users].to(self.implicit.dtype) @ self.implicit).to(vectors.dtype)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        user, movie = self.user_vectors(users), self.m(items)
        key = self.dropout_key  # the trainer's: masks keyed by each sample's place in the global batch
        x = dropout(torch.cat([user, movie], dim=1), self.drop.p, self.training, key, stream=0)
        for layer, (linear, drop) in enumerate(self._blocks, start=1):
            x = relu_dropout_(linear(x), drop.p if drop is not None else 0.0, self.training, key, stream=layer)
        logit = self.fc(x).squeeze(-1)
        if self.dot:
            logit = logit + (user.float() * movie.float()).sum(-1)
        if self.user_bias is not None:
            logit = logit + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        span = self.rating_max - self.rating_min + 1
        return torch.sigmoid(logit.float()) * span + self.rating_min - 0.5

    def embedding_tables(self) -> dict[str, nn.Embedding]:
        tables = {"user": self.u, "movie": self.m}
        if self.user_bias is not None:
            tables.update(user_bias=self.user_bias, movie_bias=self.item_bias)
        return tables

