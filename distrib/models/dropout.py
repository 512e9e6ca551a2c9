"""Fast dropout for CPU training: the mask comes from raw 64-bit random words, 1 to 16 bits per element.

On CPU, `torch.bernoulli_` draws one double per element, while filling int64 words with raw generator output
and cutting them into narrow fields is many times cheaper. Each element takes a field of 1, 2, 4, 8 or 16 bits
of those words (the fewest that express p exactly: one bit for 0.5, two for 0.25, 16 for 0.05 -> 3277/65536)
and is kept when its field is at least p * 2**bits, so the drop rate is exact (or within 1/131072), and the
survivors are scaled by 1/(1 - that rate): the mean is preserved exactly.

`relu_dropout` fuses the hidden layers' ReLU with their dropout and keeps no mask for backward; `relu_dropout_`
does the same in place, on a Linear's fresh output (no 2000x500 buffer allocated and filled per layer and step,
which on CPU is most of the fused op's time; the same values bit for bit).

The masks use the default torch generator, so `torch.manual_seed` replays them (resume relies on this).
On CUDA the native fused kernels are already fast, and are used instead.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

_INT64_MIN = -(1 << 63)


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, float]:
    """A 0/1 mask of `dtype` with P(1) = 1 - p_q, and the scale 1 / (1 - p_q).

    p_q is p rounded to a multiple of 2**-bits: the fewest bits in (1, 2, 4, 8) that make it exact (0.5 takes
    one random bit per element, 0.25 two), else 16 bits (0.05 -> 3277/65536)."""
    bits, _ = _lanes(p)
    return _keep(random_fields(list(shape), bits, device), p, dtype), keep_scale(p)


def keep_scale(p: float) -> float:
    bits, dropped = _lanes(p)
    return (1 << bits) / ((1 << bits) - dropped)


def _lanes(p: float) -> tuple[int, int]:
    bits = next((b for b in (1, 2, 4, 8) if float(p * (1 << b)).is_integer()), 16)
    return bits, round(p * (1 << bits))


def _keep(fields: torch.Tensor, p: float, dtype: torch.dtype, scale: float = 1.0) -> torch.Tensor:
    """Uniform random fields -> 0/1 of dtype (1 where field >= dropped). Plain ops: torch.compile fuses them.
    scale=2.0 (only for p=0.5, see `_folded_scale`) gives 0/2 instead: the uint8 mask shifted left by one, which is
    cheaper than a multiply of the dtype tensor by the scale afterwards."""
    bits, dropped = _lanes(p)
    if bits < 16 and dropped & (dropped - 1) == 0:  # a power of two: shifts, which are much cheaper than >=
        shift = dropped.bit_length() - 1
        keep = fields >> shift if shift else fields
        keep = keep if bits - shift == 1 else keep.clamp_max(1)
        return (keep << 1 if scale == 2.0 else keep).to(dtype)
    assert scale == 1.0
    keep = fields >= (dropped if bits < 16 else dropped - (1 << 15))
    if torch.compiler.is_compiling():  # inductor fuses the cast (and older versions cannot lower the view)
        return keep.to(dtype)
    return keep.view(torch.uint8).to(dtype)  # eager bool -> float is a slow path on CPU; uint8 -> float is not


def _folded_scale(p: float) -> float:
    """The scale folded into the mask: 2.0 for p=0.5 (exact in every dtype, so x * (mask * 2) equals
    (x * mask) * 2 bit for bit), else 1.0 (the scale is applied as a Python float, see _Dropout)."""
    return 2.0 if keep_scale(p) == 2.0 else 1.0


def random_fields(shape: list[int], bits: int, device: torch.device) -> torch.Tensor:
    """Uniform random fields of `bits` bits, one per element of `shape`: uint8 in [0, 2**bits) for bits <= 8,
    int16 for bits=16. Cut from raw 64-bit generator words, so the generator does 64/bits times less work."""
    n = math.prod(shape)
    per_word = 64 // bits
    words = torch.empty((n + per_word - 1) // per_word, dtype=torch.int64, device=device)
    words.random_(_INT64_MIN, None)  # the whole 64-bit range: every bit is uniform
    if bits == 16:
        lanes = words.view(torch.int16)
    elif bits == 8:
        lanes = words.view(torch.uint8)
    else:  # field j of every byte goes to row j: the order of i.i.d. fields does not matter, and scalar shifts
        # of contiguous rows are vectorised (a broadcast tensor of shifts is not: 10x slower)
        octets = words.view(torch.uint8)
        lanes = torch.empty(8 // bits, octets.numel(), dtype=torch.uint8, device=device)
        for j in range(8 // bits):
            torch.bitwise_right_shift(octets, j * bits, out=lanes[j])
        lanes = lanes.bitwise_and_((1 << bits) - 1).view(-1)
    return (lanes if lanes.numel() == n else lanes[:n].clone()).view(shape)


# Tagged nondeterministic_seeded, as torch's own random ops are: the compiler must treat every call as a new draw.
# Untagged, the op looks pure, and torch 2.14's graph CSE merged two same-shaped calls (their inputs x and x * 1.0
# simplified to one) into a single mask; the tag also keeps the partitioner from redrawing a mask for backward.
@torch.library.custom_op("distrib::random_fields_like", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def random_fields_like(x: torch.Tensor, bits: int) -> torch.Tensor:
    """random_fields of x's shape, as one opaque op: torch.compile does not break its graph on `random_`; the
    threshold, cast and multiply after it still fuse."""
    return random_fields(list(x.shape), bits, x.device)


@random_fields_like.register_fake
def _(x: torch.Tensor, bits: int) -> torch.Tensor:
    return torch.empty(x.shape, dtype=torch.int16 if bits == 16 else torch.uint8, device=x.device)


def _keep_like(x: torch.Tensor, p: float, scale: float = 1.0) -> torch.Tensor:
    return _keep(random_fields_like(x, _lanes(p)[0]), p, x.dtype, scale)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        folded = _folded_scale(p)
        mask, scale = _keep_like(x, p, folded), keep_scale(p) / folded
        ctx.save_for_backward(mask)
        ctx.scale = scale
        # Where the scale is not exact in x's dtype it stays a Python float: a scalar multiply runs in fp32 even on
        # bf16 tensors, where a scaled bf16 mask would round 1/(1 - p) (4/3 by 0.2%) and bias the layer's mean.
        out = x * mask
        return out if scale == 1.0 else out.mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        out = grad * mask
        return (out if ctx.scale == 1.0 else out.mul_(ctx.scale)), None


class _ReluDropout(torch.autograd.Function):
    """y = relu(x) * mask * scale. Backward needs no mask: y > 0 exactly where x > 0 and the unit was kept,
    and y is saved anyway (the next Linear's input), so the gradient is threshold_backward(g, y, 0) * scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
        folded = _folded_scale(p)
        mask = _keep_like(x, p, folded)  # already scaled where exact: one pass fewer
        if inplace:  # x is no one else's (a Linear's output: its backward keeps its input and weight, not this)
            ctx.mark_dirty(x)
        out = (x.relu_() if inplace else torch.relu(x)).mul_(mask)
        if folded == 1.0:
            out.mul_(keep_scale(p))
        ctx.save_for_backward(out)
        ctx.scale = keep_scale(p)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (out,) = ctx.saved_tensors
        return torch.ops.aten.threshold_backward(grad, out, 0).mul_(ctx.scale), None, None


def _use_native(x: torch.Tensor) -> bool:
    # Not under torch.compile either: inductor's own CPU masks (from the native op) are slower than these.
    return x.device.type != "cpu"


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Drop-in for F.dropout(x, p, training)."""
    if not training or p == 0.0:
        return x
    if _use_native(x):
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p)


def relu_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """dropout(relu(x), p, training), with no mask kept for backward."""
    if not training or p == 0.0:
        return F.relu(x)
    if _use_native(x):
        return F.dropout(F.relu(x), p, True)
    return _ReluDropout.apply(x, p)


def relu_dropout_(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """relu_dropout, overwriting x: for a tensor nothing else reads, such as a Linear's output."""
    if not training or p == 0.0:
        return F.relu_(x) if not torch.compiler.is_compiling() else F.relu(x)
    if _use_native(x) or torch.compiler.is_compiling():  # inductor plans its own buffers
        return relu_dropout(x, p, training)
    return _ReluDropout.apply(x, p, True)
