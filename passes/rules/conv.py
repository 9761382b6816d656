"""Convolutions (1-D, 2-D, 3-D; stride, padding, dilation, groups; transposed): aten.convolution_backward.

Per sample i and group: g_i = G_i U_iᵀ, where U_i = unfold(x_i) (d × T) and G_i (p × T).
Ghost: ‖g_i‖² = Σ_ts (U_iᵀU_i)_ts (G_iᵀG_i)_ts. Per-sample gradients either by unfold + matmul or
by one convolution_backward with the batch folded into the groups, or (stride 1) by one product per position of
the kernel's leading dims, of G_i and a window of the padded, flattened x_i stacked over the last dim's shifts
(`shifted_windows`: no unfold). Bias: g_i = Σ_t G_i.
A transposed convolution swaps the roles: its weight gradient is x_i unfold(G_i)ᵀ, over x's positions.
With K views per sample (rows b·K … b·K+K−1 of dim 0), a sample's positions are its views' K·T positions.
"""
from __future__ import annotations

import itertools
from math import prod

import sympy
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import Tensor

from dpcompile import conv_kernels
from dpcompile.ops import per_sample_conv_weight_grad

from ..meta import LayerShape, Site
from ..symbolic import same
from . import WORD, Cost, generalized_linear_costs, register
from .bounds import (Bound, F64, SUBNORMAL, accumulation_gamma, certified, clipped_product_margin,
                     full_precision, fused_gram_sum_bound, fused_grams, gamma, gram_sum_bound, half_grams, masked,
                     masked_scaled, matrix_product, release_underflow, row_norms, summed_squares_bound,
                     tensor_core_product_error, tf32_product_error, unit_roundoff, upper_sum)
from .layout import per_row, rows_per_sample, shape_of, views_into_positions, views_of

aten = torch.ops.aten
# How per-sample weight gradients are formed (ConvRule.implementation), measured in full fp32 (H100 and H200, torch
# 2.11, benchmarks/layer_costs.py). The batch-folded grouped convolution beat unfold + matmul only for (nearly)
# depthwise convolutions:
GROUPED_CONV_MAX_CHANNELS_PER_GROUP = 4
# Shifted windows (stride 1) take one batched product, so one launch, per position of the kernel's leading dims (3 for
# 3×3, 7 for 7×7, 9 for 3×3×3). Against unfold + one product (H200, B=256, 2026-12-01): 0.96× the time at 64 channels
# and 32² or 56², 0.64× for a 7×7 depthwise conv at 28², but 1.5-3.7× at 16² and below (short products, more padding)
# and 1.2-1.5× for a dense conv of 3 or 16 channels (narrow products); those keep the unfold, which is small there.
SHIFTED_CONV_MAX_PRODUCTS = 9
SHIFTED_CONV_MIN_POSITIONS = 512  # output positions per sample
SHIFTED_CONV_MIN_CHANNELS = 32  # input channels, dense convs (groups == 1)
# A ghost-clipped stride-1 convolution's Grams and clipped sum over the padded grid's windows (one product per kernel
# position, no unfold: the unfold, d × T per sample, is a large transient of the DP backward) where the kernel has at
# most this many positions and the grid's L positions (padding columns included) are at most this many times T, the
# Grams growing as L². Off by default (GHOST_ON_GRID): certified and tested against the reference on the CPU, eager
# and inductor, but not yet run or timed on CUDA, where a liveness walk of the graphs predicts its memory gain and
# the allocator has not confirmed it (benchmarks/NOTES.md, twenty-ninth session). The tests turn it on
# (tests/helpers.shifted_convs).
GHOST_ON_GRID = False
SHIFTED_GRAM_MAX_PRODUCTS = 9
SHIFTED_GRAM_MAX_STRETCH = 1.25
# Per-sample gradients of 2-D convolutions with one group and a kernel larger than 1×1, in the dtypes and on the
# devices listed: one Triton kernel reading x in place (dpcompile.conv_kernels), which inductor launches from its own
# generated code (ops.lower_per_sample_conv2d_grad). On CUDA by default since the thirty-fourth session: layer by
# layer it is 1.6-4.0× faster than the products above in bf16 (H200, torch 2.11, 2026-12-04); over whole bf16 steps it took
# 0.28 ms (WRN-16-4) and 0.48 ms (ResNet-18 GN) of device time off and less memory, and once inductor launched it the
# host no longer paid for its Python launch path (which had made WRN-16-4's step 9.7 → 11.2 ms in the thirty-third
# session); benchmarks/NOTES.md, thirty-third and thirty-fourth sessions. Not faster in fp32 with TF32, nor for 1×1
# kernels. () turns it off. bf16 (autocast) and fp16 operands (a model in half precision; fp16 autocast is refused),
# both accumulated in fp32: fp16 since the thirty-fifth session, once the random-convolution test's fp16 draws passed
# on the H200 (tests/test_conv_kernels.py).
IMPLICIT_CONV_DEVICES: tuple[str, ...] = ("cuda",)
# Devices where a ghost-clipped convolution over the unfold's positions with one group takes its Gram sums from one
# kernel that stores no Gram (bounds.fused_gram_sum_bound, where bounds.fused_grams allows the operands: bf16, and fp32
# on TF32 tensor cores once FUSED_GRAM_DTYPES lists it), as linear layers do. Off by default: certified, and its
# tests pass on the CPU and on CUDA, but on an H100 it was no faster than the stored Grams (WRN-16-4 and ResNet-18
# 32², within ±2% of device time: benchmarks/NOTES.md, forty-seventh session). The tests turn it on.
FUSED_GRAM_CONV_DEVICES: tuple[str, ...] = ()
# Devices where 16-bit products over the unfold's positions T run aligned for cuBLAS's tensor-core kernels where T·2
# bytes are not a multiple of 16 (ResNet-50's 14² and 7² layers, T = 196, 49): a per-sample product's operands (T its
# contraction, the stride-1 dim of an NCHW operand) are pinned channels-last first (aligned_for_tensor_cores: a no-op
# where inductor stores them so already, else one copy of each), and a Gram's operand (T its result's rows and
# columns, whose leading dimension no operand layout mends) gets zero positions up to a multiple of 8, the extra rows
# and columns of exact zeros sliced off its Gram (padded_for_tensor_cores). Unaligned, cuBLAS ran the 7² Grams on an
# sm75 WMMA kernel for unaligned operands, 0.45 ms of ResNet-50 bf16's device time a step, and most likely the 14²
# per-sample 1×1 products on an align-2 kernel, 0.30 ms (H100, torch 2.11, benchmarks/NOTES.md, fiftieth session);
# the Grams' operands pinned channels-last instead of padded made their kernel slower (0.61 ms: still align-1, the
# result's rows being 49 apart). With the pins and the padding both kernels were gone and the step's device time fell
# from 13.00 to 12.54 ms (H100, torch 2.11, one call; benchmarks/NOTES.md, fifty-first session). () turns it off.
# fp32 operands of TF32 products (rows aligned at multiples of 4) are left alone: padded and pinned the same way,
# ResNet-50 fp32's step took 18.40 ms of device time against 18.18 unaligned (H100, fifty-second session).
ALIGNED_OPERAND_DEVICES: tuple[str, ...] = ("cuda",)
# Devices where products of any dtype take two alignments that copy nothing (each joins a copy the form makes anyway):
# the padded grid's rows widened to whole 16-byte units (grid_widening: every shifted window then starts aligned) and
# the unfold's rows padded likewise (padded_rows: the per-sample product's result rows aligned). ResNet-50 (GN) fp32's
# middle kernel rows of its 56² and 28² stride-1 convolutions (rows of 58 and 30 values) and its 7×7 stem (rows of
# 147) had run on cuBLAS's align-1 TF32 kernel, 0.46 ms a step (H100, torch 2.11). Off by default: with both, whole
# fp32 `auto` steps (H100, torch 2.11, 2026-12-07, cold caches) took ResNet-50 (GN) 224² b32 from 18.38 to 18.11 ms of
# device time, peak memory 3.235 GiB both, and ResNet-18 (GN) 32² b256 from 12.79 to 12.67 ms, but its peak from 1.496
# to 1.732 GiB (+16%), above the 1.3× of non-private training that the memory target allows (benchmarks/NOTES.md,
# fifty-eighth session). The grid widening alone gives the same 1.732 GiB: the peak moves into layer1's per-sample
# products, whose buffers of widened rows are live together (fifty-ninth session). The tests turn it on.
COPY_FREE_ALIGNMENT_DEVICES: tuple[str, ...] = ()
# The 16-bit elements in cuBLAS's 16-byte alignment.
ROW_MULTIPLE = 8
IMPLICIT_CONV_DTYPES = (torch.bfloat16, torch.float16)
# Devices where a per-sample term of fp32 operands on TF32 tensor cores (Decision.tf32: its release is the computed
# ĝ_i, clipped by their own norm, so any algorithm cuDNN picks is admissible) takes the grouped form on cuDNN's TF32
# ('grouped': the batch folded into the groups, one weight gradient), for a dense 2-D-or-more stride-1 convolution
# with a kernel larger than 1×1, at least GROUPED_TF32_MIN_POSITIONS output positions, GROUPED_TF32_MIN_CHANNELS input
# and at most GROUPED_TF32_MAX_CHANNELS output channels. Layer by layer on an H100 (torch 2.11, 2026-12-06, channels-
# last operands, their conversion included; benchmarks/NOTES.md, fifty-fifth session) it took 0.64 against the shifted
# form's 1.00 ms (32², 64→64, b256), 0.51 against unfold's 1.50 (16², 128→128), 0.48 against 1.29 (56², 64→64, b64)
# and 0.27 against 0.70 (b32); outside those bounds it was slower (8² and 14² at 256 channels, 16 input channels,
# stride 2, 1×1). Off by default: its tests pass on CUDA, but whole fp32 `auto` steps on an H100 (torch 2.11,
# 2026-12-07, fifty-seventh session) were no faster by device time with it (ResNet-18 (GN) 32² b256 12.76 → 12.85 ms,
# WRN-16-4 10.31 → 10.46) and took 15% more peak memory. The tests turn it on for the CPU, where the op's products
# are IEEE.
GROUPED_TF32_CONV_DEVICES: tuple[str, ...] = ()
GROUPED_TF32_MIN_POSITIONS = 256
GROUPED_TF32_MIN_CHANNELS = 32
GROUPED_TF32_MAX_CHANNELS = 128
ARG_NAMES = ("grad_out", "input", "weight", "bias_sizes", "stride", "padding", "dilation",
             "transposed", "output_padding", "groups", "output_mask")


def conv_args(node: fx.Node) -> dict:
    """convolution_backward's arguments by name."""
    return dict(zip(ARG_NAMES, node.args))


def in_conv_roles(c: dict, g: Tensor, x: Tensor) -> tuple[Tensor, Tensor, list | None]:
    """(g, x, positions) in a convolution's roles: a transposed convolution's weight gradient is x_i unfold(G_i)ᵀ over
    x's positions (positions, for unfold_nd and patch_rows), so its operands swap; a convolution's stay (None)."""
    return (x, g, list(x.shape[2:])) if c["transposed"] else (g, x, None)


def within_positions(x: Tensor, positions, kernel: list[int], stride, dilation) -> Tensor:
    """Padded x cut to what its first `positions` windows (per spatial dim) read: a transposed convolution's output
    gradient, unfolded over the input's positions, has more windows than the input has positions where its output
    padding is at least its stride (allowed when the dilation is larger); the positions past them reach only the
    output padding, which no input reaches. None, or nothing to cut: x itself."""
    if positions is None:
        return x
    spans = [(n - 1) * s + (k - 1) * d + 1 for n, k, s, d in zip(positions, kernel, stride, dilation)]
    if all(span >= size for span, size in zip(spans, x.shape[2:])):
        return x
    return x[(..., *(slice(0, span) for span in spans))]


def unfold_nd(x: Tensor, kernel: list[int], stride, padding, dilation, positions=None) -> Tensor:
    """Patches of x (B, C, *S) as (B, C·prod(kernel), T), channel-major like a conv weight, F.unfold's layout
    (exact copies, no arithmetic: a strided slice for a 1×1 kernel, else strided windows; not im2col, whose
    decomposition is an index gather with 2.5× the nodes to trace and lower). positions: the first windows only,
    this many per spatial dim (within_positions)."""
    n, (B, C) = len(kernel), x.shape[:2]
    x = F.pad(x, [p for p in reversed(padding) for _ in (0, 1)]) if any(padding) else x
    x = within_positions(x, positions, kernel, stride, dilation)
    if all(k == 1 for k in kernel):  # a pointwise conv (most of a ResNet's): no gather to trace, compile or run
        return x[(..., *(slice(None, None, s) for s in stride))].flatten(2)
    for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
        x = x.unfold(2 + i, (k - 1) * d + 1, s)[..., ::d]
    x = x.permute(0, 1, *range(2 + n, 2 + 2 * n), *range(2, 2 + n))  # (B, C, *kernel, *positions)
    return x.reshape(B, C * prod(kernel), prod(x.shape[2 + n:]))


def patch_rows(x: Tensor, kernel: list[int], stride, padding, dilation, groups: int, positions=None) -> Tensor:
    """Patches of x (N, C, *S) as GEMM rows, (groups, N·T, prod(kernel)·C/groups): a row per output position
    (sample major), kernel position major and channel minor within it; unfold_nd's values in another order, copied
    once. Channels-last x, the convolutions' layout on CUDA, is then read and written along C, where unfold_nd's
    channel-major patches read it C apart (WRN-16-4's clipped sums at 8×8: 0.62 ms a step of that copy, H200).
    positions as unfold_nd's."""
    n, N, C = len(kernel), x.shape[0], x.shape[1]
    x = F.pad(x, [p for p in reversed(padding) for _ in (0, 1)]) if any(padding) else x
    x = within_positions(x, positions, kernel, stride, dilation)
    x = x.unflatten(1, (groups, C // groups))  # (N, groups, C/groups, *S)
    if all(k == 1 for k in kernel):
        x = x[(..., *(slice(None, None, s) for s in stride))].unsqueeze(-1)  # (N, groups, C/groups, *positions, 1)
        n_k = 1
    else:
        for i, (k, s, d) in enumerate(zip(kernel, stride, dilation)):
            x = x.unfold(3 + i, (k - 1) * d + 1, s)[..., ::d]  # (N, groups, C/groups, *positions, *kernel)
        n_k = n
    x = x.permute(1, 0, *range(3, 3 + n + n_k), 2).clone(memory_format=torch.contiguous_format)
    return x.reshape(groups, N * prod(x.shape[2:2 + n]), prod(x.shape[2 + n:]))  # a view of the contiguous copy


def grams(a: Tensor, tf32: bool = False) -> Tensor:
    """a_tᵀ a_s per sample and group, (B, G, n, T) → (B, G, T, T): one bmm over B·G, contracting n (an einsum
    traces to the same product with twice the ops, about 45 ms of the DP passes' time each); tf32: fp32 operands
    on TF32 tensor cores (fp32 operands: certified_grams decides). On WRN-16-4 (five ghost convolutions at
    T = 64) they take 0.3 of 10.4 ms of kernel time off a step (H200, 2026-12-02). bf16 operands (half_grams):
    bf16 products with fp32 results (dpcompile::half_bmm), their operands padded first where T misaligns the
    Gram's rows and the Gram sliced back (padded_for_tensor_cores)."""
    flat = a.flatten(0, 1)
    if half_grams(flat):
        T, flat = flat.shape[-1], padded_for_tensor_cores(flat)
        out = torch.ops.dpcompile.half_bmm(flat.transpose(1, 2), flat)
        return (out if flat.shape[-1] == T else out[:, :T, :T]).unflatten(0, a.shape[:2])
    return matrix_product(flat.transpose(1, 2), flat, tf32).unflatten(0, a.shape[:2])


def aligned_for_tensor_cores(flat: Tensor) -> Tensor:
    """flat (N, n, T) pinned channels-last (strides n·T, 1, n) where misaligned_positions says its rows, as a
    row-major operand of a 16-bit tensor-core product, start off cuBLAS's 16-byte alignment while n's would not: a
    product contracting T then reads both sides with leading dimension n (dpcompile::stored, lowered as a
    stride-order requirement: no copy where the value is stored so). The same values: no product's error model
    depends on the operands' layout."""
    _, n, T = flat.shape
    if not misaligned_positions(flat) or not isinstance(n, int) or n % ROW_MULTIPLE != 0:
        return flat
    return torch.ops.dpcompile.stored(flat, [n * T, 1, n])


def padded_for_tensor_cores(flat: Tensor) -> Tensor:
    """flat (N, n, T) with zero positions appended up to a multiple of ROW_MULTIPLE where misaligned_positions says
    T misaligns its rows: its Gram (T × T) then has aligned rows, and the rows and columns the zeros add are exact
    zeros (each a sum of products with a zero factor), which the caller slices off. The contraction (n) and so the
    Gram's error model are unchanged."""
    T = flat.shape[-1]
    return F.pad(flat, (0, -T % ROW_MULTIPLE)) if misaligned_positions(flat) else flat


def alignment_unit(t: Tensor) -> int:
    """t's elements in cuBLAS's 16-byte operand alignment."""
    return 16 // t.element_size()


def padded_rows(flat: Tensor) -> Tensor:
    """flat (N, d, T), the unfolded operand of per-sample products G_i U_iᵀ (N, p, d), with zero rows appended up to
    a whole number of cuBLAS's 16-byte alignment units where its device is one COPY_FREE_ALIGNMENT_DEVICES lists and
    d is static: the result's rows are then aligned (rows of 147 fp32 values, ResNet-50's 7×7 stem on 3 channels, ran
    on an align-1 kernel). The rows are exact zeros, so are the result's columns they add, which the caller slices
    off; the other entries are the same dot products over T. Only where flat is the unfold's copy (a kernel larger
    than 1×1), whose writing the zeros join."""
    d = flat.shape[1]
    if flat.device.type not in COPY_FREE_ALIGNMENT_DEVICES or not isinstance(d, int):
        return flat
    return F.pad(flat, (0, 0, 0, -d % alignment_unit(flat))) if d % alignment_unit(flat) else flat


def misaligned_positions(flat: Tensor) -> bool:
    """Whether flat (N, n, T) is 16-bit on a device ALIGNED_OPERAND_DEVICES lists, with a static T whose rows of
    T·2 bytes would start off cuBLAS's 16-byte alignment (T not a multiple of ROW_MULTIPLE)."""
    T = flat.shape[-1]
    return (flat.device.type in ALIGNED_OPERAND_DEVICES and flat.element_size() == 2 and isinstance(T, int)
            and T % ROW_MULTIPLE != 0)


def certified_grams(a: Tensor, norms: Tensor, tf32: bool) -> tuple[Tensor, float, float | Tensor]:
    """(Â, γ, e): grams(a) with |Â_ts − A_ts| ≤ γ‖a_t‖‖a_s‖ + e for a over n features with position norms `norms`
    (B, G, T); on TF32 tensor cores where tf32 and a is fp32 (tf32_product_error, e per sample), as bf16 products
    where half_grams(a) (tensor_core_product_error, nothing truncated), else IEEE (γ_n, n·η). One place decides
    both the product and its error."""
    if half_grams(a):
        top = norms.amax((1, 2))
        return (grams(a), *tensor_core_product_error(a.shape[2], top, top, 0.0))
    return (grams(a, tf32 and a.dtype == torch.float32), *gram_error(a.shape[2], norms, tf32, a.dtype))


def gram_error(n: int, norms: Tensor, tf32: bool, dtype: torch.dtype) -> tuple[float, float | Tensor]:
    """(γ, e) of a Gram over n features of dtype, |Â_ts − A_ts| ≤ γ‖a_t‖‖a_s‖ + e, its entries dot products summed
    in any order, with products and additions rounded in dtype (γ_n, n·η) or on TF32 tensor cores where tf32 and
    dtype is fp32 (tf32_product_error, e per sample from the largest position norm, norms (B, G, T))."""
    if tf32 and dtype == torch.float32:
        top = norms.amax((1, 2))
        return tf32_product_error(n, top, top)
    return gamma(n, unit_roundoff(dtype)), n * SUBNORMAL[dtype]


def padded_grid(x: Tensor, g: Tensor, kernel: list[int], padding, dilation) -> tuple[Tensor, Tensor, list[int]]:
    """A stride-1 convolution on one flattened grid: (xf, gf, offsets). x zero-padded and flattened per
    channel, xf (B, C, Lx); G zero-padded on its trailing spatial dims to x's padded sizes and flattened, gf
    (B, C_out, L). In these coordinates the input at kernel position k (row-major) of the output at flattened index
    t is xf[..., t + offsets[k]] (offsets of the leading kernel dims' positions only, the last dim's shifts being
    j·dilation, j < k_last), so that g = Σ_t gf_t ⊗ (xf_{t + o_k})_k. The zeros G gains add exact
    zeros; x gets extra zero rows at the end so that every window stays within its own channel (never reaches
    another channel or sample), and grid_widening's zero columns on the right of its last dim."""
    n, padded, widening = len(kernel), grid_sizes(x, kernel, padding), grid_widening(x, kernel, padding)
    out = list(g.shape[2:])
    step = [prod(padded[j + 1:]) for j in range(n)]  # strides of the padded grid, flattened
    spread = (kernel[-1] - 1) * dilation[-1]
    overflow = sum((padded[j] - out[j]) * step[j] for j in range(1, n)) + spread
    extra = -(-overflow // step[0])
    after = [padding[j] + (extra if j == 0 else 0) + (widening if j == n - 1 else 0) for j in range(n)]
    x_pads = [q for j in reversed(range(n)) for q in (padding[j], after[j])]
    g_pads = [q for j in reversed(range(n)) for q in (0, padded[j] - out[j] if j else 0)]
    pad = lambda t, pads: F.pad(t, pads) if any(pads) else t  # noqa: E731
    xf, gf = pad(x, x_pads).flatten(2), pad(g, g_pads).flatten(2)
    offsets = [sum(k * d * s for k, d, s in zip(pos, dilation, step))
               for pos in itertools.product(*(range(k) for k in kernel[:-1]))]
    assert spread + gf.shape[-1] + max(offsets) <= xf.shape[-1], "a shifted window would leave its channel"
    return xf, gf, offsets


def grid_sizes(x: Tensor, kernel: list[int], padding) -> list:
    """padded_grid's spatial sizes: x's zero-padded, the last widened by grid_widening."""
    padded = [s + 2 * p for s, p in zip(x.shape[2:], padding)]
    padded[-1] += grid_widening(x, kernel, padding)
    return padded


def grid_widening(x: Tensor, kernel: list[int], padding) -> int:
    """Zero columns padded_grid appends to x's padded last dim: up to a whole number of cuBLAS's 16-byte alignment
    units where x's device is one COPY_FREE_ALIGNMENT_DEVICES lists, the padded size is static and the kernel has
    positions along its leading dims, else none. A product then reads every window, which starts a whole number of
    grid rows in, aligned: with rows of 58 and 30 fp32 values (ResNet-50's 56² and 28² stride-1 convolutions, padding
    1) the middle kernel row's window started off the alignment, and cuBLAS ran its product on an align-1 kernel.
    The columns are exact zeros in every product."""
    width = x.shape[-1] + 2 * padding[-1]
    if x.device.type not in COPY_FREE_ALIGNMENT_DEVICES or prod(kernel[:-1]) == 1 or not isinstance(width, int):
        return 0
    return -width % alignment_unit(x)


def shifted_windows(x: Tensor, g: Tensor, kernel: list[int], padding, dilation) -> tuple[Tensor, Tensor, list[int]]:
    """A stride-1 convolution's weight gradient without an unfold: (gf, xs, offsets) on padded_grid's grid, xf
    stacked once per position j of the last kernel dim, shifted left by j·dilation: xs (B, C·k_last, M),
    channel-major, so that one product gf · xs[..., o : o + L]ᵀ per offset o of the other kernel dims' positions
    (row-major) is the gradient there at every position of the last, (C_out, C, k_last): the weight's own layout."""
    xf, gf, offsets = padded_grid(x, g, kernel, padding, dilation)
    reach = gf.shape[-1] + max(offsets)
    xs = torch.stack([xf[..., j * dilation[-1]:j * dilation[-1] + reach] for j in range(kernel[-1])], 2)
    return gf, xs.flatten(1, 2), offsets


def window_offsets(offsets: list[int], kernel: list[int], dilation) -> list[int]:
    """padded_grid's offsets of every kernel position, row-major (the last dim's shifts within each)."""
    return [o + j * dilation[-1] for o in offsets for j in range(kernel[-1])]


def shifted_grams(xf: Tensor, offsets: list[int], L: int, groups: int, tf32: bool) -> Tensor:
    """The Grams of the unfolded input over the padded grid's first L positions without an unfold, (B, G, L, L):
    Σ_k W_kᵀ W_k over the windows W_k = xf[..., o_k : o_k + L] (one product per kernel position, added in fp32 or
    wider). Each entry is then a dot product over the d = C·K patch values summed in some order, so γ_d (IEEE) or
    TF32's error over d (tf32_product_error) bounds it as for the unfold's one product (ghost_grams)."""
    flat = xf.reshape(xf.shape[0] * groups, -1, xf.shape[-1])
    total = None
    for o in offsets:  # each product added into the sum so far (baddbmm): one more Gram-sized buffer at a time
        window = flat[..., o:o + L]
        total = matrix_product(window.transpose(1, 2), window, tf32, add=total)
    return total.unflatten(0, (xf.shape[0], groups))


def certified_grid_grams(xf: Tensor, offsets: list[int], L: int, groups: int, norms: Tensor,
                         tf32: bool) -> tuple[Tensor, float, float | Tensor]:
    """(Â, γ, e): shifted_grams over the grid with |Â_ts − A_ts| ≤ γ‖u_t‖‖u_s‖ + e, as certified_grams for the
    unfold's (one place decides both the products and their error): over d = C/groups·K patch values."""
    d = xf.shape[1] // groups * len(offsets)
    tf32 = tf32 and xf.dtype == torch.float32
    return (shifted_grams(xf, offsets, L, groups, tf32), *gram_error(d, norms, tf32, xf.dtype))


def grid_position_norms(xf: Tensor, offsets: list[int], L: int, groups: int, dtype: torch.dtype) -> Tensor:
    """Upper bounds on ‖u_t‖ per group at each of the grid's first L positions, (B, groups, L) float64: the
    channel-summed squares of xf (its values exactly those of an x of dtype) summed over the kernel's windows, d
    squares in all (d − 1 roundings in any order), 2 more roundings for the square root."""
    sq = xf.to(F64).square()
    sq = sq.reshape(xf.shape[0], groups, -1, sq.shape[-1]).sum(2)
    windows = sq[..., offsets[0]:offsets[0] + L]
    for o in offsets[1:]:
        windows = windows + sq[..., o:o + L]
    d = xf.shape[1] // groups * len(offsets)
    return summed_squares_bound(windows, d, dtype, roundings=2).sqrt()


def batch_rows(t: Tensor) -> Tensor:
    """(B, groups, n, T) → (groups, n, B·T), copied contiguous: a clipped sum's GEMM operand over every sample's
    positions (a copy, not einsum's reshape, which asked whether B = 1 and fixed a graph traced at a batch of one)."""
    return t.permute(1, 2, 0, 3).clone(memory_format=torch.contiguous_format).flatten(2)


def shifted_length(x: Tensor, g_shape, kernel, padding) -> int:
    """L of shifted_windows (the products' accumulation length) for x as the products take it: the output's first
    spatial size times the padded grid's trailing sizes (grid_sizes, its widening included)."""
    return g_shape[2] * prod(grid_sizes(x, kernel, padding)[1:])


class ConvRule:
    family = "conv"
    products = {"conv": "conv"}  # its sites that are products, and their kind (precision.tf32_kinds)
    ops = (aten.convolution_backward.default,)
    methods = ("ghost", "per_sample")

    def match(self, node: fx.Node, batch: sympy.Expr) -> Site | str:
        conv = node.args[0]
        a = conv_args(conv)
        g_shape, x_shape, w_shape = shape_of(a["grad_out"]), shape_of(a["input"]), shape_of(a["weight"])
        k = rows_per_sample(g_shape[0], batch, views_of(node))
        if k is None or not same(x_shape[0], g_shape[0]):
            return f"its batch dim ({g_shape[0]}) is not the model's batch ({batch})"
        groups = a["groups"]
        dims = len(w_shape) - 2
        consts = {n: list(a[n]) * dims if len(a[n]) == 1 else list(a[n]) for n in ("stride", "padding", "dilation")}
        consts.update(groups=groups, kernel=[int(size) for size in w_shape[2:]], param=node.args[1],
                      transposed=bool(a["transposed"]), output_padding=list(a["output_padding"]), k=k)
        T = k * prod(g_shape[2:])
        if node.args[1] == 2:
            shape = LayerShape(B=batch, T=T, d=sympy.Integer(1), p=w_shape[0])
            return Site("conv_bias", (a["grad_out"],), consts, shape, op="aten.convolution_backward")
        d = w_shape[1] * prod(w_shape[2:])
        shape = LayerShape(B=batch, T=T, d=d, p=w_shape[0] / groups, groups=groups)
        if a["transposed"]:  # weight (C_in, C_out/groups, *k): unfold the output gradient over x's positions
            shape = LayerShape(B=batch, T=k * prod(x_shape[2:]), d=d, p=w_shape[0] / groups, groups=groups)
        return Site("conv", (a["grad_out"], a["input"], a["weight"]), consts, shape, op="aten.convolution_backward")

    def implementation(self, site: Site, method: str, tf32: bool = False) -> str:
        """How the plan's method forms a weight term's products (Site.impl); tf32: the term's products on TF32 tensor
        cores (Decision.tf32). Per-sample gradients: 'grouped' (the batch folded into mkldnn's groups, or cuDNN's
        on TF32: _grouped_tf32), 'shifted' (stride 1: a product per position of the kernel's leading dims, no
        unfold), 'implicit' (one Triton kernel, for bf16 operands on CUDA by default: _implicit) or 'unfold'.
        Ghost clipping: 'shifted' (the Grams and, on CUDA, the clipped sum over the padded grid's windows, no unfold:
        _ghost_on_grid) or '' (the unfold). '' for a bias term."""
        if site.rule == "conv" and method == "ghost":
            return "shifted" if self._ghost_on_grid(site) else ""
        if site.rule != "conv" or method != "per_sample":
            return ""
        c = site.consts
        if c.get("transposed") or c.get("k", 1) > 1:  # views summed per sample: one contraction
            return "unfold"
        if self._implicit(site):
            return "implicit"
        if tf32 and self._grouped_tf32(site):
            return "grouped"
        g = site.inputs[0].meta["val"]
        channels_per_group = site.shape.d / prod(c["kernel"])
        near_depthwise = site.shape.groups > 1 and int(channels_per_group) <= GROUPED_CONV_MAX_CHANNELS_PER_GROUP
        if near_depthwise and not g.is_cuda:  # cuDNN may pick FFT/Winograd weight gradients, outside γ_T·M
            return "grouped"
        spatial = [*g.shape[2:], *site.inputs[1].meta["val"].shape[2:]]
        if not all(isinstance(s, int) for s in spatial) or set(c["stride"]) != {1} or prod(c["kernel"]) == 1:
            return "unfold"
        narrow = site.shape.groups == 1 and int(channels_per_group) < SHIFTED_CONV_MIN_CHANNELS
        products = prod(c["kernel"][:-1])  # shifted_windows: one per position of the leading kernel dims
        if products <= SHIFTED_CONV_MAX_PRODUCTS and prod(g.shape[2:]) >= SHIFTED_CONV_MIN_POSITIONS and not narrow:
            return "shifted"
        return "unfold"

    def _implicit(self, site: Site) -> bool:
        """Whether a per-sample weight term runs dpcompile.conv_kernels' kernel (impl "implicit"): a 2-D
        convolution, one group, a kernel larger than 1×1, g and x of one dtype in IMPLICIT_CONV_DTYPES on a device
        in IMPLICIT_CONV_DEVICES, Triton importable."""
        c = site.consts
        g, x = (a.meta["val"] for a in site.inputs[:2])
        return (len(c["kernel"]) == 2 and site.shape.groups == 1 and prod(c["kernel"]) > 1 and g.dtype == x.dtype
                and g.dtype in IMPLICIT_CONV_DTYPES and g.device.type in IMPLICIT_CONV_DEVICES
                and (g.device.type != "cuda" or conv_kernels.available()))

    def _grouped_tf32(self, site: Site) -> bool:
        """Whether a TF32 per-sample weight term takes the grouped form on cuDNN's TF32 (GROUPED_TF32_CONV_DEVICES):
        one group, stride 1, a kernel larger than 1×1, static spatial sizes, and the positions and channels where it
        was measured faster."""
        c = site.consts
        g = site.inputs[0].meta["val"]
        if g.device.type not in GROUPED_TF32_CONV_DEVICES or site.shape.groups != 1 or set(c["stride"]) != {1} \
                or prod(c["kernel"]) == 1 or not all(isinstance(s, int) for s in g.shape[1:]):
            return False
        return (prod(g.shape[2:]) >= GROUPED_TF32_MIN_POSITIONS and g.shape[1] <= GROUPED_TF32_MAX_CHANNELS
                and int(site.shape.d / prod(c["kernel"])) >= GROUPED_TF32_MIN_CHANNELS)

    def _ghost_on_grid(self, site: Site) -> bool:
        """Whether a ghost weight term's Grams and clipped sum run over the padded grid's windows (impl "shifted"):
        GHOST_ON_GRID, stride 1, not transposed, one view per sample, static spatial sizes, a kernel of 2 to SHIFTED_GRAM_MAX_PRODUCTS
        positions and a grid at most SHIFTED_GRAM_MAX_STRETCH times the output's positions."""
        c = site.consts
        if not GHOST_ON_GRID:
            return False
        g, x = (a.meta["val"] for a in site.inputs[:2])
        spatial = [*g.shape[2:], *x.shape[2:]]
        if c["transposed"] or c.get("k", 1) > 1 or set(c["stride"]) != {1} or \
                not 1 < prod(c["kernel"]) <= SHIFTED_GRAM_MAX_PRODUCTS or not all(isinstance(s, int) for s in spatial):
            return False
        L = shifted_length(x, g.shape, c["kernel"], c["padding"])  # of x's width: its Grams' may be narrower
        return L <= SHIFTED_GRAM_MAX_STRETCH * prod(g.shape[2:])

    def _unfolded(self, site: Site, g: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """U (B, groups, d, k·T) and G (B, groups, p, k·T); g_i = G_i U_iᵀ per group (k views per sample)."""
        c, groups, k = site.consts, site.consts["groups"], site.consts.get("k", 1)
        g, x, positions = in_conv_roles(c, g, x)
        u = unfold_nd(x, c["kernel"], c["stride"], c["padding"], c["dilation"], positions)
        rows, T = g.shape[0], u.shape[-1]
        u, g = u.reshape(rows, groups, u.shape[1] // groups, T), g.reshape(rows, groups, g.shape[1] // groups, T)
        return views_into_positions(u, k), views_into_positions(g, k)

    def per_sample(self, site: Site, g: Tensor, *rest: Tensor) -> Tensor:
        """Per-sample weight (B, C_out, C_in/groups, *k) or bias (B, C_out) gradients."""
        if site.rule == "conv_bias":
            return views_into_positions(g.flatten(2), site.consts.get("k", 1)).sum(2)
        x, w = rest
        impl = site.impl or "unfold"
        if impl == "grouped" and not site.consts["transposed"]:
            return self._per_sample_grouped(site, g, x, w)
        if impl == "shifted":
            return self._per_sample_shifted(site, g, x, w)
        if impl == "implicit":  # (B, *w.shape), stored along C (conv_kernels.per_sample_buffer)
            c = site.consts
            return torch.ops.dpcompile.per_sample_conv2d_grad(g, x, c["kernel"], c["stride"], c["padding"],
                                                              c["dilation"])
        u, gg = self._unfolded(site, g, x)
        rows, d = u.shape[0], u.shape[2]
        u = u.flatten(0, 1) if all(k == 1 for k in site.consts["kernel"]) else padded_rows(u.flatten(0, 1))
        gg, u = aligned_for_tensor_cores(gg.flatten(0, 1)), aligned_for_tensor_cores(u)
        product = matrix_product(gg, u.transpose(1, 2), site.tf32)  # (B·groups, p, d), or d padded_rows' more
        return (product if u.shape[1] == d else product[..., :d]).reshape(rows, *w.shape)

    def _per_sample_shifted(self, site: Site, g: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """Stride 1: one batched product per position of the kernel's leading dims, of G and a window of the
        padded x stacked over the last dim's shifts (shifted_windows), so the unfold (B, d, T), often the DP
        backward's largest tensor, is never formed (x stacked is k_last·|x|). The products come out in the
        weight's layout, so the norms and sums after them read it contiguously."""
        c, groups, k_last = site.consts, site.consts["groups"], site.consts["kernel"][-1]
        gf, xs, offsets = shifted_windows(x, g, c["kernel"], c["padding"], c["dilation"])
        L = gf.shape[-1]
        gf = gf.reshape(x.shape[0] * groups, -1, L)  # (B·groups, p, L)
        parts = [matrix_product(gf, xs[..., o:o + L].reshape(gf.shape[0], -1, L).transpose(1, 2), site.tf32)
                 for o in offsets]  # each (B·groups, p, c·k_last)
        ps = torch.stack([part.unflatten(2, (-1, k_last)) for part in parts], 3)  # (B·groups, p, c, leading, k_last)
        return ps.reshape(x.shape[0], *w.shape)

    def _per_sample_grouped(self, site: Site, g: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """One convolution_backward with the batch folded into the groups (an opaque runtime op)."""
        c = site.consts
        return per_sample_conv_weight_grad(g, x, list(w.shape), c["stride"], c["padding"], c["dilation"], c["groups"],
                                           site.tf32)

    def ghost_norm_sq(self, site: Site, g: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """Σ_groups Σ_ts (UᵀU ∘ GᵀG)_ts per sample."""
        u, gg = self._unfolded(site, g, x)
        return (grams(u) * grams(gg)).flatten(1).sum(1)

    def _position_norms(self, site: Site, g: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """Upper bounds on ‖u_t‖ and ‖g_t‖ per group and position, (B, groups, k·T) float64, without
        unfolding x: the channel-summed squares of x, unfolded (a window sum over a single channel per group)."""
        c, groups, k = site.consts, site.consts["groups"], site.consts.get("k", 1)
        g, x, positions = in_conv_roles(c, g, x)
        B = g.shape[0]
        sq = x.to(F64).square()
        sq = sq.reshape(B, groups, sq.shape[1] // groups, *sq.shape[2:]).sum(2)
        windows = unfold_nd(sq, c["kernel"], c["stride"], c["padding"], c["dilation"], positions)
        T = windows.shape[-1]
        d = x.shape[1] // groups * prod(c["kernel"])
        # the channel and window sums add d squares in all (d − 1 roundings); 2 more for the square root
        r_sq = summed_squares_bound(windows.reshape(B, groups, prod(c["kernel"]), T).sum(2), d, x.dtype, roundings=2)
        rho = row_norms(g.reshape(B, groups, g.shape[1] // groups, T), dims=(2,))
        return views_into_positions(r_sq.sqrt(), k), views_into_positions(rho, k)

    def ghost_norm_bound(self, site: Site, g: Tensor, x: Tensor, w: Tensor) -> Bound:
        """[s, e, a]: the Gram form plus its error bound, the clipped sum's rounding per unit c, (u + γ_n)·M_i over
        the n products per sample of an entry (mkldnn's direct or GEMM weight gradient on CPU, a GEMM on unfolded
        inputs on CUDA, or one per kernel position over the padded grid; with tf32 TF32 GEMMs, whose truncation the
        margin adds, and TF32 Grams, whose error s takes: tf32_product_error), and what underflow in the clip-scaled
        output gradients adds (release_underflow, per group). The Grams and position norms over the output's T
        positions (_grams_unfolded; where _fused says, their sums from one kernel that stores no Gram:
        bounds.fused_gram_sum_bound) or, impl "shifted", the padded grid's L (_grams_on_grid)."""
        tf32 = site.tf32  # the clipped sum's product and the Grams on TF32 tensor cores
        if self._fused(site, g, x):  # one kernel, no Gram stored
            r, rho = self._position_norms(site, g, x)
            u, gg = self._unfolded(site, g, x)
            d, p = u.shape[2], gg.shape[2]
            s = fused_gram_sum_bound(u[:, 0].transpose(1, 2), gg[:, 0].transpose(1, 2), r[:, 0], rho[:, 0])
        else:
            grams_of = self._grams_on_grid if site.impl == "shifted" else self._grams_unfolded
            (gram_u, gu, eu), (gram_g, gg_, eg), r, rho, d, p = grams_of(site, g, x)
            s = gram_sum_bound(gram_u, gram_g, r, rho, gu, eu, gg_, eg)
        m = upper_sum(r * rho, [1, 2])
        # the clip scales g: G's rows (p features, norms rho), or U's for a transposed convolution (unfolded from g)
        (scaled, features), (other, other_features) = ((r, d), (rho, p)) if site.consts["transposed"] else \
            ((rho, p), (r, d))
        margin = clipped_product_margin(m, g.dtype, r.shape[-1],
                                        (upper_sum(scaled, [1, 2]), other_features) if tf32 else None)
        absolute = release_underflow(upper_sum(other, [1, 2]), features, g.dtype, r.shape[-1], w.numel(), g.dtype,
                                     tf32)
        return certified(s, margin, absolute, g.dtype)

    def _fused(self, site: Site, g: Tensor, x: Tensor) -> bool:
        """Whether the Gram sums run as one kernel (FUSED_GRAM_CONV_DEVICES, bounds.fused_grams): over the unfold's
        positions, one group, one view per sample, operands the kernel takes as they are (bf16; fp32 on TF32 tensor
        cores where listed)."""
        c = site.consts
        return (g.device.type in FUSED_GRAM_CONV_DEVICES and site.impl != "shifted" and c["groups"] == 1
                and c.get("k", 1) == 1 and fused_grams(g, x, site.tf32))

    def _grams_unfolded(self, site: Site, g: Tensor, x: Tensor) -> tuple:
        """(certified Grams of U, of G, r, rho, d, p) over the output's positions, U the unfolded input."""
        r, rho = self._position_norms(site, g, x)
        if not half_grams(g, x):  # bf16 operands stay bf16 where their Grams run as bf16 products
            g, x = full_precision(g), full_precision(x)
        u, gg = self._unfolded(site, g, x)
        return certified_grams(u, r, site.tf32), certified_grams(gg, rho, site.tf32), r, rho, u.shape[2], gg.shape[2]

    def _grams_on_grid(self, site: Site, g: Tensor, x: Tensor) -> tuple:
        """_grams_unfolded over padded_grid's L positions: the Grams of the windows' patches (shifted_grams, no
        unfold) and of the zero-padded G, whose positions past a row's end are exact zeros (so are their Gram rows,
        and the sum over the grid is the sum over the output's positions); position norms at every grid position.
        The clipped sum then has L ≥ T products per entry (a GEMM per kernel position on CUDA, weight_grad_on_grid)."""
        c, groups = site.consts, site.consts["groups"]
        xf, gf, offsets = padded_grid(full_precision(x), full_precision(g), c["kernel"], c["padding"], c["dilation"])
        offsets = window_offsets(offsets, c["kernel"], c["dilation"])
        B, L = x.shape[0], gf.shape[-1]
        gg = gf.reshape(B, groups, -1, L)
        r, rho = grid_position_norms(xf, offsets, L, groups, x.dtype), row_norms(gg, dims=(2,))
        return (certified_grid_grams(xf, offsets, L, groups, r, site.tf32), certified_grams(gg, rho, site.tf32),
                r, rho, x.shape[1] // groups * len(offsets), gg.shape[2])

    def per_sample_margin(self, site: Site, g: Tensor, *rest: Tensor) -> Tensor:
        """‖ĝ_i − g_i‖ ≤ γ_T·M_i (an accumulation over T positions; the grouped runtime op is assumed to
        use a direct or GEMM algorithm, see the README). Bias: γ_T·Σ_t ‖g_t‖."""
        if site.rule == "conv_bias":
            rho = views_into_positions(row_norms(g.flatten(2), dims=(1,)), site.consts.get("k", 1))
            return accumulation_gamma(rho.shape[1], g.dtype) * upper_sum(rho, [1])
        r, rho = self._position_norms(site, g, rest[0])
        n = r.shape[-1]
        if site.impl == "shifted":  # sums over the padded grid's L ≥ T positions (the others add zeros)
            c = site.consts
            n = shifted_length(rest[0], g.shape, c["kernel"], c["padding"])
        return accumulation_gamma(n, g.dtype) * upper_sum(r * rho, [1, 2])

    def clipped_sum(self, site: Site, clip: Tensor, g: Tensor, *rest: Tensor) -> Tensor:
        """One weight-gradient convolution on clip-scaled output gradients (dropped samples masked out; a
        sample's factor on each of its k view rows)."""
        clip = per_row(clip, site.consts.get("k", 1))
        g = masked_scaled(g, clip)
        if site.rule == "conv_bias":
            return g.flatten(2).sum((0, 2))
        x, w = rest
        x = masked(x, clip)
        c = site.consts
        if (g.is_cuda or site.tf32) and site.impl == "shifted":  # no unfold: a GEMM per kernel position
            return self.weight_grad_on_grid(site, g, x, w)
        if g.is_cuda or site.tf32:  # cuDNN may pick FFT/Winograd weight gradients, outside γ_T·M: a GEMM on
            return self.weight_grad_gemm(site, g, x, w)  # the unfolded input (TF32: on CPU too, truncated operands)
        return aten.convolution_backward(g, x, w, None, c["stride"], c["padding"], c["dilation"], c["transposed"],
                                         c["output_padding"], c["groups"], [False, True, False])[1]

    def weight_grad_gemm(self, site: Site, g: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """Σ_i G_i U_iᵀ, the weight gradient as one GEMM over every sample's k·T positions (the clipped sum on CUDA;
        on TF32 tensor cores where the plan says tf32), on patch_rows' operands: G as (groups, B·k·T, p) rows,
        the patches as (groups, B·k·T, K·C/groups), kernel position major, channel minor. Each weight entry is
        the same dot product over B·k·T positions as the convolution's (its rounding the term's margin), only the
        result's columns come in another order, put back in w's."""
        c, groups = site.consts, site.consts["groups"]
        g, x, positions = in_conv_roles(c, g, x)
        kernel = c["kernel"]
        u = patch_rows(x, kernel, c["stride"], c["padding"], c["dilation"], groups, positions)
        gr = patch_rows(g, [1] * len(kernel), [1] * len(kernel), [0] * len(kernel), [1] * len(kernel), groups)
        product = matrix_product(gr.transpose(1, 2), u, site.tf32)  # (groups, p, K·C/groups)
        product = product.unflatten(2, (prod(kernel), -1)).transpose(2, 3)  # (groups, p, C/groups, K)
        return product.reshape(w.shape)

    def weight_grad_on_grid(self, site: Site, g: Tensor, x: Tensor, w: Tensor) -> Tensor:
        """weight_grad_gemm over padded_grid's windows, for a stride-1 convolution (impl "shifted"): one GEMM per
        kernel position of G (groups, p, B·L) and that position's window of x, (groups, B·L, C/groups), each window
        copied in its turn (|x| at a time, not the unfold's K·|x|). Each weight entry is one GEMM's dot product over
        B·L positions, the grid's padding columns exact zeros in G."""
        c, groups = site.consts, site.consts["groups"]
        xf, gf, offsets = padded_grid(x, g, c["kernel"], c["padding"], c["dilation"])
        B, L = x.shape[0], gf.shape[-1]
        gr = batch_rows(gf.reshape(B, groups, -1, L))
        xg = xf.reshape(B, groups, -1, xf.shape[-1])
        parts = [matrix_product(gr, batch_rows(xg[..., o:o + L]).transpose(1, 2), site.tf32)
                 for o in window_offsets(offsets, c["kernel"], c["dilation"])]  # each (groups, p, C/groups)
        return torch.stack(parts, -1).reshape(w.shape)

    def drop_recomputed_outputs(self, backward: fx.Node, terms: list[fx.Node]) -> None:
        """Turn off the copied convolution_backward's weight and bias outputs that the rewrite recomputes (terms:
        the getitems of them that are parameter-gradient terms)."""
        mask = list(conv_args(backward)["output_mask"])
        for term in terms:
            mask[term.args[1]] = False
        backward.args = (*backward.args[:ARG_NAMES.index("output_mask")], mask)

    def cost(self, site: Site) -> dict[str, Cost]:
        s = site.shape
        if site.rule == "conv_bias":  # per-sample bias gradient: a sum over positions
            return {"per_sample": Cost(flops=s.B * s.T * s.p, bytes=s.B * s.p * WORD)}
        return generalized_linear_costs(s)


register(ConvRule())
