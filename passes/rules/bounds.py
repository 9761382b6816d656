"""Floating-point error bounds that make per-sample norms certified upper bounds (Higham, Accuracy and
Stability of Numerical Algorithms, ch. 3). A dot product of length n in a dtype of unit roundoff u, with
gradual underflow (smallest subnormal η), errs by at most γ_n·Σ|x_k y_k| + n·η, γ_n = n·u/(1 − n·u).

A term's certified norm is three (B,) float64 tensors [s, e, a] (a Bound): ‖g_i‖ ≤ √s + e for the exact
per-sample gradient g_i of the operands as stored, and the term's clipped sum for a one-sample batch
with factor c has norm ≤ c·(√s + e) + a. The absolute part a is what gradual underflow adds whatever c is: a
clip-scaled operand c·p rounded in the subnormal range errs by up to half its spacing, not by u of itself, and a
crafted sample (huge activations or output gradients elsewhere in its terms) can drive c·p there while the other
operand brings the release back up to R (release_underflow). The clip factor uses N_i = √(Σ s) + Σ e and
A_i = Σ a over a group's terms: c_i·N_i + A_i ≤ R. Three tensors, not one (B, 3) stack: each is then one value per
sample that inductor computes in the kernel of the reduction it comes from (a stack would be one more kernel per term).
All bound arithmetic runs in float64 (products of float32 values are exact there).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from dpcompile import gram_kernels

F64 = torch.float64
LOW_PRECISION = (torch.float16, torch.bfloat16)
UNIT_ROUNDOFF = {torch.float64: 2.0**-53, torch.float32: 2.0**-24, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
SMALLEST_NORMAL = 2.0**-1022  # float64's: below it a rounding moves a value by up to η/2, not by u of itself
SUBNORMAL = {torch.float64: 2.0**-1074, torch.float32: 2.0**-149, torch.bfloat16: 2.0**-133, torch.float16: 2.0**-24}
U64 = UNIT_ROUNDOFF[F64]
# a product of two fp32 values truncated to TF32 (10 mantissa bits: each moves by < 2^-10 of itself), exactly
# multiplied: (1 + 2^-10)^2 - 1 of |x·y|
TF32_PRODUCT_U = 2.0**-9 + 2.0**-20

# [s, e, a], each (B,) float64, or a float where it is the same for every sample (an instantiated term's a: the
# group sums add it once, not as a (B,) tensor of its own, rewrite.certified_group_norm)
Bound = tuple[Tensor, Tensor | float, Tensor | float]


def as_bounds(parts) -> list[Bound]:
    """Terms' [s, e, a] from their parts laid end to end (how a graph node takes them as operands)."""
    return [tuple(parts[i:i + 3]) for i in range(0, len(parts), 3)]


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of a floating dtype."""
    return UNIT_ROUNDOFF[dtype]


def exact_cast(src: torch.dtype, dst: torch.dtype) -> bool:
    """Whether every src value is exactly a dst value (the same dtype, or a float upcast: bf16 or fp16 to fp32,
    fp32 to fp64)."""
    return src == dst or (src in UNIT_ROUNDOFF and dst in UNIT_ROUNDOFF and unit_roundoff(dst) <= unit_roundoff(src)
                          and torch.finfo(dst).max >= torch.finfo(src).max)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype sums run in: float32 for half precision (assumed of matmuls, convolutions and reductions:
    fp32 accumulation), the dtype itself otherwise."""
    return torch.float32 if dtype in LOW_PRECISION else dtype


def accumulation_gamma(n, dtype: torch.dtype) -> float:
    """γ of a sum of n products (or values) with operands in dtype, as a fraction of Σ|terms|. Full precision:
    γ_n(u), IEEE round to nearest. Half precision: products on tensor cores, whose fp32 accumulation may align a
    block of n_b addends to the largest and truncate both the addends and the sum (Fasi, Higham, Mikaitis &
    Pranesh, PeerJ CS 2021). A block then errs by at most 2u·(n_b + 2)·Σ|addends| and a sum of n terms by
    2u·(n_b + 2)·(n/n_b + 1)·Σ|terms| ≤ 6u·(n + 12)·Σ|terms| for any n_b ≤ 32: γ_{3(n+12)}(2u), u of
    float32. Khattak and Mikaitis's bit-accurate models (arXiv 2512.07004) of V100 to B200 and MI300 fit it for
    bf16, fp16 and TF32 operands: blocks of 2 to 16, 0 to 2 alignment bits beyond fp32's 24, alignment toward zero
    or −∞, the sum truncated or rounded to nearest (test_tensor_core_gamma_covers_published_matrix_units). Not fp8,
    whose alignment keeps 10 bits fewer than fp32 on H100 and L40S: no dpcompile path multiplies fp8 operands."""
    if dtype in LOW_PRECISION:
        return tensor_core_gamma(n)
    return gamma(n, unit_roundoff(dtype))


def tensor_core_gamma(n) -> float:
    """γ of a sum of n products on tensor cores (half-precision or TF32 operands): γ_{3(n+12)}(2u), u of fp32
    (accumulation_gamma)."""
    return gamma(3 * (n + 12), 2 * UNIT_ROUNDOFF[torch.float32])


def gamma(n, u: float) -> float:
    """γ_n = n·u / (1 − n·u); inf when n·u ≥ 1/2 (no useful bound)."""
    nu = n * u
    return nu / (1 - nu) if nu < 0.5 else math.inf


def cover(m) -> float:
    """1 + 2γ_m: a non-negative float64 value whose path from exact values took at most m relative roundings of
    u (additions, products, quotients of non-negative values; a square root counts twice for a bound on its
    square), this factor's own rounding and its multiplication among them, times this factor is at least the exact
    value: (1 − u)^m ≥ 1 − γ_m and (1 − γ_m)(1 + 2γ_m) ≥ 1 while γ_m ≤ 1/2, and γ_m as computed (two more
    roundings) still leaves that true while γ_m ≤ 1/4; inf beyond (no useful bound). A factor 1 + u in float64 is
    1 exactly: it covers nothing, and this one does."""
    g = gamma(m, U64)
    return 1 + 2 * g if g <= 0.25 else math.inf


def times(x: Tensor, f: float) -> Tensor:
    """An upper bound on x·f exactly, for non-negative float64 x and a factor f ≥ 1 that Python formed with at most
    two roundings: f's two, its product with cover's factor, that factor's own and the tensor product (cover(5))."""
    return x * (f * cover(5))


def upper_sum(x: Tensor, dims) -> Tensor:
    """An upper bound on the exact sum of non-negative float64 x over dims, each entry of x allowed one rounding of
    its own (a product of two bounds): fl(Σ)·cover(n + 2) (the sum's n − 1 roundings, the entry's, the factor's and
    the multiplication)."""
    n = math.prod(x.shape[d] for d in dims) if dims else 1
    return x.sum(dims) * cover(n + 2) if dims else x


def squares_bound(x: Tensor, dims, roundings: int = 0) -> Tensor:
    """An upper bound on Σ x² over dims (float64), left that way by `roundings` more relative roundings applied to
    it afterwards (2 for a square root). Squares of float32 and narrower values are exact in float64: the sum's
    n − 1 roundings, the factor's and the multiplication (n + 1). Float64 squares round (one more) or, in the
    subnormal range, err by up to η/2 each, which n·η covers (one more rounding, the addition): n + 3."""
    n = math.prod(x.shape[d] for d in dims)
    return summed_squares_bound(x.to(F64).square().sum([d % x.dim() for d in dims]), n, x.dtype, roundings)


def summed_squares_bound(total: Tensor, n, dtype: torch.dtype, roundings: int = 0) -> Tensor:
    """squares_bound from fl₆₄(Σ x²) over n values of dtype, summed in any order (the sum's n − 1 roundings)."""
    if dtype == F64:
        return total * cover(n + 3 + roundings) + n * SUBNORMAL[F64]
    return total * cover(n + 1 + roundings)


def row_norms(x: Tensor, dims=(-1,)) -> Tensor:
    """Upper bounds on the 2-norms of x over dims: the square root of squares_bound, its rounding covered there."""
    return squares_bound(x, dims, roundings=2).sqrt()


def round_down(c: Tensor, dtype: torch.dtype) -> Tensor:
    """c (float64, ≥ 0) in dtype, never rounded up (a clip factor must not grow)."""
    if c.dtype == dtype:
        return c
    low = c.to(dtype)
    return torch.where(low.to(c.dtype) > c, torch.nextafter(low, torch.zeros_like(low)), low)


def keep_mask(c: Tensor) -> Tensor:
    """Samples that contribute (c > 0): dropped ones have c = 0 and may hold NaN or inf."""
    return c > 0


def masked_scaled(x: Tensor, c: Tensor) -> Tensor:
    """c_i·x_i with c rounded down to x's dtype; x_i zeroed where c_i = 0 (0·inf would be NaN)."""
    shape = (-1, *([1] * (x.dim() - 1)))
    return torch.where(keep_mask(c).view(shape), x * round_down(c, x.dtype).view(shape), torch.zeros((), dtype=x.dtype,
                                                                                                    device=x.device))


def masked(x: Tensor, c: Tensor) -> Tensor:
    """x with sample i zeroed where c_i = 0."""
    shape = (-1, *([1] * (x.dim() - 1)))
    return torch.where(keep_mask(c).view(shape), x, torch.zeros((), dtype=x.dtype, device=x.device))


def product_matrix(x: Tensor, y: Tensor, tf32: bool = False) -> tuple[Tensor, float, float | Tensor]:
    """(Â, γ, e): Â = x_i y_iᵀ per sample (B, T, S), in float32 or wider, with |Â − A| ≤ γ·‖x_t‖‖y_s‖ + e.
    tf32 (fp32 operands; the plan's ghost_tf32): on TF32 tensor cores (matrix_product), see tf32_product_error."""
    n = x.shape[-1]
    if half_grams(x, y):
        return (torch.ops.dpcompile.half_bmm(x, y.transpose(1, 2)),
                *product_error(n, x.dtype, row_norms(x).amax(1), row_norms(y).amax(1)))
    dtype = torch.promote_types(full_precision(x).dtype, full_precision(y).dtype)
    xf, yt = x.to(dtype), y.to(dtype).transpose(1, 2)
    if tf32 and dtype == torch.float32:
        return (matrix_product(xf, yt, True), *tf32_product_error(n, row_norms(x).amax(1), row_norms(y).amax(1)))
    return torch.bmm(xf, yt), *product_error(n, dtype)


def product_error(n: int, dtype: torch.dtype, x_max: Tensor | None = None, y_max: Tensor | None = None):
    """(γ, e) of products of rows over n features: of bf16 operands on tensor cores (fp32 accumulation: x_max, y_max
    the rows' largest norms per sample, tensor_core_product_error), else multiplied and summed in dtype, IEEE."""
    if dtype in LOW_PRECISION:
        return tensor_core_product_error(n, x_max, y_max, 0.0)
    return gamma(n, unit_roundoff(dtype)), n * SUBNORMAL[dtype]


# Devices where the ghost norms' Grams of bf16 operands run as bf16 tensor-core products with fp32 results
# (dpcompile::half_bmm) instead of fp32 products of the operands converted: the same exact products, a tensor-core
# accumulation (tensor_core_product_error, as the TF32 Grams'), half the bytes read. CUDA by default since its tests
# passed on an H200 and it took WRN-16-4's bf16 step from 5.96 to 5.47 ms of device time (benchmarks/NOTES.md,
# thirty-sixth session); () turns it off.
HALF_GRAM_DEVICES: tuple[str, ...] = ("cuda",)


def half_grams(*operands: Tensor) -> bool:
    """Whether products of these operands for a Gram run as dpcompile::half_bmm: all bf16, on a device listed in
    HALF_GRAM_DEVICES. (Not fp16: its subnormals lie far above fp32's, where a tensor core's flush would cost more
    than the bound below counts.)"""
    return all(t.dtype == torch.bfloat16 and t.device.type in HALF_GRAM_DEVICES for t in operands)


def tf32_product_error(n: int, x_max: Tensor, y_max: Tensor) -> tuple[float, Tensor]:
    """(γ, e) of a TF32 tensor-core product of fp32 rows x_t, y_s over n features (tensor_core_product_error): each
    operand is truncated to TF32, |x − h| ≤ 2⁻¹⁰|x| + ε with |h| ≤ |x|, so a product errs by at most
    TF32_PRODUCT_U·|x||y| more."""
    return tensor_core_product_error(n, x_max, y_max, TF32_PRODUCT_U)


def tensor_core_product_error(n: int, x_max: Tensor, y_max: Tensor, truncation: float) -> tuple[float, Tensor]:
    """(γ, e) of a tensor-core product of rows x_t, y_s over n features, |Â_ts − A_ts| ≤ γ‖x_t‖‖y_s‖ + e_i (x_max,
    y_max: the largest row norm of each operand per sample, (B,) float64): each product is exact but for the
    operands' truncation (relative `truncation`: TF32's; 0 for bf16 operands) and a subnormal operand kept or flushed
    (ε = TF32_SUBNORMAL_ERROR, fp32's and bf16's subnormal range alike: ε·(|x| + |y|)); the accumulation truncates as
    on half-precision tensor cores (tensor_core_gamma of Σ|x||y|) and each product may underflow (ε). Over the n
    features: γ = truncation + γ_tc(n), e = ε·√n·(‖x‖_max + ‖y‖_max) + n·ε."""
    return truncation + tensor_core_gamma(n), ((x_max + y_max) * root_bound(n) + n) * TF32_SUBNORMAL_ERROR


def gram_sum_bound(a: Tensor, b: Tensor, r: Tensor, rho: Tensor, ga: float, ea: float | Tensor, gb: float,
                   eb: float | Tensor) -> Tensor:
    """Upper bound on S = Σ_{g,t,s} A_ts·B_ts ≥ 0 per sample from computed Grams Â, B̂ (B, G, T, T) with
    |Â − A| ≤ ga·r_t r_s + ea and |B̂ − B| ≤ gb·ρ_t ρ_s + eb (r, ρ: (B, G, T) float64; ea, eb floats or (B,)
    float64 per sample); see product_sum_bound."""
    return product_sum_bound(a, b, (r, r), (rho, rho), ga, ea, gb, eb).clamp(min=0)


def product_sum_bound(a: Tensor, b: Tensor, r: tuple[Tensor, Tensor], rho: tuple[Tensor, Tensor],
                      ga: float, ea: float | Tensor, gb: float, eb: float | Tensor) -> Tensor:
    """Upper bound on X = Σ_{g,t,s} A_ts·B_ts per sample (of either sign) from computed Â, B̂ (B, G, T, S)
    with |Â − A| ≤ ga·r_t r'_s + ea and |B̂ − B| ≤ gb·ρ_t ρ'_s + eb, r = (r (B, G, T), r' (B, G, S)) float64:
    X ≤ fl64(Σ ÂB̂) + γ_{n}·Σ|ÂB̂| + Σ (|Â|·δB + δA·|B̂| + δA·δB), the last in closed form (sums_bound).
    Cost: O(B·G·T·S) elementwise work, no matrix products."""
    a, b = a.to(F64), b.to(F64)
    dims = (1, 2, 3)
    prod = a * b
    outer = lambda v: v[0].unsqueeze(-1) * v[1].unsqueeze(-2)  # noqa: E731
    a_abs, b_abs = a.abs(), b.abs()
    sums = [prod.sum(dims), prod.abs().sum(dims), (a_abs * outer(rho)).sum(dims) if gb else 0,
            (b_abs * outer(r)).sum(dims) if ga else 0, a_abs.sum(dims), b_abs.sum(dims)]
    return sums_bound(sums, math.prod(a.shape[1:]), r, rho, ga, ea, gb, eb)


def sums_bound(sums, n, r: tuple[Tensor, Tensor], rho: tuple[Tensor, Tensor], ga: float, ea: float | Tensor,
               gb: float, eb: float | Tensor) -> Tensor:
    """product_sum_bound from its six sums over the n terms, each summed in float64 in any order: Σ ÂB̂, Σ |ÂB̂|,
    Σ |Â|·ρ_t ρ'_s, Σ |B̂|·r_t r'_s, Σ |Â|, Σ |B̂| ((B,) each; the third and fourth may be 0 where gb, ga are)."""
    s, abs_prod, a_rho, b_r, a_abs, b_abs = sums
    err = gamma(n + 1, U64) * abs_prod
    if gb:
        err = err + gb * a_rho
    if ga:
        err = err + ga * b_r
    err = err + eb * a_abs + ea * b_abs
    (r1, r2), (p1, p2) = r, rho  # Σ_ts δA_ts·δB_ts, each factor's sums over t and s apart
    over_t = [(r1 * p1).sum(-1), r1.sum(-1), p1.sum(-1)]
    over_s = over_t if r1 is r2 and p1 is p2 else [(r2 * p2).sum(-1), r2.sum(-1), p2.sum(-1)]  # a Gram's: the same
    m, sr, srho = (t * s for t, s in zip(over_t, over_s))
    ts = r1.shape[-1] * r2.shape[-1]
    ea, eb = (e.unsqueeze(-1) if isinstance(e, Tensor) else e for e in (ea, eb))  # per sample: against (B, G)
    err = err + (coefficient(ga, gb) * m + coefficient(ga, eb) * sr + coefficient(ea, gb) * srho
                 + coefficient(ea, eb) * ts).sum(1)
    return s + err * (1 + gamma(n + 8, U64))


def coefficient(a: float | Tensor, b: float | Tensor) -> float | Tensor:
    """a·b of two non-negative error coefficients, never below the exact product where both are floats: Python's
    product rounds to nearest, which a later (1 + γ) covers while it is a normal float64, but below 2⁻¹⁰²² it errs by
    up to η/2 absolutely (float64 operands' e = n·η times a γ rounded to 0), and the sums it multiplies may be near
    1e300: one step up covers that. A tensor is left to its product: the tensors here are tensor cores' per-sample e
    (at least 2⁻¹²⁶ each), whose products with any γ of this module (at least 2⁻⁵³) stay normal."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return a * b
    product = a * b
    return product if product >= SMALLEST_NORMAL or a == 0 or b == 0 else math.nextafter(product, math.inf)


def fused_gram_sum_bound(p: Tensor, q: Tensor, r: Tensor, rho: Tensor) -> Tensor:
    """gram_sum_bound's bound on Σ_ts (P_i P_iᵀ)_ts (Q_i Q_iᵀ)_ts for rows p (B, T, m), q (B, T, n) with row-norm
    bounds r, rho (B, T) float64, from dpcompile::gram_sums (one kernel, no Gram stored: dpcompile.gram_kernels):
    bf16 operands on tensor cores (the half Grams' error model), fp32 ones on TF32 tensor cores (the TF32 Grams'),
    float64 ones in float64."""
    (ga, ea), (gb, eb) = fused_product_error(p.shape[-1], p.dtype, r.amax(1)), \
        fused_product_error(q.shape[-1], q.dtype, rho.amax(1))
    sums = torch.ops.dpcompile.gram_sums(p, q, r, rho).sum(1)
    r, rho = r.unsqueeze(1), rho.unsqueeze(1)
    return sums_bound(sums.unbind(1)[:6], p.shape[1] ** 2, (r, r), (rho, rho), ga, ea, gb, eb).clamp(min=0)


def fused_product_error(n: int, dtype: torch.dtype, top: Tensor) -> tuple[float, float | Tensor]:
    """(γ, e) of the fused Gram sums' products over n features of rows whose largest norm per sample is top: fp32
    operands multiply on TF32 tensor cores there (tf32_product_error; on the CPU the op's reference multiplies in
    fp32, whose error that bound covers), the others as product_error says."""
    if dtype == torch.float32:
        return tf32_product_error(n, top, top)
    return product_error(n, dtype, top, top)


# Devices where a ghost linear term's Gram sums run as one kernel that stores no Gram (fused_gram_sum_bound; and a
# convolution's where conv.FUSED_GRAM_CONV_DEVICES lists the device too), for operands of a dtype listed. CUDA, bf16:
# on an H200 (torch 2.11, 2026-12-05) ViT-S/16 224² b64 bf16's device time a step fell from 18.09 to 14.10 ms
# (benchmarks/NOTES.md, fortieth session). fp32 operands of a term the plan puts on TF32 tensor cores (the kernel's
# TF32 products) are certified and pass their tests on CUDA, but were no faster there than the stored TF32 Grams
# (WRN-16-4 and ResNet-18 32², within ±2% of device time on an H100): not listed by default (benchmarks/NOTES.md,
# forty-seventh session). The tests turn both on for the CPU too, where the op's torch implementation runs.
FUSED_GRAM_DEVICES: tuple[str, ...] = ("cuda",)
FUSED_GRAM_DTYPES: tuple[torch.dtype, ...] = (torch.bfloat16,)


def fused_grams(p: Tensor, q: Tensor, tf32: bool) -> bool:
    """Whether a ghost term's Gram sums take fused_gram_sum_bound: both operands of one dtype listed (float64 too while
    FUSED_GRAM_DTYPES says so: the tests'; fp32 only where the term's products run on TF32 tensor cores, tf32), on a
    device listed (CUDA: with Triton importable)."""
    return (p.dtype == q.dtype and p.dtype in FUSED_GRAM_DTYPES and (p.dtype != torch.float32 or tf32)
            and p.device.type in FUSED_GRAM_DEVICES and q.device.type in FUSED_GRAM_DEVICES
            and (p.device.type != "cuda" or gram_kernels.available()))


def certified(norm_sq: Tensor, linear: Tensor, absolute: Tensor, out_dtype: torch.dtype) -> Bound:
    """[s, e, a] for a term whose result is rounded once more to out_dtype: ×(1 + u_out), rounded up (times)."""
    grow = 1 + unit_roundoff(out_dtype)
    return times(norm_sq, grow**2), times(linear, grow), times(absolute, grow)


# What a subnormal fp32 value can lose on its way through a TF32 tensor core: under 2^-126, whether the conversion
# keeps it (to TF32's subnormal spacing, 2^-136) or flushes it to zero; the same for a product or result that
# underflows there (gradual or flushed). Bounds that use it hold either way.
TF32_SUBNORMAL_ERROR = 2.0**-126


def release_underflow(other_norm_sum: Tensor, features: int, scaled_dtype: torch.dtype, products: int, out_numel: int,
                      out_dtype: torch.dtype, tf32: bool = False) -> Tensor:
    """Upper bound on what gradual underflow adds, whatever c is, to one sample's clipped sum Σ_t fl(c·p_t) q_tᵀ
    (p_t: `features` values of scaled_dtype per position; Σ_t ‖q_t‖ = other_norm_sum, (B,) float64):
    - each entry of c·p_t rounded in the subnormal range errs by up to η/2 of its dtype (on a TF32 tensor core:
      TF32_SUBNORMAL_ERROR, kept or flushed), so Σ_t δ_t q_tᵀ has norm ≤ (η/2)·√features·Σ_t ‖q_t‖;
    - each of the `products` products per output entry may underflow in the accumulation (η/2 of the accumulation
      dtype: float32, or float64 for float64 operands; TF32: TF32_SUBNORMAL_ERROR), and each of the out_numel results
      in out_dtype: ≤ (η_acc/2·products + η_out/2)·√out_numel.
    Doubled for the relative roundings these absolute errors pass through afterwards (γ < 1 wherever a bound is
    finite)."""
    tensor_cores = tf32 and scaled_dtype == torch.float32
    step = TF32_SUBNORMAL_ERROR if tensor_cores else half_subnormal(scaled_dtype)
    # the products accumulate in float32 for float32 and narrower operands, in float64 for float64 ones (float32's
    # η here over-clipped float64 at R below about 1e-36, and dropped every sample at 1e-44)
    product = TF32_SUBNORMAL_ERROR if tensor_cores else half_subnormal(accumulation_dtype(scaled_dtype))
    fixed = (product * products + max(product, half_subnormal(out_dtype))) * root_bound(out_numel)
    return 2 * (other_norm_sum * (step * root_bound(features)) + fixed)


def half_subnormal(dtype: torch.dtype) -> float:
    """η/2 of dtype (the most a rounding in its subnormal range moves a value), as a float64 no smaller: float64's own
    η/2 lies below every float64 and rounds to 0 in Python, so float64 takes η. That factor 2 also covers the
    rounding of a product η·k (k ≥ 1) formed from it, which lands on a multiple of η: at least η·k − η/2 ≥ η·k/2.
    (As η/2 = 0, release_underflow's bound for float64 was 0, and a crafted float64 sample released 1.96·R,
    test_adversarial.py::test_underflow_in_the_clip_scaled_operand_stays_within_R.)"""
    return max(SUBNORMAL[dtype] / 2, SUBNORMAL[F64])


def clipped_product_margin(m: Tensor, operand_dtype: torch.dtype, length,
                           tf32: tuple[Tensor, int] | None = None) -> Tensor:
    """Error per unit of c of Σ_t fl(c·p_t) q_tᵀ over `length` positions: (u_s + γ·(1 + u_s))·M with
    M = Σ_t ‖p_t‖‖q_t‖, u_s the operand dtype's u and γ of the accumulation (accumulation_gamma).
    tf32 = (Σ_t ‖p_t‖, q's features) for fp32 operands multiplied on TF32 tensor cores (matrix_product): each operand
    truncated to 10 mantissa bits (TF32_PRODUCT_U more per product), the accumulation truncating as on
    half-precision tensor cores, and q's subnormal entries moved by up to TF32_SUBNORMAL_ERROR each (kept or
    flushed; not 2⁻¹⁰ of themselves): 2·ε·√features·Σ_t ‖p_t‖ more (doubled as in release_underflow)."""
    u = unit_roundoff(operand_dtype)
    if tf32 is None:
        return (u + accumulation_gamma(length, operand_dtype) * (1 + u)) * m
    scaled_norm_sum, other_features = tf32
    u_s = u + TF32_PRODUCT_U * (1 + u)  # (1 + u)(1 + TF32_PRODUCT_U) − 1
    subnormal = scaled_norm_sum * (2 * TF32_SUBNORMAL_ERROR * root_bound(other_features))
    return (u_s + tensor_core_gamma(length) * (1 + u_s)) * m + subnormal


def stored_norm_bound(g: Tensor) -> Tensor:
    """Upper bound on ‖ĝ_i‖² of a stored per-sample tensor (B, ...), float64 squares and sums (squares_bound)."""
    if g.dim() == 1:
        return squares_bound(g.unsqueeze(1), (1,))
    return squares_bound(g, tuple(range(1, g.dim())))  # over its dims (no flatten: g may be stored permuted)


def per_sample_bound(g: Tensor, margin: Tensor | float) -> Bound:
    """[s, e, a] for an instantiated ĝ_i (rounded once to its dtype from an exact-ish accumulation):
    ‖g_i‖ ≤ (1 + 2u)‖ĝ_i‖ + margin and the clip-weighted copy c·ĝ_i rounds by at most (1 + u), or, where an entry
    lands in the subnormal range, by η/2 of its dtype: a = 2·(η/2)·√numel (doubled as in release_underflow: the
    doubling covers the two roundings of √numel and the product), the same for every sample: a float, the value a
    float64 tensor product gave bit for bit (a (B,) tensor where numel is symbolic)."""
    grow = 1 + 2 * unit_roundoff(g.dtype)
    a = SUBNORMAL[g.dtype] * root_bound(math.prod(g.shape[1:]))
    if not isinstance(a, float):
        a = torch.full((g.shape[0],), SUBNORMAL[g.dtype], dtype=F64, device=g.device) * a
    return times(stored_norm_bound(g), grow**2), margin, a


def root_bound(n):
    """√n for an int; n itself (≥ √n) for a symbolic size, whose square root would fix it to its hint (a guard)."""
    return math.sqrt(n) if isinstance(n, int) else n


def matrix_product(a: Tensor, b: Tensor, tf32: bool, add: Tensor | None = None) -> Tensor:
    """bmm(a, b), or add + bmm(a, b) into one new buffer; with tf32 (the plan's choice: plan.tf32_products) on TF32
    tensor cores (dpcompile::tf32_bmm, tf32_baddbmm). Per-sample gradients so formed are clipped by the norm of what
    they compute (rewrite.emit_norm); a ghost term's clipped sum so formed has its rounding in the term's margin
    (clipped_product_margin with tf32)."""
    if add is not None:
        return torch.ops.dpcompile.tf32_baddbmm(add, a, b) if tf32 else torch.baddbmm(add, a, b)
    return torch.ops.dpcompile.tf32_bmm(a, b) if tf32 else torch.bmm(a, b)


def full_precision(t: Tensor) -> Tensor:
    """t in float32 if half precision (exact): norms' products run in float32 or float64."""
    return t.float() if t.dtype in LOW_PRECISION else t
