#!/usr/bin/env bash
# Session 30, call 2: does the DP step lose channels-last? Inductor picks channels-last for a graph with convolutions
# only when no convolution's input has a symbolic size (graph.py decide_layout_opt), and the DP graphs' batch is
# symbolic; non-private torch.compile's is static. Step times of non-private compile and dpcompile auto (TF32
# default), with and without inductor's force_layout_optimization, WRN-16-4 and ResNet-18 (GN) at 32², batch 256,
# alternating; then non-private compile with a dynamic batch (what the symbolic size alone costs it).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s); LIMIT=${LIMIT:-580}
left() { echo $((LIMIT - ($(date +%s) - start))); }
run() {  # run LABEL SECONDS COMMAND...: skipped without half the seconds left
    local label=$1 cap=$2; shift 2
    (( $(left) > cap / 2 )) || { echo "$label: skipped (time)"; return; }
    (( cap > $(left) )) && cap=$(left)
    echo "== $label $(date -u +%T)"
    timeout -k 5 "$cap" "$@" 2>>"$OUT/s30-call2-err.txt" | tail -1 | tee -a "$OUT/s30-call2.jsonl"
}
date -u
TP="python3 benchmarks/dp_throughput.py --size 32 --batch 256 --steps 30 --policy auto"
FORCE="--inductor-config force_layout_optimization=True"
run "compile wrn16_4" 60 $TP --model wrn16_4 --method compile
run "dp wrn16_4" 90 $TP --model wrn16_4
run "dp+force wrn16_4" 100 $TP --model wrn16_4 $FORCE
run "compile resnet18_gn" 70 $TP --model resnet18_gn --method compile
run "dp resnet18_gn" 120 $TP --model resnet18_gn
run "dp+force resnet18_gn" 140 $TP --model resnet18_gn $FORCE
run "compile wrn16_4 again" 40 $TP --model wrn16_4 --method compile
run "dp+force wrn16_4 again" 40 $TP --model wrn16_4 $FORCE
run "compile dynamic wrn16_4" 60 $TP --model wrn16_4 --method compile --dynamic
date -u
