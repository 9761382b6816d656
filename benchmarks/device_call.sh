# Sourced by a one-off device call script (benchmarks/results/<date>-<card>-sN/*.sh) from the repository root, after
# it sets PREFIX (the call's name, e.g. s31-call2) and, if it wants, LIMIT and OUT, each on a line of its own (an
# assignment in front of `source` lasts only as long as the sourcing): the carried wheels and this checkout installed,
# the call's date, card and torch version printed, and
#   run LABEL SECONDS COMMAND...  runs COMMAND under a time cap (skipped when less than half of SECONDS is left of
#                                 LIMIT), logs it to $OUT/$PREFIX-<label>.log and appends the log's last line, a
#                                 dp_throughput.py result without its per-product list, to $OUT/$PREFIX.jsonl;
#   keep LABEL                    copies the generated inductor modules with DP nodes written since the last
#                                 mark (gzipped, at most 4) to $OUT/LABEL/;
#   mark                          starts that window;
#   summary                       prints one line per result in $OUT/$PREFIX.jsonl: model, policy, CUDA graphs,
#                                 step, host and device ms, first step s, amp, peak GiB (timed steps), and a
#                                 --poisson run's sizes and times;
#   suite AMP MODEL SIZE BATCH DP_SECONDS
#                                 one suite config as the one-run tables take it: non-private torch.compile (80 s at
#                                 most), then dpcompile `auto` (DP_SECONDS), each from a cold inductor cache of its
#                                 own, with --profile (20 timed steps, 5 profiled);
#   gpu_tests FILES K WORKERS SECONDS
#                                 runs .ci/gpu inductor on the tests of FILES that `-k K` selects, WORKERS workers,
#                                 at most SECONDS (and what is left of LIMIT; each test at most 10 s less), logs in
#                                 $OUT/tests/, and prints its result lines (passed, failed, errors, the summary);
#   launches GLOB                 prints, for each of the call's logs that GLOB names ($OUT/$PREFIX-GLOB.log), the
#                                 kernel launches a step of its --profile (cuLaunchKernel calls over 5 steps).
# LIMIT (seconds, default 540) counts from sourcing.
set -u
export OUT=${OUT:-/tmp/out} PYTHONUNBUFFERED=1
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
python3 -c 'import torch; print("torch", torch.__version__)'
start=$(date +%s)
LIMIT=${LIMIT:-540}
touch "$OUT/$PREFIX.jsonl"

left() { echo $((LIMIT - ($(date +%s) - start))); }

run() {
    local label=$1 cap=$2
    shift 2
    (( $(left) > cap / 2 )) || { echo "$label: skipped (time)"; return; }
    (( cap > $(left) )) && cap=$(left)
    echo "== $label $(date -u +%T)"
    local log="$OUT/$PREFIX-$(echo "$label" | tr ' +' '__').log"
    timeout -k 5 "$cap" "$@" >"$log" 2>&1
    tail -1 "$log" | python3 -c 'import json, sys
try:
    r = json.loads(sys.stdin.read()); r.pop("products", None); print(json.dumps(r))
except Exception as e:
    print("no json:", e)' | tee -a "$OUT/$PREFIX.jsonl"
}

mark() { touch /tmp/device-call-mark; }

launches() {
    local log
    for log in "$OUT"/$PREFIX-$1.log; do
        echo "$(basename "$log"): $(grep -m1 -E '^ +cuLaunchKernel ' "$log" | awk '{print $NF / 5}') cuLaunchKernel a step"
    done
}

suite() {
    local t="python3 benchmarks/dp_throughput.py --profile --amp $1 --model $2 --size $3 --batch $4"
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$2-$3-np run "$1 $2 $3 compile" 80 $t --method compile
    TORCHINDUCTOR_CACHE_DIR=/tmp/c-$1-$2-$3-dp run "$1 $2 $3 auto" "$5" $t --policy auto
}

summary() {
    python3 -c 'import json, sys
for line in open(sys.argv[1]):
    try:
        r = json.loads(line)
    except ValueError:
        continue
    print(r.get("model"), r.get("policy"), "graphs", r.get("cuda_graphs"), "step", r.get("step_ms"), "host",
          r.get("host_ms"), "device", r.get("kernel_ms_per_step"), "first", r.get("first_step_s"), "amp", r.get("amp"),
          "peak", r.get("peak_gib"), *(["poisson", r["poisson"]] if "poisson" in r else []))' "$OUT/$PREFIX.jsonl"
}

gpu_tests() {
    local seconds=$4
    (( seconds > $(left) )) && seconds=$(left)
    TESTS=$1 PYTEST_ADDOPTS="-k '$2'" WORKERS=$3 TEST_TIMEOUT=$((seconds - 10)) LIMIT=$seconds OUT=$OUT/tests \
        bash .ci/gpu inductor 2>&1 | grep -E "PASSED|FAILED|ERROR|passed|failed|Timeout|Error" \
        | grep -v "^INTERNALERROR" | tail -60
}

keep() {
    mkdir -p "$OUT/$1"
    find "${TORCHINDUCTOR_CACHE_DIR:-/tmp/torchinductor_$(whoami)}" -name '*.py' -newer /tmp/device-call-mark \
        -size +20k 2>/dev/null | xargs -r grep -l "dp_norm_sq\|dp_per_sample" | head -4 \
        | while read -r f; do gzip -c "$f" >"$OUT/$1/$(basename "$f").gz"; done
}
mark
