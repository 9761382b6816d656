#!/usr/bin/env bash
# Session 15, call 2: the CantSplit fallback's traceback (shifted products, CUDA); WRN-16-4 in bf16 (time, memory).
set -u
cd "$(dirname "$0")/.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
timeout 120 python3 .gpu/diag_cantsplit.py > $OUT/diag_cantsplit.txt 2>&1
grep -v Warning $OUT/diag_cantsplit.txt | head -60 | cut -c1-250
common="--configs wrn16_4_32 --amp bf16 --no-explain --cudnn-benchmark --out $OUT --steps 20"
timeout -s INT 110 python3 benchmarks/bench.py $common --methods compile,dpcompile --policies auto --name s15-wrn-bf16 2>&1 | tail -4
timeout -s INT 80 python3 benchmarks/with_plan.py SHIFTED_CONV_MAX_PRODUCTS=0 -- benchmarks/bench.py $common --methods dpcompile --policies auto --name s15-wrn-bf16-unfold 2>&1 | tail -3
for m in compile dp; do
  timeout 50 python3 benchmarks/peak_memory.py --model wrn16_4 --size 32 --batch 256 --method $m --amp bf16 --top 4 2>&1 | grep '^{' | tee -a $OUT/mem.jsonl | cut -c1-300
done
timeout -s INT 150 python3 benchmarks/bench.py --configs resnet18_32 --no-explain --cudnn-benchmark --out $OUT --steps 20 --methods compile,dpcompile --policies auto,mixed --name s15-r18-fp32 2>&1 | tail -4
