"""What inductor does on CUDA and not on CPU, reproduced here so CPU CI keeps it covered (seen on an H200,
torch 2.11): constant-folded padding masks in embedding backwards, and inductor failing on a graph. And user
settings that would reach the DP graphs on a GPU: inductor's CUDA graphs, TF32 and cuBLAS's reduced-precision
reductions under your own torch.compile, compiled autograd."""
from __future__ import annotations

import contextlib
import re
import sys

import pytest
import torch
import torch.fx as fx
from conftest import DEVICE, SLOW_ON_CPU
from helpers import Case, check_against_reference
from torch import nn

import dpcompile
from dpcompile import ConfigError
from dpcompile.passes.rules.embedding import _padding_masked

aten = torch.ops.aten


def masked_values(cond_kind: str):
    """A graph where(cond, zero, sum(x, 0)) feeding an embedding's values, with cond and zero as the CPU graph
    (eq(indices, p), scalar_tensor(0)) or inductor's CUDA joint graph (full(...), full([], 0)) has them."""
    g = fx.Graph()
    idx, x = g.placeholder("idx"), g.placeholder("x")
    summed = g.call_function(aten.sum.dim_IntList, (x, [0]))
    if cond_kind == "eq":
        cond = g.call_function(aten.unsqueeze.default, (g.call_function(aten.eq.Scalar, (idx, 3)), -1))
        zero = g.call_function(aten.scalar_tensor.default, (0.0,))
    elif cond_kind == "eq_full_zero":
        cond = g.call_function(aten.unsqueeze.default, (g.call_function(aten.eq.Scalar, (idx, 3)), -1))
        zero = g.call_function(aten.full.default, ([], 0.0))
    else:  # constant False mask (constant indices without padding)
        cond = g.call_function(aten.full.default, ([5, 1], cond_kind == "true"))
        zero = g.call_function(aten.full.default, ([], 0.0))
    where = g.call_function(aten.where.self, (cond, zero, summed))
    return where, idx, summed


@pytest.mark.parametrize("kind, padding", [("eq", 3), ("eq_full_zero", 3), ("false", None)])
def test_padding_mask_forms_are_seen_through(kind, padding):
    where, idx, summed = masked_values(kind)
    assert _padding_masked(where, idx) == (summed, padding)


def test_a_mask_that_hides_rows_is_not_seen_through():
    """A constant True mask (every row zeroed) or a non-zero fill is not a padding mask: values stay as they are."""
    where, idx, _ = masked_values("true")
    assert _padding_masked(where, idx) == (where, None)


@pytest.mark.skipif(DEVICE != "cpu", reason="injects a failure into inductor's entry point")
@pytest.mark.parametrize("error, shown", [
    ("CantSplit: 10 not divisible by 10*s33", r"\(RuntimeError: CantSplit: 10 not divisible by 10\*s33\)"),
    ("TypeError: cannot determine truth value of Relational: 32*s77 > 32\n  target: dpcompile.stored.default\n"
     "  args[0]: TensorBox(...)", r"32\*s77 > 32; target: dpcompile.stored.default\)"),  # a lowering names its op
])
def test_inductor_failure_falls_back_to_the_graph_with_a_warning(monkeypatch, error, shown):
    """A graph inductor cannot compile runs as it was before inductor's passes: the same gradients (torch.func,
    float64), a warning that gives the error and, for a lowering's, the op. The failure is injected after the graph
    inductor was given is rewritten in place (every multiplication made an addition), as inductor's passes do
    before code generation fails: the graph that runs must be the one the DP passes made."""
    import torch._inductor.compile_fx as compile_fx
    from torch._inductor.exc import InductorError

    real, failed = compile_fx.compile_fx_inner, []

    def failing_once(gm, example_inputs, **kwargs):
        if kwargs.get("is_backward") and not failed:
            failed.append(True)
            for node in gm.graph.find_nodes(op="call_function", target=aten.mul.Tensor):
                node.target = aten.add.Tensor  # inductor's passes rewrite the graph in place before they fail
            gm.recompile()
            raise InductorError(RuntimeError(error), None)
        return real(gm, example_inputs, **kwargs)

    monkeypatch.setattr(compile_fx, "compile_fx_inner", failing_once)
    case = Case("linear", lambda: nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)),
                lambda B: torch.randn(B, 5, 6, dtype=torch.float64))
    with pytest.warns(RuntimeWarning, match="runs without inductor") as caught:
        check_against_reference(case, backend="inductor", batches=(3, 5))
    assert failed
    assert any(re.search(shown, str(w.message)) for w in caught), [str(w.message) for w in caught]


@pytest.mark.slow
@pytest.mark.skipif(DEVICE != "cpu", reason="injects a failure into inductor's entry point")
def test_a_cpp_wrapper_failure_compiles_with_the_python_wrapper(monkeypatch):
    """Under the user's cpp_wrapper=True a graph whose C++ does not compile (on an H200, torch 2.11, WRN-16-4 bf16's
    backward: a C-shim name torch lacks) is compiled again with the Python wrapper, not run uncompiled (104 ms a step
    against 12 ms there): the same gradients (torch.func, float64), one warning per graph that names the wrapper, and
    none that says it runs without inductor. The C++ compiler's failure is injected where the C++ wrapper is on, after
    the graph it was given is rewritten in place (as inductor's passes do before the C++ compiler runs; here every
    multiplication made an addition): the Python wrapper's attempt must get the graph as it was."""
    import torch._inductor.compile_fx as compile_fx
    from torch._inductor.exc import InductorError

    real, calls = compile_fx.compile_fx_inner, []

    def failing_in_cpp(gm, example_inputs, **kwargs):
        calls.append((bool(kwargs.get("is_backward")), torch._inductor.config.cpp_wrapper))
        if torch._inductor.config.cpp_wrapper:
            for node in gm.graph.find_nodes(op="call_function", target=aten.mul.Tensor):
                node.target = aten.add.Tensor
            gm.recompile()
            raise InductorError(RuntimeError("CppCompileError: C++ compile error"), None)
        return real(gm, example_inputs, **kwargs)

    monkeypatch.setattr(compile_fx, "compile_fx_inner", failing_in_cpp)
    case = Case("linear", lambda: nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)),
                lambda B: torch.randn(B, 5, 6, dtype=torch.float64))
    with torch._inductor.config.patch(cpp_wrapper=True), \
            pytest.warns(RuntimeWarning, match="Python wrapper") as caught:
        check_against_reference(case, backend="inductor", batches=(3, 5))
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "runs without inductor" in m], messages
    assert any("backward graph (RuntimeError: CppCompileError" in m for m in messages), messages
    assert (True, True) in calls and (True, False) in calls, calls  # the backward: C++ first, then Python


def test_user_cuda_graphs_setting_stays_off_the_dp_graphs(monkeypatch):
    """A user's global triton.cudagraphs=True must not reach the DP graphs: a CUDA graph replay would skip the
    noise op's host side (the step count, the generator's draw) and add the captured noise again. The DP graphs
    are lowered with CUDA graphs off; each step draws new noise and counts."""
    import torch._inductor.compile_fx as compile_fx

    real, seen = compile_fx.compile_fx_inner, []

    def recording(gm, example_inputs, **kwargs):
        box = kwargs.get("cudagraphs")
        seen.append((box.value if box is not None else None, torch._inductor.config.triton.cudagraphs))
        return real(gm, example_inputs, **kwargs)

    monkeypatch.setattr(compile_fx, "compile_fx_inner", recording)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(DEVICE)
    x = torch.randn(5, 6, device=DEVICE)
    with torch._inductor.config.patch({"triton.cudagraphs": True}):
        dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum",
                                 backend="inductor")
        grads = []
        for _ in range(3):
            model.zero_grad(set_to_none=True)
            dp(x).sum().backward()
            grads.append(model[0].weight.grad.clone())
    assert seen and all(value is not True and not config for value, config in seen), seen
    assert dp.privacy.steps == 3
    assert not torch.equal(grads[0], grads[1]) and not torch.equal(grads[1], grads[2])


def test_user_fast_math_stays_off_the_dp_graphs(monkeypatch):
    """A user's global fast-math settings (inductor's C++ kernels with -funsafe-math-optimizations and FMA contraction,
    Triton's fast exp) must not reach the DP graphs, whose certified norms assume each operation rounds once, in the
    order written: with every such option set the other way globally, both DP graphs are lowered with them strict, and
    on the CPU their kernels are compiled with -fno-unsafe-math-optimizations and -ffp-contract=off."""
    import torch._inductor.compile_fx as compile_fx
    from torch._inductor import cpp_builder

    from dpcompile.backend import strict_arithmetic

    config, strict = torch._inductor.config, strict_arithmetic()
    assert {"cpp.enable_unsafe_math_opt_flag", "cpp.enable_floating_point_contract_flag", "use_fast_math"} \
        <= set(strict)
    fast = {k: (not v) if isinstance(v, bool) else "fast" for k, v in strict.items()}
    real, real_flags, seen, flags = compile_fx.compile_fx_inner, cpp_builder._get_ffast_math_flags, [], []

    def recording(gm, example_inputs, **kwargs):
        seen.append({k: config.get_config_copy()[k] for k in strict})
        return real(gm, example_inputs, **kwargs)

    def recording_flags():
        flags.append(real_flags())
        return flags[-1]

    monkeypatch.setattr(compile_fx, "compile_fx_inner", recording)
    monkeypatch.setattr(cpp_builder, "_get_ffast_math_flags", recording_flags)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(DEVICE)
    x = torch.randn(5, 6, device=DEVICE)
    with config.patch({**fast, "force_disable_caches": True}):
        dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, backend="inductor")
        dp(x).square().sum().backward()
    assert len(seen) == 2 and all(values == strict for values in seen), seen
    if DEVICE == "cpu":
        assert flags and all("fno-unsafe-math-optimizations" in f and "ffp-contract=off" in f for f in flags), flags


def test_a_reduced_bf16_value_is_the_stored_one():
    """Under the DP graphs' arithmetic settings a bf16 value that one inductor kernel both stores and reduces (as a
    backward's tanh derivative and the row norm of it that a ghost bound takes) is reduced as stored, rounded to bf16:
    the norm is the stored operand's. Triton's kernels otherwise reduce the fp32 value before its rounding (inductor's
    store cache: up to 2⁻⁸ relative per value in bf16); the C++ kernels round at the conversion either way, so on a
    CPU this checks nothing that could differ and is skipped."""
    from dpcompile.backend import strict_arithmetic
    if DEVICE == "cpu":
        pytest.skip("inductor's C++ kernels round a stored bf16 value before reducing it, with or without the setting")

    def f(g, y):
        q = (g * (1 - y * y)).to(torch.bfloat16)
        return q, q.double().square().sum(-1)
    torch.manual_seed(0)
    g, y = torch.randn(8, 64, device=DEVICE), torch.rand(8, 64, device=DEVICE)
    sums = {}
    for name, settings in (("plain", {}), ("dp", strict_arithmetic())):
        torch._dynamo.reset()
        with torch._inductor.config.patch({**settings, "fx_graph_cache": False}):
            q, s = torch.compile(f, dynamic=True)(g, y)
        sums[name] = ((s - q.double().square().sum(-1)).abs() / s).max().item()
    # float64 sums of bf16 squares: equal but for the order of additions; sums["plain"] is what the setting prevents
    # (about 1e-3 where inductor fuses the two)
    assert sums["dp"] <= 1e-12, sums


def recorded_cuda_graphs() -> int:
    """How many functions inductor's CUDA graph trees hold on the current device (0: none recorded)."""
    from torch._inductor.cudagraph_trees import get_manager
    manager = get_manager(torch.cuda.current_device(), create_if_none_exists=False)
    return 0 if manager is None else len(manager.ids_to_funcs)


def conv_linear() -> nn.Module:
    return nn.Sequential(nn.Conv1d(2, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(16, 3))


def noisy_steps(cuda_graphs: bool, batches=(5, 5, 5, 3, 5), bucket=None):
    """Noisy gradients (seeded) of a small model over several steps and batch sizes, with SGD steps between."""
    torch.manual_seed(0)
    model = conv_linear().to(DEVICE, torch.float64)
    dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=1.0, loss_reduction="sum", seed=7,
                             cuda_graphs=cuda_graphs, batch_bucket=bucket)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(3)
    grads = []
    for B in batches:
        x = torch.randn(B, 2, 6, generator=data, dtype=torch.float64).to(DEVICE)
        dp(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
        opt.zero_grad(set_to_none=True)
    return grads, dp.privacy.steps


def test_cuda_graphs_draw_and_count_the_noise_on_every_step():
    """cuda_graphs=True records the DP graphs and runs the noise op outside them: with one seed, the noisy gradients
    of five steps (two batch sizes, each recorded anew) equal those without CUDA graphs, and every step counts. A
    noise op inside the recording would replay the first step's noise (and not count the step). On a CPU the
    option changes nothing (no CUDA graphs there)."""
    plain, plain_steps = noisy_steps(False)
    torch._dynamo.reset()
    graphed, graphed_steps = noisy_steps(True)
    if DEVICE == "cuda":
        assert recorded_cuda_graphs() > 0, "no CUDA graph was recorded: the test would prove nothing"
    assert plain_steps == graphed_steps == 5
    for step, (a, b) in enumerate(zip(plain, graphed)):
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pb, pa, rtol=1e-10, atol=1e-12, msg=f"step {step}")
    assert not torch.equal(graphed[0][0], graphed[1][0])


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs")
@pytest.mark.parametrize("policy", ["ghost", "per_sample"])
def test_cuda_graphs_gradients_match_the_reference(policy):
    """Clipped sums under cuda_graphs=True against torch.func per-sample gradients, float64, three batch sizes."""
    case = Case("conv_linear", conv_linear, lambda B: torch.randn(B, 2, 6, dtype=torch.float64))
    check_against_reference(case, policy=policy, backend="inductor", batches=(4, 6, 4), cuda_graphs=True)
    assert recorded_cuda_graphs() > 0


@pytest.mark.skipif(DEVICE != "cuda", reason="CUDA graphs")
@pytest.mark.parametrize("policy", ["ghost", "per_sample"])
def test_cuda_graphs_with_a_batch_bucket(policy):
    """cuda_graphs=True with batch_bucket=4: batches of 3, 5, 7, 2 and 8 replay the recordings of 4 and 8 rows;
    the clipped sums match torch.func, and the noisy steps (seeded) equal those without CUDA graphs, each counted."""
    case = Case("conv_linear", conv_linear, lambda B: torch.randn(B, 2, 6, dtype=torch.float64))
    check_against_reference(case, policy=policy, backend="inductor", batches=(3, 5, 7, 2, 8), cuda_graphs=True,
                            batch_bucket=4, reduction="sum")
    assert recorded_cuda_graphs() > 0
    torch._dynamo.reset()
    plain, plain_steps = noisy_steps(False, bucket=4)
    torch._dynamo.reset()
    graphed, graphed_steps = noisy_steps(True, bucket=4)
    assert plain_steps == graphed_steps == 5
    for step, (a, b) in enumerate(zip(plain, graphed)):
        for pa, pb in zip(a, b):
            torch.testing.assert_close(pb, pa, rtol=1e-10, atol=1e-12, msg=f"step {step}")


def test_cuda_graphs_need_inductor():
    with pytest.raises(ConfigError, match="cuda_graphs=True needs backend='inductor'"):
        dpcompile.dpcompile(nn.Linear(3, 2), max_grad_norm=1.0, noise_multiplier=1.0, backend="eager",
                            cuda_graphs=True)


def test_cuda_graphs_refused_where_the_noise_op_cannot_be_kept_outside(monkeypatch):
    """A torch without the cudagraph_unsafe tag (the noise op would be recorded and replayed): cuda_graphs=True is
    refused at compilation with a ConfigError naming what is missing, before any step."""
    import dpcompile.ops
    monkeypatch.setattr(dpcompile.ops, "OUTSIDE_CUDA_GRAPHS", ())
    dp = dpcompile.dpcompile(conv_linear().double(), max_grad_norm=1.0, noise_multiplier=1.0, cuda_graphs=True)
    with pytest.raises(ConfigError, match="cuda_graphs=True needs inductor's graph partition and the cudagraph_unsafe"):
        dp(torch.randn(3, 2, 6, dtype=torch.float64))


@contextlib.contextmanager
def matmul_flags(**flags):
    """torch.backends.cuda.matmul flags set for a block, then restored (its module object has no deletable
    attributes, so monkeypatch cannot undo them)."""
    matmul = torch.backends.cuda.matmul
    saved = {name: getattr(matmul, name) for name in flags}
    for name, value in flags.items():
        setattr(matmul, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(matmul, name, value)


def test_release_on_cuda_under_tf32_is_refused():
    """The noise op is the last step before a release: on a CUDA device with TF32 on (a user's own
    torch.compile(backend=dpcompile.backend(...)) runs the DP backward under the user's flags), it refuses,
    as TF32 products make the per-sample norms come out low. (The DP model turns TF32 off for its backward.)"""
    engine = dpcompile.backend(max_grad_norm=1.0, noise_multiplier=1.0).privacy
    with matmul_flags(allow_tf32=True), pytest.raises(ConfigError, match="TF32"):
        engine.release(10, torch.float32, torch.device("cuda"), torch.zeros(()))
    assert engine.steps == 0


def test_release_on_cuda_with_reduced_precision_reductions_is_refused():
    """A DP backward with bf16 products (autocast) is seen by its backend; released on CUDA under cuBLAS's
    reduced-precision reductions (PyTorch's default, left on by your own torch.compile) it is refused, as the
    bounds assume fp32 accumulation. Without half-precision products the same flags are fine."""
    backend = dpcompile.backend(max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum")
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3))
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    compiled(torch.randn(5, 6)).sum().backward()
    assert not backend.privacy.half_products
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(torch.randn(5, 6))
    out.float().sum().backward()
    assert backend.privacy.half_products
    steps = backend.privacy.steps
    with matmul_flags(allow_tf32=False, allow_bf16_reduced_precision_reduction=True), \
            pytest.raises(ConfigError, match="reduced-precision"):
        backend.privacy.release(10, torch.float32, torch.device("cuda"), torch.zeros(()))
    assert backend.privacy.steps == steps


@pytest.mark.skipif(DEVICE != "cuda", reason="these flags apply to CUDA matrix products")
@pytest.mark.parametrize("flags", ["tf32", "bf16_reduced"])
def test_own_compile_under_imprecise_products_is_refused_at_the_backward(flags):
    """End to end on CUDA, your own torch.compile with dpcompile.backend: with TF32 on, or with bf16 autocast and
    cuBLAS's reduced-precision reductions on (PyTorch's default), the backward refuses; nothing reaches .grad."""
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(DEVICE)
    compiled = torch.compile(model, backend=dpcompile.backend(max_grad_norm=1.0, noise_multiplier=1.0,
                                                              loss_reduction="sum"), fullgraph=True)
    with matmul_flags(allow_tf32=flags == "tf32", allow_bf16_reduced_precision_reduction=True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=flags == "bf16_reduced"):
            out = compiled(torch.randn(5, 6, device=DEVICE))
        with pytest.raises(ConfigError, match="TF32" if flags == "tf32" else "reduced-precision"):
            out.float().sum().backward()
    assert all(p.grad is None for p in model.parameters())


def test_compiled_autograd_is_refused_before_anything_is_released():
    """Compiled autograd would retrace the DP backward and its release checks (and trip over the matmul flags
    the DP backward sets): refused with a ConfigError at the DP backward's start, no gradient written."""
    enable = getattr(torch._dynamo.compiled_autograd, "_enable", None)
    if enable is None:
        pytest.skip("this torch has no compiled autograd entry point")
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum", backend="inductor")
    out = dp(torch.randn(5, 6, device=DEVICE)).sum()
    with pytest.raises(ConfigError, match="compiled autograd"), enable(torch.compile(backend="eager")):
        out.backward()
    assert all(p.grad is None for p in model.parameters()) and dp.privacy.steps == 0


def test_compiled_autograd_is_refused_under_your_own_compile():
    """Under your own torch.compile with dpcompile.backend, compiled autograd ran the captured (unclipped,
    un-noised) backward instead of the DP one: the output's backward node now refuses it, nothing released."""
    enable = getattr(torch._dynamo.compiled_autograd, "_enable", None)
    if enable is None:
        pytest.skip("this torch has no compiled autograd entry point")
    model = nn.Sequential(nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)).to(DEVICE)
    compiled = torch.compile(model, backend=dpcompile.backend(max_grad_norm=0.01, noise_multiplier=0.0,
                                                              loss_reduction="sum"), fullgraph=True)
    out = compiled(torch.randn(5, 6, device=DEVICE) * 10).sum()
    with pytest.raises(ConfigError, match="compiled autograd"), enable(torch.compile(backend="eager")):
        out.backward()
    assert all(p.grad is None for p in model.parameters())


WIDE_CONVS = Case("wide_convs", lambda: nn.Sequential(
    nn.Conv2d(3, 72, 3, padding=1), nn.GroupNorm(8, 72), nn.ReLU(), nn.Conv2d(72, 80, 3, padding=1), nn.ReLU(),
    nn.Flatten(), nn.Linear(80 * 6 * 6, 3)), lambda B: torch.randn(B, 3, 6, 6, dtype=torch.float64))


@SLOW_ON_CPU
@pytest.mark.parametrize("static", [True, False], ids=["as_if_static", "inductor_own"])
def test_dp_graphs_take_the_layout_of_a_static_batch(monkeypatch, static):
    """Inductor keeps a graph NCHW when a convolution's input has a symbolic size, and the DP graphs' batch always
    is, where non-private compile (a static batch) runs channels-last. With backend.STATIC_BATCH_LAYOUT the DP
    graphs take the layout inductor would give them at a static batch; reproduced on the CPU with mkldnn off, whose
    own rule (channels-last always) would hide the difference; on CUDA through inductor it passed too (an H200,
    2026-12-03), so the switch reaches the forward there. The convolutions' inputs reach the backward channels-last
    exactly when the switch is on, and the gradients match the reference either way, several batch sizes through one
    compile."""
    monkeypatch.setattr(sys.modules["dpcompile.backend"], "STATIC_BATCH_LAYOUT", static)
    saved = []

    def keep(t):
        if t.dim() == 4 and t.shape[1] > 1 and t.shape[2:] == (6, 6):
            saved.append(t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous())
        return t
    with torch.backends.mkldnn.flags(enabled=False):
        dp = check_against_reference(WIDE_CONVS, policy="auto", backend="inductor", batches=(3, 5, 4))
        with torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
            dp(WIDE_CONVS.inputs(4).to(DEVICE)).sum().backward()
    assert len(saved) >= 3, saved
    assert (sum(saved) >= 2) if static else not any(saved), saved


@SLOW_ON_CPU
def test_a_users_max_autotune_stays_off_the_dp_graphs(tmp_path, monkeypatch):
    """With a global max_autotune=True, inductor's GEMM choice for a ghost Gram over a view of the output gradient
    wrote the first batch size into the DP backward as a number: the next batch size failed ("Expected size for
    first two dimensions of batch2 tensor to be: [16, 128] but got: [2, 128]"). The DP graphs are lowered without it:
    four batch sizes through one compiled model (float32; float64 did not show it) give the eager backend's release.
    Its own inductor cache directory: a cached graph would hide it."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    grads = {}
    for backend in ("inductor", "eager"):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 128), nn.Tanh(), nn.Linear(128, 64)).to(DEVICE)
        with torch._inductor.config.patch(max_autotune=backend == "inductor"):
            dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=0.0, loss_reduction="sum",
                                     policy="ghost", backend=backend)
            for B in (2, 16, 1, 5):
                torch.manual_seed(B)
                x, G = torch.randn(B, 32, 64, device=DEVICE), torch.randn(B, 32, 64, device=DEVICE)
                model.zero_grad(set_to_none=True)
                (dp(x) * G).sum().backward()
                grads[backend, B] = torch.cat([p.grad.flatten() for p in model.parameters()])
    for B in (2, 16, 1, 5):
        torch.testing.assert_close(grads["inductor", B], grads["eager", B], rtol=1e-4, atol=1e-6)
