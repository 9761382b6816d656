#!/usr/bin/env bash
# Fiftieth session, call 5: call 4 found ResNet-50's slow clipped sums (0.618 ms a step, layer3's six 256→256): the
# release fused into the reduction, noise read and gradients written in the parameter's order while g is stored
# (P, K, K, C); tiling scores x 0, r0_ 64, so ReductionHint.INNER (one output element a program). With the sums and
# the release in g's storage order (passes.rewrite.weighted_sum, laid_like): predicted that kernel near call 3's
# 0.085 ms, the step's device time about 0.5 ms lower. Then the kernel's CUDA tests through the rewrite.
#   bash benchmarks/results/2026-12-06-s50/call5.sh
cd "$(dirname "$0")/../../.."
PREFIX=s50-call5
LIMIT=420
source benchmarks/device_call.sh
date -u
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r50-fix timeout 250 python3 benchmarks/results/2026-12-06-s50/clipped_step.py --model resnet50_gn \
    --code "$OUT/clipped_step-r50-fix.py" >"$OUT/clipped_step-r50-fix.json" 2>"$OUT/clipped_step-r50-fix.err"
tail -3 "$OUT/clipped_step-r50-fix.err"; python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["device_ms_per_step"]); [print(v, k[:110]) for k, v in r["top"]]' "$OUT/clipped_step-r50-fix.json"
gzip "$OUT"/clipped_step-r50-fix.py
gpu_tests "tests/test_conv_kernels.py" "crafted or rewrite or half_precision" 4 100
date -u
