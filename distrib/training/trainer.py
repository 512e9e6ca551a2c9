"""The training loop: DDP around the model, sharded batches from device-resident data, the scaled and
restarting LR schedule, exact sharded validation, synced early stopping, checkpoints and resume.

Reading order: `fit` -> `run_epoch` -> `train_epoch` -> `train_step` (the loop, on one screen); then resume
(the checkpoint wing does the reading and the refusals), then the outputs (the report wing formats them).

Loss: the article's summed MSE. Each rank's loss is its local sum times the world size, so DDP's gradient
average equals the gradient of the sum over the whole global batch, whatever the world size.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from distrib.checkpoint import replicated as ckpt
from distrib.checkpoint.rundir import RunDir
from distrib.config import Config, check_resume, to_dict
from distrib.data import PreparedData, RatingSplit
from distrib.errors import UserError
from distrib.metrics.rating import EVAL_BATCH, error_sums, from_sums
from distrib.models import build_model, build_penalty
from distrib.models.dropout import DropoutKey
from distrib.parallel.distributed import DistEnv, wrap_ddp
from distrib.parallel.sampler import epoch_permutation, rank_batches, rank_slice, shard_bounds, steps_per_epoch
from distrib.parallel.sparse_tables import attach_sparse_tables, replicated_touched_rows
from distrib.report.console import epoch_line
from distrib.report.progress import EpochProgress
from distrib.report.tracking import epoch_metrics
from distrib.training.blend import fit_blend
from distrib.training.early_stopping import EarlyStopping
from distrib.training.graphstep import StaticStep, check_graphable, graph_optimizer_options
from distrib.training.health import DivergenceGuard
from distrib.training.lamb import Lamb
from distrib.training.precision import agree_across_ranks, resolve_precision
from distrib.training.schedule import batch_at, build_scheduler, scaled_lr, schedule_curve

log = logging.getLogger("distrib")


@dataclass
class DeviceSplit:
    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor

    def __len__(self) -> int:
        return int(self.ratings.shape[0])


@dataclass
class Progress:
    epoch: int = 0  # the next epoch to run (never the one just finished: resume must not repeat it)
    step: int = 0  # global optimizer steps taken


def to_device(split: RatingSplit, device: torch.device) -> DeviceSplit:
    """On CPU the memory-mapped cache is used in place (pages shared between ranks); on GPU it is copied once."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only memmap: we never write to it
        tensors = [torch.from_numpy(np.asarray(a)) for a in (split.users, split.items, split.ratings)]
    if device.type != "cpu":
        tensors = [t.to(device, non_blocking=True) for t in tensors]
    return DeviceSplit(*tensors)


class Trainer:
    supports_bf16 = True  # whether train.precision=auto may choose bf16 for this trainer

    def __init__(self, cfg: Config, env: DistEnv, device: torch.device, data: PreparedData, run: RunDir):
        self.cfg, self.env, self.device, self.data, self.run = cfg, env, device, data, run
        self.tracker = None
        self.train_split = to_device(data.train, device)
        self.val_split = to_device(data.val, device)
        self.steps_per_epoch = steps_per_epoch(len(self.train_split), cfg.train.batch_size)
        if self.steps_per_epoch == 0:  # the partial batch is dropped: an epoch would train nothing
            raise UserError(f"train.batch_size={cfg.train.batch_size} is larger than the training split "
                            f"({len(self.train_split)} ratings): an epoch would have no step; lower train.batch_size")
        torch.manual_seed(cfg.train.seed)  # the same initial weights whatever the world size
        self.model = build_model(cfg.model, data.n_users, data.n_items, data.rating_min, data.rating_max).to(device)
        self.dropout_key = DropoutKey.build(device)  # masks keyed by each sample's place in the global batch
        self.model.use_dropout_key(self.dropout_key)
        if self.model.needs_train_ratings:  # its input is the training rating matrix (autorec)
            self.model.attach_train(data.train)
        self.n_parameters = sum(p.numel() for p in self.model.parameters())  # whole tables: before any sharding
        self.early = EarlyStopping(cfg.train.patience)
        self.guard = DivergenceGuard(env.rank, device)
        self.progress = Progress()
        self.metrics: list[dict] = []
        self.members = 1  # predictions per rating in training: an ensemble's members each give one
        self.resumed_from = None  # the checkpoint this run resumed from, for the caller's log
        self._build_parallel()
        requested = "fp32" if cfg.train.precision == "auto" and not self.supports_bf16 else cfg.train.precision
        self.precision = resolve_precision(requested, device)  # auto -> fp32 or bf16 for this device
        if requested == "auto":
            self.precision = agree_across_ranks(self.precision, device)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16)
                         if self.precision == "bf16" else nullcontext())
        self.static_step = None  # train.cuda_graph: the whole step captured once (distrib.training.graphstep)
        if cfg.train.cuda_graph:
            check_graphable(device, env.world_size, cfg.train.schedule)
            lo, hi = rank_slice(cfg.train.batch_size, env.rank, env.world_size)
            self.static_step = StaticStep(self.ddp, self.optimizer, self.penalty, self.train_split, hi - lo,
                                          env.world_size, self.precision, device)

    def _build_parallel(self) -> None:
        """Penalty, optimizer, schedule, resume, DDP (distrib.training.sharded_trainer overrides this for sharded tables)."""
        cfg = self.cfg
        self.penalty = build_penalty(cfg.model, self.model)  # None: plain MSE
        self.optimizer = build_optimizer(self.model, cfg, self.device)
        n_rows = self.data.n_users + self.data.n_items
        sparse = replicated_touched_rows(cfg.dist.embedding_update, self.env.world_size, n_rows,
                                         cfg.train.batch_size, cfg.train.optimizer, cfg.train.compile,
                                         cfg.train.cuda_graph)
        if sparse:
            attach_sparse_tables(self.model, self.optimizer)
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.steps_per_epoch, len(self.train_split))
        self._resume()  # before the DDP wrap, so every rank starts from the loaded weights
        if cfg.train.compile:
            # The module, not the DDP wrapper: the same compiled graph serves training and evaluate, and DDP
            # stays eager (no graph split at bucket boundaries). state_dict keys are unchanged.
            self.model.compile()
        # Sparse table gradients exist in one process only, where DDP has nothing to all-reduce; its reducer
        # around sparse gradients crashed intermittently in backward (a segfault), so the model runs unwrapped.
        self.ddp = self.model if sparse else wrap_ddp(self.model, self.device, cfg.dist)

    # ---- the loop -----------------------------------------------------------------------------------
    def fit(self, tracker) -> dict:
        self.tracker = tracker
        cfg = self.cfg.train
        if self.finished:
            log.info("run already finished at epoch %d", self.progress.epoch)
        while self.progress.epoch < cfg.epochs and not self.early.should_stop:
            self.run_epoch(self.progress.epoch)
        return self.finish()

    def run_epoch(self, epoch: int) -> None:
        """One epoch: train, validate, record, checkpoint, report."""
        started = time.perf_counter()
        train_loss = self.train_epoch(epoch)
        if len(self.val_split):
            val = self.evaluate(self.val_split)
            improved = self.early.observe(epoch, val["mse"])  # val["mse"] is already the all-reduced global loss
        else:  # no validation part (train.refit's second phase)
            val = {"rmse": math.nan, "mae": math.nan, "mse": math.nan}
            improved = self.early.take_unvalidated(epoch)
        seconds = time.perf_counter() - started
        row = {
            "epoch": epoch + 1, "train_loss": train_loss, "val_rmse": val["rmse"], "val_mae": val["mae"],
            "val_loss": val["mse"], "lr": float(self.optimizer.param_groups[0]["lr"]), "epoch_seconds": seconds,
            "samples_per_s": self.epoch_samples(epoch) / seconds, "step": self.progress.step,
        }
        self.progress = Progress(epoch=epoch + 1, step=self.progress.step)
        self.metrics.append(row)
        self._save(improved)
        self._report(row, improved)

    def lr_curve(self) -> tuple[np.ndarray, np.ndarray]:
        """The learning rate at each step taken so far, as the scheduler gave it (the report draws it)."""
        return schedule_curve(self.cfg.train, self.steps_per_epoch, max(self.progress.step, 1), len(self.train_split))

    def epoch_samples(self, epoch: int) -> int:
        """Training ratings of `epoch` (all ranks): its steps times its global batch (train.batch_ramp_epochs)."""
        batch = batch_at(self.cfg.train, epoch)
        return len(self.train_split) // batch * batch

    def train_epoch(self, epoch: int) -> float:
        """One pass over this rank's batches of the training split; the global mean squared error."""
        cfg, env = self.cfg.train, self.env
        batch = batch_at(cfg, epoch)
        first_row = rank_slice(batch, env.rank, env.world_size)[0]  # of this rank's part, in the global batch
        self.ddp.train()
        perm = epoch_permutation(len(self.train_split), cfg.seed, epoch, self.device)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        bar = EpochProgress(self.env.is_main, len(self.train_split) // batch, epoch + 1, cfg.epochs, batch,
                            cfg.log_every_s)
        for idx in rank_batches(perm, batch, env.rank, env.world_size):
            self.dropout_key.point_at(cfg.seed, self.progress.step, first_row)  # the same masks on any world size
            sq_sum = self.train_step(idx)
            total += sq_sum.detach()
            self._after_step(sq_sum, idx)
            bar.update(total, idx.numel() * self.members)  # reads total only when a line is due
        bar.close()
        if self.static_step is not None:
            total = self.static_step.take_total()  # summed inside the captured step
        self.guard.check()  # before validation and saving: a diverged epoch is never checkpointed
        # Per rating and per member: an ensemble's figure is its members' mean loss, on validation's scale.
        return self._global_mean(total, self.epoch_samples(epoch) * self.members)

    def train_step(self, idx: torch.Tensor) -> torch.Tensor:
        """One optimizer step on this rank's part `idx` of a global batch; the part's summed squared error."""
        if self.static_step is not None:  # train.cuda_graph: the captured step (it also sums the epoch's loss)
            sq_sum = self.guard.observe(self.static_step.run(idx), self.progress.step)
            self.members = self.static_step.members
        else:
            split = self.train_split
            users, items = split.users[idx], split.items[idx]
            with self.autocast:
                pred = self.ddp(users, items)
            # pred may be (members, batch) in training (an ensemble): each member's own error, summed
            self.members = pred.shape[0] if pred.dim() > 1 else 1
            sq_sum = self.guard.observe((pred.float() - split.ratings[idx]).pow(2).sum(), self.progress.step)
            loss = sq_sum if self.penalty is None else sq_sum + self.penalty(users, items)
            self.optimizer.zero_grad(set_to_none=True)
            (loss * self.env.world_size).backward()
            self.optimizer.step()
        self.scheduler.step()
        return sq_sum

    def _after_step(self, sq_sum: torch.Tensor, idx: torch.Tensor) -> None:
        self.progress.step += 1
        if self.progress.step % self.cfg.train.log_every_steps == 0:  # the only host sync inside the epoch
            self.guard.check()
            self._log_step(sq_sum, idx.numel() * self.members)  # per rating and member, as the epoch figure

    def _log_step(self, sq_sum: torch.Tensor, n: int) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])  # a tensor under train.cuda_graph
        if self.env.is_main:
            self.tracker.log_step(self.progress.step, {"train/loss": sq_sum.item() / max(n, 1), "train/lr": lr})

    def _global_mean(self, local_sum: torch.Tensor, global_count: int) -> float:
        if dist.is_initialized():
            dist.all_reduce(local_sum, op=dist.ReduceOp.SUM)
        return float(local_sum.item()) / max(global_count, 1)

    def evaluate(self, split: DeviceSplit, model: torch.nn.Module | None = None) -> dict:
        return sharded_metrics(model or self.model, split, self.env.rank, self.env.world_size, self.autocast)

    # ---- resume -------------------------------------------------------------------------------------
    def _resume(self) -> None:
        state, path, problems = ckpt.load_latest(self.run.checkpoints)
        if state is None:
            self.run.refuse_fresh_start(problems or ["no last.pt"])
            return
        check_resume(state.get("config", {}), self.cfg, self.run.path)  # before anything is loaded or written
        try:
            self.model.load_state_dict(state["model"])
        except RuntimeError as err:
            raise UserError(f"run.dir {self.run.path}: {path.name} holds a different model "
                            f"({ckpt.describe_mismatch(err)}); use a new run.dir or the config it was trained with") from None
        ckpt.check_best_loads(self.run.checkpoints / "best.pt")
        self.optimizer.load_state_dict(state["optimizer"])
        self._load_meta_state(state, path)

    @property
    def finished(self) -> bool:
        return self.progress.epoch > 0 and (self.early.should_stop or self.progress.epoch >= self.cfg.train.epochs)

    def _load_meta_state(self, state: dict, path) -> None:
        """Everything of a checkpoint but model and optimizer."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.early.load_state_dict(state["early_stopping"])
        self.early.patience = self.cfg.train.patience  # may change on resume: it applies from here on
        self.early.should_stop = bool(self.early.patience) and self.early.bad_epochs >= self.early.patience
        self.progress = Progress(**state["progress"])
        # Rows of epochs after the checkpoint were written by a run that died before saving: drop them.
        # Rows number epochs from 1 (as the console does); progress.epoch counts the epochs finished.
        self.metrics = [row for row in self.run.read_metrics() if row["epoch"] <= self.progress.epoch]
        self.resumed_from = path

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), **self.meta_state()}

    def meta_state(self) -> dict:
        return {
            "scheduler": self.scheduler.state_dict(),
            "early_stopping": self.early.state_dict(),
            "progress": vars(self.progress).copy(),
            # Informative: dropout masks are keyed by (seed, step, position in the global batch), not drawn from it.
            "rng": {"torch": torch.get_rng_state(), "seed": self.cfg.train.seed},
            "config": to_dict(self.cfg),
            "data": {"n_users": self.data.n_users, "n_items": self.data.n_items,
                     "rating_min": self.data.rating_min, "rating_max": self.data.rating_max},
        }

    # ---- outputs ------------------------------------------------------------------------------------
    def _save(self, improved: bool) -> None:
        if self.env.is_main:
            self.run.write_metrics(self.metrics)  # first: a death before the checkpoint replays this epoch
            ckpt.save(self.state_dict(), self.run.checkpoints, improved, keep=self.cfg.run.keep_checkpoints)
        if dist.is_initialized():
            dist.barrier()

    def _report(self, row: dict, improved: bool) -> None:
        if self.env.is_main:
            log.info(epoch_line(row, self.cfg.train.epochs, self.members, improved))
            self.tracker.log_epoch(self.progress.step, epoch_metrics(row, self.env.world_size, self.device.type))

    def finish(self) -> dict:
        best_model = self._load_best()
        summary = {
            "best_val_rmse": math.sqrt(self.early.best) if math.isfinite(self.early.best) else None,
            "best_epoch": self.early.best_epoch + 1,
            "epochs_run": self.progress.epoch,
            "stopped_early": bool(self.early.should_stop),
            "world_size": self.env.world_size,
            "device": self.device.type,
            "steps": self.progress.step,
        }
        if self.cfg.model.name == "ensemble" and self.cfg.model.blend == "validation" and len(self.val_split):
            summary.update(self._stack(best_model))
        # With train.refit this phase only chooses the epoch count: the refit model alone reads the test part.
        if self.data.test is not None and len(self.data.test) and not self.cfg.train.refit:
            test = self.evaluate(to_device(self.data.test, self.device), best_model)
            summary.update(test_rmse=test["rmse"], test_mae=test["mae"])
        return summary  # the caller writes summary.json once the rest of the run's end is done

    def _stack(self, best_model) -> dict:
        """Stacking: the best checkpoint's members blended by weights fitted on validation alone; best.pt then
        carries them (a finished run fits them again to the same values)."""
        weights = fit_blend(best_model, self.val_split, self.env.rank, self.env.world_size, self.autocast)
        best_model.set_weights(weights)
        best_path = self.run.checkpoints / "best.pt"
        if self.env.is_main and best_path.exists():
            ckpt.replace_model(best_path, best_model.state_dict())
        if dist.is_initialized():
            dist.barrier()
        return {"blend_weights": weights, "blend_val_rmse": self.evaluate(self.val_split, best_model)["rmse"]}

    def _load_best(self) -> torch.nn.Module:
        best_path = self.run.checkpoints / "best.pt"
        if not best_path.exists():
            return self.model
        model = build_model(self.cfg.model, self.data.n_users, self.data.n_items,
                            self.data.rating_min, self.data.rating_max).to(self.device)
        model.load_state_dict(ckpt.read_or_refuse(best_path, map_location=self.device)["model"])
        return model


@torch.no_grad()
def sharded_metrics(model: torch.nn.Module, split: DeviceSplit, rank: int, world_size: int, autocast=None) -> dict:
    """Exact RMSE/MAE over the whole split: unpadded shards, all-reduced sums and counts."""
    model.eval()
    device = split.ratings.device
    lo, hi = shard_bounds(len(split), rank, world_size)
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    for start in range(lo, hi, EVAL_BATCH):
        stop = min(start + EVAL_BATCH, hi)
        with autocast or nullcontext():
            pred = model(split.users[start:stop], split.items[start:stop])
        sums += error_sums(pred, split.ratings[start:stop])  # float64 sums: equal for any sharding
    if dist.is_initialized():
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return from_sums(sums)


def build_optimizer(model: torch.nn.Module, cfg: Config, device: torch.device) -> torch.optim.Optimizer:
    # One fused kernel for the whole update, on CUDA and on CPU (cheaper than the per-parameter loop).
    fused = device.type in ("cuda", "cpu")
    # adam: the article's (weight decay as an L2 term in the gradient); adamw: decoupled decay (Loshchilov &
    # Hutter), which the tuned EmbeddingNet needs: with Adam the L2 term is rescaled per parameter and barely acts
    if cfg.train.optimizer == "lamb":  # adamw's step with a per-tensor trust ratio (distrib.training.lamb)
        return Lamb(model.parameters(), lr=scaled_lr(cfg.train), betas=tuple(cfg.train.betas),
                    weight_decay=cfg.train.weight_decay)
    optimizer = torch.optim.AdamW if cfg.train.optimizer == "adamw" else torch.optim.Adam
    return optimizer(model.parameters(), lr=scaled_lr(cfg.train), weight_decay=cfg.train.weight_decay,
                     betas=tuple(cfg.train.betas), fused=fused or None,
                     **graph_optimizer_options(device, cfg.train.cuda_graph))

