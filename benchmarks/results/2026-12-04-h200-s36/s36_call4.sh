#!/usr/bin/env bash
# Session 36, fourth device call: call 3 showed the bf16 Grams' op costing ViT-S/16 13 ms of host time a step as an
# inductor fallback (Python at every call). With ops.lower_half_bmm (inductor lowers it as aten.bmm.dtype): its CUDA
# tests, then ViT-S/16 224² b64 and WRN-16-4 32² b256 bf16 `auto`, profiled, Grams on (the default).
cd "$(dirname "$0")/../../.."
PREFIX=s36-call4
LIMIT=380
source benchmarks/device_call.sh
date -u
TESTS="tests/test_mixed_precision.py" PYTEST_ADDOPTS="-k 'lowers_the_half_grams or default_follows or half_products'" \
    WORKERS=4 TEST_TIMEOUT=100 LIMIT=110 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|SKIPPED|passed|failed|Timeout|Error" | grep -v "^INTERNALERROR" | tail -8
run vit_on 140 python3 benchmarks/dp_throughput.py --model vit_s16 --size 224 --batch 64 --steps 20 --policy auto \
    --amp bf16 --profile >/dev/null
run wrn_on 100 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto \
    --amp bf16 --profile >/dev/null
summary
date -u
