#!/usr/bin/env bash
# Session 24, call 3: on CUDA through inductor, the cache test (test_core: a second process served from inductor's
# FX graph cache; another bound misses it) and the model-coverage files not run on CUDA since the twenty-first
# session (torchvision and timm models, the model zoo, Hugging Face models).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="${TESTS:-tests/test_core.py tests/test_vision_libraries.py tests/test_models_zoo.py tests/test_hf_models.py}" \
  WORKERS=15 LIMIT=${LIMIT:-500} TEST_TIMEOUT=300 bash .ci/gpu inductor | tail -40
gzip -f "$OUT/tests-inductor.log"
date -u
