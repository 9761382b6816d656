#!/usr/bin/env bash
# Session 26, call 1: the "CantSplit" traceback of the ghost tied LM, the tied views and the augmentation-multiplicity
# embedding case (-s: pytest shows a passing test's output only so); then the suite's ResNet-50 (GN) 224² b32 in bf16
# with the peers, beside non-private torch.compile and dpcompile auto in the same run.
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
s25=benchmarks/results/2026-12-03-h200-s25
source .ci/gpu-wheels
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1
date -u
DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor PYTHONPATH=$PWD/$s25:$PWD:$PYTHONPATH PYTHONUNBUFFERED=1 \
  timeout 150 python3 -m pytest -q -s -p no:cacheprovider -p report_lowering_errors \
  "tests/test_tied.py::test_tied_ghost_matches_torch_func[ghost-tied_lm]" \
  "tests/test_augmult.py::test_views_match_reference[ghost-embedding_batch_shared_rows]" >"$OUT/cantsplit.log" 2>&1
echo "cantsplit exit $?"
grep -n "^===\|Error\|File .*torch/_inductor" "$OUT/cantsplit.log" | tail -40
date -u
BUDGET=${BUDGET:-380} HARD_LIMIT=${HARD_LIMIT:-420} AMPS=bf16 CORE=compile,dpcompile POLICIES=auto \
  PEERS=opacus_oop,fastdp,private_vision NAME=s26-r50 bash benchmarks/suite_gpu.sh resnet50_224 2>&1 | tail -30
date -u
