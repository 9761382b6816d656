#!/usr/bin/env bash
# Session 25, call 3: the model-coverage files not yet run on CUDA with this code: the model zoo and the Hugging Face
# models through inductor (.ci/gpu, 12 workers).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="${TESTS:-tests/test_models_zoo.py tests/test_hf_models.py}" WORKERS=${WORKERS:-12} LIMIT=${LIMIT:-400} \
  TEST_TIMEOUT=${TEST_TIMEOUT:-380} bash .ci/gpu inductor | tail -30
gzip -f "$OUT/tests-inductor.log"
date -u
