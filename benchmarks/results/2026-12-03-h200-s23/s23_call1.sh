#!/usr/bin/env bash
# Session 23, call 1: each term's certified norm as three (B,) values [s, e, a] summed by chains of additions
# (bound-parts.patch) against one (B, 3) stack per term summed by a stack's reduction: inductor's launches in
# WRN-16-4's DP backward (kernel_attribution.py) and the step, alternating new/old/new/old in one call (the step
# is host-bound on slow hosts: host time beside it); then the norm-bound and tied-parameter tests on CUDA.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
here=benchmarks/results/2026-12-03-h200-s23
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
wrn() {  # $1 label (new/old + run), $2 cache dir (one per code version)
  TORCHINDUCTOR_CACHE_DIR=/tmp/ic-$2 timeout 120 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 \
    --batch 256 --steps 30 --policy auto --per-sample-tf32 --ghost-tf32 > "$OUT/wrn-$1.txt" 2>&1
  echo "$1: $(grep '^{' "$OUT/wrn-$1.txt" | tail -1 | grep -o '"step_ms": [0-9.]*\|"host_ms": [0-9.]*\|"first_step_s": [0-9.]*' | tr '\n' ' ')"
}
count() {  # $1 cache dir: launches of the DP backward's wrapper module
  f=$(grep -l "dp_certified_norms" $(find /tmp/ic-$1 -name 'c*.py' -size +40k) | xargs grep -l "def call(self, args)" | head -1)
  echo "$1: $f"; python3 $here/../2026-12-02-h200-s22/kernel_attribution.py "$f" | tail -25
  grep -c "extern_kernels\.\|torch\.ops\.\|\.run(" "$f"
  gzip -c "$f" > "$OUT/wrapper-$1.py.gz"
}
wrn new-1 new
git apply -R "$here/bound-parts.patch" && wrn old-1 old
git apply "$here/bound-parts.patch" && wrn new-2 new
git apply -R "$here/bound-parts.patch" && wrn old-2 old
git apply "$here/bound-parts.patch"
git diff --stat -- passes | tail -1
count new; count old
date -u
TESTS="tests/test_norm_bounds.py tests/test_tied.py" WORKERS=14 LIMIT=200 TEST_TIMEOUT=190 \
  bash .ci/gpu inductor | tail -25
date -u
