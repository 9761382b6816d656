#!/usr/bin/env bash
# Session 19, call 3: the variants test's fix on CUDA (inductor); ViT-S/16 224² b64 fp32 with both TF32 options
# against auto and non-private compile in one run; torchvision ResNet-18 (GN) 32² b256 bf16 while time lasts.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_precision.py::test_ghost_tf32_over_convolution_and_matmul_variants tests/test_precision.py::test_ghost_tf32_clipped_sums_on_cuda" \
  WORKERS=2 LIMIT=110 TEST_TIMEOUT=100 bash .ci/gpu inductor | tail -4
date -u
BUDGET=320 HARD_LIMIT=350 AMPS=fp32 CORE=compile,dp_auto,dp_auto_alltf32 PEERS= POLICIES=auto NAME=s19-vit-tf32 \
  bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -8
date -u
left=$((555 - SECONDS))
(( left > 100 )) && BUDGET=$((left - 20)) HARD_LIMIT=$left AMPS=bf16 CORE=compile,dpcompile PEERS= POLICIES=auto NAME=s19-tv18 \
  bash benchmarks/suite_gpu.sh tv_resnet18_32 2>&1 | tail -8
date -u
