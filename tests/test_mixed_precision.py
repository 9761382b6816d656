"""bf16 autocast: dpcompile's gradient differs from its fp32 run by about what bf16 itself costs a
non-private gradient of the same model (norms accumulated in fp32 and certified; clipped sums in bf16)."""
import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND, DEVICE
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
