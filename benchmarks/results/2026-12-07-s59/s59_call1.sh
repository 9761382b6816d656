#!/usr/bin/env bash
# Fifty-ninth session, call 1: which of the copy-free alignments (off by default since the fifty-eighth session's
# call 2) moves ResNet-18 (GN) 32² b256 fp32's peak (1.496 → 1.732 GiB with both on): dp_throughput.py `auto` with both
# off, the grid widening alone and the row padding alone, each from a cold inductor cache; then peak_memory.py off and
# with the grid widening (on the same caches), then the alignments' unit tests on CUDA under inductor. Run alone from
# the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s59/s59_call1.sh
# (Not run in the fifty-ninth session; its call 2 answered the grid's part: the widening alone moves the peak. Next:
#  MODES="off rows" PEAK_MODES="off rows", and MODEL="resnet50_gn 224 32" CAP=170 for ResNet-50's stem.)
cd "$(dirname "$0")/../../.."
PREFIX=s59-call1
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch; print(torch.__version__)"
ar=benchmarks/results/2026-12-07-s59/align_run.py
set -- ${MODEL:-resnet18_gn 32 256}
model=$1 size=$2 batch=$3
cfg="--amp fp32 --model $model --size $size --batch $batch --policy auto"
for mode in ${MODES:-off grid rows}; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$model-$mode run "$model $mode" ${CAP:-85} python3 $ar $mode dp_throughput.py \
        --profile $cfg
done
for mode in ${PEAK_MODES:-off grid}; do
    (( $(left) > 100 )) || break
    echo "== peak $mode $(date -u +%T)"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$model-$mode timeout -k 5 ${CAP:-80} python3 $ar $mode peak_memory.py \
        --cudnn-benchmark --model $model --size $size --batch $batch --method dp --policy auto --top 16 \
        > $OUT/$PREFIX-peak-$model-$mode.log 2>&1
    tail -1 $OUT/$PREFIX-peak-$model-$mode.log | cut -c1-3000
done
(( $(left) > 40 )) && gpu_tests "tests/test_norm_bounds.py" "aligned or shifted_windows or fp32_products" 4 $(left)
summary
date -u
