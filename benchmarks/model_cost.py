"""What each model costs per training step: the shipped ensembles, the ones before them and each member alone,
with and without `model.hide_target`, side by side on one dataset.

    python -m benchmarks.model_cost [--config configs/ml-100k.yaml] [--steps 20] [--rounds 5] [--threads 1]

One process on CPU, the config's data and batch (ml-100k u1, batch 2000 by default), distrib's own model,
penalty and optimizer, fp32: each step is `Trainer.train_step` (forward, summed squared error + penalty,
backward, Adam, schedule).
The variants are timed in turns, `--steps` steps each per round, so all of them see the same load of a shared
host; the figure is the median over rounds of CPU milliseconds per step (a busy host's waits left out), and the
ratio is to the first row, the two-member ensemble (I-AutoRec + MF) the configs shipped before kernelNet.
"""
from __future__ import annotations

import argparse
from contextlib import ExitStack

import numpy as np
import torch

from benchmarks.harness import DATA_ROOT, REPO, open_trainer, time_in_turns
from distrib.config import load_config
from distrib.data import load_dataset
from distrib.training.precision import cpu_description

VARIANTS = {  # name -> overrides on the config
    "I-AutoRec + MF (before kernelNet)": ["model.members=[autorec,mf]", "model.hide_target=false"],
    "I-AutoRec + MF + kernelNet (before hide_target)": ["model.members=[autorec,mf,kernelnet]",
                                                        "model.hide_target=false"],
    "I-AutoRec + MF + kernelNet, hide_target (ml-latest-small.yaml)": ["model.members=[autorec,mf,kernelnet]"],
    "+ U-AutoRec, hide_target (ml-100k.yaml)": ["model.members=[autorec,mf,kernelnet,uautorec]"],
    "I-AutoRec alone": ["model.name=autorec", "model.hide_target=false"],
    "I-AutoRec alone, hide_target": ["model.name=autorec", "model.hide_target=true"],
    "U-AutoRec alone": ["model.name=uautorec", "model.hide_target=false"],
    "U-AutoRec alone, hide_target": ["model.name=uautorec", "model.hide_target=true"],
    "kernelNet alone": ["model.name=kernelnet", "model.hide_target=false"],
    "kernelNet alone, hide_target": ["model.name=kernelnet", "model.hide_target=true"],
    "biased MF alone": ["model.name=mf"],
}


class Stepper:
    """One variant's Trainer (model, penalty, optimizer, schedule) and a stream of its training batches."""

    def __init__(self, config: str, overrides: list[str], data, stack: ExitStack, seed: int = 0):
        cfg = load_config(config, [f"data.root={DATA_ROOT}", "train.precision=fp32", *overrides])
        self.trainer = stack.enter_context(open_trainer(cfg, data))
        self.batch = cfg.train.batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> None:
        self.trainer.train_step(torch.randint(len(self.trainer.train_split), (self.batch,), generator=self.generator))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs/ml-100k.yaml"))
    parser.add_argument("--steps", type=int, default=20, help="steps per variant per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = load_dataset(load_config(args.config, [f"data.root={DATA_ROOT}"]).data)
    stack = ExitStack()
    steppers = {name: Stepper(args.config, overrides, data, stack) for name, overrides in VARIANTS.items()}
    per_step = time_in_turns(steppers, args.rounds, args.steps)
    print(f"{cpu_description()}, {args.threads} thread(s), torch {torch.__version__}; {data.description}; "
          f"batch {steppers[next(iter(steppers))].batch}; median of {args.rounds} rounds x {args.steps} steps")
    print("| model | CPU ms / step | × I-AutoRec + MF |")
    print("|---|---|---|")
    reference = float(np.median(next(iter(per_step.values()))))
    for name, times in per_step.items():
        median = float(np.median(times))
        print(f"| {name} | {1000 * median:.1f} | {median / reference:.2f} |")
    stack.close()


if __name__ == "__main__":
    main()
