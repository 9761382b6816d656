#!/usr/bin/env bash
# Session 30, call 3: call 2's step times were host-bound (host time ≈ step time) and noisy, so channels-last for
# the DP graphs (force_layout_optimization) is judged here by the device's busy time a step (dp_throughput --profile:
# every kernel and copy of 5 profiled steps), WRN-16-4 then ResNet-18 (GN) at 32², batch 256, auto, without and with.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s); LIMIT=${LIMIT:-280}
left() { echo $((LIMIT - ($(date +%s) - start))); }
run() {  # run LABEL SECONDS COMMAND...: skipped without half the seconds left
    local label=$1 cap=$2; shift 2
    (( $(left) > cap / 2 )) || { echo "$label: skipped (time)"; return; }
    (( cap > $(left) )) && cap=$(left)
    echo "== $label $(date -u +%T)"
    timeout -k 5 "$cap" "$@" >"$OUT/s30-call3-$(echo $label | tr ' +' '__').log" 2>&1
    tail -1 "$OUT/s30-call3-$(echo $label | tr ' +' '__').log" | python3 -c 'import json,sys
r = json.loads(sys.stdin.read()); r.pop("products", None); print(json.dumps(r))' | tee -a "$OUT/s30-call3.jsonl"
}
date -u
TP="python3 benchmarks/dp_throughput.py --size 32 --batch 256 --steps 20 --policy auto --profile"
FORCE="--inductor-config force_layout_optimization=True"
run "dp wrn16_4" 90 $TP --model wrn16_4
run "dp+force wrn16_4" 90 $TP --model wrn16_4 $FORCE
run "compile wrn16_4" 50 $TP --model wrn16_4 --method compile
date -u
