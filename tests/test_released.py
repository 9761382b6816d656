"""dpcompile::released (passes.rewrite.FOREACH_RELEASE_DEVICES, off until its host time is measured): the released
gradients registered with inductor as one horizontally fused group, so that the finishes ((scale·clipped + noise) / n) that
stand alone after an extern kernel's clipped sum launch as a few combo kernels. The group adds no arithmetic: the
gradients are torch.func's clipped sums in float64 (both clip branches, two batch sizes through one capture) and, with
noise on, the ungrouped release's under the same seed; on CUDA the generated code launches them as `triton_for_fused`
kernels, on the CPU's C++ backend (no foreach fusion) they stay the kernels they were."""
from __future__ import annotations

import pytest
import torch
from conftest import DEVICE, SLOW_ON_CPU
from helpers import Case, check_against_reference
from rule_cases import images, seq
from torch import nn

import dpcompile
from dpcompile.passes import rewrite

# ghost convolutions (clipped sums from convolution_backward, an extern kernel), per-sample ones (reductions), a
# GroupNorm's and a linear layer's terms: finishes after externs, after reductions, and fused ones
CNN = Case("cnn_gn", seq(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2),
                         nn.ReLU(), nn.Flatten(), nn.Linear(8 * 3 * 3, 4)), images(3, 8, 8))


@pytest.fixture
def grouped(monkeypatch):
    monkeypatch.setattr(rewrite, "FOREACH_RELEASE_DEVICES", (torch.device(DEVICE).type,))


def test_off_by_default():
    assert rewrite.FOREACH_RELEASE_DEVICES == ()


def noised_grads(grouped_on: bool, policy: str, monkeypatch) -> tuple[torch.Tensor, list[str]]:
    """One noised step's gradients (seeded noise) through inductor, grouped or not, and the generated code."""
    from torch._inductor.utils import run_and_get_code
    monkeypatch.setattr(rewrite, "FOREACH_RELEASE_DEVICES", (torch.device(DEVICE).type,) if grouped_on else ())
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = CNN.model().to(DEVICE, torch.float64)
    x = CNN.inputs(5).to(DEVICE)
    dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=1.0, policy=policy, backend="inductor",
                             seed=7)
    _, codes = run_and_get_code(lambda: dp(x).square().sum().backward())
    assert ("dpcompile.released" in dp.graphs["backward_rewritten"].code) == grouped_on
    return torch.cat([p.grad.flatten() for p in model.parameters()]), codes


@SLOW_ON_CPU
@pytest.mark.parametrize("policy", ["ghost", "per_sample"])
def test_grouped_release_is_the_ungrouped_one(policy, monkeypatch, no_fx_graph_cache):
    """Noise on, one seed: the grouped release is the ungrouped one (to float64's last bits where inductor's reduction
    configs differ between the two graphs; the same bits on the CPU); on CUDA the finishes run as combo kernels."""
    on, on_codes = noised_grads(True, policy, monkeypatch)
    off, off_codes = noised_grads(False, policy, monkeypatch)
    assert (on - off).norm() <= 1e-13 * off.norm()
    combos = [any("triton_for_fused" in c for c in codes) for codes in (on_codes, off_codes)]
    assert combos == ([True, False] if DEVICE == "cuda" else [False, False])


@pytest.mark.parametrize("policy", [pytest.param("ghost", marks=SLOW_ON_CPU),
                                    pytest.param("per_sample", marks=SLOW_ON_CPU), "mixed"])
def test_grouped_release_matches_the_reference(policy, grouped, no_fx_graph_cache):
    """torch.func's clipped sums in float64 over two batch sizes through one capture, R between the samples' norms
    (both branches of the clip). On the CPU (no foreach fusion: the lowering passes its operands on) the default suite
    keeps `mixed`, which has ghost and per-sample terms; the slow tier has the other two."""
    check_against_reference(CNN, policy=policy, backend="inductor", batches=(3, 5))
