"""The run directory: checked writable and locked before any training, and written atomically.

Everything a run produces lives here: config.yaml, metrics.jsonl, summary.json, checkpoints/, plots/,
wandb/. Only rank 0 writes; two jobs on one run.dir are refused through a `FileLock`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from distrib.errors import UserError
from distrib.fsutil import TMP_GLOB, FileLock, LockHeld, atomic_write_text

LOCK_NAME = ".lock"
HISTORY = ("metrics.jsonl", "summary.json", "checkpoints/best.pt", "checkpoints/last.pt")
MIN_FREE_BYTES = 64 * 2**20  # a checkpoint of the article's model on ml-25m is ~150 MB; refuse a nearly full disk early


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.checkpoints = self.path / "checkpoints"
        self.plots = self.path / "plots"
        self._lock = FileLock(self.path / LOCK_NAME)
        self.created = False  # whether open() created run.dir (close() removes it again if nothing was written)

    def check(self) -> None:
        """What open() would refuse, found without creating anything: the entry point asks this before the data
        is downloaded and prepared, and creates run.dir only once the data is ready, so a failed download leaves
        no run.dir (nor its .lock and checkpoints/) behind. Raises UserError with one line."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run.dir {self.path}: exists and is not a directory")
        nearest = next(folder for folder in (self.path, *self.path.parents) if folder.exists())
        if not nearest.is_dir():
            raise UserError(f"run.dir {self.path}: {nearest} is not a directory")
        if not os.access(nearest, os.W_OK | os.X_OK):  # a read-only mount answers EROFS here even for root
            raise UserError(f"run.dir {self.path}: not writable ({nearest} is read-only to this user)")

    def open(self) -> None:
        """Create, check writable and free space, take the lock. Raises UserError with one line."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run.dir {self.path}: exists and is not a directory")
        self.created = not self.path.exists()
        try:
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            probe = self.path / f".write-probe.{os.getpid()}"
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as err:
            raise UserError(f"run.dir {self.path}: not writable ({err.strerror or err})") from None
        free = os.statvfs(self.path)
        if free.f_bavail * free.f_frsize < MIN_FREE_BYTES:
            raise UserError(f"run.dir {self.path}: less than {MIN_FREE_BYTES >> 20} MiB free on its filesystem")
        self._take_lock()
        for stale in self.checkpoints.glob(TMP_GLOB):  # left by a writer killed before its rename
            stale.unlink(missing_ok=True)

    def _take_lock(self) -> None:
        try:
            self._lock.acquire(blocking=False)
        except LockHeld as held:
            raise UserError(f"run.dir {self.path}: in use by another job ({held.holder}); "
                            "wait for it or choose another run.dir") from None

    def history(self) -> list[str]:
        """What a past run left here that a fresh start would overwrite: results and checkpoints (files, and a
        sharded run's DCP directories)."""
        found = [name for name in HISTORY if (self.path / name).is_file() and (self.path / name).stat().st_size]
        found += [p.relative_to(self.path).as_posix() for p in self.checkpoints.glob("last.[0-9]*.pt")]
        found += [p.relative_to(self.path).as_posix() for p in sorted(self.checkpoints.glob("*.dcp")) if p.is_dir()]
        return found

    def saved_checkpoints(self) -> list[str]:
        """The names of the checkpoints a resume would start from (last before best), for messages."""
        names = [name.removeprefix("checkpoints/") for name in self.history() if name.startswith("checkpoints/")]
        return sorted((n for n in names if n.split(".")[0] in ("last", "best") and n.count(".") == 1), reverse=True)

    def refuse_fresh_start(self, problems: list[str]) -> None:
        """No checkpoint to resume from: a fresh start would overwrite a past run's results, so if this directory
        holds any, the user must choose that explicitly (`problems`: why each checkpoint could not be used)."""
        history = self.history()
        if history == ["metrics.jsonl"] and self._first_row_only():
            return  # died saving its first checkpoint (the row is written first): a fresh start replays that epoch
        if history:
            raise UserError(f"run.dir {self.path}: holds a run ({', '.join(history)}) but no checkpoint to "
                            f"resume from ({'; '.join(problems)}); nothing was changed: to start over, choose a "
                            "new run.dir (or remove this one)")

    def _first_row_only(self) -> bool:
        try:
            return len(self.read_metrics()) <= 1
        except ValueError:  # not our JSON lines: refused as history
            return False

    def close(self) -> None:
        """Release the lock. A run.dir that open() created and that holds nothing but the lock and an empty
        checkpoints/ (the job failed before writing anything, e.g. a batch larger than the data) is removed
        first, while the lock is still held, so a failed start leaves nothing behind."""
        if self.created and self._untouched():
            (self.path / LOCK_NAME).unlink(missing_ok=True)
            for folder in (self.checkpoints, self.path):
                try:
                    folder.rmdir()
                except OSError:  # something appeared meanwhile: keep it
                    break
        self._lock.release()

    def _untouched(self) -> bool:
        try:
            return (set(os.listdir(self.path)) <= {LOCK_NAME, self.checkpoints.name}
                    and not any(self.checkpoints.iterdir()))
        except OSError:
            return False

    def write_text(self, name: str, text: str) -> None:
        atomic_write_text(self.path / name, text)

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def read_metrics(self) -> list[dict]:
        path = self.path / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def write_metrics(self, rows: list[dict]) -> None:
        self.write_text("metrics.jsonl", "".join(json.dumps(row) + "\n" for row in rows))

