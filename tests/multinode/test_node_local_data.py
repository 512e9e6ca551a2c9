"""Data without a shared disk: data.root on each node's private mount. One process per node downloads
MovieLens from this machine and builds the cache while its node's other rank waits; the run is complete."""
from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import zipfile
from pathlib import Path

import pytest

from tests.helpers import skip_or_fail
from tests.launch.common import cancel, job_env, sbatch, wait_job
from tests.multinode.common import NO_DROPOUT, NODES, node_local, node_run, remove_node_local
from tests.multinode.test_sbatch import TEMPLATE, TWO_NODES

pytestmark = [pytest.mark.multinode, pytest.mark.slurm, pytest.mark.slow]
HOST_ADDRESS = "10.77.0.1"  # this machine on the nodes' bridge


@pytest.fixture
def ml100k_zip(tmp_path) -> Path:
    root = os.environ.get("DISTRIB_TEST_DATA", "")
    source = Path(root) / "ml-100k"
    if not (source / "u.data").is_file():
        skip_or_fail(f"DISTRIB_TEST_DATA={root!r} has no ml-100k/u.data")
    path = tmp_path / "ml-100k.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name in ("u.data", "u.item", "u.genre", "u1.base", "u1.test"):
            zf.write(source / name, f"ml-100k/{name}")
    return path


@pytest.fixture
def served(ml100k_zip):
    """An HTTP server on the bridge address serving the zip; yields (base_url, the paths requested)."""
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(ml100k_zip.parent), **kwargs)

        def log_message(self, *args):
            requests.append(self.path)

    server = http.server.ThreadingHTTPServer((HOST_ADDRESS, 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://{HOST_ADDRESS}:{server.server_address[1]}", requests
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.timeout(300)
def test_each_node_downloads_and_builds_its_own_data_once(tmp_path, ml100k_zip, served):
    base_url, requests = served
    local = node_local("data")
    sha256 = hashlib.sha256(ml100k_zip.read_bytes()).hexdigest()
    args = ["data.name=ml-100k", "data.split=u1", f"data.base_url={base_url}", f"data.sha256={sha256}",
            f"data.root={local}", "model.n_factors=8", "model.hidden=[16]", *NO_DROPOUT, "train.batch_size=2048",
            "train.epochs=1", "dist.timeout_s=60", f"run.dir={tmp_path / 'run'}"]
    log = tmp_path / "job.out"
    job = sbatch([*TWO_NODES, "--job-name=distrib-test-data", f"--output={log}", TEMPLATE, *args], job_env(tmp_path))
    try:
        assert wait_job(job, 240, log) == "COMPLETED", log.read_text()[-3000:]
        text = log.read_text()
        assert text.count("distrib: downloading") == 2, text[-3000:]  # one process per node
        assert sorted(requests) == ["/ml-100k.zip"] * 2
        assert json.loads((tmp_path / "run" / "summary.json").read_text())["world_size"] == 4
        for node in NODES:  # the data and the cache sit on the node's own disk, built by one of its processes
            listing = node_run(node, ["sh", "-c", f"test -f {local}/ml-100k/u.data && cat {local}/cache/*/meta.json"])
            assert listing.returncode == 0, listing.stderr
            assert json.loads(listing.stdout)["built_by"]["host"] == node
        assert not local.exists()  # nothing on this machine's disk
    finally:
        cancel(job)
        remove_node_local(local)
