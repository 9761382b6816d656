"""The grouped per-sample form (the batch folded into the groups of one cuDNN weight gradient) with the folded
operands laid out channels-last, as cuDNN's NHWC grouped kernels read them, against the fifty-fifth session's grouped
form (folded from NCHW copies: cuDNN then converts them to NHWC and its result back) and the rule's current CUDA
form (shifted windows or unfold + a TF32 product, compiled).

Why (sixty-first session): the grouped TF32 form won layer by layer (fifty-fifth) and not in whole steps
(fifty-seventh: ResNet-18 32² b256 fp32 12.76 → 12.85 ms). The step's profile says where the gain went:
cuDNN's nhwcToNchw (0.84 ms a step) and nchwToNhwc (0.50 ms) conversions and the op's own NCHW copies (0.74 ms)
against 2.0 ms less of products. The fold of B into the channels is a view of neither layout, but a copy to
(H, W, B, C) makes the folded (1, B·C, H, W) operand channels-last: one copy per operand, and cuDNN's NHWC kernels
read it as it is.

Columns (ms, CUDA events, median of 20; TF32 on for cuDNN): cudnn_wgrad (the batch's non-private weight gradient, the
floor), current (the rule's CUDA form), grouped_nchw_copy (the op as committed: reshape of channels-last operands),
folded_cl (the new form: permute copies to (H, W, B, C), cuDNN on channels-last folded operands), folded_cl_only
(cuDNN alone on the prepared folded operands), copies (the two permute copies alone). Each result checked against
float64 per-sample gradients of the first 8 samples. Run on a GPU from the repo root:
    python benchmarks/results/2026-12-07-s61/folded_cl.py"""
import dataclasses
import json
import sys
from pathlib import Path

import torch

from dpcompile.passes.rules.conv import ConvRule

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from layer_costs import conv_site, timed as timed_ms  # noqa: E402

torch.backends.cudnn.allow_tf32 = True
torch._dynamo.config.recompile_limit = 64


def timed(fn):
    return round(timed_ms(fn, 20), 4)


def fold_cl(t):
    """(B, C, H, W) of any layout → (1, B·C, H, W) channels-last: one copy to (H, W, B, C)."""
    B, C, H, W = t.shape
    return t.permute(2, 3, 0, 1).contiguous().view(H, W, B * C).permute(2, 0, 1).unsqueeze(0)


def wgrad(gf, xf, B, P, C, kernel, stride, padding, dilation, channels_last):
    w = torch.empty(B * P, C, *kernel, device=xf.device, dtype=xf.dtype)
    if channels_last:
        w = w.to(memory_format=torch.channels_last)
    dw = torch.ops.aten.convolution_backward(gf, xf, w, None, stride, padding, dilation, False, [0, 0], B,
                                             [False, True, False])[1]
    return dw.view(B, P, C, *kernel) if dw.is_contiguous() else dw.reshape(B, P, C, *kernel)


def grouped_nchw_copy(g, x, kernel, stride, padding, dilation):
    B, P, C = g.shape[0], g.shape[1], x.shape[1]
    return wgrad(g.reshape(1, B * P, *g.shape[2:]), x.reshape(1, B * C, *x.shape[2:]), B, P, C, kernel, stride,
                 padding, dilation, False)


def folded_cl(g, x, kernel, stride, padding, dilation):
    B, P, C = g.shape[0], g.shape[1], x.shape[1]
    return wgrad(fold_cl(g), fold_cl(x), B, P, C, kernel, stride, padding, dilation, True)


SHAPES = [  # (name, B, C_in, C_out, H, kernel, stride, padding)
    ("r18/wrn 32² 64→64", 256, 64, 64, 32, 3, 1, 1),
    ("wrn 32² 16→64", 256, 16, 64, 32, 3, 1, 1),
    ("r18/wrn 32²→16² 64→128 s2", 256, 64, 128, 32, 3, 2, 1),
    ("r18/wrn 16² 128→128", 256, 128, 128, 16, 3, 1, 1),
    ("r18/wrn 8² 256→256", 256, 256, 256, 8, 3, 1, 1),
    ("r18 224 56² 64→64 b64", 64, 64, 64, 56, 3, 1, 1),
    ("r18 224 28² 128→128 b64", 64, 128, 128, 28, 3, 1, 1),
    ("r50 56² 64→64 b32", 32, 64, 64, 56, 3, 1, 1),
    ("r50 14² 256→256 b32", 32, 256, 256, 14, 3, 1, 1),
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
        try:
            rule, site = ConvRule(), conv_site(g, x, w, s, p, 1)
            site = dataclasses.replace(site, impl=rule.implementation(site, "per_sample"), tf32=dtype == torch.float32)
            row["current"] = site.impl
            current = torch.compile(lambda g, x, w: rule.per_sample(site, g, x, w))
            results["current"] = current(g, x, w)
            row["current_ms"] = timed(lambda: current(g, x, w))
        except Exception as e:  # noqa: BLE001
            row["current_error"] = repr(e)[:200]
        for form, fn in (("grouped_nchw_copy", grouped_nchw_copy), ("folded_cl", folded_cl)):
            try:
                results[form] = fn(g, x, kernel, stride, padding, dilation)
                row[f"{form}_ms"] = timed(lambda: fn(g, x, kernel, stride, padding, dilation))
            except Exception as e:  # noqa: BLE001
                row[f"{form}_error"] = repr(e)[:200]
        try:
            gf, xf = fold_cl(g), fold_cl(x)
            row["folded_cl_only_ms"] = timed(lambda: wgrad(gf, xf, B, P, C, kernel, stride, padding, dilation, True))
            row["copies_ms"] = timed(lambda: (fold_cl(g), fold_cl(x)))
            gf = xf = None
        except Exception as e:  # noqa: BLE001
            row["folded_cl_only_error"] = repr(e)[:200]
        exact = torch.stack([torch.ops.aten.convolution_backward(
            g[i:i + 1].double(), x[i:i + 1].double(), w.double(), None, stride, padding, dilation, False, [0, 0], 1,
            [False, True, False])[1] for i in range(min(B, 8))])
        scale = exact.abs().amax().item()
        for form, got in results.items():
            row[f"{form}_rel_err"] = ((got[:8].double() - exact).abs().amax() / scale).item()
        print(json.dumps(row), flush=True)
        print("row:", row["dtype"], row["shape"], "cudnn", row.get("cudnn_wgrad_ms"), row.get("current"),
              row.get("current_ms"), "nchw_copy", row.get("grouped_nchw_copy_ms"), "folded_cl",
              row.get("folded_cl_ms"), "only", row.get("folded_cl_only_ms"), "copies", row.get("copies_ms"), "err",
              *(f"{f}={row.get(f'{f}_rel_err'):.2g}" for f in results),
              *(row[k] for k in row if k.endswith("_error")), file=sys.stderr, flush=True)
        x = g = w = results = None
        torch.cuda.empty_cache()
sys.exit(0)
