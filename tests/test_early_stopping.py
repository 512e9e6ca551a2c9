"""Early stopping across real gloo processes: different local losses, one decision."""
from distrib.early_stopping import EarlyStopping
from tests.helpers import spawn_ranks


def _run(rank, world_size, patience):
    early = EarlyStopping(patience)
    # Each rank's local validation sum differs (and on its own would stop at a different epoch),
    # but the global loss improves for 3 epochs, then stalls.
    global_curve = [1.0, 0.9, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89]
    for epoch, loss in enumerate(global_curve):
        local_count = 10 + rank
        skew = (rank - (world_size - 1) / 2) * 0.3 * (-1) ** epoch
        early.update(epoch, (loss + skew) * local_count, local_count)
        if early.should_stop:
            return epoch, early.best_epoch
    return None, early.best_epoch


def test_ranks_with_different_local_losses_stop_at_the_same_epoch():
    results = spawn_ranks(_run, 3, 2)
    assert len(set(results)) == 1, results
    stop_epoch, best_epoch = results[0]
    assert stop_epoch is not None and stop_epoch > best_epoch


def test_patience_zero_never_stops():
    early = EarlyStopping(0)
    for epoch in range(20):
        early.observe(epoch, 1.0 + epoch)
    assert not early.should_stop and early.best_epoch == 0


def test_an_unvalidated_epoch_is_taken_as_the_best_and_never_stops():
    early = EarlyStopping(patience=0)
    assert all(early.take_unvalidated(epoch) for epoch in range(3))
    assert early.best_epoch == 2 and not early.should_stop and early.best == float("inf")
