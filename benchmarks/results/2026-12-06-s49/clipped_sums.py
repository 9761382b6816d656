"""The clipped sums' reduction kernel at ResNet-50 bf16's shapes, alone (for the fiftieth session's device call).

In ResNet-50 (GN) 224² b32 bf16 `auto` (s49 call 2b, H100) the DP step's largest kernel (0.572 ms a step, 4% of its
device time) is inductor's fusion of six layers' clipped sums, Σ_i c_i g_i over the batch of layer3's six 256→256
3×3 per-sample gradients (B = 32, 589,824 weights each, bf16, the per-sample kernel's stored layout): 226 MB read
at about 0.4 TB/s, an eighth of the card's bandwidth (its generated code, read through inductor's Triton code
generation on a CPU: one `triton_red` kernel, six [XBLOCK, R0_BLOCK] accumulators, the batch as the loop). Here,
compiled by inductor as the rewrite writes it (passes.rewrite.weighted_sum: masked, scaled, summed over dim 0): one
layer, six layers in one graph (as the step fuses them), and six layers each in a graph of its own, the batch
dynamic as in the DP graphs; and, for the floor, a plain sum over dim 0 and cuBLAS's GEMV (c @ g, no masking; and after a masked copy, which reads and writes g
once more). Added in the fiftieth session: the one layer with the batch static (inductor's persistent reduction), and a
Triton kernel of our own (a [BLOCK_B, BLOCK_N] tile of the (B, N) view, the batch as its loop, masked and scaled as
weighted_sum) at a few tilings. One JSON line per form: median ms (CUDA events), GB/s of g read.
    python benchmarks/results/2026-12-06-s49/clipped_sums.py [--batch 32] [--layers 6]
    python benchmarks/results/2026-12-06-s49/clipped_sums.py --smoke   (the plumbing on a CPU, eager)"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import layer_costs  # noqa: E402  (benchmarks/layer_costs.py: its CUDA-event timer)
from dpcompile.passes.rewrite import weighted_sum  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--batch", type=int, default=32)
p.add_argument("--layers", type=int, default=6)
p.add_argument("--smoke", action="store_true")
args = p.parse_args()
device = "cpu" if args.smoke else "cuda"
P, C, K = (8, 8, 3) if args.smoke else (256, 256, 3)
B, L = args.batch, args.layers


def timed(fn, reps=20):
    """Median ms: CUDA events (layer_costs.timed), or the wall clock once for the CPU smoke run."""
    if device == "cuda":
        return layer_costs.timed(fn, reps)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def stored(i):  # (B, P, C, K, K) laid out as conv_kernels.per_sample_buffer: (B, P, K, K, C) contiguous, permuted
    torch.manual_seed(i)
    return torch.randn(B, P, K, K, C, device=device, dtype=torch.bfloat16).permute(0, 1, 4, 2, 3)


gs = [stored(i) for i in range(L)]
c = torch.rand(B, device=device)
g_static, c_static = gs[0].clone(), c.clone()  # never marked dynamic
for t in (*gs, c):  # the batch dynamic, as in the DP graphs: inductor's reduction configs depend on it (with one
    torch._dynamo.mark_dynamic(t, 0)  # dynamic size and 3+ loads its outer config reads one row a loop iteration)
compile_ = (lambda f: f) if args.smoke else torch.compile
one = compile_(lambda c, g: weighted_sum(c, g))
fused = compile_(lambda c, *g: [weighted_sum(c, x) for x in g])
plain = compile_(lambda g: g.sum(0))
one_static = compile_(lambda c, g: weighted_sum(c, g))
gemv_masked = compile_(lambda c, g: c.to(g.dtype) @ torch.where(c.view(-1, 1) > 0, g.reshape(g.shape[0], -1), 0))
bytes_one = gs[0].numel() * gs[0].element_size()
forms = {
    "one layer (weighted_sum)": (lambda: one(c, gs[0]), 1),
    f"{L} layers in one graph (as the step fuses them)": (lambda: fused(c, *gs), L),
    f"{L} layers, a graph each": (lambda: [one(c, g) for g in gs], L),
    "one layer, plain sum over dim 0": (lambda: plain(gs[0]), 1),
    "one layer, GEMV c @ g (no masking)": (lambda: c.to(gs[0].dtype) @ gs[0].reshape(B, -1), 1),
    "one layer, masked copy then GEMV (compiled)": (lambda: gemv_masked(c, gs[0]), 1),
    "one layer, batch static (weighted_sum)": (lambda: one_static(c_static, g_static), 1),
}
if device == "cuda" or os.environ.get("TRITON_INTERPRET") == "1":  # the smoke run checks the kernel in the interpreter
    import triton
    import triton.language as tl

    @triton.jit
    def wsum(g_ptr, c_ptr, out_ptr, B, N, stride_b, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
        cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros([BLOCK_B, BLOCK_N], tl.float32)
        for b0 in range(0, B, BLOCK_B):
            rows = b0 + tl.arange(0, BLOCK_B)
            ci = tl.load(c_ptr + rows, mask=rows < B, other=0.0)
            x = tl.load(g_ptr + rows[:, None] * stride_b + cols[None, :], mask=(rows[:, None] < B) & (cols[None, :] < N),
                        other=0.0).to(tl.float32)
            acc += tl.where(ci[:, None] > 0, x * ci.to(tl.bfloat16).to(tl.float32)[:, None], 0.0)
        tl.store(out_ptr + cols, tl.sum(acc, 0).to(out_ptr.dtype.element_ty), mask=cols < N)

    def ours(g, block_b, block_n, warps):
        flat = g.permute(0, 1, 3, 4, 2)  # the stored (B, P, K, K, C) order: each sample's row contiguous
        out = torch.empty(flat.shape[1:], device=g.device, dtype=g.dtype)
        n = out.numel()
        wsum[(triton.cdiv(n, block_n),)](flat, c, out, B, n, flat.stride(0), BLOCK_B=block_b, BLOCK_N=block_n,
                                         num_warps=warps)
        return out
    for bb, bn, w in ((1, 1024, 4), (4, 1024, 4), (8, 512, 4), (8, 1024, 8), (16, 256, 4), (4, 2048, 8)):
        forms[f"one layer, own Triton kernel BLOCK_B {bb} BLOCK_N {bn} warps {w}"] = (
            lambda bb=bb, bn=bn, w=w: ours(gs[0], bb, bn, w), 1)
    exact = (c.double().view(-1, 1, 1, 1, 1) * gs[0].double()).sum(0).permute(0, 2, 3, 1)  # ours: (P, K, K, C)
    got = ours(gs[0], 8, 512, 4)
    print(json.dumps({"own kernel relative error": ((got.double() - exact).norm() / exact.norm()).item()}), flush=True)
for name, (fn, layers) in forms.items():
    ms = timed(fn)
    print(json.dumps({"form": name, "batch": B, "ms": round(ms, 4), "gb_s": round(layers * bytes_one / ms / 1e6, 1),
                      "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                      "torch": torch.__version__}), flush=True)
