"""Per-sample conv weight gradients: the Triton implicit GEMM (dpcompile.conv_kernels) against the forms the rewrite
# (The grid form, per_sample_grid_grad, timed in call 2b, was slower than the generic kernel on every shape and was
# removed from dpcompile/conv_kernels.py after it; this script ran against the checkout of that call.)
uses today (shifted products for stride 1, unfold + bmm otherwise; compiled, TF32 products) and against cuDNN's
non-private weight gradient of the same batch (what the per-sample products replace), on the layer shapes of the
suite's CNNs, channels-last operands as on CUDA. Prints one JSON line per shape and dtype."""
import json
import statistics
import sys

import torch

import dpcompile  # noqa: F401  (registers dpcompile ops)
from dpcompile import conv_kernels
from dpcompile.conv_kernels import per_sample_conv2d_grad, per_sample_grid_grad
from dpcompile.passes.rules.conv import shifted_windows, unfold_nd

torch.backends.cudnn.allow_tf32 = True
torch._dynamo.config.recompile_limit = 64


def timed(fn, reps=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return round(statistics.median(times), 4)


def product(a, b):
    """The rewrite's product: TF32 for fp32 operands (the default), else bmm in the operands' dtype."""
    return torch.ops.dpcompile.tf32_bmm(a, b) if a.dtype == torch.float32 else torch.bmm(a, b)


def shifted(g, x, kernel, padding, dilation, w_shape):
    gf, xs, offsets = shifted_windows(x, g, kernel, padding, dilation)
    L, B, k_last = gf.shape[-1], x.shape[0], kernel[-1]
    gf = gf.reshape(B, -1, L)
    parts = [product(gf, xs[..., o:o + L].reshape(B, -1, L).transpose(1, 2)) for o in offsets]
    ps = torch.stack([p.unflatten(2, (-1, k_last)) for p in parts], 3)
    return ps.reshape(B, *w_shape)


def unfolded(g, x, kernel, stride, padding, dilation, w_shape):
    u = unfold_nd(x, kernel, stride, padding, dilation)
    B = g.shape[0]
    return product(g.flatten(2), u.transpose(1, 2)).reshape(B, *w_shape)


SHAPES = [  # (name, B, C_in, C_out, H, kernel, stride, padding)
    ("r18/wrn 32² 64→64", 256, 64, 64, 32, 3, 1, 1),
    ("wrn 32² 16→64", 256, 16, 64, 32, 3, 1, 1),
    ("r18/wrn 32²→16² 64→128 s2", 256, 64, 128, 32, 3, 2, 1),
    ("r18/wrn 16² 128→128", 256, 128, 128, 16, 3, 1, 1),
    ("r18/wrn 8² 256→256", 256, 256, 256, 8, 3, 1, 1),
    ("r18 224 56² 64→64 b64", 64, 64, 64, 56, 3, 1, 1),
    ("r18 224 28² 128→128 b64", 64, 128, 128, 28, 3, 1, 1),
    ("r50 56² 64→64 b32", 32, 64, 64, 56, 3, 1, 1),
    ("r50 56² 1x1 256→64 b32", 32, 256, 64, 56, 1, 1, 0),
]

torch.manual_seed(0)
for dtype in (torch.float32, torch.bfloat16):
    torch._dynamo.reset()
    for name, B, C, P, H, k, s, p in SHAPES:
        if dtype == torch.bfloat16 and "224" in name:
            continue
        x = torch.randn(B, C, H, H, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        HO = (H + 2 * p - k) // s + 1
        g = torch.randn(B, P, HO, HO, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
        kernel, stride, padding, dilation, w_shape = [k, k], [s, s], [p, p], [1, 1], (P, C, k, k)
        w = torch.empty(w_shape, device="cuda", dtype=dtype)
        row = {"shape": name, "dtype": str(dtype).split(".")[-1], "device": torch.cuda.get_device_name(),
               "torch": torch.__version__}
        row["cudnn_wgrad_ms"] = timed(lambda: torch.ops.aten.convolution_backward(
            g, x, w, None, stride, padding, dilation, False, [0, 0], 1, [False, True, False]))
        if s == 1 and k > 1:
            current = torch.compile(lambda g, x: shifted(g, x, kernel, padding, dilation, w_shape))
            row["current"] = "shifted"
        else:
            current = torch.compile(lambda g, x: unfolded(g, x, kernel, stride, padding, dilation,
                                                          w_shape))
            row["current"] = "unfold"
        try:
            ref = current(g, x)
            row["current_ms"] = timed(lambda: current(g, x))
        except Exception as e:  # noqa: BLE001
            row["current_error"] = repr(e)[:200]
            ref = None
        got = per_sample_conv2d_grad(g, x, kernel, stride, padding, dilation, tf32=True)
        row["triton_ms"] = timed(lambda: per_sample_conv2d_grad(g, x, kernel, stride, padding, dilation, tf32=True))
        if s == 1:
            grid_got = per_sample_grid_grad(g, x, kernel, padding, dilation, tf32=True)
            row["grid_ms"] = timed(lambda: per_sample_grid_grad(g, x, kernel, padding, dilation, tf32=True))
            row["grid_config"] = str(getattr(conv_kernels._tuned_grid, "best_config", None))
        norm = torch.compile(lambda t: t.double().square().flatten(1).sum(1))
        row["norm_ms"] = timed(lambda: norm(got))
        row["config"] = str(getattr(conv_kernels._tuned, "best_config", None))
        exact = torch.stack([torch.ops.aten.convolution_backward(
            g[i:i + 1].double(), x[i:i + 1].double(), w.double(), None, stride, padding, dilation, False, [0, 0], 1,
            [False, True, False])[1] for i in range(min(B, 8))])
        scale = exact.abs().amax().item()
        row["triton_rel_err"] = ((got[:8].double() - exact).abs().amax() / scale).item()
        if s == 1:
            row["grid_rel_err"] = ((grid_got[:8].double() - exact).abs().amax() / scale).item()
        if ref is not None:
            row["current_rel_err"] = ((ref[:8].double() - exact).abs().amax() / scale).item()
        print(json.dumps(row), flush=True)
        del x, g, w
        torch.cuda.empty_cache()
sys.exit(0)
