#!/usr/bin/env bash
# Written in session 43 for the next device call: what s42_call2.sh did not reach (its own LIMIT=580 cut it after
# the fused run on an H100): ViT-S/16 224² b64 bf16 with the Grams stored against fused (the default), and the DP
# step under inductor's C++ wrapper (the candidate default for the DP graphs on CUDA), each beside non-private
# compile in the same call. Run alone: bash benchmarks/results/2026-12-05-h100-s43/s43_call1.sh (carry .whl).
cd "$(dirname "$0")/../../.."
PREFIX=s43-call1
LIMIT=560
source benchmarks/device_call.sh
date -u
vit="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16"
stored="python3 benchmarks/with_plan.py FUSED_GRAM_DEVICES=() -- benchmarks/dp_throughput.py"
run vit_compile 70 python3 benchmarks/dp_throughput.py $vit --method compile >/dev/null
run vit_stored 130 $stored $vit >/dev/null
run vit_fused 130 python3 benchmarks/dp_throughput.py $vit >/dev/null
run vit_dp_cpp 170 python3 benchmarks/dp_throughput.py $vit --inductor-config cpp_wrapper=True >/dev/null
summary
grep -h "could not\|Error" "$OUT"/$PREFIX-*.log | cut -c1-300 | sort | uniq -c | head
date -u
