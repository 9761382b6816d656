#!/usr/bin/env bash
# Sixty-fourth session: the peers against the committed code, on the two suite configs closest to issue 10's
# "≥ 2× the fastest peer" target (ViT-S/16 224² b64 fp32: fastDP 1.51× in the nineteenth session; ResNet-50 (GN)
# 224² b32 fp32: Opacus 2.07× in the nineteenth), each with non-private torch.compile and dpcompile `auto` in the
# same process (bench.py: 20 timed steps after 3 warm-up steps, wall clock, cudnn.benchmark for every method).
# Predicted: dpcompile's `auto` 65–68 ms (ViT, the sixtieth's device time 65.98 ms plus little host) and 35 ms
# (ResNet-50, the fifty-eighth's step 35.9 ms); the peers as in the nineteenth (ViT fastDP about 100 ms, ResNet-50
# Opacus about 75 ms), so about 1.5× and 2.1×.
# Run alone from the repository root, carry .whl (with .whl/hf: transformers and its dependencies, which fastDP
# imports) and .gpu (.gpu/peers: ../shared/peers copied).
cd "$(dirname "$0")/../../.."
PREFIX=s64-peers
LIMIT=${LIMIT:-520}
mkdir -p "${OUT:-/tmp/out}"
source benchmarks/device_call.sh
python3 -c 'import transformers, opacus; print("transformers", transformers.__version__, "opacus", opacus.__version__)'
timeout -s INT -k 20 "$(left)" python3 benchmarks/bench.py --configs vit_s16_224,resnet50_224 \
    --methods compile,dp_auto,fastdp,opacus_oop --peers .gpu/peers --cudnn-benchmark \
    --budget-seconds $(( $(left) - 40 )) --out "$OUT" --name s64-peers-fp32 >"$OUT/s64-peers.log" 2>&1
sed -n '/^| model, input, batch | non-DP/,/^$/p' "$OUT/s64-peers-fp32.md" 2>/dev/null || tail -30 "$OUT/s64-peers.log"
grep -A12 "^## Details" "$OUT/s64-peers-fp32.md" 2>/dev/null
date -u
