"""Ctrl-C's one line: a SIGINT stops the run wherever it lands, a line of the log included."""
from __future__ import annotations

import io
import logging
import os
import signal

import pytest

from distrib.errors import (
    EXIT_INTERRUPTED,
    Interrupted,
    exit_on_user_error,
    stop_on_sigint,
)


class SigintOnWrite(io.StringIO):
    """A log stream that receives SIGINT while a line is being written (Python runs the handler right after the
    kill, still inside logging's emit, which catches any Exception from its stream and carries on)."""

    def write(self, text: str) -> int:
        written = super().write(text)
        os.kill(os.getpid(), signal.SIGINT)
        return written


def test_ctrl_c_while_a_line_is_logged_stops_the_run():
    logger = logging.getLogger("distrib.test_errors")
    handler = logging.StreamHandler(SigintOnWrite())
    logger.addHandler(handler)
    previous = signal.getsignal(signal.SIGINT)
    try:
        stop_on_sigint("run.dir keeps its last checkpoint")
        with pytest.raises(Interrupted, match="keeps its last checkpoint"):
            logger.warning("epoch 3/3: step 1/10687 (0%)")
    finally:
        signal.signal(signal.SIGINT, previous)
        logger.removeHandler(handler)


def test_interrupted_exits_130_with_one_line(capsys):
    @exit_on_user_error
    def main():
        raise Interrupted("interrupted (SIGINT); run.dir keeps its last checkpoint")

    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == EXIT_INTERRUPTED
    assert capsys.readouterr().err == "distrib: error: interrupted (SIGINT); run.dir keeps its last checkpoint\n"
