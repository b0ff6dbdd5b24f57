#!/usr/bin/env bash
# A real `acl-dist tune` search on the default synthetic THUMOS-like benchmark, on a
# 16-core GPU machine that has torch but no Ray (the Ray wheel is carried in .whl/, as for
# scripts/gpu_ray_round.sh). Trials train on CPUs (one worker, 2 threads each, 8 trials at
# a time on 16 cores: the demo network is too small to gain from sharing one GPU); the
# clustering tasks use the GPU. The search is stopped with SIGINT before the command's
# time limit, so an unfinished search still writes its table (and resumes with --resume).
#   scripts/gpu_tune.sh [NUM_SAMPLES] [SECONDS]      (from the repository root)
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
samples=${1:-12}
seconds=${2:-500}
if ! python3 -c "import ray" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
fi
export PYTHONPATH="/tmp/site:$PWD" RAY_USAGE_STATS_ENABLED=0
work=$(mktemp -d)
out=${OUT:-$work/out}
mkdir -p "$out"
{
  nproc
  python3 -m acl_dist synth --preset thumos14 --out "$work/store" --no-report
  set +e
  time timeout -s INT "$seconds" python3 -m acl_dist tune --store "$work/store" \
      --out "$work/tune" --config demo --num-classes 20 --num-samples "$samples" \
      --set train.use_gpu=false --set train.workers=1 --set train.cpus_per_worker=1
  echo "tune exit status $?"
  set -e
} 2>&1 | grep -v "core_worker.cc\|Progress bars disabled\|You may want to consider\|You can suppress" \
  | tee "$out/gpu_tune.txt"
# the results and each trial's per-round records (not its models)
cd "$work/tune"
cp -f tune.json summary.json trials.csv best_config.yaml report.html "$out/" 2>/dev/null || true
find runs -name "*.json" -o -name "config.yaml" | tar -czf "$out/runs_json.tgz" -T -
