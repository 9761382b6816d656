#!/usr/bin/env bash
# For the fifty-second session on (written in the fifty-first): suite configs, each non-private torch.compile then
# dpcompile `auto` in the same call (dp_throughput.py --profile: step, host and device time, peak memory, first step),
# for the one-run table of issue 10. Each argument is one config, "AMP MODEL SIZE BATCH DP_SECONDS"; about 80 s for
# the non-private run plus DP_SECONDS each (ResNet-50 bf16 took 56.6 + 155.7 s of first steps on a slow host). Fits
# a call: two or three configs. Run alone, carry .whl, e.g.:
#   PREFIX=s52-call2 bash benchmarks/results/2026-12-06-s51/s52_suite.sh "fp32 resnet50_gn 224 32 240" \
#       "fp32 wrn16_4 32 256 120"
# The suite: fp32 and bf16 of resnet18_gn 32 256, wrn16_4 32 256, resnet18_gn 224 64, resnet50_gn 224 32,
# vit_s16 224 64 (DP_SECONDS about 120, 120, 150, 240, 200).
cd "$(dirname "$0")/../../.."
PREFIX=${PREFIX:-s52-suite}
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
git log --oneline -1 2>/dev/null || true
for config in "$@"; do
    # shellcheck disable=SC2086
    suite $config
done
summary
date -u
