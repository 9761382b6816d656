#!/usr/bin/env bash
# Forty-ninth session, second call: the suite's ResNet-18 (GN) 224² b64 as the suite defines it (ImageNet's stem,
# 1000 classes), fp32 and bf16, non-private torch.compile then dpcompile `auto`, each from a cold inductor cache,
# 20 timed steps and 5 profiled. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s49/s49_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s49-call2
LIMIT=560
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite fp32 resnet18_gn 224 64 120
suite bf16 resnet18_gn 224 64 120
summary
date -u
