"""Shared checks: dpcompile's .grad against the torch.func reference, in float64."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from conftest import BACKEND, DEVICE
from reference import dp_reference, per_sample_grads
from torch import nn

import dpcompile

RTOL = 1e-10
# How far below C_i·g_i a clipped sample may be released: passes.rewrite.CLIP_SLACK (2⁻⁴⁰) with room for its
# roundings. Pinned here, not imported, so that a larger slack in the code fails the checks that use it.
RELEASE_SLACK = 2.0**-39
# Every hypothesis test's max_examples times this (env DPCOMPILE_TEST_EXAMPLES, e.g. 6 for a deeper run than CI's).
EXAMPLES_SCALE = float(os.environ.get("DPCOMPILE_TEST_EXAMPLES", "1"))


def examples(n: int) -> int:
    """n hypothesis examples, times EXAMPLES_SCALE (at least one)."""
    return max(1, round(n * EXAMPLES_SCALE))


@contextmanager
def conv_constants(**values) -> Iterator[None]:
    """passes.rules.conv's module constants set to these values for the block, restored after it."""
    from dpcompile.passes.rules import conv
    saved = {name: getattr(conv, name) for name in values}
    for name, value in values.items():
        setattr(conv, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(conv, name, value)


def implicit_convs(on: bool = True):
    """Per-sample gradients of 2-D convolutions (one group, kernel > 1×1) through dpcompile::per_sample_conv2d_grad
    (impl "implicit") in every dtype on the test device (on; by default only bf16 operands on CUDA), or nowhere
    (off). On CUDA that is the Triton kernel (float64 tiles multiplied and summed in float64), on the CPU its torch
    reference."""
    return conv_constants(IMPLICIT_CONV_DEVICES=(torch.device(DEVICE).type,) if on else (),
                          IMPLICIT_CONV_DTYPES=(torch.float64, torch.float32, torch.bfloat16, torch.float16) if on
                          else ())


def shifted_convs(on: bool = True):
    """Stride-1 convolutions over the padded grid's shifted windows wherever the rule allows them (on: per-sample
    gradients and ghost Grams and clipped sums alike, not only the wide, large ones; the ghost form is off by default,
    GHOST_ON_GRID), or nowhere (off: the unfold), whatever the size thresholds (passes.rules.conv.SHIFTED_*) would
    pick for a test's small convs."""
    names = ("SHIFTED_CONV_MIN_POSITIONS", "SHIFTED_CONV_MIN_CHANNELS", "SHIFTED_GRAM_MAX_STRETCH", "GHOST_ON_GRID")
    return conv_constants(**dict(zip(names, (1, 1, float("inf"), True) if on else (10**9, 10**9, 0.0, False))))


def squared_error(out, y, reduction="mean"):
    """Σ over non-batch dims of (out - y)², then mean or sum over the batch: one term per sample."""
    per_sample = (out - y).square().flatten(1).sum(1)
    return per_sample.mean() if reduction == "mean" else per_sample.sum()


class Lambda(nn.Module):
    """A module around a function, so the function's ops carry the module's path."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


@dataclass(frozen=True)
class Case:
    """A model for one rule family, and how to draw a batch (inputs, targets) of size B."""

    name: str
    model: Callable[[], nn.Module]
    inputs: Callable[[int], torch.Tensor]
    loss: Callable = squared_error


def batch_for(case: Case, model: nn.Module, B: int, seed: int):
    """Inputs and random targets shaped like the model's output."""
    torch.manual_seed(seed)
    x = case.inputs(B).to(DEVICE)
    with torch.no_grad():
        y = torch.randn_like(model(x))
    return x, y


def clip_bound_between(model, case, x, y) -> float:
    """A bound R with samples on both sides of it: midway between the two middle distinct norms."""
    g = per_sample_grads(model, x, y, case.loss)
    norms = torch.sqrt(sum(v.reshape(len(v), -1).square().sum(1) for v in g.values()))
    distinct = torch.unique(norms)
    assert len(distinct) >= 2, f"need two different per-sample norms, got {norms.tolist()}"
    k = len(distinct) // 2
    bound = ((distinct[k - 1] + distinct[k]) / 2).item()
    assert (norms > bound).any() and (norms < bound).any(), "need samples on both sides of R"
    return bound


def max_relative_error(model, reference, terms=None) -> float:
    """Largest ‖grad − ref‖ / ‖ref‖ over the trainable parameters; a parameter whose reference is
    (nearly) zero, like a bias before a normalisation, is measured against 1e-4 of the whole gradient. With terms
    (Σ_i ‖C_i g_i‖ per parameter, over the same 1/n), RELEASE_SLACK of them is not counted as error: a clipped sample
    is released at C_i·(1 − 2⁻⁴⁰) by design, which where the terms cancel (two scalar gradients of opposite signs)
    can be a thousand times RTOL of ‖ref‖; any larger shortfall or excess still counts in full."""
    total = torch.sqrt(sum(r.square().sum() for r in reference.values()))
    errs = []
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None, f"{name} got no gradient"
            scale = torch.maximum(reference[name].norm(), 1e-4 * total).clamp_min(1e-300)
            err = (p.grad - reference[name]).norm()
            if terms is not None:
                err = (err - RELEASE_SLACK * terms[name]).clamp_min(0)
            errs.append((err / scale).item())
    return max(errs)


def inductor_batch_of_one(batches, backend=None) -> int:
    """1 where a batch of one may recompile: inductor's code generation guards B ≥ 2 or B ≠ 1 in some graphs
    (can_use_32bit_indexing, _dynamic_reshape_indexer; seen on an H200 with torch 2.11), as do some models'
    forwards (a CPU convolution, GroupNorm), so a batch of one gets a capture of its own (a recompile, not a
    difference in results). The DP passes' pins no longer do (dpcompile::stored; before 2026-12-03 the overlap check
    of their prim's copying fake function guarded B ≠ 1 for every inductor-lowered model)."""
    return int((backend or BACKEND) == "inductor" and 1 in batches)


def check_against_reference(case: Case, policy="mixed", reduction="mean", batches=(3, 5), backend=None,
                            bound=None, expected_batch_size=None, max_compilations=1, rtol=RTOL, **kwargs):
    """Compile once, run several batch sizes, compare every .grad with the clipped per-sample reference."""
    torch.manual_seed(0)
    model = case.model().to(DEVICE, torch.float64)
    x0, y0 = batch_for(case, model, batches[0], seed=1)
    bound = bound or clip_bound_between(model, case, x0, y0)
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, policy=policy,
                             backend=backend or BACKEND, loss_reduction=reduction,
                             expected_batch_size=expected_batch_size, **kwargs)
    for i, B in enumerate(batches):
        x, y = (x0, y0) if i == 0 else batch_for(case, model, B, seed=10 + i)
        model.zero_grad(set_to_none=True)
        case.loss(dp(x), y, reduction).backward()
        ref, _ = dp_reference(model, x, y, bound, reduction, expected_batch_size, loss=case.loss)
        err = max_relative_error(model, ref)
        assert err < rtol, f"{case.name} policy={policy} B={B}: relative error {err:.3g}"
    assert dp.compilations <= max_compilations + inductor_batch_of_one(batches, backend), \
        f"recompiled: {dp.compilations} captures for batch sizes {batches}"
    return dp


def _bf16_grads(model, x, y, dp: bool, autocast: bool, bound: float, policy: str) -> torch.Tensor:
    """The gradient of the mean squared error, through dpcompile (noise off) or the plain model, in bf16 autocast
    or not (fp32 parameters)."""
    run = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, policy=policy, backend=BACKEND) \
        if dp else model
    model.zero_grad(set_to_none=True)
    with torch.autocast(torch.device(DEVICE).type, torch.bfloat16, enabled=autocast):
        out = run(x)
    squared_error(out.float(), y).backward()
    torch._dynamo.reset()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad])


def check_bf16_autocast(case: Case, policy: str, B: int = 5) -> None:
    """bf16 autocast: no refusal, a finite gradient, as close to dpcompile's fp32 run as bf16 allows (10 × the plain
    model's bf16 error, or 15%: a ghost clipped sum's bf16 operand over-clips by up to about 11% on random data,
    README), with R the median per-sample norm (both clip branches)."""
    torch.manual_seed(0)
    model = case.model().to(DEVICE, torch.float32)
    x = case.inputs(B).to(DEVICE)
    x = x.float() if x.is_floating_point() else x
    with torch.no_grad():
        y = torch.randn_like(model(x).float())
    params = [p for p in model.parameters() if p.requires_grad]
    norms = [torch.cat([g.flatten() for g in torch.autograd.grad(squared_error(model(x[i:i + 1]).float(), y[i:i + 1],
                                                                               "sum"), params)]).norm()
             for i in range(B)]
    bound = torch.stack(norms).median().item() + 1e-6
    fp32 = _bf16_grads(model, x, y, True, False, bound, policy)
    bf16 = _bf16_grads(model, x, y, True, True, bound, policy)
    plain32 = _bf16_grads(model, x, y, False, False, bound, policy)
    plain_error = ((_bf16_grads(model, x, y, False, True, bound, policy) - plain32).norm() / plain32.norm()).item()
    error = ((bf16 - fp32).norm() / fp32.norm().clamp_min(1e-30)).item()
    assert torch.isfinite(bf16).all(), f"{case.name} {policy}: bf16 gradient not finite"
    assert error <= max(10 * plain_error, 0.15), f"{case.name} {policy}: {error:.3g} (plain bf16 {plain_error:.3g})"


def old_triton_interpreter() -> bool:
    """Whether the installed Triton's interpreter predates 3.8 (3.6's fails on numpy 2's scalars: `int()` of a
    one-element array, seen with torch 2.11's Triton and numpy 2.4). The kernels' interpreter tests were written
    against 3.8; the GPU runs them compiled."""
    try:
        import triton
    except ImportError:
        return False
    return tuple(int(p) for p in triton.__version__.split(".")[:2]) < (3, 8)
