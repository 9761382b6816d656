#!/usr/bin/env bash
# Fifty-fifth session, third call: the grouped per-sample convolution layer table (s52/grouped_wgrad.py, queued since
# the fifty-second session: cuDNN's weight gradient with the batch folded into the groups, in TF32, against the forms
# the rule uses on CUDA, for the CIFAR fp32 layers), then ResNet-50 (GN) 224² b32 bf16 with cuda_graphs=True (calls 1
# and 2 found its DP step host-bound: 35-45 ms of host against 12.6 ms of device time). Run alone from the repository
# root, carry .whl.
cd "$(dirname "$0")/../../.."
PREFIX=s55-call3
LIMIT=${LIMIT:-440}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
timeout $((LIMIT - 30)) python3 benchmarks/results/2026-12-06-s52/grouped_wgrad.py \
    >"$OUT/grouped_wgrad.jsonl" 2>"$OUT/grouped_wgrad.err"
grep "^row:" "$OUT/grouped_wgrad.err"; grep -v "^row:" "$OUT/grouped_wgrad.err" | tail -3
t="python3 benchmarks/dp_throughput.py --profile --amp bf16 --model resnet50_gn --size 224 --batch 32 --policy auto"
TORCHINDUCTOR_CACHE_DIR=/tmp/c-dp run "auto cuda graphs" 230 $t --cuda-graphs
summary
date -u
