#!/usr/bin/env bash
# Written in session 39 (no device lent): this session's privacy fixes on CUDA through inductor (all ran on the CPU
# only): the refusals of batch values kept by the forward, of the batch size or position as a value, of hand-written
# backwards that mix samples; the one-sample graphs (InstanceNorm at a batch of one without inductor, GPT-2 at a
# batch of one); shared weights whose uses cancel; the bf16 mean scale in float64; the noise-only releases.
cd "$(dirname "$0")/../../.."
PREFIX=s39-call2
LIMIT=560
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_refusals.py tests/test_tied.py tests/test_adversarial.py tests/test_odd_sizes.py" \
    "one_sample_graph or batch_size_or_position or kept_by or hand_written or complex or cancel or mean_scale or first_batch_of_one or diagonal" 12 300
gpu_tests "tests/test_privacy_engine.py tests/test_hf_models.py tests/test_reparametrised.py" \
    "noise_only or second_noisy or accumulating_context or batch_of_one or chain or padding_mask" 8 200
date -u
