"""Per-layer cost of each clipping method on the GPU, and whether the plan's choices pick the faster.

For conv layers (the shapes of ../shared/notes/compiler-facts.md and of CIFAR ResNet-18 / WRN-16-4)
and linear layers, times on random fp32 data, eagerly, with CUDA events (median of --repeat):
  ghost        per-sample squared norms by Gram matrices + the book-keeping clipped sum
  ps_unfold    per-sample gradients by unfold + matmul, their norms and the clip-weighted sum
  ps_grouped   per-sample gradients by one batch-folded grouped convolution, norms, weighted sum
  ps_shifted   (stride 1) per-sample gradients by one product per kernel position over windows of the padded
               input (no unfold), norms, weighted sum
then what policy "mixed" (the paper's rule) and "auto" choose, and the chosen method's time over the
fastest. Usage: python benchmarks/layer_costs.py [--batch 64] [--out DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from types import SimpleNamespace

import sympy
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpcompile.passes.meta import LayerShape, Site  # noqa: E402
from dpcompile.passes.plan import choose  # noqa: E402
from dpcompile.passes.rules.conv import ConvRule  # noqa: E402
from dpcompile.passes.rules.linear import MatmulRule  # noqa: E402

CONVS = [  # (C_in, C_out, H (input), kernel, stride, groups)
    (3, 64, 32, 3, 1, 1), (64, 64, 56, 3, 1, 1), (128, 128, 16, 3, 1, 1), (256, 256, 14, 3, 1, 1),
    (512, 512, 7, 3, 1, 1), (64, 64, 32, 3, 1, 1), (64, 128, 32, 3, 2, 1), (128, 256, 16, 3, 2, 1),
    (256, 512, 8, 3, 2, 1), (256, 256, 8, 3, 1, 1), (512, 512, 4, 3, 1, 1), (16, 64, 32, 3, 1, 1),
    (128, 256, 16, 1, 2, 1), (96, 96, 28, 7, 1, 96), (256, 256, 8, 3, 1, 256), (256, 1024, 14, 1, 1, 1),
]
LINEARS = [  # (T, d, p)
    (1, 512, 10), (1, 2048, 1000), (197, 384, 1152), (197, 384, 384), (197, 1536, 384), (64, 256, 256),
]


def timed(fn, repeat: int) -> float:
    """Median milliseconds of fn() with CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(repeat):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def weighted(c, g):
    return torch.mm(c.unsqueeze(0), g.reshape(g.shape[0], -1))


def per_sample_method(rule, site, *operands):
    """Per-sample gradients of site by its planned impl, their squared norms and the clip-weighted sum."""
    *inputs, clip = operands

    def run():
        ps = rule.per_sample(site, *inputs)
        return ps.flatten(1).square().sum(1), weighted(clip, ps)
    return run


def conv_site(g, x, w, stride: int, pad: int, groups: int) -> Site:
    """The Site of a 2-D convolution's weight term for output gradient g, input x and weight w (square kernel,
    stride and padding), as the rewrite would annotate it, its operands standing in for the graph's nodes."""
    B, cin, cout, k = x.shape[0], x.shape[1], w.shape[0], w.shape[-1]
    consts = dict(stride=[stride] * 2, padding=[pad] * 2, dilation=[1, 1], groups=groups, kernel=[k, k],
                  transposed=False, output_padding=[0, 0], param=1)
    shape = LayerShape(sympy.Integer(B), sympy.Integer(g.shape[2] * g.shape[3]), sympy.Integer(cin // groups * k * k),
                       sympy.Integer(cout // groups), groups)
    operands = tuple(SimpleNamespace(meta={"val": v}) for v in (g, x, w))  # what ConvRule.implementation reads of the nodes
    return Site("conv", operands, consts, shape)


def conv_methods(B, cin, cout, h, k, stride, groups, device="cuda"):
    rule, pad = ConvRule(), k // 2
    x = torch.randn(B, cin, h, h, device=device)
    w = torch.randn(cout, cin // groups, k, k, device=device)
    out = torch.nn.functional.conv2d(x, w, stride=stride, padding=pad, groups=groups)
    g, clip = torch.randn_like(out), torch.rand(B, device=device)
    site = conv_site(g, x, w, stride, pad, groups)
    impls = ("unfold", "grouped") + ("shifted",) * (stride == 1)
    methods = {"ghost": lambda: (rule.ghost_norm_sq(site, g, x, w), rule.clipped_sum(site, clip, g, x, w))}
    for impl in impls:
        methods[f"ps_{impl}"] = per_sample_method(rule, dataclasses.replace(site, impl=impl), g, x, w, clip)
    return site, rule, methods, f"conv {cin}->{cout} k{k} s{stride} g{groups} {h}² (T={site.shape.T})"


def linear_methods(B, T, d, p, device="cuda"):
    rule = MatmulRule()
    a, g, clip = torch.randn(B * T, d, device=device), torch.randn(B * T, p, device=device), torch.rand(B, device=device)
    anchor = torch.empty(B, T, 1, device=device)
    shape = LayerShape(sympy.Integer(B), sympy.Integer(T), sympy.Integer(d), sympy.Integer(p))
    site = Site("linear", (), {"lead": 2, "batch_dim": 0}, shape)
    x = g.t()
    methods = {
        "ghost": lambda: (rule.ghost_norm_sq(site, x, a, anchor), rule.clipped_sum(site, clip, x, a, anchor)),
        "ps_unfold": per_sample_method(rule, site, x, a, anchor, clip),
    }
    return site, rule, methods, f"linear T={T} d={d} p={p}"


def pick(policy: str, site: Site, rule) -> str:
    """The method (a key of the *_methods dicts) that the plan chooses for site under policy."""
    method, _ = choose(policy, site, rule.cost(site), {})
    if method == "ghost":
        return "ghost"
    implementation = getattr(rule, "implementation", None)
    return f"ps_{(implementation(site, method) if implementation else '') or 'unfold'}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=os.environ.get("OUT", "runs"))
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    rows = []
    cases = [conv_methods(args.batch, *c) for c in CONVS] + [linear_methods(args.batch, *l) for l in LINEARS]
    for site, rule, methods, label in cases:
        times = {}
        for name, fn in methods.items():
            try:
                times[name] = timed(fn, args.repeat)
            except torch.OutOfMemoryError:
                times[name] = float("inf")
            torch.cuda.empty_cache()
        picks = {policy: pick(policy, site, rule) for policy in ("mixed", "auto")}
        best = min(times, key=times.get)
        rows.append({"layer": label, "ms": times, "best": best, "mixed": picks["mixed"], "auto": picks["auto"],
                     "mixed_over_best": times[picks["mixed"]] / times[best], "auto_over_best": times[picks["auto"]] / times[best]})
        print(f"{label:45s} " + " ".join(f"{k}={v:7.3f}" for k, v in times.items())
              + f"  best={best:10s} mixed={picks['mixed']}({rows[-1]['mixed_over_best']:.2f}x) auto={picks['auto']}({rows[-1]['auto_over_best']:.2f}x)", flush=True)
    worse = [r for r in rows if r["auto_over_best"] > r["mixed_over_best"] * 1.1]
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}, B={args.batch}, fp32 (TF32 off)")
    print(f"auto slower than mixed by >10% on {len(worse)} of {len(rows)} layers: {[r['layer'] for r in worse]}")
    print(f"geomean chosen/best: mixed {statistics.geometric_mean([r['mixed_over_best'] for r in rows]):.3f}, "
          f"auto {statistics.geometric_mean([r['auto_over_best'] for r in rows]):.3f}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "layer_costs.json"), "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "batch": args.batch, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
