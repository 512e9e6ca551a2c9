"""The touched-rows update of whole (replicated) tables in one process (distrib.parallel.sparse_tables): the
tables against lazy Adam written out row by row and against torch's SparseAdam, the other parameters against
torch's dense Adam, and when `dist.embedding_update` picks it."""
import copy
import platform
from pathlib import Path

import pytest
import torch

from distrib.errors import UserError
from distrib.parallel import sparse_tables
from distrib.parallel.sparse_tables import (
    HUGE_PAGE_BYTES,
    advise_huge_pages,
    attach_sparse_tables,
    distinct_rows,
    replicated_touched_rows,
)
from tests.helpers import check_ok, metrics, tiny, train_cli, weights


def lazy_adam_reference(start: torch.Tensor, steps: list[tuple[torch.Tensor, torch.Tensor]], lr: float,
                        betas: tuple[float, float], eps: float, decay: float, decoupled: bool) -> torch.Tensor:
    """Lazy Adam written out row by row, as its definition reads: at step t, each row looked up (gradient: the
    sum of its lookups' gradients) gets Adam's update with bias correction for t; no other row changes."""
    weight = start.clone().double()
    m, v = torch.zeros_like(weight), torch.zeros_like(weight)
    for t, (rows, grads) in enumerate(steps, start=1):
        summed = {}
        for row, grad in zip(rows.tolist(), grads.double()):
            summed[row] = summed.get(row, 0) + grad
        for row, grad in summed.items():
            if decoupled:
                weight[row] *= 1 - lr * decay
            else:
                grad = grad + decay * weight[row]
            m[row] = betas[0] * m[row] + (1 - betas[0]) * grad
            v[row] = betas[1] * v[row] + (1 - betas[1]) * grad * grad
            denom = (v[row] / (1 - betas[1] ** t)).sqrt() + eps
            weight[row] -= lr / (1 - betas[0] ** t) * m[row] / denom
    return weight.float()


class TwoTables(torch.nn.Module):
    """A user and a movie table whose lookups are scaled by a dense parameter: tables and dense weights in
    one optimizer, as in the models."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.u = torch.nn.Embedding(30, 3)
        self.m = torch.nn.Embedding(20, 3)
        self.u.weight.data = torch.randn(30, 3, generator=generator)
        self.m.weight.data = torch.randn(20, 3, generator=generator)
        self.scale = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, users, items):
        return self.scale * (self.u(users) * self.m(items)).sum(-1)

    def embedding_tables(self):
        return {"user": self.u, "movie": self.m}


class WithUserBias(TwoTables):
    """TwoTables and a user bias, looked up with the user table's ids (as the models' biases are): the two
    tables share the step's distinct rows."""

    def __init__(self):
        super().__init__()
        self.ub = torch.nn.Embedding(30, 1)
        self.ub.weight.data = torch.randn(30, 1, generator=torch.Generator().manual_seed(2))

    def forward(self, users, items):
        return super().forward(users, items) + self.ub(users).squeeze(-1)

    def embedding_tables(self):
        return super().embedding_tables() | {"user_bias": self.ub}


def batches(n: int = 6):
    generator = torch.Generator().manual_seed(1)  # ids from a small range: rows repeat within a batch
    return [(torch.randint(0, 12, (8,), generator=generator), torch.randint(0, 9, (8,), generator=generator),
             torch.randn(8, generator=generator)) for _ in range(n)]


@pytest.mark.parametrize("optimizer_class, decay", [(torch.optim.Adam, 0.0), (torch.optim.Adam, 0.1),
                                                    (torch.optim.AdamW, 0.1)])
@pytest.mark.parametrize("model_class", [TwoTables, WithUserBias])
def test_replicated_tables_follow_lazy_adam_and_the_rest_dense_adam(optimizer_class, decay, model_class):
    model = model_class()
    start = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = optimizer_class(model.parameters(), lr=0.05, weight_decay=decay, fused=True)
    attach_sparse_tables(model, optimizer)
    assert model.u.sparse and model.m.sparse
    tables = [name for name in ("u", "m", "ub") if hasattr(model, name)]
    recorded = {name: [] for name in tables}  # each step's looked-up rows and their gradients, from a dense twin
    scale_reference = torch.nn.Parameter(start["scale"].clone())
    dense_adam = optimizer_class([scale_reference], lr=0.05, weight_decay=decay)
    for users, items, target in batches():
        optimizer.zero_grad(set_to_none=True)
        ((model(users, items) - target) ** 2).sum().backward()
        assert model.u.weight.grad.is_sparse
        twin = model_class()
        twin.load_state_dict(model.state_dict())
        ((twin(users, items) - target) ** 2).sum().backward()
        for name in tables:
            ids, grad = (items if name == "m" else users), getattr(twin, name).weight.grad
            recorded[name].append((ids, grad[ids] / torch.bincount(ids, minlength=len(grad))[ids, None]))
        scale_reference.grad = twin.scale.grad.clone()
        dense_adam.step()
        optimizer.step()
    for name in tables:
        reference = lazy_adam_reference(start[f"{name}.weight"], recorded[name], 0.05, (0.9, 0.999), 1e-8, decay,
                                        optimizer_class is torch.optim.AdamW)
        torch.testing.assert_close(getattr(model, name).weight.detach(), reference, rtol=1e-5, atol=1e-6)
        untouched = sorted(set(range(len(reference))) - {r for rows, _ in recorded[name] for r in rows.tolist()})
        assert untouched and torch.equal(getattr(model, name).weight.detach()[untouched],
                                         start[f"{name}.weight"][untouched])  # neither moved nor decayed
    torch.testing.assert_close(model.scale.detach(), scale_reference.detach())
    state = optimizer.state[model.u.weight]
    assert set(state) == {"step", "exp_avg", "exp_avg_sq"} and state["step"].item() == 6  # Adam's own layout


def test_without_decay_replicated_tables_equal_torch_sparse_adam():
    """torch.optim.SparseAdam is lazy Adam with no weight decay (its eps sits after the bias correction of
    the second moment, a difference far below these tolerances)."""
    ours, reference = TwoTables(), TwoTables()
    optimizer = torch.optim.Adam(ours.parameters(), lr=0.05, fused=True)
    attach_sparse_tables(ours, optimizer)
    reference.u.sparse = reference.m.sparse = True
    sparse_adam = torch.optim.SparseAdam([reference.u.weight, reference.m.weight], lr=0.05)
    dense_adam = torch.optim.Adam([reference.scale], lr=0.05)
    for users, items, target in batches():
        for model, optimizers in ((ours, [optimizer]), (reference, [sparse_adam, dense_adam])):
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)
            ((model(users, items) - target) ** 2).sum().backward()
            for opt in optimizers:
                opt.step()
    for name, param in ours.named_parameters():
        torch.testing.assert_close(param.detach(), dict(reference.named_parameters())[name].detach(),
                                   rtol=1e-5, atol=1e-6)


def test_tables_looked_up_with_the_same_ids_sort_them_once():
    seen = []
    users, items = torch.tensor([4, 1, 4, 2]), torch.tensor([3, 3, 0, 1])
    first = distinct_rows(users, seen)
    assert torch.equal(first[0], torch.tensor([1, 2, 4])) and torch.equal(first[1], torch.tensor([2, 0, 2, 1]))
    assert distinct_rows(users.clone(), seen) is first  # equal ids, another tensor: the user bias's
    assert torch.equal(distinct_rows(items, seen)[0], torch.tensor([0, 1, 3]))
    assert distinct_rows(torch.tensor([4, 1, 4]), seen) is not first


def whole_huge_pages(tensor: torch.Tensor) -> tuple[int, int]:
    """The address of the first whole 2 MB page inside the tensor's memory, and the bytes of all of them."""
    start = tensor.untyped_storage().data_ptr()
    first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    return first, (start + tensor.untyped_storage().nbytes()) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES - first


def huge_page_bytes_around(tensor: torch.Tensor) -> int:
    """AnonHugePages of the mapping that holds the tensor's first whole 2 MB page (/proc/self/smaps)."""
    address = whole_huge_pages(tensor)[0]
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()[0]
        if "-" in head and ":" not in head:  # a mapping's address range starts its block
            start, end = (int(part, 16) for part in head.split("-"))
            inside = start <= address < end
        elif inside and head == "AnonHugePages:":
            return int(line.split()[1]) * 1024
    return 0


def transparent_huge_pages_collapse() -> bool:
    """Whether this kernel offers transparent huge pages and moves existing pages onto them on request
    (MADV_COLLAPSE, Linux 6.1)."""
    try:
        mode = Path("/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    except OSError:
        return False
    release = tuple(int(part) for part in platform.release().split(".")[:2] if part.isdigit())
    return "[never]" not in mode and release >= (6, 1)


def test_large_tables_and_their_moments_go_on_huge_pages():
    """A table of several 2 MB pages and the moments its first step makes: on huge pages where Linux offers
    them (the rows a step scatters over the table then need no page walk each), untouched elsewhere."""
    model = TwoTables()
    model.u, model.m = torch.nn.Embedding(40_000, 64), torch.nn.Embedding(20, 64)  # 9.8 MiB, 5 KiB
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    attach_sparse_tables(model, optimizer)
    users, items, target = batches(1)[0]
    ((model(users, items) - target) ** 2).sum().backward()
    optimizer.step()
    state = optimizer.state[model.u.weight]
    expected = transparent_huge_pages_collapse()
    for tensor in (model.u.weight, state["exp_avg"], state["exp_avg_sq"]):
        assert whole_huge_pages(tensor)[1] >= 3 * HUGE_PAGE_BYTES
        assert (huge_page_bytes_around(tensor) >= whole_huge_pages(tensor)[1]) is expected
        assert advise_huge_pages(tensor) is expected  # again: the kernel says they are huge pages already
    assert not advise_huge_pages(model.m.weight)  # 5 KiB: not one whole huge page


def test_moments_a_checkpoint_loads_go_on_huge_pages_and_later_steps_advise_nothing(monkeypatch):
    """Loading the optimizer's state replaces the moments: the loaded ones are advised as they arrive (on huge
    pages where Linux offers them), and the steps after that make no madvise call."""
    model = TwoTables()
    model.u, model.m = torch.nn.Embedding(40_000, 64), torch.nn.Embedding(20, 64)  # 9.8 MiB, 5 KiB
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05, fused=True)
    attach_sparse_tables(model, optimizer)
    steps = batches(3)
    for users, items, target in steps[:2]:
        optimizer.zero_grad()
        ((model(users, items) - target) ** 2).sum().backward()
        optimizer.step()
    optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))  # new tensors, as torch.load gives
    state = optimizer.state[model.u.weight]
    expected = transparent_huge_pages_collapse()
    for tensor in (state["exp_avg"], state["exp_avg_sq"]):
        assert (huge_page_bytes_around(tensor) >= whole_huge_pages(tensor)[1]) is expected
    advised = []
    monkeypatch.setattr(sparse_tables, "advise_huge_pages", advised.append)
    users, items, target = steps[2]
    optimizer.zero_grad()
    ((model(users, items) - target) ** 2).sum().backward()
    optimizer.step()
    assert advised == [] and state["step"].item() == 3


@pytest.mark.parametrize("update, world_size, n_rows, optimizer, compiled, expected", [
    ("auto", 1, 221_588, "adam", False, True),  # ml-25m at batch 2000: a step touches at most 1.8% of the rows
    ("auto", 1, 9_746, "adam", False, False),  # ml-1m: up to 41%, dense as before
    ("auto", 2, 221_588, "adam", False, False),  # several ranks: DDP would all-reduce sparse gradients
    ("auto", 1, 221_588, "lamb", False, False),  # lamb's trust ratio needs whole tables
    ("auto", 1, 221_588, "adamw", True, False),
    ("dense", 1, 221_588, "adam", False, False),
    ("touched_rows", 1, 9_746, "adamw", False, True),
])
def test_when_replicated_tables_take_touched_rows(update, world_size, n_rows, optimizer, compiled, expected):
    assert replicated_touched_rows(update, world_size, n_rows, 2000, optimizer, compiled, False) is expected


@pytest.mark.parametrize("world_size, optimizer, compiled, graphed", [
    (2, "adam", False, False), (1, "lamb", False, False), (1, "adam", True, False), (1, "adam", False, True)])
def test_touched_rows_asked_where_replicated_tables_cannot_take_it_is_one_line(world_size, optimizer, compiled,
                                                                               graphed):
    with pytest.raises(UserError, match=r"^dist.embedding_update=touched_rows: replicated tables"):
        replicated_touched_rows("touched_rows", world_size, 221_588, 2000, optimizer, compiled, graphed)


@pytest.mark.slow
def test_a_run_trains_with_touched_rows_and_resumes_with_the_dense_update(tmp_path, tiny_run):
    """A real one-process run (the model in DDP over a gloo group of one) on the touched-rows path: its weights
    are not the dense update's, its checkpoint is Adam's layout, so the run resumes with dist.embedding_update=dense.
    The dense update's run is the session's tiny run: `auto` takes the dense update there (a step looks up more
    than 10% of the rows)."""
    check_ok(train_cli(tiny(tmp_path, "touched_rows", "train.epochs=2", "dist.embedding_update=touched_rows")))
    lazy = weights(tmp_path / "touched_rows" / "checkpoints" / "last.pt")
    dense = weights(tiny_run / "checkpoints" / "last.pt")
    assert not torch.equal(lazy["u.weight"], dense["u.weight"])  # the path was taken
    assert not torch.equal(lazy["fc.weight"], dense["fc.weight"])
    rows = metrics(tmp_path / "touched_rows")
    assert rows[1]["val_rmse"] < rows[0]["val_rmse"] < 1.5
    resumed = check_ok(train_cli(tiny(tmp_path, "touched_rows", "train.epochs=3", "dist.embedding_update=dense")))
    assert "[003/003] train:" in resumed.stdout and "[001/003]" not in resumed.stdout
    assert [row["epoch"] for row in metrics(tmp_path / "touched_rows")] == [1, 2, 3]
