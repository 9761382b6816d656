#!/usr/bin/env bash
# Session 20, call 1: the TF32 variants test's fix on CUDA (inductor, all cases); the prelu flake's order
# (instance norms and prelu in one worker, inductor); a kernel profile of ViT-S/16 224² b64 fp32 auto with both TF32
# options (where the DP step's remaining time goes); torchvision ResNet-18 (GN) 224² bf16 while time lasts.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_precision.py::test_ghost_tf32_over_convolution_and_matmul_variants" \
  WORKERS=1 LIMIT=170 TEST_TIMEOUT=160 bash .ci/gpu inductor | tail -6
cp "$OUT/tests-inductor.log" "$OUT/tests-variants.log" 2>/dev/null
date -u
TESTS="tests/test_core.py" WORKERS=1 LIMIT=110 TEST_TIMEOUT=100 PYTEST_ADDOPTS='-k "instance_norm or prelu"' \
  bash .ci/gpu inductor | tail -6
cp "$OUT/tests-inductor.log" "$OUT/tests-prelu.log" 2>/dev/null
date -u
export PYTHONPATH=$PWD:$PYTHONPATH
timeout 170 python3 benchmarks/dp_throughput.py --model vit_s16 --size 224 --batch 64 --policy auto --steps 8 \
  --profile --per-sample-tf32 --ghost-tf32 > "$OUT/vit-profile.txt" 2>&1
tail -c 3000 "$OUT/vit-profile.txt" | tail -5
date -u
left=$((560 - SECONDS))
(( left > 120 )) && BUDGET=$((left - 20)) HARD_LIMIT=$left AMPS=bf16 CORE=compile,dpcompile PEERS= POLICIES=auto NAME=s20-tv18-224 \
  bash benchmarks/suite_gpu.sh tv_resnet18_224 2>&1 | tail -8
date -u
