"""Early stopping across real gloo processes: different local losses, one decision."""
import pytest
import torch

from distrib.training.early_stopping import EarlyStopping
from distrib.training.trainer import DeviceSplit, sharded_metrics
from tests.helpers import spawn_ranks


class Constant(torch.nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.value = value

    def forward(self, users, items):
        return torch.full(users.shape, self.value)


def _run(rank, world_size, patience):
    early = EarlyStopping(patience)
    # Each rank validates its own shard of the ratings (so its local loss differs, and on its own would stop
    # at a different epoch), but the global loss improves for 3 epochs, then stalls.
    n = 41
    split = DeviceSplit(torch.zeros(n, dtype=torch.int64), torch.arange(n), torch.linspace(1.0, 5.0, n))
    offsets = [1.0, 0.6, 0.3, 0.5, 0.55, 0.6, 0.65, 0.7]  # mean rating 3.0 + offset
    for epoch, offset in enumerate(offsets):
        early.observe(epoch, sharded_metrics(Constant(3.0 + offset), split, rank, world_size)["mse"])
        if early.should_stop:
            return epoch, early.best_epoch
    return None, early.best_epoch


@pytest.mark.slow
def test_ranks_with_different_local_losses_stop_at_the_same_epoch():
    results = spawn_ranks(_run, 3, 2)
    assert len(set(results)) == 1, results
    stop_epoch, best_epoch = results[0]
    assert (stop_epoch, best_epoch) == (4, 2)


def test_patience_zero_never_stops():
    early = EarlyStopping(0)
    for epoch in range(20):
        early.observe(epoch, 1.0 + epoch)
    assert not early.should_stop and early.best_epoch == 0


def test_an_unvalidated_epoch_is_taken_as_the_best_and_never_stops():
    early = EarlyStopping(patience=0)
    assert all(early.take_unvalidated(epoch) for epoch in range(3))
    assert early.best_epoch == 2 and not early.should_stop and early.best == float("inf")
