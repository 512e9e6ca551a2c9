#!/usr/bin/env bash
# One prepared pass over what needs a GPU machine (issue 5 target 6, and a quiet many-core host for target 3):
#   bash benchmarks/device_check.sh [DATA_ROOT]      # DATA_ROOT holds ml-100k/ (default: ./data)
#  1. the real job end to end on CUDA under torchrun (NCCL, bf16, data resident on the GPU): the quick start,
#     then configs/ml-100k.yaml (I-AutoRec + MF with its refit phase) on ml-100k u1;
#  2. CPU: 1 rank x 1 thread against 2 gloo ranks x 1 thread on an otherwise idle host whose ranks get a
#     physical core each (benchmarks/scaling.py), and the article loop against distrib at 1 thread.
# Writes logs under ${OUT:-/tmp/device-check}; prints the lines that carry the figures.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA=${1:-$PWD/data}
OUT=${OUT:-/tmp/device-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" DISTRIB_TEST_DATA="$DATA"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'nccl', torch.cuda.nccl.version())"
lscpu | grep -E "^(Model name|CPU\(s\)|Thread|Core)" || true
status=0
step() {  # name, timeout, command...: run, keep the log, show the figures
  local name=$1 limit=$2; shift 2
  echo "== $name"
  local started=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1 || { echo "FAILED ($?): $name"; tail -n 20 "$OUT/$name.log"; status=1; }
  grep -E "world size|done:|refit:|samples/s|speedup|x loop|ranks|article loop|distrib (fp32|bf16)|sync" "$OUT/$name.log" | grep -v "^\[0" | tail -n 14
  echo "   ($((SECONDS - started)) s)"
}
TORCHRUN=("$PY" -m torch.distributed.run --standalone --nproc_per_node=1 -m distrib.train)
step quickstart-cuda 150 "${TORCHRUN[@]}" configs/quickstart.yaml train.device=cuda train.precision=bf16 \
  run.dir="$OUT/runs/quickstart"
step ml100k-cuda 200 "${TORCHRUN[@]}" configs/ml-100k.yaml train.device=cuda data.root="$DATA" \
  data.cache_dir="$OUT/cache" run.dir="$OUT/runs/ml100k" train.log_every_steps=100000
step scaling-bf16 150 env OMP_NUM_THREADS=1 "$PY" benchmarks/scaling.py --precision bf16 --epochs 2 --setups buckets-1mb
step scaling-fp32 150 env OMP_NUM_THREADS=1 "$PY" benchmarks/scaling.py --precision fp32 --epochs 1 --setups buckets-1mb
step throughput-1thread 150 env OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES= "$PY" benchmarks/throughput.py --quick
exit $status
