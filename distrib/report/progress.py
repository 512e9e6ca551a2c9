"""Per-step progress on rank 0: a tqdm bar on a terminal; nothing in log files (SLURM output), where the
one line per epoch says enough and carriage returns would only add noise."""
from __future__ import annotations

import sys

from tqdm import tqdm


class EpochProgress:
    def __init__(self, enabled: bool, total: int, description: str):
        # disable=None: tqdm draws only when its file is a terminal
        self._bar = tqdm(total=total, desc=description, leave=False, dynamic_ncols=True, file=sys.stderr,
                         disable=None if enabled else True)

    def update(self) -> None:
        self._bar.update()

    def close(self) -> None:
        self._bar.close()
