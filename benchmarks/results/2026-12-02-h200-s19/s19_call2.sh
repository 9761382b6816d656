#!/usr/bin/env bash
# Session 19, call 2: ViT-S/16 224² b64 fp32 (non-private compile, dpcompile auto, the peers) and timm's
# ViT-S/16 224² b64 in bf16 autocast (compile, dpcompile auto), one suite run each.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=270 HARD_LIMIT=300 AMPS=fp32 CORE=compile,dpcompile POLICIES=auto NAME=s19-vit bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -14
date -u
BUDGET=230 HARD_LIMIT=255 AMPS=bf16 CORE=compile,dpcompile PEERS= POLICIES=auto NAME=s19-timm bash benchmarks/suite_gpu.sh timm_vit_s16_224 2>&1 | tail -12
date -u
