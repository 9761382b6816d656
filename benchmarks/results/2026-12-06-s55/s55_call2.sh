#!/usr/bin/env bash
# Fifty-fifth session, second call: call 1's non-private ResNet-50 (GN) 224² b32 bf16 run passed suite()'s 80 s cap
# (its first step alone took 56.6 s on an earlier host) and left no result; here it runs with 170 s, then dpcompile
# `auto` again, so both sides of the row come from one call. Run alone from the repository root, carry .whl.
cd "$(dirname "$0")/../../.."
PREFIX=s55-call2
LIMIT=585
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
t="python3 benchmarks/dp_throughput.py --profile --amp bf16 --model resnet50_gn --size 224 --batch 32"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-np run "bf16 resnet50_gn 224 compile" 170 $t --method compile
TORCHINDUCTOR_CACHE_DIR=/tmp/c-dp run "bf16 resnet50_gn 224 auto" 260 $t --policy auto
summary
date -u
