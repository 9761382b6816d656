#!/usr/bin/env bash
# Written in session 36 for the next session (not run yet; after s37_call1.sh). (1) ViT-S/16 224² b64 bf16 in one
# call: non-private compile, dpcompile `auto` (the half Grams through cuBLAS, which picks Turing-shaped
# cutlass_75 kernels for them on the H200: 4.24 ms a step in session 36) and with HALF_GRAM_AUTOTUNE (inductor's
# Triton bmm templates autotuned against cuBLAS for those Grams; first step longer), all profiled: the device-time
# ratio session 36 could not give, and whether the templates win. (2) WRN-16-4 32² b256 fp32 with the per-sample
# products IEEE (--no-per-sample-tf32: no dpcompile::tf32_* fallbacks, slower products), against call 1's TF32
# default: the fallbacks' host cost. s37_call3.sh: the C++ wrapper.
cd "$(dirname "$0")/../../.."
PREFIX=s37-call2
LIMIT=570
source benchmarks/device_call.sh
date -u
vit="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16 --profile"
run vit_compile 80 python3 benchmarks/dp_throughput.py $vit --method compile >/dev/null
run vit_dp 150 python3 benchmarks/dp_throughput.py $vit >/dev/null
run vit_autotune 220 python3 benchmarks/with_plan.py HALF_GRAM_AUTOTUNE=True -- benchmarks/dp_throughput.py $vit \
    >/dev/null
run wrn32_ieee 100 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 \
    --policy auto --profile --no-per-sample-tf32 >/dev/null
summary
date -u
