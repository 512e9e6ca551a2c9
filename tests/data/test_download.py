"""Downloads from a local HTTP server: verified, atomic, and done by exactly one of several processes."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from distrib.data import download, load_dataset
from distrib.errors import UserError

from .conftest import cfg_for, write_ml100k, zip_folder

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def ml100k_zip(tmp_path):
    return zip_folder(write_ml100k(tmp_path / "src" / "ml-100k", splits=[("u1", {0, 3})]), "ml-100k")


def _serve(server, monkeypatch, body: bytes, name="ml-100k", pin: bytes | None = None):
    server.files[f"{name}.zip"] = body
    monkeypatch.setitem(download.SHA256, name, (hashlib.sha256(pin if pin is not None else body).hexdigest(),))


def test_download_verify_extract_then_reuse(tmp_path, http_server, ml100k_zip, monkeypatch):
    server, url = http_server
    _serve(server, monkeypatch, ml100k_zip)
    cfg = cfg_for(tmp_path, name="ml-100k", split="u1", base_url=url, val_fraction=0.0)
    data = load_dataset(cfg)
    assert (len(data.train), len(data.test)) == (6, 2)
    root = Path(cfg.root)
    assert (root / "ml-100k" / "u.data").is_file()
    assert [p.name for p in root.iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")] == []
    load_dataset(cfg_for(tmp_path, name="ml-100k", base_url=url))  # other split: folder reused
    assert server.requests == ["/movielens/ml-100k.zip"]


def test_checksum_mismatch_deletes_download(tmp_path, http_server, ml100k_zip, monkeypatch):
    server, url = http_server
    _serve(server, monkeypatch, ml100k_zip, pin=b"something else")
    cfg = cfg_for(tmp_path, name="ml-100k", base_url=url)
    with pytest.raises(UserError, match=r"ml-100k.zip: checksum mismatch, expected sha256 [0-9a-f]{64} got [0-9a-f]{64}"):
        load_dataset(cfg)
    assert [p.name for p in Path(cfg.root).iterdir() if not p.name.endswith(".lock")] == []


def test_truncated_zip_is_rejected(tmp_path, http_server, ml100k_zip, monkeypatch):
    server, url = http_server
    body = ml100k_zip[: len(ml100k_zip) // 2]
    _serve(server, monkeypatch, body)  # the pin matches the truncated bytes: only the zip check can catch it
    cfg = cfg_for(tmp_path, name="ml-100k", base_url=url)
    with pytest.raises(UserError, match="ml-100k.zip: corrupt or truncated zip"):
        load_dataset(cfg)
    assert not (Path(cfg.root) / "ml-100k").exists()


def test_unreachable_server_is_a_user_error(tmp_path, http_server):
    _, url = http_server  # serves nothing: 404
    with pytest.raises(UserError, match="ml-1m.zip: download failed"):
        load_dataset(cfg_for(tmp_path, name="ml-1m", base_url=url))


def test_unpinned_dataset_warns_and_sha256_override_pins(tmp_path, http_server, monkeypatch):
    server, url = http_server
    from .conftest import write_dat
    body = zip_folder(write_dat(tmp_path / "src" / "ml-10M100K"), "ml-10M100K")
    server.files["ml-10m.zip"] = body
    with pytest.warns(UserWarning, match="no pinned SHA-256"):
        data = load_dataset(cfg_for(tmp_path, name="ml-10m", base_url=url))
    assert data.n_users == 4 and (Path(tmp_path / "root" / "ml-10m" / "ratings.dat")).is_file()
    with pytest.raises(UserError, match="checksum mismatch"):
        load_dataset(cfg_for(tmp_path, name="ml-10m", base_url=url, root=str(tmp_path / "r2"), sha256="ab" * 32))


def test_existing_extracted_folder_needs_no_download_or_write_access(tmp_path):
    root = tmp_path / "ro"
    write_ml100k(root / "ml-100k")
    os.chmod(root, 0o555)
    try:
        data = load_dataset(cfg_for(tmp_path, name="ml-100k", root=str(root)))
    finally:
        os.chmod(root, 0o755)
    assert data.n_items == 4


RACER = textwrap.dedent("""
    import sys, hashlib
    from distrib.config import DataConfig
    from distrib.data import download, load_dataset
    download.SHA256["ml-100k"] = (sys.argv[1],)
    cfg = DataConfig(name="ml-100k", root=sys.argv[2], cache_dir=sys.argv[3], base_url=sys.argv[4])
    data = load_dataset(cfg)
    print("OK", len(data.train), data.info["built"])
""")


@pytest.mark.slow
def test_concurrent_processes_download_once(tmp_path, http_server, ml100k_zip):
    server, url = http_server
    server.files["ml-100k.zip"] = ml100k_zip
    server.delay_s = 1.0  # the first process is mid-download when the second asks for the lock
    args = [hashlib.sha256(ml100k_zip).hexdigest(), str(tmp_path / "root"), str(tmp_path / "cache"), url]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", RACER, *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-500:] for o in outs]
    assert server.requests == ["/movielens/ml-100k.zip"]
    built = sorted(o[0].split()[-1] for o in outs)
    assert built == ["False", "True"]  # one prepared the cache, the other only opened it


def test_extract_onto_a_folder_another_node_completed_meanwhile_keeps_it(tmp_path, ml100k_zip):
    """Nodes sharing data.root on a file system that does not pass flock between them may both download:
    the later one keeps the earlier complete folder."""
    from distrib.data.download import _extract

    root = tmp_path / "root"
    done = write_ml100k(root / "ml-100k")
    stamp = (done / "u.data").stat().st_mtime_ns
    zip_path = tmp_path / "ml-100k.zip"
    zip_path.write_bytes(ml100k_zip)
    assert _extract(zip_path, root, "ml-100k", "http://x/ml-100k.zip") == done
    assert (done / "u.data").stat().st_mtime_ns == stamp and [p.name for p in root.iterdir()] == ["ml-100k"]
