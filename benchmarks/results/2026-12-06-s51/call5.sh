#!/usr/bin/env bash
# Fifty-first session, call 5: the bf16 / half-precision / autocast tests of test_mixed_precision.py and
# test_norm_bounds.py on CUDA with conv.ALIGNED_OPERAND_DEVICES = ("cuda",) by default. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s51/call5.sh
cd "$(dirname "$0")/../../.."
PREFIX=s51-call5
LIMIT=230
source benchmarks/device_call.sh
gpu_tests "tests/test_mixed_precision.py tests/test_norm_bounds.py" "bf16 or half or misaligned or autocast" 6 220
