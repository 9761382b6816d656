#!/usr/bin/env bash
# Forty-eighth session, fourth call: the one-run suite's fp32 configs after ViT-S/16 (call 1), on the same H100 as calls 1-3, as s47_suite.sh runs
# them: non-private torch.compile, then dpcompile `auto`, each from a cold inductor cache, 20 timed steps and 5
# profiled. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s48/s48_call4.sh
cd "$(dirname "$0")/../../.."
PREFIX=s48-call4
LIMIT=440
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
suite() {  # amp model size batch dp-cap
    t="python3 benchmarks/dp_throughput.py --profile --amp $1 --model $2 --size $3 --batch $4"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$2-$3-np run "$1 $2 $3 compile" 80 $t --method compile
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$2-$3-dp run "$1 $2 $3 auto" "$5" $t --policy auto
}
suite fp32 wrn16_4 32 256 100
suite fp32 resnet18_gn 32 256 110
suite fp32 resnet18_gn 224 64 110
suite fp32 resnet50_gn 224 32 160
summary
date -u
