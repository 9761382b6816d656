#!/usr/bin/env bash
# Sixty-second session, call 2 (not run; after s62_call1.sh, if that turns ops.KERNEL_OUTPUTS_AFTER_OPERANDS on): the
# setting on ResNet-18 (GN) 224² b64, the other suite config whose DP backward has lowered kernels (the TF32 Gram sums
# in fp32, the per-sample convolution kernel and half Grams in bf16), by peak: the DP run with the setting on and off
# and non-private torch.compile beside them (peak_memory.py: each process's own max_memory_allocated and the trace's
# peak), bf16 then fp32. Predicted: no peak rises (the change only delays allocations).
# Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s62/s62_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s62-call2
LIMIT=${LIMIT:-300}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
source benchmarks/results/2026-12-07-s62/peaks.sh
NP=1 peak r18-224-bf16 220 --amp bf16 --config resnet18_224 --batch 64
NP=1 peak r18-224-fp32 220 --amp fp32 --config resnet18_224 --batch 64
wait
show r18-224-bf16; show r18-224-fp32
date -u
