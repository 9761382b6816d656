#!/usr/bin/env bash
# The project's suite configs on the committed code, a few per call (a DP first step takes 40-150 s: on a slow host
# two or three configs fill a call; PART names the call's files): non-private torch.compile, then
# dpcompile `auto`, each from a cold inductor cache of its own (first step = compile from nothing), 20 timed steps
# (step, host ms, peak GiB of the timed steps) and 5 profiled ones (device ms a step). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-05-s47/s47_suite.sh fp32|bf16 [MODEL:SIZE:BATCH ...]   (default: all five)
cd "$(dirname "$0")/../../.."
AMP=${1:-fp32}
PREFIX=s47-suite-$AMP${PART:+-$PART}
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
configs=("${@:2}")
(( ${#configs[@]} )) || configs=(wrn16_4:32:256 resnet18_gn:32:256 resnet18_gn:224:64 resnet50_gn:224:32 vit_s16:224:64)
for c in "${configs[@]}"; do
    IFS=: read -r model size batch <<< "$c"
    dp_cap=120; [[ $model == resnet50_gn || $model == vit_s16 ]] && dp_cap=200
    both "$model" "$size" "$batch" 80 "$dp_cap"
done
summary
date -u
