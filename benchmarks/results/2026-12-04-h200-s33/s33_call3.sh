#!/usr/bin/env bash
# Session 33, call 3: per-sample convolution gradients through the Triton kernel (impl "implicit", bf16/fp16
# operands on CUDA by default). (a) Its CUDA tests through inductor: the kernel over random convolutions in
# float64/fp32/bf16, the rewrite through it against torch.func, crafted and poisoned samples, the bf16 autocast
# tests; (b) WRN-16-4 and ResNet-18 (GN) 32² b256 bf16 autocast: compile, dpcompile auto with the kernel (the new
# default) and without it (IMPLICIT_CONV_DEVICES=(), the forms before), in one call. Predicted from call 2's layer
# times: WRN-16-4 about 1.5 ms a step less (1.87x in the fifteenth session), ResNet-18 about 2 ms less.
cd "$(dirname "$0")/../../.."
PREFIX=s33-call3
LIMIT=570
source benchmarks/device_call.sh
date -u
echo "== tests $(date -u +%T)"
TESTS="tests/test_conv_kernels.py tests/test_adversarial.py tests/test_mixed_precision.py" \
    PYTEST_ADDOPTS="-k 'conv_kernels or bf16'" WORKERS=14 TEST_TIMEOUT=140 LIMIT=150 OUT=$OUT/tests \
    bash .ci/gpu inductor 2>&1 | tail -25
for cfg in wrn16_4_32 resnet18_32; do
    common="--configs $cfg --amp bf16 --no-explain --cudnn-benchmark --out $OUT --steps 20"
    echo "== $cfg $(date -u +%T)"
    timeout -s INT 110 python3 benchmarks/bench.py $common --methods compile,dpcompile --policies auto \
        --name s33-$cfg-bf16 2>&1 | tail -4
    timeout -s INT 75 python3 benchmarks/with_plan.py "IMPLICIT_CONV_DEVICES=()" -- benchmarks/bench.py $common \
        --methods dpcompile --policies auto --name s33-$cfg-bf16-before 2>&1 | tail -3
done
date -u
