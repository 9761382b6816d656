#!/usr/bin/env bash
# Session 24, call 1: the previous session's last changes on CUDA through inductor (the pin op `dpcompile::stored`,
# the capture on inductor's own decompositions with `passes.expand_composites`, `bounds.as_bounds`): WRN-16-4's DP
# backward launch count (225 expected, as before the pin op) and the tests of the norm bounds, tied parameters,
# privacy engine, augmentation multiplicity and reparametrised layers (do their batch-of-one recompiles remain?).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
python3 -c 'import torch; print("torch", torch.__version__)'
TORCHINDUCTOR_CACHE_DIR=/tmp/ic-wrn timeout 150 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 \
  --batch 256 --steps 30 --policy auto --per-sample-tf32 --ghost-tf32 > "$OUT/wrn.txt" 2>&1
grep '^{' "$OUT/wrn.txt" | tail -1
f=$(grep -l "dp_certified_norms" $(find /tmp/ic-wrn -name 'c*.py' -size +40k) | xargs grep -l "def call(self, args)" | head -1)
python3 benchmarks/results/2026-12-02-h200-s22/kernel_attribution.py "$f" | tail -25
grep -c "extern_kernels\.\|torch\.ops\.\|\.run(" "$f"
gzip -c "$f" > "$OUT/wrn-dp-backward-wrapper.py.gz"
date -u
TESTS="tests/test_norm_bounds.py tests/test_tied.py tests/test_privacy_engine.py tests/test_augmult.py tests/test_reparametrised.py" \
  WORKERS=15 LIMIT=400 TEST_TIMEOUT=300 bash .ci/gpu inductor | tail -40
gzip -f "$OUT/tests-inductor.log"
date -u
