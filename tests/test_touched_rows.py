"""The touched-rows update of sharded tables (dist.embedding_update=touched_rows): torch's Adam/AdamW on the
looked-up rows only. Checked against torch.optim itself; the sharded runs are in tests/test_sharding.py."""
import pytest
import torch

from distrib.parallel.touched_rows import _adam_rows


def adam_rows_steps(optimizer_class, decay: float, batches: list[torch.Tensor], table: torch.Tensor) -> torch.Tensor:
    """`table` after one step per batch of looked-up rows, gradient = the row index + 1 per row, with our update."""
    table = table.clone()
    group = optimizer_class([torch.nn.Parameter(table)], lr=0.01, weight_decay=decay).param_groups[0]
    state = {}
    for rows in batches:
        _adam_rows(state, table, rows, (rows.float() + 1)[:, None].expand(-1, table.shape[1]), group)
    return table, state


@pytest.mark.parametrize("optimizer_class", [torch.optim.Adam, torch.optim.AdamW])
def test_equals_torch_adam_when_every_row_is_looked_up(optimizer_class):
    start = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    # every row in every step, some twice (their gradients add up, as a dense gradient's would)
    batches = [torch.tensor([5, 0, 1, 2, 3, 4, 0]), torch.tensor([3, 1, 2, 0, 4, 5, 5])]
    ours, _ = adam_rows_steps(optimizer_class, 0.1, batches, start)
    param = torch.nn.Parameter(start.clone())
    reference = optimizer_class([param], lr=0.01, weight_decay=0.1)
    for rows in batches:
        grad = torch.zeros_like(start).index_add_(0, rows, (rows.float() + 1)[:, None].expand(-1, 4))
        param.grad = grad
        reference.step()
    torch.testing.assert_close(ours, param.detach(), rtol=1e-6, atol=1e-7)


def test_rows_not_looked_up_keep_their_weights_and_moments():
    start = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    ours, state = adam_rows_steps(torch.optim.AdamW, 0.1, [torch.tensor([1, 3]), torch.tensor([3])], start)
    untouched = [0, 2, 4, 5]
    assert torch.equal(ours[untouched], start[untouched])  # not even decayed
    assert not state["exp_avg"][untouched].any() and not state["exp_avg_sq"][untouched].any()
    assert not torch.equal(ours[[1, 3]], start[[1, 3]])
    assert state["step"].item() == 2  # bias correction counts every step, as FBGEMM's fused Adam does
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"}  # Adam's layout: checkpoints are unchanged
