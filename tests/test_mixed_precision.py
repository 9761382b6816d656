"""bf16 autocast: dpcompile's gradient differs from its fp32 run by about what bf16 itself costs a
non-private gradient of the same model (norms accumulated in fp32 and certified; clipped sums in bf16)."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND, DEVICE, SLOW_ON_CPU
from helpers import shifted_convs
from models import small_cnn
from torch import nn

import dpcompile


def plain_grads(model: nn.Module, x, y, autocast: bool) -> torch.Tensor:
    """The non-private gradient of the mean loss, with or without bf16 autocast."""
    model.zero_grad(set_to_none=True)
    with torch.autocast(torch.device(DEVICE).type, torch.bfloat16, enabled=autocast):
        out = model(x)
    F.cross_entropy(out.float(), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def grads_of(model: nn.Module, x, y, bound: float, policy: str, autocast: bool) -> torch.Tensor:
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, policy=policy, backend=BACKEND)
    model.zero_grad(set_to_none=True)
    with torch.autocast(torch.device(DEVICE).type, torch.bfloat16, enabled=autocast):
        out = dp(x)
    F.cross_entropy(out.float(), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("policy, impl", [("ghost", "default"), ("per_sample", "default"), ("per_sample", "shifted")])
def test_bf16_autocast_within_bf16_tolerance_of_fp32(policy, impl):
    """impl "shifted": every stride-1 per-sample conv gradient over shifted windows, not only the wide, large ones."""
    torch.manual_seed(0)
    model = small_cnn(width=8).to(DEVICE)
    x, y = torch.randn(6, 3, 16, 16, device=DEVICE), torch.randint(0, 10, (6,), device=DEVICE)
    with shifted_convs(impl == "shifted"):
        reference = grads_of(model, x, y, 0.5, policy, autocast=False)
        torch._dynamo.reset()
        mixed = grads_of(model, x, y, 0.5, policy, autocast=True)
    error = ((mixed - reference).norm() / reference.norm()).item()
    plain = plain_grads(model, x, y, autocast=False)
    bf16_cost = ((plain_grads(model, x, y, autocast=True) - plain).norm() / plain.norm()).item()
    assert error < 2 * bf16_cost + 1e-2, f"bf16 autocast: DP gradient off by {error:.3g}, non-private by {bf16_cost:.3g}"


def _ghost_release(model: nn.Module, x: torch.Tensor, G: torch.Tensor, bound: float, backend: str = BACKEND):
    """(released gradient, the DP model) of the per-sample loss Σ out·G under bf16 autocast, ghost clipping, noise off."""
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, loss_reduction="sum", policy="ghost",
                             backend=backend)
    model.zero_grad(set_to_none=True)
    with torch.autocast(torch.device(DEVICE).type, torch.bfloat16):
        out = dp(x)
    (out.float() * G).sum().backward()
    return torch.cat([p.grad.double().flatten() for p in model.parameters() if p.requires_grad]), dp


def _large_first_sample(kind: str):
    """(model factory, x, G) for _ghost_release: a small convolution model or a sequence of linears, with sample 0's
    output gradients large (it alone is released, clipped) and the others' zero."""
    if kind == "conv":
        def make():
            return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(),
                                 nn.Linear(4 * 9, 2)).to(DEVICE)
        x, G = torch.randn(4, 3, 8, 8, device=DEVICE), torch.zeros(4, 2, device=DEVICE)
    else:
        def make():
            return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).to(DEVICE)
        x, G = torch.randn(4, 5, 6, device=DEVICE), torch.zeros(4, 5, 2, device=DEVICE)
    G[0] = 1e3 * torch.randn(G.shape[1:], device=DEVICE)
    return make, x, G


def _fresh_release(make, x: torch.Tensor, G: torch.Tensor, backend: str = BACKEND):
    """_ghost_release of a new model from make() after Dynamo's reset, under one seed: runs that differ only in a
    setting compare."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    return _ghost_release(make(), x, G, 0.5, backend)


def _takes_half_bmm(dp) -> bool:
    """Whether the DP backward forms Grams with dpcompile::half_bmm."""
    return any(n.target is torch.ops.dpcompile.half_bmm.default for n in dp.graphs["backward_rewritten"].graph.nodes)


@pytest.mark.parametrize("kind", ["conv", "linear_sequence"])
def test_bf16_grams_as_half_products(kind, monkeypatch):
    """bounds.HALF_GRAM_DEVICES listing the device: the ghost norms' Grams of bf16 operands run as
    dpcompile::half_bmm (bf16 products, fp32 results) and only then; a sample of large output gradients (the only one
    released) stays within R; and the released gradient is the one the fp32 Grams give, to the bounds' slack (the
    Grams only feed the clip factor: clipped, both give R's direction). (The stored Grams: on CUDA a linear term's
    are fused by default, test_gram_kernels.)"""
    from dpcompile.passes.rules import bounds
    monkeypatch.setattr(bounds, "FUSED_GRAM_DEVICES", ())
    torch.manual_seed(0)
    make, x, G = _large_first_sample(kind)
    released = {}
    for on in (False, True):
        monkeypatch.setattr(bounds, "HALF_GRAM_DEVICES", (torch.device(DEVICE).type,) if on else ())
        released[on], dp = _fresh_release(make, x, G)
        assert _takes_half_bmm(dp) == on
        assert released[on].norm() <= 0.5 * (1 + 1e-6)
    assert (released[True] - released[False]).norm() <= 1e-4 * released[False].norm()


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
def test_misaligned_gram_operands_padded(backend, monkeypatch):
    """conv.ALIGNED_OPERAND_DEVICES listing the device: a ghost 1×1 convolution's Grams at 7×7 positions (T = 49: the
    Gram's fp32 rows of 49 off cuBLAS's 16-byte alignment) take their operands (input and output gradient, 8 or 16
    channels) with 7 zero positions appended (one pad for both sides of a product) and the 56 × 56 Gram sliced back
    to 49 × 49; a sample of large output gradients, the only one released, stays within R, and the release is the
    one without the padding, to the fp32 Grams' roundings (the same products, summed in another order). The head is
    frozen, so the two convolutions make the whole norm: a slice of the wrong rows fails the comparison (checked;
    with the head trainable the convolutions were 4% of the norm and the bf16 clip factor hid it)."""
    from dpcompile.passes.rules import bounds, conv
    monkeypatch.setattr(bounds, "FUSED_GRAM_DEVICES", ())
    monkeypatch.setattr(bounds, "HALF_GRAM_DEVICES", (torch.device(DEVICE).type,))

    def make():  # the head frozen: the convolutions' Grams make the whole norm, so a wrong Gram shows in the release
        model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.Flatten(),
                              nn.Linear(8 * 49, 2)).to(DEVICE)
        model[4].requires_grad_(False)
        return model
    torch.manual_seed(0)
    x, G = torch.randn(4, 8, 7, 7, device=DEVICE), torch.zeros(4, 2, device=DEVICE)
    G[0] = 1e3 * torch.randn(2, device=DEVICE)
    released = {}
    for on in (False, True):
        monkeypatch.setattr(conv, "ALIGNED_OPERAND_DEVICES", (torch.device(DEVICE).type,) if on else ())
        released[on], dp = _fresh_release(make, x, G, backend)
        nodes = dp.graphs["backward_rewritten"].graph.nodes
        pads = [n for n in nodes if n.target is torch.ops.aten.constant_pad_nd.default and n.args[1] == [0, 7]]
        assert len(pads) == (4 if on else 0), pads  # both convolutions' two Grams
        grams = [n for n in nodes if n.target is torch.ops.dpcompile.half_bmm.default]
        assert len(grams) == 4 and all(n.meta["val"].shape[1:] == ((56, 56) if on else (49, 49)) for n in grams)
        assert all(user.target in (torch.ops.aten.transpose.int, torch.ops.aten.permute.default,
                                   torch.ops.dpcompile.half_bmm.default) for p in pads for user in p.users), pads
        assert released[on].norm() <= 0.5 * (1 + 1e-6)
    assert (released[True] - released[False]).norm() <= 1e-4 * released[False].norm()


def test_misaligned_per_sample_operands_pinned_channels_last(monkeypatch):
    """conv.ALIGNED_OPERAND_DEVICES listing the device: the per-sample gradients of 1×1 convolutions at 7×7 (T = 49),
    products over the positions of bf16 operands, take both operands pinned channels-last (leading dimension the
    channels); the released gradient, of a sample of large output gradients alone, stays within R and is the one
    without the pins (the same products)."""
    from dpcompile.passes.rules import conv

    def release(on: bool):
        monkeypatch.setattr(conv, "ALIGNED_OPERAND_DEVICES", (torch.device(DEVICE).type,) if on else ())
        torch._dynamo.reset()
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(8, 16, 1), nn.ReLU(), nn.Conv2d(16, 8, 1), nn.Flatten(),
                              nn.Linear(8 * 49, 2)).to(DEVICE)
        dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=0.0, loss_reduction="sum",
                                 policy="per_sample", backend=BACKEND)
        with torch.autocast(torch.device(DEVICE).type, torch.bfloat16):
            out = dp(x)
        (out.float() * G).sum().backward()
        pins = [n for n in dp.graphs["backward_rewritten"].graph.nodes
                if n.target is torch.ops.dpcompile.stored.default and n.args[1][1:] == [1, n.args[1][0] // 49]]
        return torch.cat([p.grad.double().flatten() for p in model.parameters()]), pins
    torch.manual_seed(0)
    x, G = torch.randn(4, 8, 7, 7, device=DEVICE), torch.zeros(4, 2, device=DEVICE)
    G[0] = 1e3 * torch.randn(2, device=DEVICE)
    (off, no_pins), (on, pins) = release(False), release(True)
    assert no_pins == [] and len(pins) == 4, pins  # each convolution's output gradient and input
    assert on.norm() <= 0.5 * (1 + 1e-6) and (on - off).norm() <= 1e-6 * off.norm()


def test_bf16_grams_default_follows_the_device():
    """By default (bounds.HALF_GRAM_DEVICES unchanged) a bf16-autocast ghost step's Grams take dpcompile::half_bmm
    on CUDA and stay fp32 products elsewhere; on either, a sample of large output gradients stays within R."""
    from dpcompile.passes.rules import bounds
    torch.manual_seed(0)
    make, x, G = _large_first_sample("conv")
    released, dp = _ghost_release(make(), x, G, 0.5)
    assert _takes_half_bmm(dp) == (torch.device(DEVICE).type in bounds.HALF_GRAM_DEVICES) == (DEVICE == "cuda")
    assert released.norm() <= 0.5 * (1 + 1e-6)


@pytest.mark.inductor
@pytest.mark.parametrize("device", [pytest.param("cpu", marks=SLOW_ON_CPU), "cuda"])
def test_inductor_lowers_the_half_grams(device, monkeypatch, no_fx_graph_cache):
    """Under inductor the bf16 Grams' op is lowered where the device is CUDA (ops.lower_half_bmm: cuBLAS's bf16 GEMM
    with fp32 output called from the generated code, no Python op at each call) and runs as the op elsewhere (the
    CPU, listed here for the test); either way a sample of large output gradients stays within R and the release is
    inductor's with fp32 Grams, to the Grams' roundings. (Against the eager backend the release differs by bf16's
    roundings of the forward, which inductor fuses: 5e-3 on CUDA, session 36.)"""
    from torch._inductor.utils import run_and_get_code

    from dpcompile.passes.rules import bounds
    if device != DEVICE:
        pytest.skip(f"runs where the suite's device is {device}")
    torch.manual_seed(0)
    make, x, G = _large_first_sample("conv")
    released = {}
    for on in (False, True):
        monkeypatch.setattr(bounds, "HALF_GRAM_DEVICES", (device,) if on else ())
        (released[on], dp), codes = run_and_get_code(lambda: _fresh_release(make, x, G, "inductor"))
        assert _takes_half_bmm(dp) == on
        assert released[on].norm() <= 0.5 * (1 + 1e-6)
    lines = [line.strip() for code in codes for line in code.splitlines()]
    calls_op = any("dpcompile.half_bmm" in line for line in lines if not line.startswith("#"))
    assert calls_op == (device != "cuda")
    assert (released[True] - released[False]).norm() <= 1e-4 * released[False].norm()


@pytest.mark.inductor
@pytest.mark.skipif(DEVICE != "cuda", reason="the C++ wrapper's failure was CUDA's (a CUDA C-shim name)")
def test_half_grams_under_the_cpp_wrapper(no_fx_graph_cache):
    """Under the user's cpp_wrapper=True the bf16 Grams compile with the C++ wrapper (ops.lower_half_bmm leaves
    them to the op there: inductor's cuBLAS choice for aten.bmm.dtype has a C-shim name torch lacks, and the backward
    failed to compile on an H200, torch 2.11): no graph falls back to the Python wrapper or to running uncompiled,
    and a sample of large output gradients stays within R."""
    torch.manual_seed(0)
    make, x, G = _large_first_sample("conv")
    with torch._inductor.config.patch(cpp_wrapper=True), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        released, dp = _fresh_release(make, x, G, "inductor")
    assert _takes_half_bmm(dp)
    assert not [w for w in caught if "could not compile" in str(w.message)], [str(w.message) for w in caught]
    assert released.norm() <= 0.5 * (1 + 1e-6)


class AutocastInside(nn.Module):
    """A model that enters bf16 autocast for one layer inside its own forward."""

    def __init__(self):
        super().__init__()
        self.fc, self.fc2 = nn.Linear(8, 4), nn.Linear(4, 2)

    def forward(self, x):
        with torch.autocast(torch.device(x.device).type, dtype=torch.bfloat16):
            h = self.fc(x)
        return self.fc2(h.float())


@pytest.mark.parametrize("policy", ("mixed", "ghost", "per_sample"))
def test_autocast_entered_inside_forward(policy):
    """The numerical check runs the captured graph twice node by node: its two autocast regions were left in the
    order they were entered, so autocast stayed on after the check, the forward ran under it (a bf16 output where
    eager gives fp32) and the backward failed ("expected m1 and m2 to have the same dtype"). Now: fp32 output as
    eager's, autocast off after the call, a one-sample release within R, two batch sizes."""
    torch.manual_seed(0)
    model = AutocastInside().to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", policy=policy,
                             backend=BACKEND)
    device_type = torch.device(DEVICE).type
    for B in (1, 4):
        x = torch.randn(B, 8, device=DEVICE) * 100
        out = dp(x)
        assert out.dtype == torch.float32 and not torch.is_autocast_enabled(device_type)
        torch.testing.assert_close(out, model(x))
        model.zero_grad(set_to_none=True)
        out.square().sum().backward()
        norm = torch.sqrt(sum(p.grad.double().square().sum() for p in model.parameters()))
        assert torch.isfinite(norm) and (B > 1 or norm <= 1.0 * (1 + 1e-12)), (B, norm)


def test_an_fp16_model_under_bf16_autocast_with_a_first_batch_of_one():
    """The numerical check doubles a first batch of one with torch.cat, which ran under the user's autocast: CPU
    autocast's cat refuses fp16 operands under bf16 ("Unexpected floating ScalarType"), so an fp16 model under bf16
    autocast failed with a torch RuntimeError at a first batch of one. The copy now runs without autocast."""
    model = nn.Linear(1, 1, bias=False).half().to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", backend=BACKEND)
    with torch.autocast(torch.device(DEVICE).type, torch.bfloat16):
        out = dp(torch.full((1, 1), 10.0, dtype=torch.float16, device=DEVICE))
    out.float().sum().backward()
    assert torch.isfinite(model.weight.grad).all() and model.weight.grad.double().norm() <= 1.0
