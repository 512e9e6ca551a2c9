"""distrib.models.dropout: the fast CPU dropout is a correct dropout (rate, mean, gradient, replayable), in fp32, bf16 and
under torch.compile."""
from __future__ import annotations

import math

import pytest
import torch

from distrib.models.dropout import (
    DropoutKey,
    _mix64,
    _mix64_,
    dropout,
    keep_mask,
    keep_scale,
    relu_dropout,
    relu_dropout_,
)

N = 400_000


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5, 0.75, 0.125, 0.9, 1 / 3])
def test_mask_rate_matches_p(p):
    torch.manual_seed(0)
    mask, scale = keep_mask(torch.Size([N]), p, torch.float32, torch.device("cpu"))
    kept = mask.mean().item()
    sigma = math.sqrt(p * (1 - p) / N)
    assert abs((1 - kept) - p) < 5 * sigma + 1 / 65536
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert scale == pytest.approx(1 / (1 - p), rel=1e-4)


@pytest.mark.parametrize("p", [0.05, 0.25, 0.5])
def test_mask_lanes_are_independent(p):
    """Each random word feeds 4 or 8 elements: neighbours must not be correlated."""
    torch.manual_seed(1)
    mask, _ = keep_mask(torch.Size([N]), p, torch.float32, torch.device("cpu"))
    a, b = mask[:-1] - mask.mean(), mask[1:] - mask.mean()
    corr = (a * b).mean() / mask.var()
    assert abs(corr.item()) < 5 / math.sqrt(N)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.05, 0.25, 0.5])
def test_dropout_preserves_mean_and_gradient_matches_mask(dtype, p):
    torch.manual_seed(2)
    x = torch.full((N,), 3.0, dtype=dtype, requires_grad=True)
    y = dropout(x, p, training=True)
    assert y.dtype == dtype
    kept = y != 0
    scale = keep_scale(p)
    assert torch.allclose(y[kept].float(), torch.tensor(3.0 * scale), rtol=1e-2)
    assert y.float().mean().item() == pytest.approx(3.0, abs=5 * 3.0 * scale * math.sqrt(p * (1 - p) / N))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, kept)
    assert torch.allclose(x.grad[kept].float(), torch.tensor(scale), rtol=1e-2)


def test_relu_dropout_equals_dropout_of_relu_with_the_same_mask():
    torch.manual_seed(3)
    x = torch.randn(2000, 500, requires_grad=True)
    torch.manual_seed(4)
    y = relu_dropout(x, 0.25, training=True)
    torch.manual_seed(4)
    mask, scale = keep_mask(x.shape, 0.25, x.dtype, x.device)
    assert torch.equal(y, torch.relu(x.detach()) * mask * scale)
    g = torch.randn_like(y)
    y.backward(g)
    assert torch.allclose(x.grad, g * mask * scale * (x.detach() > 0))



@pytest.mark.parametrize("p, training", [(0.5, True), (0.25, True), (0.0, True), (0.5, False)])
def test_in_place_relu_dropout_gives_the_same_values_and_gradients_bit_for_bit(p, training):
    w = torch.randn(50, 40, requires_grad=True)
    x = torch.randn(300, 50)
    results = []
    for fn in (relu_dropout, relu_dropout_):
        w.grad = None
        torch.manual_seed(5)
        y = fn(x @ w, p, training)  # a fresh product, as a Linear's output
        y.backward(torch.linspace(-1, 1, y.numel()).view_as(y))
        results.append((y.detach(), w.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])

def test_eval_and_zero_rate_are_identity():
    x = torch.randn(100, 10)
    assert dropout(x, 0.5, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    assert torch.equal(relu_dropout(x, 0.5, training=False), torch.relu(x))
    assert torch.equal(relu_dropout(x, 0.0, training=True), torch.relu(x))


def test_masks_replay_from_the_seed():
    x = torch.randn(1000, 50)
    torch.manual_seed(7)
    first = [dropout(x, 0.05, True), relu_dropout(x, 0.5, True)]
    torch.manual_seed(7)
    second = [dropout(x, 0.05, True), relu_dropout(x, 0.5, True)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_compiled_masks_differ_per_call_and_gradients_follow_them():
    """Under torch.compile two same-shaped masks must not be merged, nor a mask redrawn for backward."""

    def f(x):
        return dropout(x, 0.5, True), dropout(x * 1.0, 0.5, True)

    compiled = torch.compile(f, fullgraph=True)
    x = torch.rand(200, 300) + 1.0
    x.requires_grad_(True)
    a, b = compiled(x)
    assert not torch.equal(a != 0, b != 0)
    (a.sum()).backward()
    assert torch.equal(x.grad != 0, a != 0)


def _key(step: int, first: int, seed: int = 0) -> DropoutKey:
    key = DropoutKey.build(torch.device("cpu"))
    key.point_at(seed, step, first)
    return key


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p", [0.02, 0.2, 0.5])
def test_keyed_masks_follow_the_global_position_not_the_batch_split(dtype, p):
    """A global batch of 600 rows, whole on one rank or split 200/200/200 over three: the same masks, row by row."""
    x = torch.randn(600, 70).to(dtype)
    whole = [dropout(x, p, True, _key(7, 0), stream=0), relu_dropout_(x.clone(), p, True, _key(7, 0), stream=1)]
    for lo in (0, 200, 400):
        part = x[lo:lo + 200]
        assert torch.equal(dropout(part, p, True, _key(7, lo), stream=0), whole[0][lo:lo + 200])
        assert torch.equal(relu_dropout_(part.clone(), p, True, _key(7, lo), stream=1), whole[1][lo:lo + 200])


def test_keyed_masks_differ_by_seed_step_layer_and_model_and_keep_the_rate():
    x = torch.ones(2000, 200)
    masks = [dropout(x, 0.2, True, key, stream) != 0 for key, stream in
             [(_key(3, 0), 0), (_key(4, 0), 0), (_key(3, 0), 1), (_key(3, 0).salted(1), 0), (_key(3, 0, seed=1), 0)]]
    for i, a in enumerate(masks):
        assert 1 - a.float().mean().item() == pytest.approx(13107 / 65536, abs=5 * math.sqrt(0.2 * 0.8 / x.numel()))
        for b in masks[i + 1:]:
            assert 0.6 < (a == b).float().mean().item() < 0.7  # independent masks agree on 0.8^2 + 0.2^2 = 68%
    kept = masks[0].float()
    for a, b in ((kept[:, :-1], kept[:, 1:]), (kept[:-1], kept[1:])):  # neighbours in a row and across rows
        a, b = a - a.mean(), b - b.mean()
        assert abs(((a * b).mean() / kept.var()).item()) < 5 / math.sqrt(a.numel())


def test_the_word_mixer_on_tensors_equals_the_one_on_python_ints():
    words = [0, 1, -1, 2**63 - 1, -(2**63), 123456789123456789]
    mixed = _mix64_(torch.tensor(words, dtype=torch.int64)).tolist()
    assert [m % 2**64 for m in mixed] == [_mix64(w % 2**64) for w in words]


def test_a_compiled_forward_reads_the_key_rewritten_in_place():
    key = _key(0, 0)

    def f(x):
        return relu_dropout_(x * 1.0, 0.2, True, key, stream=1)

    compiled = torch.compile(f, fullgraph=True)
    x = torch.rand(300, 40) + 0.5
    outputs = []
    for step in range(3):
        key.point_at(0, step, 0)
        outputs.append(compiled(x))
        assert torch.equal(outputs[-1], f(x))
    assert not torch.equal(outputs[0], outputs[1])
