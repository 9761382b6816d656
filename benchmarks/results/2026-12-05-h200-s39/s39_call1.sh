#!/usr/bin/env bash
# Written in session 39 (no device lent) for the next session, to run after the s38_call*.sh scripts of
# results/2026-12-04-h200-s37/. The fused Gram sums (dpcompile.gram_kernels: a ghost linear term's six Gram sums in one
# Triton kernel that stores no Gram; bounds.FUSED_GRAM_DEVICES, off by default): its CUDA tests (the kernel against the
# torch reference in bf16 and float64, the bound on crafted cancellation, the rewrite against torch.func, inductor
# launching the kernel), then ViT-S/16 224² b64 bf16 with it off (the default) and on, profiled, in one call.
# Prediction (NOTES, thirty-ninth session): the 58 cutlass_75 Gram GEMMs (4.2 ms a step) and the ghost bounds'
# float64 reductions over the stored Grams (about 0.7 ms) become 29 kernel launches of about 1.5 ms in all: device
# time 17.9 → about 14.5 ms a step. If the device time falls by 2 ms or more, the default becomes ("cuda",).
cd "$(dirname "$0")/../../.."
PREFIX=s39-call1
LIMIT=560
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_gram_kernels.py" "not interpreter" 8 200
vit="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16 --profile"
run vit_dp 140 python3 benchmarks/dp_throughput.py $vit >/dev/null
run vit_dp_fused 140 python3 benchmarks/with_plan.py "FUSED_GRAM_DEVICES=('cuda',)" -- benchmarks/dp_throughput.py \
    $vit >/dev/null
summary
grep -h "_gram_sums\|cutlass_75\|nvjet_sm90_tst" "$OUT"/$PREFIX-vit_dp*.log | cut -c1-80,150-260 | head -16
grep -h "could not" "$OUT"/$PREFIX-*.log | cut -c1-300 | sort | uniq -c
date -u
