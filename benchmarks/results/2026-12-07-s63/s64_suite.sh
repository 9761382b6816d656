#!/usr/bin/env bash
# For the sixty-fourth session (written in the sixty-third): the suite table's rows still of the fifty-second
# session's code (4f0796e), again with the committed code, each as non-private torch.compile then `auto` in one call
# (device_call.sh's suite: cold caches, --profile). Two calls, one part each:
#   part 1: ResNet-18 (GN) 32² b256 fp32 and bf16, WRN-16-4 32² b256 fp32 (the table: device 1.55×, 1.42×, 1.53×;
#           memory 1.15×, 1.26×, 1.23×);
#   part 2: ViT-S/16 224² b64 bf16, ResNet-18 (GN) 224² b64 bf16 (device 1.56×, 1.42×; memory 1.03×, 1.22×).
# Predicted: those ratios within noise (the code since adds a compare and select per clip group and leaves the
# kernels as they were). Run alone from the repository root, carry .whl:
#   PART=1 bash benchmarks/results/2026-12-07-s63/s64_suite.sh      (then PART=2)
cd "$(dirname "$0")/../../.."
PREFIX=s64-part${PART:?PART=1 or PART=2}
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
if [ "$PART" = 1 ]; then
    suite fp32 resnet18_gn 32 256 110
    suite bf16 resnet18_gn 32 256 120
    suite fp32 wrn16_4 32 256 100
else
    suite bf16 vit_s16 224 64 170
    suite bf16 resnet18_gn 224 64 170
fi
summary
date -u
