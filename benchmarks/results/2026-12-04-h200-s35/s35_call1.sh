#!/usr/bin/env bash
# Session 35, call 1 (written in session 34 as s34_call6.sh): (a) the CUDA tests not yet
# run there under the kernel's new default: the lowering's fallback, the default-on selection test, the bf16 model and
# adversarial tests through inductor; (b) the suite's CIFAR bf16 rows with the per-sample convolution kernel on by
# default (WRN-16-4 and ResNet-18 GN 32² b256), against non-private compile in the same process, then dpcompile with
# the kernel off (IMPLICIT_CONV_DEVICES=()) in a second process, as s33_call3.sh did. Compare with the thirty-third
# session's 1.72× and 1.78× (kernel off) and with that call's kernel-through-the-op 1.99× and 1.89×.
cd "$(dirname "$0")/../../.."
PREFIX=s35-call1
LIMIT=570
source benchmarks/device_call.sh
date -u
TESTS="tests/test_conv_kernels.py tests/test_adversarial.py tests/test_mixed_precision.py tests/test_models.py" \
    PYTEST_ADDOPTS="-k 'conv_kernels or bf16'" WORKERS=14 TEST_TIMEOUT=140 LIMIT=170 OUT=$OUT/tests \
    bash .ci/gpu inductor 2>&1 | tail -25
for cfg in wrn16_4_32 resnet18_32; do
    common="--configs $cfg --amp bf16 --no-explain --cudnn-benchmark --out $OUT --steps 20"
    echo "== $cfg $(date -u +%T)"
    timeout -s INT 130 python3 benchmarks/bench.py $common --methods compile,dpcompile --policies auto \
        --name s35-$cfg-bf16 2>&1 | tail -4
    timeout -s INT 80 python3 benchmarks/with_plan.py "IMPLICIT_CONV_DEVICES=()" -- benchmarks/bench.py $common \
        --methods dpcompile --policies auto --name s35-$cfg-bf16-off 2>&1 | tail -3
done
date -u
