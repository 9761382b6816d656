#!/usr/bin/env bash
# For the sixty-fourth session (written in the sixty-third): the suite table's rows still of the fifty-second
# session's code (4f0796e), again with the committed code, each non-private torch.compile then `auto` in one call
# (device_call.sh's suite: cold caches, --profile): ResNet-18 (GN) 32² b256 fp32 and bf16, WRN-16-4 32² b256 fp32.
# Predicted: the table's ratios within noise (device 1.55×, 1.42×, 1.53×; memory 1.15×, 1.26×, 1.23×); the code
# since then adds a compare and select per clip group and leaves kernels as they were. s64_call2.sh has the 224² bf16
# rows. Run alone from the repository root, carry .whl:   LIMIT=570 bash benchmarks/results/2026-12-07-s63/s64_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s64-call1
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite fp32 resnet18_gn 32 256 110
suite bf16 resnet18_gn 32 256 120
suite fp32 wrn16_4 32 256 100
summary
date -u
