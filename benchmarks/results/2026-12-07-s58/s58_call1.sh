#!/usr/bin/env bash
# Fifty-eighth session, call 1: which aten op and input shapes launch ResNet-50 (GN) fp32's align-1 TF32 GEMM kernel
# (clipped_step.py --who, the fifty-second session's open question), then the suite's ResNet-50 (GN) 224² b32 fp32 row
# at this code (the snippet recorder in: first step). Run alone from the repository root, carry .whl:
#   bash benchmarks/results/2026-12-07-s58/s58_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s58-call1
LIMIT=${LIMIT:-560}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
python3 -c 'import torch; print(torch.__version__)'
TORCHINDUCTOR_CACHE_DIR=/tmp/c-who timeout 260 python3 benchmarks/results/2026-12-06-s50/clipped_step.py \
    --model resnet50_gn --fp32 --who >"$OUT/clipped_step-r50-fp32-who.json" 2>"$OUT/clipped_step-r50-fp32-who.err"
tail -3 "$OUT/clipped_step-r50-fp32-who.err"
python3 - "$OUT/clipped_step-r50-fp32-who.json" <<'PY'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    sys.exit(f"no json: {e}")
print("device ms", r["device_ms_per_step"], r["device"], r["torch"])
for k, v in r["top"][:12]:
    print(f"{v:8.4f} {k}")
for k, per in r["launchers"].items():
    print("==", k)
    for op, n in sorted(per.items(), key=lambda kv: -kv[1])[:6]:
        print("   ", n, op[:200])
PY
(( $(left) > 200 )) && suite fp32 resnet50_gn 224 32 $(( $(left) - 90 ))
summary
date -u
