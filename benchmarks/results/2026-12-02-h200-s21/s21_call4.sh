#!/usr/bin/env bash
# Session 21, calls 4 and 5: WRN-16-4 32² b256 fp32 with both TF32 options against compile. Call 4 ran it with
# NAME=s21-wrn-tf32grams BUDGET=220 HARD_LIMIT=240 on the code with TF32 Grams in the linear and conv rules (18.29 ms);
# call 5, as below, with the conv rule's Grams back to IEEE (13.16 ms), the code committed.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
BUDGET=220 HARD_LIMIT=240 AMPS=fp32 CORE=compile,dp_auto_alltf32 PEERS= POLICIES=auto \
  NAME=s21-wrn-tf32grams bash benchmarks/suite_gpu.sh wrn16_4_32 2>&1 | tail -4
date -u
