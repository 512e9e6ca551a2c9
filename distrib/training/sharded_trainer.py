"""The training loop with embedding tables sharded by TorchRec (`dist.embedding_sharding` = row_wise,
table_wise or auto): `distrib.training.trainer.Trainer`'s loop, schedule, early stopping, NaN stop and outputs, with
the model under `DistributedModelParallel` (`distrib.parallel.sharding`) and checkpoints in DCP
(`distrib.checkpoint.sharded`).

What differs from the replicated trainer: every forward is a collective (an all-to-all of ids and rows), so
validation runs the same number of batches on every rank (a rank past its share looks up one padding pair);
the best weights are loaded into the sharded model itself for the test metrics; and the whole tables are
gathered to rank 0 once at the end for the PCA plot and the W&B embedding table (`report_model`).
"""
from __future__ import annotations

import itertools
import logging
import math
import re
import warnings
from collections.abc import Iterator
from contextlib import nullcontext

import torch
import torch.distributed as dist

from distrib.checkpoint import sharded as sckpt
from distrib.config import check_resume
from distrib.errors import UserError
from distrib.metrics.rating import EVAL_BATCH, error_sums, from_sums
from distrib.models import build_model, build_penalty
from distrib.parallel.distributed import bf16_allreduce_hook
from distrib.parallel.sampler import shard_bounds
from distrib.parallel.sharding import build_sharded, dense_kernels, dense_state, gather_tables, require_torchrec
from distrib.parallel.touched_rows import attach_to_optimizer
from distrib.training.blend import chunked_moments, member_predictor, solve_blend
from distrib.training.lamb import Lamb
from distrib.training.schedule import build_scheduler
from distrib.training.trainer import DeviceSplit, Trainer, build_optimizer

log = logging.getLogger("distrib")

# Notices TorchRec 1.8, FBGEMM and torch print on every rank of a sharded run, none of which a user can act
# on: (category, message regex) for warnings, (logger, message regex) for log records.
THIRD_PARTY_WARNINGS = (
    (FutureWarning, r"Please use DTensor instead and we are deprecating ShardedTensor"),  # TorchRec's and DCP's state
    (FutureWarning, r"`broadcast_buffers` is deprecated"),  # TorchRec's own DDP wrapper passes it
    # FBGEMM's CPU dense lookup backpropagates through autograd's fallback: its gradients are the replicated
    # ones (tests/test_sharding.py compares the weights), so the "may be incorrect" notice does not apply.
    (UserWarning, r"fbgemm::dense_embedding_codegen_lookup_function: an autograd kernel was not registered"),
)
THIRD_PARTY_LOG_LINES = (
    ("torchrec.distributed.utils", r"Compute Kernel is dense, caching params will be ignored"),  # the kernel we chose
    ("torch.fx._symbolic_trace", r"is_fx_tracing will return true"),  # asked inside TorchRec
    ("", r"\[TBE=[\w-]+\] Feature Gates:"),  # FBGEMM logs each table batch's gates through the root logger
)


class _DropMessage(logging.Filter):
    def __init__(self, pattern: str):
        super().__init__()
        self.pattern = re.compile(pattern)

    def filter(self, record: logging.LogRecord) -> bool:
        return not self.pattern.match(record.getMessage())


def quiet_third_party() -> None:
    """Keep a sharded run's console to distrib's own lines: the known third-party notices above are dropped,
    and TorchRec's INFO chatter ("Collective validation initialized", "EC index dedup enabled") too; its
    other warnings and errors still print."""
    for category, pattern in THIRD_PARTY_WARNINGS:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    for name, pattern in THIRD_PARTY_LOG_LINES:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropMessage) and f.pattern.pattern == pattern for f in logger.filters):
            logger.addFilter(_DropMessage(pattern))
    logging.getLogger("torchrec").setLevel(logging.WARNING)


def check_sharding_config(cfg) -> None:
    """The sharded trainer's own limits, checked on every rank before any collective: the config's conflicts
    first (the same answer on any machine), then whether TorchRec is installed."""
    mode = cfg.dist.embedding_sharding
    conflicts = (
        (cfg.train.compile, "train.compile: not supported with dist.embedding_sharding={mode} (TorchRec's sharded "
                            "modules run eager); set train.compile=false"),
        (cfg.train.cuda_graph, "train.cuda_graph: not supported with dist.embedding_sharding={mode} (TorchRec's "
                               "all-to-all runs outside a captured graph); set train.cuda_graph=false"),
        (cfg.train.optimizer == "lamb" and cfg.dist.embedding_update == "dense",
         "dist.embedding_update=dense: not with train.optimizer=lamb and dist.embedding_sharding={mode} (a shard's "
         "trust ratio would depend on the number of ranks); use dist.embedding_update=touched_rows (LAMB per "
         "looked-up row) or train.optimizer=adamw"),
    )
    for conflict, message in conflicts:
        if conflict:
            raise UserError(message.format(mode=mode))
    require_torchrec(mode)


class ShardedTrainer(Trainer):
    report_model: torch.nn.Module | None = None  # rank 0, after fit: the whole model for plots and W&B

    def _build_parallel(self) -> None:
        cfg = self.cfg
        check_sharding_config(cfg)
        self._resumable = self._find_resumable()  # before sharding, the first collective
        quiet_third_party()
        update = "dense" if cfg.dist.embedding_update == "dense" else "touched_rows"  # auto: touched rows, sharded
        self.ddp, self.wrapper = build_sharded(self.model, cfg.model.name, cfg.dist.embedding_sharding, self.device,
                                               cfg.dist.bucket_cap_mb, update)
        if cfg.dist.grad_compression == "bf16":
            self.ddp._dmp_wrapped_module.register_comm_hook(None, bf16_allreduce_hook)
        self.penalty = build_penalty(cfg.model, self.model)  # after sharding: it reads the tables' slots
        self.optimizer = build_optimizer(self.ddp, cfg, self.device)
        if update == "touched_rows":  # train.optimizer=lamb: LAMB on each looked-up row (its own trust ratio)
            attach_to_optimizer(dense_kernels(self.ddp), self.optimizer, trust_ratio=isinstance(self.optimizer, Lamb))
        self.scheduler = build_scheduler(self.optimizer, cfg.train, self.steps_per_epoch, len(self.train_split))
        self._resume()

    def _find_resumable(self) -> tuple[Iterator, list[str]]:
        """The checkpoints to resume from, newest first, each checked (distrib.checkpoint.sharded.verify), and why
        others were passed over. Every rank reads the same files, so every rank refuses alike: the newest one's
        config (changed keys, shapes included) and data sizes, and best.dcp. None: a fresh start, or the
        refusal when run.dir holds a past run."""
        ckpt_dir, problems = self.run.checkpoints, []
        found = sckpt.loadable(ckpt_dir, problems)
        newest = next(found, None)
        if newest is None:
            if (ckpt_dir / "last.pt").exists():
                raise UserError(f"run.dir {self.run.path}: holds a replicated run's checkpoints (last.pt); resume it "
                                "with dist.embedding_sharding=none, or use a new run.dir")
            self.run.refuse_fresh_start(problems or ["no last.dcp"])
            return iter(()), problems
        path, _, meta = newest
        check_resume(meta.get("config", {}), self.cfg, self.run.path)
        sckpt.check_same_data(meta, self.data, path, self.run.path)
        sckpt.check_best(ckpt_dir / "best.dcp")
        return itertools.chain([newest], found), problems

    def _resume(self) -> None:
        """Load the newest checkpoint whose shards read on every rank; a damaged one is reported and the previous
        one used, as replicated mode does."""
        found, problems = self._resumable
        for path, metadata, meta in found:
            try:
                sckpt.load(self.ddp, self.wrapper, self.optimizer, path, metadata)
            except sckpt.Unreadable as err:
                problems.append(f"{path.name}: {err}")
                continue
            for problem in problems:  # "last.dcp: __1_0.distcp is cut off"
                log.warning("checkpoint %s; resuming from %s", problem, path.name)
            self._load_meta_state(meta, path)
            return
        if problems:
            self.run.refuse_fresh_start(problems)

    def state_dict(self) -> dict:
        raise NotImplementedError("sharded state is saved with distrib.checkpoint.sharded")

    def _save(self, improved: bool) -> None:
        if self.env.is_main:
            self.run.write_metrics(self.metrics)  # first: a death before the checkpoint replays this epoch
        sckpt.save(self.ddp, self.wrapper, self.optimizer, self.meta_state(), self.run.checkpoints, improved,
                   keep=self.cfg.run.keep_checkpoints)

    def evaluate(self, split: DeviceSplit, model: torch.nn.Module | None = None) -> dict:
        return lockstep_metrics(self.ddp, split, self.env.rank, self.env.world_size, self.autocast)

    def _stack(self, best_model) -> dict:
        """model.blend=validation, as the replicated trainer stacks: the members' predictions on validation (one
        lookup per batch serves every member), the fitted weights set on the live model, best.dcp rewritten."""
        ensemble, split = self.wrapper.model, self.val_split
        self.ddp.eval()
        predict_members = member_predictor(list(ensemble.members), self.autocast)

        def predict(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
            self.wrapper.look_up(users, items)
            return predict_members(users, items)

        chunks = lockstep_chunks(len(split), self.env.rank, self.env.world_size)
        weights = solve_blend(*chunked_moments(predict, len(ensemble.members), split.users, split.items,
                                               split.ratings, chunks))
        ensemble.set_weights(weights)
        if (self.run.checkpoints / "best.dcp").is_dir():
            sckpt.replace_best_model(self.ddp, self.wrapper, self.run.checkpoints)
        return {"blend_weights": weights, "blend_val_rmse": self.evaluate(split)["rmse"]}

    def finish(self) -> dict:
        self.report_model = self._gather_model()  # the last weights, as the replicated trainer reports
        return super().finish()

    def _load_best(self) -> torch.nn.Module:
        best = self.run.checkpoints / "best.dcp"
        if best.exists():
            sckpt.load_model_only(self.ddp, self.wrapper, best)  # training is over: the live model may take it
        return self.ddp

    def _gather_model(self) -> torch.nn.Module | None:
        tables = gather_tables(self.ddp, self.wrapper)  # a collective
        if not self.env.is_main:
            return None
        data = self.data
        model = build_model(self.cfg.model, data.n_users, data.n_items, data.rating_min, data.rating_max)
        model.load_state_dict(dense_state(self.ddp) | tables)
        return model.eval()


@torch.no_grad()
def lockstep_metrics(dmp: torch.nn.Module, split: DeviceSplit, rank: int, world_size: int, autocast=None) -> dict:
    """Exact RMSE/MAE over the whole split, as `distrib.training.trainer.sharded_metrics`, but every rank runs the same
    number of forward passes (each one is an all-to-all): a rank whose share is done looks up a padding pair."""
    dmp.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=split.ratings.device)
    for start, stop in lockstep_chunks(len(split), rank, world_size):
        rows = slice(start, stop) if stop > start else slice(0, 1)  # an empty chunk looks up one padding pair
        with autocast or nullcontext():
            pred = dmp(split.users[rows], split.items[rows])
        if stop > start:
            sums += error_sums(pred, split.ratings[rows])
    dist.all_reduce(sums, op=dist.ReduceOp.SUM)
    return from_sums(sums)


def lockstep_chunks(n: int, rank: int, world_size: int):
    """(start, stop) of this rank's evaluation batches over its shard of n items, as many on every rank: a rank
    whose share is done gets empty chunks (start == stop), for which the caller still runs a forward (one
    padding pair, its result unused), so that every rank takes part in each all-to-all."""
    lo, hi = shard_bounds(n, rank, world_size)
    largest = shard_bounds(n, 0, world_size)[1]  # rank 0's share is never smaller than another's
    for chunk in range(math.ceil(largest / EVAL_BATCH)):
        start = min(lo + chunk * EVAL_BATCH, hi)
        yield start, min(start + EVAL_BATCH, hi)
