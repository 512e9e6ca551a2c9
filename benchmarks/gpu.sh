#!/usr/bin/env bash
# Issue 5, target 6: distrib on one GPU, in under 5 minutes (no network, no MovieLens files needed).
#   bash benchmarks/gpu.sh            # from the repository root, on a machine with one CUDA GPU
# Prints the GPU's measured matmul rates; samples/s of the article's configuration on synthetic ml-100k-size
# and ml-25m-size data for fp32, bf16 and bf16+compile, with the share of the bf16 matmul rate achieved; then a
# 1-process NCCL DDP run (step time with and without gradient sync, all_reduce of the gradients).
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
status=0
timeout 200 "$PY" benchmarks/gpu_bench.py "$@" || status=$?
timeout 90 "$PY" -m torch.distributed.run --standalone --nproc_per_node=1 benchmarks/gpu_bench.py --ddp || status=$?
exit $status
