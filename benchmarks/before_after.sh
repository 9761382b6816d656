#!/usr/bin/env bash
# Time a base revision and the working tree in one run on the GPU machine (same card, same call), so a
# change's cost is a ratio of two figures measured side by side. From the repo root:
#   bash benchmarks/before_after.sh REV [bench.py arguments ...]
# e.g. bash benchmarks/before_after.sh 662dfb7 --configs resnet18_32 --methods compile,dpcompile --policies mixed
# REV's tree is unpacked with git archive and installed (non-editable) beside it; the working tree is
# installed editable. Needs the wheels in .whl/ (carry it). Results: $OUT/before-REV.* and $OUT/after.*
set -euo pipefail
cd "$(dirname "$0")/.."
rev=$1
shift
source .ci/gpu-wheels
out=${OUT:-$PWD/runs}
old=/tmp/dpcompile-before
rm -rf "$old" && mkdir -p "$old"
git archive "$rev" | tar -x -C "$old"
python3 -m pip install -q --no-deps --no-build-isolation --target "$old/site" "$old" >/dev/null
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
echo "== before: $rev"
(cd "$old" && PYTHONPATH="$old/site:$PYTHONPATH" python3 benchmarks/bench.py --out "$out" --name "before-$rev" "$@")
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
echo "== after: working tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty))"
python3 benchmarks/bench.py --out "$out" --name after "$@"
