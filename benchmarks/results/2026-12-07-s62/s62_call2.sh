#!/usr/bin/env bash
# Sixty-second session, call 2 (not run; after s62_call1.sh, if that turns ops.KERNEL_OUTPUTS_AFTER_OPERANDS on): the
# setting on ResNet-18 (GN) 224² b64, the other suite config whose DP backward has lowered kernels (the TF32 Gram sums
# in fp32, the per-sample convolution kernel and half Grams in bf16), by peak: the DP run with the setting on and off
# and non-private torch.compile beside them (peak_memory.py: each process's own max_memory_allocated and the trace's
# peak), bf16 then fp32. Predicted: no peak rises (the change only delays allocations).
# Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s62/s62_call2.sh
cd "$(dirname "$0")/../../.."
PREFIX=s62-call2
LIMIT=${LIMIT:-300}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
peak() {  # LABEL CAP CONFIG-ARGS...: dp with the setting on, off, and non-private compile, in parallel
    local label=$1 cap=$2
    shift 2
    (( $(left) > cap / 2 )) || { echo "$label: skipped (time)"; return; }
    (( cap > $(left) )) && cap=$(left)
    echo "== $label $(date -u +%T)"
    for on in True False; do
        TORCHINDUCTOR_CACHE_DIR=/tmp/c-$label-$on timeout -k 5 $cap python3 benchmarks/with_plan.py \
            KERNEL_OUTPUTS_AFTER_OPERANDS=$on -- benchmarks/peak_memory.py --cudnn-benchmark "$@" --method dp \
            --policy auto --top 8 > $OUT/$PREFIX-$label-after-$on.log 2>&1 &
    done
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$label-np timeout -k 5 $cap python3 benchmarks/peak_memory.py --cudnn-benchmark \
        "$@" --method compile --top 8 > $OUT/$PREFIX-$label-compile.log 2>&1 &
}
show() {
    for f in $OUT/$PREFIX-$1-*.log; do
        echo "$(basename $f): $(tail -1 $f | python3 -c 'import json, sys
try:
    r = json.loads(sys.stdin.read()); print({k: r[k] for k in ("before_step_gib", "peak_gib", "max_memory_allocated_gib", "peak_after_allocs", "live_blocks")})
except Exception as e:
    print("no json:", e)')"
    done
}
peak r18-224-bf16 220 --amp bf16 --config resnet18_224 --batch 64
peak r18-224-fp32 220 --amp fp32 --config resnet18_224 --batch 64
wait
show r18-224-bf16; show r18-224-fp32
date -u
