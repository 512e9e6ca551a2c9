"""What keyed dropout costs per training step: masks drawn per sample from (seed, step, the sample's position in the
global batch), which make 1, 2 or 3 ranks train the same model, beside torch's nn.Dropout and the per-rank
generator masks they replace.

    python -m benchmarks.dropout_cost [--steps 20] [--rounds 5] [--threads 1]

One process on CPU, ml-100k u1 ($DISTRIB_TEST_DATA), fp32, batch 2000; each step is `Trainer.train_step`
(forward, loss, backward, Adam). Two EmbeddingNets: the default (50 factors, hidden [100, 100], dropout 0.2 and
0.02 on the embeddings) and the article's (configs/ml-100k-article.yaml: 150 factors, [500, 500, 500]).
The variants are timed in turns, so all see the same load of a shared host; the figure is the median over
rounds of CPU milliseconds per step, and the ratio is to torch's nn.Dropout (bernoulli masks) in the same model.
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack, contextmanager

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.harness import ARTICLE_CONFIG, DATA_ROOT, open_trainer, time_in_turns
from distrib.config import load_config
from distrib.data import load_dataset
from distrib.models import embeddingnet
from distrib.training.precision import cpu_description

MODELS = {"default EmbeddingNet": None, "article's EmbeddingNet": str(ARTICLE_CONFIG)}
VARIANTS = ("torch nn.Dropout", "per-rank generator (before)", "keyed per sample (now)")


def _torch_dropout(x, p, training, key=None, stream=0):
    return F.dropout(x, p, training)


def _torch_relu_dropout(x, p, training, key=None, stream=0):
    return F.dropout(F.relu(x), p, training)


@contextmanager
def torch_dropout():
    """EmbeddingNet's forward with torch's own dropout ops (what nn.Dropout runs)."""
    fast = embeddingnet.dropout, embeddingnet.relu_dropout_
    embeddingnet.dropout, embeddingnet.relu_dropout_ = _torch_dropout, _torch_relu_dropout
    try:
        yield
    finally:
        embeddingnet.dropout, embeddingnet.relu_dropout_ = fast


class Stepper:
    def __init__(self, config: str | None, variant: str, data, stack: ExitStack):
        cfg = load_config(config, [f"data.root={DATA_ROOT}", "data.name=ml-100k", "model.name=embeddingnet",
                                   "train.precision=fp32", "train.batch_size=2000"])
        self.trainer = stack.enter_context(open_trainer(cfg, data))
        self.variant = variant
        if variant != VARIANTS[2]:
            self.trainer.model.use_dropout_key(None)
        self.batch, self.seed, self.steps = cfg.train.batch_size, cfg.train.seed, 0
        self.generator = torch.Generator().manual_seed(0)

    def step(self) -> None:
        idx = torch.randint(len(self.trainer.train_split), (self.batch,), generator=self.generator)
        self.trainer.dropout_key.point_at(self.seed, self.steps, 0)
        self.steps += 1
        if self.variant == VARIANTS[0]:
            with torch_dropout():
                self.trainer.train_step(idx)
        else:
            self.trainer.train_step(idx)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(load_config(None, [f"data.root={DATA_ROOT}", "data.name=ml-100k"]).data)
    stack = ExitStack()
    steppers = {(model, variant): Stepper(config, variant, data, stack)
                for model, config in MODELS.items() for variant in VARIANTS}
    per_step = time_in_turns(steppers, args.rounds, args.steps)
    print(f"{cpu_description()}, {args.threads} thread(s), torch {torch.__version__}; {data.description}; "
          f"batch 2000, fp32; median of {args.rounds} rounds x {args.steps} steps")
    print("| model | dropout | CPU ms / step | × nn.Dropout |")
    print("|---|---|---|---|")
    for model in MODELS:
        reference = float(np.median(per_step[(model, VARIANTS[0])]))
        for variant in VARIANTS:
            median = float(np.median(per_step[(model, variant)]))
            print(f"| {model} | {variant} | {1000 * median:.1f} | {median / reference:.2f} |")
    stack.close()


if __name__ == "__main__":
    main()
