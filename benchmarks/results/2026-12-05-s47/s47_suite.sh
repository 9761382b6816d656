#!/usr/bin/env bash
# The project's five suite configs in one call per amp, on the committed code: non-private torch.compile, then
# dpcompile `auto`, each from a cold inductor cache of its own (first step = compile from nothing), 20 timed steps
# (step, host ms, peak GiB of the timed steps) and 5 profiled ones (device ms a step). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-05-s47/s47_suite.sh fp32|bf16
cd "$(dirname "$0")/../../.."
AMP=${1:-fp32}
PREFIX=s47-suite-$AMP
LIMIT=570
source benchmarks/device_call.sh
date -u
t="python3 benchmarks/dp_throughput.py --profile --amp $AMP"
both() {  # model size batch compile-cap dp-cap
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$2-np run "$1 $2 compile" "$4" $t --model "$1" --size "$2" --batch "$3" \
        --method compile
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$2-dp run "$1 $2 auto" "$5" $t --model "$1" --size "$2" --batch "$3" \
        --policy auto
}
both wrn16_4 32 256 60 80
both resnet18_gn 32 256 60 90
both resnet18_gn 224 64 60 100
both resnet50_gn 224 32 80 150
both vit_s16 224 64 80 130
summary
date -u
