#!/usr/bin/env bash
# Fifty-ninth session, call 1: which of the copy-free alignments (off by default since the fifty-eighth session's
# call 2) moves ResNet-18 (GN) 32² b256 fp32's peak (1.496 → 1.732 GiB with both on): dp_throughput.py `auto` with both
# off, the grid widening alone and the row padding alone, each from a cold inductor cache; then peak_memory.py off and
# with the grid widening (on the same caches), then the alignments' unit tests on CUDA under inductor. Run alone from
# the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s59/s59_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s59-call1
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c "import torch; print(torch.__version__)"
ar=benchmarks/results/2026-12-07-s59/align_run.py
cfg="--amp fp32 --model resnet18_gn --size 32 --batch 256 --policy auto"
for mode in ${MODES:-off grid rows}; do
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$mode run "r18 $mode" 85 python3 $ar $mode dp_throughput.py --profile $cfg
done
for mode in off grid; do
    (( $(left) > 100 )) || break
    echo "== peak $mode $(date -u +%T)"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$mode timeout -k 5 80 python3 $ar $mode peak_memory.py --cudnn-benchmark \
        --model resnet18_gn --size 32 --batch 256 --method dp --policy auto --top 16 > $OUT/$PREFIX-peak-$mode.log 2>&1
    tail -1 $OUT/$PREFIX-peak-$mode.log | cut -c1-3000
done
(( $(left) > 40 )) && gpu_tests "tests/test_norm_bounds.py" "aligned or shifted_windows or fp32_products" 4 $(left)
summary
date -u
