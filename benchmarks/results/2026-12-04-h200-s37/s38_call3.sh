#!/usr/bin/env bash
# Written in session 38 (no device was lent that session) for the next device call after s38_call1.sh and
# s38_call2.sh. The thirty-eighth session's privacy fix on CUDA through inductor: a parameter's gradient rounded after
# the batch sum (a bf16 weight used as fp32 in forward: one clipped sample released 1.0078 against R = 1.0045 before)
# now follows the backward's ops per sample with its rounding counted; float8 conversions of a gradient are refused.
# Passed on the CPU (eager and inductor); here on CUDA, where inductor's casts are Triton's. Then the lowering's
# copy (the last resort runs the graph the DP passes made) and the rest of test_gpu_paths.
cd "$(dirname "$0")/../../.."
PREFIX=s38-call3
LIMIT=420
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_adversarial.py" "rounded_to or float8 or round_up or subnormal or no_parameters or replaced or after_the_dp or custom_function or hook_inside or float16 or scale_grad_by_freq or fitted_under" 4 170
gpu_tests "tests/test_gpu_paths.py" "not nothing" 4 110
gpu_tests "tests/test_mixed_precision.py tests/test_privacy_engine.py" "autocast_entered or first_batch_of_one or float16 or rolls_back or privacy_state or poisson_batches" 4 110
summary
date -u
