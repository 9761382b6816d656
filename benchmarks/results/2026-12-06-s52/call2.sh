#!/usr/bin/env bash
# Fifty-second session, call 2: (1) the CUDA tests of the 16-bit alignment after the fp32 variant's removal and of
# the TF32 truncation attacks (padded, aligned, misaligned, half-Gram and truncation tests of test_norm_bounds.py and
# test_mixed_precision.py); (2) the suite's ResNet-50 (GN) 224² b32 fp32 (1000 classes), non-private compile then
# `auto`, for the one-run table. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s52/call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s52-call2
LIMIT=570
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_norm_bounds.py tests/test_mixed_precision.py" \
    "padded or aligned or misaligned or half_grams or truncation" 6 100
suite fp32 resnet50_gn 224 32 250
summary
date -u
