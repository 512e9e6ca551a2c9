"""Fetch a MovieLens zip from GroupLens on first use: verified, extracted atomically, one process at a time.

A folder `data.root/<name>/` that already holds the ratings file is used as is (no lock, so a read-only
shared copy works). Otherwise, under an flock in data.root, the zip is streamed to a temp file, checked
against the pinned SHA-256, extracted into a temp dir and renamed into place, so other ranks never see a
half-written folder; ranks that waited for the lock find the folder and return.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

from distrib.data.movielens import RATINGS_FILE
from distrib.errors import UserError
from distrib.fsutil import FileLock

# SHA-256 of the official zips. ml-100k, ml-1m, ml-20m, ml-25m: as pinned by tensorflow-datasets
# (url_checksums/movielens.txt). ml-latest-small is a rolling release: we accept the current one (hashed
# from a copy we hold) and the earlier one TFDS pinned. ml-10m, ml-32m and ml-latest have no published
# SHA-256 we could verify, so they download with a warning unless data.sha256 pins one.
SHA256 = {
    "ml-100k": ("50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",),
    "ml-1m": ("a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",),
    "ml-20m": ("96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",),
    "ml-25m": ("8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",),
    "ml-latest-small": ("1c181e626a515c96f5601c26577b0459b359c75dd16c5c84c796c7fde3287a6c",
                        "696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436"),
}
# Folder names inside the zips that differ from the dataset name.
ZIP_FOLDER = {"ml-10m": "ml-10M100K"}
LOCK_HINT = "set data.root or data.cache_dir"  # the keys that move the data lock files elsewhere
_CHUNK = 1 << 20


def dataset_folder(name: str, root: Path) -> Path | None:
    """The extracted folder for `name` under root, if a complete one is there."""
    for folder in (root / name, root / ZIP_FOLDER.get(name, name)):
        if (folder / RATINGS_FILE[name]).is_file():
            return folder
    return None


def ensure_movielens(name: str, root: Path, base_url: str, sha256: str = "") -> Path:
    """The folder holding `name`'s files, downloading and extracting it first if needed."""
    found = dataset_folder(name, root)
    if found:
        return found
    with FileLock(root / f".{name}.lock", hint=LOCK_HINT):
        found = dataset_folder(name, root)  # another process may have finished while we waited
        if found:
            return found
        url = f"{base_url.rstrip('/')}/{name}.zip"
        zip_path = _fetch(url, root, name)
        try:
            _verify(zip_path, name, url, sha256)
            return _extract(zip_path, root, name, url)
        finally:
            zip_path.unlink(missing_ok=True)


def _fetch(url: str, root: Path, name: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip.part", dir=root)
    tmp_path = Path(tmp)
    print(f"distrib: downloading {url} -> {root}", flush=True)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as resp:
            expected = resp.headers.get("Content-Length")
            shutil.copyfileobj(resp, out, _CHUNK)
            size = out.tell()
        if expected is not None and size != int(expected):
            raise UserError(f"{url}: download truncated ({size} of {expected} bytes); try again")
    except (urllib.error.URLError, OSError) as err:
        tmp_path.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err
        raise UserError(f"{url}: download failed ({reason}); check data.base_url and the network, "
                        f"or put the extracted folder at {root / name}") from None
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return tmp_path


def _verify(zip_path: Path, name: str, url: str, sha256: str) -> None:
    pinned = (sha256.lower(),) if sha256 else SHA256.get(name, ())
    digest = hashlib.sha256()
    with open(zip_path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    got = digest.hexdigest()
    if not pinned:
        warnings.warn(f"{url}: no pinned SHA-256 for {name}; downloaded file has sha256 {got} "
                      f"(set data.sha256 to pin it)", stacklevel=2)
    elif got not in pinned:
        raise UserError(f"{url}: checksum mismatch, expected sha256 {pinned[0]} got {got}; "
                        f"the download was deleted")


def _extract(zip_path: Path, root: Path, name: str, url: str) -> Path:
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}-extract-", dir=root))
    try:
        try:
            with zipfile.ZipFile(zip_path) as zf:
                bad = zf.testzip()
                if bad is not None:
                    raise zipfile.BadZipFile(f"CRC error in {bad}")
                zf.extractall(tmp_dir)
        except (zipfile.BadZipFile, EOFError, OSError) as err:
            raise UserError(f"{url}: corrupt or truncated zip ({err}); it was deleted, "
                            f"run again to re-download") from None
        inner = _inner_folder(tmp_dir, name)
        target = root / name
        try:
            os.rename(inner, target)  # atomic on one filesystem: readers see all of it or nothing
        except OSError:
            found = dataset_folder(name, root)  # extracted meanwhile by a node whose lock this one did not see
            if found is None:
                raise
            return found
        return target
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _inner_folder(tmp_dir: Path, name: str) -> Path:
    """The zips hold one top folder (ml-100k/, ml-10M100K/ ...); a flat zip is its own folder."""
    for candidate in [tmp_dir / ZIP_FOLDER.get(name, name), tmp_dir / name, *sorted(tmp_dir.iterdir())]:
        if (candidate / RATINGS_FILE[name]).is_file():
            return candidate
    if (tmp_dir / RATINGS_FILE[name]).is_file():
        return tmp_dir
    raise UserError(f"{name}.zip: no {RATINGS_FILE[name]} inside the archive")
