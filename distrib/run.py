"""The launcher: torchrun's options, then distrib's arguments; the config is checked before any process starts.

    python -m distrib.run [torchrun options] [CONFIG.yaml] [key=value ...]
    distrib-run --standalone --nproc_per_node=4 configs/ml-100k.yaml train.epochs=5

It runs torchrun's elastic agent in this process (torch.distributed.run's own parser and launch), with
`-m distrib.train` as the workers' command. A mistake in the config or the overrides is reported before
any worker starts; when a worker fails, the job ends with ONE line: the failing rank's own
`distrib: error:` line (the ranks write it to a folder this launcher reads), or which rank exited how.
torchrun's ChildFailedError report is not printed. Plain `torchrun -m distrib.train` works as before.
Write torchrun's options as `--name=value`, before the config file.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import sys
import tempfile
from types import SimpleNamespace

from distrib.errors import ERROR_DIR_ENV, EXIT_INTERRUPTED, UserError, exit_on_user_error

_MARK = "--distrib-run-end-of-args"  # appended so torchrun's parser accepts distrib's arguments being empty


class WorkerFailed(UserError):
    """A worker ended with an error; its line is the job's one line."""

    def __init__(self, line: str, exit_code: int):
        super().__init__(line)
        self.exit_code = exit_code


def parse(argv: list[str]):
    """torchrun's namespace with `-m distrib.train` as the script, and distrib's own arguments."""
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args([*argv, _MARK])
    if args.no_python or args.run_path or args.module:
        raise UserError("distrib.run starts `-m distrib.train` itself: drop --module, --no-python and --run-path")
    ours = [args.training_script, *args.training_script_args][:-1]
    args.module, args.training_script, args.training_script_args = True, "distrib.train", ours
    return args, ours


def check(args, ours: list[str]) -> None:
    """What a worker would check before its process group forms: the config, and the batch against the world."""
    from torch.distributed.run import config_from_args

    from distrib.config import load_config, with_refit_group
    from distrib.train import check_world, parse_args

    config_path, overrides = parse_args(ours)
    cfg = with_refit_group(load_config(config_path, overrides))
    launch, _, _ = config_from_args(args)
    check_world(cfg, SimpleNamespace(world_size=launch.nproc_per_node * launch.max_nodes))


def share_cpus(args) -> None:
    """Each worker's CPU threads from this machine's usable CPUs shared by the workers torchrun starts here
    (distrib.parallel.threads), set before torchrun's own default of 1 per worker; OMP_NUM_THREADS given by the
    user is kept."""
    from torch.distributed.run import determine_local_world_size

    from distrib.parallel.threads import THREADS_FROM_LAUNCHER, allocation

    if "OMP_NUM_THREADS" in os.environ:
        return
    try:
        local_ranks = determine_local_world_size(args.nproc_per_node)
    except ValueError as err:
        raise UserError(f"--nproc_per_node={args.nproc_per_node}: {err}") from None
    os.environ["OMP_NUM_THREADS"] = str(allocation(os.environ, local_ranks)[0])
    os.environ[THREADS_FROM_LAUNCHER] = "1"


def quiet_torchelastic() -> None:
    """The agent's own logs (each failed rank's exit, the ChildFailedError banner) repeat our one line."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("torch.distributed.elastic", "torch.distributed.launcher", "torch.distributed.run")):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def worker_lines(error_dir: str) -> dict[int, str]:
    """Each rank's `distrib: error:` line, without the prefix (the launcher adds its own)."""
    lines = {}
    for name in os.listdir(error_dir):
        with open(os.path.join(error_dir, name)) as handle:
            text = handle.read().strip()
        if text and name.startswith("rank"):
            lines[int(name[4:].split(".")[0])] = text.splitlines()[0].removeprefix("distrib: error: ")
    return lines


def describe(err, error_dir: str) -> WorkerFailed:
    """The lowest rank's own error line, else which rank exited first and how."""
    lines = worker_lines(error_dir)
    rank, failure = err.get_first_failure()
    code = failure.exitcode if failure.exitcode > 0 else 1
    if lines:
        return WorkerFailed(lines[min(lines)], code)
    if failure.exitcode < 0:
        return WorkerFailed(f"rank {rank} was killed by {signal.Signals(-failure.exitcode).name}", code)
    return WorkerFailed(f"rank {rank} exited with code {failure.exitcode} (its output is above)", code)


def interrupted(err, error_dir: str) -> WorkerFailed:
    """The launcher itself got SIGINT or SIGTERM (Ctrl-C reaches the workers too): one line either way."""
    lines = worker_lines(error_dir)
    line = lines[min(lines)] if lines else (f"interrupted ({err.sigval.name}); the run keeps its last checkpoint: "
                                            "start the same command again to resume")
    return WorkerFailed(line, EXIT_INTERRUPTED if err.sigval == signal.SIGINT else 128 + int(err.sigval))


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv in (["-h"], ["--help"]):
        print(__doc__.strip())
        return 0
    from torch.distributed import run as torchrun
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    quiet_torchelastic()
    args, ours = parse(argv)
    share_cpus(args)  # before check(): torchrun's config sets 1 per worker where OMP_NUM_THREADS is unset
    check(args, ours)
    error_dir = tempfile.mkdtemp(prefix="distrib-errors-")
    os.environ[ERROR_DIR_ENV] = error_dir  # the workers inherit it
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        raise describe(err, error_dir) from None
    except SignalException as err:
        raise interrupted(err, error_dir) from None
    finally:
        os.environ.pop(ERROR_DIR_ENV, None)
        shutil.rmtree(error_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
