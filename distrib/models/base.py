"""What the trainer and the end-of-run report may ask any model, with the defaults most models want.

A model answers for itself instead of being recognised by its class or module:
- `needs_train_ratings`: whether its input is the training rating matrix, filled once by `attach_train`;
- `owns_penalty`: whether it brings its own L2 term (`penalty`) instead of the per-rating one on its tables;
- `embedding_tables()`: its embedding lookups by role ("user", "movie", "user_bias", "movie_bias"), which
  the per-rating penalty regularises and a sharded trainer may place on other devices;
- `item_vectors()`: one vector per movie, for the embedding plot, table and PCA;
- `score_items(users)`: every movie's eval-mode prediction for a batch of users, where the model can compute it
  faster than its forward over every (user, movie) pair (evaluate's ranking, recommend); None where it cannot;
  `score_items_flops()` its cost per pair, from which evaluate sizes its default sample;
- `use_dropout_key(key)`: draw dropout masks per sample from the trainer's key (distrib.models.dropout), so that
  any world size trains the same model; a model without dropout ignores it.
"""
from __future__ import annotations

import torch
from torch import nn

from distrib.models.dropout import DropoutKey


class RatingModel(nn.Module):
    """forward(users, items) -> predicted ratings, one per (user, item) pair."""

    needs_train_ratings = False
    owns_penalty = False
    dropout_key: DropoutKey | None = None  # None: masks from torch's default generator

    def use_dropout_key(self, key: DropoutKey | None) -> None:
        """Key this model's dropout masks, and each member's with its own salt (two members of one kind would
        otherwise drop the same units of the same samples)."""
        models = [module for module in self.modules() if isinstance(module, RatingModel)]
        for salt, model in enumerate(models):
            model.dropout_key = None if key is None else key.salted(salt)

    def attach_train(self, train) -> None:
        """Read the training split (parallel arrays users, items, ratings); only models that need it do."""

    def embedding_tables(self) -> dict[str, nn.Embedding]:
        return {}

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        return self.embedding_tables()["movie"].weight.detach()

    def score_items(self, users: torch.Tensor) -> torch.Tensor | None:
        """(len(users), n_items) eval-mode predictions, equal to forward's for every (user, movie) pair up to
        float rounding; None: this model has no faster way, so callers score the pairs through forward."""
        return None

    def score_items_flops(self) -> float | None:
        """About how many floating-point operations `score_items` spends per (user, movie) pair (its per-user and
        per-movie parts left out: they do not grow with users x movies); None where it has no `score_items`."""
        return None

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no penalty of its own (owns_penalty is False)")
