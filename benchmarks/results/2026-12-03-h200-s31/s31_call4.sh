#!/usr/bin/env bash
# Session 31, call 4 (the session's last device seconds): the committed defaults after call 3, WRN-16-4 32² b256
# auto profiled: STATIC_BATCH_LAYOUT on, the group sums as stacked reductions, and each clip factor stored once
# (call 3: inlined into the clipped sums' unfold kernels, 0.42 ms a step); non-private compile in the same call;
# the layout test through inductor on CUDA (the reference at three batch sizes, both switch settings).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
export PYTHONUNBUFFERED=1
start=$(date +%s); LIMIT=${LIMIT:-560}
left() { echo $((LIMIT - ($(date +%s) - start))); }
run() {  # run LABEL SECONDS COMMAND...: skipped without half the seconds left
    local label=$1 cap=$2; shift 2
    (( $(left) > cap / 2 )) || { echo "$label: skipped (time)"; return; }
    (( cap > $(left) )) && cap=$(left)
    echo "== $label $(date -u +%T)"
    local log="$OUT/s31-call4-$(echo $label | tr ' +' '__').log"
    timeout -k 5 "$cap" "$@" >"$log" 2>&1
    tail -1 "$log" | python3 -c 'import json,sys
try:
    r = json.loads(sys.stdin.read()); r.pop("products", None); print(json.dumps(r))
except Exception as e: print("no json:", e)' | tee -a "$OUT/s31-call4.jsonl"
}
keep() {  # keep LABEL: the generated modules of the last run that hold DP nodes, gzipped
    mkdir -p "$OUT/$1"
    grep -l "dp_norm_sq\|dp_per_sample" $(find "$TORCHINDUCTOR_CACHE_DIR" -name '*.py' -newer /tmp/s31-mark -size +20k 2>/dev/null) 2>/dev/null \
        | head -4 | while read f; do gzip -c "$f" > "$OUT/$1/$(basename "$f").gz"; done
}
date -u
TP="benchmarks/dp_throughput.py --size 32 --batch 256 --steps 20 --policy auto"
touch "$OUT/s31-call4.jsonl" /tmp/s31-mark
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a TORCHINDUCTOR_FX_GRAPH_CACHE=0
run "dp wrn" 100 python3 $TP --model wrn16_4 --profile
run "compile wrn" 45 python3 $TP --model wrn16_4 --method compile
echo "== tests $(date -u +%T)"
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor timeout -k 5 70 python3 -m pytest -q -x -p no:cacheprovider \
    tests/test_gpu_paths.py -k "layout_of_a_static" 2>&1 | tail -4 | tee "$OUT/s31-call4-tests.log"
date -u
