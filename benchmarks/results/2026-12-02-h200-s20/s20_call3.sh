#!/usr/bin/env bash
# Session 20, call 3: the plan fix (auto's memory cap keeps ghost_tf32 on the sites it moves back to ghost): its
# test and the ghost-TF32 tests on CUDA (inductor); ViT-S/16 224² b64 fp32, non-private compile, auto and auto with
# both TF32 options in one run; WRN-16-4 32² b256 fp32 the same while time lasts.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_precision.py::test_tf32_options_reach_the_sites_auto_moves_back_to_ghost tests/test_precision.py::test_ghost_tf32_clipped_sums_on_cuda" \
  WORKERS=3 LIMIT=100 TEST_TIMEOUT=90 bash .ci/gpu inductor | tail -4
date -u
BUDGET=300 HARD_LIMIT=330 AMPS=fp32 CORE=compile,dp_auto,dp_auto_alltf32 PEERS= POLICIES=auto NAME=s20-vit-tf32 \
  bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -8
date -u
left=$((560 - SECONDS))
(( left > 120 )) && BUDGET=$((left - 20)) HARD_LIMIT=$left AMPS=fp32 CORE=compile,dp_auto,dp_auto_alltf32 PEERS= POLICIES=auto NAME=s20-wrn-tf32 \
  bash benchmarks/suite_gpu.sh wrn16_4_32 2>&1 | tail -8
date -u
