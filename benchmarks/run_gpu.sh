#!/usr/bin/env bash
# The benchmark on the GPU machine (one H100, torch 2.11, Python 3.12, no network). From the repo root:
#   bash benchmarks/run_gpu.sh [bench.py arguments ...]
# e.g. bash benchmarks/run_gpu.sh --configs resnet18_32,wrn16_4_32 --check --budget-seconds 420
# Needs the Opacus wheel in .whl/ (git-ignored: carry it, run(carry=[".whl"])). Results go to $OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
exec python3 benchmarks/bench.py "$@"
