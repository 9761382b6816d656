#!/usr/bin/env bash
# Fifty-sixth session, with under 400 s of device budget left: s56_short.sh's first timing alone, then the grouped
# TF32 form's CUDA tests in what is left. ResNet-18 (GN) 224² b64 fp32 `auto`, the grouped form off and on in one call
# (cold caches, --profile). Run alone from the repository root, carry .whl:
#   LIMIT=290 bash benchmarks/results/2026-12-06-s56/s56_tiny.sh
cd "$(dirname "$0")/../../.."
PREFIX=s56-tiny
LIMIT=${LIMIT:-290}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model resnet18_gn --size 224 --batch 64 --policy auto"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-224-off run "resnet18_gn 224 off" 100 $t
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-224-on run "resnet18_gn 224 grouped" 100 $t --grouped-tf32-convs
summary
(( $(left) > 40 )) && gpu_tests "tests/test_precision.py tests/test_norm_bounds.py" "grouped_tf32" 4 $(left)
date -u
