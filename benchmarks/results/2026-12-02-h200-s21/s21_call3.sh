#!/usr/bin/env bash
# Session 21, call 3: ViT-S/16 224² b64 fp32 with both TF32 options (TF32 Gram norms now) against compile.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=330 HARD_LIMIT=360 AMPS=fp32 CORE=compile,dp_auto_alltf32 PEERS= POLICIES=auto \
  NAME=s21-vit-tf32grams2 bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -4
date -u
