"""Fast dropout for CPU training: the mask comes from raw 64-bit random words, 1 to 16 bits per element.

On CPU, `torch.bernoulli_` draws one double per element, while filling int64 words with raw generator output
and cutting them into narrow fields is many times cheaper. Each element takes a field of 1, 2, 4, 8 or 16 bits
of those words (the fewest that express p exactly: one bit for 0.5, two for 0.25, 16 for 0.05 -> 3277/65536)
and is kept when its field is at least p * 2**bits, so the drop rate is exact (or within 1/131072), and the
survivors are scaled by 1/(1 - that rate): the mean is preserved exactly.

`relu_dropout` fuses the hidden layers' ReLU with their dropout and keeps no mask for backward; `relu_dropout_`
does the same in place, on a Linear's fresh output (no 2000x500 buffer allocated and filled per layer and step,
which on CPU is most of the fused op's time; the same values bit for bit).

Without a key, the masks use the default torch generator, so `torch.manual_seed` replays them; on CUDA the native
fused kernels are already fast, and are used instead.

With a `DropoutKey` (the trainer's), each sample's mask is a function of (seed, global step, the sample's position in
the global batch, the layer) alone: a counter-based generator (SplitMix64's output function applied to a counter,
on int64 tensors, on any device) gives every row its own random words. Whichever rank holds a sample draws the
same mask for it, so 1, 2 or 3 ranks train the very same model, and a job resumed on another world size
continues the same run.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

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


def _keep(fields: torch.Tensor, p: float, dtype: torch.dtype, scale: float = 1.0, bits: int = 0) -> torch.Tensor:
    """Uniform random fields -> 0/1 of dtype (1 where field >= dropped). Plain ops: torch.compile fuses them.
    scale=2.0 (only for p=0.5, see `_folded_scale`) gives 0/2 instead: the uint8 mask shifted left by one, which is
    cheaper than a multiply of the dtype tensor by the scale afterwards. `bits`: the fields' width when wider than
    p needs (the counter-based fields are 8 or 16 bits): the same threshold, scaled, so the same drop rate."""
    fewest, dropped = _lanes(p)
    bits = max(bits, fewest)
    dropped <<= bits - fewest
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


# ---- counter-based masks: a function of (seed, step, the sample's global position, layer) -----------------------
_GAMMA = 0x9E3779B97F4A7C15  # SplitMix64's counter increment (the golden ratio in 64 bits)
_MIX = (0xBF58476D1CE4E5B9, 0x94D049BB133111EB)
_WORD = (1 << 64) - 1


def _signed(word: int) -> int:
    return word - (1 << 64) if word >= 1 << 63 else word


def _mix64(z: int) -> int:
    """SplitMix64's output function on a Python int (the tensor version below computes the same bits)."""
    z &= _WORD
    z = ((z ^ (z >> 30)) * _MIX[0]) & _WORD
    z = ((z ^ (z >> 27)) * _MIX[1]) & _WORD
    return z ^ (z >> 31)


def _shift_right(z: torch.Tensor, k: int) -> torch.Tensor:
    """Logical shift of int64 words (torch's >> is arithmetic: it copies the sign bit)."""
    return (z >> k) & ((1 << (64 - k)) - 1)


def _mix64_(z: torch.Tensor) -> torch.Tensor:
    """SplitMix64's output function on int64 words, in place (multiplication wraps, as on the uint64 it is for)."""
    z ^= _shift_right(z, 30)
    z *= _signed(_MIX[0])
    z ^= _shift_right(z, 27)
    z *= _signed(_MIX[1])
    z ^= _shift_right(z, 31)
    return z


@dataclass(frozen=True)
class DropoutKey:
    """What a training forward's masks are keyed by: `words` holds (the stream of (seed, step), the global position
    of the batch's first row), a 2-element int64 tensor the trainer rewrites in place before each step (so a
    compiled or graphed forward reads the new values, without recompiling); `salt` tells models apart (an
    ensemble's members, which would otherwise share their masks)."""

    words: torch.Tensor
    salt: int = 0

    @classmethod
    def build(cls, device: torch.device) -> DropoutKey:
        return cls(torch.zeros(2, dtype=torch.int64, device=device))

    def point_at(self, seed: int, step: int, first_position: int) -> None:
        """The next forward trains global step `step`, on rows from `first_position` of the global batch on."""
        stream = _mix64(_mix64(seed) + step * _GAMMA)
        self.words.copy_(torch.tensor([_signed(stream), first_position], dtype=torch.int64))

    def salted(self, salt: int) -> DropoutKey:
        return DropoutKey(self.words, salt)


def counter_fields(key: torch.Tensor, shape: list[int], bits: int, stream: int) -> torch.Tensor:
    """Uniform fields of `bits` (8 or 16) bits for a (rows, ...) tensor: row r's come from the counters
    (key[1] + r) * words_per_row + j of layer `stream`'s sequence, so they depend on the row's global position and
    not on which rows share the batch."""
    rows, width = shape[0], math.prod(shape[1:])
    per_word = 64 // bits
    words_per_row = (width + per_word - 1) // per_word
    start = _mix64_(key[0] + _signed(_mix64(stream + 1)))  # each layer's own sequence
    positions = torch.arange(rows, dtype=torch.int64, device=key.device) + key[1]
    counters = positions[:, None] * words_per_row + torch.arange(words_per_row, dtype=torch.int64, device=key.device)
    words = _mix64_(counters.mul_(_signed(_GAMMA)).add_(start))
    fields = words.view(torch.int16 if bits == 16 else torch.uint8)[:, :width]
    return fields.reshape(shape)


@torch.library.custom_op("distrib::counter_fields_like", mutates_args=())
def counter_fields_like(x: torch.Tensor, key: torch.Tensor, bits: int, stream: int) -> torch.Tensor:
    """counter_fields of x's shape, as one opaque op (torch.compile would otherwise trace the int64 view)."""
    return counter_fields(key, list(x.shape), bits, stream)


@counter_fields_like.register_fake
def _(x: torch.Tensor, key: torch.Tensor, bits: int, stream: int) -> torch.Tensor:
    return torch.empty(x.shape, dtype=torch.int16 if bits == 16 else torch.uint8, device=x.device)


def _counter_bits(p: float) -> int:
    """8 bits per element where p needs 8 or fewer (a byte per element: no lanes to interleave), else 16."""
    return 8 if _lanes(p)[0] <= 8 else 16


def _keep_like(x: torch.Tensor, p: float, scale: float = 1.0, key: DropoutKey | None = None,
               stream: int = 0) -> torch.Tensor:
    if key is None:
        return _keep(random_fields_like(x, _lanes(p)[0]), p, x.dtype, scale)
    bits = _counter_bits(p)
    fields = counter_fields_like(x, key.words, bits, stream + (key.salt << 16))
    return _keep(fields, p, x.dtype, scale, bits)


class _Dropout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, key: DropoutKey | None = None, stream: int = 0) -> torch.Tensor:
        folded = _folded_scale(p)
        mask, scale = _keep_like(x, p, folded, key, stream), keep_scale(p) / folded
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
        return (out if ctx.scale == 1.0 else out.mul_(ctx.scale)), None, None, None


class _ReluDropout(torch.autograd.Function):
    """y = relu(x) * mask * scale. Backward needs no mask: y > 0 exactly where x > 0 and the unit was kept,
    and y is saved anyway (the next Linear's input), so the gradient is threshold_backward(g, y, 0) * scale."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool = False, key: DropoutKey | None = None,
                stream: int = 0) -> torch.Tensor:
        folded = _folded_scale(p)
        mask = _keep_like(x, p, folded, key, stream)  # already scaled where exact: one pass fewer
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
        return torch.ops.aten.threshold_backward(grad, out, 0).mul_(ctx.scale), None, None, None, None


def _use_native(x: torch.Tensor, key: DropoutKey | None) -> bool:
    # Not under torch.compile either: inductor's own CPU masks (from the native op) are slower than these.
    # With a key, never: the native op's masks depend on which rank draws them.
    return x.device.type != "cpu" and key is None


def dropout(x: torch.Tensor, p: float, training: bool, key: DropoutKey | None = None, stream: int = 0) -> torch.Tensor:
    """Drop-in for F.dropout(x, p, training). With `key`, each row's mask is keyed by its global position and
    `stream` (one per dropout layer of a model)."""
    if not training or p == 0.0:
        return x
    if _use_native(x, key):
        return F.dropout(x, p, True)
    return _Dropout.apply(x, p, key, stream)


def relu_dropout(x: torch.Tensor, p: float, training: bool, key: DropoutKey | None = None,
                 stream: int = 0) -> torch.Tensor:
    """dropout(relu(x), p, training), with no mask kept for backward."""
    if not training or p == 0.0:
        return F.relu(x)
    if _use_native(x, key):
        return F.dropout(F.relu(x), p, True)
    return _ReluDropout.apply(x, p, False, key, stream)


def relu_dropout_(x: torch.Tensor, p: float, training: bool, key: DropoutKey | None = None,
                  stream: int = 0) -> torch.Tensor:
    """relu_dropout, overwriting x: for a tensor nothing else reads, such as a Linear's output."""
    if not training or p == 0.0:
        return F.relu_(x) if not torch.compiler.is_compiling() else F.relu(x)
    if _use_native(x, key) or torch.compiler.is_compiling():  # inductor plans its own buffers
        return relu_dropout(x, p, training, key, stream)
    return _ReluDropout.apply(x, p, True, key, stream)
