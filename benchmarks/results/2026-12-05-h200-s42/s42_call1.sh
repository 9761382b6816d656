#!/usr/bin/env bash
# Written in session 41 (no device lent that session) for the next device call after s41_call1.sh: the CUDA tests of
# session 40's late changes (the batch-size guard refusals, the integer-output Function, the data-dependent index, a
# hook inside forward; the Gram kernel's 64-bit offsets compiled) and of session 41's privacy fixes (noise and
# sampler streams, stale micro-step sums, torch.func refusal; the CUDA generator's noise), and the CPU-slow inductor
# cases that run by default on CUDA (SLOW_ON_CPU). Session 42: the backend form inside another torch.compile.
cd "$(dirname "$0")/../../.."
PREFIX=s42-call1
LIMIT=540
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_refusals.py tests/test_adversarial.py tests/test_gram_kernels.py" \
    "backend_form or uncaptured or second_module or replaced_after or branch_or_a_hand_written or own_choice or integer_output or data_dependent_index or hook_inside or (gram and not interpreter)" 16 200
gpu_tests "tests/test_privacy_engine.py tests/test_precision.py" \
    "seed or stream or earlier_logical or torch_func or belong_to or made_anew or tf32_per_sample_matmul or ghost_tf32_clipped" 16 200
run passes_r50 150 python3 benchmarks/pass_times.py --models resnet50_gn --size 224 --batch 32 --device cuda \
    --backend inductor --clock wall --snippets 4
grep -v Warning "$OUT/$PREFIX-passes_r50.log" | tail -8
date -u
