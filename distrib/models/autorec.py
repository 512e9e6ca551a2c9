"""I-AutoRec (Sedhain et al., WWW 2015), `model.name=autorec`: each movie's column of training ratings is
encoded into `model.autorec.hidden` sigmoid units and decoded back to one rating per user. U-AutoRec (the same
paper's user-based variant, `model.name=uautorec`, at the end) encodes each user's row instead.

    prediction(u, i) = (W sigmoid(V r_i + b) + c)[u],   r_i = item i's training ratings (0 where unrated)

How it fits the per-rating sampler: the model keeps the training rating matrix as a buffer (items x users,
float16: MovieLens ratings are exact in it) that the trainer fills once with `attach_train(data.train)`; a
batch of (user, item) pairs encodes each distinct item of the batch once and reads the batch's users off
the decoded columns. The loss over a batch of sampled ratings is then an unbiased piece of AutoRec's
objective (squared error over the observed ratings only). The buffer is saved with the weights, so a
checkpoint predicts on its own (evaluate, recommend) without the data. Only validation and test ratings
are ever predicted from training ratings: their own values never enter the input.

`model.hide_target` trains the same way: each sampled rating is predicted from its column with its own value
taken out, instead of reconstructed from a column that holds it (which lets the network learn to copy it).
The first layer is linear, so that is the column's pre-activation minus the rating times its input weights,
and only the sampled outputs are decoded (a dot product each): no extra matrix product.

The L2 term of the objective, lambda/2 (|V|^2 + |W|^2) per pass over the training ratings, is spread over
the batches by `penalty`: each batch adds its share (batch ratings / training ratings), which sums to
one lambda/2 (...) per epoch whatever the batch size or world size. lambda is `model.autorec.l2`.
"""
from __future__ import annotations

import torch
from torch import nn

from distrib.errors import UserError
from distrib.models.base import RatingModel

MAX_DENSE_ENTRIES = 200_000_000  # items x users of the float16 buffer: 400 MB (ml-10m is 10677 x 69878 = 746M)


class ItemColumns(RatingModel):
    """The training rating matrix as a buffer (items x users, float16), filled by `attach_train` and saved
    with the weights; the base of the item-based autoencoders (autorec, kernelnet)."""

    needs_train_ratings = True

    def __init__(self, n_users: int, n_items: int, name: str, rating_min: float, rating_max: float,
                 hide_target: bool = False):
        super().__init__()
        self.hide_target = hide_target  # training: each rating predicted with its own value out of the input
        if n_users * n_items > MAX_DENSE_ENTRIES:
            raise UserError(f"model.name={name} keeps the {n_items} x {n_users} rating matrix dense; that is over "
                            f"{MAX_DENSE_ENTRIES:,} entries: use model.name=mf or embeddingnet for this dataset")
        self.register_buffer("ratings", torch.zeros(n_items, n_users, dtype=torch.float16))
        self.register_buffer("n_train", torch.zeros((), dtype=torch.int64))
        self._n_train = 0
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)

    @torch.no_grad()
    def attach_train(self, train) -> None:
        """Fill the input matrix from the training split (parallel arrays users, items, ratings)."""
        device = self.ratings.device
        users = torch.as_tensor(train.users, dtype=torch.int64).to(device)
        items = torch.as_tensor(train.items, dtype=torch.int64).to(device)
        self.ratings.zero_()
        self.ratings[items, users] = torch.as_tensor(train.ratings).to(device, torch.float16)
        self.n_train.fill_(users.numel())
        self._n_train = users.numel()  # a host copy: no device sync per step in penalty()

    def columns(self, items: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """The movies' training rating columns (all movies for None), in the layers' dtype."""
        return (self.ratings if items is None else self.ratings[items]).to(dtype)

    def own_ratings(self, users: torch.Tensor, items: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The training ratings of (user, item) pairs, each one's own entry in the input."""
        return self.ratings[items, users].to(dtype)

    def share(self, users: torch.Tensor) -> float:
        """This batch's share of one pass over the training ratings (the L2 terms are per pass)."""
        return users.numel() / (self._n_train or max(int(self.n_train), 1))


class IAutoRec(ItemColumns):
    owns_penalty = True
    by_user = False  # I-AutoRec encodes movies' columns; U-AutoRec (below) users' rows

    def __init__(self, n_users: int, n_items: int, n_hidden: int, l2: float, rating_min: float, rating_max: float,
                 hide_target: bool = False):
        super().__init__(n_users, n_items, "uautorec" if self.by_user else "autorec", rating_min, rating_max,
                         hide_target)
        n_in = n_items if self.by_user else n_users
        self.encoder = nn.Linear(n_in, n_hidden)
        self.decoder = nn.Linear(n_hidden, n_in)
        self.l2 = float(l2)

    def inputs(self, ids: torch.Tensor | None) -> torch.Tensor:
        """The encoded vectors: movies' training columns (I-AutoRec) or users' rows (U-AutoRec)."""
        dtype = self.encoder.weight.dtype
        if not self.by_user:
            return self.columns(ids, dtype)
        return (self.ratings if ids is None else self.ratings[:, ids]).T.to(dtype)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        encoded, read = (users, items) if self.by_user else (items, users)
        distinct, row = torch.unique(encoded, return_inverse=True)
        codes = self.encoder(self.inputs(distinct))
        if self.training and self.hide_target:
            own = self.own_ratings(users, items, codes.dtype)
            hidden = torch.sigmoid(codes[row] - own[:, None] * self.encoder.weight.T[read])
            return ((hidden * self.decoder.weight[read]).sum(1) + self.decoder.bias[read]).float()
        pred = self.decoder(torch.sigmoid(codes))[row, read].float()
        return pred if self.training else pred.clamp(self.rating_min, self.rating_max)

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """Each movie's code (its hidden units), the model's item embedding for plots and reports."""
        return torch.sigmoid(self.encoder(self.inputs(None)))

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        weights = self.encoder.weight.pow(2).sum() + self.decoder.weight.pow(2).sum()
        return (0.5 * self.l2 * self.share(users)) * weights


class UAutoRec(IAutoRec):
    """U-AutoRec (the same paper's user-based variant), `model.name=uautorec`: each user's row of training
    ratings (one per movie) is encoded and decoded back to one rating per movie; a different view of the same
    matrix from I-AutoRec's, for an ensemble. Its regularisation and buffer are I-AutoRec's."""

    by_user = True

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """Each movie's decoder weights: the vector its predicted rating reads off a user's code."""
        return self.decoder.weight.detach().clone()
