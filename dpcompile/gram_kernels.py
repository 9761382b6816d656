"""A ghost norm's Gram sums in one Triton kernel that never stores the Grams (flash-style).

A ghost-clipped linear term's squared per-sample norm is S_i = Σ_ts A_ts·B_ts with A = P_i P_iᵀ and B = Q_i Q_iᵀ
(T × T per sample: the rows of the layer's input and output gradient; a convolution's: the unfolded input's and the
output gradient's positions). Its certified bound (passes.rules.bounds.sums_bound) needs six sums over the Grams as
computed, Â and B̂:

    Σ ÂB̂,  Σ |ÂB̂|,  Σ |Â|·ρ_t ρ_s,  Σ |B̂|·r_t r_s,  Σ |Â|,  Σ |B̂|

with r_t, ρ_t upper bounds on the rows' norms. The rewrite's other form writes Â and B̂ as two (B, T, T) fp32 tensors
per term and reduces them in float64 afterwards. Here one program computes a BLOCK_T × BLOCK_T tile of both Grams for
one sample (tl.dot over the features: tensor-core products of bf16 operands accumulated in fp32, the model of
bounds.tensor_core_product_error; fp32 operands on TF32 tensor cores, bounds.tf32_product_error; float64 operands,
the tests', multiplied and summed in float64) and reduces the tile in float64 at once: no Gram is written. Both Grams
are symmetric, so only the tiles on and above the diagonal are computed, those above counted twice (×2 is exact); the
programs below the diagonal write zeros. Each program writes its six sums (and two zeros) to its own row of a
(B, tiles², 8) float64 result, which the rewrite sums over dim 1 (in any order: the bound's γ counts every term's
roundings, whatever the order).

Where it runs: passes.rules.bounds.FUSED_GRAM_DEVICES and FUSED_GRAM_DTYPES, and for convolutions
passes.rules.conv.FUSED_GRAM_CONV_DEVICES (CUDA, with Triton importable: benchmarks/NOTES.md, fortieth session, has its
timing); inductor launches it from its generated code (ops.lower_gram_sums), and the op's CPU
implementation (gram_sums_reference) computes the same sums with torch ops, for tests.
"""
from __future__ import annotations

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: the rewrite then never takes this form (available() is False)
    triton = None

SUMS = 8  # a program's row: the six sums, then two zeros (rows of 64 bytes)
# BLOCK_T per operand dtype (fixed: the result's shape needs it)
TILE_ROWS = {torch.bfloat16: 64, torch.float32: 64, torch.float64: 16}


def available() -> bool:
    """Whether the Triton kernel can run here (Triton importable)."""
    return triton is not None


def tiles(n, dtype: torch.dtype):
    """Tiles along a sample's n rows (n may be symbolic)."""
    return (n + TILE_ROWS[dtype] - 1) // TILE_ROWS[dtype]


def result(p: Tensor) -> Tensor:
    """An empty (B, tiles², SUMS) float64 result for operands p (B, n, m)."""
    t = tiles(p.shape[1], p.dtype)
    return p.new_empty((p.shape[0], t * t, SUMS), dtype=torch.float64)


if triton is not None:
    CONFIGS = [triton.Config({"BLOCK_K": k}, num_warps=w, num_stages=s)
               for k, w, s in [(32, 4, 3), (64, 4, 3), (64, 8, 3), (128, 4, 2)]]

    @triton.jit
    def _gram_sums(p_ptr, q_ptr, r_ptr, rho_ptr, out_ptr, N, M, K, TILES,
                   p_sb, p_st, p_sf, q_sb, q_st, q_sf, r_sb, r_st, rho_sb, rho_st, o_sb, o_sp,
                   EXACT: tl.constexpr, TF32: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
        pid = tl.program_id(0)
        i = (pid // (TILES * TILES)).to(tl.int64)  # the sample: its programs run next to each other
        pair = pid % (TILES * TILES)
        ti, tj = pair // TILES, pair % TILES
        out = out_ptr + i * o_sb + pair * o_sp
        if ti <= tj:
            _tile_sums(p_ptr, q_ptr, r_ptr, rho_ptr, out, i, ti, tj, N, M, K, p_sb, p_st, p_sf, q_sb, q_st, q_sf,
                       r_sb, r_st, rho_sb, rho_st, EXACT, TF32, BLOCK_T, BLOCK_K)
        else:  # below the diagonal: counted twice by its mirror
            for k in tl.static_range(8):
                tl.store(out + k, 0.0)

    @triton.jit
    def _gram(base, rows_i, rows_j, ok_i, ok_j, F, s_t, s_f, EXACT: tl.constexpr, TF32: tl.constexpr,
              BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr):
        """The (rows_i, rows_j) tile of one sample's Gram over its F features."""
        acc = tl.zeros((BLOCK_T, BLOCK_T), dtype=tl.float64 if EXACT else tl.float32)
        for k0 in range(0, F, BLOCK_K):
            f = (k0 + tl.arange(0, BLOCK_K)).to(tl.int64)
            x = tl.load(base + rows_i[:, None] * s_t + f[None, :] * s_f, mask=ok_i[:, None] & (f[None, :] < F),
                        other=0.0)
            y = tl.load(base + rows_j[:, None] * s_t + f[None, :] * s_f, mask=ok_j[:, None] & (f[None, :] < F),
                        other=0.0)
            if EXACT:
                acc += tl.sum(x[:, None, :] * y[None, :, :], axis=2)
            elif TF32:  # fp32 operands: TF32 tensor-core products (bounds.tf32_product_error)
                acc = tl.dot(x, tl.trans(y), acc, input_precision="tf32")
            else:
                acc = tl.dot(x, tl.trans(y), acc)
        return acc.to(tl.float64)

    @triton.jit
    def _tile_sums(p_ptr, q_ptr, r_ptr, rho_ptr, out, i, ti, tj, N, M, K, p_sb, p_st, p_sf, q_sb, q_st, q_sf,
                   r_sb, r_st, rho_sb, rho_st, EXACT: tl.constexpr, TF32: tl.constexpr, BLOCK_T: tl.constexpr,
                   BLOCK_K: tl.constexpr):
        """One tile pair's six sums, stored at out."""
        # offsets in 64 bits: a sequence-first operand's row stride is B·d, so T·B·d passes 2³¹ at a 4 GiB bf16
        # activation, and 32-bit offsets would wrap into other samples' rows
        rows_i = (ti * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        rows_j = (tj * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)
        ok_i, ok_j = rows_i < N, rows_j < N
        a = _gram(p_ptr + i * p_sb, rows_i, rows_j, ok_i, ok_j, M, p_st, p_sf, EXACT, TF32, BLOCK_T, BLOCK_K)
        b = _gram(q_ptr + i * q_sb, rows_i, rows_j, ok_i, ok_j, K, q_st, q_sf, EXACT, TF32, BLOCK_T, BLOCK_K)
        r_i = tl.load(r_ptr + i * r_sb + rows_i * r_st, mask=ok_i, other=0.0)
        r_j = tl.load(r_ptr + i * r_sb + rows_j * r_st, mask=ok_j, other=0.0)
        rho_i = tl.load(rho_ptr + i * rho_sb + rows_i * rho_st, mask=ok_i, other=0.0)
        rho_j = tl.load(rho_ptr + i * rho_sb + rows_j * rho_st, mask=ok_j, other=0.0)
        a_abs, b_abs = tl.abs(a), tl.abs(b)
        ab = a * b
        twice = tl.where(ti < tj, 2.0, 1.0).to(tl.float64)
        tl.store(out + 0, twice * tl.sum(tl.sum(ab, axis=1), axis=0))
        tl.store(out + 1, twice * tl.sum(tl.sum(tl.abs(ab), axis=1), axis=0))
        tl.store(out + 2, twice * tl.sum(tl.sum(a_abs * (rho_i[:, None] * rho_j[None, :]), axis=1), axis=0))
        tl.store(out + 3, twice * tl.sum(tl.sum(b_abs * (r_i[:, None] * r_j[None, :]), axis=1), axis=0))
        tl.store(out + 4, twice * tl.sum(tl.sum(a_abs, axis=1), axis=0))
        tl.store(out + 5, twice * tl.sum(tl.sum(b_abs, axis=1), axis=0))
        tl.store(out + 6, 0.0)
        tl.store(out + 7, 0.0)

    _tuned = triton.autotune(CONFIGS, key=["N", "M", "K"])(_gram_sums)


EXACT_CONFIG = dict(BLOCK_K=16)  # float64 (the tests'): one config, no tensor-core dot


def launch(p_size, p_stride, q_size, q_stride, r_stride, rho_stride, out_stride, dtype: torch.dtype):
    """How to launch the kernel on p, q, r, rho and out of these sizes and strides (ints, or inductor's sympy
    expressions): the Triton function, the configs it runs under and its arguments after the five tensors, by name.
    The eager call (gram_sums) and inductor's lowering (ops.lower_gram_sums) both launch through it."""
    N, M, K = p_size[1], p_size[2], q_size[2]
    exact = dtype == torch.float64
    args = dict(N=N, M=M, K=K, TILES=tiles(N, dtype),
                **dict(zip(["p_sb", "p_st", "p_sf"], p_stride)), **dict(zip(["q_sb", "q_st", "q_sf"], q_stride)),
                **dict(zip(["r_sb", "r_st"], r_stride)), **dict(zip(["rho_sb", "rho_st"], rho_stride)),
                **dict(zip(["o_sb", "o_sp"], out_stride[:2])), EXACT=exact, TF32=dtype == torch.float32,
                BLOCK_T=TILE_ROWS[dtype])
    if exact:
        return _gram_sums, [EXACT_CONFIG], {**args, **EXACT_CONFIG}
    return _tuned, [c.kwargs for c in CONFIGS], args


def programs(B, n, dtype: torch.dtype):
    """The kernel's grid size (B may be symbolic: inductor's launch computes it per call)."""
    t = tiles(n, dtype)
    return B * t * t


def gram_sums(p: Tensor, q: Tensor, r: Tensor, rho: Tensor, config: dict | None = None) -> Tensor:
    """The six Gram sums per tile (B, tiles², SUMS) float64 of rows p (B, n, m) and q (B, n, k), bf16, fp32 (TF32
    products) or float64, with row-norm bounds r, rho (B, n) float64; any strides; on CUDA (or in Triton's
    interpreter). config: BLOCK_K and launch options instead of the autotuned ones."""
    out = result(p)
    if p.shape[0] == 0:
        return out
    fn, _, args = launch(p.shape, p.stride(), q.shape, q.stride(), r.stride(), rho.stride(), out.stride(), p.dtype)
    if config is not None:
        fn, args = _gram_sums, {**args, **config}
    fn[lambda meta: (programs(p.shape[0], p.shape[1], p.dtype),)](p, q, r, rho, out, **args)
    return out


def gram_sums_reference(p: Tensor, q: Tensor, r: Tensor, rho: Tensor) -> Tensor:
    """What the kernel computes, with torch ops (any device; the op's CPU implementation): both Grams in float32
    (bf16 operands: exact products, an IEEE sum; fp32 operands: IEEE products, within the kernel's TF32 error
    bound) or float64, then the six sums in float64, in the result's first row per sample (the others zero)."""
    wide = torch.float64 if p.dtype == torch.float64 else torch.float32
    a = torch.bmm(p.to(wide), p.to(wide).transpose(1, 2)).double()
    b = torch.bmm(q.to(wide), q.to(wide).transpose(1, 2)).double()
    outer = lambda v: v.unsqueeze(-1) * v.unsqueeze(-2)  # noqa: E731
    ab = a * b
    sums = [ab, ab.abs(), a.abs() * outer(rho), b.abs() * outer(r), a.abs(), b.abs()]
    out = result(p).zero_()
    out[:, 0, :6] = torch.stack([s.sum((1, 2)) for s in sums], 1)
    return out
