"""Per-sample convolution weight gradients as one Triton kernel (implicit GEMM), for 16-bit operands on CUDA.

For each sample i, output channel o, input channel c and kernel position (r, s) of a 2-D convolution (groups 1):

    ps[i, o, c, r, s] = Σ_t g[i, o, t] · x[i, c, h_t·sh − ph + r·dh, w_t·sw − pw + s·dw]     (0 outside x)

over the output's positions t = (h_t, w_t). A program computes one (output-channel block) × (input-channel block)
tile of one kernel position for one sample, or with few input channels (JOINT_MAX_CHANNELS) a tile whose columns run
over (kernel position, channel), reading g and x where they are (any strides), so neither an unfold nor shifted
copies of x are written; tiles are stored along C (per_sample_buffer). Its loads vectorise along the channels, not
along t (whose addresses come through t // WO), so the op passes both operands channels-last (ops.py).
Each value is a dot product over the T output positions accumulated in fp32 (TF32 tensor-core products where
`tf32`; float64 operands, the tests', multiplied and summed in float64), rounded once to g's dtype, like the batched
GEMMs it replaces (bounds.per_sample_bound's model): the rewrite bounds each sample by the norm of the values stored
plus that accumulation's margin (ConvRule.per_sample_margin).

The rewrite takes it where passes.rules.conv.IMPLICIT_CONV_DEVICES lists the device (CUDA by default), and inductor
launches it from its generated code (ops.lower_per_sample_conv2d_grad; launch() gives the arguments to both that and
the eager call below). Measured against the rewrite's other forms (H200, torch 2.11, B = 256, channels-last
operands, 2026-12-04, benchmarks/results/2026-12-04-h200-s33/implicit_gemm.py): in bf16 2.6× (32², 64 channels),
3.0× (16², 128) and 3.2× (8², 256) faster than the shifted products, 1.8× than the unfold's at stride 2, slower only
for a 1×1 kernel; in fp32 with TF32 products it was not faster at 32² and below (0.4× at 16 input channels), so only
16-bit operands take it.
"""
from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the rewrite then never picks this form (available() is False)
    triton = None


def available() -> bool:
    """Whether the Triton kernel can run here (Triton importable)."""
    return triton is not None


if triton is not None:
    CONFIGS = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_warps=w, num_stages=s)
               for m, n, k, w, s in [(64, 64, 32, 4, 3), (64, 64, 64, 4, 4), (64, 128, 32, 4, 3),
                                     (128, 64, 32, 4, 3), (128, 128, 32, 8, 3)]]  # every bf16 shape's best

    @triton.jit
    def _per_sample_conv2d_grad(g_ptr, x_ptr, out_ptr, P, C, H, W, HO, WO, KH, KW, SH, SW, PH, PW, DH, DW,
                                g_sb, g_sc, g_sh, g_sw, x_sb, x_sc, x_sh, x_sw, o_sb, o_sp, o_sc, o_sr, o_ss,
                                TF32: tl.constexpr, EXACT: tl.constexpr, JOINT: tl.constexpr, BLOCK_M: tl.constexpr,
                                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        blocks_m = tl.cdiv(P, BLOCK_M)
        blocks_n = tl.cdiv(KH * KW * C, BLOCK_N) if JOINT else tl.cdiv(C, BLOCK_N) * KH * KW
        pid = tl.program_id(0)
        i = (pid // (blocks_m * blocks_n)).to(tl.int64)  # the sample: its programs run next to each other (its g
        pid = pid % (blocks_m * blocks_n)                  # and x in L2)
        pid_m, pid_n = pid % blocks_m, pid // blocks_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        if JOINT:  # a tile's columns run over (kernel position, channel), channel fastest: few channels fill it
            offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = offs_n < KH * KW * C
            c, kpos = offs_n % C, offs_n // C
        else:  # one kernel position a tile, its columns channels
            cb = pid_n % tl.cdiv(C, BLOCK_N)
            c = cb * BLOCK_N + tl.arange(0, BLOCK_N)
            n_ok = c < C
            kpos = pid_n // tl.cdiv(C, BLOCK_N)
        r, s = kpos // KW, kpos % KW
        m_ok = offs_m < P
        g_base = g_ptr + i * g_sb + offs_m[:, None] * g_sc
        x_base = x_ptr + i * x_sb + c[None, :] * x_sc
        T = HO * WO
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float64 if EXACT else tl.float32)
        for t0 in range(0, T, BLOCK_K):
            offs_t = t0 + tl.arange(0, BLOCK_K)
            ho, wo = offs_t // WO, offs_t % WO
            if JOINT:  # each column its own kernel position: (BLOCK_K, BLOCK_N) input positions
                hi = ho[:, None] * SH - PH + r[None, :] * DH
                wi = wo[:, None] * SW - PW + s[None, :] * DW
            else:
                hi, wi = (ho * SH - PH + r * DH)[:, None], (wo * SW - PW + s * DW)[:, None]
            t_ok = offs_t < T
            x_ok = t_ok[:, None] & n_ok[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
            a = tl.load(g_base + ho[None, :] * g_sh + wo[None, :] * g_sw, mask=m_ok[:, None] & t_ok[None, :],
                        other=0.0)
            b = tl.load(x_base + hi * x_sh + wi * x_sw, mask=x_ok, other=0.0)
            if EXACT:  # float64 (the tests' dtype; no tensor-core dot): the same tiles, multiplied and summed
                acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
            elif TF32:
                acc = tl.dot(a, b, acc, input_precision="tf32")
            else:
                acc = tl.dot(a, b, acc, input_precision="ieee")
        if JOINT:
            out = out_ptr + i * o_sb + offs_m[:, None] * o_sp + (c * o_sc + r * o_sr + s * o_ss)[None, :]
        else:
            out = out_ptr + i * o_sb + offs_m[:, None] * o_sp + c[None, :] * o_sc + r * o_sr + s * o_ss
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=m_ok[:, None] & n_ok[None, :])

    _tuned = triton.autotune(CONFIGS, key=["P", "C", "HO", "WO", "KH", "KW", "SH", "SW", "JOINT"])(
        _per_sample_conv2d_grad)


def per_sample_buffer(g: Tensor, P: int, C: int, kh: int, kw: int) -> Tensor:
    """(B, P, C, kh, kw) per-sample gradients stored kernel-position major, channel minor ((B, P, kh, kw, C)
    contiguous, permuted): the kernels' stores run along C, coalesced."""
    return g.new_empty((g.shape[0], P, kh, kw, C)).permute(0, 1, 4, 2, 3)


EXACT_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)  # float64 (the tests'): one config, no tensor-core dot


# Input channels up to which a tile's columns run over (kernel position, channel) rather than the channels of one
# kernel position (JOINT): with C below the tile's 64 or 128 columns, the per-position tiles compute mostly padding
# (a 3-channel 7×7 stem: 3 of 64 columns, 49 tiles; joint: 147 columns, 3 tiles), at the cost of a gather per
# column instead of loads along C. Timed in bf16 with both operands channels-last (as the op passes them;
# benchmarks/results/2026-12-06-s49/per_sample_224.py --joint, H100), per-position -> joint: the 7x7 stem 3->64 at
# 224² b64 3.72 -> 0.44 ms, 3->16 at 32² b256 0.30 -> 0.10 ms, 16->64 0.14 -> 0.09, 32->64 0.14 -> 0.10 (32²) and
# 0.128 -> 0.121 (56²), 48->64 0.166 -> 0.144 (32²), 48->96 0.21 -> 0.16 (56²): joint won at every count measured,
# up to 48; at 64 the per-position tiles are full. The tests set it both ways.
JOINT_MAX_CHANNELS = 48


def joint(C: int, max_channels: int | None = None) -> bool:
    """Whether a convolution with C input channels takes the joint tiles (JOINT_MAX_CHANNELS)."""
    return bool(C <= (JOINT_MAX_CHANNELS if max_channels is None else max_channels))


def programs(B, P: int, C: int, kernel: list[int], meta: dict):
    """The kernel's grid size under one config and tiling (meta: its block sizes and JOINT; B may be symbolic:
    inductor's launch computes it per call)."""
    columns = triton.cdiv(kernel[0] * kernel[1] * C, meta["BLOCK_N"]) if meta["JOINT"] else \
        triton.cdiv(C, meta["BLOCK_N"]) * kernel[0] * kernel[1]
    return B * triton.cdiv(P, meta["BLOCK_M"]) * columns


def launch(g_size, g_stride, x_size, x_stride, out_stride, kernel: list[int], stride: list[int],
           padding: list[int], dilation: list[int], dtype: torch.dtype, tf32: bool = False,
           joint_channels: int | None = None):
    """How to launch the kernel on g, x and out of these sizes and strides (ints, or inductor's sympy expressions):
    the Triton function, the configs it runs under (one grid each, programs() of the config and the arguments) and
    its arguments after the three tensors, by name. The eager call (per_sample_conv2d_grad) and inductor's lowering
    (ops.lower_per_sample_conv2d_grad) both launch through it. joint_channels: JOINT_MAX_CHANNELS's value for this
    launch (a benchmark's or test's choice)."""
    P, HO, WO = g_size[1:]
    C, H, W = x_size[1:]
    exact = dtype == torch.float64
    args = dict(P=P, C=C, H=H, W=W, HO=HO, WO=WO, KH=kernel[0], KW=kernel[1], SH=stride[0], SW=stride[1],
                PH=padding[0], PW=padding[1], DH=dilation[0], DW=dilation[1],
                **dict(zip(["g_sb", "g_sc", "g_sh", "g_sw"], g_stride)),
                **dict(zip(["x_sb", "x_sc", "x_sh", "x_sw"], x_stride)),
                **dict(zip(["o_sb", "o_sp", "o_sc", "o_sr", "o_ss"], out_stride)),
                TF32=bool(tf32 and dtype == torch.float32), EXACT=exact, JOINT=joint(C, joint_channels))
    if exact:
        return _per_sample_conv2d_grad, [EXACT_CONFIG], {**args, **EXACT_CONFIG}
    return _tuned, [c.kwargs for c in CONFIGS], args


def per_sample_conv2d_grad(g: Tensor, x: Tensor, kernel: list[int], stride: list[int], padding: list[int],
                           dilation: list[int], tf32: bool = False, config: dict | None = None,
                           joint_channels: int | None = None) -> Tensor:
    """Per-sample weight gradients (B, C_out, C_in, kh, kw) of a 2-D convolution with one group, in g's dtype
    (fp32 accumulation); g (B, C_out, HO, WO) and x (B, C_in, H, W) of any strides, on CUDA. config: block sizes
    and launch options (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) instead of the autotuned ones;
    joint_channels: launch()'s."""
    B, P = g.shape[:2]
    C = x.shape[1]
    out = per_sample_buffer(g, P, C, *kernel)
    if B == 0:
        return out
    fn, _, args = launch(g.shape, g.stride(), x.shape, x.stride(), out.stride(), kernel, stride, padding, dilation,
                         g.dtype, tf32, joint_channels)
    if config is not None:
        fn, args = _per_sample_conv2d_grad, {**args, **config}
    fn[lambda meta: (programs(B, P, C, kernel, meta),)](g, x, out, **args)
    return out


def per_sample_conv2d_grad_reference(g: Tensor, x: Tensor, kernel: list[int], stride: list[int], padding: list[int],
                                     dilation: list[int]) -> Tensor:
    """What the kernel computes, with torch ops (any device; the op's CPU implementation): unfold and one batched
    product, stored as per_sample_buffer stores."""
    B, P = g.shape[:2]
    C = x.shape[1]
    u = torch.nn.functional.unfold(x, kernel, dilation=dilation, padding=padding, stride=stride)  # (B, C·K, T)
    out = per_sample_buffer(g, P, C, *kernel)
    out.copy_(torch.bmm(g.flatten(2), u.transpose(1, 2)).view(B, P, C, *kernel))
    return out
