"""User-facing failures: one clear line, a non-zero exit code, no traceback."""
from __future__ import annotations

import functools
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake in the user's input (config, data file, run directory): reported as one line."""


def exit_on_user_error(main):
    """Wrap an entry point so a UserError prints `distrib: error: ...` and exits 2 without a traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as err:
            # One write for the whole line: print() writes the text and the newline separately, and under
            # torchrun the ranks share one stderr pipe, so two ranks' lines were seen spliced into one.
            sys.stderr.write(f"distrib: error: {err}\n")
            sys.stderr.flush()
            sys.exit(EXIT_USER_ERROR)

    return wrapper


class JobError(UserError):
    """The job itself failed in a way the user must act on (diverged loss, lost rank): one line, exit 2."""
