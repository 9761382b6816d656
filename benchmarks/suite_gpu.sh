#!/usr/bin/env bash
# The performance suite on one GPU within a time budget (torch 2.11, Python 3.12, no network). From the repo root:
#   CUDA_VISIBLE_DEVICES=0 BUDGET=480 bash benchmarks/suite_gpu.sh CONFIG_OR_GROUP ...
# e.g. BUDGET=480 bash benchmarks/suite_gpu.sh cifar              (resnet18_32, wrn16_4_32)
#      BUDGET=480 bash benchmarks/suite_gpu.sh resnet50_224 tv_resnet50_224
# Groups: bench.py --help (default, cifar, imagenet, tv, tv_cifar, tv_imagenet, suite).
#
# Work in order of importance, each phase one bench.py run adding to the same files (--resume):
#   1. fp32, the plain configs: $CORE (eager, compile, dpcompile with each of $POLICIES)
#   2. fp32, the plain configs: $PEERS
#   3. fp32, the plain configs: --largest-batch $LARGEST (only if LARGEST is set; compile and dp_* compile one setup
#      each and step it at every batch tried, the others set up per try). With SEARCH_WITH_TIMING=1, those of phase 1's
#      methods are searched in phase 1 right after their timing instead, through the timed setup (no compilation; but
#      on 2026-12-01 a DP compilation after such a search of torch.compile hung in inductor's compile workers, so the
#      default keeps the searches out of the timing phase)
#   4-5. bf16: phases 1 and 2 again
#   6-9. the torchvision/timm configs (tv_*, timm_*): fp32 core, fp32 peers, bf16 core, bf16 peers
# One JSON + MD per (config group, amp) in $OUT: $NAME-fp32, $NAME-bf16, $NAME-tv-fp32, $NAME-tv-bf16, plus a .log.
# A phase starts only with MIN_LEFT s of BUDGET left and is told the rest (--budget-seconds: no method starts
# later); at HARD_LIMIT s it gets SIGINT and bench.py keeps what it measured. Calling again with RESUME_DIR set
# to the earlier call's $OUT files (carried back in) continues where this one stopped.
#
# Environment: BUDGET (480), HARD_LIMIT (BUDGET + 90), MIN_LEFT (20), NAME (suite-<arguments joined by _>: the
#   device tool brings back no file whose name has a + in it),
#   AMPS ("fp32 bf16"), CORE (eager,compile,dpcompile), POLICIES (mixed,auto),
#   PEERS (opacus_oop,opacus_ghost_oop,fastdp,private_vision: Opacus fails on the stock in-place residual add),
#   LARGEST (e.g. compile,dp_mixed; default none), LARGEST_SECONDS (240: a DP search's first try may recompile,
#   125 s for ResNet-18 32² on 2026-12-01), SEARCH_WITH_TIMING (0), PEERS_DIR ($DPCOMPILE_PEERS, else .gpu/peers),
#   RESUME_DIR,
#   CUDNN_BENCHMARK (1),
#   BENCH_ARGS (more bench.py arguments, e.g. "--steps 20"). CORE= or PEERS= (empty) leaves that phase out.
# Largest batches only, after the timings: LARGEST=compile,dp_mixed AMPS=fp32 PEERS= RESUME_DIR=... (the timed
# phases then find their results and pass).
# Carry .whl (opacus, dp-accounting; .whl/hf: transformers, which fastDP imports) and .gpu/peers (git-ignored).
set -uo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
(( $# )) || { echo "usage: BUDGET=480 bash benchmarks/suite_gpu.sh CONFIG_OR_GROUP ..." >&2; exit 2; }
source .ci/gpu-wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1

BUDGET=${BUDGET:-480}
HARD_LIMIT=${HARD_LIMIT:-$((BUDGET + 90))}
MIN_LEFT=${MIN_LEFT:-20}
NAME=${NAME:-suite-$(IFS=_; echo "$*")}
AMPS=${AMPS:-fp32 bf16}
CORE=${CORE-eager,compile,dpcompile}
POLICIES=${POLICIES:-mixed,auto}
PEERS=${PEERS-opacus_oop,opacus_ghost_oop,fastdp,private_vision}
LARGEST=${LARGEST-}
LARGEST_SECONDS=${LARGEST_SECONDS:-240}
PEERS_DIR=${PEERS_DIR:-${DPCOMPILE_PEERS:-.gpu/peers}}
out=${OUT:-$PWD/runs}
mkdir -p "$out"
cudnn=(); [[ ${CUDNN_BENCHMARK:-1} == 1 ]] && cudnn=(--cudnn-benchmark)
read -r -a extra <<< "${BENCH_ARGS:-}"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
python3 -c 'import importlib.util as u, torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "|", " ".join(
    f"{m}={bool(u.find_spec(m))}" for m in ("torchvision", "timm", "transformers", "opacus")))'
[[ -d $PEERS_DIR ]] || echo "suite: no peers folder $PEERS_DIR (carry .gpu/peers): fastdp, private_vision unavailable" >&2

if [[ -n ${RESUME_DIR:-} ]]; then  # earlier calls' files: bench.py --resume adds to them
    for f in "$RESUME_DIR/$NAME"-*.json; do
        [[ -e $f && ! -e $out/$(basename "$f") ]] && cp "$f" "$out/" && echo "suite: resuming $f"
    done
fi

mapfile -t all < <(python3 benchmarks/bench.py --print-configs --configs "$(IFS=,; echo "$*")") || exit 2
(( ${#all[@]} )) || { echo "suite: no configs from: $*" >&2; exit 2; }
plain=(); tv=()
for c in "${all[@]}"; do
    case $c in tv_*|timm_*) tv+=("$c") ;; *) plain+=("$c") ;; esac
done
plain_csv=$(IFS=,; echo "${plain[*]}")
tv_csv=$(IFS=,; echo "${tv[*]}")
echo "suite: $NAME | plain: ${plain_csv:-none} | torchvision/timm: ${tv_csv:-none} | budget ${BUDGET}s | out $out"

phase() {  # phase NAME AMP METHODS CONFIGS [bench.py arguments]
    local name=$1 amp=$2 methods=$3 configs=$4
    shift 4
    [[ -n $configs && -n $methods ]] || return 0
    local now left hard
    now=$(date +%s)
    left=$((BUDGET - (now - start)))
    hard=$((HARD_LIMIT - (now - start)))
    if (( left < MIN_LEFT )); then
        echo "suite: budget spent, not run: $name [$amp] $methods on $configs"
        return 0
    fi
    echo "== suite $(date -u +%H:%M:%S) +$((now - start))s: $name [$amp] $methods on $configs (budget ${left}s)"
    local log=$out/$name.log n0=0
    [[ -e $log ]] && n0=$(wc -l <"$log")
    timeout -s INT -k 20 "$hard" python3 benchmarks/bench.py --configs "$configs" --methods "$methods" \
        --policies "$POLICIES" --amp "$amp" --peers "$PEERS_DIR" --budget-seconds "$left" --out "$out" \
        --name "$name" --resume "${cudnn[@]}" "${extra[@]}" "$@" >>"$log" 2>&1
    local status=$?
    # progress lines only (tables in the .md, everything in the .log); the end of the output if it failed
    tail -n +$((n0 + 1)) "$log" | grep -E '^\[ *[0-9.]+s\]' | tail -60
    if (( status != 0 )); then
        tail -n +$((n0 + 1)) "$log" | tail -15
        echo "suite: $name [$amp] exit $status$( ((status == 124 || status == 130)) && echo ' (time limit)')"
    fi
}

# With SEARCH_WITH_TIMING=1, LARGEST's methods that CORE times search right after their timing, through the timed setup
in_core=()
IFS=, read -r -a largest <<< "$LARGEST"
IFS=, read -r -a core <<< "$CORE"
[[ ${SEARCH_WITH_TIMING:-0} == 1 ]] && for m in "${largest[@]}"; do
    for c in "${core[@]}"; do
        [[ $m == "$c" || ( $c == dpcompile && $m == dp_* ) ]] && { in_core+=("$m"); break; }
    done
done
core_search=()
(( ${#in_core[@]} )) && core_search=(--largest-batch "$(IFS=,; echo "${in_core[*]}")" \
    --largest-batch-seconds "$LARGEST_SECONDS")

for amp in $AMPS; do
    search=(); [[ $amp == fp32 ]] && search=("${core_search[@]}")
    phase "$NAME-$amp" "$amp" "$CORE" "$plain_csv" "${search[@]}"
    phase "$NAME-$amp" "$amp" "$PEERS" "$plain_csv"
    if [[ $amp == fp32 && -n $LARGEST ]]; then
        phase "$NAME-$amp" "$amp" "$LARGEST" "$plain_csv" --largest-batch "$LARGEST" \
            --largest-batch-seconds "$LARGEST_SECONDS"
    fi
done
for amp in $AMPS; do
    for methods in "$CORE" "$PEERS"; do
        phase "$NAME-tv-$amp" "$amp" "$methods" "$tv_csv"
    done
done

echo
for md in "$out/$NAME"-*.md; do
    [[ -e $md ]] || continue
    echo "#### $(basename "$md")"
    head -3 "$md" | tail -1
    sed -n '/^## Summary/,$p' "$md"
done
echo "suite: done in $(( $(date +%s) - start ))s; files in $out"
