"""README's "1, 2 or 3 ranks end with the same weights", with dropout on: the default EmbeddingNet (dropout 0.2 after
each hidden layer, 0.02 on the embeddings) trained through torchrun on 1, 2 and 3 real gloo ranks.

Dropout masks are keyed by (seed, step, the sample's position in the global batch), so whichever rank holds a
sample drops the same units of it; what is left is the order in which gradients are summed across ranks. In fp32
that is rounding (tight tolerance); in bf16 each rank's gradients are rounded to bf16 before they are summed,
which is the stated tolerance.
"""
from __future__ import annotations

import torch

from tests.helpers import check_ok, max_rel_diff, summary, tiny, train_cli, weights

DEFAULT_MODEL = ["model.n_factors=50", "model.hidden=[100,100]", "model.dropouts=[0.2,0.2]",
                 "model.embedding_dropout=0.02", "train.epochs=2"]
FP32_TOLERANCE = 1e-4  # largest relative difference of any weight tensor (measured 5e-6 on 2 ranks, 1.4e-5 on 3)
BF16_TOLERANCE = 5e-3  # relative L2 distance of all weights together (measured 1.0e-3 on 2 ranks, 1.4e-3 on 3)


def _train(tmp_path, world: int, *args: str) -> dict:
    run = f"w{world}"
    check_ok(train_cli(tiny(tmp_path, run, *DEFAULT_MODEL, *args), nproc=world if world > 1 else 0))
    assert summary(tmp_path / run)["world_size"] == world
    return weights(tmp_path / run / "checkpoints" / "last.pt")


def test_default_embeddingnet_with_dropout_ends_with_the_same_weights_on_1_2_3_ranks(tmp_path):
    reference = _train(tmp_path, 1)
    for world in (2, 3):
        diff = max_rel_diff(reference, _train(tmp_path, world))
        print(f"fp32, dropout on: 1 vs {world} ranks, largest relative weight difference {diff:.2e}")
        assert diff <= FP32_TOLERANCE


def relative_l2(a: dict, b: dict) -> float:
    """|a - b| / |a| over all weights as one vector."""
    a_flat, b_flat = (torch.cat([w[key].float().flatten() for key in a]) for w in (a, b))
    return ((a_flat - b_flat).norm() / a_flat.norm()).item()


def test_bf16_ends_within_the_stated_tolerance(tmp_path):
    """bf16 is what train.precision=auto takes on GPUs and on CPUs where bf16 matmuls run faster than fp32."""
    reference = _train(tmp_path, 1, "train.precision=bf16")
    diff = relative_l2(reference, _train(tmp_path, 2, "train.precision=bf16"))
    print(f"bf16, dropout on: 1 vs 2 ranks, relative L2 distance of the weights {diff:.2e}")
    assert diff <= BF16_TOLERANCE
