#!/usr/bin/env bash
# Session 22, call 1: the twenty-first session's code (flush-to-zero-proof TF32 terms, the kept() node) on CUDA
# through inductor (precision, mixed-precision, GPU-path tests); then WRN-16-4 32² b256 fp32 with both TF32 options,
# A/B/A/B: the committed code (IEEE conv Grams) against the reverted TF32 conv Grams (conv-tf32-grams.patch), the first
# pair profiled. Question: was the twenty-first session's 18.3 against 13.2 ms the Grams (5 ghost conv terms of
# T = 64 in this plan) or the run?
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
here=benchmarks/results/2026-12-02-h200-s22
date -u
TESTS="tests/test_precision.py tests/test_mixed_precision.py tests/test_gpu_paths.py" WORKERS=14 LIMIT=230 \
  TEST_TIMEOUT=220 bash .ci/gpu inductor | tail -25
cp "$OUT/tests-inductor.log" "$OUT/tests-precision-gpu-paths.log" 2>/dev/null
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
wrn() {  # $1 label, then extra arguments
  local label=$1; shift
  timeout 100 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --policy auto \
    --per-sample-tf32 --ghost-tf32 --steps 30 "$@" > "$OUT/wrn-$label.txt" 2>&1
  echo "$label: $(grep '^{' "$OUT/wrn-$label.txt" | tail -1 | cut -c1-200)"
}
wrn ieee-1 --profile
git apply -R "$here/conv-7408e3c.patch" && wrn tf32grams-1 --profile
git apply "$here/conv-7408e3c.patch" && wrn ieee-2
git apply -R "$here/conv-7408e3c.patch" && wrn tf32grams-2
git apply "$here/conv-7408e3c.patch"
git diff --stat
date -u
