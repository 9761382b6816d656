#!/usr/bin/env bash
# For the fiftieth session (written in the forty-ninth): (0) the channels-last operands' CUDA test; (1) the clipped sums' reduction alone (clipped_sums.py:
# ResNet-50 bf16's six fused 256→256 clipped sums took 0.572 ms a step at about 0.4 TB/s in s49 call 2b); predicted:
# one layer near the plain sum's rate if the fusion of six is what slows it (six accumulators per program), all forms
# slow alike if the masked reduction's tiling is; (2) the suite's ResNet-18 (GN) 224² b64 as the suite defines it
# (ImageNet's stem, 1000 classes; never timed by dp_throughput.py), bf16 then fp32, compile and `auto` (caps for a
# slow host: s49's ResNet-50 bf16 first step took 140 s). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s49/s50_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s50-call1
LIMIT=570
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_conv_kernels.py" "channels_last or crafted or half_precision or cuda_graphs or falls_back" 6 120  # the new test; the rest under JOINT_MAX_CHANNELS = 48 (joint by default for small C)
timeout 90 python3 benchmarks/results/2026-12-06-s49/clipped_sums.py --batch 32 2>&1 | tail -6
timeout 60 python3 benchmarks/results/2026-12-06-s49/clipped_sums.py --batch 256 --layers 3 2>&1 | tail -6
suite bf16 resnet18_gn 224 64 170
suite fp32 resnet18_gn 224 64 170
summary
date -u
