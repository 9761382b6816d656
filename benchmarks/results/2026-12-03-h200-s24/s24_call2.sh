#!/usr/bin/env bash
# Session 24, call 2:
# 1. ResNet-50 (GN) 224² b32, default options: the first step cold, then in a second process with the same inductor cache
#    directory (inductor's FX graph cache now serves the DP graphs: the capture takes inductor's own decompositions).
# 2. WRN-16-4 32² b256 `auto` with both TF32 options: inductor's `combo_kernels=True` (horizontal fusion of the
#    per-term kernels) against the default, launches of the DP backward and the step (host time beside it).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
fields() { grep '^{' "$1" | tail -1 | grep -o '"[a-z_]*step_ms": [0-9.]*\|"host_ms": [0-9.]*\|"first_step_s": [0-9.]*\|"peak_gib": [0-9.]*' | tr '\n' ' '; }
for run in cold warm; do  # wall time of the first step (capture, DP passes, inductor), default options
  TORCHINDUCTOR_CACHE_DIR=/tmp/ic-r50 timeout 200 python3 benchmarks/pass_times.py --models resnet50_gn --size 224 \
    --batch 32 --device cuda --backend inductor --clock wall > "$OUT/r50-first-step-$run.txt" 2>&1
  echo "r50 $run:"; tail -2 "$OUT/r50-first-step-$run.txt"; date -u
done
count() {  # $1 cache dir: launches of the DP backward's wrapper module
  f=$(grep -l "dp_certified_norms" $(find /tmp/ic-$1 -name 'c*.py' -size +40k) | xargs grep -l "def call(self, args)" | head -1)
  echo "$1: $(python3 benchmarks/results/2026-12-02-h200-s22/kernel_attribution.py "$f" | tail -3 | tr '\n' ' ')"
  grep -c "extern_kernels\.\|torch\.ops\.\|\.run(" "$f"
  gzip -c "$f" > "$OUT/wrn-$1-wrapper.py.gz"
}
wrn() {  # $1 label, $2 limit, extra args
  label=$1 limit=$2; shift 2
  TORCHINDUCTOR_CACHE_DIR=/tmp/ic-${label%2} timeout $limit python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 \
    --batch 256 --steps 30 --policy auto --per-sample-tf32 --ghost-tf32 "$@" > "$OUT/wrn-$label.txt" 2>&1
  echo "wrn $label: rc=$? $(fields "$OUT/wrn-$label.txt")"
}
wrn plain 120
wrn combo 170 --inductor-config combo_kernels=True
wrn plain2 120
count plain; count combo
date -u
