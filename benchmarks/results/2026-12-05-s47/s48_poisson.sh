#!/usr/bin/env bash
# Whether CUDA graphs can be the default under Poisson batches (written in the forty-seventh session, for the next):
# WRN-16-4 32², expected batch 256 of a 50,000-sample dataset (each step's size drawn as a DP loader draws it), 150
# timed steps: dpcompile `auto` without and with `cuda_graphs=True` (a recording per new batch size; then with
# batch_bucket=32 as well: a recording per multiple of 32, at most 31 zero rows a step), and non-private
# torch.compile's default mode at the same sizes (automatic dynamic shapes). Per run: the mean step over all timed
# steps (what training pays, recordings included), the median of the steps at a size seen before, the steps with a
# new size and their median, the peak memory of the timed steps. First, batch_bucket's tests on CUDA (with CUDA graphs
# in test_gpu_paths). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-05-s47/s48_poisson.sh
cd "$(dirname "$0")/../../.."
PREFIX=s48-poisson
LIMIT=570
source benchmarks/device_call.sh
date -u
gpu_tests "tests/test_buckets.py tests/test_gpu_paths.py" "bucket" 8 150
t="python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --poisson 50000 --steps 150 --warmup 3"
run "compile" 150 $t --method compile
run "auto" 180 $t --policy auto
run "auto graphs" 200 $t --policy auto --cuda-graphs
run "auto graphs bucket" 120 $t --policy auto --cuda-graphs --batch-bucket 32
summary
date -u
