"""distrib.metrics.rating: RMSE and MAE from summed errors, the same whichever way the ratings are split."""
from __future__ import annotations

import math

import torch

from distrib.metrics.rating import error_sums, from_sums


def test_sums_of_parts_give_the_metrics_of_the_whole():
    pred, target = torch.tensor([3.0, 4.0, 1.5, 5.0]), torch.tensor([4.0, 4.0, 2.0, 3.0])
    whole = from_sums(error_sums(pred, target))
    parts = from_sums(error_sums(pred[:1], target[:1]) + error_sums(pred[1:], target[1:]))
    assert whole == parts
    assert whole["count"] == 4 and math.isclose(whole["mse"], (1 + 0 + 0.25 + 4) / 4)
    assert math.isclose(whole["rmse"], math.sqrt(whole["mse"])) and math.isclose(whole["mae"], 3.5 / 4)


def test_no_ratings_give_nan():
    result = from_sums(torch.zeros(3, dtype=torch.float64))
    assert result["count"] == 0 and math.isnan(result["rmse"]) and math.isnan(result["mae"])
