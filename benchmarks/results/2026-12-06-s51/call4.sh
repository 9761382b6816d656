#!/usr/bin/env bash
# Fifty-first session, call 4 (s49/s50_call2.sh, not run in the fiftieth): Poisson batch sizes, the rest of the question. s48 call 2 (H100)
# had WRN-16-4 32², expected 256 of 50,000, 150 timed steps: mean step non-private compile 19.42 ms, `auto` 20.03,
# `auto` + CUDA graphs 37.06 (a recording per new size), `auto` + CUDA graphs + batch_bucket=32 13.51; the steps at a
# new size cost compile and `auto` about 34 ms (per-shape work below the graphs: likely cuDNN's plans and inductor's
# size-dependent launch choices). Here: the bucket without CUDA graphs (predicted: a mean near its repeat median,
# about 12 ms), and buckets of 16 and 64 with CUDA graphs (padding against recordings), then non-private compile
# again as the call's baseline. Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s51/call4.sh
cd "$(dirname "$0")/../../.."
PREFIX=s51-call4
LIMIT=500
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
t="python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --poisson 50000 --steps 150 --warmup 3"
run "compile" 110 $t --method compile
run "auto bucket" 110 $t --policy auto --batch-bucket 32
run "auto graphs bucket16" 110 $t --policy auto --cuda-graphs --batch-bucket 16
run "auto graphs bucket64" 110 $t --policy auto --cuda-graphs --batch-bucket 64
summary
date -u
