#!/usr/bin/env bash
# Session 40, third device call, after fixing what call 2 found on CUDA: the tests that failed there (a first batch
# of one is no longer doubled: GPT-2's one-sequence mask code indexed past it, a device-side assert; the hook and
# custom-Function tests for torch 2.11's Dynamo; fp16 saturation accepted), the half-Gram tests with the fused Gram
# sums now CUDA's default, then ViT-S/16 224² b64 bf16 (fused by default now) against non-private compile, each with
# the Python wrapper and with the C++ wrapper (is the host's excess the wrapper's? WRN-16-4 bf16: 12.36 → 8.71 ms).
cd "$(dirname "$0")/../../.."
PREFIX=s40-call3
LIMIT=500
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_adversarial.py tests/test_hf_models.py tests/test_mixed_precision.py tests/test_gram_kernels.py" \
    "custom_function_whose or hook_inside or saturates_instead or batch_of_one or numerical_check or half or gram or fused" 16 170
vit="--model vit_s16 --size 224 --batch 64 --steps 20 --policy auto --amp bf16"
run vit_compile 60 python3 benchmarks/dp_throughput.py $vit --method compile >/dev/null
run vit_dp 90 python3 benchmarks/dp_throughput.py $vit >/dev/null
run vit_dp_cpp 150 python3 benchmarks/dp_throughput.py $vit --inductor-config cpp_wrapper=True >/dev/null
run vit_compile_cpp 90 python3 benchmarks/dp_throughput.py $vit --method compile --inductor-config cpp_wrapper=True \
    >/dev/null
summary
grep -h "could not\|Error" "$OUT"/$PREFIX-*.log | cut -c1-300 | sort | uniq -c | head
date -u
