#!/usr/bin/env bash
# Forty-eighth session, fourth call: the one-run suite's fp32 configs after ViT-S/16 (call 1), on the same H100 as calls 1-3, as s47_suite.sh runs
# them: non-private torch.compile, then dpcompile `auto`, each from a cold inductor cache, 20 timed steps and 5
# profiled. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s48/s48_call4.sh
cd "$(dirname "$0")/../../.."
PREFIX=s48-call4
LIMIT=440
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite fp32 wrn16_4 32 256 100
suite fp32 resnet18_gn 32 256 110
suite fp32 resnet18_gn 224 64 110
suite fp32 resnet50_gn 224 32 160
summary
date -u
