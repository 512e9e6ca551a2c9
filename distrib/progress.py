"""Per-step progress on rank 0: a tqdm bar on a terminal; nothing in log files (SLURM output), where the
one line per epoch says enough and carriage returns would only add noise."""
from __future__ import annotations

import sys


class EpochProgress:
    def __init__(self, enabled: bool, total: int, description: str):
        self._bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr)

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
