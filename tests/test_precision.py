"""The user's fp32 product settings, set with either of PyTorch's APIs (the legacy allow_tf32 flags and
set_float32_matmul_precision, or since 2.9 the per-backend fp32_precision settings): a DP model trains under each,
its backward's products run as the certified bounds assume (IEEE fp32 for cuBLAS and oneDNN), the user's settings
come back after it, and a backward run under the user's own settings (dpcompile.backend in your own torch.compile)
is refused where they would make the norms come out low."""
from __future__ import annotations

import pytest
import torch
from conftest import BACKEND as BACKEND_UNDER_TEST
from conftest import DEVICE, SLOW_ON_CPU
from helpers import shifted_convs
from torch import nn

import dpcompile
from dpcompile import ConfigError, precision
from dpcompile.privacy.engine import PrivacyEngine

pytestmark = pytest.mark.skipif(not precision.NEW_API, reason="this torch has no fp32_precision settings")
KEYS = [("generic", "all"), ("cuda", "all"), ("cuda", "matmul"), ("cuda", "conv"), ("mkldnn", "all"),
        ("mkldnn", "matmul"), ("mkldnn", "conv")]


def raw_settings() -> dict:
    """Every fp32 precision setting as PyTorch's getters return it."""
    return {key: torch._C._get_fp32_precision_getter(*key) for key in KEYS}


@pytest.fixture
def clean_settings():
    """PyTorch's defaults before and after each test."""
    pytorch_defaults()
    yield
    pytorch_defaults()


def pytorch_defaults() -> None:
    """PyTorch's default precision settings, through PyTorch's setters (not the code under test)."""
    torch.set_float32_matmul_precision("highest")
    for key in KEYS:
        torch._C._set_fp32_precision_setter(*key, "none")
    torch.backends.cudnn.allow_tf32 = True


SETTINGS = {
    "legacy allow_tf32": lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", True),
    "set_float32_matmul_precision('high')": lambda: torch.set_float32_matmul_precision("high"),
    "set_float32_matmul_precision('medium')": lambda: torch.set_float32_matmul_precision("medium"),
    "cuda.matmul.fp32_precision = 'tf32'": lambda: setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
    "backends.fp32_precision = 'tf32'": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "mkldnn.matmul.fp32_precision = 'bf16'": lambda: setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16"),
}


@pytest.mark.parametrize("tf32", [False, True])
@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_dp_model_trains_under_any_fp32_product_setting_and_restores_it(setting, tf32, clean_settings):
    """The backward's products run IEEE (seen at the noise draw, the last step before the release), also after
    TF32 products (tf32: both TF32 options; on CUDA each flips cuBLAS's setting and back); the settings the user
    made are exactly as they were afterwards. With the new API alone, reading the legacy allow_tf32 flag raises in
    PyTorch: that must not reach the user as an internal error."""
    SETTINGS[setting]()
    before = raw_settings()
    seen, release = [], PrivacyEngine.release

    def spy(self, *args):
        seen.append((precision.resolved("cuda", "matmul"), precision.resolved("mkldnn", "matmul"),
                     precision.resolved("mkldnn", "conv")))
        return release(self, *args)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2)).to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, sample_rate=0.1, backend="eager",
                             loss_reduction="sum", per_sample_tf32=tf32, ghost_tf32=tf32)
    try:
        PrivacyEngine.release = spy
        dp(torch.randn(3, 2, 4, 4, device=DEVICE)).sum().backward()
    finally:
        PrivacyEngine.release = release
    assert seen == [("ieee", "ieee", "ieee")]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert raw_settings() == before
    assert any(r.impl.endswith("TF32") for r in dp.explain().rows) == tf32


def test_onednn_reduced_products_do_not_change_the_dp_gradients(clean_settings):
    """set_float32_matmul_precision('medium') lets oneDNN multiply fp32 matrices through bf16 on CPUs that have
    it (this machine's products differ under it): the DP gradients are those of IEEE products, bit for bit.
    Inputs just off bf16's grid, so that rounding them shows."""
    torch.manual_seed(0)
    x = 1 + 0.99 * 2.0**-8 * torch.rand(8, 6, 40)
    model = nn.Linear(40, 3)  # a loss linear in the output: the forward's products do not reach the backward

    def grads():
        m = nn.Linear(40, 3)
        m.load_state_dict(model.state_dict())
        dp = dpcompile.dpcompile(m, max_grad_norm=1e-3, noise_multiplier=0.0, backend="eager", policy="ghost")
        dp(x).sum().backward()
        return [p.grad.clone() for p in m.parameters()]
    ieee = grads()
    torch.set_float32_matmul_precision("medium")
    assert all(torch.equal(a, b) for a, b in zip(ieee, grads()))


@pytest.mark.parametrize("setting", ["set_float32_matmul_precision('medium')", "backends.fp32_precision = 'tf32'",
                                     "mkldnn.matmul.fp32_precision = 'bf16'"])
def test_release_under_the_users_reduced_cpu_products_is_refused(setting, clean_settings):
    """Your own torch.compile with dpcompile.backend runs its backward under your settings: released on CPU under
    oneDNN's bf16 or TF32 fp32 products, it is refused and nothing is counted."""
    engine = dpcompile.backend(max_grad_norm=1.0, noise_multiplier=1.0).privacy
    SETTINGS[setting]()
    with pytest.raises(ConfigError, match="oneDNN"):
        engine.release(10, torch.float32, torch.device("cpu"), torch.zeros(()))
    assert engine.steps == 0


@pytest.mark.parametrize("setting", ["cuda.matmul.fp32_precision = 'tf32'", "backends.fp32_precision = 'tf32'",
                                     "set_float32_matmul_precision('high')"])
def test_release_under_the_users_tf32_is_refused_whichever_api_set_it(setting, clean_settings):
    """As test_gpu_paths' legacy-flag case, for TF32 asked for through the new settings (a CUDA device: the
    check reads the settings, no GPU needed)."""
    engine = dpcompile.backend(max_grad_norm=1.0, noise_multiplier=1.0).privacy
    SETTINGS[setting]()
    with pytest.raises(ConfigError, match="TF32"):
        engine.release(10, torch.float32, torch.device("cuda"), torch.zeros(()))
    assert engine.steps == 0


@pytest.mark.skipif(DEVICE != "cuda", reason="cuDNN")
@pytest.mark.parametrize("setting", ["backends.fp32_precision = 'tf32'", "legacy allow_tf32"])
def test_per_sample_convolution_op_is_ieee_under_any_tf32_setting(setting, clean_settings):
    """The per-sample convolution op's legacy `cudnn.flags(allow_tf32=False)` alone leaves the new conv setting
    "none", which defers to torch.backends.fp32_precision = 'tf32': its products would be TF32 under IEEE
    bounds. Inputs off TF32's grid: TF32 errs by ~2^-11 of each value, IEEE by ~2^-24·T."""
    from dpcompile.ops import per_sample_conv_weight_grad
    torch.manual_seed(0)
    g = 1 + 2.0**-12 * torch.rand(4, 3, 8, 8, device="cuda")
    x = 1 + 2.0**-12 * torch.rand(4, 2, 10, 10, device="cuda")
    exact = per_sample_conv_weight_grad(g.double(), x.double(), [3, 2, 3, 3], [1, 1], [0, 0], [1, 1], 1)
    SETTINGS[setting]()
    out = per_sample_conv_weight_grad(g, x, [3, 2, 3, 3], [1, 1], [0, 0], [1, 1], 1)
    assert ((out.double() - exact).abs() / exact.abs()).max() < 64 * 2.0**-24


# --- per-sample gradients as TF32 products (DPConfig.per_sample_tf32) ---

def conv_linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).to(DEVICE)


def off_tf32_grid(*shape, seed: int = 1) -> torch.Tensor:
    """Values just below a TF32 rounding step (1 + (2^-10 − 2^-23)·k): truncating them to TF32 moves each by
    almost its whole 2^-10 step, as far as TF32 can move a value."""
    torch.manual_seed(seed)
    return (1 + (2.0**-10 - 2.0**-23) * torch.randint(0, 2, shape)).to(DEVICE) * torch.randn(shape).sign().to(DEVICE)


def dp_grads(model, x, *, tf32, backend, bound=1.0, policy="per_sample"):
    """(DP model, its released gradient) for a summed squared output; tf32 is per_sample_tf32 under the per-sample
    policy, ghost_tf32 under the ghost one."""
    option = "ghost_tf32" if policy == "ghost" else "per_sample_tf32"
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, loss_reduction="sum", policy=policy,
                             backend=backend, **{option: tf32})
    dp(x).square().sum().backward()
    return dp, torch.cat([p.grad.flatten() for p in model.parameters()]).double()


@pytest.mark.parametrize("backend, impl", [("eager", "unfold"), ("eager", "shifted"),
                                           pytest.param("inductor", "shifted", marks=SLOW_ON_CPU)])
def test_tf32_per_sample_gradients_are_clipped_by_their_own_norm(backend, impl):
    """With TF32 products the released per-sample gradient is TF32's ĝ, not the exact g: its clip factor comes from
    ‖ĝ‖, so a one-sample batch's released gradient has norm ≤ R however far TF32 moved it (crafted inputs at the
    worst of TF32's truncation, unclipped and clipped). The same with IEEE products for comparison; both differ
    by TF32's rounding (the TF32 path ran: on CPU the operands are truncated to TF32). Three crafted inputs
    eagerly, one through inductor (its lowering of the same op; each input is 4 compilations); the first also with
    the TF32 options at their default."""
    for bound in (1e6, 1e-2):
        for i in range(3 if backend == "eager" else 1):
            x = off_tf32_grid(1, 3, 8, 8, seed=i) * 10
            with shifted_convs(impl == "shifted"):
                dp, tf32 = dp_grads(conv_linear(), x, tf32=True, backend=backend, bound=bound)
                _, ieee = dp_grads(conv_linear(), x, tf32=False, backend=backend, bound=bound)
            assert {r.method for r in dp.explain().rows} == {"per_sample"}
            assert sorted(r.impl for r in dp.explain().rows) == ["", "", "", f"{impl}, TF32"]
            assert tf32.norm() <= bound * (1 + 1e-6)
            assert 0 < (tf32 - ieee).norm() <= 2.0**-8 * ieee.norm()
            if i == 0:  # the default (None): TF32 for the convolution on CUDA, as cuDNN's own; IEEE on a CPU
                with shifted_convs(impl == "shifted"):
                    dp, default = dp_grads(conv_linear(), x, tf32=None, backend=backend, bound=bound)
                expected = f"{impl}, TF32" if DEVICE == "cuda" else impl
                assert sorted(r.impl for r in dp.explain().rows) == sorted(["", "", "", expected])
                assert default.norm() <= bound * (1 + 1e-6)


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
def test_grouped_tf32_per_sample_gradients_are_clipped_by_their_own_norm(backend, monkeypatch):
    """The grouped form on cuDNN's TF32 (conv.GROUPED_TF32_CONV_DEVICES, turned on here): the plan takes it for a TF32
    per-sample term (32 input channels, 16² positions), the rewritten backward holds the grouped op, each one-sample
    release stays within R (crafted inputs at the worst of TF32's truncation, clipped and not), the released
    gradients are within TF32's rounding of the IEEE path's (on a CPU the op's products are IEEE), batches of 3 and
    2 through one compiled model."""
    from dpcompile.passes.rules import conv
    monkeypatch.setattr(conv, "GROUPED_TF32_CONV_DEVICES", (torch.device(DEVICE).type,))

    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(32, 4, 3, padding=1), nn.Flatten(), nn.Linear(4 * 16 * 16, 3)).to(DEVICE)
    grouped_op = torch.ops.dpcompile.per_sample_conv_weight_grad.default
    for bound in (1e6, 1e-2):
        x = off_tf32_grid(1, 32, 16, 16) * 10
        dp, tf32 = dp_grads(model(), x, tf32=True, backend=backend, bound=bound)
        _, ieee = dp_grads(model(), x, tf32=False, backend=backend, bound=bound)
        assert sorted(r.impl for r in dp.explain().rows) == ["", "", "", "grouped, TF32"]
        assert any(n.target is grouped_op for n in dp.graphs["backward_rewritten"].graph.nodes)
        assert tf32.norm() <= bound * (1 + 1e-6)
        assert (tf32 - ieee).norm() <= 2.0**-8 * ieee.norm()
    tf32_against_ieee_through_one_model(model, (32, 16, 16), (3, 2), backend)


def test_grouped_op_with_tf32_asked_matches_torch_func_in_float64():
    """The grouped op with its tf32 argument set, on float64 operands (which no TF32 setting touches): each sample's
    weight gradient against torch.func's (vmap of grad) to 1e-12, stride 1, padded, 3 samples."""
    from torch.func import grad, vmap

    from dpcompile.ops import per_sample_conv_weight_grad
    torch.manual_seed(0)
    x, w = torch.randn(3, 4, 9, 9, dtype=torch.float64), torch.randn(5, 4, 3, 3, dtype=torch.float64)
    g = torch.randn(3, 5, 9, 9, dtype=torch.float64)

    def sample_loss(w, xi, gi):
        return (torch.nn.functional.conv2d(xi[None], w, padding=1)[0] * gi).sum()
    want = vmap(grad(sample_loss), in_dims=(None, 0, 0))(w, x, g)
    got = per_sample_conv_weight_grad(g, x, [5, 4, 3, 3], [1, 1], [1, 1], [1, 1], 1, True)
    assert ((got - want).abs().max() / want.abs().max()) < 1e-12


def test_grouped_tf32_form_never_for_a_shared_convolution(monkeypatch):
    """A convolution applied twice is a shared parameter: its uses' per-sample gradients are bounded against their
    exact sum with IEEE margins (a GEMM's), which cuDNN's grouped algorithms (FFT, Winograd) do not satisfy, so it
    never takes the grouped form, even with the form switched on and TF32 asked for; its release stays within R."""
    from dpcompile.passes.rules import conv
    monkeypatch.setattr(conv, "GROUPED_TF32_CONV_DEVICES", (torch.device(DEVICE).type,))

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv, self.head = nn.Conv2d(32, 32, 3, padding=1), nn.Linear(32 * 16 * 16, 3)

        def forward(self, x):
            return self.head(self.conv(torch.relu(self.conv(x))).flatten(1))
    x = off_tf32_grid(1, 32, 16, 16) * 10
    dp, released = dp_grads(Twice().to(DEVICE), x, tf32=True, backend="eager", bound=1e-2)
    impls = [r.impl for r in dp.explain().rows]
    assert impls and not any("grouped" in impl for impl in impls), impls
    assert released.norm() <= 1e-2 * (1 + 1e-6)


@pytest.mark.parametrize("batch", [2, 5])
def test_tf32_per_sample_gradients_through_one_compiled_model(batch):
    """Several batch sizes through one compiled model: the clipped sum of the TF32 per-sample gradients (each
    within TF32's rounding of the exact one) against the IEEE path's, and every sample within R on its own."""
    with shifted_convs():  # read at each capture
        tf32_against_ieee_through_one_model(conv_linear, (3, 8, 8), (3, batch), BACKEND_UNDER_TEST)


def tf32_against_ieee_through_one_model(make_model, sample_shape, batches, backend, bound=0.05):
    """Batches of the given sizes through one compiled model with TF32 per-sample products and one without: the
    clipped sums (each sample's TF32 gradient within TF32's rounding of the exact one) agree to 2⁻⁸, and the TF32
    release is within R per sample (loss_reduction="sum", so b·R for a batch of b)."""
    model, ieee_model = make_model(), make_model()
    nets = [(dpcompile.dpcompile(m, max_grad_norm=bound, noise_multiplier=0.0, loss_reduction="sum",
                                 policy="per_sample", per_sample_tf32=tf32, backend=backend), m)
            for m, tf32 in ((model, True), (ieee_model, False))]
    for b in batches:
        x = off_tf32_grid(b, *sample_shape, seed=b)
        for net, m in nets:
            m.zero_grad()
            net(x).square().sum().backward()
        got = torch.cat([p.grad.flatten() for p in model.parameters()]).double()
        want = torch.cat([p.grad.flatten() for p in ieee_model.parameters()]).double()
        assert (got - want).norm() <= 2.0**-8 * want.norm()
        assert got.norm() <= bound * b * (1 + 1e-6)


@pytest.mark.parametrize("option", ["per_sample_tf32", "ghost_tf32"])
def test_tf32_products_are_asked_for_with_a_bool_or_none(option):
    """None by default (as PyTorch's settings have each kind of product); True, False or None only."""
    assert getattr(dpcompile.DPConfig(max_grad_norm=1.0, noise_multiplier=0.0), option) is None
    for value in (True, False, None):
        assert getattr(dpcompile.DPConfig(max_grad_norm=1.0, noise_multiplier=0.0, **{option: value}), option) is value
    with pytest.raises(ConfigError, match=option):
        dpcompile.dpcompile(nn.Linear(2, 2), max_grad_norm=1.0, noise_multiplier=0.0, **{option: "yes"})


def test_tf32_by_default_where_pytorch_puts_that_kind_of_product_on_tf32(clean_settings):
    """By default the DP products of a kind (cuDNN's convolutions, cuBLAS's matmuls) run on TF32 on CUDA exactly
    when PyTorch's settings run the model's own products of that kind on TF32: convolutions by PyTorch's default,
    matmuls after set_float32_matmul_precision('high') or the like (either API); neither elsewhere (a CPU's TF32 is
    emulated). True and False set both kinds. The settings are read, not changed (no GPU needed to read them)."""
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    both = {"matmul", "conv"}
    assert precision.tf32_kinds(None, cuda) == {"conv"}  # PyTorch's defaults
    assert precision.tf32_kinds(None, cpu) == set()
    assert precision.tf32_kinds(True, cpu) == both and precision.tf32_kinds(False, cuda) == set()
    for setting in ("legacy allow_tf32", "set_float32_matmul_precision('high')", "backends.fp32_precision = 'tf32'"):
        SETTINGS[setting]()
        assert precision.tf32_kinds(None, cuda) == both, setting
        assert precision.tf32_kinds(None, cpu) == set() and precision.tf32_kinds(False, cuda) == set(), setting
        pytorch_defaults()
    torch.backends.cudnn.allow_tf32 = False
    assert precision.tf32_kinds(None, cuda) == set()
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.conv.fp32_precision = "ieee"
    assert precision.tf32_kinds(None, cuda) == set()


@pytest.mark.parametrize("matmul", ["highest", "high"])
@pytest.mark.parametrize("policy", ["ghost", "per_sample"])
def test_the_plan_puts_on_tf32_what_pytorch_does_by_default(policy, matmul, clean_settings):
    """A DP model with the TF32 options left at None: on CUDA its convolution's terms are TF32 products (cuDNN's
    default), its linear layer's only under set_float32_matmul_precision('high') (a ghost term: the linear layer's
    per-sample gradient is an outer product, T = 1, never TF32); on a CPU none. Read when the model is captured:
    the plan is what explain() reports."""
    torch.set_float32_matmul_precision(matmul)
    dp = dpcompile.dpcompile(conv_linear(), max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum",
                             policy=policy, backend=BACKEND_UNDER_TEST)
    dp(torch.randn(3, 3, 8, 8, device=DEVICE)).square().sum().backward()
    tf32 = sorted(r.param for r in dp.explain().rows if "TF32" in r.impl)
    expected = ["0.weight"] + (["3.weight"] if matmul == "high" and policy == "ghost" else [])
    assert tf32 == (expected if DEVICE == "cuda" else [])


@pytest.mark.skipif(DEVICE != "cuda", reason="TF32 tensor cores")
def test_tf32_per_sample_products_on_cuda(clean_settings):
    """On CUDA the per-sample products run on TF32 tensor cores (cuBLAS with TF32 allowed for the op, inside a
    backward that otherwise runs IEEE), under either precision API; a one-sample batch stays within R."""
    for setting in ("legacy allow_tf32", "backends.fp32_precision = 'tf32'"):
        x = off_tf32_grid(1, 3, 8, 8) * 10
        _, ieee = dp_grads(conv_linear(), x, tf32=False, backend=BACKEND_UNDER_TEST, bound=1e6)
        SETTINGS[setting]()
        for impl in ("unfold", "shifted"):
            with shifted_convs(impl == "shifted"):
                dp, tf32 = dp_grads(conv_linear(), x, tf32=True, backend=BACKEND_UNDER_TEST, bound=1e-2)
                _, unclipped = dp_grads(conv_linear(), x, tf32=True, backend=BACKEND_UNDER_TEST, bound=1e6)
            assert sorted(r.impl for r in dp.explain().rows) == ["", "", "", f"{impl}, TF32"]
            assert tf32.norm() <= 1e-2 * (1 + 1e-6)
            assert 0 < (unclipped - ieee).norm() <= 2.0**-8 * ieee.norm()


@pytest.mark.skipif(DEVICE != "cuda", reason="cuBLAS")
def test_tf32_product_op_puts_cublas_setting_back(clean_settings):
    """dpcompile::tf32_bmm turns cuBLAS's TF32 on for its own product only: the setting is as before after it,
    on or off, and the product is TF32's (further from float64 than the IEEE product)."""
    a = torch.randn(4, 64, 256, device="cuda")
    exact = torch.bmm(a.double(), a.double().transpose(1, 2))
    for before in (False, True):
        torch._C._set_cublas_allow_tf32(before)
        got = torch.ops.dpcompile.tf32_bmm(a, a.transpose(1, 2))
        assert torch._C._get_cublas_allow_tf32() is before
        torch._C._set_cublas_allow_tf32(False)
        ieee = torch.bmm(a, a.transpose(1, 2))
        assert (got.double() - exact).abs().max() > 8 * (ieee.double() - exact).abs().max()


@pytest.mark.inductor
def test_tf32_products_take_the_operand_views_that_bmm_takes():
    """The TF32 op stands in for bmm one for one: inductor passes it the windows of the padded input (stride 1: one
    product per kernel row) or the unfolded input (stride 2), and the (stacked) output gradient, as the same views
    (sizes and strides of the same kind of buffer) that it passes bmm, so no copy of an operand comes first. (Kernel counts are no test of this: how inductor groups the pointwise work around the op
    differs between torch versions, 7 against 6 CPU kernels on torch 2.11, 25 against 28 CUDA launches.)
    Convolutions only: a T = 1 linear layer's outer product stays pointwise."""
    import re

    from torch._inductor.utils import run_and_get_code

    def products(tf32: bool) -> list[tuple[str, list[str]]]:
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1, stride=2)).to(DEVICE)
        dp = dpcompile.dpcompile(m, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", policy="per_sample",
                                 per_sample_tf32=tf32, backend="inductor")
        x = torch.randn(4, 3, 8, 8, device=DEVICE)
        with shifted_convs():  # the first conv (stride 1) over shifted windows: 3 products; the second unfolds: 1
            _, codes = run_and_get_code(lambda: dp(x).square().sum().backward())
        body = codes[-1][codes[-1].index("def call("):]
        calls = re.findall(r"^\s+(?:\w+ = )?(extern_kernels\.bmm|torch\.ops\.dpcompile\.tf32_bmm\.default)\((.*)\)$",
                           body, re.M)
        # each operand as reinterpret_tensor(buffer, sizes, strides, offset), the buffer's name left out
        return [(op, re.findall(r"reinterpret_tensor\(\w+, (\([^)]*\), \([^)]*\), \d+)\)", args)) for op, args in calls]
    ieee, tf32 = products(False), products(True)
    assert [op for op, _ in ieee] == ["extern_kernels.bmm"] * 4
    assert [op for op, _ in tf32] == ["torch.ops.dpcompile.tf32_bmm.default"] * 4
    assert sorted(views for _, views in tf32) == sorted(views for _, views in ieee)
    assert all(len(views) == 2 for _, views in tf32)


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
def test_tf32_per_sample_matmul_gradients_over_positions(backend):
    """Linear layers over T = 6 positions (a sequence model's): their per-sample gradients are TF32 products too,
    within R for a one-sample batch at the worst of TF32's truncation, and within TF32's rounding of the IEEE ones."""
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4)).to(DEVICE)
    x = off_tf32_grid(1, 6, 16) * 3
    dp, tf32 = dp_grads(model(), x, tf32=True, backend=backend, bound=1e-3)
    assert sorted(r.impl for r in dp.explain().rows) == ["", "", "TF32", "TF32"]
    assert tf32.norm() <= 1e-3 * (1 + 1e-6)
    _, unclipped = dp_grads(model(), x, tf32=True, backend=backend, bound=1e6)
    _, ieee = dp_grads(model(), x, tf32=False, backend=backend, bound=1e6)
    assert 0 < (unclipped - ieee).norm() <= 2.0**-8 * ieee.norm()


@pytest.mark.skipif(not hasattr(torch.backends.cuda.matmul, "allow_fp16_accumulation"), reason="torch < 2.7")
def test_fp16_accumulation_is_off_in_the_dp_backward_and_refused_under_your_own_compile():
    """torch.backends.cuda.matmul.allow_fp16_accumulation makes cuBLAS add fp16 products in fp16; the bounds assume
    fp32 accumulation (fp16 parameters are accepted). The DP model's backward turns it off and puts it back; a
    backward with half-precision products released under it (your own torch.compile) is refused on CUDA."""
    flags = torch.backends.cuda.matmul
    seen, release = [], PrivacyEngine.release

    def spy(self, *args):
        seen.append(flags.allow_fp16_accumulation)
        return release(self, *args)
    saved = flags.allow_fp16_accumulation
    try:
        flags.allow_fp16_accumulation = True
        PrivacyEngine.release = spy
        model = nn.Linear(4, 2).to(DEVICE).half()
        dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", backend="eager")
        dp(torch.randn(3, 5, 4, device=DEVICE).half()).float().sum().backward()
        assert seen == [False] and flags.allow_fp16_accumulation
        PrivacyEngine.release = release
        engine = dpcompile.backend(max_grad_norm=1.0, noise_multiplier=1.0).privacy
        engine.half_products = True
        for name in ("allow_bf16_reduced_precision_reduction", "allow_fp16_reduced_precision_reduction"):
            setattr(flags, name, False)
        with pytest.raises(ConfigError, match="allow_fp16_accumulation"):
            engine.release(10, torch.float32, torch.device("cuda"), torch.zeros(()))
        assert engine.steps == 0
    finally:
        PrivacyEngine.release = release
        flags.allow_fp16_accumulation = saved
        flags.allow_bf16_reduced_precision_reduction = flags.allow_fp16_reduced_precision_reduction = True


@pytest.mark.parametrize("option", ["per_sample_tf32", "ghost_tf32"])
@pytest.mark.parametrize("kind", ["conv", "sequence"])
def test_tf32_products_against_torch_func(kind, option):
    """Against the torch.func reference in float64 (vmap of grad, clipped, summed) on the same parameters and
    inputs: an fp32 model with TF32 per-sample products (per-sample method) or TF32 clipped sums (ghost method),
    batch sizes 3 and 5 through one compiled model, R between the samples' norms (both clip branches). The
    differences are TF32's rounding (~3·10⁻⁴ of a gradient's norm) and fp32's: within 2⁻⁸. With ghost terms also
    the TF32 margin in N_i, (2⁻⁹ + γ)·M_i, which clips a clipped sample ~1% harder on this data (M_i/‖g_i‖·2⁻⁹);
    as samples' gradients partly cancel in the sum, that is measured per parameter against Σ_i C_i‖g_i‖, within
    2⁻⁵."""
    import copy

    import torch.nn.functional as F
    from helpers import max_relative_error
    from reference import dp_reference, per_sample_grads

    torch.manual_seed(0)
    if kind == "conv":
        model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 4 * 4, 3))
        shape, out_shape = (3, 8, 8), (3,)
    else:
        model = nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 4))
        shape, out_shape = (6, 16), (6, 4)
    model = model.to(DEVICE, torch.float32)
    model64 = copy.deepcopy(model).double()
    batches = {b: (torch.randn(b, *shape, device=DEVICE), torch.randn(b, *out_shape, device=DEVICE)) for b in (3, 5)}
    x3, y3 = (t.double() for t in batches[3])
    norms = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in per_sample_grads(model64, x3, y3, F.mse_loss).values()))
    bound = norms.median().item()
    assert (norms > bound).any() and (norms < bound).any()
    policy = "per_sample" if option == "per_sample_tf32" else "ghost"
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, loss_reduction="sum", policy=policy,
                             backend=BACKEND_UNDER_TEST, **{option: True})
    for x, y in batches.values():
        model.zero_grad(set_to_none=True)
        F.mse_loss(dp(x), y, reduction="sum").backward()
        ref, [norms] = dp_reference(model64, x.double(), y.double(), bound, "sum", loss=F.mse_loss)
        if policy == "per_sample":
            assert max_relative_error(model, {k: v.float() for k, v in ref.items()}) < 2.0**-8
            continue
        clip = (bound / (norms + 1e-6)).clamp(max=1.0)
        g = per_sample_grads(model64, x.double(), y.double(), F.mse_loss)
        for name, param in model.named_parameters():
            spread = (clip * g[name].flatten(1).norm(dim=1)).sum()
            assert (param.grad.double() - ref[name]).norm() <= 2.0**-5 * spread, name
    assert sum("TF32" in r.impl for r in dp.explain().rows) == (2 if policy == "per_sample" or kind == "sequence" else 3)


def test_shared_parameters_keep_ieee_products():
    """A parameter used twice is bounded against the exact sum of its uses' per-sample gradients, so its uses stay
    IEEE under per_sample_tf32=True and ghost_tf32=True; the unshared layer beside it goes TF32."""
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.shared, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

        def forward(self, x):
            return self.head(torch.tanh(self.shared(torch.tanh(self.shared(x)))))
    for policy, option in (("per_sample", "per_sample_tf32"), ("ghost", "ghost_tf32")):
        dp = dpcompile.dpcompile(Twice().to(DEVICE), max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum",
                                 policy=policy, backend=BACKEND_UNDER_TEST, **{option: True})
        dp(torch.randn(4, 6, 8, device=DEVICE)).sum().backward()
        rows = {(r.param, r.method, r.impl) for r in dp.explain().rows}
        assert ("head.weight", policy, "TF32") in rows
        assert not any(p.startswith("shared") and "TF32" in impl for p, _, impl in rows)


# --- ghost terms' clipped sums as TF32 products (DPConfig.ghost_tf32) ---

def truncation_attack(kind: str) -> tuple[nn.Module, torch.Tensor]:
    """A one-sample batch whose gradient TF32 truncation makes longer: two positions whose gradients nearly cancel,
    x_1 = (2, 0) (on TF32's grid) and x_2 = (−(1 + 2⁻¹⁰ − 2⁻²³), 0) (just below a step), with output gradients
    (1, 1) (a summed loss; two features each way, as a 1-wide product is no matmul). Exact: g = (1, 1)ᵀ(1 − 2⁻¹⁰ +
    2⁻²³, 0); truncated to TF32, x_2's −1 − 2⁻¹⁰ + 2⁻²³ becomes −1 and ‖ĝ‖ = √2, longer by about 2⁻¹⁰: a thousand
    times an IEEE clipped sum's margin (γ·M, M = 3√2)."""
    x = torch.zeros(2, 2, device=DEVICE)
    x[:, 0] = torch.tensor([2.0, -(1 + 2.0**-10 - 2.0**-23)])
    if kind == "linear":  # (B, T, features): T = 2 positions
        return nn.Linear(2, 2, bias=False).to(DEVICE), x.view(1, 2, 2)
    return nn.Conv2d(2, 2, 1, bias=False).to(DEVICE), x.t().reshape(1, 2, 1, 2)  # 1x1 convolution, 1 x 2 image


@pytest.mark.parametrize("backend", ["eager", pytest.param("inductor", marks=SLOW_ON_CPU)])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_ghost_tf32_clipped_sum_keeps_a_crafted_sample_within_R(kind, backend):
    """With ghost_tf32=True a ghost term's clipped sum is a TF32 product, and the released gradient is TF32's
    ĝ, not the exact g the Gram form bounds. The term's margin adds TF32's truncation, (2⁻⁹ + γ)·M_i, so a
    one-sample batch stays within R on an input crafted so that truncation lengthens ĝ by ~2⁻¹⁰ (on CPU the operands
    are truncated, the worst case, and the test checks that the attack does lengthen ĝ: without the TF32 margin it
    would release ≈ R·(1 + 2⁻¹⁰)). The same clip with IEEE clipped sums stays within R too, and so does the default
    (None: TF32 for the convolution on CUDA, as cuDNN's own, IEEE elsewhere)."""
    exact = 2**0.5 * (1 - 2.0**-10 + 2.0**-23)
    for bound in (1e6, 0.5):
        for tf32 in (True, False, None):
            on = tf32 or (tf32 is None and DEVICE == "cuda" and kind == "conv")
            model, x = truncation_attack(kind)
            dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, loss_reduction="sum",
                                     policy="ghost", ghost_tf32=tf32, backend=backend)
            dp(x).sum().backward()
            released = model.weight.grad.double().norm().item()
            assert [r.impl for r in dp.explain().rows] == ["TF32" if on else ""]
            if bound == 0.5:
                assert released <= bound * (1 + 1e-6)
            elif on and DEVICE == "cpu":  # unclipped: ĝ itself, longer than g by TF32's truncation
                assert released == pytest.approx(2**0.5, rel=1e-7) and released > exact * (1 + 2.0**-11)
            else:
                assert abs(released - exact) <= 2.0**-9


@pytest.mark.skipif(DEVICE != "cuda", reason="TF32 tensor cores")
def test_ghost_tf32_clipped_sums_on_cuda():
    """On CUDA the ghost terms' clipped sums run on TF32 tensor cores (the unclipped result differs from the IEEE
    one, by no more than TF32's rounding), and a one-sample batch on inputs at the worst of TF32's truncation stays
    within R."""
    for seed in range(3):
        x = off_tf32_grid(1, 3, 8, 8, seed=seed) * 10
        _, ieee = dp_grads(conv_linear(), x, tf32=False, backend=BACKEND_UNDER_TEST, bound=1e6, policy="ghost")
        dp, tf32 = dp_grads(conv_linear(), x, tf32=True, backend=BACKEND_UNDER_TEST, bound=1e6, policy="ghost")
        assert sorted(r.impl for r in dp.explain().rows) == ["", "", "TF32", "TF32"]
        assert 0 < (tf32 - ieee).norm() <= 2.0**-8 * ieee.norm()
        _, clipped = dp_grads(conv_linear(), x, tf32=True, backend=BACKEND_UNDER_TEST, bound=1e-2, policy="ghost")
        assert clipped.norm() <= 1e-2 * (1 + 1e-6)


@pytest.mark.parametrize("name", ["conv2d_dilation_groups", "conv_transposed2d", "conv3d", "conv1d", "linear_3d"])
def test_ghost_tf32_over_convolution_and_matmul_variants(name):
    """The TF32 clipped sum over the layouts the rules handle (grouped and dilated, transposed, 1-D and 3-D
    convolutions, a matmul over 3-D rows): the unclipped result within TF32's rounding of the IEEE one (and, on the
    CPU's emulation, not equal to it), and a one-sample batch within R. With TF32 allowed, cuBLAS may still run a
    small product on an IEEE kernel, whose error the TF32 margin also bounds."""
    from rule_cases import CASES
    [case] = [c for cs in CASES.values() for c in cs if c.name == name]
    torch.manual_seed(0)
    state = case.model().float().state_dict()
    for batch, bound in ((3, 1e6), (1, 1e-3)):
        x = case.inputs(batch).float().to(DEVICE)
        grads = {}
        for tf32 in (False, True):
            model = case.model().float().to(DEVICE)
            model.load_state_dict(state)
            dp, grads[tf32] = dp_grads(model, x, tf32=tf32, backend=BACKEND_UNDER_TEST, bound=bound, policy="ghost")
        assert any("TF32" in r.impl for r in dp.explain().rows)
        if batch == 1:
            assert grads[True].norm() <= bound * (1 + 1e-6)
            continue
        assert (grads[True] - grads[False]).norm() <= 2.0**-8 * grads[False].norm()
        if DEVICE == "cpu":  # the emulation always truncates; cuBLAS may pick an IEEE kernel for a small product
            assert (grads[True] - grads[False]).norm() > 0  # (conv2d_dilation_groups on an H200)


@pytest.mark.parametrize("cap, method", [(0.05, "ghost"), (100.0, "per_sample")])
def test_tf32_options_reach_the_sites_auto_moves_back_to_ghost(cap, method):
    """auto's memory cap turns a per-sample site back to ghost clipping after the plan chose; the site's TF32 flag
    then follows ghost_tf32, not per_sample_tf32 (it kept the per-sample choice's flag before). A 1024 × 1024 linear
    layer over 512 tokens: auto instantiates it unless capped (test_core's cap test), in fp32 with both options
    on. A one-sample batch stays within R either way."""
    for ghost_tf32 in (True, False):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(1024, 1024), nn.Tanh(), nn.Linear(1024, 2)).to(DEVICE)
        dp = dpcompile.dpcompile(model, max_grad_norm=1e-3, noise_multiplier=0.0, loss_reduction="sum",
                                 policy="auto", backend=BACKEND_UNDER_TEST, per_sample_tf32=True, ghost_tf32=ghost_tf32,
                                 auto_extra_memory=cap)
        dp(torch.randn(1, 512, 1024, device=DEVICE)).square().sum().backward()
        row = next(r for r in dp.explain().rows if r.param == "0.weight")
        assert row.method == method, row
        assert ("TF32" in row.impl) == (ghost_tf32 or method == "per_sample"), row
        assert torch.cat([p.grad.flatten() for p in model.parameters()]).norm() <= 1e-3 * (1 + 1e-6)
