#!/usr/bin/env bash
# Session 16, call 2: ResNet-18 32² DP backward's generated code (kernel count); the suite's bf16 halves of ResNet-50 and ViT-S/16.
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
TORCH_LOGS=output_code timeout 90 python3 benchmarks/dp_throughput.py --model resnet18_gn --size 32 --batch 256 --method dp --policy auto --steps 3 --warmup 1 > $OUT/r18-dp-code.txt 2>&1
tail -1 $OUT/r18-dp-code.txt | cut -c1-300; gzip $OUT/r18-dp-code.txt
date -u
BUDGET=420 HARD_LIMIT=470 AMPS=bf16 PEERS= POLICIES=auto NAME=s16-r50-vit bash benchmarks/suite_gpu.sh resnet50_224 vit_s16_224 2>&1 | tail -25
date -u
