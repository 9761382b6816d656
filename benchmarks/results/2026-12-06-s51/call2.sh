#!/usr/bin/env bash
# Fifty-first session, call 2. ResNet-50 (GN) bf16's step (clipped_step.py, torch profiler) without and with
# conv.ALIGNED_OPERAND_DEVICES = ("cuda",), now: per-sample products' operands pinned channels-last (call 1: the
# align-2 kernel's 0.30 ms gone) and the Grams' operands padded to 56 positions instead of pinned (call 1: pinned, the
# align-1 WMMA kernel grew from 0.45 to 0.61 ms, its result's rows 49 apart). Predicted: 0.4–0.6 ms less device time
# (13.03 ms without). Then the CUDA tests of the padding and the pins. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s51/call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s51-call2
LIMIT=580
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
for aligned in "" "--aligned"; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r50$aligned timeout 230 python3 benchmarks/results/2026-12-06-s50/clipped_step.py \
        --model resnet50_gn $aligned >"$OUT/clipped_step-r50$aligned.json" 2>"$OUT/clipped_step-r50$aligned.err"
    tail -1 "$OUT/clipped_step-r50$aligned.err"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["aligned"], r["device_ms_per_step"]); [print(v, k[:90]) for k, v in r["top"][:8]]' "$OUT/clipped_step-r50$aligned.json"
done
gpu_tests "tests/test_norm_bounds.py tests/test_mixed_precision.py" "misaligned or half_grams_stay" 4 110
date -u
