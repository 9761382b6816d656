#!/usr/bin/env bash
# For the fifty-sixth session, after s56_call1.sh: the grouped TF32 form on the 224² fp32 configs, off and on in one
# call (ResNet-18 (GN) 224² b64: layer1's four 64→64 convolutions at 56²; ResNet-50 (GN) 224² b32: its three 64→64 3×3
# at 56²), with non-private compile of ResNet-18 224² for the ratio. Run alone from the repository root, carry .whl.
cd "$(dirname "$0")/../../.."
PREFIX=s56-call2
LIMIT=${LIMIT:-585}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model resnet18_gn --size 224 --batch 64"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-np run "resnet18_gn compile" 80 $t --method compile
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-off run "resnet18_gn off" 110 $t --policy auto
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-on run "resnet18_gn grouped" 110 $t --policy auto --grouped-tf32-convs
t="python3 benchmarks/dp_throughput.py --profile --amp fp32 --model resnet50_gn --size 224 --batch 32 --policy auto"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-r50-on run "resnet50_gn grouped" 200 $t --grouped-tf32-convs
summary
date -u
