#!/usr/bin/env bash
# For the fifty-third session (written in the fifty-second). (1) grouped_wgrad.py: per-sample conv weight gradients as
# one grouped cuDNN weight gradient (groups = B) against the rewrite's forms (fp32 TF32 shifted/unfold, bf16 Triton
# kernel) and cuDNN's batch weight gradient, at the suite's layer shapes. Predicted: in fp32 the grouped form between
# cuDNN's batch wgrad and the shifted form at 32² (0.28–0.79 ms for 64→64 at B 256), so that it beats the shifted
# form on most stride-1 3×3 layers if cuDNN's grouped kernels are efficient at groups = 256; in bf16 slower than the
# Triton kernel. And the Triton kernel on TF32 for the fp32 rows (not timed since its channels-last operands and
# joint tiles; 33rd session: 0.83 against the shifted form's 0.79 ms at 32² 64→64): if it wins there, float32 in
# conv.IMPLICIT_CONV_DTYPES and the site's tf32 passed to the op (the kernel takes tf32; the rule passes none). If
# the grouped form wins in fp32 by ≥ 25% on the CIFAR layers: the rule's impl "grouped" (CPU-only now, under ieee_convolutions) for TF32 sites on CUDA,
# whose release is c·ĝ of the stored values, so cuDNN's algorithm choice cannot under-clip. (2) The
# suite's ResNet-18 (GN) 224² b64 fp32, one run (for the one-run table of the committed code). Run alone, carry .whl:
#   bash benchmarks/results/2026-12-06-s52/s53_call1.sh
cd "$(dirname "$0")/../../.."
PREFIX=s53-call1
LIMIT=${LIMIT:-570}
source benchmarks/device_call.sh
date -u
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 250 python3 benchmarks/results/2026-12-06-s52/grouped_wgrad.py >"$OUT/grouped_wgrad.jsonl" 2>"$OUT/grouped_wgrad.err"
grep "^row:" "$OUT/grouped_wgrad.err"; grep -v "^row:" "$OUT/grouped_wgrad.err" | tail -3
suite fp32 resnet18_gn 224 64 160
summary
date -u
