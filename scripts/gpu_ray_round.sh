#!/usr/bin/env bash
# A real acl-dist run on Ray on a single-GPU machine that has torch but no Ray: installs the
# Ray wheel carried in .whl/ (ray/jars stripped, plus the few packages it misses: see
# docs/reference/RAY_NOTES.md §7) into /tmp/site, then synthesises a small THUMOS-like store
# and runs 2 unsupervised rounds with the GPU: Ray Train on cuda, the clustering task on the
# GPU (torch backend), the attention pass as GPU actors.
#   scripts/gpu_ray_round.sh            (from the repository root, .whl/ carried)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
export PYTHONPATH="/tmp/site:$PWD" RAY_USAGE_STATS_ENABLED=0
work=$(mktemp -d)
log=${OUT:-$work}/gpu_ray_round.txt
{
  python3 -m acl_dist synth --preset thumos14 --classes 5 --videos 60 --dim 64 \
      --out "$work/store"
  time python3 -m acl_dist run --store "$work/store" --out "$work/run" \
      --mode unsupervised --num-classes 5 --config tiny --set train.steps=60 \
      --set train.log_every=20
  python3 - "$work/run" <<'PY'
import json, sys
run = sys.argv[1]
state = json.load(open(f"{run}/state.json"))["steps"]
clusters = json.load(open(f"{run}/round_1/clusters.json"))
import torch
ckpt = torch.load(f"{run}/round_1/model.pt", weights_only=True)
print("resolved: use_gpu", ckpt["run_config"]["train"]["use_gpu"],
      "workers", ckpt["run_config"]["train"]["workers"],
      "| clustering backend", clusters["backend"], clusters["graph"])
print("step seconds:", {k: v["seconds"] for k, v in state.items()})
PY
} 2>&1 | tee "$log"
