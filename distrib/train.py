"""The training entry point.

    python -m distrib.train [CONFIG.yaml] [key=value ...] [--print-config]     # one process
    torchrun --standalone --nproc_per_node=N -m distrib.train [CONFIG] [...]   # N ranks, same code

Rank 0 prints a short header (data, model, world size, device, run.dir, the keys that differ from the
defaults) and one line per epoch; --print-config also prints the full resolved config (always saved as
run.dir/config.yaml).

Fixed lifecycle: parse and validate the config (before any process group), resolve the launcher's
environment, form the group, build, train (and with train.refit, train again on training + validation
ratings for the validated epoch count, in run.dir/refit), and always tear the group down.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import sys
import typing
from pathlib import Path

import yaml

from distrib.config import Config, dump_yaml, load_config, refit_config, to_dict, with_refit_group
from distrib.errors import JobError, UserError, exit_on_user_error, stop_on_sigint
from distrib.options import help_text
from distrib.report.console import PRINT_CONFIG_FLAG, closing_line, header, plural, refit_summary

if typing.TYPE_CHECKING:  # torch and the rest are imported once the arguments have been read
    from distrib.parallel.distributed import DistEnv

log = logging.getLogger("distrib")
CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LAUNCH = """\
launch:
  python -m distrib.train [CONFIG.yaml] [key=value ...]                                   one process
  torchrun --standalone --nproc_per_node=N -m distrib.train CONFIG [key=value ...]        N ranks, one machine
  torchrun --nnodes=M --nproc_per_node=N --rdzv_backend=c10d --rdzv_endpoint=HOST:29400 -m distrib.train CONFIG
  sbatch --nodes=M --ntasks-per-node=N slurm/train.sbatch CONFIG [key=value ...]         SLURM (one task per GPU)
  python -m launch.submit CONFIG [key=value ...] [--wait] [--local] [--sweep KEY=V1,V2]    submitit (SLURM or local)
"""


def usage() -> str:
    """--help: the launch commands, the shipped configs and every key, all generated from their sources."""
    shipped = sorted(CONFIGS.glob("*.yaml")) if CONFIGS.is_dir() else []
    configs = "".join(f"  configs/{p.name}\n" for p in shipped) or "  (none next to this installation)\n"
    return ("usage: python -m distrib.train [CONFIG.yaml] [key=value ...] [--print-config]   (key=value beats the "
            "file, the file beats the defaults; --print-config prints the resolved config at start)"
            f"\n\n{LAUNCH}\nshipped configs:\n{configs}\n"
            "config keys (key=default  (values)  meaning; * = may change when a run resumes):\n"
            f"{help_text(Config)}\n")


def parse_args(argv: list[str]) -> tuple[str | None, list[str]]:
    if any(a in ("-h", "--help") for a in argv):
        sys.stdout.write(usage())
        sys.exit(0)
    config_path = None
    if argv and "=" not in argv[0]:
        config_path, argv = argv[0], argv[1:]
    for item in argv:
        if "=" not in item:
            raise UserError(f"argument {item!r}: expected key=value (only the first argument may be a config file)")
    return config_path, list(argv)


def with_world_batch(cfg: Config, env: DistEnv) -> Config:
    """train.batch_size_per_rank > 0: the global batch (what the LR rule and the sampler read) is that times the
    world size; otherwise train.batch_size is the global batch whatever the world size."""
    per_rank = cfg.train.batch_size_per_rank
    if not per_rank:
        return cfg
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=per_rank * env.world_size))


def check_world(cfg: Config, env: DistEnv) -> None:
    if cfg.train.batch_size < env.world_size:
        raise UserError(f"train.batch_size={cfg.train.batch_size} is smaller than the world size {env.world_size}: "
                        "every rank needs at least one rating per step")


def setup_logging(env: DistEnv) -> None:
    # Other ranks stay quiet: warnings and errors only, tagged with their rank.
    fmt = "%(message)s" if env.is_main else f"[rank {env.rank}] %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO if env.is_main else logging.WARNING, format=fmt, stream=sys.stdout,
                        force=True)
    logging.getLogger("matplotlib").setLevel(logging.WARNING)  # its font cache notes ("generated new fontManager")
    logging.getLogger("submitit").propagate = False  # under submitit: its own handler prints its lines once


def agree(error: str | None) -> None:
    """Rank 0's verdict (e.g. on the run directory) reaches every rank, so all exit together."""
    error = from_main(error)
    if error:
        raise UserError(error)


def from_main(value):
    """Rank 0's value on every rank: decisions that read files rank 0 owns (run.dir) must be the same everywhere."""
    import torch.distributed as dist

    if dist.is_initialized():
        box = [value]
        dist.broadcast_object_list(box, src=0)
        value = box[0]
    return value


def on_main(action, env: DistEnv) -> None:
    """Rank 0 runs `action` (a check of run.dir); every rank learns its verdict."""
    error = None
    if env.is_main:
        try:
            action()
        except UserError as err:
            error = str(err)
    agree(error)


def open_run_dir(cfg: Config, env: DistEnv):
    """run.dir checked, then the data loaded (which may download), then run.dir created and locked by rank 0
    (nothing in it is touched yet): a bad run.dir answers before a long download, and a failed download or a
    bad ratings file leaves no run.dir behind."""
    from distrib.checkpoint.rundir import RunDir
    from distrib.data import load_dataset

    run_dir = RunDir(cfg.run.dir)
    on_main(run_dir.check, env)
    data = load_dataset(cfg.data)
    on_main(run_dir.open, env)
    return run_dir, data


def finished_summary(trainer, run_dir) -> dict | None:
    """A finished run's summary.json, when the run is finished and its end-of-run outputs are all there: the
    summary is the end's last write, so a run stopped anywhere in its end (plots, W&B) has none, and does it all
    again (each step is idempotent: the same figures from best.pt, the same plots, W&B resumed and finished)."""
    summary = None
    if trainer.env.is_main and trainer.finished:
        try:
            summary = json.loads((run_dir.path / "summary.json").read_text())
        except (OSError, ValueError):
            summary = None  # never finished writing its outputs: finish again
    return from_main(summary)


def with_auto_resolved(cfg: Config, run_dir, env: DistEnv, n_train: int) -> Config:
    """cfg with train's `auto` keys (batch ramp, warmup) as the numbers this run trains with on `n_train` training
    ratings, so config.yaml and the checkpoints state them; a resumed run keeps the numbers it started with (rank
    0 reads them)."""
    from distrib.training.schedule import resolve_auto

    saved = from_main(saved_train_section(run_dir) if env.is_main else None)
    return dataclasses.replace(cfg, train=resolve_auto(cfg.train, saved, n_train))


def saved_train_section(run_dir) -> dict | None:
    """The train section of run.dir/config.yaml when run.dir holds a checkpoint to resume, else None."""
    if not any(name.startswith("checkpoints/") for name in run_dir.history()):
        return None
    try:
        saved = yaml.safe_load((run_dir.path / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None  # then the resumed checkpoint's own config is compared, and a difference refused in one line
    train = saved.get("train") if isinstance(saved, dict) else None
    return train if isinstance(train, dict) else None


def run(cfg: Config, env: DistEnv, device, run_dir, data, requested: Config | None = None) -> tuple[dict, bool]:
    """One training phase on `data` in run_dir (opened and locked by the caller): its summary, and whether it had
    finished before. A finished run prints one line and touches nothing. `requested`: cfg as the user gave it,
    before `auto` was resolved (the header names the keys changed from the defaults and why a batch ramp runs)."""
    from distrib.parallel.distributed import host_count
    from distrib.parallel.threads import cpu_threads
    from distrib.report.tracking import build_tracker, check_saved_state
    from distrib.training.health import Diverged
    from distrib.training.schedule import describe_ramp
    from distrib.training.trainer import Trainer

    if cfg.dist.embedding_sharding != "none":  # tables sharded across ranks with TorchRec
        from distrib.training.sharded_trainer import ShardedTrainer as Trainer  # noqa: N814
    on_main(lambda: check_saved_state(cfg.tracking, run_dir.path), env)  # before a rank waits on rank 0's tracker
    trainer = Trainer(cfg, env, device, data, run_dir)  # resumes, or refuses a mismatched or damaged checkpoint
    summary = finished_summary(trainer, run_dir)
    if summary is not None:
        log.info("run already finished at epoch %d: its results are in %s (summary.json, plots/, checkpoints/)",
                 trainer.progress.epoch, run_dir.path)
        return summary, True
    if env.is_main:
        requested = requested or cfg
        log.info("%s", header(requested, env, device, data, trainer.n_parameters, trainer.precision, host_count(),
                              describe_ramp(requested.train, cfg.train), threads=cpu_threads()))
        if trainer.resumed_from is not None:
            log.info("resumed from %s at epoch %d (step %d)", trainer.resumed_from, trainer.progress.epoch,
                     trainer.progress.step)
        run_dir.write_text("config.yaml", dump_yaml(cfg))  # only once the inputs have proved good
    tracker = build_tracker(cfg.tracking, run_dir.path, to_dict(cfg), env.is_main)
    try:
        summary = trainer.fit(tracker)
        if env.is_main:
            from distrib.report.summary import finish_run

            finish_run(trainer, tracker, summary)
    except Diverged as err:  # said with what run.dir holds now and the fixes that apply to this run
        tracker.close(1)
        raise err.explained(run_dir.saved_checkpoints(), trainer.precision) from None
    except BaseException:
        tracker.close(1)
        raise
    tracker.close(0)
    if env.is_main:  # last: its presence says the whole end is done (finished_summary)
        run_dir.write_json("summary.json", summary)
    return summary, False


def train_job(cfg: Config, env: DistEnv, device) -> None:
    """Both phases under run.dir's lock, held from the first check to the last write (train.refit's second
    phase also locks run.dir/refit, so a job started on that directory alone is refused too)."""
    run_dir, data = open_run_dir(cfg, env)
    try:
        requested, cfg = cfg, with_auto_resolved(cfg, run_dir, env, len(data.train.ratings))
        summary, was_done = run(cfg, env, device, run_dir, data, requested)
        if cfg.train.refit:
            first = summary.get("phase1", summary)  # a finished job's summary.json is already the combined one
            # resolved: the refit replays the first phase's batch ramp and warmup for its epoch count
            refit = refit_config(cfg, first["best_epoch"], first.get("blend_weights"))
            refit_dir, refit_data = open_run_dir(refit, env)
            try:
                if env.is_main and not was_done:
                    # A requeued job passes through the finished first phase quickly (it resumes as finished),
                    # then resumes this one from run.dir/refit's own checkpoints.
                    log.info("refit: training on training + validation ratings for %s in %s",
                             plural(first["best_epoch"], "epoch"), refit.run.dir)
                second, refit_done = run(refit, env, device, refit_dir, refit_data,
                                         refit_config(requested, first["best_epoch"], first.get("blend_weights")))
            finally:
                refit_dir.close()
            # Finished before means the top-level summary.json was already combined with the refit's: a job
            # stopped between the refit's summary and that write combines them now.
            was_done = was_done and refit_done and "phase1" in summary
            if not was_done:
                summary = refit_summary(first, second)
                if env.is_main:  # the top-level summary describes the model the run ships: the refit's
                    run_dir.write_json("summary.json", summary)
        if not was_done:
            log.info("%s", closing_line(summary, cfg.run.dir))
    finally:
        run_dir.close()


@exit_on_user_error
def configure(argv: list[str]) -> Config:
    """Arguments and config, checked before torch is imported: --help and mistakes answer at once."""
    return with_refit_group(load_config(*parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = configure([a for a in argv if a != PRINT_CONFIG_FLAG])
    from torch.distributed.elastic.multiprocessing.errors import record

    # record reports a crashing rank's traceback to torchrun; a UserError never reaches it (exit 2 first)
    return record(exit_on_user_error(train))(cfg, PRINT_CONFIG_FLAG in argv)


def train(cfg: Config, print_config: bool = False) -> int:
    import torch.distributed as dist

    from distrib.fsutil import NO_SPACE, NoSpace
    from distrib.parallel.distributed import (
        close_process_group,
        describe_lost_peers,
        failure_reason,
        init_process_group,
        is_peer_failure,
        record_peers,
        resolve_env,
        select_device,
    )
    from distrib.parallel.threads import set_cpu_threads

    env = resolve_env()
    set_cpu_threads()  # from the launcher's allocation, unless OMP_NUM_THREADS is set
    cfg = with_world_batch(cfg, env)
    stop_on_sigint(f"run.dir {cfg.run.dir} keeps its last checkpoint: start the same command again to resume")
    check_world(cfg, env)
    if cfg.dist.embedding_sharding != "none":  # TorchRec importable, options it supports: before any rank waits
        from distrib.training.sharded_trainer import check_sharding_config

        check_sharding_config(cfg)
    setup_logging(env)
    device = select_device(cfg.train.device, env.local_rank)
    init_process_group(env, device, cfg.dist.backend, cfg.dist.timeout_s)
    try:
        record_peers()
        if env.is_main and print_config:
            log.info("config:\n%s", dump_yaml(cfg))
        train_job(cfg, env, device)
        if dist.is_initialized():
            # Leave together: a rank that tore its group down while another still worked (rank 0 drawing plots,
            # or logging that a rerun found the job finished) was seen to abort in gloo's teardown (SIGABRT,
            # "terminate called without an active exception"), failing a job that had ended well.
            dist.barrier()
    except RuntimeError as err:
        if env.world_size > 1 and is_peer_failure(err):
            # One line instead of a gloo/NCCL stack: which rank went away, and that this one stops too.
            raise JobError(f"rank {env.rank}: {describe_lost_peers(str(err))} during a collective "
                           f"({failure_reason(err)}); exiting") from None
        raise
    except OSError as err:
        if err.errno in NO_SPACE:  # a plot or a W&B file on a full disk: checkpoints have their own message
            raise NoSpace(f"{err.filename or cfg.run.dir}: no space left on its filesystem; the earlier checkpoints "
                          "are intact: free some space and start the same command again to resume") from None
        raise
    finally:
        close_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
