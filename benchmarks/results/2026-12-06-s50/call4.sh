#!/usr/bin/env bash
# Fiftieth session, call 4: call 3 did not reproduce ResNet-50's slow clipped sums (six 256→256 layers at 14², B 32:
# their fused kernel 0.085 ms a step, coalesced, the release in other kernels; loop ordering on or off alike). Here
# the suite's ResNet-50 (GN) 224² b32 bf16 `auto` itself through clipped_step.py: its backward's code and kernel times.
#   bash benchmarks/results/2026-12-06-s50/call4.sh
cd "$(dirname "$0")/../../.."
PREFIX=s50-call4
LIMIT=330
source benchmarks/device_call.sh
date -u
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r50 timeout 300 python3 benchmarks/results/2026-12-06-s50/clipped_step.py --model resnet50_gn \
    --code "$OUT/clipped_step-r50.py" >"$OUT/clipped_step-r50.json" 2>"$OUT/clipped_step-r50.err"
tail -3 "$OUT/clipped_step-r50.err"; cat "$OUT/clipped_step-r50.json"
gzip "$OUT"/clipped_step-r50.py
date -u
