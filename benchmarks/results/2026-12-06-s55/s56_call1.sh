#!/usr/bin/env bash
# For the fifty-sixth session (written in the fifty-fifth): the grouped per-sample form on cuDNN's TF32
# (passes.rules.conv.GROUPED_TF32_CONV_DEVICES, off by default), on CUDA. First its tests under inductor (the plan's
# choice, a one-sample release within R at the worst of TF32's truncation, against the IEEE path, two batch sizes
# through one compiled model), then whole fp32 steps of `auto` with it off and on in the same call, alternating, cold
# caches, --profile (device time and peak memory): ResNet-18 (GN) 32² b256 (layer1's four 64→64 convolutions at 32²
# and layer2's three 128→128 at 16² take it) and WRN-16-4 32² b256. If both steps are faster by device time and
# memory stays within the suite's 1.3×, turn it on (("cuda",)) and run s56_call2.sh's 224² configs. Run alone from the
# repository root, carry .whl:
#   bash benchmarks/results/2026-12-06-s55/s56_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s56-call1
LIMIT=${LIMIT:-585}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_precision.py tests/test_norm_bounds.py" "grouped_tf32 or per_sample_convolution_op" 4 150
for model in resnet18_gn wrn16_4; do
    t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model $model --size 32 --batch 256 --policy auto"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$model-off run "$model off" 100 $t
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$model-on run "$model grouped" 100 $t --grouped-tf32-convs
done
summary
date -u
