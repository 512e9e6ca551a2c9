"""distrib.fsutil: atomic writes leave the old content or the new, never a temporary file; the lock excludes
a second holder and names the first."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from distrib.errors import UserError
from distrib.fsutil import FileLock, LockHeld, atomic_torch_save, atomic_write_bytes, atomic_write_text


def test_atomic_writes_replace_the_content_and_leave_no_temporary(tmp_path):
    target = tmp_path / "sub" / "x.txt"
    atomic_write_text(target, "one")
    atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    atomic_torch_save({"w": torch.ones(2)}, tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt", weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["sub", "x.pt", "x.txt"]


def test_a_failed_write_keeps_the_old_content(tmp_path):
    target = tmp_path / "x.pt"
    atomic_write_text(target, "old")
    with pytest.raises(Exception):  # noqa: B017 (pickle raises AttributeError or PicklingError by version)
        atomic_torch_save({"f": lambda: 0}, target)  # not picklable: fails mid-write
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.pt"]


@pytest.mark.slow
def test_lock_excludes_another_process_and_names_the_holder(tmp_path):
    path = tmp_path / ".lock"
    with FileLock(path):
        code = ("import sys; from distrib.fsutil import FileLock, LockHeld\n"
                f"try:\n    FileLock({str(path)!r}).acquire(blocking=False)\n"
                "except LockHeld as held:\n    print(held.holder); sys.exit(3)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 3 and proc.stdout.startswith("pid "), proc.stderr
    second = FileLock(path)
    second.acquire(blocking=False)  # released on exit from the block
    second.release()


def test_lock_in_an_unwritable_place_is_one_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UserError, match="cannot create a lock file there.*set data.root"):
        FileLock(blocker / ".lock", hint="set data.root").acquire()
    assert LockHeld("x").holder == "x"


def test_lock_behind_a_broken_link_names_the_link_and_its_missing_target(tmp_path):
    (tmp_path / "cache").symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=r"cache: a link to .*gone, which does not exist \(set data.cache_dir\)"):
        FileLock(tmp_path / "cache" / ".lock", hint="set data.cache_dir").acquire()
    assert (tmp_path / "cache").is_symlink() and not (tmp_path / "gone").exists()  # nothing created or replaced
