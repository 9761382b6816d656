#!/usr/bin/env bash
# Forty-eighth session: s47's s48_poisson.sh without its tests (call 1 ran them) and without plain `auto` (its step
# does not depend on the batch size's draw: the batch dim is dynamic): WRN-16-4 32², expected batch 256 of 50,000
# (each step's size drawn as a DP loader draws it), 150 timed steps: non-private torch.compile (automatic dynamic
# shapes), dpcompile `auto` with CUDA graphs (a recording per new batch size), then with batch_bucket=32 as well.
# Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s48/s48_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s48-call2
LIMIT=570
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
t="python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --poisson 50000 --steps 150 --warmup 3"
run "compile" 150 $t --method compile
run "auto graphs bucket" 150 $t --policy auto --cuda-graphs --batch-bucket 32
run "auto graphs" 240 $t --policy auto --cuda-graphs
run "auto" 150 $t --policy auto
summary
date -u
