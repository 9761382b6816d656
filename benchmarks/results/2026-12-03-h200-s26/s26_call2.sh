#!/usr/bin/env bash
# Session 26, call 2: the suite's ViT-S/16 224² b64 in bf16 with the peers, beside non-private torch.compile and
# dpcompile auto in the same run; then ViT-S/16's largest batch in fp32 (torch.compile and dpcompile auto).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=${BUDGET:-260} HARD_LIMIT=${HARD_LIMIT:-300} AMPS=bf16 CORE=compile,dpcompile POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s26-vit bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -30
date -u
BUDGET=${LBUDGET:-270} HARD_LIMIT=${LHARD_LIMIT:-290} AMPS=fp32 CORE= PEERS= POLICIES=auto LARGEST=compile,dp_auto \
  LARGEST_SECONDS=120 NAME=s26-vit-largest bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -30
date -u
