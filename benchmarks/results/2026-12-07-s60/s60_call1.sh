#!/usr/bin/env bash
# Sixtieth session, call 1: (a) what allocates the extra blocks at the memory peak of the two configs above issue 10's
# 1.3× target (ResNet-18 (GN) 224² b64 fp32 and WRN-16-4 32² b256 bf16, 1.38× each), with the fifty-ninth session's
# fixed peak_memory.py (which names the generated kernel or Python line of each live block); (b) the copy-free row
# padding alone against alignments off on ResNet-18 (GN) 32² b256 fp32: step time (dp_throughput.py) and peak.
# Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s60/s60_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s60-call1
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch; print(torch.__version__)"
git log --oneline -1 2>/dev/null
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
            --cudnn-benchmark --amp $amp "$@" --method $method --policy auto --top 24 > $log 2>&1
        echo "exit $?"
        tail -1 $log | cut -c1-6000
    done
done
ar=benchmarks/results/2026-12-07-s59/align_run.py
cfg="--amp fp32 --model resnet18_gn --size 32 --batch 256 --policy auto"
for mode in off rows; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-$mode run "r18 $mode" 85 python3 $ar $mode dp_throughput.py --profile $cfg
done
for mode in off rows; do
    (( $(left) > 50 )) || break
    echo "== r18 peak $mode $(date -u +%T)"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-r18-$mode timeout -k 5 $(( $(left) < 70 ? $(left) : 70 )) python3 $ar $mode \
        peak_memory.py --cudnn-benchmark --model resnet18_gn --size 32 --batch 256 --method dp --policy auto --top 16 \
        > $OUT/$PREFIX-r18-peak-$mode.log 2>&1
    tail -1 $OUT/$PREFIX-r18-peak-$mode.log | cut -c1-3000
done
summary
date -u
