#!/usr/bin/env bash
# Fifty-fourth session, one call on a short device budget: the suite's ResNet-18 (GN) 224² b64 fp32 row (non-private
# torch.compile and dpcompile `auto` in the same call, for the one-run table), then this session's two float64 bound
# attacks and the fifty-third session's lowers-a-copy test on CUDA under inductor. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s54/s54_call.sh
cd "$(dirname "$0")/../../.."
PREFIX=s54-call
LIMIT=${LIMIT:-420}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite fp32 resnet18_gn 224 64 160
summary
gpu_tests "tests/test_core.py tests/test_adversarial.py" "stay_as_made or float64s_subnormal or underflow_in_the_clip_scaled" 8 130
date -u
