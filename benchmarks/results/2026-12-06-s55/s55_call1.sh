#!/usr/bin/env bash
# Fifty-fifth session, first call: the last one-run row at committed code (ResNet-50 (GN) 224² b32 bf16: non-private
# torch.compile, then dpcompile `auto`), then the float64 magnitudes property on CUDA under inductor. Run alone from
# the repository root, carry .whl:
#   bash benchmarks/results/2026-12-06-s55/s55_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s55-call1
LIMIT=585
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite bf16 resnet50_gn 224 32 250
summary
gpu_tests tests/test_adversarial.py "float64_magnitudes" 4 170
date -u
