#!/usr/bin/env bash
# Session 23, call 2: the three-part certified norms (bound-parts.patch) on CUDA through inductor: the core, model,
# precision (TF32 products, the dispatcher op), bf16 autocast and GPU-path tests.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_core.py tests/test_models.py tests/test_precision.py tests/test_mixed_precision.py tests/test_gpu_paths.py" \
  WORKERS=15 LIMIT=560 TEST_TIMEOUT=300 bash .ci/gpu inductor | tail -40
gzip -f "$OUT/tests-inductor.log"
date -u
