#!/usr/bin/env bash
# Session 27, call 2: the peers in bf16 autocast on torchvision's ResNet-18 (32², 224²) and ResNet-50, beside
# non-private torch.compile and dpcompile auto in the same run.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=${BUDGET:-450} HARD_LIMIT=${HARD_LIMIT:-500} AMPS=bf16 CORE=compile,dpcompile POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s27-tvbf bash benchmarks/suite_gpu.sh tv_resnet18_32 tv_resnet18_224 tv_resnet50_224 2>&1 | tail -40
date -u
