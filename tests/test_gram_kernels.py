"""dpcompile::gram_sums (bounds.fused_grams, on by default on CUDA): a ghost linear or convolution term's six Gram
sums in one Triton kernel that stores no Gram (dpcompile.gram_kernels), its torch reference on the CPU. The kernel against
the reference (on CUDA directly; on a CPU through Triton's interpreter where Triton is installed), the bound from the
sums against the bound from stored Grams and against exact norms on crafted cancellation, and the rewrite through it
against torch.func in float64 (eager and inductor) and in bf16 autocast within R."""
from __future__ import annotations

import copy
import dataclasses
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import pytest
import torch
from conftest import DEVICE, SLOW_ON_CPU
from helpers import Case, check_against_reference, old_triton_interpreter
from rule_cases import CASES
from test_norm_bounds import (assert_each_release_within_R, certified_norm, conv_site, exact_linear,
                              linear_operands, linear_site)
from torch import nn

import dpcompile
from dpcompile import gram_kernels
from dpcompile.passes.rules import bounds
from dpcompile.passes.rules.bounds import gram_sum_bound, product_matrix, row_norms, tensor_core_product_error
from dpcompile.passes.rules.conv import ConvRule
from dpcompile.passes.rules.linear import MatmulRule

OP = torch.ops.dpcompile.gram_sums.default
CASE = {c.name: c for cases in CASES.values() for c in cases}


@pytest.fixture
def fused(monkeypatch):
    """The fused Gram sums on the test device, for bf16, fp32 (TF32 terms) and (the tests') float64 operands; a list
    of the operands' dtypes each time a rule (linear, convolution) took them."""
    taken, real = [], bounds.fused_gram_sum_bound

    def spy(p, q, r, rho):
        taken.append(p.dtype)
        return real(p, q, r, rho)
    monkeypatch.setattr(bounds, "FUSED_GRAM_DEVICES", (torch.device(DEVICE).type,))
    monkeypatch.setattr(bounds, "FUSED_GRAM_DTYPES", (torch.bfloat16, torch.float32, torch.float64))
    monkeypatch.setattr("dpcompile.passes.rules.linear.fused_gram_sum_bound", spy)
    monkeypatch.setattr("dpcompile.passes.rules.conv.fused_gram_sum_bound", spy)
    monkeypatch.setattr("dpcompile.passes.rules.conv.FUSED_GRAM_CONV_DEVICES", (torch.device(DEVICE).type,))
    return taken


def rows(B, n, m, dtype, gen, transposed=False):
    x = torch.randn(B, m, n, generator=gen, dtype=torch.float64).transpose(1, 2) if transposed else \
        torch.randn(B, n, m, generator=gen, dtype=torch.float64)
    return x.to(DEVICE, dtype)


def stored_gram_bound(p, q, r, rho):
    """The bound from stored Grams (product_matrix, gram_sum_bound): what the fused form replaces (fp32: TF32 Grams)."""
    tf32 = p.dtype == torch.float32
    (a, ga, ea), (b, gb, eb) = product_matrix(p, p, tf32), product_matrix(q, q, tf32)
    if p.dtype == torch.bfloat16:  # the fused form's error model: the half Grams' (tensor cores)
        ga, ea = tensor_core_product_error(p.shape[-1], r.amax(1), r.amax(1), 0.0)
        gb, eb = tensor_core_product_error(q.shape[-1], rho.amax(1), rho.amax(1), 0.0)
    return gram_sum_bound(a.unsqueeze(1), b.unsqueeze(1), r.unsqueeze(1), rho.unsqueeze(1), ga, ea, gb, eb)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float32])
def test_op_sums_are_the_stored_grams_bound(dtype, fused):
    """The op's sums (the kernel on CUDA, the reference elsewhere) give the stored Grams' bound to float64's rounding
    (float64 operands), or to the Grams' own fp32 roundings (bf16: the kernel's tensor cores sum in another order;
    fp32: the stored Grams TF32 products, the op's TF32 on CUDA and IEEE on the CPU, so they differ by up to the
    truncation, 2⁻⁹ relative per product, and the bounds by a few of those):
    over several tiles of rows (70 and 130 rows: 2 and 3 tiles of 64), transposed operands, a batch of one."""
    gen = torch.Generator().manual_seed(0)
    for B, n, m, k, transposed in [(3, 70, 20, 9, False), (1, 130, 33, 70, True), (2, 5, 3, 4, True)]:
        p, q = rows(B, n, m, dtype, gen, transposed), rows(B, n, k, dtype, gen)
        r, rho = row_norms(p), row_norms(q)
        sums = OP(p, q, r, rho)
        assert sums.shape == (B, gram_kernels.tiles(n, dtype) ** 2, gram_kernels.SUMS) and sums.dtype == torch.float64
        got, expected = bounds.fused_gram_sum_bound(p, q, r, rho), stored_gram_bound(p, q, r, rho)
        tolerance = {torch.float64: 1e-12, torch.bfloat16: 1e-5, torch.float32: 1e-2}[dtype]
        assert ((got - expected).abs() <= tolerance * expected.abs()).all(), (got, expected)


def test_op_of_an_empty_batch():
    p, q = torch.zeros(0, 4, 3, device=DEVICE, dtype=torch.float64), torch.zeros(0, 4, 2, device=DEVICE,
                                                                                   dtype=torch.float64)
    assert OP(p, q, torch.zeros(0, 4, device=DEVICE, dtype=torch.float64),
              torch.zeros(0, 4, device=DEVICE, dtype=torch.float64)).shape == (0, 1, gram_kernels.SUMS)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_fused_bound_holds_on_crafted_cancellation(dtype, fused):
    """The fused form's bound is an upper bound on the exact ‖P_iᵀQ_i‖² (Fractions) where the Gram form cancels: p =
    250 on every feature of both rows, q = (256, −255) (exact in bf16): ‖g‖² = 250²·16 while the Gram terms are about
    (250·256)²·16²; a release of the sample alone with c = 1/N stays within R = 1. In float64 at 2^40 the products
    round, and the Gram form's sum alone falls below the exact value (checked: the attack is live there)."""
    scale, b = (250.0, (256.0, -255.0)) if dtype == torch.bfloat16 else (2.0**20, (2.0**40, 1 - 2.0**40))
    p = torch.full((1, 2, 16), scale, dtype=torch.float64).to(DEVICE, dtype)
    q = torch.tensor([[[b[0]], [b[1]]]], dtype=torch.float64).to(DEVICE, dtype)
    rule, site = MatmulRule(), linear_site(1, 2, 16, 1)
    operands = p.flatten(0, 1).t(), q.flatten(0, 1), torch.empty(1, 2, 1, device=DEVICE)
    bound = rule.ghost_norm_bound(site, *operands)
    assert fused == [dtype]
    P = [[Fraction(v) for v in row] for row in p[0].double().tolist()]
    Q = [Fraction(v[0]) for v in q[0].double().tolist()]
    exact_sq = sum((sum(P[t][f] * Q[t] for t in range(2))) ** 2 for f in range(16))
    norm = bound[0].sqrt() + bound[1]
    assert Fraction(norm.item()) ** 2 >= exact_sq
    if dtype == torch.float64:  # the attack is live: the Gram form's sum alone falls short
        r, rho = row_norms(p), row_norms(q)
        assert Fraction(OP(p, q, r, rho).sum(1)[0, 0].item()) < exact_sq
    c = (1.0 / norm).to(torch.float64)
    assert rule.clipped_sum(site, c, *operands).double().norm().item() <= 1 + 1e-6


def exact_weight_grad_norms(layer: nn.Module, g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Each sample's ‖∂(g_i · layer(x_i))/∂w‖ in float64, by autograd on a float64 copy of the layer."""
    layer = copy.deepcopy(layer).double()
    return torch.stack([torch.autograd.grad((layer(x[i:i + 1].double()) * g[i:i + 1].double()).sum(),
                                            layer.weight)[0].norm() for i in range(x.shape[0])])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", ["conv_cancelling", "conv_random", "conv_strided", "conv_transposed",
                                  "linear_random"])
def test_fused_grams_stay_upper_bounds(case, dtype, fused):
    """bf16 operands, and fp32 ones of a term on TF32 tensor cores, through the fused Gram sums: the certified norm
    bounds every sample's exact weight-gradient norm (float64: per-sample convolution_backward, or P_iᵀQ_i) and a
    one-sample release stays within R, on the crafted cancellation of test_norm_bounds (x = 250, g = (256, −255),
    exact in bf16 and TF32: ‖g‖ small, the Grams huge), random convolutions (padded; strided; transposed, whose
    roles swap: the unfolded operand is the output gradient) and a linear layer over 7 rows per sample. On a CPU the
    op's reference runs (IEEE products, within the kernel's model); on CUDA the kernel's tensor cores."""
    torch.manual_seed(0)
    if case == "linear_random":
        p_rows, q_rows = torch.randn(3, 7, 5).to(DEVICE, dtype), (torch.randn(3, 7, 4) * 1e3).to(DEVICE, dtype)
        rule, site, ops = MatmulRule(), linear_site(3, 7, 5, 4), linear_operands(p_rows, q_rows)
        exact = exact_linear(p_rows, q_rows)
    else:
        layer, x, g = {
            "conv_cancelling": lambda: (nn.Conv1d(4, 1, 3, bias=False), torch.full((1, 4, 4), 250.0),
                                        torch.tensor([[[256.0, -255.0]]])),
            "conv_random": lambda: (nn.Conv2d(3, 5, 3, padding=1, bias=False), torch.randn(4, 3, 6, 6),
                                    torch.randn(4, 5, 6, 6)),
            "conv_strided": lambda: (nn.Conv2d(3, 5, 3, stride=2, padding=1, bias=False), torch.randn(3, 3, 9, 9),
                                     1e3 * torch.randn(3, 5, 5, 5)),
            "conv_transposed": lambda: (nn.ConvTranspose2d(3, 4, 3, stride=2, bias=False), torch.randn(3, 3, 4, 4),
                                        torch.randn(3, 4, 9, 9))}[case]()
        layer = layer.to(DEVICE)
        x, g = x.to(DEVICE, dtype), g.to(DEVICE, dtype)
        site = conv_site(layer)
        if case == "conv_transposed":
            site.consts.update(transposed=True, output_padding=[0, 0])
        rule, ops = ConvRule(), (g, x, layer.weight.detach().to(dtype))
        exact = exact_weight_grad_norms(layer, g, x)
    site = dataclasses.replace(site, tf32=dtype == torch.float32)
    bound = rule.ghost_norm_bound(site, *ops)
    assert fused == [dtype], "the Gram sums did not run fused"
    assert torch.isfinite(torch.stack(bound)).all() and (certified_norm(bound) >= exact).all()
    assert_each_release_within_R(rule, site, bound, ops)


@pytest.mark.parametrize("layer", [
    lambda: nn.Conv2d(3, 5, 3, padding=1, bias=False), lambda: nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False),
    lambda: nn.Conv1d(3, 4, 3, dilation=2, bias=False), lambda: nn.Conv3d(2, 3, 2, bias=False),
    lambda: nn.ConvTranspose2d(3, 4, 3, stride=2, bias=False)], ids=["padded", "strided", "dilated_1d", "3d",
                                                                      "transposed"])
def test_fused_convolution_bound_is_the_stored_grams_bound(layer, fused, monkeypatch):
    """A ghost convolution's [s, e, a] from the fused Gram sums and from the stored half Grams (the same tensor-core
    error model: bounds.HALF_GRAM_DEVICES listing the device) agree to the Grams' own fp32 roundings, with the input
    at 10³ and the output gradient at 10⁻³ per entry, so a bound that took one operand's position norms for the
    other's, or another layout of the positions, would be off by orders of magnitude."""
    from dpcompile.passes.rules import conv
    monkeypatch.setattr(bounds, "HALF_GRAM_DEVICES", (torch.device(DEVICE).type,))
    torch.manual_seed(0)
    module = layer().to(DEVICE)
    x = (1e3 * torch.randn(3, module.in_channels, *[7] * (module.weight.dim() - 2))).to(DEVICE)
    with torch.no_grad():
        g = 1e-3 * torch.randn_like(module(x))
    site = conv_site(module)
    if isinstance(module, nn.ConvTranspose2d):
        site.consts.update(transposed=True, output_padding=[0, 0])
    ops = g.bfloat16(), x.bfloat16(), module.weight.detach().bfloat16()
    got = ConvRule().ghost_norm_bound(site, *ops)
    assert fused == [torch.bfloat16]
    monkeypatch.setattr(conv, "FUSED_GRAM_CONV_DEVICES", ())
    expected = ConvRule().ghost_norm_bound(site, *ops)
    for a, b in zip(got, expected):
        assert ((a - b).abs() <= 1e-4 * b.abs()).all(), (a, b)


@pytest.mark.skipif(DEVICE != "cuda", reason="the op's CPU reference multiplies in IEEE fp32, nothing truncates")
@pytest.mark.parametrize("layer", ["linear", "conv"])
def test_tf32_fused_bound_holds_where_truncation_lowers_every_gram(layer, fused):
    """fp32 operands of 1 + 2⁻¹² on every feature: TF32 keeps 10 bits, so each operand loses 2⁻¹² (truncated or
    rounded to nearest), every Gram entry is about 2⁻¹¹ low and the Gram form's sum alone 2⁻¹⁰ below the exact
    ‖g_i‖² (checked: the attack is live). The certified norm must still bound it and a one-sample release stay within
    R: without the TF32 terms of the bound (fused_product_error) it falls short."""
    v = 1 + 2.0**-12
    if layer == "linear":
        p_rows, q_rows = torch.full((2, 3, 40), v, device=DEVICE), torch.full((2, 3, 24), v, device=DEVICE)
        rule, site, ops = MatmulRule(), linear_site(2, 3, 40, 24), linear_operands(p_rows, q_rows)
        exact = exact_linear(p_rows, q_rows)
        p, q = p_rows, q_rows
    else:
        conv = nn.Conv2d(8, 6, 3, padding=1, bias=False).to(DEVICE)
        x, g = torch.full((2, 8, 4, 4), v, device=DEVICE), torch.full((2, 6, 4, 4), v, device=DEVICE)
        rule, site, ops = ConvRule(), conv_site(conv), (g, x, conv.weight.detach())
        exact = exact_weight_grad_norms(conv, g, x)
        p = torch.nn.functional.unfold(x, 3, padding=1).transpose(1, 2)
        q = g.flatten(2).transpose(1, 2)
    site = dataclasses.replace(site, tf32=True)
    bound = rule.ghost_norm_bound(site, *ops)
    assert fused == [torch.float32]
    gram_form = OP(p, q, row_norms(p), row_norms(q)).sum(1)[:, 0]
    assert (gram_form < exact.square() * (1 - 2.0**-11)).all(), "no Gram was truncated: the attack is not live"
    assert (certified_norm(bound) >= exact).all()
    assert_each_release_within_R(rule, site, bound, ops)


@pytest.mark.parametrize("groups", [2])
def test_grouped_convolutions_keep_the_stored_grams(groups, fused):
    """The fused form takes one group only: a grouped convolution's Grams stay stored (and bounded: test_norm_bounds)."""
    layer = nn.Conv2d(4, 4, 3, groups=groups, bias=False).to(DEVICE)
    x, g = torch.randn(2, 4, 5, 5, device=DEVICE), torch.randn(2, 4, 3, 3, device=DEVICE)
    ConvRule().ghost_norm_bound(conv_site(layer), g, x, layer.weight.detach())
    assert fused == []


class Attention(nn.Module):
    """A transformer block's linear layers over 70 positions (two tiles of the fused form's 64 rows in bf16)."""

    def __init__(self):
        super().__init__()
        self.norm, self.qkv, self.proj = nn.LayerNorm(6), nn.Linear(6, 18), nn.Linear(6, 6)
        self.fc1, self.fc2 = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x):
        q, k, v = self.qkv(self.norm(x)).chunk(3, -1)
        x = x + self.proj(torch.softmax(q @ k.transpose(1, 2), -1) @ v)
        return self.fc2(torch.nn.functional.gelu(self.fc1(x))).mean(1)


ATTENTION = Case("attention_70_rows", Attention, lambda B: torch.randn(B, 70, 6, dtype=torch.float64))


@pytest.mark.parametrize("name, backend", [
    *((name, "eager") for name in ("linear_3d", "linear_flat_rows", "block_twice", "attention", "conv2d_stride_pad",
                                   "conv1d", "conv3d", "conv_transposed1d", "cnn_head")),
    ("linear_flat_rows", "inductor"),
    *(pytest.param(name, "inductor", marks=SLOW_ON_CPU) for name in ("linear_3d", "block_twice", "attention",
                                                                     "conv2d_stride_pad", "conv_transposed3d",
                                                                     "cnn_head"))])
def test_rewrite_through_fused_grams_matches_torch_func(name, backend, fused):
    """Ghost clipping through the fused Gram sums (linear and convolution terms) against torch.func's clipped
    per-sample gradients in float64, both clip branches, batch sizes 3, 5 and 1 through one model."""
    case = ATTENTION if name == "attention" else CASE[name]
    check_against_reference(case, policy="ghost", batches=(3, 5, 1), backend=backend)
    assert fused and set(fused) == {torch.float64}


def test_bf16_autocast_through_fused_grams_stays_within_R(fused, monkeypatch):
    """bf16 autocast with the fused Gram sums: the large sample (the only one with output gradients) is released
    within R, and its release is the stored Grams' to the bounds' slack (the Grams only feed the clip factor)."""
    torch.manual_seed(0)
    x, G = torch.randn(4, 70, 6, device=DEVICE), torch.zeros(4, 3, device=DEVICE)
    G[0] = 1e3 * torch.randn(3, device=DEVICE)
    released = {}
    for on in (False, True):
        fused.clear()
        monkeypatch.setattr(bounds, "FUSED_GRAM_DEVICES", (torch.device(DEVICE).type,) if on else ())
        torch._dynamo.reset()
        torch.manual_seed(1)
        model = Attention().to(DEVICE)
        dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=0.0, policy="ghost", loss_reduction="sum",
                                 backend="eager")
        with torch.autocast(torch.device(DEVICE).type, torch.bfloat16):
            out = dp(x)
        (out.float() * G).sum().backward()
        released[on] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert (torch.bfloat16 in fused) == on
        assert released[on].norm() <= 0.5 * (1 + 1e-6)
    assert (released[True] - released[False]).norm() <= 1e-3 * released[False].norm()


def test_on_cuda_by_default():
    """The fused form is CUDA's default for bf16 linear terms (timed on an H200, fortieth session) and nowhere else's:
    the CPU keeps the stored Grams. Convolutions and fp32 (TF32) operands wait for their CUDA run and timing
    (forty-sixth session): turning them on is a measured step, not a side effect."""
    from dpcompile.passes.rules import conv
    assert bounds.FUSED_GRAM_DEVICES == ("cuda",) and bounds.FUSED_GRAM_DTYPES == (torch.bfloat16,)
    assert conv.FUSED_GRAM_CONV_DEVICES == ()


INTERPRETED = textwrap.dedent("""
    import torch
    from dpcompile.gram_kernels import gram_sums, gram_sums_reference
    gen = torch.Generator().manual_seed(0)
    worst = 0.0
    for case in range(8):
        B, n, m, k = [int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in [(1, 4), (1, 40), (1, 24), (1, 24)]]
        p = torch.randn(B, m, n, generator=gen, dtype=torch.float64)
        p = p.transpose(1, 2) if case % 2 else p.reshape(B, n, m)
        q = torch.randn(B, n, k, generator=gen, dtype=torch.float64)
        r, rho = p.norm(dim=2) * 1.01, q.norm(dim=2) * 1.02
        if case == 5 and B > 1:
            p[-1].fill_(float("inf"))  # another sample's inf must stay in its own sums
        got, expected = gram_sums(p, q, r, rho).sum(1)[:, :6], gram_sums_reference(p, q, r, rho).sum(1)[:, :6]
        rows = slice(0, B - 1) if case == 5 and B > 1 else slice(None)
        worst = max(worst, ((got[rows] - expected[rows]).abs() / expected[rows].abs()).max().item())
    print(worst)
""")


@pytest.mark.skipif(not gram_kernels.available() or DEVICE == "cuda", reason="Triton not installed (or CUDA: above)")
@pytest.mark.skipif(old_triton_interpreter(), reason="Triton's interpreter before 3.8 fails on numpy 2's scalars")
def test_kernel_in_triton_interpreter():
    """On a CPU with Triton installed: the kernel's indexing (strides, tiles below the diagonal, masks, the doubled
    tiles above it, one sample's programs) through Triton's interpreter against the reference in float64, in a fresh
    process (TRITON_INTERPRET is read when kernels are defined). bf16 waits for the GPU: the interpreter reads bf16
    as integers."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-13


@pytest.mark.inductor
@pytest.mark.skipif(DEVICE != "cuda", reason="inductor launches the kernel on CUDA only")
def test_inductor_launches_the_kernel(fused, no_fx_graph_cache):
    """On CUDA inductor launches the Triton kernel from its generated code (no call into the op), and the release
    matches torch.func in float64."""
    from torch._inductor.utils import run_and_get_code
    _, codes = run_and_get_code(lambda: check_against_reference(ATTENTION, policy="ghost", batches=(3, 5),
                                                                backend="inductor"))
    lines = [line.strip() for code in codes for line in code.splitlines() if not line.strip().startswith("#")]
    assert not any("dpcompile.gram_sums" in line for line in lines)
    assert any("_gram_sums" in line for line in lines)
