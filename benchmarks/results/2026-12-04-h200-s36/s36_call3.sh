#!/usr/bin/env bash
# Session 36, third device call, with the bf16 Grams as half products on by default on CUDA: ResNet-18 (GN) 32² b256
# bf16 profiled without CUDA graphs against non-private compile in the same call (session 35 had no such figure), and
# ViT-S/16 224² b64 bf16 `auto` profiled with the Grams off (with_plan) and on (default): its Grams are T = 197 wide.
cd "$(dirname "$0")/../../.."
PREFIX=s36-call3
LIMIT=540
source benchmarks/device_call.sh
date -u
common="--model resnet18_gn --size 32 --batch 256 --steps 20 --policy auto --amp bf16 --profile"
run r18_compile 80 python3 benchmarks/dp_throughput.py $common --method compile >/dev/null
run r18_dp 150 python3 benchmarks/dp_throughput.py $common >/dev/null
common="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16 --profile"
run vit_off 140 python3 benchmarks/with_plan.py "HALF_GRAM_DEVICES=()" -- benchmarks/dp_throughput.py $common >/dev/null
run vit_on 140 python3 benchmarks/dp_throughput.py $common >/dev/null
summary
date -u
