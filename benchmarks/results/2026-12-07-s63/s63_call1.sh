#!/usr/bin/env bash
# Sixty-third session, call 1: inductor's memory-aware reordering (reorder_for_peak_memory, on by default) and its
# static memory planning (memory_planning, off by default) on the two configs whose DP peak is above 1.3× non-private
# training's: WRN-16-4 32² b256 bf16 (0.758 GiB against 0.548) and ResNet-18 (GN) 224² b64 fp32 (1.37×). The
# sixty-second session's call showed that tying the lowered kernels' allocations to their operands changes the
# reordering's whole schedule (WRN-16-4 bf16's peak 0.758 → 0.792 GiB); this asks what the reordering itself buys.
# Each peak in a process of its own, all in the background; then WRN-16-4 bf16's step by device time under the
# setting whose peak is lowest, against the default. Prints everything to stdout (the device returns at most 8 files).
# Run alone from the repository root, carry .whl:   LIMIT=420 bash benchmarks/results/2026-12-07-s63/s63_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s63-call1
LIMIT=${LIMIT:-420}
source benchmarks/device_call.sh
SETTINGS=("default" "reorder_for_peak_memory=False" "memory_planning=True")
peaks() {  # LABEL CAP ARGS: the DP peak under each setting (and non-private compile's, default), in the background
    local label=$1 cap=$2
    shift 2
    (( cap > $(left) )) && cap=$(left)
    for i in 0 1 2; do
        local s=${SETTINGS[$i]} extra=()
        [ "$s" != default ] && extra=(--inductor-config "$s")
        TORCHINDUCTOR_CACHE_DIR=/tmp/c-$label-$i timeout -k 5 $cap python3 benchmarks/peak_memory.py --cudnn-benchmark \
            "$@" --method dp --policy auto "${extra[@]}" > /tmp/$PREFIX-$label-$i.log 2>&1 &
    done
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$label-np timeout -k 5 $cap python3 benchmarks/peak_memory.py --cudnn-benchmark \
        "$@" --method compile > /tmp/$PREFIX-$label-np.log 2>&1 &
}
showp() {
    for f in /tmp/$PREFIX-$1-*.log; do
        echo "$(basename $f): $(tail -1 $f | python3 -c 'import json, sys
try:
    r = json.loads(sys.stdin.read())
    print({k: r.get(k) for k in ("inductor_config", "before_step_gib", "peak_gib", "max_memory_allocated_gib",
                                 "peak_after_allocs", "live_blocks", "peak_reached_by")})
    for t in r["top"][:10]: print("   ", t["mib"], t["at"][-100:])
except Exception as e:
    print("no json:", e)' | cut -c1-500)"
        grep -m3 -E "Error|error:" $f | cut -c1-300
    done
}
echo "== peaks $(date -u +%T)"
peaks wrn-bf16 200 --amp bf16 --model wrn16_4 --size 32 --batch 256 --top 20
peaks r18-224 260 --config resnet18_224 --batch 64 --top 20
wait
showp wrn-bf16
showp r18-224
best=$(for i in 1 2; do tail -1 /tmp/$PREFIX-wrn-bf16-$i.log | python3 -c "import json,sys
try: print(json.loads(sys.stdin.read())['peak_gib'], $i)
except Exception: pass"; done | sort -n | head -1 | cut -d' ' -f2)
echo "== step (best setting index ${best:-none}) $(date -u +%T)"
cfg="--profile --amp bf16 --model wrn16_4 --size 32 --batch 256 --policy auto"
if [ -n "$best" ]; then
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-$best run "wrn bf16 ${SETTINGS[$best]}" 70 python3 benchmarks/dp_throughput.py \
        $cfg --inductor-config "${SETTINGS[$best]}"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-wrn-bf16-0 run "wrn bf16 default" 70 python3 benchmarks/dp_throughput.py $cfg
fi
summary
date -u
