#!/usr/bin/env bash
# Fifty-sixth session: s56_call1.sh and s56_call2.sh (results/2026-12-06-s55/) cut to what the decision needs when
# the device budget is short after refused starts: the grouped TF32 form's tests on CUDA under inductor, then `auto`
# fp32 with the form off and on in one call (cold caches, --profile: device time and peak memory), first on ResNet-18
# (GN) 224² b64 (layer1's four 64→64 3×3 at 56², the layer table's largest gain; the config whose memory misses
# 1.3×), then, if time is left, ResNet-18 (GN) 32² b256. Run alone from the repository root, carry .whl:
#   LIMIT=420 bash benchmarks/results/2026-12-06-s56/s56_short.sh
cd "$(dirname "$0")/../../.."
PREFIX=s56-short
LIMIT=${LIMIT:-420}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
gpu_tests "tests/test_precision.py tests/test_norm_bounds.py" "grouped_tf32 or per_sample_convolution_op" 4 100
for cfg in "224 64" "32 256"; do
    set -- $cfg
    t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model resnet18_gn --size $1 --batch $2 --policy auto"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-$1-off run "resnet18_gn $1 off" 110 $t
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-$1-on run "resnet18_gn $1 grouped" 110 $t --grouped-tf32-convs
done
summary
date -u
