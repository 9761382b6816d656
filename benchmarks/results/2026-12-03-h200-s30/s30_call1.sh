#!/usr/bin/env bash
# Session 30, call 1: the ghost convolutions over the padded grid (conv.GHOST_ON_GRID, off by default) on CUDA:
# their tests through inductor's default config (test_norm_bounds -k grid, test_core -k grid, test_properties, whose
# `shifted` cases turn the grid form on), then DP step times without and with --ghost-on-grid, alternating,
# WRN-16-4 and ResNet-18 (GN) at 32², batch 256, auto (the TF32 default). Each step skipped once LIMIT s are spent.
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
    timeout -k 5 "$cap" "$@" 2>>"$OUT/s30-call1-err.txt" | tail -1 | tee -a "$OUT/s30-call1.jsonl"
}
date -u
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor TORCHINDUCTOR_COMPILE_THREADS=1 \
  timeout -s INT -k 15 "${TEST_LIMIT:-170}" python3 -m pytest -q -n "${WORKERS:-15}" -p no:cacheprovider -rfs \
  --tb=short --durations=10 tests/test_norm_bounds.py tests/test_core.py tests/test_properties.py -k "grid or properties" \
  >"$OUT/call1-tests.log" 2>&1
echo "tests exit $?"
grep -v "PASSED" "$OUT/call1-tests.log" | tail -40
TP="python3 benchmarks/dp_throughput.py --size 32 --batch 256 --steps 30 --policy auto"
run "unfold wrn16_4" 100 $TP --model wrn16_4
run "grid wrn16_4" 100 $TP --model wrn16_4 --ghost-on-grid
run "unfold resnet18_gn" 140 $TP --model resnet18_gn
run "grid resnet18_gn" 140 $TP --model resnet18_gn --ghost-on-grid
run "unfold wrn16_4 again" 60 $TP --model wrn16_4
run "grid wrn16_4 again" 60 $TP --model wrn16_4 --ghost-on-grid
date -u
