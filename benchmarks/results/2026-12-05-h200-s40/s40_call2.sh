#!/usr/bin/env bash
# Session 40, second device call: s39_call2.sh (session 39's privacy fixes on CUDA through inductor) and the tests of
# s38_call3.sh (session 38's: gradients rounded after the batch sum, float8, the lowering's copy), in one call.
cd "$(dirname "$0")/../../.."
PREFIX=s40-call2
LIMIT=570
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_refusals.py tests/test_tied.py tests/test_adversarial.py tests/test_odd_sizes.py" \
    "one_sample_graph or batch_size_or_position or kept_by or hand_written or complex or cancel or mean_scale or first_batch_of_one or diagonal or rounded_to or float8 or round_up or subnormal or custom_function or hook_inside or float16" 16 230
gpu_tests "tests/test_privacy_engine.py tests/test_hf_models.py tests/test_reparametrised.py tests/test_gpu_paths.py tests/test_mixed_precision.py" \
    "noise_only or second_noisy or accumulating_context or batch_of_one or chain or padding_mask or rolls_back or privacy_state or poisson_batches or autocast_entered or lowering or copy" 16 230
date -u
