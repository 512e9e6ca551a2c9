import torch

from distrib.parallel.sampler import epoch_permutation, rank_batches, rank_slice, shard_bounds, steps_per_epoch


def test_permutation_depends_only_on_seed_and_epoch():
    assert torch.equal(epoch_permutation(1000, 3, 5), epoch_permutation(1000, 3, 5))
    assert not torch.equal(epoch_permutation(1000, 3, 5), epoch_permutation(1000, 3, 6))
    assert sorted(epoch_permutation(1000, 3, 5).tolist()) == list(range(1000))


def test_global_batch_is_the_same_ratings_whatever_the_world_size():
    perm = epoch_permutation(10_007, seed=1, epoch=0)
    reference = list(rank_batches(perm, 997, 0, 1))
    for world in (2, 3, 7):
        per_rank = [list(rank_batches(perm, 997, r, world)) for r in range(world)]
        assert all(len(steps) == len(reference) for steps in per_rank), "every rank runs the same number of steps"
        for t, whole in enumerate(reference):
            joined = torch.cat([per_rank[r][t] for r in range(world)])
            assert torch.equal(joined, whole)
            sizes = [per_rank[r][t].numel() for r in range(world)]
            assert max(sizes) - min(sizes) <= 1


def test_no_rating_twice_in_an_epoch_and_partial_batch_dropped():
    n, batch = 1050, 100
    perm = epoch_permutation(n, 0, 0)
    seen = torch.cat([idx for r in range(3) for idx in rank_batches(perm, batch, r, 3)])
    assert seen.numel() == steps_per_epoch(n, batch) * batch == 1000
    assert seen.unique().numel() == seen.numel()


def test_shards_cover_without_padding():
    for n, world in [(10, 3), (2, 3), (0, 2), (100, 7)]:
        bounds = [shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert rank_slice(5, 2, 3) == (4, 5)
