#!/usr/bin/env bash
# Session 22, call 3: dpcompile::tf32_bmm through the dispatcher with one cuBLAS flag flipped (tf32-bmm-dispatch.patch)
# against the custom_op that saved and restored every precision setting: host µs per call, then WRN-16-4 32² b256
# fp32 with both TF32 options new/old/new (host-bound step); the new code's inductor wrapper for kernel counts; then
# the precision and norm-bound tests on CUDA through inductor (the new op, its restore test, the conv TF32 Grams).
set -u
cd "$(dirname "$0")/../../.."
export OUT=${OUT:-/tmp/out}
here=benchmarks/results/2026-12-02-h200-s22
date -u
source .ci/gpu-wheels
export PYTHONPATH=$PWD:$PYTHONPATH
python3 -m pip install -q --no-deps --no-build-isolation -e . >/dev/null
python3 - <<'PY'
import time, torch, dpcompile.ops  # noqa: F401
from dpcompile.precision import tf32_products
@torch.library.custom_op("s22::old_tf32_bmm", mutates_args=(), tags=(torch.Tag.flexible_layout,))
def old(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    with tf32_products():
        return torch.bmm(a, b)
a = torch.randn(4, 8, 8, device="cuda")
for name, f in (("bmm", torch.bmm), ("tf32_bmm (new)", torch.ops.dpcompile.tf32_bmm.default),
                ("custom_op + tf32_products (old)", torch.ops.s22.old_tf32_bmm.default)):
    for _ in range(200): f(a, a)
    torch.cuda.synchronize(); t = time.perf_counter()
    for _ in range(5000): f(a, a)
    host = (time.perf_counter() - t) / 5000; torch.cuda.synchronize()
    print(f"{name}: {1e6 * host:.1f} us host per call")
PY
wrn() {  # $1 label
  TORCHINDUCTOR_CACHE_DIR=/tmp/ic-$1 timeout 110 python3 benchmarks/dp_throughput.py --model wrn16_4 --size 32 \
    --batch 256 --steps 30 --policy auto --per-sample-tf32 --ghost-tf32 > "$OUT/wrn-$1.txt" 2>&1
  echo "$1: $(grep '^{' "$OUT/wrn-$1.txt" | tail -1 | cut -c1-130) host_ms $(grep -o '"host_ms": [0-9.]*' "$OUT/wrn-$1.txt")"
}
wrn new-1
(cd /tmp/ic-new-1 && find . -name 'c*.py' -size +40k | tar czf "$OUT/code-dp-wrn.tgz" -T -)
git apply -R "$here/tf32-bmm-dispatch.patch" && wrn old-1
git apply "$here/tf32-bmm-dispatch.patch" && wrn new-2
git diff --stat 2>/dev/null | tail -1
date -u
TESTS="tests/test_precision.py tests/test_norm_bounds.py" WORKERS=14 LIMIT=300 TEST_TIMEOUT=280 \
  bash .ci/gpu inductor | tail -25
date -u
