"""benchmarks.gpu, the one GPU pass: its CPU smoke mode runs every part and each part writes its figures; the
profile's arithmetic, the accuracy part's choice of runs and the time limits, without processes."""
from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import pytest

from benchmarks import gpu, gpu_accuracy, gpu_throughput
from tests.helpers import REPO, check_ok, clean_env

SMOKE_BATCHES = [256, 512, 1024]


def test_kernel_summary_counts_overlapping_kernels_once_and_the_rest_of_the_wall_time_as_gaps():
    events = [  # microseconds; two kernels overlap by 5, one memset, one CPU op that is not device time
        {"cat": "kernel", "name": "sm90_xmma_gemm_bf16", "ts": 0, "dur": 10},
        {"cat": "kernel", "name": "multi_tensor_apply_kernel<FusedAdam>", "ts": 5, "dur": 10},
        {"cat": "gpu_memset", "name": "Memset (Device)", "ts": 30, "dur": 2},
        {"cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 40},
    ]
    summary = gpu_throughput.kernel_summary(events, steps=2, wall_s=50e-6)
    assert summary["kernels_per_step"] == 1.5
    assert summary["busy_ms_per_step"] == pytest.approx(17e-3 / 2)  # 0..15 and 30..32
    assert summary["idle_ms_per_step"] == pytest.approx(33e-3 / 2)
    assert summary["kernel_ms_per_step_by_kind"] == {"matmul": 0.005, "optimizer": 0.005, "memset/copy": 0.001}
    assert "note" in gpu_throughput.kernel_summary(events[-1:], steps=2, wall_s=1.0)


def test_accuracy_runs_the_fastest_configuration_at_a_batch_the_dataset_can_fill():
    fastest = {"config": "bf16 cuda_graph", "batch": 128000}
    rows = gpu_accuracy.rows_to_run(fastest, (2000, 32000, 128000), n_train=72_000)
    assert rows == [("bf16 eager", 2000), ("bf16 cuda_graph", 2000), ("bf16 cuda_graph", 32000)]
    eager = gpu_accuracy.rows_to_run({"config": "bf16 eager", "batch": 2000}, (2000, 32000), n_train=72_000)
    assert eager == [("bf16 eager", 2000)]  # no run twice


def test_time_limits_take_part_overrides_and_refuse_unknown_parts():
    limits = gpu.parse_limits(["job=400"], default_factor=2)
    assert limits["job"] == 400 and limits["throughput"] == 2 * gpu.LIMITS_S["throughput"]
    with pytest.raises(SystemExit, match="--limit jobs=1"):
        gpu.parse_limits(["jobs=1"])


def test_a_part_past_its_limit_is_killed_with_the_workers_it_started(tmp_path):
    """torchrun starts workers in sessions of their own: the limit must reach them too."""
    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; "
              f"time.sleep(60)'], start_new_session=True); open({str(pid_file)!r}, 'w').write(str(p.pid)); "
              "time.sleep(60)")
    started = time.monotonic()
    status = gpu.launch([sys.executable, "-c", script], tmp_path / "part.log", limit_s=3)
    assert status == "timed out after 3 s" and time.monotonic() - started < 30
    grandchild = int(pid_file.read_text())
    time.sleep(0.5)  # its reaping, once orphaned
    assert not running(grandchild)


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has ended
    except OSError:
        return False


@pytest.mark.slow
def test_smoke_mode_runs_every_part_and_each_writes_its_figures(tmp_path, data_root):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--device", "cpu", "--smoke", "--out", str(out),
                           "--work", str(tmp_path / "work"), "--data-root", str(data_root)],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=1800, check=False)
    check_ok(proc)
    # what comes back from a lent machine is a handful of files: figures and logs only, no run directories
    assert sorted(p.name for p in out.iterdir()) == ["accuracy.json", "accuracy.log", "gpu.log", "job.json", "job.log",
                                                      "throughput.json", "throughput.log"]
    assert "| global batch | replicated fp32 eager" in proc.stdout and "== done: throughput ok" in proc.stdout

    throughput = json.loads((out / "throughput.json").read_text())
    timed = {(r["mode"], r["config"], r["batch"]) for r in throughput["rows"] if r.get("samples_per_s", 0) > 0}
    for config in ("fp32 eager", "bf16 eager", "bf16 cuda_graph"):  # no train.compile on CPU in smoke mode
        assert {("replicated", config, b) for b in SMOKE_BATCHES} <= timed
    assert {("sharded", "fp32 eager", b) for b in SMOKE_BATCHES} <= timed
    refused = [r for r in throughput["rows"] if "refused" in r]
    assert {r["config"] for r in refused} >= {"fp32 compile", "fp32 cuda_graph"}
    assert all("dist.embedding_sharding=row_wise" in r["refused"] for r in refused)
    assert throughput["fastest"]["mode"] == "replicated" and throughput["profile"]["step_ms"] > 0
    assert throughput["rates"]["bf16"] > 0

    accuracy = json.loads((out / "accuracy.json").read_text())
    assert accuracy["fastest"] == throughput["fastest"]
    for data, reference in (("ml-100k u1", 0.9509), ("ml-latest-small", 0.8720)):
        rows = [r for r in accuracy["rows"] if r["data"] == data]
        assert rows and all(math.isfinite(r["test_rmse"]) and r["reference"] == reference for r in rows)
        assert (throughput["fastest"]["config"], 2000) in {(r["config"], r["batch"]) for r in rows}

    job = json.loads((out / "job.json").read_text())
    assert [r["run"] for r in job["rows"]] == ["ml-25m replicated, killed and resumed", "ml-25m sharded",
                                               "quick start", "ml-100k.yaml on u1"]
    assert all(r["status"] == "ok" and math.isfinite(r["test_rmse"]) for r in job["rows"])
    killed = job["rows"][0]
    assert killed["killed"] and killed["resumed_exactly"] and killed["epochs_run"] == 3
