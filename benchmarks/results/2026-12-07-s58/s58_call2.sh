#!/usr/bin/env bash
# Fifty-eighth session, call 2: the copy-free alignments of fp32 TF32 products (the padded grid's rows widened to
# 16 bytes, conv.grid_widening; the unfold's rows padded, conv.padded_rows) on CUDA: whole fp32 `auto` steps off and
# on, cold caches, ResNet-50 (GN) 224² b32 (the align-1 kernel of call 1), ResNet-18 (GN) 32² b256 and WRN-16-4 (rows
# of 34 widened to 36: more work for every shifted product), then their tests under inductor in what is left. Run
# alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s58/s58_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s58-call2
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
ab=benchmarks/results/2026-12-07-s58/align_ab.py
# CONFIGS (model size batch cap; ...): after refused starts, CONFIGS="resnet50_gn 224 32 160" LIMIT=330.
IFS=';' read -ra configs <<< "${CONFIGS:-resnet50_gn 224 32 170;resnet18_gn 32 256 80;wrn16_4 32 256 75}"
for cfg in "${configs[@]}"; do
    set -- $cfg
    for mode in off on; do
        TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$mode run "$1 $mode" $4 python3 $ab $mode --profile --amp fp32 --model $1 \
            --size $2 --batch $3 --policy auto
    done
done
(( $(left) > 40 )) && gpu_tests "tests/test_norm_bounds.py" "aligned or shifted_windows or fp32_products" 4 $(left)
summary
date -u
