"""Files written so that a reader never sees half of one, and an exclusive lock between processes.

Atomic writes go to a temporary file beside the target (`.NAME.tmp.PID`), are flushed and fsynced, renamed
over the target, and the directory is fsynced, so after a crash the target holds either the old or the new
content. `FileLock` is an `fcntl.flock` on a lock file: it covers N processes on one node and, on Linux
NFS/Lustre mounts, processes on several nodes; the kernel releases it when the holder dies, so a crashed
process never leaves a stale lock (unlike a lock *file* whose mere existence is the lock).
"""
from __future__ import annotations

import errno
import fcntl
import os
from pathlib import Path
from typing import BinaryIO, Callable

from distrib.errors import JobError, UserError

TMP_GLOB = ".*.tmp.*"  # what a writer killed before its rename leaves behind
NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class NoSpace(JobError):
    """The disk filled up while the run wrote its outputs."""


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Call `write(handle)` on a temporary file, then make it `path` in one rename."""
    path = Path(path)
    os.replace(write_temp(path, write), path)
    _fsync_dir(path.parent)


def write_temp(path: Path, write: Callable[[BinaryIO], None]) -> Path:
    """`write(handle)` on `.NAME.tmp.PID` beside `path`, flushed and fsynced; on any failure the temp file is
    removed, and a full disk raises NoSpace (one line naming `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in NO_SPACE:
            raise NoSpace(f"{path}: no space left on its filesystem; nothing was left half-written and the earlier "
                          "checkpoints are intact: free some space and start the same command again to resume") from None
        raise
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def torch_bytes(obj) -> memoryview:
    """torch.save into memory: its zip writer turns a full disk into an unrelated RuntimeError, a plain write
    of the bytes does not."""
    import io

    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getbuffer()


def atomic_torch_save(obj, path: str | Path) -> None:
    atomic_write_bytes(path, torch_bytes(obj))


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class LockHeld(Exception):
    """Another process holds the lock; `holder` is what it wrote into the lock file."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


class FileLock:
    """An exclusive lock on `path` (created if missing, writable by everyone sharing the directory).

    `with FileLock(p):` waits for the lock; `acquire(blocking=False)` raises LockHeld at once instead.
    The holder writes "pid N on HOST" into the file, so a refused process can say who holds it."""

    def __init__(self, path: str | Path, hint: str = ""):
        self.path = Path(path)
        self.hint = hint  # added to the error when the lock file cannot be created, e.g. which key moves it
        self._fd: int | None = None

    def acquire(self, blocking: bool = True) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            hint = f" ({self.hint})" if self.hint else ""
            folder = self.path.parent
            if folder.is_symlink() and not folder.exists():  # mkdir says only "File exists"
                raise UserError(f"{folder}: a link to {os.readlink(folder)}, which does not exist{hint}") from None
            raise UserError(f"{folder}: cannot create a lock file there ({err.strerror}); "
                            f"is the directory writable?{hint}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except OSError as err:
            holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                raise LockHeld(holder) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FileLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
