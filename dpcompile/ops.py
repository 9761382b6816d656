"""Runtime ops the rewritten graphs call: Gaussian noise, per-sample convolution gradients.

The noise is one custom op call per step, `gaussian_noise(like, numel, handle, dropped)`: it finds
its owner (the model's PrivacyEngine) by `handle` in one weak registry and asks it for the noise, so
the generator, standard deviation and on/off flag are read at run time: seeds, secure mode,
resumable RNG state and noise-free micro-steps need no recompilation. Scaling, adding and
normalising around it stay in the graph for inductor to fuse.
"""
from __future__ import annotations

import functools
import itertools
import math
import warnings
import weakref
from collections.abc import Callable
from typing import Protocol

import torch
from torch import Tensor
from torch._inductor.custom_graph_pass import CustomGraphPass

from . import conv_kernels, gram_kernels
from .errors import DPCompileError
from .precision import cublas_tf32, cudnn_convolutions

SECURE_DRAWS = 4  # secure mode sums this many draws / sqrt(k): fewer floating-point artifacts


class NoiseOwner(Protocol):
    """What the noise op calls: the owner of the privacy state (dpcompile.privacy.PrivacyEngine)."""

    def release(self, numel: int, dtype: torch.dtype, device: torch.device, dropped: Tensor) -> Tensor: ...


_OWNERS: "weakref.WeakValueDictionary[int, NoiseOwner]" = weakref.WeakValueDictionary()
_HANDLES = itertools.count(1)


def register_owner(owner: NoiseOwner) -> int:
    """A fresh handle under which the noise op finds `owner` (held weakly)."""
    handle = next(_HANDLES)
    _OWNERS[handle] = owner
    return handle


def live_owners() -> list[NoiseOwner]:
    """The owners registered and still alive."""
    return list(_OWNERS.values())


def gaussian(numel: int, std: float, generator: torch.Generator, secure: bool, dtype: torch.dtype,
             device: torch.device) -> Tensor:
    """numel independent N(0, std²) values; secure: Σ of 4 float64 draws · std/2 (arXiv 2107.10138)."""
    if not secure:
        return torch.randn(numel, generator=generator, dtype=dtype, device=device).mul_(std)
    total = sum(torch.randn(numel, generator=generator, dtype=torch.float64, device=device) for _ in range(SECURE_DRAWS))
    return total.mul_(std / math.sqrt(SECURE_DRAWS)).to(dtype)


# Never inside a CUDA graph: a replay would skip the host side (the step count, the generator's draw) and add
# the recorded noise again. Inductor's graph partition runs an op with this tag outside the recorded graphs.
OUTSIDE_CUDA_GRAPHS = (torch.Tag.cudagraph_unsafe,) if hasattr(torch.Tag, "cudagraph_unsafe") else ()


@torch.library.custom_op("dpcompile::gaussian_noise", mutates_args=(), tags=OUTSIDE_CUDA_GRAPHS)
def gaussian_noise(like: Tensor, numel: int, handle: int, dropped: Tensor) -> Tensor:
    """A flat vector of numel N(0, std²) values from the privacy engine `handle`, on like's device; `dropped`
    (0-dim) is this backward's number of samples whose norm was not finite (clip factor 0)."""
    owner = _OWNERS.get(handle)
    if owner is None:
        raise DPCompileError("the privacy engine of this compiled model no longer exists (the DPModel or "
                             "dpcompile.backend(...) was garbage-collected): keep the DP model alive while training")
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return owner.release(numel, dtype, like.device, dropped)


@gaussian_noise.register_fake
def _(like: Tensor, numel: int, handle: int, dropped: Tensor) -> Tensor:
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return like.new_empty(numel, dtype=dtype)


@torch.library.custom_op("dpcompile::per_sample_conv_weight_grad", mutates_args=())
def per_sample_conv_weight_grad(grad_out: Tensor, input: Tensor, weight_shape: list[int], stride: list[int],
                                padding: list[int], dilation: list[int], groups: int, tf32: bool = False) -> Tensor:
    """Per-sample conv weight gradients (B, *weight_shape): one convolution_backward with the batch
    folded into the groups, in full fp32 (with tf32, fp32 operands on cuDNN's TF32 tensor cores, for a term whose
    released gradient is these values as computed: ConvRule's grouped TF32 form), an opaque op, so the batch size
    stays symbolic."""
    B = grad_out.shape[0]
    if B == 0:
        return grad_out.new_zeros((0, *weight_shape))
    folded_weight = grad_out.new_empty((B * weight_shape[0], *weight_shape[1:]))
    with cudnn_convolutions(tf32):
        _, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad_out.reshape(1, -1, *grad_out.shape[2:]), input.reshape(1, -1, *input.shape[2:]), folded_weight,
            None, stride, padding, dilation, False, [0] * len(stride), B * groups, [False, True, False])
    return grad_weight.view(B, *weight_shape)


@per_sample_conv_weight_grad.register_fake
def _(grad_out, input, weight_shape, stride, padding, dilation, groups, tf32=False):
    return grad_out.new_empty((grad_out.shape[0], *weight_shape))


TF32_MASK = -(1 << 13)  # sign, exponent and the top 10 of fp32's 23 mantissa bits


def to_tf32(x: Tensor) -> Tensor:
    """fp32 x truncated to TF32's 10 mantissa bits (exact in TF32; what tensor cores may multiply)."""
    return (x.contiguous().view(torch.int32) & TF32_MASK).view(torch.float32)


# tf32_bmm runs for every TF32 product of a DP backward (about 20 per step on WRN-16-4, 60 to 90 on ViT-S/16), so it
# is defined through the dispatcher directly: torch.library.custom_op's Python wrapper costs about 15 µs a call on
# the host, and host time is a host-bound step's time. flexible_layout: it takes operands of any strides, as bmm
# does, so inductor may pass them in the layouts it chose (torch 2.11's default for ops is to fix their stride order).
_LIB = torch.library.Library("dpcompile", "FRAGMENT")
_LIB.define("tf32_bmm(Tensor a, Tensor b) -> Tensor", tags=(torch.Tag.flexible_layout,))


def tf32_bmm(a: Tensor, b: Tensor) -> Tensor:
    """bmm(a, b) of fp32 matrices with TF32 tensor-core products: on CUDA, cuBLAS with TF32 on for this call
    (the DP backward otherwise runs IEEE: precision.cublas_tf32); elsewhere the operands truncated to TF32, then an
    IEEE product (the same kind of result off the GPU, for tests)."""
    if not a.is_cuda:
        return torch.bmm(to_tf32(a), to_tf32(b))
    return on_tf32_cublas(torch.bmm, a, b)


def on_tf32_cublas(product, *operands: Tensor) -> Tensor:
    """product(*operands) with cuBLAS's TF32 on for this call only (the setting put back after it)."""
    before = cublas_tf32(True)
    try:
        return product(*operands)
    finally:
        cublas_tf32(before)


_LIB.impl("tf32_bmm", tf32_bmm, "CompositeExplicitAutograd")


@torch.library.register_fake("dpcompile::tf32_bmm", lib=_LIB)
def _(a, b):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


_LIB.define("tf32_baddbmm(Tensor c, Tensor a, Tensor b) -> Tensor", tags=(torch.Tag.flexible_layout,))


def tf32_baddbmm(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """c + bmm(a, b) with tf32_bmm's TF32 products (c, the fp32 sum so far, is not truncated): one product added into
    a running sum without a second buffer of its size (a sum of products written as additions, which inductor would
    fuse into one kernel that reads every product at once)."""
    if not a.is_cuda:
        return torch.baddbmm(c, to_tf32(a), to_tf32(b))
    return on_tf32_cublas(torch.baddbmm, c, a, b)


_LIB.impl("tf32_baddbmm", tf32_baddbmm, "CompositeExplicitAutograd")


@torch.library.register_fake("dpcompile::tf32_baddbmm", lib=_LIB)
def _(c, a, b):
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]))


# Grams of bf16 operands as bf16 products with fp32 results (passes.rules.bounds.half_grams decides where): on CUDA
# cuBLAS's bf16 GEMM on tensor cores, accumulated and returned in fp32 (aten.bmm.dtype); elsewhere the same products
# in fp32 (a product of two bf16 values is exact in fp32), an IEEE sum, for tests. The bounds take the tensor cores'
# accumulation (bounds.tensor_core_product_error) either way.
_LIB.define("half_bmm(Tensor a, Tensor b) -> Tensor", tags=(torch.Tag.flexible_layout,))


def half_bmm(a: Tensor, b: Tensor) -> Tensor:
    """bmm(a, b) of bf16 matrices, in float32: products exact, sums in fp32 (on CUDA on tensor cores)."""
    out = half_gram_result(a, b)
    if a.is_cuda:
        return torch.ops.aten.bmm.dtype_out(a, b, torch.float32, out=out)
    return torch.bmm(a.float(), b.float(), out=out)


_LIB.impl("half_bmm", half_bmm, "CompositeExplicitAutograd")


@torch.library.register_fake("dpcompile::half_bmm", lib=_LIB)
def _(a, b):
    return half_gram_result(a, b)


def half_gram_result(a: Tensor, b: Tensor) -> Tensor:
    """An empty fp32 result for bmm(a, b)."""
    return a.new_empty((a.shape[0], a.shape[1], b.shape[2]), dtype=torch.float32)


def lower_half_bmm() -> None:
    """Inductor lowers dpcompile::half_bmm on CUDA as it lowers aten.bmm.dtype(a, b, float32) (once per process): its
    generated code calls cuBLAS's bf16 GEMM with fp32 output itself. As a fallback the op went through Python at
    every call, which on ViT-S/16 cost more host time than its Grams saved on the GPU (benchmarks/NOTES.md,
    thirty-sixth session). Elsewhere (CPU), under inductor's C++ wrapper, or where that lowering is missing or
    fails, the op's own implementation runs. (The C++ wrapper calls inductor's cuBLAS choice for aten.bmm.dtype by a
    C-shim name that torch's shims lack, `aoti_torch_cuda__bmm_out_dtype_cuda`, so the graph's C++ would not
    compile: found by reading inductor after WRN-16-4 bf16's backward failed to compile under the C++ wrapper on an
    H200, torch 2.11, and ran uncompiled, 104 ms a step against 12 ms.)"""
    from torch._inductor.lowering import fallback_handler, lowerings, register_lowering
    op, bmm_dtype = torch.ops.dpcompile.half_bmm.default, torch.ops.aten.bmm.dtype
    if op in lowerings:
        return
    fallback = fallback_handler(op, add_to_fallback_set=False)

    @register_lowering(op, type_promotion_kind=None)
    def _(a, b):
        if a.get_device().type != "cuda" or bmm_dtype not in lowerings or torch._inductor.config.cpp_wrapper:
            return fallback(a, b)
        try:
            return lowerings[bmm_dtype](a, b, torch.float32)
        except Exception as err:  # an inductor whose bmm lowering differs (torch 2.11 on CUDA is checked)
            warnings.warn(f"dpcompile: inductor could not lower the bf16 Grams as bmm with fp32 output ({err!r}); "
                          "they run through the op instead (the same product, a slower call)", stacklevel=2)
            return fallback(a, b)



# Per-sample weight gradients of a 2-D convolution (groups 1) in one Triton kernel on CUDA (conv_kernels; where the
# rule takes it: ConvRule.implementation, bf16 operands on CUDA by default), torch ops elsewhere; the output is
# stored kernel-position major, channel minor (conv_kernels.per_sample_buffer), in the fake function as in both
# implementations. The kernel reads its operands in any strides, fastest both channels-last (its tiles' loads then
# run along channels, vectorised; along the positions they are not): up to 6x faster than with an NCHW g at the
# suite's shapes (H200, bf16, benchmarks/results/2026-12-06-s49/per_sample_224.py), far more than a copy of g costs,
# so the CUDA op and inductor's lowering of it (lower_per_sample_conv2d_grad) pass them channels-last.
_LIB.define("per_sample_conv2d_grad(Tensor g, Tensor x, int[] kernel, int[] stride, int[] padding, int[] dilation)"
            " -> Tensor", tags=(torch.Tag.flexible_layout,))
_LIB.impl("per_sample_conv2d_grad", lambda g, x, *conv: conv_kernels.per_sample_conv2d_grad(
    g.contiguous(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last), *conv), "CUDA")
_LIB.impl("per_sample_conv2d_grad", conv_kernels.per_sample_conv2d_grad_reference, "CPU")


@torch.library.register_fake("dpcompile::per_sample_conv2d_grad", lib=_LIB)
def _(g, x, kernel, stride, padding, dilation):
    return conv_kernels.per_sample_buffer(g, g.shape[1], x.shape[1], *kernel)


def lower_per_sample_conv2d_grad() -> None:
    """Inductor lowers dpcompile::per_sample_conv2d_grad on CUDA to the Triton kernel itself (once per process, where
    Triton is importable), as it lowers a user's Triton kernel: its generated code launches the kernel (autotuned
    over conv_kernels.CONFIGS at the first call) with no Python op between, where the op as a fallback cost the host
    about as much as the kernel saved on the GPU (benchmarks/NOTES.md, thirty-third and thirty-fourth sessions).
    Both operands are read channels-last: one whose layout inductor has not fixed yet is fixed so, one laid out
    otherwise is copied (the producer of an NCHW g often writes both). Elsewhere (CPU), the op's own implementation
    runs."""
    from torch._inductor import ir

    def launched(g, x, kernel, stride, padding, dilation):
        g, x = laid_out(g, ir.NHWC_STRIDE_ORDER, copy=True), laid_out(x, ir.NHWC_STRIDE_ORDER, copy=True)
        g_size, x_size = plain(g.get_size()), plain(x.get_size())
        (B, P), C, (kh, kw) = g_size[:2], x_size[1], kernel
        out = kernel_output([B, P, C, kh, kw], [P * kh * kw * C, kh * kw * C, 1, kw * C, C], g.get_dtype(),
                            g.get_device())
        fn, configs, args = conv_kernels.launch(g_size, plain(g.get_stride()), x_size, plain(x.get_stride()),
                                                plain(out.get_stride()), kernel, stride, padding, dilation,
                                                g.get_dtype())
        launch_user_kernel(fn, [conv_kernels.programs(B, P, C, kernel, {**args, **config}) for config in configs],
                           {"g_ptr": g, "x_ptr": x, "out_ptr": out, **args})
        return out
    lower_to_kernel(torch.ops.dpcompile.per_sample_conv2d_grad.default, conv_kernels.available(), launched,
                    "the per-sample convolution kernel")


def lower_to_kernel(op, available: bool, launched: Callable, what: str) -> None:
    """Registers inductor's lowering of one of dpcompile's kernel ops (once per process, where Triton is importable):
    on CUDA launched(*args) puts the kernel's launch in the generated code; elsewhere, or where that fails (an
    inductor whose user-kernel IR differs; torch 2.11 on CUDA is checked), the op itself runs, with a warning."""
    from torch._inductor.lowering import fallback_handler, lowerings, register_lowering
    if op in lowerings or not available:
        return
    fallback = fallback_handler(op, add_to_fallback_set=False)

    @register_lowering(op, type_promotion_kind=None)
    def _(*args):
        if args[0].get_device().type != "cuda":
            return fallback(*args)
        try:
            return launched(*args)
        except Exception as err:
            warnings.warn(f"dpcompile: inductor could not launch {what} itself ({err!r}); it runs through the op "
                          "instead (the same kernel, a slower launch)", stacklevel=2)
            return fallback(*args)


def launch_user_kernel(fn, programs: list, kernel_args: dict) -> None:
    """A Triton kernel's launch in inductor's graph, as a user's Triton kernel: one grid (programs, 1, 1) per
    config."""
    from torch._higher_order_ops.triton_kernel_wrap import kernel_side_table
    from torch._inductor import ir
    ir.UserDefinedTritonKernel(kernel_idx=kernel_side_table.add_kernel(fn), tma_descriptor_metadata={},
                               grid=[(n, 1, 1) for n in programs], kernel_args=kernel_args)


# A ghost norm's six Gram sums per tile, (B, tiles², 8) float64, in one Triton kernel on CUDA that stores no Gram
# (gram_kernels; where the rule takes it: bounds.fused_grams), torch ops elsewhere. Inductor lowers it to the kernel
# itself (lower_gram_sums).
_LIB.define("gram_sums(Tensor p, Tensor q, Tensor r, Tensor rho) -> Tensor", tags=(torch.Tag.flexible_layout,))
_LIB.impl("gram_sums", gram_kernels.gram_sums, "CUDA")
_LIB.impl("gram_sums", gram_kernels.gram_sums_reference, "CPU")


@torch.library.register_fake("dpcompile::gram_sums", lib=_LIB)
def _(p, q, r, rho):
    return gram_kernels.result(p)


def lower_gram_sums() -> None:
    """Inductor lowers dpcompile::gram_sums on CUDA to the Triton kernel itself, as lower_per_sample_conv2d_grad does
    the convolution kernel; elsewhere the op's own implementation runs."""
    def launched(p, q, r, rho):
        p, q, r, rho = (laid_out(t) for t in (p, q, r, rho))
        p_size, q_size = plain(p.get_size()), plain(q.get_size())
        dtype = p.get_dtype()
        t = gram_kernels.tiles(p_size[1], dtype)
        out = kernel_output([p_size[0], t * t, gram_kernels.SUMS], [t * t * gram_kernels.SUMS, gram_kernels.SUMS, 1],
                            torch.float64, p.get_device())
        fn, configs, args = gram_kernels.launch(p_size, plain(p.get_stride()), q_size, plain(q.get_stride()),
                                                plain(r.get_stride()), plain(rho.get_stride()),
                                                plain(out.get_stride()), dtype)
        launch_user_kernel(fn, [gram_kernels.programs(p_size[0], p_size[1], dtype)] * len(configs),
                           {"p_ptr": p, "q_ptr": q, "r_ptr": r, "rho_ptr": rho, "out_ptr": out, **args})
        return out
    lower_to_kernel(torch.ops.dpcompile.gram_sums.default, gram_kernels.available(), launched, "the Gram-sum kernel")


def kernel_output(size: list, stride: list, dtype: torch.dtype, device: torch.device):
    """A lowered kernel's output buffer in inductor's graph (inductor's empty_strided). Tying its allocation to the
    kernel's operands (a scheduler read of each, so that inductor's memory-aware reordering cannot allocate it long
    before the launch) was measured and dropped: it changed the reordering's whole schedule and raised the peaks it
    was meant to lower (WRN-16-4 32² b256 bf16 0.758 → 0.792 GiB, ResNet-18 (GN) 32² bf16 0.947 → 0.980; one H100,
    torch 2.11, 2026-12-07; benchmarks/NOTES.md, sixty-third session)."""
    from torch._inductor.lowering import empty_strided
    return empty_strided(size, stride, dtype=dtype, device=device)


def plain(sizes) -> list:
    """Inductor's sizes or strides, the constant ones as ints (the symbolic batch stays an expression)."""
    return [int(s) if getattr(s, "is_number", False) else s for s in sizes]


def laid_out(t, stride_order=None, copy: bool = False):
    """An operand of a kernel inductor launches, realized; a layout inductor has not fixed yet is fixed now (in
    stride_order, or contiguous): the kernel reads it by its strides. With copy, one fixed in another order is copied
    into stride_order (inductor fuses the copy into its producer where it can)."""
    from torch._inductor import ir
    t = ir.ExternKernel.realize_input(t)
    if copy:
        t = ir.ExternKernel.require_stride_order(t, stride_order)
        return t if isinstance(t, ir.TensorBox) else ir.TensorBox(t)
    if ir.is_storage_and_layout(t) and isinstance(t.get_layout(), ir.FlexibleLayout):
        ir.as_storage_and_layout(t, freeze=True, stride_order=stride_order)
    return ir.TensorBox(t)


# Inductor's graph cache keys a compiled graph on its FX graph, inputs and config, not on the lowerings registered
# here: after this file or the kernels' changed (a fix), a cached graph would still run the code the earlier version
# generated. A post-grad pass that changes nothing but whose uuid (part of the key) hashes both files ties the DP
# graphs' entries to them; where the user fills both post-grad
# pass slots, the DP graphs skip that cache instead (unless TORCHINDUCTOR_FX_GRAPH_CACHE=1 forces it on over every
# setting).
def lowering_cache_settings() -> dict:
    """Inductor settings that key the DP graphs' cached code on this file's and the kernels' source."""
    from torch._inductor import config
    for slot in ("post_grad_custom_post_pass", "post_grad_custom_pre_pass"):
        if not getattr(config, slot):
            return {slot: LoweringKey()}
    return {"fx_graph_cache": False}


@functools.cache
def lowering_source_hash() -> str:
    """A hash of the code that decides what inductor generates for dpcompile's ops: this file and the kernels'."""
    import hashlib
    digest = hashlib.sha256()
    for path in (__file__, conv_kernels.__file__, gram_kernels.__file__):
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


class LoweringKey(CustomGraphPass):
    """A post-grad pass that leaves the graph as it is; its uuid, the lowerings' source hash and the setting they
    read at lowering time (conv_kernels.JOINT_MAX_CHANNELS), goes into inductor's graph-cache key."""

    def __call__(self, graph) -> None:
        return None

    def uuid(self) -> str:
        return f"dpcompile-lowerings-{lowering_source_hash()}-joint{conv_kernels.JOINT_MAX_CHANNELS}"


# The pin that makes inductor store a value once (passes.rewrite.stored): lowered like inductor's own
# prims.inductor_force_stride_order (require the strides' order: a no-op for a value already stored so), but with a
# fake function that only makes the output. The prim's fake function copies (torch's eager_force_stride compares its
# strides, a tuple, with the list the dispatcher passes, never equal), and the copy's overlap check guards the batch
# size (≠ 1): inductor's own fake-tensor pass over every DP backward then made a batch of one recompile the model.
_LIB.define("stored(Tensor x, SymInt[] stride) -> Tensor")


def stored(x: Tensor, stride: list[int]) -> Tensor:
    """x copied to the given strides (what inductor's lowering stores; eagerly, a copy)."""
    return torch.empty_strided(x.shape, stride, dtype=x.dtype, device=x.device).copy_(x)


_LIB.impl("stored", stored, "CompositeExplicitAutograd")


@torch.library.register_fake("dpcompile::stored", lib=_LIB)
def _(x, stride):
    return x.new_empty_strided(x.shape, stride)


def lower_stored_as_inductor_pin() -> None:
    """Inductor lowers dpcompile::stored as prims.inductor_force_stride_order does, with the stride order found
    without a guard (once per process). torch 2.11's lowering of that prim sorts symbolic strides with sympy alone,
    which cannot order 32·B against 32 ("cannot determine truth value of Relational"), and later ones may guard."""
    from torch._inductor import ir
    from torch._inductor.lowering import lowerings, register_lowering
    if torch.ops.dpcompile.stored.default in lowerings:
        return

    @register_lowering(torch.ops.dpcompile.stored.default, type_promotion_kind=None)
    def _(x, stride):
        return ir.ExternKernel.require_stride_order(x, stride_order(stride))


def stride_order(stride: list) -> list[int]:
    """Inductor's stride order (the rank of each dimension's stride, 0 the smallest; of equal strides the inner
    dimension ranks lower), with symbolic strides compared by what holds for every batch size, else by the sizes
    being compiled: no guard, and only the buffer's layout depends on it (any order stores the value once)."""
    from torch._inductor.virtualized import V
    sizevars = V.graph.sizevars
    hint = getattr(sizevars, "optimization_hint", None) or sizevars.size_hint
    exprs = [s.node.expr if isinstance(s, torch.SymInt) else s for s in stride]

    def compare(i: int, j: int) -> int:
        a, b = exprs[i], exprs[j]
        if sizevars.statically_known_lt(a, b):
            return -1
        if sizevars.statically_known_gt(a, b):
            return 1
        if hint(a) != hint(b):
            return -1 if hint(a) < hint(b) else 1
        return j - i  # equal: the inner (later) dimension first
    fill = sorted(range(len(exprs)), key=functools.cmp_to_key(compare))
    order = [0] * len(exprs)
    for rank, dim in enumerate(fill):
        order[dim] = rank
    return order


# The released gradients as one group for inductor (passes.rewrite.FOREACH_RELEASE_DEVICES): each parameter's finish
# ((scale·clipped + noise) / n, a pointwise kernel of its own wherever its clipped sum is an extern kernel's output: a
# convolution's weight gradient, a matrix product) is registered as one horizontally fused list, as inductor does
# for a `torch._foreach_*` op's outputs, so that its Triton backend launches them as a few combo kernels instead of
# one kernel each. The values are the finishes' own (no arithmetic here); eagerly, copies.
_LIB.define("released(Tensor[] grads) -> Tensor[]")
_LIB.impl("released", lambda grads: [g.clone() for g in grads], "CompositeExplicitAutograd")


@torch.library.register_fake("dpcompile::released", lib=_LIB)
def _(grads):
    return [g.new_empty_strided(g.shape, g.stride()) for g in grads]


def lower_released() -> None:
    """Inductor lowers dpcompile::released to its operands, realized and registered as one list of operations
    (GraphLowering.register_operation_list, what its foreach lowerings do) where the device's backend fuses such lists
    (BackendFeature.FOREACH: Triton's); elsewhere (the C++ backend) the operands as they are (once per process)."""
    from torch._inductor import ir
    from torch._inductor.codegen.common import BackendFeature
    from torch._inductor.lowering import lowerings, register_lowering
    from torch._inductor.virtualized import V
    if torch.ops.dpcompile.released.default in lowerings:
        return

    @register_lowering(torch.ops.dpcompile.released.default, type_promotion_kind=None)
    def _(grads):
        if not V.graph.has_feature(grads[0].get_device(), BackendFeature.FOREACH):
            return list(grads)
        names = []
        for g in grads:
            g.realize()
            if isinstance(g.data, ir.StorageBox) and isinstance(g.data.data, ir.ComputedBuffer):
                names.append(g.data.data.get_operation_name())
        if len(names) > 1:
            V.graph.register_operation_list(names)
        return list(grads)
