#!/usr/bin/env bash
# Per-sample gradients as TF32 products against IEEE ones, one GPU, with and without CUDA graphs (the CNN steps are
# host-bound without them). From the repo root on the GPU machine (carry .whl):
#   SPECS="wrn16_4:32:256 resnet18_gn:32:256" bash benchmarks/tf32_timing.sh      (JSON lines in $OUT/tf32-timing.jsonl)
# METHODS: dp_throughput.py arguments per run, separated by ";".
set -uo pipefail
cd "$(dirname "$0")/.."
source .ci/gpu-wheels && python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
OUT=${OUT:-/tmp/tf32-timing}; mkdir -p "$OUT"
date -u; python3 -c 'import torch; print(torch.__version__, torch.cuda.get_device_name())'
for spec in ${SPECS:-wrn16_4:32:256 resnet18_gn:32:256}; do
    IFS=: read -r model size batch <<< "$spec"
    IFS=';' read -r -a methods <<< "${METHODS:-compile;dp;dp --per-sample-tf32;compile --cuda-graphs;dp --cuda-graphs;dp --cuda-graphs --per-sample-tf32}"
    for m in "${methods[@]}"; do
        timeout ${RUN_LIMIT:-150} python3 benchmarks/dp_throughput.py --model "$model" --size "$size" --batch "$batch" \
            --policy ${POLICY:-auto} --method $m 2>&1 | grep '^{' | tee -a "$OUT/tf32-timing.jsonl"
    done
done
