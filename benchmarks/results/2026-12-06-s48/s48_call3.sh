#!/usr/bin/env bash
# Forty-eighth session, third call: the one-run suite's bf16 configs after WRN-16-4 (call 1), as s47_suite.sh runs
# them: non-private torch.compile, then dpcompile `auto`, each from a cold inductor cache, 20 timed steps and 5
# profiled. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s48/s48_call3.sh
cd "$(dirname "$0")/../../.."
PREFIX=s48-call3
LIMIT=570
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite bf16 resnet18_gn 32 256 120
suite bf16 vit_s16 224 64 150
suite bf16 resnet18_gn 224 64 120
suite bf16 resnet50_gn 224 32 200
summary
date -u
