"""Per-sample conv weight gradients as ONE grouped cuDNN weight gradient (groups = B: the batch folded into the
channels, x as (1, B·C_in, H, W), g as (1, B·C_out, HO, WO), weight (B·C_out, C_in, kh, kw)), against the forms the
rewrite uses on CUDA (ConvRule.per_sample with the impl the rule picks on CUDA, compiled:
fp32 on TF32, shifted products for stride 1, unfold + bmm otherwise; bf16: the Triton implicit GEMM;
for fp32 rows also that kernel on TF32, "triton_tf32_ms", last timed against
the shifted form in the thirty-third session, before its channels-last operands and joint tiles) and against cuDNN's
non-private weight gradient of the same batch (the floor).
Written in the fifty-second session to decide, by measurement, whether a "grouped" per-sample form is worth building
(the fp32 per-sample products are ResNet-18 32² fp32's and WRN-16-4 fp32's largest DP cost: the shifted form's
operand assembly alone 0.54 ms a step on ResNet-18). The DP graphs hold x and g channels-last on CUDA; the grouped
form needs them NCHW (the fold of B into channels is a view only there), so it is timed from channels-last operands,
the conversion included ("grouped_from_cl_ms"), and from NCHW ones ("grouped_ms"). Each per-sample result is compared
with float64 per-sample gradients of the first 8 samples (relative to the largest entry). One JSON line per shape and
dtype (and a readable "row:" line of it on stderr); run on a GPU:
    python benchmarks/results/2026-12-06-s52/grouped_wgrad.py"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from dpcompile.conv_kernels import per_sample_conv2d_grad
from dpcompile.passes.rules.conv import ConvRule

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from layer_costs import conv_site, timed as timed_ms  # noqa: E402

torch.backends.cudnn.allow_tf32 = True
torch._dynamo.config.recompile_limit = 64


def timed(fn):
    return round(timed_ms(fn, 20), 4)


def grouped(g, x, kernel, stride, padding, dilation):
    """(B, C_out, C_in, kh, kw): one weight gradient of a convolution with B groups; the rule's "grouped" form
    (ops.per_sample_conv_weight_grad) with cuDNN's TF32 allowed where that op forces IEEE convolutions."""
    B, P, C = g.shape[0], g.shape[1], x.shape[1]
    xf = x.contiguous().reshape(1, B * C, *x.shape[2:])
    gf = g.contiguous().reshape(1, B * P, *g.shape[2:])
    w = torch.empty(B * P, C, *kernel, device=x.device, dtype=x.dtype)
    dw = torch.ops.aten.convolution_backward(gf, xf, w, None, stride, padding, dilation, False, [0, 0], B,
                                             [False, True, False])[1]
    return dw.reshape(B, P, C, *kernel)


SHAPES = [  # (name, B, C_in, C_out, H, kernel, stride, padding)
    ("r18/wrn 32² 64→64", 256, 64, 64, 32, 3, 1, 1),
    ("wrn 32² 16→64", 256, 16, 64, 32, 3, 1, 1),
    ("r18/wrn 32²→16² 64→128 s2", 256, 64, 128, 32, 3, 2, 1),
    ("r18/wrn 16² 128→128", 256, 128, 128, 16, 3, 1, 1),
    ("r18/wrn 8² 256→256", 256, 256, 256, 8, 3, 1, 1),
    ("r18 224 56² 64→64 b64", 64, 64, 64, 56, 3, 1, 1),
    ("r50 56² 64→64 b32", 32, 64, 64, 56, 3, 1, 1),
    ("r50 14² 256→256 b32", 32, 256, 256, 14, 3, 1, 1),
    ("r50 56² 1x1 256→64 b32", 32, 256, 64, 56, 1, 1, 0),
]

torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    torch._dynamo.reset()
    for name, B, C, P, H, k, s, p in SHAPES:
        x = torch.randn(B, C, H, H, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        HO = (H + 2 * p - k) // s + 1
        g = torch.randn(B, P, HO, HO, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        kernel, stride, padding, dilation, w_shape = [k, k], [s, s], [p, p], [1, 1], (P, C, k, k)
        w = torch.empty(w_shape, device="cuda", dtype=dtype)
        row = {"shape": name, "dtype": str(dtype).split(".")[-1], "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}
        row["cudnn_wgrad_ms"] = timed(lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, stride, padding, dilation, False, [0, 0], 1, [False, True, False]))
        results = {}
        try:  # the rule's own form on CUDA: the Triton kernel for bf16, else shifted or unfold on TF32 (fp32)
            rule, site = ConvRule(), conv_site(g, x, w, s, p, 1)
            site = dataclasses.replace(site, impl=rule.implementation(site, "per_sample"), tf32=dtype == torch.float32)
            row["current"] = site.impl
            current = torch.compile(lambda g, x, w: rule.per_sample(site, g, x, w))
            results["current"] = current(g, x, w)
            row["current_ms"] = timed(lambda: current(g, x, w))
        except Exception as e:  # noqa: BLE001
            row["current_error"] = repr(e)[:200]
        if dtype == torch.float32 and k > 1:  # the Triton kernel on TF32 (IMPLICIT_CONV_DTYPES lists 16-bit only)
            try:
                results["triton_tf32"] = per_sample_conv2d_grad(g, x, kernel, stride, padding, dilation, tf32=True)
                row["triton_tf32_ms"] = timed(lambda: per_sample_conv2d_grad(g, x, kernel, stride, padding, dilation,
                                                                             tf32=True))
            except Exception as e:  # noqa: BLE001
                row["triton_tf32_error"] = repr(e)[:200]
        try:
            results["grouped"] = grouped(g, x, kernel, stride, padding, dilation)
            row["grouped_from_cl_ms"] = timed(lambda: grouped(g, x, kernel, stride, padding, dilation))
            xc, gc = x.contiguous(), g.contiguous()
            row["grouped_ms"] = timed(lambda: grouped(gc, xc, kernel, stride, padding, dilation))
        except Exception as e:  # noqa: BLE001
            row["grouped_error"] = repr(e)[:200]
        exact = torch.stack([torch.ops.aten.convolution_backward(
            g[i:i + 1].double(), x[i:i + 1].double(), w.double(), None, stride, padding, dilation, False, [0, 0], 1,
            [False, True, False])[1] for i in range(min(B, 8))])
        scale = exact.abs().amax().item()
        for form, got in results.items():
            row[f"{form}_rel_err"] = ((got[:8].double() - exact).abs().amax() / scale).item()
        print(json.dumps(row), flush=True)
        print("row:", row["dtype"], row["shape"], "cudnn", row.get("cudnn_wgrad_ms"), row.get("current"),
              row.get("current_ms"), "triton_tf32", row.get("triton_tf32_ms"), "grouped", row.get("grouped_from_cl_ms"),
              row.get("grouped_ms"), "err", *(row.get(f"{f}_rel_err") for f in ("current", "triton_tf32", "grouped")),
              *(row.get(f"{f}_error", "") for f in ("current", "triton_tf32", "grouped")), file=sys.stderr, flush=True)
        x = g = w = results = None  # freed before the next shape
        torch.cuda.empty_cache()
sys.exit(0)
