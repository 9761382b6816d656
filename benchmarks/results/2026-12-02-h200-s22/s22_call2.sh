#!/usr/bin/env bash
# Session 22, call 2: where WRN-16-4's host time goes (the step is host-bound: host ≈ step, 10.4 ms of kernels in a
# 13.7–16.9 ms step, call 1): inductor's CUDA wrapper code of the DP step and of non-private compile (kernel counts
# by source), and what one dpcompile::tf32_bmm call costs the host against bmm; then ViT-S/16 224² b64 fp32, both
# TF32 options, against compile and fastDP in one suite run (issue 10's peer target: ≥ 2×).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
code() {  # $1 label, then dp_throughput arguments: the run's inductor wrapper modules (> 40 kB) into $OUT/code-$1
  local label=$1; shift
  rm -rf /tmp/ic-$label
  TORCHINDUCTOR_CACHE_DIR=/tmp/ic-$label timeout 120 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 \
    --batch 256 --steps 20 "$@" > "$OUT/wrn-$label.txt" 2>&1
  echo "$label: $(grep '^{' "$OUT/wrn-$label.txt" | tail -1 | cut -c1-160)"
  mkdir -p "$OUT/code-$label"
  find /tmp/ic-$label -name 'c*.py' -size +40k -exec cp {} "$OUT/code-$label/" \;
  ls -la "$OUT/code-$label" | tail -4
}
code dp --policy auto --per-sample-tf32 --ghost-tf32
code compile --method compile
python3 - <<'PY'
import time, torch, dpcompile.ops  # noqa: F401
a = torch.randn(4, 8, 8, device="cuda")
for name, f in (("bmm", torch.bmm), ("tf32_bmm", torch.ops.dpcompile.tf32_bmm)):
    for _ in range(200): f(a, a)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(2000): f(a, a)
    host = (time.perf_counter() - t) / 2000; torch.cuda.synchronize()
    print(f"{name}: {1e6 * host:.1f} us host per call")
PY
date -u
BUDGET=300 HARD_LIMIT=330 AMPS=fp32 CORE=compile,dp_auto_alltf32 PEERS=fastdp POLICIES=auto NAME=s22-vit-peer \
  bash benchmarks/suite_gpu.sh vit_s16_224 2>&1 | tail -8
date -u
