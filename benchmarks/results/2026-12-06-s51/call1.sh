#!/usr/bin/env bash
# For the fifty-first session (written in the fiftieth). (1) ResNet-50 (GN) bf16's step with the misaligned Gram and
# per-sample product operands pinned channels-last against without (clipped_step.py, torch profiler; predicted: the
# sm75 align-1 kernel's 0.45 ms (the 7² Grams, T = 49) and the align-2 kernel's 0.30 ms (most likely the 14²
# per-sample 1×1 products, T = 196) down to aligned tensor-core GEMMs of about 0.1 ms together, minus the copies:
# 0.4–0.6 ms less device time; call 5 without the pins: 13.03 ms). (0) Then, in what is left of LIMIT, CUDA tests of
# the fiftieth's changes: the clipped sums and noise in the stored order through the kernel, the half-precision model
# through the kernel (cut off in call 5), the aligned pins on CUDA. Next, in a call of its own, the suite's ResNet-50
# bf16 (1000 classes) with whichever wins, for the one-run table: `suite bf16 resnet50_gn 224 32 200` (predicted
# device about 1.45× without the pins). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s50/s51_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s51-call1
LIMIT=580
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
for aligned in "" "--aligned"; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r50$aligned timeout 230 python3 benchmarks/results/2026-12-06-s50/clipped_step.py \
        --model resnet50_gn $aligned >"$OUT/clipped_step-r50$aligned.json" 2>"$OUT/clipped_step-r50$aligned.err"
    tail -2 "$OUT/clipped_step-r50$aligned.err"
    python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["aligned"], r["device_ms_per_step"]); [print(v, k[:100]) for k, v in r["top"]]' "$OUT/clipped_step-r50$aligned.json"
done
gpu_tests "tests/test_conv_kernels.py tests/test_mixed_precision.py" "stored_layout or half_precision_model or misaligned" 4 110
date -u
