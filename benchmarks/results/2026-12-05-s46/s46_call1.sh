#!/usr/bin/env bash
# Written in session 46 (no device was lent after the first call): (1) the fused Gram sums for ghost convolutions
# and for fp32 terms on TF32 tensor cores, on CUDA: test_gram_kernels.py (the fixture turns both on) and the
# half-Gram bound tests; (2) WRN-16-4 32² b256, fp32 (TF32 default: the ghost convolutions' Grams on TF32) and bf16,
# and ResNet-18 (GN) 32² b256 fp32, by device time (--profile): the default (stored Grams for convolutions) against
# both fused (--fused-gram-convs --fused-gram-dtypes bfloat16,float32), alternating in one call. If the tests pass
# and the fused form is not slower, turn it on: conv.FUSED_GRAM_CONV_DEVICES = ("cuda",), float32 in
# bounds.FUSED_GRAM_DTYPES, and test_gram_kernels.test_on_cuda_by_default with them.
# Run alone, carry .whl: bash benchmarks/results/2026-12-05-s46/s46_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s46-call1
LIMIT=560
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_gram_kernels.py tests/test_norm_bounds.py" "gram or half_grams_stay" 8 150
t="python3 benchmarks/dp_throughput.py --size 32 --batch 256 --policy auto --profile"
fused="--fused-gram-convs --fused-gram-dtypes bfloat16,float32"
run "wrn fp32 stored" 75 $t --model wrn16_4
run "wrn fp32 fused" 75 $t --model wrn16_4 $fused
run "wrn bf16 stored" 75 $t --model wrn16_4 --amp bf16
run "wrn bf16 fused" 75 $t --model wrn16_4 --amp bf16 $fused
run "r18 fp32 stored" 75 $t --model resnet18_gn
run "r18 fp32 fused" 75 $t --model resnet18_gn $fused
summary
date -u
