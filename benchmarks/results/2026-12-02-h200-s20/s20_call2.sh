#!/usr/bin/env bash
# Session 20, call 2: the TF32 variants test, now one test per case, on CUDA (inductor); a kernel profile of
# ViT-S/16 224² b64 fp32 auto with both TF32 options (call 1 ran it without the wheels); torchvision ResNet-50 (GN)
# 224² b32 in bf16 while time lasts.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
TESTS="tests/test_precision.py::test_ghost_tf32_over_convolution_and_matmul_variants" \
  WORKERS=3 LIMIT=150 TEST_TIMEOUT=140 bash .ci/gpu inductor | tail -8
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
timeout 170 python3 benchmarks/dp_throughput.py --model vit_s16 --size 224 --batch 64 --policy auto --steps 8 \
  --profile --per-sample-tf32 --ghost-tf32 > "$OUT/vit-profile.txt" 2>&1
tail -c 600 "$OUT/vit-profile.txt"
date -u
left=$((570 - SECONDS))
(( left > 150 )) && BUDGET=$((left - 20)) HARD_LIMIT=$left AMPS=bf16 CORE=compile,dpcompile PEERS= POLICIES=auto NAME=s20-tv50 \
  bash benchmarks/suite_gpu.sh tv_resnet50_224 2>&1 | tail -8
date -u
