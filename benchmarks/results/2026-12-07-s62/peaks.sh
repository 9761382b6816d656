# Sourced by s62_call1.sh and s62_call2.sh after benchmarks/device_call.sh (which sets OUT, PREFIX's log names and left):
#   peak LABEL CAP ARGS...   peak_memory.py's DP peak with ops.KERNEL_OUTPUTS_AFTER_OPERANDS on and off (and, with
#                            NP=1, non-private torch.compile's), each process in the background under CAP seconds
#                            (at most what is left of LIMIT); ARGS are the config's peak_memory.py arguments;
#   show LABEL               one line per log of that label: the peaks and where the peak falls.
peak() {
    local label=$1 cap=$2
    shift 2
    (( cap > $(left) )) && cap=$(left)
    echo "== peak $label $(date -u +%T)"
    for on in True False; do
        TORCHINDUCTOR_CACHE_DIR=/tmp/c-$label-$on timeout -k 5 $cap python3 benchmarks/with_plan.py \
            KERNEL_OUTPUTS_AFTER_OPERANDS=$on -- benchmarks/peak_memory.py --cudnn-benchmark "$@" --method dp \
            --policy auto > $OUT/$PREFIX-$label-after-$on.log 2>&1 &
    done
    [ -n "${NP:-}" ] && TORCHINDUCTOR_CACHE_DIR=/tmp/c-$label-np timeout -k 5 $cap python3 benchmarks/peak_memory.py \
        --cudnn-benchmark "$@" --method compile > $OUT/$PREFIX-$label-compile.log 2>&1 &
}

show() {
    for f in $OUT/$PREFIX-$1-*.log; do
        echo "$(basename $f): $(tail -1 $f | python3 -c 'import json, sys
try:
    r = json.loads(sys.stdin.read())
    print({k: r[k] for k in ("before_step_gib", "peak_gib", "max_memory_allocated_gib", "peak_after_allocs",
                             "live_blocks", "peak_reached_by")})
except Exception as e:
    print("no json:", e)' | cut -c1-400)"
    done
}
