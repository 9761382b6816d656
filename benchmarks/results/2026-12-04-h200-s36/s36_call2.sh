#!/usr/bin/env bash
# Session 36, second device call: with the bf16 Grams as half products on by default on CUDA (after s36_call1.sh),
# the CUDA tests whose bf16 ghost norms now take them: all of test_mixed_precision, and the bf16-autocast model tests
# under the ghost and mixed policies (among them the three no earlier call finished: ResNet-18 and WRN-16-4 ghost),
# 8 workers, one long limit.
cd "$(dirname "$0")/../../.."
PREFIX=s36-call2
LIMIT=560
source benchmarks/device_call.sh
date -u
TESTS="tests/test_mixed_precision.py tests/test_models.py" \
    PYTEST_ADDOPTS="-k 'not test_models.py or (bf16_autocast and (ghost or mixed))'" \
    WORKERS=8 TEST_TIMEOUT=480 LIMIT=530 OUT=$OUT/tests bash .ci/gpu inductor 2>&1 \
    | grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Error" | grep -v "^INTERNALERROR" | tail -60
date -u
