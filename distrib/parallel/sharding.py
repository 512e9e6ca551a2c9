"""Embedding tables sharded across ranks with TorchRec (`dist.embedding_sharding`), the dense part in DDP.

A lookup model (embeddingnet, mf, an ensemble member with lookups) keeps its own forward. Its `nn.Embedding`
tables move into TorchRec `EmbeddingCollection`s (one per embedding width: TorchRec requires one width per
collection, so the 1-wide bias tables sit in a second one), which `DistributedModelParallel` shards
(row_wise, table_wise, or as TorchRec's planner decides: auto) and whose lookups and gradients cross the
wire all-to-all; everything else is wrapped in DDP by DMP. Each table's place in the model is taken by a
`_Slot` that hands the model the rows looked up for the current batch, so the model code is unchanged.

Optimizer (`dist.embedding_update`): FBGEMM's fused optimizers have no Adam on CPU (only SGD and Adagrad
variants), so the tables sit in TorchRec's DENSE kernel modules. With `dense`, each rank's shard is an
ordinary parameter with a dense gradient, and torch's Adam/AdamW (the same one as replicated mode) updates
it: the replicated update (every row decayed and its moments advanced each step), split by rows over
ranks. On CPU, FBGEMM's dense kernel pools even when asked for sequence output; `_fix_cpu_sequence_kernels`
lays its output out as sequence rows (each sample looks up exactly one id per table, so pooling one row is
that row). With `touched_rows`, `distrib.parallel.touched_rows` replaces the kernel's lookup and updates only the
rows a step looked up.

Gradient scale: the trainer backpropagates world_size x its local loss so that DDP's average is the gradient
of the global sum. TorchRec's all-to-all backward divides the tables' gradients by the world size too
(`torchrec.distributed.comm_ops` gradient division, on by default; `build_sharded` makes sure), so the tables
get the same average and the sum's gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from distrib.errors import UserError

SHARDING_MODES = ("none", "row_wise", "table_wise", "auto")
INSTALL_HINT = ("pip install -e '.[torchrec]' && pip install --no-deps torchrec==1.8.0 (on CUDA: fbgemm-gpu==1.8.0 "
                "for your CUDA build in place of fbgemm-gpu-cpu)")


def require_torchrec(mode: str) -> None:
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec  # noqa: F401
    except Exception as err:  # noqa: BLE001 (ImportError, or OSError/RuntimeError from a CUDA fbgemm on a CPU torch)
        raise UserError(f"dist.embedding_sharding={mode} needs TorchRec and FBGEMM ({type(err).__name__}: "
                        f"{str(err).splitlines()[0][:80] if str(err) else ''}); install them: {INSTALL_HINT}") from None


def discover_tables(model: nn.Module, model_name: str) -> list[tuple[str, str, str]]:
    """(table name, module path, 'user' or 'item') for every lookup table the model (or an ensemble member)
    names in `embedding_tables()`; a UserError if it has none or an nn.Embedding it does not name."""
    paths = {id(module): path for path, module in model.named_modules()}
    found, named = [], set()
    for path, module in model.named_modules():
        tables = module.embedding_tables() if callable(getattr(module, "embedding_tables", None)) else {}
        prefix = f"m{path.split('.')[-1]}_" if path else ""  # ensemble member i: "members.i"
        for role, table in tables.items():
            found.append((prefix + role, paths[id(table)], "user" if role.startswith("user") else "item"))
            named.add(id(table))
    stray = [path for path, module in model.named_modules()
             if isinstance(module, nn.Embedding) and id(module) not in named]
    if stray:
        raise UserError(f"dist.embedding_sharding: table {stray[0]} is not among the model's embedding_tables(); "
                        "it cannot be sharded")
    if not found:
        raise UserError(f"dist.embedding_sharding: model.name={model_name} has no embedding lookups to shard "
                        "(autorec encodes each movie's rating column with dense layers); use "
                        "dist.embedding_sharding=none")
    return found


class _Slot(nn.Module):
    """Stands where a model's nn.Embedding was: returns the rows the sharded collection looked up for this
    batch (the model may call it again for the same ids, as the L2 penalty does)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.rows: torch.Tensor | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.rows is None or self.rows.shape[0] != ids.shape[0]:
            raise RuntimeError(f"sharded table {self.name}: looked up for another batch")
        return self.rows


class ShardedLookupModel(nn.Module):
    """The model with its tables in TorchRec collections (`collections.dim<D>`), before DMP shards them."""

    def __init__(self, model: nn.Module, tables: list[tuple[str, str, str]]):
        super().__init__()
        from torchrec import EmbeddingCollection, EmbeddingConfig

        self.tables = tables
        widths: dict[int, list] = {}
        self.initial = {}  # table name -> the model's initial weights, copied into the shards after sharding
        for name, path, _ in tables:
            weight = model.get_submodule(path).weight
            self.initial[name] = weight.detach().cpu()
            widths.setdefault(weight.shape[1], []).append(
                EmbeddingConfig(name=name, embedding_dim=weight.shape[1], num_embeddings=weight.shape[0],
                                feature_names=[name]))
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, _Slot(name))
        self.collections = nn.ModuleDict({
            f"dim{width}": EmbeddingCollection(tables=configs, device=torch.device("meta"))
            for width, configs in widths.items()})
        self.names = {key: [config.name for config in configs]
                      for key, configs in zip(self.collections, widths.values())}
        self.model = model
        self.slots = {m.name: m for m in model.modules() if isinstance(m, _Slot)}
        self.keyed_by = {name: by for name, _, by in tables}

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        self.look_up(users, items)
        return self.model(users, items)

    def look_up(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """The batch's rows of every table into the model's slots (a collective once sharded: all-to-all), so
        that the model, or any part of it (an ensemble's members, one by one), can then run on this batch."""
        from torchrec import KeyedJaggedTensor

        for key, collection in self.collections.items():
            names = self.names[key]
            ids = [users if self.keyed_by[name] == "user" else items for name in names]
            kjt = KeyedJaggedTensor.from_lengths_sync(
                keys=names, values=torch.cat(ids).long(),
                lengths=torch.ones(len(names) * users.numel(), dtype=torch.int32, device=users.device))
            looked_up = collection(kjt)
            for name in names:
                self.slots[name].rows = looked_up[name].values()


# ---- sharding: plan, DMP, the CPU kernel fix, initial weights, full tables back --------------------------

def build_sharded(model: nn.Module, model_name: str, mode: str, device: torch.device, bucket_cap_mb: float = 25.0,
                  embedding_update: str = "dense"):
    """DMP around the model with its tables sharded per `mode` and the rest in DDP (`bucket_cap_mb`, as
    `dist.bucket_cap_mb`), the tables' kernels as `dist.embedding_update` asks; returns (dmp, wrapper).
    With touched_rows, `distrib.parallel.touched_rows.attach_to_optimizer` must then hook the optimizer."""
    from torchrec.distributed import comm_ops
    from torchrec.distributed.model_parallel import DefaultDataParallelWrapper, DistributedModelParallel
    from torchrec.distributed.types import ShardingEnv

    comm_ops.set_gradient_division(True)  # the tables' gradients averaged over ranks, as DDP's are
    world = dist.group.WORLD
    wrapper = ShardedLookupModel(model, discover_tables(model, model_name))
    sharder = _sharder()
    plan = _plan(wrapper, sharder, mode, device)
    dmp = DistributedModelParallel(wrapper, env=ShardingEnv.from_process_group(world), device=device,
                                   plan=plan, sharders=[sharder],
                                   data_parallel_wrapper=DefaultDataParallelWrapper(bucket_cap_mb=bucket_cap_mb))
    if embedding_update == "touched_rows":
        _use_touched_rows_kernels(dmp)
    else:
        _fix_cpu_sequence_kernels(dmp)
    _copy_initial_weights(dmp, wrapper)
    return dmp, wrapper


def _sharder():
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.embedding_types import EmbeddingComputeKernel

    class DenseKernelSharder(EmbeddingCollectionSharder):
        """Offers TorchRec's DENSE kernel (torch's optimizer updates the shard) for every sharding type."""

        def compute_kernels(self, sharding_type: str, compute_device_type: str) -> list[str]:
            return [EmbeddingComputeKernel.DENSE.value]

    return DenseKernelSharder()


def _plan(wrapper: ShardedLookupModel, sharder, mode: str, device: torch.device):
    from torchrec.distributed.sharding_plan import (
        construct_module_sharding_plan,
        row_wise,
        table_wise,
    )
    from torchrec.distributed.types import ShardingPlan

    world_size = dist.get_world_size()
    if mode == "auto":
        return _planner_plan(wrapper, device)
    plans, index = {}, 0
    for key, names in wrapper.names.items():
        per_table = {}
        for name in names:
            # table_wise: whole tables dealt out round-robin (user and movie on different ranks)
            per_table[name] = (row_wise(compute_kernel="dense") if mode == "row_wise"
                               else table_wise(rank=index % world_size, compute_kernel="dense"))
            index += 1
        plans[f"collections.{key}"] = construct_module_sharding_plan(
            wrapper.collections[key], per_param_sharding=per_table, local_size=world_size, world_size=world_size,
            device_type=device.type, sharder=sharder)
    return ShardingPlan(plans)


def _planner_plan(wrapper: ShardedLookupModel, device: torch.device):
    """TorchRec's planner chooses sharding types and placements (it prices the FUSED kernel, the only one it
    validates for model parallelism); the chosen plan then runs on the DENSE kernel."""
    from torchrec.distributed.embedding import EmbeddingCollectionSharder
    from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology

    world_size = dist.get_world_size()
    planner = EmbeddingShardingPlanner(topology=Topology(world_size=world_size, compute_device=device.type))
    plan = planner.collective_plan(wrapper, [EmbeddingCollectionSharder()], dist.group.WORLD)
    for module_plan in plan.plan.values():
        for sharding in module_plan.values():
            sharding.compute_kernel = "dense"
    return plan


def dense_kernels(dmp: nn.Module) -> list[nn.Module]:
    """The DENSE-kernel modules holding this rank's table shards."""
    from torchrec.distributed.batched_embedding_kernel import BatchedDenseEmbedding

    return [kernel for module in dmp.modules() for lookup in getattr(module, "_lookups", [])
            for kernel in getattr(getattr(lookup, "module", lookup), "_emb_modules", [])
            if isinstance(kernel, BatchedDenseEmbedding)]


def _fix_cpu_sequence_kernels(dmp: nn.Module) -> None:
    from torchrec.distributed.batched_embedding_kernel import BatchedDenseEmbedding

    class SequenceDenseEmbedding(BatchedDenseEmbedding):
        """FBGEMM's CPU dense kernel returns (batch, tables x dim) pooled rows even with PoolingMode.NONE;
        with at most one id per (table, sample), the sequence rows are those, feature-major, empty bags out."""

        def forward(self, features):
            out = super().forward(features)
            lengths = features.lengths()
            if out.shape[0] == int(lengths.sum()):  # already sequence rows (the CUDA kernel)
                return out
            n_keys = len(features.keys())
            batch, width = lengths.numel() // n_keys, out.shape[1] // n_keys
            rows = out.view(batch, n_keys, width).transpose(0, 1).reshape(n_keys * batch, width)
            return rows[lengths.bool()]

    for kernel in dense_kernels(dmp):
        kernel.__class__ = SequenceDenseEmbedding


def _use_touched_rows_kernels(dmp: nn.Module) -> None:
    from torchrec.distributed.batched_embedding_kernel import BatchedDenseEmbedding

    from distrib.parallel.touched_rows import convert_kernel, touched_rows_kernel

    kernel_class = touched_rows_kernel(BatchedDenseEmbedding)
    for kernel in dense_kernels(dmp):
        convert_kernel(kernel, kernel_class)


def table_state_keys(dmp: nn.Module, wrapper: ShardedLookupModel) -> dict[str, str]:
    """DMP state_dict key of each table's sharded weight -> the unsharded model's key (e.g. u.weight)."""
    paths = {name: path for name, path, _ in wrapper.tables}
    keys = {}
    for key, names in wrapper.names.items():
        for name in names:
            keys[f"collections.{key}.embeddings.{name}.weight"] = f"{paths[name]}.weight"
    return keys


@torch.no_grad()
def _copy_initial_weights(dmp: nn.Module, wrapper: ShardedLookupModel) -> None:
    """Each shard takes its rows (and columns) of the model's seeded initial table: the same start as replicated."""
    state = dmp.state_dict()
    for dmp_key in table_state_keys(dmp, wrapper):
        name = dmp_key.split(".")[-2]
        full = wrapper.initial[name]
        for shard in state[dmp_key].local_shards():
            (row, col), (rows, cols) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
            shard.tensor.copy_(full[row:row + rows, col:col + cols])
    wrapper.initial = {}


@torch.no_grad()
def gather_tables(dmp: nn.Module, wrapper: ShardedLookupModel) -> dict[str, torch.Tensor]:
    """The whole tables on rank 0 (a collective: every rank calls it), keyed like the unsharded model."""
    state = dmp.state_dict()
    full = {}
    for dmp_key, model_key in table_state_keys(dmp, wrapper).items():
        sharded = state[dmp_key]
        out = torch.empty(tuple(sharded.size()), dtype=sharded.dtype) if dist.get_rank() == 0 else None
        sharded.gather(dst=0, out=out)
        full[model_key] = out
    return full


def dense_state(dmp: nn.Module) -> dict[str, torch.Tensor]:
    """The replicated part (MLP, biases, buffers), keyed like the unsharded model."""
    return {key[len("model."):]: value for key, value in dmp.state_dict().items() if key.startswith("model.")}


def embedding_bytes(dmp: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """This rank's table shards plus their optimizer state, in bytes."""
    total = 0
    for name, param in dmp.named_parameters():
        if ".embeddings." in name:
            total += param.numel() * param.element_size()
            for value in optimizer.state.get(param, {}).values():
                if torch.is_tensor(value) and value.dim() > 0:
                    total += value.numel() * value.element_size()
    return total
