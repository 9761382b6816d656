#!/usr/bin/env bash
# Session 25, call 2: the pin's own lowering (dpcompile::stored ordered by the shape environment) on torch 2.11/CUDA:
# torchvision's ViT through inductor without the fallback (lowering_errors.py), the tracebacks of the "CantSplit"
# fallbacks (report_lowering_errors.py around the tied and augmentation-multiplicity tests that warned), and beside
# them test_norm_bounds and test_vision_libraries through inductor (.ci/gpu, 10 workers, 480 s a test).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
here=benchmarks/results/2026-12-03-h200-s25
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
date -u; python3 -c 'import torch; print("torch", torch.__version__, torch.cuda.get_device_name())'
(
  timeout 200 python3 $here/lowering_errors.py vit >"$OUT/vit.log" 2>&1; echo "vit exit $?" >>"$OUT/vit.log"
  DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor PYTHONPATH=$PWD/$here:$PYTHONPATH \
    timeout 300 python3 -m pytest -q -p no:cacheprovider -p report_lowering_errors \
    "tests/test_tied.py::test_tied_ghost_matches_torch_func[ghost-tied_lm]" tests/test_tied.py::test_tied_ghost_with_views_per_sample \
    "tests/test_augmult.py::test_views_match_reference[ghost-embedding_batch_shared_rows]" >"$OUT/cantsplit.log" 2>&1
  echo "cantsplit exit $?" >>"$OUT/cantsplit.log"
) &
TESTS="tests/test_norm_bounds.py tests/test_vision_libraries.py" WORKERS=10 LIMIT=${LIMIT:-380} TEST_TIMEOUT=480 \
  bash .ci/gpu inductor | tail -40
wait
grep -n "^===\|^---\|Error\|exit" "$OUT/vit.log" | head -20
grep -n "^===\|Error:\|Exception:\|exit\|passed\|failed" "$OUT/cantsplit.log" | head -20
gzip -f "$OUT/tests-inductor.log"
date -u
