#!/usr/bin/env bash
# For the sixty-fourth session (written in the sixty-third): the suite table's 224² bf16 rows still of the
# fifty-second session's code (4f0796e), again with the committed code (device_call.sh's suite: non-private
# torch.compile then `auto`, cold caches, --profile): ViT-S/16 224² b64 bf16, ResNet-18 (GN) 224² b64 bf16.
# Predicted: the table's ratios within noise (device 1.56×, 1.42×; memory 1.03×, 1.22×).
# Run alone from the repository root, carry .whl:   LIMIT=540 bash benchmarks/results/2026-12-07-s63/s64_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s64-call2
LIMIT=${LIMIT:-540}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite bf16 vit_s16 224 64 170
suite bf16 resnet18_gn 224 64 170
summary
date -u
