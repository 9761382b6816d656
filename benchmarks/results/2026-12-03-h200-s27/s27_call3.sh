#!/usr/bin/env bash
# Session 27, call 3: the peers on timm's ViT-S/16 in bf16 autocast, beside non-private torch.compile and dpcompile
# auto in the same run; then ResNet-18 (GN) 32²'s largest batch in fp32 (torch.compile and dpcompile auto).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=${BUDGET:-200} HARD_LIMIT=${HARD_LIMIT:-240} AMPS=bf16 CORE=compile,dpcompile POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s27-timm bash benchmarks/suite_gpu.sh timm_vit_s16_224 2>&1 | tail -30
date -u
BUDGET=${LBUDGET:-300} HARD_LIMIT=${LHARD_LIMIT:-330} AMPS=fp32 CORE= PEERS= POLICIES=auto LARGEST=compile,dp_auto \
  LARGEST_SECONDS=120 NAME=s27-r18-largest bash benchmarks/suite_gpu.sh resnet18_32 2>&1 | tail -30
date -u
