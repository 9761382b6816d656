#!/usr/bin/env bash
# Session 33, call 2: the Triton implicit-GEMM per-sample convolution gradient (dpcompile/conv_kernels.py, a
# draft) against the rewrite's current forms and cuDNN's non-private weight gradient, layer by layer
# (implicit_gemm.py). Call 2b: stores along C, the grid form (stride 1) added, bf16 current form in bf16.
# run at about 4x of it.
cd "$(dirname "$0")/../../.."
PREFIX=s33-call2
LIMIT=300
source benchmarks/device_call.sh
date -u
run "implicit gemm" 280 python3 benchmarks/results/2026-12-04-h200-s33/implicit_gemm.py
cat $OUT/s33-call2-implicit_gemm.log | grep -v Warning | tail -40
