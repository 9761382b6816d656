#!/usr/bin/env bash
# Session 23, call 3: the three-part certified norms on CUDA through inductor: the attacks, the operator properties,
# odd sizes, augmentation multiplicity, reparametrised layers and the privacy engine.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_adversarial.py tests/test_properties_ops.py tests/test_odd_sizes.py tests/test_augmult.py tests/test_reparametrised.py tests/test_privacy_engine.py" \
  WORKERS=15 LIMIT=540 TEST_TIMEOUT=300 bash .ci/gpu inductor | tail -40
gzip -f "$OUT/tests-inductor.log"
date -u
