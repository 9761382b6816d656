"""dpcompile::per_sample_conv2d_grad (impl "implicit", on CUDA by default: passes.rules.conv.IMPLICIT_CONV_DEVICES):
per-sample gradients of 2-D convolutions in one Triton kernel on CUDA (dpcompile.conv_kernels), its torch reference
elsewhere. The kernel against float64 per-sample convolution_backward over random convolutions (on CUDA directly; on
a CPU through Triton's interpreter where Triton is installed), the rewrite through it against torch.func, crafted
inputs against the bound, and which operands and settings take it."""
from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import warnings
from collections import Counter

import pytest
import torch
from conftest import BACKEND, DEVICE, SLOW_ON_CPU
from helpers import Case, check_against_reference, conv_constants, examples, implicit_convs, old_triton_interpreter
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import dpcompile
from dpcompile import conv_kernels

OP = torch.ops.dpcompile.per_sample_conv2d_grad.default


def per_sample_conv_grads(g: torch.Tensor, x: torch.Tensor, kernel, stride, padding, dilation) -> torch.Tensor:
    """Float64 per-sample weight gradients, one convolution_backward per sample."""
    w = torch.empty(g.shape[1], x.shape[1], *kernel, dtype=torch.float64, device=g.device)
    return torch.stack([torch.ops.aten.convolution_backward(
        g[i:i + 1].double(), x[i:i + 1].double(), w, None, stride, padding, dilation, False, [0, 0], 1,
        [False, True, False])[1] for i in range(g.shape[0])])


@st.composite
def conv2d_operands(draw, device: str = DEVICE):
    """(g, x, kernel, stride, padding, dilation): a random 2-D convolution's operands, channels-last or not."""
    kernel = [draw(st.integers(1, 4)), draw(st.integers(1, 4))]
    stride = [draw(st.integers(1, 3)), draw(st.integers(1, 3))]
    dilation = [draw(st.integers(1, 2)), draw(st.integers(1, 2))]
    padding = [draw(st.integers(0, (k - 1) * d)) for k, d in zip(kernel, dilation)]
    size = [(k - 1) * d + 1 + draw(st.integers(0, 6)) for k, d in zip(kernel, dilation)]
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(size, padding, dilation, kernel, stride)]
    B, C, P = draw(st.integers(1, 4)), draw(st.integers(1, 70)), draw(st.integers(1, 70))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x = torch.randn(B, C, *size, generator=gen, dtype=torch.float64).to(device)
    g = torch.randn(B, P, *out, generator=gen, dtype=torch.float64).to(device)
    if draw(st.booleans()):
        x, g = x.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last)
    return g, x, kernel, stride, padding, dilation


@pytest.mark.skipif(DEVICE != "cuda", reason="the Triton kernel runs on CUDA (on a CPU: the interpreter test)")
@settings(max_examples=examples(60), deadline=None)
@given(case=conv2d_operands(),
       dtype=st.sampled_from([torch.float64, torch.float32, torch.bfloat16, torch.float16]), joint=st.booleans())
def test_kernel_over_random_convolutions(case, dtype, joint):
    """The kernel's per-sample gradients are float64 per-sample convolution_backward's: exactly in float64 (its
    tiles summed there), to fp32's, bf16's or fp16's rounding over T products otherwise (IEEE fp32 products); in
    both tilings (joint: columns over kernel position and channel)."""
    g, x, kernel, stride, padding, dilation = case
    got = conv_kernels.per_sample_conv2d_grad(g.to(dtype), x.to(dtype), kernel, stride, padding, dilation,
                                              joint_channels=10**6 if joint else 0)
    expected = per_sample_conv_grads(g.to(dtype), x.to(dtype), kernel, stride, padding, dilation)
    assert got.shape == expected.shape and got.dtype == dtype
    scale = expected.abs().amax().item() + 1e-300
    tolerance = {torch.float64: 1e-13, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 3e-3}[dtype]
    assert (got.double() - expected).abs().amax().item() <= tolerance * scale


INTERPRETED = textwrap.dedent("""
    import torch
    from dpcompile.conv_kernels import per_sample_conv2d_grad, per_sample_conv2d_grad_reference
    gen = torch.Generator().manual_seed(0)
    def ints(lo, hi):
        return int(torch.randint(lo, hi + 1, (), generator=gen))
    worst = 0.0
    for case in range(12):
        kernel, stride, dilation = [ints(1, 3), ints(1, 3)], [ints(1, 2), ints(1, 2)], [ints(1, 2), ints(1, 2)]
        padding = [ints(0, (k - 1) * d) for k, d in zip(kernel, dilation)]
        size = [(k - 1) * d + 1 + ints(0, 4) for k, d in zip(kernel, dilation)]
        out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(size, padding, dilation, kernel, stride)]
        B, C, P = ints(2 if case == 5 else 1, 3), ints(1, 20), ints(1, 20)
        x = torch.randn(B, C, *size, generator=gen, dtype=torch.float64)
        g = torch.randn(B, P, *out, generator=gen, dtype=torch.float64)
        if case % 2:
            x, g = x.to(memory_format=torch.channels_last), g.to(memory_format=torch.channels_last)
        x[-1].fill_(float("inf")) if case == 5 else None  # another sample's inf must stay in its own gradient
        expected = per_sample_conv2d_grad_reference(g, x, kernel, stride, padding, dilation)
        rows = slice(0, B - 1) if case == 5 else slice(None)
        for joint in (0, 10**6):  # one kernel position a tile, and (position, channel) columns
            got = per_sample_conv2d_grad(g, x, kernel, stride, padding, dilation, joint_channels=joint,
                                         config=dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16))
            assert got.stride() == expected.stride(), (got.stride(), expected.stride())
            worst = max(worst, ((got[rows] - expected[rows]).abs().amax() / expected[rows].abs().amax()).item())
    print(worst)
""")


@pytest.mark.skipif(not conv_kernels.available() or DEVICE == "cuda", reason="Triton not installed (or CUDA: above)")
@pytest.mark.skipif(old_triton_interpreter(), reason="Triton's interpreter before 3.8 fails on numpy 2's scalars")
def test_kernel_in_triton_interpreter():
    """On a CPU with Triton installed: the kernel's indexing (strides, padding, stride, dilation, masks, one
    sample's programs), in both tilings (one kernel position a tile; columns over (kernel position, channel)),
    through Triton's interpreter against the torch reference in float64, in a fresh process (TRITON_INTERPRET is read
    when kernels are defined); a sample of infs leaves the others' gradients exact."""
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert float(result.stdout.strip().splitlines()[-1]) < 1e-13


def backward_ops(dp) -> Counter:
    return Counter(n.target for n in dp.graphs["backward_rewritten"].graph.nodes if n.op == "call_function")


CONVS = Case("implicit_convs", lambda: nn.Sequential(
    nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
    nn.Conv2d(6, 5, (3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2)), nn.ReLU(),
    nn.Conv2d(5, 4, 1), nn.ReLU(),  # 1×1: not this kernel's
    nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.Linear(48, 3)),  # groups: not this kernel's
    lambda B: torch.randn(B, 3, 9, 8, dtype=torch.float64))


@pytest.mark.parametrize("joint", [False, pytest.param(True, marks=pytest.mark.skipif(
    DEVICE != "cuda", reason="the tiling is the Triton kernel's (on a CPU the op runs its torch reference)"))],
    ids=["per_position", "joint"])
@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
@pytest.mark.parametrize("policy", ["per_sample", "mixed"])
def test_rewrite_through_the_kernel_matches_reference(backend, policy, joint, monkeypatch):
    """Per-sample gradients of the 2-D, one-group, larger-than-1×1 convolutions through the op (its stored layout,
    kernel position major, channel minor, into the norms and the clipped sums), several batch sizes through one
    compiled model, against torch.func in float64; the 1×1 and grouped convolutions keep their forms. On CUDA also
    with the kernel's joint tiles (columns over kernel position and channel) for the 3- and 6-channel inputs."""
    monkeypatch.setattr(conv_kernels, "JOINT_MAX_CHANNELS", 10**6 if joint else 0)  # part of the FX cache's key
    with implicit_convs():
        dp = check_against_reference(CONVS, policy=policy, backend=backend, batches=(3, 5, 2))
    rows = [r for r in dp.explain() if r.op.endswith("convolution_backward") and r.method == "per_sample"]
    implicit = [r.impl for r in rows if r.d != "1"]
    if policy == "per_sample":
        assert implicit.count("implicit") == 2, implicit
    assert backward_ops(dp)[OP] == implicit.count("implicit")


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
def test_clipped_sums_and_noise_follow_the_stored_layout(backend):
    """The op's per-sample gradients are stored kernel position major, channel minor (P, K, K, C a sample); their
    clipped sums are formed and noised in that order (rewrite.weighted_sum, laid_like: what lets inductor fuse the
    release into the sum without reading out of order) and released in the parameter's layout. Every entry of every
    parameter gets a draw of its own: the release minus torch.func's clipped sum (float64) has std σR/n per weight,
    no two entries share a value, none is zero; the graph sums a permuted view for each weight the op computes."""
    from reference import dp_reference
    torch.manual_seed(0)
    with implicit_convs():
        model = CONVS.model().double().to(DEVICE)
        x, y = torch.randn(6, 3, 9, 8, dtype=torch.float64, device=DEVICE), torch.randn(6, 3, dtype=torch.float64,
                                                                                           device=DEVICE)
        sigma, bound = 2.0, 0.5
        dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=sigma, backend=backend,
                                 policy="per_sample", seed=1)
        (dp(x) - y).square().sum(1).mean().backward()
    rewritten = dp.graphs["backward_rewritten"].graph
    permuted = {n.name.split("_weight")[0] for n in rewritten.nodes
                if n.name.startswith("dp_clipped_") and n.target is torch.ops.aten.permute.default}
    assert permuted == {"dp_clipped_0", "dp_clipped_2"}, permuted  # the 3×3 and 3×2 convolutions through the op
    for n, p in model.named_parameters():
        assert p.grad.stride() == p.stride(), n
    expected, _ = dp_reference(model, x, y, bound, loss=lambda out, t, reduction: (out - t).square().sum())
    noise = {n: p.grad - expected[n] for n, p in model.named_parameters()}
    flat = torch.cat([d.flatten() for d in noise.values()])
    assert flat.abs().min() > 0 and flat.unique().numel() == flat.numel()
    for n in ("0.weight", "2.weight"):  # 162 and 180 entries
        assert abs(noise[n].std().item() / (sigma * bound / 6) - 1) < 0.25, n


def launches(codes: list[str]) -> tuple[bool, bool]:
    """(whether inductor's generated code holds the kernel itself, whether it calls the op), read from the code's
    lines with comments left out (inductor's comments name the op)."""
    lines = [line.strip() for code in codes for line in code.splitlines()]
    lines = [line for line in lines if not line.startswith("#")]
    return (any(line.startswith("def _per_sample_conv2d_grad(") for line in lines),
            any("dpcompile.per_sample_conv2d_grad" in line for line in lines))


@pytest.mark.inductor
@pytest.mark.skipif(DEVICE != "cuda" or not conv_kernels.available(), reason="inductor lowers the op so on CUDA")
@pytest.mark.parametrize("autocast", [False, True], ids=["float64", "bf16_autocast"])
def test_inductor_launches_the_kernel_itself(autocast, no_fx_graph_cache):
    """Under inductor on CUDA the op is lowered to the Triton kernel (ops.lower_per_sample_conv2d_grad): the DP
    backward's generated code launches _per_sample_conv2d_grad and never calls the op, and the gradients match
    torch.func's (float64: the rewrite's reference check over batches 3, 5, 2; bf16 autocast: the released
    gradient is the one eager's op gives, to bf16's roundings in norm)."""
    from torch._inductor.utils import run_and_get_code
    if not autocast:
        with implicit_convs():
            _, codes = run_and_get_code(lambda: check_against_reference(CONVS, policy="per_sample",
                                                                          backend="inductor", batches=(3, 5, 2)))
    else:
        grads = {}
        for backend in ("eager", "inductor"):
            torch._dynamo.reset()
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, stride=2),
                                  nn.Flatten(), nn.Linear(16 * 9, 2)).to(DEVICE)
            x = torch.randn(6, 8, 8, 8, device=DEVICE).to(memory_format=torch.channels_last)
            with implicit_convs():
                dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, policy="per_sample",
                                         backend=backend)

                def step():
                    with torch.autocast("cuda", torch.bfloat16):
                        out = dp(x)
                    out.float().square().sum().backward()
                _, codes = run_and_get_code(step)  # the last, inductor's, is checked below
            assert [r.impl for r in dp.explain() if r.op.endswith("convolution_backward") and r.d != "1"] == \
                ["implicit"] * 2
            grads[backend] = torch.cat([p.grad.flatten() for p in model.parameters()])
        assert (grads["inductor"] - grads["eager"]).norm() <= 2e-2 * grads["eager"].norm()  # bf16 forward roundings
    assert launches(codes) == (True, False)


@pytest.mark.inductor
@pytest.mark.skipif(DEVICE != "cuda" or not conv_kernels.available(), reason="the kernel's launches on CUDA")
def test_the_kernel_reads_both_operands_channels_last(monkeypatch, no_fx_graph_cache):
    """The kernel's loads vectorise along the channels only (along the positions they go element by element: up to 6x
    slower at the suite's shapes, BENCHMARKS.md, forty-ninth session), so the op's CUDA implementation and inductor's
    lowering hand it g and x channels-last whatever their layout: the eager op called on NCHW operands, and every
    launch inductor generates for a model whose output gradients come NCHW, see channel stride 1."""
    seen = []
    kernel_call, launch = conv_kernels.per_sample_conv2d_grad, conv_kernels.launch

    def recorded_call(g, x, *conv, **kw):
        seen.append(("eager", g.stride()[1], x.stride()[1]))
        return kernel_call(g, x, *conv, **kw)

    def recorded_launch(g_size, g_stride, x_size, x_stride, *rest, **kw):
        seen.append(("launch", g_stride[1], x_stride[1]))
        return launch(g_size, g_stride, x_size, x_stride, *rest, **kw)
    monkeypatch.setattr(conv_kernels, "per_sample_conv2d_grad", recorded_call)
    monkeypatch.setattr(conv_kernels, "launch", recorded_launch)
    g = torch.randn(4, 8, 6, 6, device=DEVICE, dtype=torch.bfloat16)
    x = torch.randn(4, 5, 6, 6, device=DEVICE, dtype=torch.bfloat16)
    got = OP(g, x, [3, 3], [1, 1], [1, 1], [1, 1])
    assert seen == [("eager", 1, 1), ("launch", 1, 1)]  # the op's CUDA implementation launches through launch()
    exact = per_sample_conv_grads(g, x, [3, 3], [1, 1], [1, 1], [1, 1])
    assert (got.double() - exact).norm() <= 1e-2 * exact.norm()
    seen.clear()
    torch._dynamo.reset()
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.Flatten(), nn.Linear(16 * 64, 2)).to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, policy="per_sample", backend="inductor")
    with torch.autocast("cuda", torch.bfloat16):
        out = dp(torch.randn(6, 8, 8, 8, device=DEVICE))  # NCHW input; the flatten's gradient reaches the conv NCHW
    out.float().square().sum().backward()
    assert seen and all(s == ("launch", 1, 1) for s in seen), seen  # an "eager" entry: inductor fell back to the op


@pytest.mark.inductor
@pytest.mark.skipif(DEVICE != "cuda" or not conv_kernels.available(), reason="inductor lowers the op so on CUDA")
def test_inductor_falls_back_to_the_op_where_it_cannot_launch_the_kernel(monkeypatch, no_fx_graph_cache):
    """Where inductor's user-kernel IR rejects the launch (a torch version whose UserDefinedTritonKernel differs),
    the lowering warns and calls the op instead (the same kernel through its Python launch): the gradients still
    match torch.func over batches 3, 5, 2 in float64, and the generated code calls the op."""
    from torch._inductor import ir
    from torch._inductor.utils import run_and_get_code

    def rejected(*args, **kwargs):
        raise TypeError("__init__() got an unexpected keyword argument 'kernel_args'")
    monkeypatch.setattr(ir, "UserDefinedTritonKernel", rejected)
    with implicit_convs(), pytest.warns(UserWarning, match="could not launch the per-sample convolution kernel itself"):
        _, codes = run_and_get_code(lambda: check_against_reference(CONVS, policy="per_sample", backend="inductor",
                                                                      batches=(3, 5, 2)))
    assert launches(codes)[1]


@pytest.mark.inductor
@pytest.mark.skipif(DEVICE != "cuda" or not conv_kernels.available(), reason="CUDA graphs of the lowered kernel")
def test_lowered_kernel_inside_cuda_graphs(no_fx_graph_cache):
    """cuda_graphs=True with the lowered kernel: the DP backward that launches it is recorded (inductor skips no
    graph; the kernel's autotuning runs at the warm-up run, before a recording), and the gradients of the warm-up,
    recorded and replayed steps (batches 3, 5, 3, 5, 3) match torch.func's in float64. A replay reading another
    step's operands, or a launch left out of the recording, would give the wrong gradient."""
    from test_gpu_paths import recorded_cuda_graphs
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code
    counters.clear()
    with implicit_convs():
        _, codes = run_and_get_code(lambda: check_against_reference(
            CONVS, policy="per_sample", backend="inductor", batches=(3, 5, 3, 5, 3), cuda_graphs=True))
    assert not counters["inductor"]["cudagraph_skips"], dict(counters["inductor"])
    assert recorded_cuda_graphs() > 0
    assert launches(codes)[0]


@pytest.mark.parametrize("bound", [1e-3, 1e3], ids=["clipped", "unclipped"])
def test_crafted_sample_through_the_kernel_stays_within_R(bound):
    """bf16 autocast and float32: sample 0's large, cancelling output gradients over large inputs, and sample 1 of
    infs (dropped, clip factor 0), through the kernel: the release stays within R and finite, sample 1 leaves it
    unchanged (a kernel reading across samples would carry its inf into sample 0's gradient)."""
    from test_adversarial import released_norm
    torch.manual_seed(0)
    x = torch.randn(2, 4, 6, 6, device=DEVICE) * 300
    G = torch.zeros(2, 4, 6, 6, device=DEVICE)
    G[0] = torch.randn(4, 6, 6, device=DEVICE).sign() * 1e4
    G[0, 0, 0, 0] = 1 - (G[0].sum() - G[0, 0, 0, 0])
    for autocast in (True, False):
        grads = []
        for poisoned in (False, True):
            model = nn.Conv2d(4, 4, 3, padding=1, bias=False).to(DEVICE)
            xs = x.clone()
            if poisoned:
                xs[1] = float("inf")
            with implicit_convs(), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # the dropped sample's warning
                dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, loss_reduction="sum",
                                         policy="per_sample", backend=BACKEND)
                with torch.autocast(torch.device(DEVICE).type, torch.bfloat16, enabled=autocast):
                    out = dp(xs)
                (out.float() * G).sum().backward()
            assert dp.privacy.dropped_samples == poisoned
            assert {r.impl.split(",")[0] for r in dp.explain() if r.op.endswith("convolution_backward")} == \
                {"implicit"}
            assert released_norm(model) <= bound * (1 + 1e-6)
            grads.append(model.weight.grad.clone())
        assert torch.equal(grads[1], grads[0])  # sample 1's output gradient is 0: it added nothing either way


def test_half_precision_model_through_the_kernel():
    """A model in fp16 (parameters and input; the per-sample products accumulate in fp32): its 3×3 convolutions take
    the kernel by default on CUDA (here on a CPU: its torch reference, the device listed), a sample of large output
    gradients (the only one released) stays within R, and its released gradient is the one the earlier forms give
    (kernel off), to fp16's roundings in norm."""
    devices = (torch.device(DEVICE).type,)
    if DEVICE == "cuda" and not conv_kernels.available():
        pytest.skip("Triton not installed")
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8, device=DEVICE).half()
    G = torch.zeros(4, 2, device=DEVICE)
    G[0] = torch.tensor([3e3, -2e3])  # sample 0 alone is released: its clipped gradient
    grads = {}
    for on in (True, False):
        torch._dynamo.reset()
        torch.manual_seed(1)
        model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, stride=2), nn.Flatten(),
                              nn.Linear(4 * 9, 2)).to(DEVICE).half()
        with conv_constants(IMPLICIT_CONV_DEVICES=devices if on else ()):
            dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=0.0, loss_reduction="sum",
                                     policy="per_sample", backend=BACKEND)
            (dp(x).float() * G).sum().backward()
        impls = [r.impl for r in dp.explain() if r.op.endswith("convolution_backward") and r.d != "1"]
        assert (impls == ["implicit"] * 2) == on, impls
        grads[on] = torch.cat([p.grad.double().flatten() for p in model.parameters()])
        assert torch.isfinite(grads[on]).all() and grads[on].norm() <= 0.5 * (1 + 1e-3)
    assert (grads[True] - grads[False]).norm() <= 1e-2 * grads[False].norm()


@pytest.mark.parametrize("enabled", [True, False], ids=["default", "none_listed"])
def test_kernel_only_where_listed_and_for_16_bit_operands(enabled, monkeypatch):
    """By default (CUDA listed in IMPLICIT_CONV_DEVICES) a 3×3 convolution's per-sample gradients run the kernel
    under bf16 autocast on CUDA (Triton there) and never in float32 or on a CPU; with no device listed, nowhere."""
    from dpcompile.passes.rules import conv
    assert conv.IMPLICIT_CONV_DEVICES == ("cuda",)
    monkeypatch.setattr(conv, "IMPLICIT_CONV_DEVICES", conv.IMPLICIT_CONV_DEVICES if enabled else ())
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 36, 2)).to(DEVICE)
    for autocast in (False, True):
        torch._dynamo.reset()
        dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, policy="per_sample", backend=BACKEND)
        with torch.autocast(torch.device(DEVICE).type, torch.bfloat16, enabled=autocast):
            out = dp(torch.randn(4, 3, 6, 6, device=DEVICE))
        out.float().sum().backward()
        impl = next(r.impl for r in dp.explain() if r.op.endswith("convolution_backward") and r.d != "1")
        expected = enabled and autocast and DEVICE == "cuda" and conv_kernels.available()
        assert (impl == "implicit") == expected, impl


def test_rule_picks_the_kernel_by_operands(monkeypatch):
    """ConvRule.implementation on fake operands (no GPU needed), by default (CUDA and bf16 listed): "implicit" for
    bf16 and fp16 2-D convolutions on CUDA with one group and a kernel larger than 1×1, where Triton is importable;
    never for fp32, float64, a CPU, groups, a 1×1 or 1-D kernel, mixed dtypes, a transposed convolution or a ghost
    term; and nowhere with no device listed."""
    from types import SimpleNamespace

    import sympy
    from torch._subclasses.fake_tensor import FakeTensorMode

    from dpcompile.passes.meta import LayerShape, Site
    from dpcompile.passes.rules.conv import ConvRule

    def impl(dtype=torch.bfloat16, device="cuda", groups=1, kernel=(3, 3), x_dtype=None, transposed=False,
             method="per_sample"):
        with FakeTensorMode():
            g = torch.empty(2, 8, *[16] * len(kernel), device=device, dtype=dtype)
            x = torch.empty(2, 8, *[16] * len(kernel), device=device, dtype=x_dtype or dtype)
        shape = LayerShape(B=sympy.Symbol("B"), T=sympy.Integer(16 ** len(kernel)),
                           d=sympy.Integer(8 // groups * math.prod(kernel)), p=sympy.Integer(8 // groups),
                           groups=groups)
        consts = {"kernel": list(kernel), "stride": [1] * len(kernel), "padding": [0] * len(kernel),
                  "dilation": [1] * len(kernel), "groups": groups, "transposed": transposed}
        site = Site("conv", (SimpleNamespace(meta={"val": g}), SimpleNamespace(meta={"val": x})), consts, shape)
        return ConvRule().implementation(site, method)

    from dpcompile.passes.rules import conv
    kernel_here = conv_kernels.available()
    assert (impl() == "implicit") == kernel_here
    assert (impl(kernel=(1, 3)) == "implicit") == kernel_here
    assert (impl(dtype=torch.float16) == "implicit") == kernel_here
    for other in (dict(dtype=torch.float32), dict(dtype=torch.float64), dict(device="cpu"),
                  dict(groups=2),
                  dict(kernel=(1, 1)), dict(kernel=(3,)), dict(x_dtype=torch.float32), dict(transposed=True),
                  dict(method="ghost")):
        assert impl(**other) != "implicit", other
    monkeypatch.setattr(conv, "IMPLICIT_CONV_DEVICES", ())
    assert impl() != "implicit"
