#!/usr/bin/env bash
# Time a base revision and the working tree in one run on the GPU machine (same card, same call), so a
# change's cost is a ratio of two figures measured side by side. From the repo root:
#   bash benchmarks/before_after.sh REV [bench.py arguments ...]
# e.g. bash benchmarks/before_after.sh 662dfb7 --configs resnet18_32 --methods compile,dpcompile --policies mixed
# REV's tree is unpacked with git archive and installed (non-editable) beside it; the working tree is
# installed editable. Needs the wheels in .whl/ (carry it). Results: $OUT/before-REV.* and $OUT/after.*
# THROUGHPUT=1: the arguments are dp_throughput.py's instead (step and host times of one model, one GPU), each
# run's JSON line appended to $OUT/before-REV.jsonl and $OUT/after.jsonl; ROUNDS=n alternates before and after
# n times (the spread between calls is larger than a small change).
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
mkdir -p "$out"
after="working tree ($(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo -dirty))"
if [ -n "${THROUGHPUT:-}" ]; then  # both installed beside the tree, neither editable, so the rounds can alternate
    new=/tmp/dpcompile-after
    rm -rf "$new" && python3 -m pip install -q --no-deps --no-build-isolation --target "$new" . >/dev/null
    for round in $(seq 1 "${ROUNDS:-1}"); do
        echo "== round $round, before: $rev"
        (cd "$old" && PYTHONPATH="$old/site:$PYTHONPATH" python3 benchmarks/dp_throughput.py "$@" 2>&1) \
            | grep '^{' | tee -a "$out/before-$rev.jsonl"
        echo "== round $round, after: $after"
        PYTHONPATH="$new:$PYTHONPATH" python3 benchmarks/dp_throughput.py "$@" 2>&1 | grep '^{' | tee -a "$out/after.jsonl"
    done
    exit 0
fi
echo "== before: $rev"
(cd "$old" && PYTHONPATH="$old/site:$PYTHONPATH" python3 benchmarks/bench.py --out "$out" --name "before-$rev" "$@")
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
echo "== after: $after"
python3 benchmarks/bench.py --out "$out" --name after "$@"
