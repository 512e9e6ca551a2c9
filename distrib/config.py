"""The typed config tree: defaults in dataclasses, YAML files in configs/, dotted key=value overrides.

Precedence is CLI > file > defaults. Unknown keys and wrong types raise `UserError` with one line that
names the key, before any process group forms. Each component receives only its own section.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from distrib.errors import UserError

DATASETS = (
    "synthetic", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m",
    "ml-latest", "ml-latest-small", "file",
)
ML100K_SPLITS = ("u1", "u2", "u3", "u4", "u5", "ua", "ub")
MODELS = ("embeddingnet", "mf", "autorec", "ensemble")  # the registry in distrib.models


@dataclass
class SyntheticConfig:
    n_users: int = 2000
    n_items: int = 1500
    n_ratings: int = 200_000
    rank: int = 8  # planted low-rank preference dimension
    seed: int = 0

    def __post_init__(self):
        _require(self.n_users > 0 and self.n_items > 0, "data.synthetic: n_users and n_items must be > 0")
        _require(self.n_ratings > 0, "data.synthetic.n_ratings must be > 0")
        _require(self.n_ratings <= self.n_users * self.n_items,
                 "data.synthetic.n_ratings exceeds n_users * n_items")


@dataclass
class DataConfig:
    name: str = "synthetic"
    root: str = "~/.cache/distrib/data"  # downloads and prepared caches live here
    path: str = ""  # the ratings file, for name=file
    sep: str = "auto"  # name=file: auto, tab, comma, space, '::', or a literal separator
    split: str = "random"  # random, temporal, or an ml-100k canonical split u1..u5, ua, ub
    test_fraction: float = 0.2
    val_fraction: float = 0.1  # carved from the training part for early stopping
    split_seed: int = 1
    rating_min: float | None = None  # declared scale; None takes it from the data
    rating_max: float | None = None
    duplicates: str = "last"  # policy for repeated (user, item) pairs: last, first, mean, error
    base_url: str = "https://files.grouplens.org/datasets/movielens"
    cache_dir: str = ""  # prepared caches; empty = data.root/cache (set it when data.root is read-only)
    sha256: str = ""  # pins the download's SHA-256 where the built-in table has none (ml-10m, ml-32m, ml-latest)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def __post_init__(self):
        _require(self.name in DATASETS, f"data.name: unknown dataset {self.name!r} (choose from {', '.join(DATASETS)})")
        _require(self.name != "file" or self.path, "data.path: required when data.name=file")
        _require(self.split in ("random", "temporal") + ML100K_SPLITS,
                 f"data.split: unknown split {self.split!r} (random, temporal, u1..u5, ua, ub)")
        _require(self.split not in ML100K_SPLITS or self.name == "ml-100k",
                 f"data.split: {self.split} exists only for data.name=ml-100k")
        _require(0.0 <= self.test_fraction < 1.0, "data.test_fraction must be in [0, 1)")
        _require(0.0 <= self.val_fraction < 1.0, "data.val_fraction must be in [0, 1)")
        _require(self.duplicates in ("last", "first", "mean", "error"),
                 "data.duplicates must be one of last, first, mean, error")
        _require(self.rating_min is None or self.rating_max is None or self.rating_min < self.rating_max,
                 "data.rating_min must be < data.rating_max")


@dataclass
class AutoRecConfig:
    hidden: int = 500  # sigmoid code units
    l2: float = 100.0  # lambda: lambda/2 * |weights|^2 per pass over the training ratings

    def __post_init__(self):
        _require(self.hidden > 0, "model.autorec.hidden must be > 0")
        _require(self.l2 >= 0, "model.autorec.l2 must be >= 0")


@dataclass
class ModelConfig:
    name: str = "embeddingnet"
    n_factors: int = 50
    hidden: list[int] = field(default_factory=lambda: [100, 100])
    dropouts: list[float] = field(default_factory=lambda: [0.2, 0.2])
    embedding_dropout: float = 0.02
    bias: bool = False  # user and item bias terms added to the output logit
    # Per-rating L2 on the embeddings (and bias terms) of each batch's users and items: distrib.models.penalty
    factor_reg: float = 0.0
    bias_reg: float = 0.0
    autorec: AutoRecConfig = field(default_factory=AutoRecConfig)
    # name=ensemble: the members' weighted sum, trained jointly; each member reads its settings above
    members: list[str] = field(default_factory=list)
    member_weights: list[float] = field(default_factory=list)  # empty: equal weights

    def __post_init__(self):
        _require(self.name in MODELS, f"model.name: unknown model {self.name!r} (choose from {', '.join(MODELS)})")
        _require(self.factor_reg >= 0 and self.bias_reg >= 0, "model.factor_reg and model.bias_reg must be >= 0")
        if self.name == "ensemble":
            _require(len(self.members) >= 2 and set(self.members) <= set(MODELS) - {"ensemble"},
                     "model.members: name=ensemble needs two or more of embeddingnet, mf, autorec")
            _require(len(set(self.members)) == len(self.members), "model.members: each member at most once")
            _require(not {"embeddingnet", "mf"} <= set(self.members),
                     "model.members: embeddingnet and mf both read model.n_factors; ensemble one of them")
            _require(not self.member_weights or len(self.member_weights) == len(self.members),
                     "model.member_weights: one weight per member (or none for equal weights)")
            _require(all(w > 0 for w in self.member_weights), "model.member_weights must be > 0")
        _require(self.n_factors > 0, "model.n_factors must be > 0")
        _require(all(h > 0 for h in self.hidden), "model.hidden: sizes must be > 0")
        _require(len(self.dropouts) <= len(self.hidden), "model.dropouts: more rates than hidden layers")
        for p in list(self.dropouts) + [self.embedding_dropout]:
            _require(0.0 <= p < 1.0, "model.dropouts / model.embedding_dropout must be in [0, 1)")


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 2000  # the global batch, across all ranks
    lr: float = 1e-3  # for ref_batch_size; scaled to batch_size by lr_scaling
    ref_batch_size: int = 2000
    lr_scaling: str = "sqrt"  # linear, sqrt or none
    warmup_steps: int = 0
    # cosine_restarts: the article's (cosine annealing restarted every cycle_epochs, floor eta_min_ratio * lr);
    # one_cycle: fastai's fit_one_cycle over train.epochs (distrib.schedule)
    schedule: str = "cosine_restarts"
    cycle_epochs: float = 2.0  # cosine annealing restarts every this many epochs
    eta_min_ratio: float = 0.1  # the cosine floor, as a fraction of the peak lr
    optimizer: str = "adam"  # adam (weight decay as L2, the article's) or adamw (decoupled weight decay)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-5
    seed: int = 0
    patience: int = 10  # epochs without val improvement before stopping; 0 disables early stopping
    # After early stopping, train again from the same initial weights on training + validation ratings for the
    # best epoch's count of epochs, in run.dir/refit (the validation part then only chose the epoch count)
    refit: bool = False
    precision: str = "fp32"  # fp32 or bf16 (autocast; master weights stay fp32)
    compile: bool = False
    device: str = "auto"  # auto, cpu or cuda
    log_every_steps: int = 50

    def __post_init__(self):
        _require(self.epochs > 0, "train.epochs must be > 0")
        _require(self.batch_size > 0, "train.batch_size must be > 0")
        _require(self.lr > 0, "train.lr must be > 0")
        _require(self.lr_scaling in ("linear", "sqrt", "none"), "train.lr_scaling must be linear, sqrt or none")
        _require(self.warmup_steps >= 0, "train.warmup_steps must be >= 0")
        _require(self.schedule in ("cosine_restarts", "one_cycle"), "train.schedule must be cosine_restarts or one_cycle")
        _require(self.schedule != "one_cycle" or self.warmup_steps == 0,
                 "train.warmup_steps: one_cycle warms up by itself (its first quarter); leave warmup_steps at 0")
        _require(self.cycle_epochs > 0, "train.cycle_epochs must be > 0")
        _require(self.patience >= 0, "train.patience must be >= 0")
        _require(self.precision in ("fp32", "bf16"), "train.precision must be fp32 or bf16")
        _require(self.optimizer in ("adam", "adamw"), "train.optimizer must be adam or adamw")
        _require(len(self.betas) == 2 and all(0.0 <= b < 1.0 for b in self.betas),
                 "train.betas: two values in [0, 1), e.g. [0.9, 0.999]")
        _require(self.device in ("auto", "cpu", "cuda"), "train.device must be auto, cpu or cuda")
        _require(self.log_every_steps > 0, "train.log_every_steps must be > 0")


@dataclass
class DistConfig:
    backend: str = "auto"  # auto (nccl on CUDA, gloo on CPU), nccl or gloo
    timeout_s: float = 300.0  # collective timeout: a lost rank ends the job within this
    # DDP gradient bucket size: small buckets start all-reducing the last layers' gradients while backward still
    # runs through the earlier ones (issue 5); DDP's own default is 25 (one bucket for the article's model).
    bucket_cap_mb: float = 1.0
    # none: fp32 gradients on the wire; bf16: DDP's bf16_compress_hook (half the bytes, bf16 rounding of the
    # averaged gradient: ranks stay identical, but weights drift from a 1-rank run, ~3% max relative in the test)
    grad_compression: str = "none"

    def __post_init__(self):
        _require(self.backend in ("auto", "nccl", "gloo"), "dist.backend must be auto, nccl or gloo")
        _require(self.timeout_s > 0, "dist.timeout_s must be > 0")
        _require(self.bucket_cap_mb > 0, "dist.bucket_cap_mb must be > 0")
        _require(self.grad_compression in ("none", "bf16"), "dist.grad_compression must be none or bf16")


@dataclass
class RunConfig:
    dir: str = "runs/default"
    keep_checkpoints: int = 2  # last.pt plus this many - 1 previous good ones


@dataclass
class TrackingConfig:
    mode: str = "disabled"  # online, offline or disabled
    project: str = "distrib"
    entity: str = ""
    group: str = ""
    name: str = ""
    tags: list[str] = field(default_factory=list)

    def __post_init__(self):
        _require(self.mode in ("online", "offline", "disabled"), "tracking.mode must be online, offline or disabled")


@dataclass
class SlurmConfig:
    nodes: int = 1
    tasks_per_node: int = 1
    gpus_per_node: int = 0
    cpus_per_task: int = 1
    mem_gb: int = 0  # 0 leaves memory to the cluster's default
    partition: str = ""
    account: str = ""
    qos: str = ""
    constraint: str = ""
    timeout_min: int = 60
    signal_delay_s: int = 120  # USR2 this long before the time limit: checkpoint and requeue
    folder: str = ""  # submitit logs; empty puts them in run.dir/slurm


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    dist: DistConfig = field(default_factory=DistConfig)
    run: RunConfig = field(default_factory=RunConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    slurm: SlurmConfig = field(default_factory=SlurmConfig)

    def __post_init__(self):
        _require(not (self.train.patience and self.data.val_fraction == 0),
                 "data.val_fraction=0 leaves no validation part, but early stopping (train.patience > 0) needs one")
        _require(not (self.train.refit and self.data.val_fraction == 0),
                 "train.refit needs a validation part to choose the epoch count (data.val_fraction > 0)")


def with_refit_group(cfg: Config) -> Config:
    """With train.refit and no tracking.group, both phases' W&B runs go to one group named after run.dir."""
    if not cfg.train.refit or cfg.tracking.group:
        return cfg
    return dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, group=Path(cfg.run.dir).name))


def refit_config(cfg: Config, epochs: int) -> Config:
    """The second phase of train.refit: every training rating (no validation carve), `epochs` epochs, no early
    stopping, in run.dir/refit; the rest (seed, model, schedule per epoch) is the first phase's."""
    name = f"{cfg.tracking.name}-refit" if cfg.tracking.name else ""
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, val_fraction=0.0),
        train=dataclasses.replace(cfg.train, epochs=epochs, patience=0, refit=False),
        run=dataclasses.replace(cfg.run, dir=str(Path(cfg.run.dir) / "refit")),
        tracking=dataclasses.replace(cfg.tracking, name=name))


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then key=value overrides; every value type-checked."""
    tree: dict = {}
    if path:
        tree = _read_yaml(Path(path))
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value)
    return _build(Config, tree, prefix="")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a YAML config file")
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}: invalid YAML{where}") from None
    if tree is None:
        return {}
    if not isinstance(tree, dict):
        raise UserError(f"{path}: expected a mapping of config sections at the top level")
    return tree


def _parse_override(item: str) -> tuple[str, object]:
    if "=" not in item:
        raise UserError(f"override {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # an unparseable value stays a string; the type check reports it
    return key.strip(), value


def _set_dotted(tree: dict, key: str, value) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserError(f"override {key}: {part} is not a section")
    node[parts[-1]] = value


def _build(cls, tree, prefix: str):
    if not isinstance(tree, dict):
        raise UserError(f"{prefix.rstrip('.') or 'config'}: expected a section (mapping), got {tree!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in tree:
        if key not in names:
            raise UserError(f"unknown config key {prefix}{key}")
    kwargs = {}
    for name in names:
        if name not in tree:
            continue
        kwargs[name] = _coerce(hints[name], tree[name], prefix + name)
    return cls(**kwargs)


def _coerce(hint, value, key: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, key + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        hint = next(o for o in options if o is not type(None))
        origin = typing.get_origin(hint)
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        if not isinstance(value, list):
            value = [value]  # a single number is a one-element list, as in the article
        return [_coerce(item_hint, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:  # YAML reads 1e-3 (no dot) as a string
                return float(value)
            except ValueError:
                pass
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    raise UserError(f"config key {key}: expected {getattr(hint, '__name__', hint)}, got {value!r}")
