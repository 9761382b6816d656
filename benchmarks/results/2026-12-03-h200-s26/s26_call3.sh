#!/usr/bin/env bash
# Session 26, call 3: the peers on the torchvision/timm configs in fp32 (timm ViT-S/16, torchvision ResNet-50),
# beside non-private torch.compile and dpcompile auto in the same run.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=${BUDGET:-500} HARD_LIMIT=${HARD_LIMIT:-540} AMPS=fp32 CORE=compile,dpcompile POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s26-tv bash benchmarks/suite_gpu.sh timm_vit_s16_224 tv_resnet50_224 2>&1 | tail -40
date -u
