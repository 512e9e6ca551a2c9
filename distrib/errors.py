"""User-facing failures: one clear line, a non-zero exit code, no traceback."""
from __future__ import annotations

import functools
import hashlib
import os
import signal
import sys
import tempfile
import threading

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C
ERROR_DIR_ENV = "DISTRIB_ERROR_DIR"


class UserError(Exception):
    """A mistake in the user's input (config, data file, run directory): reported as one line."""

    exit_code = EXIT_USER_ERROR


def exit_on_user_error(main):
    """Wrap an entry point so a UserError prints `distrib: error: ...` and exits 2 without a traceback (an
    Interrupted the same way, exit 130)."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except (UserError, Interrupted) as err:
            # One write for the whole line: print() writes the text and the newline separately, and under
            # torchrun the ranks share one stderr pipe, so two ranks' lines were seen spliced into one.
            report_line(f"distrib: error: {err}")
            sys.exit(err.exit_code)

    return wrapper


def report_line(line: str) -> None:
    """Write one line to stderr, or, under `python -m distrib.run`, to this rank's file in
    $DISTRIB_ERROR_DIR, from which the launcher prints one line for the whole job."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if folder:
        try:
            with open(os.path.join(folder, f"rank{os.environ.get('RANK', '0')}.txt"), "w") as handle:
                handle.write(line + "\n")
            return
        except OSError:
            pass  # the launcher's folder is gone: stderr still carries the line
    if not first_to_say(line):
        return
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def first_to_say(line: str) -> bool:
    """Whether no other rank of this torchrun (plain `torchrun -m distrib.train`) has written `line` yet.

    Its ranks on one node share one stderr, and most failures are the same line on every rank (a config
    mistake, rank 0's verdict on run.dir, a NaN all ranks stop at): each distinct line is written once. The
    first rank to report it creates a file named after it, in a folder of this torchrun agent (the ranks'
    parent process) and restart round; a rank that finds the file there stays silent (the folder, of empty files,
    is left in the temporary directory: no rank knows when the others are done with it). Other launchers: always."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id:
        return True
    round_ = f"{os.getuid()}-{os.getppid()}-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}"
    folder = os.path.join(tempfile.gettempdir(), f"distrib-lines-{round_}")
    try:
        os.makedirs(folder, exist_ok=True)
        os.close(os.open(os.path.join(folder, hashlib.sha256(line.encode()).hexdigest()[:24]),
                         os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        pass  # no temporary folder to share: better twice than never
    return True


class UnsafeCheckpoint(UserError):
    """A checkpoint holds pickled objects other than weights and the records that describe them: never
    unpickled (distrib.checkpoint.replicated and .sharded refuse it in one line)."""


class JobError(UserError):
    """The job itself failed in a way the user must act on (diverged loss, lost rank): one line, exit 2."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT): the run stops where it is, its last checkpoint intact, and says so in one line.

    A BaseException, as KeyboardInterrupt is, so that no `except Exception` on its way swallows it: logging
    catches every Exception its stream raises while writing a line, so a SIGINT landing there as a UserError
    would be printed as a logging error while the run went on, deaf to any further SIGINT."""

    exit_code = EXIT_INTERRUPTED


def stop_on_sigint(where: str) -> None:
    """Turn the first SIGINT into Interrupted (one line, exit 130) instead of a KeyboardInterrupt traceback;
    later ones are ignored while the run closes its files and its process group."""

    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Interrupted(f"interrupted (SIGINT); {where}")

    if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread only
        signal.signal(signal.SIGINT, handler)
