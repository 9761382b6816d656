#!/usr/bin/env bash
# Session 40, first device call: s39_call1.sh (the fused Gram sums: CUDA tests, then ViT-S/16 224² b64 bf16 with it
# off and on, profiled) joined with s38_call2.sh's A/B (the half Grams' rows padded to 16 bytes) and non-private
# compile in the same call. Predictions in benchmarks/NOTES.md (sessions 37 and 39): device 17.9 ms → about 14.5 ms
# fused; about 15 ms with padded rows.
cd "$(dirname "$0")/../../.."
PREFIX=s40-call1
LIMIT=575
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch, triton; print(torch.__version__, triton.__version__)'
gpu_tests "tests/test_gram_kernels.py" "not interpreter" 8 150
vit="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16 --profile"
run vit_dp_fused 130 python3 benchmarks/with_plan.py "FUSED_GRAM_DEVICES=('cuda',)" -- benchmarks/dp_throughput.py \
    $vit >/dev/null
run vit_dp 120 python3 benchmarks/dp_throughput.py $vit >/dev/null
run vit_compile 70 python3 benchmarks/dp_throughput.py $vit --method compile >/dev/null
run vit_dp_rows4 120 python3 benchmarks/with_plan.py HALF_GRAM_ROW_ALIGN=4 -- benchmarks/dp_throughput.py $vit \
    >/dev/null
summary
grep -h "_gram_sums\|cutlass_75\|nvjet_sm90_tst" "$OUT"/$PREFIX-vit_dp*.log | cut -c1-80,150-260 | head -16
grep -h "could not\|Error" "$OUT"/$PREFIX-*.log | cut -c1-300 | sort | uniq -c | head
date -u
