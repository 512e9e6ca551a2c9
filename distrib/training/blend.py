"""Stacking (`model.blend=validation`): an ensemble's blend weights fitted on the validation part.

After the first phase, the best checkpoint's members predict every validation rating; the weights minimise
the squared error of their blend, non-negative and summing to one (so the blend stays on the rating scale):

    min_w |P w - y|^2   s.t. w >= 0, sum(w) = 1,   P = one column of validation predictions per member

Only the moments P^T P, P^T y and y^T y are needed: each rank sums them over its unpadded shard of the
validation part and one all-reduce adds them up, so every rank solves the same small problem and gets the
same weights, whatever the world size. With a handful of members the problem is solved exactly, by trying
each subset of members as the support (the equality-constrained solution of each, kept if non-negative).
The weights are then the refit phase's `model.member_weights` and the test part's blend.
"""
from __future__ import annotations

import itertools
from contextlib import nullcontext

import numpy as np
import torch
import torch.distributed as dist

from distrib.metrics.rating import EVAL_BATCH
from distrib.parallel.sampler import shard_bounds


@torch.no_grad()
def blend_moments(members, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor, rank: int,
                  world_size: int, autocast=None) -> tuple[np.ndarray, np.ndarray]:
    """(P^T P, P^T y) over the whole split, in float64, from this rank's shard and one all-reduce."""
    for member in members:
        member.eval()
    lo, hi = shard_bounds(int(ratings.shape[0]), rank, world_size)
    chunks = ((start, min(start + EVAL_BATCH, hi)) for start in range(lo, hi, EVAL_BATCH))
    return chunked_moments(member_predictor(members, autocast), len(members), users, items, ratings, chunks)


def member_predictor(members, autocast=None):
    """predict(users, items) -> (batch, members) in float64: each member's own prediction."""
    def predict(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        with autocast or nullcontext():
            return torch.stack([m(users, items).double() for m in members], dim=1)
    return predict


@torch.no_grad()
def chunked_moments(predict, k: int, users: torch.Tensor, items: torch.Tensor, ratings: torch.Tensor,
                    chunks) -> tuple[np.ndarray, np.ndarray]:
    """(P^T P, P^T y) from `predict`'s (batch, k) blocks over this rank's chunks (start, stop), all-reduced. An
    empty chunk (start == stop) still predicts one pair, unused: where every forward is a collective (sharded
    tables), each rank must run as many."""
    moments = torch.zeros(k * k + k, dtype=torch.float64, device=ratings.device)
    for start, stop in chunks:
        rows = slice(start, stop) if stop > start else slice(0, 1)
        preds = predict(users[rows], items[rows])
        if stop > start:
            moments[: k * k] += (preds.T @ preds).flatten()
            moments[k * k:] += preds.T @ ratings[rows].double()
    if dist.is_initialized():
        dist.all_reduce(moments, op=dist.ReduceOp.SUM)
    values = moments.cpu().numpy()
    return values[: k * k].reshape(k, k), values[k * k:]


def solve_blend(gram: np.ndarray, cross: np.ndarray) -> list[float]:
    """argmin w^T G w - 2 c^T w over the simplex (w >= 0, sum w = 1): the best non-negative support."""
    k = len(cross)
    best, best_value = None, np.inf
    for size in range(1, k + 1):
        for support in itertools.combinations(range(k), size):
            idx = list(support)
            kkt = np.zeros((size + 1, size + 1))
            kkt[:size, :size] = 2 * gram[np.ix_(idx, idx)]
            kkt[:size, size] = kkt[size, :size] = 1.0
            rhs = np.concatenate([2 * cross[idx], [1.0]])
            solution = np.linalg.lstsq(kkt, rhs, rcond=None)[0][:size]
            if (solution < -1e-12).any():
                continue
            w = np.zeros(k)
            w[idx] = np.clip(solution, 0.0, None)
            w /= w.sum()
            value = w @ gram @ w - 2 * cross @ w
            if value < best_value - 1e-12:
                best, best_value = w, value
    return [float(x) for x in best]


def fit_blend(ensemble, split, rank: int, world_size: int, autocast=None) -> list[float]:
    """The validation-fitted weights of `ensemble`'s members (the same list on every rank)."""
    gram, cross = blend_moments(list(ensemble.members), split.users, split.items, split.ratings, rank, world_size,
                                autocast)
    return solve_blend(gram, cross)
