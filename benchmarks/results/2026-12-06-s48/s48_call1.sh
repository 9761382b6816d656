#!/usr/bin/env bash
# Forty-eighth session, first call: batch_bucket's tests on CUDA (with CUDA graphs in test_gpu_paths), then the
# one-run suite's next configs (ViT-S/16 fp32, then bf16 WRN-16-4 while time is left), as s47_suite.sh runs them:
# non-private torch.compile, then dpcompile `auto`, each from a cold inductor cache, 20 timed steps and 5 profiled.
# Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s48/s48_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s48-call1
LIMIT=570
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_buckets.py tests/test_gpu_paths.py" "bucket" 8 150
suite fp32 vit_s16 224 64 200
suite bf16 wrn16_4 32 256 120
summary
date -u
