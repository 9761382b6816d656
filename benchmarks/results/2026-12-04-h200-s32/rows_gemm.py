"""Session 32: the clipped sum's weight-gradient GEMM on patch_rows' operands (kernel-major, channel-minor rows)
against the unfold_nd form it replaced (channel-major patches, batch_rows copies), each as the DP backward computes
it (masked_scaled G, masked x, one GEMM) compiled by inductor, on channels-last and contiguous operands; device time
per call by CUDA events. Prints one JSON line per case."""
import json
import sys
from math import prod

import torch

from dpcompile.passes.meta import Site
from dpcompile.passes.rules.bounds import masked, masked_scaled, matrix_product
from dpcompile.passes.rules.conv import ConvRule, batch_rows, unfold_nd
from dpcompile.passes.rules.layout import views_into_positions


def old_gemm(site, g, x, w):  # the form before this session (passes/rules/conv.py at 54834fb)
    c, groups = site.consts, site.consts["groups"]
    u = unfold_nd(x, c["kernel"], c["stride"], c["padding"], c["dilation"])
    rows, T = g.shape[0], u.shape[-1]
    u, gg = u.reshape(rows, groups, u.shape[1] // groups, T), g.reshape(rows, groups, g.shape[1] // groups, T)
    u, gg = views_into_positions(u, 1), views_into_positions(gg, 1)
    return matrix_product(batch_rows(gg), batch_rows(u).transpose(1, 2), site.tf32).reshape(w.shape)


def main():
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cuda.matmul.allow_tf32 = False
    cases = [(256, 256, 8), (256, 128, 16), (256, 64, 32)] if dev == "cuda" else [(4, 8, 8)]
    for B, C, H in cases:
        for layout in ("channels_last", "contiguous"):
            for tf32 in (False, True):
                c = {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1], "groups": 1,
                     "transposed": False, "output_padding": [0, 0]}
                site = Site("conv", (), c, None, tf32=tf32)
                fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
                x = torch.randn(B, C, H, H, device=dev).contiguous(memory_format=fmt)
                g = torch.randn(B, C, H, H, device=dev).contiguous(memory_format=fmt)
                w = torch.empty(C, C, 3, 3, device=dev)
                clip = torch.rand(B, device=dev, dtype=torch.float64)
                clip[0] = 0
                rule = ConvRule()
                res = {"B": B, "C": C, "HW": H, "layout": layout, "tf32": tf32, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                       "torch": torch.__version__}
                outs = {}
                for name, fn in (("old", old_gemm), ("rows", rule.weight_grad_gemm)):
                    f = torch.compile(lambda clip, g, x: fn(site, masked_scaled(g, clip), masked(x, clip), w),
                                      dynamic=False)
                    out = f(clip, g, x)
                    outs[name] = out.double()
                    if dev != "cuda":
                        continue
                    for _ in range(3):
                        f(clip, g, x)
                    torch.cuda.synchronize()
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    for _ in range(50):
                        f(clip, g, x)
                    b.record()
                    torch.cuda.synchronize()
                    res[f"{name}_ms"] = round(a.elapsed_time(b) / 50, 4)
                res["max_rel_diff"] = float((outs["old"] - outs["rows"]).abs().max() / outs["old"].abs().max())
                print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
