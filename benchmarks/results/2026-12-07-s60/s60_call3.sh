#!/usr/bin/env bash
# Sixtieth session, call 3: plan.AUTO_EXTRA_MEMORY 0.1 against 0.25 where it changes the plan: ViT-S/16 224² b64
# fp32 (its per-sample linear terms beyond mixed's plan) and ResNet-18 (GN) 224² b64 fp32 (three of layer3's four
# per-sample terms back to ghost); step and device time, peak, against non-private torch.compile in the same call.
# Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s60/s60_call3.sh
cd "$(dirname "$0")/../../.."
PREFIX=s60-call3
LIMIT=${LIMIT:-540}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
cr=benchmarks/results/2026-12-07-s60/cap_run.py
for spec in ${SPECS:-resnet18_gn:224:64:0.1 vit_s16:224:64:compile vit_s16:224:64:0.25 vit_s16:224:64:0.1}; do
    set -- ${spec//:/ }
    cfg="--profile --amp fp32 --model $1 --size $2 --batch $3"
    if [ "$4" = compile ]; then
        TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-np run "$1 compile" 60 python3 benchmarks/dp_throughput.py $cfg --method compile
    else
        TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$4 run "$1 cap $4" 120 python3 $cr $4 dp_throughput.py $cfg --policy auto
    fi
done
summary
date -u
