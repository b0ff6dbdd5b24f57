#!/usr/bin/env bash
# One command for a single-GPU machine (torch, scikit-learn, CuPy; no Ray, no cuML needed):
# whether cuML has the API used; the training step at THUMOS14/ActivityNet shapes against a
# plain model of equal FLOPs (eager, CUDA graphs, graphs + torch.compile); the per-worker
# training loop against the step; the multi-worker step's collectives captured in its
# graph (a one-rank NCCL group); the clustering backends (dense 5k/10k, kNN-sparse
# 100k/1M). Prints tables; with $OUT set (the device tool) the log is also written to
# $OUT/gpu_check.txt. ~4 minutes on an H200 with --skip-1m (two compiles of ~30 s each).
#   scripts/gpu_check.sh [--skip-1m] [--only cuml|train|fit|group|cluster|profile] [--quick]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
log=${OUT:-${TMPDIR:-/tmp}}/gpu_check.txt
{ command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader || echo "no nvidia-smi"
  "$PY" -W ignore::UserWarning scripts/gpu_check.py "$@"; } 2>&1 | tee "$log"
