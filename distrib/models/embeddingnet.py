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

`score_items` predicts every movie for a batch of users (evaluate's ranking, recommend) without building the
(user, movie) pairs: the first Linear splits into a user part and a movie part, W1 [u; m] + b1 = (W1_u u + b1) +
W1_m m, the movie part computed once for all movies and the user part once per user; only the layers after it
run per pair, on relu(U + M), in chunks of at most SCORE_CHUNK_BYTES of activations.
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
SCORE_CHUNK_BYTES = 8 << 20  # one chunk's widest activations in score_items: small enough to stay in cache


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
        return self._rating(logit)

    def _rating(self, logit: torch.Tensor) -> torch.Tensor:
        """The logit as a rating: a sigmoid scaled to [rating_min - 0.5, rating_max + 0.5]."""
        span = self.rating_max - self.rating_min + 1
        return torch.sigmoid(logit.float()) * span + self.rating_min - 0.5

    def _first_and_later(self) -> tuple[nn.Linear, list[nn.Linear]]:
        """The Linear that reads [user; movie], and the ones after it (the output layer last)."""
        if not self._blocks:
            return self.fc, []
        return self._blocks[0][0], [linear for linear, _ in self._blocks[1:]] + [self.fc]

    def score_items_flops(self) -> float:
        """Per pair: the user and movie parts' sum and its ReLU, the later layers' multiply-adds, the dot product,
        the biases and the output's sigmoid."""
        first, later = self._first_and_later()
        flops = 2 * first.out_features + sum(2 * linear.in_features * linear.out_features for linear in later)
        return float(flops + (2 * self.m.embedding_dim if self.dot else 0) + 4)

    @torch.no_grad()
    def score_items(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), n_items) eval-mode predictions of every movie, the first layer split into a user part
        and a movie part (module docstring)."""
        user, movie = self.user_vectors(users), self.m.weight
        first, later = self._first_and_later()
        n_factors = user.shape[1]
        user_part = torch.addmm(first.bias, user, first.weight[:, :n_factors].T)  # (users, width)
        movie_part = movie @ first.weight[:, n_factors:].T  # (movies, width)
        widest = max([first.out_features] + [linear.out_features for linear in later])
        pair_bytes = widest * user_part.element_size()
        movies_per_chunk = max(1, min(movie.shape[0], SCORE_CHUNK_BYTES // pair_bytes))
        users_per_chunk = max(1, SCORE_CHUNK_BYTES // (pair_bytes * movies_per_chunk))
        logit = torch.empty(user.shape[0], movie.shape[0], dtype=user_part.dtype, device=user.device)
        for lo in range(0, user.shape[0], users_per_chunk):
            for start in range(0, movie.shape[0], movies_per_chunk):
                x = user_part[lo:lo + users_per_chunk, None, :] + movie_part[None, start:start + movies_per_chunk, :]
                for linear in later:
                    x = linear(x.relu_())
                logit[lo:lo + users_per_chunk, start:start + movies_per_chunk] = x.squeeze(-1)
        logit = logit.float()
        if self.dot:
            logit += user.float() @ movie.float().T
        if self.user_bias is not None:
            logit += self.user_bias(users).float() + self.item_bias.weight.float().T
        return self._rating(logit)

    def embedding_tables(self) -> dict[str, nn.Embedding]:
        tables = {"user": self.u, "movie": self.m}
        if self.user_bias is not None:
            tables.update(user_bias=self.user_bias, movie_bias=self.item_bias)
        return tables

