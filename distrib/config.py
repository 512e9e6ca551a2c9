"""The config: one typed, documented source for every key, its default, its allowed values and its meaning.

YAML files in configs/ and dotted key=value overrides fill it; precedence is CLI > file > defaults. Each key
is a dataclass field declared with `option(...)`: its type (`Literal[...]` for choices), its range, its help
text and whether it may change when a run resumes. Validation is generic (types, choices, ranges, finiteness)
and runs whenever a section is built; cross-field rules live in each section's `__post_init__`. Mistakes
raise `UserError` with one line naming the key, before torch is imported or any process group forms.
`--help` of distrib.train and the config table of docs/config.md are generated from here:

    python -m distrib.config --markdown           # print the table
    python -m distrib.config --update-docs        # rewrite it in docs/config.md between its markers
"""
from __future__ import annotations

import dataclasses
import string
import sys
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import yaml

from distrib.errors import UserError, exit_on_user_error
from distrib.options import (
    Section,
    build_section,
    help_text,
    iter_keys,
    key_text,
    markdown_table,
    option,
    require,
    section,
    show,
)

SEED_MAX = 2**32 - 1  # numpy and torch both take seeds in [0, 2**32)
DatasetName = Literal["synthetic", "ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-32m", "ml-latest",
                      "ml-latest-small", "file"]
SplitName = Literal["random", "temporal", "u1", "u2", "u3", "u4", "u5", "ua", "ub"]
ML100K_SPLITS = typing.get_args(SplitName)[2:]
MemberName = Literal["embeddingnet", "mf", "autorec", "uautorec", "kernelnet"]


@dataclass
class SyntheticConfig(Section):
    KEY: ClassVar[str] = "data.synthetic"
    n_users: int = option(2000, "users in the generated data", ge=1)
    n_items: int = option(1500, "movies in the generated data", ge=1)
    n_ratings: int = option(200_000, "ratings in the generated data (at most n_users * n_items)", ge=1)
    rank: int = option(8, "dimension of the planted low-rank preferences", ge=1)
    seed: int = option(0, "generator seed", ge=0, le=SEED_MAX)

    def __post_init__(self):
        super().__post_init__()
        require(self.n_ratings <= self.n_users * self.n_items,
                "data.synthetic.n_ratings: exceeds n_users * n_items")


@dataclass
class DataConfig(Section):
    KEY: ClassVar[str] = "data"
    name: DatasetName = option("synthetic", "the ratings: generated, a MovieLens release (downloaded), or data.path")
    root: str = option("~/.cache/distrib/data", "where downloads and releases live", nonempty=True,
                       changeable=True)
    path: str = option("", "the ratings file, for name=file")
    sep: str = option("auto", "name=file: auto, tab, comma, space, '::' or a literal separator", nonempty=True)
    split: SplitName = option("random", "temporal: each user's latest ratings to test; u1..ub: "
                                        "ml-100k's canonical splits")
    test_fraction: float = option(0.2, "share of ratings in the test part (random and temporal splits)",
                                  ge=0.0, lt=1.0)
    val_fraction: float = option(0.1, "share of the training part carved for validation (early stopping)",
                                 ge=0.0, lt=1.0)
    split_seed: int = option(1, "seed of the random split and the validation carve", ge=0, le=SEED_MAX)
    rating_min: float | None = option(None, "declared lowest rating; null takes it from the data")
    rating_max: float | None = option(None, "declared highest rating; null takes it from the data")
    duplicates: Literal["last", "first", "mean", "error"] = option(
        "last", "what a repeated (user, movie) pair keeps")
    base_url: str = option("https://files.grouplens.org/datasets/movielens", "download source", nonempty=True,
                           changeable=True)
    cache_dir: str = option("", "prepared arrays; empty: data.root/cache, or ~/.cache/distrib if "
                                "data.root is read-only", changeable=True)
    sha256: str = option("", "pins the download's SHA-256 where distrib has none (ml-10m, ml-32m, "
                             "ml-latest)", changeable=True)
    synthetic: SyntheticConfig = section(SyntheticConfig, "the synthetic generator (data.name=synthetic)")

    def __post_init__(self):
        super().__post_init__()
        require(self.name != "file" or self.path, "data.path: required when data.name=file")
        require(self.split not in ML100K_SPLITS or self.name == "ml-100k",
                f"data.split: {self.split} exists only for data.name=ml-100k")
        require(self.rating_min is None or self.rating_max is None or self.rating_min < self.rating_max,
                "data.rating_min must be < data.rating_max")
        require(not self.sha256 or (len(self.sha256) == 64 and all(c in string.hexdigits for c in self.sha256)),
                "data.sha256: expected 64 hexadecimal digits")


@dataclass
class AutoRecConfig(Section):
    KEY: ClassVar[str] = "model.autorec"
    hidden: int = option(500, "sigmoid code units", ge=1)
    l2: float = option(100.0, "L2 lambda (lambda/2 * squared weights per pass)", ge=0.0)


@dataclass
class UAutoRecConfig(AutoRecConfig):
    KEY: ClassVar[str] = "model.uautorec"


@dataclass
class KernelNetConfig(Section):
    KEY: ClassVar[str] = "model.kernelnet"
    hidden: int = option(500, "units per hidden layer", ge=1)
    layers: int = option(2, "sigmoid hidden layers", ge=1)
    kernel_dim: int = option(5, "size of the vectors that gate each weight", ge=1)
    l2: float = option(20.0, "lambda_2 on the weights", ge=0.0)
    sparsity: float = option(0.006, "lambda_s on the kernel values", ge=0.0)


@dataclass
class ModelConfig(Section):
    KEY: ClassVar[str] = "model"
    name: Literal["embeddingnet", "mf", "bias", "autorec", "uautorec", "kernelnet", "ensemble"] = option(
        "embeddingnet", "the article's MLP, biased MF, the baseline (mean + user and movie biases), I-/U-AutoRec, "
                        "kernelNet, or an ensemble of them")
    n_factors: int = option(50, "embedding size (embeddingnet, mf)", ge=1)
    hidden: list[int] = option([100, 100], "hidden layer sizes (embeddingnet)", ge=1)
    dropouts: list[float] = option([0.2, 0.2], "dropout after each hidden layer (fewer rates: the last layers "
                                               "have none)", ge=0.0, lt=1.0)
    embedding_dropout: float = option(0.02, "dropout on the concatenated embeddings", ge=0.0, lt=1.0)
    bias: bool = option(False, "user and movie bias terms added to the output")
    implicit: bool = option(False, "embeddingnet: + SVD++'s implicit term on the user's vector")
    dot: bool = option(False, "embeddingnet: + the user-movie dot product on the output (NeuMF)")
    hide_target: bool = option(False, "autorec, uautorec, kernelnet: train on each rating with its own value "
                                      "out of the input")
    factor_reg: float = option(0.0, "per-rating L2 on each batch's user and movie embeddings", ge=0.0)
    bias_reg: float = option(0.0, "per-rating L2 on each batch's bias terms", ge=0.0)
    autorec: AutoRecConfig = section(AutoRecConfig, "I-AutoRec (model.name=autorec or an ensemble member)")
    uautorec: UAutoRecConfig = section(UAutoRecConfig, "U-AutoRec (model.name=uautorec or an ensemble member)")
    kernelnet: KernelNetConfig = section(KernelNetConfig, "kernelNet (Sparse FC)")
    members: list[MemberName] = option([], "name=ensemble: its models, each fit on its own error; it predicts "
                                           "their weighted mean")
    member_weights: list[float] = option([], "name=ensemble: one weight per member (0 leaves a member out of the "
                                             "prediction); empty: equal weights", ge=0.0)
    blend: Literal["mean", "validation"] = option("mean", "name=ensemble: member_weights, or weights fitted on "
                                                          "validation (stacking)")

    def __post_init__(self):
        super().__post_init__()
        require(len(self.dropouts) <= len(self.hidden), "model.dropouts: more rates than hidden layers")
        if self.name == "ensemble":
            require(len(self.members) >= 2,
                    f"model.members: name=ensemble needs two or more of {', '.join(typing.get_args(MemberName))}")
            require(len(set(self.members)) == len(self.members), "model.members: each member at most once")
            require(not {"embeddingnet", "mf"} <= set(self.members),
                    "model.members: embeddingnet and mf both read model.n_factors; ensemble one of them")
            require(not self.member_weights or len(self.member_weights) == len(self.members),
                    "model.member_weights: one weight per member (or none for equal weights)")
            require(not self.member_weights or sum(self.member_weights) > 0,
                    "model.member_weights: at least one weight must be > 0")
            require(self.blend == "mean" or not self.member_weights,
                    "model.member_weights: model.blend=validation fits them; leave member_weights empty")


@dataclass
class TrainConfig(Section):
    KEY: ClassVar[str] = "train"
    epochs: int = option(20, "at most this many epochs (fixed on resume under one_cycle)", ge=1, changeable=True)
    batch_size: int = option(2000, "the global batch, across all ranks", ge=1)
    batch_size_per_rank: int = option(0, "> 0: the global batch is this times the world size (replaces batch_size)",
                                      ge=0)
    lr: float = option(1e-3, "learning rate for ref_batch_size, scaled to batch_size by lr_scaling", gt=0.0)
    ref_batch_size: int = option(2000, "the batch size lr is given for", ge=1)
    lr_scaling: Literal["linear", "sqrt", "none"] = option("sqrt", "how lr scales with batch_size / "
                                                                   "ref_batch_size")
    warmup_steps: int = option(0, "linear warmup steps (cosine_restarts only)", ge=0)
    warmup_epochs: float | Literal["auto"] = option(
        "auto", "cosine_restarts: linear warmup over this many epochs, only when batch_size > ref_batch_size; "
                "auto: 0 with a batch ramp, else 2 (at most 50 steps)", ge=0.0)
    schedule: Literal["cosine_restarts", "one_cycle"] = option(
        "cosine_restarts", "the article's cosine restarts, or fastai's one-cycle over "
                           "train.epochs")
    batch_ramp_epochs: int | Literal["auto"] = option(
        "auto", "> 0: the global batch grows geometrically from ref_batch_size to batch_size over this many "
                "epochs; auto: from 4 x ref_batch_size, 2.5 epochs per doubling of the batch (4x: 5, 16x: 10), "
                "else 0 (docs/batch_scaling.md)", ge=0)
    cycle_epochs: float = option(2.0, "cosine restarts every this many epochs", gt=0.0)
    eta_min_ratio: float = option(0.1, "the cosine floor, as a fraction of the peak lr", ge=0.0, le=1.0)
    optimizer: Literal["adam", "adamw", "lamb"] = option(
        "adam", "adam: decay as L2 (the article's); adamw: decoupled decay; lamb: adamw with a per-tensor trust "
                "ratio (large batches; its own lr)")
    betas: list[float] = option([0.9, 0.999], "Adam's beta1, beta2", ge=0.0, lt=1.0)
    weight_decay: float = option(1e-5, "the optimizer's weight decay", ge=0.0)
    seed: int = option(0, "initial weights, shuffling, dropout masks", ge=0, le=SEED_MAX)
    patience: int = option(10, "epochs without validation improvement before stopping; 0: never "
                               "(best.pt is kept)", ge=0, changeable=True)
    refit: bool = option(False, "then retrain from the same initial weights on training + validation "
                                "ratings for the best epoch count, in run.dir/refit", changeable=True)
    precision: Literal["auto", "fp32", "bf16"] = option(
        "auto", "auto: bf16 where the device has it natively and it is faster (CUDA; an AVX512-BF16/AMX CPU whose "
                "bf16 matmul, timed at start, takes at most 0.8 of fp32's time), else fp32; bf16: autocast, fp32 "
                "master weights", changeable=True)
    compile: bool = option(False, "torch.compile the model", changeable=True)
    cuda_graph: bool = option(False, "capture the whole step as one CUDA graph (one process); on CPU the same "
                                     "static-shape step runs eagerly", changeable=True)
    device: Literal["auto", "cpu", "cuda"] = option("auto", "auto: cuda when available", changeable=True)
    log_every_steps: int = option(50, "step logging and NaN check interval (host syncs)",
                                  ge=1, changeable=True)
    log_every_s: float = option(30.0, "where the log is not a terminal (SLURM, nohup): a progress line every this "
                                      "many seconds of an epoch; 0: none", ge=0.0, changeable=True)

    def __post_init__(self):
        super().__post_init__()
        require(self.schedule != "one_cycle" or self.warmup_steps == 0,
                "train.warmup_steps: one_cycle warms up by itself (its first quarter); leave warmup_steps at 0")
        require(len(self.betas) == 2, "train.betas: two values in [0, 1), e.g. [0.9, 0.999]")
        require(not (self.cuda_graph and self.batch_ramp_epochs not in (0, "auto")),  # auto: no ramp when captured
                "train.batch_ramp_epochs: a captured step has one batch size; set train.cuda_graph=false")
        require(not (self.cuda_graph and self.optimizer == "lamb"),
                "train.optimizer=lamb: not with train.cuda_graph (the captured step uses fused Adam)")


@dataclass
class DistConfig(Section):
    KEY: ClassVar[str] = "dist"
    backend: Literal["auto", "nccl", "gloo"] = option("auto", "auto: nccl on CUDA, gloo on CPU", changeable=True)
    timeout_s: float = option(300.0, "collective timeout: a lost rank ends the job within this", ge=1.0,
                              le=7 * 86400.0, changeable=True)
    bucket_cap_mb: float = option(1.0, "DDP gradient bucket size (small: all-reduce overlaps backward)", gt=0.0,
                                  le=4096.0, changeable=True)
    grad_compression: Literal["none", "bf16"] = option("none", "bf16: gradients averaged in bf16 on the wire "
                                                               "(half the bytes)",
                                                       changeable=True)
    embedding_sharding: Literal["none", "row_wise", "table_wise", "auto"] = option(
        "none", "none: whole tables on every rank (DDP); else sharded by TorchRec (auto: its planner; "
                "docs/sharding.md)")
    embedding_update: Literal["auto", "touched_rows", "dense"] = option(
        "auto", "touched_rows: Adam updates only the rows a step looked up (lazy Adam); dense: every row; auto: "
                "touched_rows when sharded, or in one process when a step looks up <= 10% of the rows",
        changeable=True)


@dataclass
class RunConfig(Section):
    KEY: ClassVar[str] = "run"
    dir: str = option("runs/default", "the run directory: config, metrics, checkpoints, plots", nonempty=True,
                      changeable=True)
    keep_checkpoints: int = option(2, "last.pt plus this many - 1 previous good ones", ge=1, changeable=True)


@dataclass
class TrackingConfig(Section):
    KEY: ClassVar[str] = "tracking"
    mode: Literal["online", "offline", "disabled"] = option("disabled", "Weights & Biases", changeable=True)
    project: str = option("distrib", "W&B project", nonempty=True, changeable=True)
    entity: str = option("", "W&B entity (team or user); empty: your default", changeable=True)
    group: str = option("", "W&B group; with train.refit, empty: the run directory's name", changeable=True)
    name: str = option("", "W&B run name", changeable=True)
    tags: list[str] = option([], "W&B tags", changeable=True)


@dataclass
class SlurmConfig(Section):
    KEY: ClassVar[str] = "slurm"
    nodes: int = option(1, "nodes (launch.submit)", ge=1, changeable=True)
    tasks_per_node: int = option(1, "ranks per node when gpus_per_node is 0", ge=1, changeable=True)
    gpus_per_node: int = option(0, "GPUs per node, one rank each", ge=0, changeable=True)
    cpus_per_task: int = option(1, "CPUs per rank", ge=1, changeable=True)
    mem_gb: int = option(0, "memory per node; 0: the cluster's default", ge=0, changeable=True)
    partition: str = option("", "SLURM partition", changeable=True)
    account: str = option("", "SLURM account", changeable=True)
    qos: str = option("", "SLURM QOS", changeable=True)
    constraint: str = option("", "SLURM node constraint", changeable=True)
    timeout_min: int = option(60, "time limit in minutes", ge=1, changeable=True)
    signal_delay_s: int = option(120, "USR2 this long before the limit: checkpoint and requeue", ge=0,
                                 changeable=True)
    folder: str = option("", "submitit logs; empty: run.dir/slurm", changeable=True)


@dataclass
class Config(Section):
    data: DataConfig = section(DataConfig, "the ratings and their split")
    model: ModelConfig = section(ModelConfig, "the model")
    train: TrainConfig = section(TrainConfig, "optimisation, schedule, early stopping, precision")
    dist: DistConfig = section(DistConfig, "process group and DDP")
    run: RunConfig = section(RunConfig, "the run directory")
    tracking: TrackingConfig = section(TrackingConfig, "Weights & Biases")
    slurm: SlurmConfig = section(SlurmConfig, "resources for launch.submit")

    def __post_init__(self):
        super().__post_init__()
        require(not (self.train.patience and self.data.val_fraction == 0),
                "data.val_fraction=0 leaves no validation part, but early stopping (train.patience > 0) needs one")
        require(not (self.train.refit and self.data.val_fraction == 0),
                "train.refit needs a validation part to choose the epoch count (data.val_fraction > 0)")


# ---- loading -----------------------------------------------------------------------------------------------
def load_config(path: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then key=value overrides; every value checked against its declaration."""
    tree: dict = {}
    if path:
        tree = _read_yaml(Path(path))
    for item in overrides:
        key, value = _parse_override(item)
        _set_dotted(tree, key, value)
    return build_section(Config, tree)


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def with_refit_group(cfg: Config) -> Config:
    """With train.refit and no tracking.group, both phases' W&B runs go to one group named after run.dir."""
    if not cfg.train.refit or cfg.tracking.group:
        return cfg
    return dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, group=Path(cfg.run.dir).name))


def refit_config(cfg: Config, epochs: int, blend_weights: list[float] | None = None) -> Config:
    """The second phase of train.refit: every training rating (no validation carve), `epochs` epochs, no early
    stopping, in run.dir/refit; the rest (seed, model, schedule per epoch) is the first phase's. An ensemble
    blended on validation keeps the first phase's fitted weights (`blend_weights`) as fixed member_weights."""
    name = f"{cfg.tracking.name}-refit" if cfg.tracking.name else ""
    model = cfg.model
    if model.blend == "validation" and blend_weights:
        model = dataclasses.replace(model, blend="mean", member_weights=list(blend_weights))
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, val_fraction=0.0), model=model,
        train=dataclasses.replace(cfg.train, epochs=epochs, patience=0, refit=False),
        run=dataclasses.replace(cfg.run, dir=str(Path(cfg.run.dir) / "refit")),
        tracking=dataclasses.replace(cfg.tracking, name=name))


# keys whose `auto` a run turns into the numbers it trains with before training (distrib.training.schedule), taking
# the resumed run's own numbers where its saved config has them
RESOLVED_AUTO_KEYS = ("train.batch_ramp_epochs", "train.warmup_epochs")


def check_resume(saved: dict, cfg: Config, run_dir) -> None:
    """Refuse to resume a checkpoint whose saved config differs from cfg in a key that identifies the run
    (data, split, model, seeds, batch, optimizer, schedule); changeable keys may differ."""
    changed = []
    defaults, current = to_dict(Config()), to_dict(cfg)
    for key, _, f in iter_keys(Config):
        # one_cycle spans train.epochs, so there the epoch count shapes every step's learning rate
        fixed = not f.metadata.get("changeable") or (key == "train.epochs" and cfg.train.schedule == "one_cycle")
        if not fixed:
            continue
        old = _lookup(saved, key, _lookup(defaults, key, None))  # a key newer than the checkpoint: its default
        if key in RESOLVED_AUTO_KEYS and old == "auto":  # a checkpoint older than the key: the run keeps its numbers
            continue
        new = _lookup(current, key, None)
        if old != new:
            changed.append(f"{key} ({show(old)} -> {show(new)})")
    if changed:
        raise UserError(f"run.dir {run_dir}: resumed with changed keys {', '.join(changed)}; "
                        "use a new run.dir (or the config it was trained with)")


def _lookup(tree: dict, key: str, missing):
    node = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return missing
        node = node[part]
    return node


def _read_yaml(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"{path}: config file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a YAML config file")
    if not path.is_file():  # a FIFO or a device would block the read, or never end
        raise UserError(f"{path}: not a regular file, expected a YAML config file")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        raise UserError(f"{path}: not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); save it as UTF-8") from None
    try:
        tree = yaml.safe_load(text)
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
            raise UserError(f"override {key_text(key)}: {key_text(part)} is not a section")
    node[parts[-1]] = value


CONFIG_DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"  # where the config table lives
TABLE_BEGIN, TABLE_END = "<!-- config-table:begin -->", "<!-- config-table:end -->"


def update_table(path: Path) -> bool:
    """Rewrite the config table between the document's markers from the declarations; True if it changed."""
    if not path.is_file():
        raise UserError(f"{path}: no such file (the config table lives in {CONFIG_DOC})")
    text = path.read_text()
    if TABLE_BEGIN not in text or TABLE_END not in text:
        raise UserError(f"{path}: no {TABLE_BEGIN} ... {TABLE_END} markers (the config table lives in {CONFIG_DOC})")
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_BEGIN}\n{markdown_table(Config)}{TABLE_END}{tail}"
    if new != text:
        path.write_text(new)
    return new != text


@exit_on_user_error
def main(argv: list[str]) -> int:
    usage = ("usage: python -m distrib.config [--help | --markdown | --update-docs [FILE]]\n"
             "  --markdown      print the config table\n"
             "  --update-docs   rewrite that table between its markers in FILE (default: docs/config.md);\n"
             "                  --update-readme, its older name, does the same")
    if not argv or argv[0] in ("-h", "--help"):
        print(usage + "\n\n" + help_text(Config))
    elif argv[0] == "--markdown":
        sys.stdout.write(markdown_table(Config))
    elif argv[0] in ("--update-docs", "--update-readme"):
        path = Path(argv[1]) if len(argv) > 1 else CONFIG_DOC
        print(f"{path}: {'updated' if update_table(path) else 'already up to date'}")
    else:
        raise UserError(f"argument {argv[0]!r}: unknown ({usage.splitlines()[0]})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
