#!/usr/bin/env bash
# Session 31, call 2, WRN-16-4 32² b256 auto: (a) call 1 (FX graph cache off) had cuDNN's NCHW↔NHWC conversions in
# the DP step (0.96 ms a step) that the thirtieth session's profile (cache on) did not: the same run with the cache
# on; (b) the shifted per-sample products over the padded x's windows (windows.py: nine products, no stacked copy
# of x, whose kernel took 1.06 ms a step) profiled; (c) both forms with cuda_graphs=True, where the host no longer
# sets the pace; (d) non-private compile in the same call. The DP backward's generated wrappers are kept.
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
    local log="$OUT/s31-call2-$(echo $label | tr ' +' '__').log"
    timeout -k 5 "$cap" "$@" >"$log" 2>&1
    tail -1 "$log" | python3 -c 'import json,sys
try:
    r = json.loads(sys.stdin.read()); r.pop("products", None); print(json.dumps(r))
except Exception as e: print("no json:", e)' | tee -a "$OUT/s31-call2.jsonl"
}
keep() {  # keep LABEL: the generated modules of the last run that hold DP nodes, gzipped
    mkdir -p "$OUT/$1"
    grep -l "dp_norm_sq\|dp_per_sample" $(find "$TORCHINDUCTOR_CACHE_DIR" -name '*.py' -newer /tmp/s31-mark -size +20k 2>/dev/null) 2>/dev/null \
        | head -4 | while read f; do gzip -c "$f" > "$OUT/$1/$(basename "$f").gz"; done
}
date -u
TP="benchmarks/dp_throughput.py --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto"
W=benchmarks/results/2026-12-03-h200-s31/windows.py
touch "$OUT/s31-call2.jsonl" /tmp/s31-mark
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-a
run "dp cache_on" 110 python3 $TP --profile
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-b TORCHINDUCTOR_FX_GRAPH_CACHE=0
touch "$OUT/s31-call2.jsonl" /tmp/s31-mark
run "dp windows" 110 python3 $W --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --profile
keep windows
unset TORCHINDUCTOR_FX_GRAPH_CACHE
run "compile" 50 python3 $TP --method compile
export TORCHINDUCTOR_CACHE_DIR=/tmp/ind-c
run "dp graphs" 110 python3 $TP --cuda-graphs
run "dp graphs windows" 110 python3 $W --model wrn16_4 --size 32 --batch 256 --steps 20 --policy auto --cuda-graphs
run "compile again" 50 python3 $TP --method compile
date -u
