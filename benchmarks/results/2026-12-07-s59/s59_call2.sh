#!/usr/bin/env bash
# Fifty-ninth session, call 2: what is live at the memory peak of the two configs above issue 10's 1.3× memory target
# (ResNet-18 (GN) 224² b64 fp32, 1.37×, and WRN-16-4 32² b256 bf16, 1.37×), dpcompile `auto` against non-private
# torch.compile: peak_memory.py (the allocator's trace of one step after three, the largest blocks live at the peak
# and the line that allocated each), cudnn.benchmark on as in the suite, each from a cold inductor cache. Run alone
# from the repository root, carry .whl (LIMIT=450 after refused starts):
#   bash benchmarks/results/2026-12-07-s59/s59_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s59-call2
LIMIT=${LIMIT:-420}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
IFS=';' read -ra configs <<< "${CONFIGS:-fp32 --config resnet18_224 --batch 64;bf16 --model wrn16_4 --size 32 --batch 256}"
for cfg in "${configs[@]}"; do
    set -- $cfg
    amp=$1; shift
    for method in compile dp; do
        (( $(left) > 60 )) || break
        cap=$([ $method = dp ] && echo 110 || echo 55)
        (( cap > $(left) )) && cap=$(left)
        log=$OUT/$PREFIX-$amp-$2-$method.log
        echo "== $amp $* $method $(date -u +%T)"
        TORCHINDUCTOR_CACHE_DIR=/tmp/c-$amp-$2-$method timeout -k 5 $cap python3 benchmarks/peak_memory.py \
            --cudnn-benchmark --amp $amp "$@" --method $method --policy auto --top 20 > $log 2>&1
        echo "exit $?"
        tail -1 $log | cut -c1-4000
    done
done
# then, where time is left, call 1's question in one config: ResNet-18 (GN) 32² b256 fp32's peak with the copy-free
# alignments off and with the grid widening alone (which moved this config's peak 1.496 → 1.732 GiB with both on)
ar=benchmarks/results/2026-12-07-s59/align_run.py
for mode in off grid; do
    (( $(left) > 70 )) || break
    echo "== r18 32 peak $mode $(date -u +%T)"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-$mode timeout -k 5 $(( $(left) < 90 ? $(left) : 90 )) python3 $ar $mode \
        peak_memory.py --cudnn-benchmark --model resnet18_gn --size 32 --batch 256 --method dp --policy auto --top 20 \
        > $OUT/$PREFIX-r18-peak-$mode.log 2>&1
    echo "exit $?"
    tail -1 $OUT/$PREFIX-r18-peak-$mode.log | cut -c1-4000
done
date -u
