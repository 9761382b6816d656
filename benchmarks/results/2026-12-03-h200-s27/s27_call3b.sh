#!/usr/bin/env bash
# Session 27, call 3b: the peers on torchvision's ResNet-18 (32², 224²) and ResNet-50 in bf16 autocast, added to call
# 2's results (carried in .gpu/resume: non-private torch.compile and dpcompile auto, measured on this card's kind in
# the previous call; the call 2 machine was released, so the peers run on a fresh one).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
RESUME_DIR=.gpu/resume BUDGET=${BUDGET:-120} HARD_LIMIT=${HARD_LIMIT:-150} AMPS=bf16 CORE= POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s27-tvbf bash benchmarks/suite_gpu.sh tv_resnet18_32 tv_resnet18_224 tv_resnet50_224 2>&1 | tail -30
date -u
