#!/usr/bin/env bash
# Written in session 45: the CUDA suite's files that the forty-fifth session's run (LIMIT 500, 1,145 of 1,472 tests)
# did not finish, under inductor on CUDA. Run alone: bash benchmarks/results/2026-12-05-s45/s45_call2.sh (carry .whl).
cd "$(dirname "$0")/../../.."
files="tests/test_reparametrised.py tests/test_sampling.py tests/test_symbolic.py tests/test_tied.py
tests/test_user_errors.py tests/test_refusals.py tests/test_properties_ops.py tests/test_examples.py
tests/test_models.py tests/test_models_zoo.py tests/test_mixed_precision.py tests/test_hf_models.py
tests/test_distributed.py tests/test_properties.py tests/test_privacy_engine.py tests/test_conv_kernels.py
tests/test_precision.py tests/test_augmult.py tests/test_gpu_paths.py"
TESTS="$(echo $files)" WORKERS=14 LIMIT=540 TEST_TIMEOUT=300 bash .ci/gpu inductor 2>&1 | tail -40
