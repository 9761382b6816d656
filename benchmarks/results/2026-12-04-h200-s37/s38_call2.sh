#!/usr/bin/env bash
# Written in session 37 for the next session (not run yet; after s38_call1.sh). ViT-S/16 224² b64 bf16: the half
# Grams' fp32 rows padded to 16 bytes (ops.HALF_GRAM_ROW_ALIGN=4) against unpadded (the default, 1), with non-private
# compile in the same call, all profiled. Session 37 measured 17.94 ms of device time a step for dpcompile against
# 8.44 for compile (2.13×), 4.2 ms of it the Grams on cuBLAS's Turing-shaped cutlass_75 kernels, which the rows of
# 197 floats (not 16-byte aligned) probably force; the model's own aligned bf16 products run on nvjet_sm90 kernels.
# Prediction: the Grams on nvjet kernels, about 1 ms, device time about 15 ms. If so, the default becomes 4.
# Then the DP passes on this host's CPU (ResNet-50 64² b2, eager: 4.4–4.8 s on the project's CPU in session 37,
# 15.3 s on this host in session 35).
cd "$(dirname "$0")/../../.."
PREFIX=s38-call2
LIMIT=560
source benchmarks/device_call.sh
date -u
vit="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16 --profile"
run vit_compile 80 python3 benchmarks/dp_throughput.py $vit --method compile >/dev/null
run vit_dp 140 python3 benchmarks/dp_throughput.py $vit >/dev/null
run vit_dp_rows4 140 python3 benchmarks/with_plan.py HALF_GRAM_ROW_ALIGN=4 -- benchmarks/dp_throughput.py $vit \
    >/dev/null
run passes 60 python3 benchmarks/pass_times.py --models resnet50_gn >/dev/null
summary
grep -h "DP passes\|snippet traces" "$OUT"/$PREFIX-passes.log | cut -c1-200
grep -h "cutlass_75\|nvjet_sm90_tst" "$OUT"/$PREFIX-vit_dp*.log | cut -c1-80,150-260 | head -12
grep -h "could not" "$OUT"/$PREFIX-*.log | cut -c1-300 | sort | uniq -c
date -u
