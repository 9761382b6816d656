"""How the DP backward's matrix products and convolutions run, and what the certified bounds assume of them.

PyTorch has two ways to ask for reduced-precision fp32 products: the legacy flags
(`torch.backends.cuda.matmul.allow_tf32`, `torch.set_float32_matmul_precision`) and, since 2.9, per-backend
settings (`torch.backends.cuda.matmul.fp32_precision = "tf32"`, `torch.backends.mkldnn.matmul.fp32_precision =
"bf16"`, `torch.backends.fp32_precision` for all), where "none" defers to the backend's "all" and then to the
generic setting. Reading a legacy flag after only the new API was used raises, so everything here reads the new
settings, resolved as ATen resolves them (Context::float32Precision), and falls back to the legacy flags on a
torch without them.

The bounds assume IEEE fp32 products (and fp32 accumulation of half-precision ones): the DP backward runs under
`precise_products()`, which sets that for cuBLAS and oneDNN (CPU) and puts the user's settings back after it.
cuDNN is left as the user set it for the model's own convolutions; the per-sample convolution op sets TF32 off
itself, or on for a term on TF32 (`cudnn_convolutions`)."""
from __future__ import annotations

import contextlib
from typing import Any

import torch

from .errors import ConfigError

NEW_API = hasattr(torch._C, "_get_fp32_precision_getter")
# cuBLAS's reductions of half-precision products in half precision (split-K, on by PyTorch's default) and its fp16
# accumulation (allow_fp16_accumulation, torch ≥ 2.7, off by default): the bounds assume fp32 accumulation
REDUCED = tuple(name for name in ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction",
                                  "allow_fp16_accumulation") if hasattr(torch.backends.cuda.matmul, name))
# the (backend, op) settings precise_products() sets to "ieee" and restores (cuBLAS's is set through the legacy
# flag, which keeps the legacy and new settings consistent: inductor reads the legacy one)
CPU_PRODUCTS = (("mkldnn", "matmul"), ("mkldnn", "conv"))


def resolved(backend: str, op: str) -> str:
    """The precision ATen uses for (backend, op): "ieee", "tf32", "bf16" or "none" (= IEEE)."""
    if not NEW_API:
        if backend == "cuda" and op == "matmul":
            return "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee"
        if backend == "cuda" and op == "conv":
            return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
        return "ieee"
    get = torch._C._get_fp32_precision_getter
    value = get(backend, op)
    if value == "none":
        value = get(backend, "all")
    if value == "none":
        value = get("generic", "all")
    if backend == "cuda" and value == "bf16":  # ATen: "cuda" does not support bf16
        return "none"
    return value


# The kinds of product whose fp32 precision PyTorch sets apart (cuBLAS's matmuls, cuDNN's convolutions); a rule
# names the kind its products are (`products`), and the DP products of that kind may run on TF32 (certified)
PRODUCT_KINDS = ("matmul", "conv")


def tf32_kinds(setting: bool | None, device: torch.device) -> frozenset[str]:
    """The kinds of product whose DP products run on TF32 tensor cores (DPConfig.per_sample_tf32, ghost_tf32): all
    (True), none (False), or, by default (None), those that PyTorch's settings put on TF32 in the model's own
    training on CUDA when the model is captured: convolutions while cuDNN's convolutions are TF32
    (`torch.backends.cudnn.allow_tf32` or `cudnn.conv.fp32_precision`, on by PyTorch's default), matmuls while
    cuBLAS's are (`torch.set_float32_matmul_precision('high')` and the like, off by default). None on other devices:
    their TF32 is emulated (truncated operands), slower than IEEE. Either way the norms are certified bounds."""
    if setting is not None:
        return frozenset(PRODUCT_KINDS) if setting else frozenset()
    if device.type != "cuda":
        return frozenset()
    return frozenset(kind for kind in PRODUCT_KINDS if resolved("cuda", kind) == "tf32")


def reduced_fp32_products(device: torch.device) -> str | None:
    """The setting under which fp32 matrix products on `device` would not be IEEE, or None."""
    if device.type == "cuda" and resolved("cuda", "matmul") == "tf32":
        return ("TF32 (torch.backends.cuda.matmul.allow_tf32, torch.set_float32_matmul_precision('high'), "
                "torch.backends.cuda.matmul.fp32_precision or torch.backends.fp32_precision)")
    if device.type == "cpu" and NEW_API and (p := resolved("mkldnn", "matmul")) in ("tf32", "bf16"):
        return (f"oneDNN's {p} fp32 products (torch.backends.mkldnn.matmul.fp32_precision, "
                "torch.set_float32_matmul_precision or torch.backends.fp32_precision)")
    return None


def check_products(device: torch.device, half_products: bool) -> None:
    """ConfigError unless the backward's matrix products on `device` ran as the bounds assume: IEEE fp32
    products, fp32 accumulation of bf16/fp16 products. The DP model's backward sets both (precise_products);
    your own torch.compile(backend=dpcompile.backend(...)) runs its backward under your settings."""
    reason = reduced_fp32_products(device)
    if reason:
        raise ConfigError(
            f"the DP backward's matrix products ran under {reason}, which would make the per-sample norms come out "
            "low (a sample could exceed the clipping bound): turn it off around the backward, e.g. "
            "torch.set_float32_matmul_precision('highest') (PyTorch's default); a model from dpcompile.dpcompile() "
            "does this for its backward itself")
    flags = torch.backends.cuda.matmul
    on = [name for name in REDUCED if getattr(flags, name)]
    if device.type == "cuda" and half_products and on:
        raise ConfigError(
            "the DP backward multiplies bf16/fp16 matrices, and cuBLAS's half-precision accumulation (" +
            ", ".join(f"torch.backends.cuda.matmul.{name}" for name in on) + "; the reduced-precision reductions "
            "are on by PyTorch's default) would add rounding the per-sample norms' error bounds do not count: set "
            "them to False (a DP model from dpcompile.dpcompile() does this for its backward)")


def _legacy_matmul_precision() -> str | None:
    """torch.get_float32_matmul_precision(), or None where the legacy and new settings disagree (it raises)."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        return None


def _saved() -> dict[str, Any]:
    """The settings set_precise() and tf32_products() change, for restore()."""
    flags = torch.backends.cuda.matmul
    saved = {"legacy": _legacy_matmul_precision(), "reduced": {name: getattr(flags, name) for name in REDUCED}}
    if NEW_API:
        get = torch._C._get_fp32_precision_getter
        saved["new"] = {key: get(*key) for key in (("cuda", "matmul"), *CPU_PRODUCTS)}
    return saved


def set_precise() -> dict[str, Any]:
    """IEEE fp32 products for cuBLAS and oneDNN, fp32 accumulation of half-precision cuBLAS products. Returns
    the settings it replaced, for restore()."""
    flags = torch.backends.cuda.matmul
    saved = _saved()
    flags.allow_tf32 = False  # legacy "highest" and cuBLAS "ieee", consistently
    for name in REDUCED:
        setattr(flags, name, False)
    if NEW_API:
        for key in CPU_PRODUCTS:
            torch._C._set_fp32_precision_setter(*key, "ieee")
    return saved


def restore(saved: dict[str, Any]) -> None:
    """Put back what set_precise() replaced (legacy "highest" where the user's legacy and new settings
    disagreed, which the new settings then govern)."""
    if saved["legacy"] is not None:
        torch.set_float32_matmul_precision(saved["legacy"])
    for key, value in saved.get("new", {}).items():
        torch._C._set_fp32_precision_setter(*key, value)
    for name, value in saved["reduced"].items():
        setattr(torch.backends.cuda.matmul, name, value)


@contextlib.contextmanager
def precise_products():
    """set_precise() for a block: tracing and lowering the DP graphs, running the eager lowering's backward."""
    saved = set_precise()
    try:
        yield
    finally:
        restore(saved)


@contextlib.contextmanager
def tf32_products():
    """cuBLAS fp32 products on TF32 tensor cores for a block, every setting before it restored after it (the
    benchmarks' TF32 rates; the DP backward's TF32 products flip cuBLAS's setting alone: cublas_tf32)."""
    saved = _saved()
    torch.backends.cuda.matmul.allow_tf32 = True  # legacy "high" and cuBLAS "tf32", consistently
    try:
        yield
    finally:
        restore(saved)


def cublas_tf32(on: bool) -> bool:
    """cuBLAS's fp32 products on TF32 tensor cores (on) or IEEE, returning the setting before: what
    dpcompile.ops.tf32_bmm flips around each TF32 product of a DP backward, whose settings are otherwise IEEE
    (set_precise, or refused by check_products). One setting through its legacy flag, which keeps the legacy and
    new settings consistent: under 1 µs of host time, where tf32_products()' save and restore of every setting
    takes about 14 (this project's CPU; a DP step makes 20 to 90 such products)."""
    before = torch._C._get_cublas_allow_tf32()
    torch._C._set_cublas_allow_tf32(on)
    return before


@contextlib.contextmanager
def cudnn_convolutions(tf32: bool):
    """cuDNN on, and its convolutions on TF32 tensor cores (tf32) or without TF32, for a block, whichever API the
    user set TF32 with. Not through `cudnn.flags(allow_tf32=False)`: that leaves the new conv setting "none", which
    defers to torch.backends.fp32_precision, and it reads the legacy flag, which raises once the settings are mixed."""
    cudnn = torch.backends.cudnn
    if not NEW_API:
        with cudnn.flags(enabled=True, allow_tf32=tf32):
            yield
        return
    enabled, conv = cudnn.enabled, torch._C._get_fp32_precision_getter("cuda", "conv")
    cudnn.enabled = True
    torch._C._set_fp32_precision_setter("cuda", "conv", "tf32" if tf32 else "ieee")
    try:
        yield
    finally:  # the getter's value is the resolved one: the same precision as before, set explicitly
        torch._C._set_fp32_precision_setter("cuda", "conv", conv)
        cudnn.enabled = enabled
