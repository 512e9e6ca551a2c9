"""train.cuda_graph: the whole training step (batch gather, forward, loss, backward, optimizer update, and the
epoch's loss sum) recorded once as a CUDA graph and replayed, so a step costs one graph launch plus the copy of
its batch's indices, instead of a few hundred kernel launches.

Shapes are static: every step has the same batch, because the sampler already drops an epoch's last partial
global batch (as the article does), so no padding or masking is needed. The schedule's learning rate lives in a
device tensor that the graph reads (StepSchedule fills it before each replay), and Adam runs fused and
capturable, its step count on the device. Before capture, three warm-up steps run on a side stream (cuBLAS and
allocator set-up, as torch's capture recipe requires); the weights and optimizer state are restored after them,
so the graphed run starts from the same state as eager. Dropout draws from CUDA's graph-safe philox generator.

On CPU there is nothing to capture: the same static step runs eagerly (identical results to the plain loop).
Single process only on CUDA: DDP's all-reduce runs in hooks outside what this captures.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext

import torch

from distrib.errors import UserError

log = logging.getLogger("distrib")
WARMUP_STEPS = 3


class StaticStep:
    def __init__(self, model, optimizer, penalty, split, batch: int, world_size: int, precision: str,
                 device: torch.device):
        self.model, self.optimizer, self.penalty, self.split = model, optimizer, penalty, split
        self.world_size, self.device = world_size, device
        self.capture = device.type == "cuda"
        self.idx = torch.zeros(batch, dtype=torch.long, device=device)
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.sq_sum = torch.zeros((), dtype=torch.float32, device=device)
        # autocast's weight cache must be off inside a capture (torch.cuda.graphs documentation)
        self.autocast = (torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
                         if precision == "bf16" else nullcontext())
        self.graph = None
        self.members = 1
        if self.capture:
            for group in optimizer.param_groups:  # read by the graph at each replay; the schedule fills it
                group["lr"] = torch.tensor(float(group["lr"]), device=device)

    def _step(self) -> None:
        users, items = self.split.users[self.idx], self.split.items[self.idx]
        with self.autocast:
            pred = self.model(users, items)
        self.members = pred.shape[0] if pred.dim() > 1 else 1  # an ensemble predicts once per member
        sq_sum = (pred.float() - self.split.ratings[self.idx]).pow(2).sum()
        loss = sq_sum if self.penalty is None else sq_sum + self.penalty(users, items)
        (loss * self.world_size).backward()
        self.optimizer.step()
        self.sq_sum.copy_(sq_sum.detach())
        self.total += sq_sum.detach()

    def run(self, idx: torch.Tensor) -> torch.Tensor:
        """One step on the ratings at idx; returns the step's summed squared error (a tensor the next step reuses)."""
        self.idx.copy_(idx, non_blocking=True)
        if not self.capture:
            self.optimizer.zero_grad(set_to_none=True)
            self._step()
        else:
            if self.graph is None:
                self._record()
            self.graph.replay()
        return self.sq_sum

    def take_total(self) -> torch.Tensor:
        """The summed squared error since the last call, and a reset (in place: the graph keeps writing there)."""
        total = self.total.clone()
        self.total.zero_()
        return total

    def _record(self) -> None:
        saved = _snapshot(self.model, self.optimizer)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self.optimizer.zero_grad(set_to_none=True)
                self._step()
        torch.cuda.current_stream().wait_stream(stream)
        _restore(self.model, self.optimizer, saved)
        self.total.zero_()
        self.graph = torch.cuda.CUDAGraph()
        self.optimizer.zero_grad(set_to_none=True)  # backward in the graph then writes (not adds) the gradients
        with torch.cuda.graph(self.graph):
            self._step()


def check_graphable(device: torch.device, world_size: int, schedule: str) -> None:
    """One line for what a captured step cannot do; on CPU, one line saying it runs eagerly."""
    if device.type != "cuda":
        log.info("train.cuda_graph: CUDA-only; on %s the same static-shape step runs eagerly", device.type)
        return
    if world_size > 1:
        raise UserError("train.cuda_graph: one process only (DDP's gradient all-reduce is not captured); "
                        "drop it for multi-GPU runs")
    if schedule == "one_cycle":
        raise UserError("train.cuda_graph: one_cycle changes Adam's beta1 every step, which a captured step "
                        "cannot follow; use train.schedule=cosine_restarts")


def graph_optimizer_options(device: torch.device, enabled: bool) -> dict:
    """Adam's options for a captured step: its step count on the device (capturable)."""
    return {"capturable": True} if enabled and device.type == "cuda" else {}


def _snapshot(model, optimizer) -> tuple[list[torch.Tensor], dict]:
    params = [p.detach().clone() for p in model.parameters()]
    state = {p: {k: v.clone() for k, v in s.items() if torch.is_tensor(v)} for p, s in optimizer.state.items()}
    return params, state


def _restore(model, optimizer, saved) -> None:
    params, state = saved
    with torch.no_grad():
        for p, value in zip(model.parameters(), params):
            p.copy_(value)
        for p, s in optimizer.state.items():
            for k, v in s.items():
                if not torch.is_tensor(v):
                    continue
                if p in state:
                    v.copy_(state[p][k])
                else:  # state the warm-up created: back to fresh
                    v.zero_()
