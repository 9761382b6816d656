#!/usr/bin/env bash
# Written in session 40 for the next device call. (1) The fused Gram sums' host time (session 40's call 1 saw the
# fused step's host 3.6 ms longer, but every op's CPU time was longer in that run): ViT-S/16 224² b64 bf16, fused (the
# default) and stored Grams, interleaved twice, non-private compile first; first-step times recorded. (2) ViT-S/16
# bf16 under the C++ wrapper, DP and compile (WRN-16-4 bf16's DP step went 12.36 → 8.71 ms under it): the candidate
# default for the DP graphs on CUDA, if its first step allows. Session 42, first: the DP passes and the first step of
# ResNet-50 (GN) 224² b32 on the GPU host (issue 10: ≤ 5 s and ≤ 60 s), cold inductor cache; one fused/stored pair.
cd "$(dirname "$0")/../../.."
PREFIX=s42-call2
LIMIT=580
source benchmarks/device_call.sh
date -u
vit="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16"
stored="python3 benchmarks/with_plan.py FUSED_GRAM_DEVICES=() -- benchmarks/dp_throughput.py"
run passes_r50 200 python3 benchmarks/pass_times.py --models resnet50_gn --size 224 --batch 32 --device cuda \
    --backend inductor --clock wall --snippets 4
cat "$OUT/$PREFIX-passes_r50.log" | grep -v Warning | tail -8
run vit_compile 70 python3 benchmarks/dp_throughput.py $vit --method compile >/dev/null
run vit_fused 110 python3 benchmarks/dp_throughput.py $vit >/dev/null
run vit_stored 110 $stored $vit >/dev/null
run vit_dp_cpp 150 python3 benchmarks/dp_throughput.py $vit --inductor-config cpp_wrapper=True >/dev/null
summary
grep -h "could not\|Error" "$OUT"/$PREFIX-*.log | cut -c1-300 | sort | uniq -c | head
date -u
