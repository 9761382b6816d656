#!/usr/bin/env bash
# Sixty-third session, call 2: the CUDA tests of the two lowered kernels (the per-sample convolution kernel, the Gram
# sums) after ops.kernel_output went back to inductor's plain allocation (KERNEL_OUTPUTS_AFTER_OPERANDS removed), the
# inductor backend, then WRN-16-4 32² b256 bf16 `auto`'s step beside non-private torch.compile if time is left.
# Run alone from the repository root, carry .whl:   LIMIT=300 bash benchmarks/results/2026-12-07-s63/s63_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s63-call2
LIMIT=${LIMIT:-300}
source benchmarks/device_call.sh
gpu_tests "tests/test_conv_kernels.py tests/test_gram_kernels.py" "inductor or lowered or launches or graphs" 8 200
cfg="--profile --amp bf16 --model wrn16_4 --size 32 --batch 256"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-dp run "wrn bf16 auto" 50 python3 benchmarks/dp_throughput.py $cfg --policy auto
summary
(cd $OUT && tar czf tests.tgz tests && rm -r tests)
date -u
