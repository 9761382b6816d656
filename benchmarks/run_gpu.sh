#!/usr/bin/env bash
# The benchmark on the GPU machine (one H100, torch 2.11, Python 3.12, no network). From the repo root:
#   bash benchmarks/run_gpu.sh [bench.py arguments ...]
# e.g. bash benchmarks/run_gpu.sh --configs resnet18_32,wrn16_4_32 --check --budget-seconds 420
# Needs the Opacus wheel in .whl/ (git-ignored: carry it, run(carry=[".whl"])). Results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
shopt -s nullglob
wheels=(.whl/*.whl)
if (( ${#wheels[@]} )); then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${wheels[@]}"
    # opacus's wheel also ships top-level packages named `benchmarks` and `examples`; drop them so they
    # cannot shadow this repository's folders of the same names.
    rm -rf /tmp/site/benchmarks /tmp/site/examples
else
    echo "run_gpu.sh: no wheels in .whl/ - the Opacus columns will read 'fails: ModuleNotFoundError'" >&2
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec python3 benchmarks/bench.py "$@"
