#!/usr/bin/env bash
# Session 29, call 3: what is live at the DP step's memory peak on CUDA (allocator traces, peak_memory.py) and what
# the ghost convolutions over the padded grid (the working tree of this session, carried in .gpu/grid; no unfold in
# their Grams and clipped sums) change: ResNet-18 (GN) 32² at batch 4,096 (non-private compile; dpcompile auto and
# mixed on 5a94a60 and on the grid code), then step times at the suite's batch 256, 5a94a60 against the grid code
# alternating (ResNet-18 (GN) 32² and WRN-16-4, auto, the TF32 default). Each step skipped once LIMIT s are spent.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s); LIMIT=${LIMIT:-520}
left() { echo $((LIMIT - ($(date +%s) - start))); }
run() {  # run LABEL SECONDS COMMAND...: skipped without the seconds left
    local label=$1 cap=$2; shift 2
    (( $(left) > cap / 2 )) || { echo "$label: skipped (time)"; return; }
    (( cap > $(left) )) && cap=$(left)
    echo "== $label $(date -u +%T)"
    timeout -k 5 "$cap" "$@" 2>>"$OUT/s29-call3-err.txt" | tail -1 | tee -a "$OUT/s29-call3.jsonl"
}
GRID="env PYTHONPATH=$PWD/.gpu/grid"
PM="python3 benchmarks/peak_memory.py --model resnet18_gn --size 32 --batch 4096 --top 15"
run "compile b4096" 90 $PM --method compile
run "5a94a60 auto b4096" 110 $PM --method dp --policy auto
run "5a94a60 mixed b4096" 110 $PM --method dp --policy mixed
run "grid mixed b4096" 110 $GRID $PM --method dp --policy mixed
run "grid auto b4096" 110 $GRID $PM --method dp --policy auto
TP="python3 benchmarks/dp_throughput.py --size 32 --batch 256 --steps 30 --policy auto"
for model in resnet18_gn wrn16_4; do
    run "5a94a60 $model" 90 $TP --model $model
    run "grid $model" 90 $GRID $TP --model $model
done
date -u
