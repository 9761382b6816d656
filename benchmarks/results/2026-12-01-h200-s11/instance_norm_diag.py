"""test_norm_layers' failing example on CUDA (diagnostics.txt). From the repo root on a GPU machine:
    python3 benchmarks/results/2026-12-01-h200-s11/instance_norm_diag.py plain|7first|3first"""
import sys
sys.path.insert(0, "tests")
import torch
from torch import nn
import helpers
from helpers import Case, batch_for, clip_bound_between, squared_error
from reference import dp_reference
import dpcompile
helpers.DEVICE = "cuda"
mk = lambda: nn.Sequential(nn.Conv1d(3, 2, 1), nn.InstanceNorm1d(2, affine=True))
case = Case("instance", mk, lambda B: torch.randn(B, 3, 3, dtype=torch.float64))
mode = sys.argv[1]
torch.manual_seed(0)
model = mk().to("cuda", torch.float64)
x0, y0 = batch_for(case, model, 3, seed=1)
x7, y7 = batch_for(case, model, 7, seed=11)
def grads(fn, x, y):
    model.zero_grad(set_to_none=True); squared_error(fn(x), y).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])
if mode == "plain":
    ref = grads(model, x7, y7)
    for dyn in (False, True):
        torch._dynamo.reset()
        c = torch.compile(model, dynamic=dyn)
        grads(c, x0, y0)
        g = grads(c, x7, y7)
        print("plain compile dynamic=%s B=7: max|g-eager| = %.3g (max|g| %.3g)" % (dyn, (g - ref).abs().max(), ref.abs().max()))
    # instance norm forward only, dynamic
    torch._dynamo.reset()
    f = torch.compile(lambda x: torch.nn.functional.instance_norm(x, eps=1e-5), dynamic=True)
    f(torch.randn(3, 2, 3, dtype=torch.float64, device="cuda"))
    z = model[0](x7).detach()
    print("instance_norm fwd dynamic: max err %.3g" % (f(z) - torch.nn.functional.instance_norm(z, eps=1e-5)).abs().max())
else:
    order = [(x7, y7), (x0, y0)] if mode == "7first" else [(x0, y0), (x7, y7)]
    bound = clip_bound_between(model, case, x0, y0)
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, policy="mixed", backend="inductor")
    for x, y in order:
        model.zero_grad(set_to_none=True); squared_error(dp(x), y).backward()
        ref, _ = dp_reference(model, x, y, bound, "mean", None, loss=squared_error)
        print(mode, "B=%d" % len(x), "max_rel=%.3g" % helpers.max_relative_error(model, ref), "compilations", dp.compilations)
