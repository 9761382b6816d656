#!/usr/bin/env bash
# Fifty-first session, call 3: the suite's ResNet-50 (GN) 224² b32 in bf16 autocast, 1000 classes, with
# conv.ALIGNED_OPERAND_DEVICES = ("cuda",) (call 2: 12.997 → 12.539 ms of device time), against non-private
# torch.compile in the same call (predicted: device about 1.42×). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s51/call3.sh
cd "$(dirname "$0")/../../.."
PREFIX=s51-call3
LIMIT=560
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite bf16 resnet50_gn 224 32 300
summary
date -u
