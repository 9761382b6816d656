"""The user's fp32 product settings, set with either of PyTorch's APIs (the legacy allow_tf32 flags and
set_float32_matmul_precision, or since 2.9 the per-backend fp32_precision settings): a DP model trains under each,
its backward's products run as the certified bounds assume (IEEE fp32 for cuBLAS and oneDNN), the user's settings
come back after it, and a backward run under the user's own settings (dpcompile.backend in your own torch.compile)
is refused where they would make the norms come out low."""
from __future__ import annotations

import pytest
import torch
from conftest import DEVICE
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
    """PyTorch's defaults before and after each test (set through PyTorch's setters, not the code under test)."""
    def reset():
        torch.set_float32_matmul_precision("highest")
        for key in KEYS:
            torch._C._set_fp32_precision_setter(*key, "none")
        torch.backends.cudnn.allow_tf32 = True
    reset()
    yield
    reset()


SETTINGS = {
    "legacy allow_tf32": lambda: setattr(torch.backends.cuda.matmul, "allow_tf32", True),
    "set_float32_matmul_precision('high')": lambda: torch.set_float32_matmul_precision("high"),
    "set_float32_matmul_precision('medium')": lambda: torch.set_float32_matmul_precision("medium"),
    "cuda.matmul.fp32_precision = 'tf32'": lambda: setattr(torch.backends.cuda.matmul, "fp32_precision", "tf32"),
    "backends.fp32_precision = 'tf32'": lambda: setattr(torch.backends, "fp32_precision", "tf32"),
    "mkldnn.matmul.fp32_precision = 'bf16'": lambda: setattr(torch.backends.mkldnn.matmul, "fp32_precision", "bf16"),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_a_dp_model_trains_under_any_fp32_product_setting_and_restores_it(setting, clean_settings):
    """The backward's products run IEEE (seen at the noise draw, the last step before the release); the
    settings the user made are exactly as they were afterwards. With the new API alone, reading the legacy
    allow_tf32 flag raises in PyTorch: that must not reach the user as an internal error."""
    SETTINGS[setting]()
    before = raw_settings()
    seen, release = [], PrivacyEngine.release

    def spy(self, *args):
        seen.append((precision.resolved("cuda", "matmul"), precision.resolved("mkldnn", "matmul"),
                     precision.resolved("mkldnn", "conv")))
        return release(self, *args)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(12, 2)).to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, sample_rate=0.1, backend="eager",
                             loss_reduction="sum")
    try:
        PrivacyEngine.release = spy
        dp(torch.randn(3, 2, 4, 4, device=DEVICE)).sum().backward()
    finally:
        PrivacyEngine.release = release
    assert seen == [("ieee", "ieee", "ieee")]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    assert raw_settings() == before


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
