#!/usr/bin/env bash
# Session 20, call 4: ViT-S/16 224² b64 fp32, non-private compile, auto with both TF32 options and fastDP (the
# fastest peer on ViT in the nineteenth session) in one run, after the plan fix of call 3.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=200 HARD_LIMIT=230 AMPS=fp32 CORE=compile,dp_auto_alltf32 PEERS=fastdp POLICIES=auto NAME=s20-vit-peer \
  bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -8
date -u
