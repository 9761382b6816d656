"""Per-sample products on tensor cores: what TF32 and split TF32 ("3xTF32") would save over the IEEE fp32 products
the DP backward runs today, and what their certified error bounds would cost in over-clipping.

For each shape (B, p, T, d) of a suite model's per-sample product g_i = G_i U_iᵀ (G: B×p×T, U: B×d×T), on the GPU:
  ieee   one fp32 bmm, TF32 off (today's path)
  tf32   one bmm with TF32 on: operands rounded to 10 mantissa bits
  3xtf32 x = hi + lo with hi = x truncated to TF32 (exact) and lo = x − hi (exact), then hi·hi + hi·lo + lo·hi
         under TF32: the error of a product is ≤ ~3·2⁻²⁰ of |x||y| instead of 2⁻⁹
and the relative error each gives on random data, next to its certified bound γ·M/‖g‖ (M = Σ_t ‖u_t‖‖g_t‖, the
bound's scale; ReLU-like non-negative U and zero-mean G, as in a CNN):
  ieee: γ_T(2⁻²⁴)   tf32: 2⁻⁹ + γ_{3(T+12)}(2⁻²³)   3xtf32: 2⁻¹⁸ + γ_{3(T+12)}(2⁻²³)·(1 + 2⁻⁸)
(the accumulation of tensor cores truncates: Fasi et al. 2021, as passes/rules/bounds.accumulation_gamma).

With --grams, the ghost norms' Gram products A = X_i X_iᵀ (B, T, n) → (B, T, T) instead, in the modes
  ieee   one fp32 bmm, TF32 off (today's path)
  tf32   one TF32 bmm (error up to 2⁻⁹ of Σ|x||y|: six times more clipping than the IEEE Gram's bound and more)
  3xtf32 HHᵀ + HLᵀ + LHᵀ as three TF32 bmms (X = H + L, H the TF32 truncation)
  cat2   one TF32 bmm of [H, L]·[H, 2H]ᵀ (inner 2n): HHᵀ + 2LHᵀ, whose sum against a symmetric B equals that of
         HHᵀ + LHᵀ + HLᵀ
each timed with its split (what a rule would run).

    python3 benchmarks/tf32_products.py [--grams] [--out results.json]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import time

import torch

from dpcompile.ops import to_tf32
from dpcompile.precision import tf32_products
from dpcompile.passes.rules.bounds import accumulation_gamma, gamma

SHAPES = {  # name: (B, p, T, d)
    "wrn16_4 b256, 32x32 3x3 conv 64->64": (256, 64, 1024, 576),
    "wrn16_4 b256, 32x32 3x3 conv 16->64": (256, 64, 1024, 144),
    "wrn16_4 b256, 16x16 3x3 conv 128->128": (256, 128, 256, 1152),
    "wrn16_4 b256, 8x8 3x3 conv 256->256": (256, 256, 64, 2304),
    "resnet50 b32, 56x56 3x3 conv 64->64": (32, 64, 3136, 576),
    "resnet50 b32, 28x28 3x3 conv 128->128": (32, 128, 784, 1152),
    "resnet50 b32, 14x14 3x3 conv 256->256": (32, 256, 196, 2304),
    "vit_s16 b64, mlp fc1 384->1536": (64, 1536, 197, 384),
}
def allowed(mode: str):
    """TF32 products for every mode but "ieee" (dpcompile's own switch, the settings restored after)."""
    return contextlib.nullcontext() if mode == "ieee" else tf32_products()


def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    hi = to_tf32(x)
    return hi, x - hi


GRAMS = {  # name: (B, T, n)
    "vit_s16 b64, qkv/fc1 input 384": (64, 197, 384),
    "vit_s16 b64, qkv output gradient 1152": (64, 197, 1152),
    "vit_s16 b64, fc1 output gradient / fc2 input 1536": (64, 197, 1536),
    "resnet18 b256 32x32, layer1 3x3 unfolded 576 (T=1024)": (256, 1024, 576),
}


def gram(mode: str, x: torch.Tensor) -> torch.Tensor:
    """X Xᵀ per sample, (B, T, n) -> (B, T, T), in the given mode (see the module's docstring)."""
    with allowed(mode):
        if mode in ("ieee", "tf32"):
            return torch.bmm(x, x.transpose(1, 2))
        h, lo = split(x)
        if mode == "cat2":
            return torch.bmm(torch.cat([h, lo], -1), torch.cat([h, 2 * h], -1).transpose(1, 2))
        hl = torch.bmm(h, lo.transpose(1, 2))
        return torch.baddbmm(hl, h, h.transpose(1, 2)).add_(hl.transpose(1, 2))


def gram_rows(dev) -> list:
    modes = ("ieee", "tf32", "3xtf32", "cat2")
    print(f"{'gram shape':52s} " + " ".join(f"{m + ' ms':>9s}" for m in modes) + " | max |Â−A|/Σ|x||x| (per mode)")
    rows = []
    for name, (B, T, n) in GRAMS.items():
        torch.manual_seed(0)
        x = torch.randn(B, T, n, device=dev)
        times = {m: timed(lambda m=m, x=x: gram(m, x)) for m in modes}
        k = min(B, 4)
        exact = torch.bmm(x[:k].double(), x[:k].double().transpose(1, 2))
        scale = torch.bmm(x[:k].double().abs(), x[:k].double().abs().transpose(1, 2))
        err = {}
        for m in modes:
            a = gram(m, x[:k]).double()
            if m == "cat2":  # its symmetric part is what a sum against a symmetric B sees
                a = (a + a.transpose(1, 2)) / 2
            err[m] = ((a - exact).abs() / scale).max().item()
        flops = 2 * B * T * T * n
        rows.append({"shape": name, "B": B, "T": T, "n": n, "ms": times, "max_rel_err": err,
                     "ieee_tflops": flops / times["ieee"] / 1e9})
        print(f"{name:52s} " + " ".join(f"{times[m]:9.3f}" for m in modes) + " | " +
              ", ".join(f"{err[m]:.1e}" for m in modes))
        del x, exact, scale
        torch.cuda.empty_cache()
    return rows


def product(mode: str, g: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """(B, p, T) × (B, d, T)ᵀ -> (B, p, d) in the given mode."""
    with allowed(mode):
        if mode != "3xtf32":
            return torch.bmm(g, u.transpose(1, 2))
        (gh, gl), (uh, ul) = split(g), split(u)
        ut = uh.transpose(1, 2)
        return torch.baddbmm(torch.bmm(gh, ul.transpose(1, 2)), gl, ut).add_(torch.bmm(gh, ut))


def bound(mode: str, T: int) -> float:
    acc = accumulation_gamma(T, torch.bfloat16)  # tensor cores: γ_{3(T+12)}(2⁻²³)
    bounds = {"ieee": gamma(T, 2.0**-24), "tf32": 2.0**-9 + acc * (1 + 2.0**-9),
              "3xtf32": 2.0**-18 + acc * (1 + 2.0**-8)}
    return bounds[mode]


def timed(fn, reps: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    end = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(start, end):
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return sorted(s.elapsed_time(e) for s, e in zip(start, end))[reps // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=None)
    parser.add_argument("--grams", action="store_true", help="the ghost norms' Gram products instead")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    dev = torch.device("cuda")
    rows = []
    now = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {now}")
    if args.grams:
        rows = gram_rows(dev)
    else:
        print(f"{'shape':42s} {'ieee ms':>8s} {'tf32 ms':>8s} {'3xtf32 ms':>9s} | err/‖g‖ max: tf32, 3xtf32 | "
              f"bound·M/‖g‖ median: ieee, tf32, 3xtf32")
    for name, (B, p, T, d) in ({} if args.grams else SHAPES).items():
        torch.manual_seed(0)
        u = torch.randn(B, d, T, device=dev).relu_()
        g = torch.randn(B, p, T, device=dev)
        times = {m: timed(lambda m=m, g=g, u=u: product(m, g, u)) for m in ("ieee", "tf32", "3xtf32")}
        k = min(B, 8)  # accuracy on a few samples, against float64
        exact = torch.bmm(g[:k].double(), u[:k].double().transpose(1, 2))
        norm = exact.flatten(1).norm(dim=1)
        m_scale = (u[:k].double().norm(dim=1) * g[:k].double().norm(dim=1)).sum(1)
        err = {m: ((product(m, g[:k], u[:k]).double() - exact).flatten(1).norm(dim=1) / norm).max().item()
               for m in ("tf32", "3xtf32")}
        ratio = (m_scale / norm).median().item()
        cost = {m: bound(m, T) * ratio for m in ("ieee", "tf32", "3xtf32")}
        rows.append({"shape": name, "B": B, "p": p, "T": T, "d": d, "ms": times, "max_rel_err": err,
                     "M_over_norm": ratio, "bound_over_norm": cost})
        print(f"{name:42s} {times['ieee']:8.3f} {times['tf32']:8.3f} {times['3xtf32']:9.3f} | "
              f"{err['tf32']:.1e}, {err['3xtf32']:.1e} | {cost['ieee']:.1e}, {cost['tf32']:.1e}, {cost['3xtf32']:.1e}")
        del u, g, exact
        torch.cuda.empty_cache()
    if args.out:
        env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
        with open(args.out, "w") as f:
            json.dump({"environment": env, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
