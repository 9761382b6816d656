#!/usr/bin/env bash
# Session 22, call 4: WRN-16-4 32² b256 fp32 with both TF32 options (TF32 conv Grams back, the dispatcher-level
# tf32_bmm) against compile in one suite run; then the tests of the kept()/dropped-sample node and clip groups on
# CUDA through inductor (the twenty-first session's refactor).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=140 HARD_LIMIT=160 AMPS=fp32 CORE=compile,dp_auto_alltf32 PEERS= POLICIES=auto \
  NAME=s22-wrn-tf32 bash benchmarks/suite_gpu.sh wrn16_4_32 2>&1 | tail -5
date -u
PYTEST_ADDOPTS='-k "dropped or non_finite or nonfinite or group or nan or inf"' \
  TESTS="tests/test_core.py tests/test_adversarial.py tests/test_privacy_engine.py" WORKERS=14 LIMIT=$((225 - SECONDS)) \
  TEST_TIMEOUT=100 bash .ci/gpu inductor | tail -6
date -u
