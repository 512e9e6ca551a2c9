"""An exclusive file lock, so one process downloads or prepares while the others wait.

`fcntl.flock` covers N ranks on one node and, on Linux NFS/Lustre mounts, ranks on several nodes that
share the data root: the lock is released by the kernel if the holder dies, so a crashed rank never
leaves a stale lock behind (unlike a lock *file* whose mere existence is the lock).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from distrib.errors import UserError


@contextlib.contextmanager
def file_lock(path: Path):
    """Hold an exclusive lock on `path` (created if missing) for the duration of the block."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise UserError(f"{path.parent}: cannot create a lock file there ({err.strerror}); "
                        f"is the directory writable? (set data.root or data.cache_dir)") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
