"""An ensemble trained by the job (`model.name=ensemble`, `model.members=[autorec, mf]`): the prediction is
the weighted mean of the members' predictions (weights `model.member_weights`, normalised; equal if empty).

Each member is fit to the ratings on its own, as if trained alone, but in the same job: the same batches,
optimizer, schedule, DDP and checkpoints (member i's weights under `members.i.`). In training mode forward
returns one row of predictions per member, and the trainer's summed squared error, broadcast against the
batch's ratings, is the sum of the members' losses (its logged train loss is that sum). The members
never see each other's errors: trained jointly on the mean, they fit each other's residuals instead,
which validated worse in one ml-100k run (val RMSE 0.903 against 0.889). Early stopping and the best
checkpoint follow the ensemble's validation RMSE. Each member keeps its own regularisation: `penalty` sums
the members' (`build_penalty`), and `attach_train` reaches the members that read the training ratings.
"""
from __future__ import annotations

import torch
from torch import nn

from distrib.config import ModelConfig


class Ensemble(nn.Module):
    def __init__(self, cfg: ModelConfig, members: list[nn.Module], rating_min: float, rating_max: float):
        super().__init__()
        from dataclasses import replace

        from distrib.model_mf import build_penalty

        self.members = nn.ModuleList(members)
        weights = torch.tensor(cfg.member_weights or [1.0] * len(members), dtype=torch.float32)
        self.weights = (weights / weights.sum()).tolist()
        self._penalties = [build_penalty(replace(cfg, name=name, members=[]), member)
                           for name, member in zip(cfg.members, members)]
        self.rating_min, self.rating_max = float(rating_min), float(rating_max)

    def attach_train(self, train) -> None:
        for member in self.members:
            if hasattr(member, "attach_train"):
                member.attach_train(train)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Training: (members, batch), one row per member, so the trainer's squared error (broadcast against
        the batch's ratings) is the sum of the members' own losses. Eval: the weighted mean, clamped."""
        preds = [member(users, items).float() for member in self.members]
        if self.training:
            return torch.stack(preds)
        pred = sum(w * p for w, p in zip(self.weights, preds))
        return pred.clamp(self.rating_min, self.rating_max)

    def penalty(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        terms = [penalty(users, items) for penalty in self._penalties if penalty is not None]
        return sum(terms) if terms else torch.zeros((), device=users.device)

    @torch.no_grad()
    def item_vectors(self) -> torch.Tensor:
        first = self.members[0]
        return first.item_vectors() if hasattr(first, "item_vectors") else first.m.weight
