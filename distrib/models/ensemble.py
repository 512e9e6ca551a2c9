"""An ensemble trained by the job (`model.name=ensemble`, `model.members=[autorec, mf]`): the prediction is
the weighted mean of the members' predictions (weights `model.member_weights`, normalised; equal if empty;
with `model.blend=validation` fitted on the validation part after early stopping: distrib.training.blend).

Each member is fit to the ratings on its own, as if trained alone, but in the same job: the same batches,
optimizer, schedule, DDP and checkpoints (member i's weights under `members.i.`). In training mode forward
returns one row of predictions per member, and the trainer's summed squared error, broadcast against the
batch's ratings, is the sum of the members' losses (the logged train loss is their mean, on validation's
scale, and the console says so). The members never see each other's errors: trained jointly on the mean,
they would fit each other's residuals instead, which validated worse on ml-100k. Early stopping and the best
checkpoint follow the ensemble's validation RMSE. Each member keeps its own regularisation (`penalty` sums
the members' penalties), and `attach_train` reaches the members that read the training ratings.
"""
from __future__ import annotations

import torch
from torch import nn

from distrib.models.base import RatingModel
from distrib.models.penalty import Penalty


class Ensemble(RatingModel):
    owns_penalty = True

    def __init__(self, members: list[RatingModel], penalties: list[Penalty | None], member_weights: list[float],
                 rating_min: float, rating_max: float):
        super().__init__()
        self.members = nn.ModuleList(members)
        # a buffer, so a checkpoint carries the weights it predicts with (fitted ones included)
        self.register_buffer("blend", torch.zeros(len(members)))
        self.set_weights(member_weights or [1.0] * len(members))
        self._penalties = penalties
        self.needs_train_ratings = any(member.needs_train_ratings for member in members)
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)

    def set_weights(self, weights: list[float]) -> None:
        """The blend's weights (normalised to sum to one)."""
        total = float(sum(weights))
        with torch.no_grad():
            self.blend.copy_(torch.tensor([float(w) / total for w in weights]))

    @property
    def weights(self) -> list[float]:
        return self.blend.tolist()

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # a checkpoint from before the weights were saved: it predicted with the config's, which are these
        state_dict.setdefault(prefix + "blend", self.blend.detach().clone())
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def attach_train(self, train) -> None:
        for member in self.members:
            if member.needs_train_ratings:
                member.attach_train(train)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Training: (members, batch), one row per member, so the trainer's squared error (broadcast against
        the batch's ratings) is the sum of the members' own losses. Eval: the weighted mean, clamped."""
        preds = [member(users, items).float() for member in self.members]
        if self.training:
            return torch.stack(preds)
        pred = sum(w * p for w, p in zip(self.blend.to(preds[0].dtype), preds))
        return pred.clamp(self.rating_min, self.rating_max)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        terms = [penalty(users, items) for penalty in self._penalties if penalty is not None]
        return sum(terms) if terms else torch.zeros((), device=users.device)

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        """The first member's movie vectors."""
        return self.members[0].item_vectors()
