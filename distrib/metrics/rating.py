"""Rating errors as sums, and RMSE / MAE from those sums: the one place both are computed.

Sums (float64) add up exactly across batches and ranks, so the trainer's sharded validation (all-reduced
sums) and the evaluate tool (one process, batch by batch) report the same figure for the same predictions.
"""
from __future__ import annotations

import math

import torch

EVAL_BATCH = 65536  # ratings per forward pass when only predicting (validation, test, blending)


def error_sums(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[sum of squared errors, sum of absolute errors, count] of one batch, in float64."""
    err = pred.double() - target.double()
    return torch.stack([err.pow(2).sum(), err.abs().sum(), err.new_tensor(float(err.numel()))])


def from_sums(sums: torch.Tensor) -> dict:
    """{"mse", "rmse", "mae", "count"} from summed errors; NaNs when there were no ratings."""
    sq, ab, count = sums.tolist()
    if count == 0:
        return {"mse": math.nan, "rmse": math.nan, "mae": math.nan, "count": 0}
    return {"mse": sq / count, "rmse": math.sqrt(sq / count), "mae": ab / count, "count": int(count)}
