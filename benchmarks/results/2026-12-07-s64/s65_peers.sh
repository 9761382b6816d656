#!/usr/bin/env bash
# For the sixty-fifth session (written in the sixty-fourth): the suite's torchvision/timm configs (BENCHMARKS.md's
# older overview: H200 runs of the twenty-sixth to twenty-eighth sessions) with the committed code, non-private
# torch.compile, dpcompile `auto` and the peers in one process per config (bench.py, as s64_peers.sh ran them).
#   CALL=1: tv_resnet18_32, timm_vit_s16_224 in fp32   (the overview: 2.65×, 1.31× of compile; peers 3.36×, 1.46×)
#   CALL=2: tv_resnet18_224, tv_resnet50_224 in fp32   (2.45×, 1.92×; peers 2.01×, 2.48×)
#   CALL=3, 4: the same pairs under bf16 autocast        (1.93×, 2.15×; 2.54×, 1.55×)
# Opacus fails on torchvision's in-place residual add (`out += identity`), so the torchvision configs run fastDP and
# private_vision; timm's ViT runs fastDP and Opacus. private_vision fails under bf16 autocast, fastDP too on ViT.
# Predicted: dpcompile's ratios to compile near the own-model rows of the suite table (ResNet-18 32² 1.55× device,
# ViT-S/16 1.28×), but by the wall clock (host-bound configs move with the host).
# Run alone from the repository root, carry .whl and .gpu (.gpu/peers: ../shared/peers copied):
#   CALL=1 bash benchmarks/results/2026-12-07-s64/s65_peers.sh
cd "$(dirname "$0")/../../.."
PREFIX=s65-peers-${CALL:?CALL=1 to 4}
LIMIT=${LIMIT:-540}
mkdir -p "${OUT:-/tmp/out}"
source benchmarks/device_call.sh
case $CALL in
1) configs=tv_resnet18_32,timm_vit_s16_224 amp=fp32 ;;
2) configs=tv_resnet18_224,tv_resnet50_224 amp=fp32 ;;
3) configs=tv_resnet18_32,timm_vit_s16_224 amp=bf16 ;;
4) configs=tv_resnet18_224,tv_resnet50_224 amp=bf16 ;;
esac
configs=${CONFIGS:-$configs}  # CONFIGS=smoke: a dry run of the script on a CPU
methods=compile,dp_auto,fastdp,private_vision,opacus
[ "$amp" = bf16 ] && methods=compile,dp_auto,fastdp,opacus
timeout -s INT -k 20 "$(left)" python3 benchmarks/bench.py --configs "$configs" --amp "$amp" \
    --methods "$methods" --peers .gpu/peers --cudnn-benchmark --budget-seconds $(( $(left) - 40 )) \
    --out "$OUT" --name "s65-peers-$CALL-$amp" >"$OUT/s65-peers-$CALL.log" 2>&1
sed -n '/^| model, input, batch | non-DP/,/^$/p' "$OUT/s65-peers-$CALL-$amp.md" 2>/dev/null || tail -30 "$OUT/s65-peers-$CALL.log"
grep -A12 "^## Details" "$OUT/s65-peers-$CALL-$amp.md" 2>/dev/null
date -u
