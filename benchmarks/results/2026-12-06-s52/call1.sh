#!/usr/bin/env bash
# For the fifty-second session (written in the fifty-first). (1) ResNet-50 (GN) fp32's step (1000 classes, `auto`, the
# TF32 defaults on CUDA) without and with float32 in conv.ALIGNED_OPERAND_DTYPES (clipped_step.py --fp32
# [--aligned-fp32], torch profiler over 10 steps): the 7² TF32 Grams (T = 49: fp32 rows of 196 bytes) padded to 52
# positions and the 7² per-sample TF32 products' operands pinned channels-last. Predicted: cuBLAS's align-1 TF32
# kernels (if the profile has them: read the "without" top 40) replaced by aligned ones, 0.2–0.5 ms less device time
# of about 18.3 ms (s48: device 1.36× non-private). Turn float32 on in ALIGNED_OPERAND_DTYPES if it wins. (2) The
# CUDA tests of the alignment since its refactor by dtype (c0ea9cc: not yet run on CUDA) and of the fp32 alignment:
# padded, aligned, misaligned and half-Gram tests of test_norm_bounds.py and test_mixed_precision.py. Run alone,
# carry .whl:
#   bash benchmarks/results/2026-12-06-s51/s52_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s52-call1
LIMIT=580
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
for aligned in "" "--aligned-fp32"; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r50fp32$aligned timeout 230 python3 benchmarks/results/2026-12-06-s50/clipped_step.py \
        --model resnet50_gn --fp32 $aligned >"$OUT/clipped_step-r50-fp32$aligned.json" \
        2>"$OUT/clipped_step-r50-fp32$aligned.err"
    tail -1 "$OUT/clipped_step-r50-fp32$aligned.err"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["aligned_fp32"], r["device_ms_per_step"]); [print(v, k[:90]) for k, v in r["top"][:10]]' "$OUT/clipped_step-r50-fp32$aligned.json"
done
gpu_tests "tests/test_norm_bounds.py tests/test_mixed_precision.py" "padded or aligned or misaligned or half_grams" 6 120
date -u
