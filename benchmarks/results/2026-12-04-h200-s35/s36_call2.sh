#!/usr/bin/env bash
# Written in session 35 for the next session (not run yet; after s36_call1.sh): (a) the three bf16 model tests no
# call has finished on CUDA (ResNet-18 ghost and per_sample, WRN-16-4 ghost; minutes of compile each on these hosts),
# 3 workers, a long limit; (b) ResNet-18 (GN) 32² b256 bf16 profiled without CUDA graphs (call 3 of session 35 ran
# out of its 90 s cap while compiling), against non-private compile in the same call (with the bf16 Grams as half
# products if s36_call1.sh made them the default).
cd "$(dirname "$0")/../../.."
PREFIX=s36-call2
LIMIT=560
source benchmarks/device_call.sh
date -u
TESTS="tests/test_models.py" \
    PYTEST_ADDOPTS="-k 'bf16_autocast and (resnet18_gn-ghost or resnet18_gn-per_sample or wrn16_4-ghost)'" \
    WORKERS=3 TEST_TIMEOUT=330 LIMIT=340 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Error" | grep -v "^INTERNALERROR" | tail -8
common="--model resnet18_gn --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
run r18_compile 80 python3 benchmarks/dp_throughput.py $common --method compile >/dev/null
run r18_dp 140 python3 benchmarks/dp_throughput.py $common >/dev/null
summary
date -u
