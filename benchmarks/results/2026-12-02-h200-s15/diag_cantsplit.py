"""Which graph inductor cannot compile on CUDA (CantSplit) for the shifted per-sample conv products: the traceback."""
import sys, traceback, warnings
sys.path.insert(0, "tests")
import torch
from torch import nn
import dpcompile
from dpcompile.passes import plan
plan.SHIFTED_CONV_MIN_POSITIONS = plan.SHIFTED_CONV_MIN_CHANNELS = 1
from torch._inductor.exc import InductorError
import dpcompile.backend as be
import os
DEV = os.environ.get("DEV", "cuda")
for tf32 in (False, True):
    for B in (1, 3):
        torch._dynamo.reset()
        torch.manual_seed(0)
        m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).to(DEV)
        dp = dpcompile.dpcompile(m, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", policy="per_sample",
                                 per_sample_tf32=tf32, backend="inductor")
        x = torch.randn(B, 3, 8, 8, device=DEV)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            dp(x).square().sum().backward()
        msgs = [str(x.message)[:300] for x in w if "inductor could not" in str(x.message)]
        print(f"tf32={tf32} B={B}: {'FALLBACK ' + msgs[0] if msgs else 'ok'}", flush=True)
# the traceback of the first failure
torch._dynamo.reset()
from torch._inductor.compile_fx import compile_fx_inner
import torch._inductor.compile_fx as cf
cls = sys.modules["dpcompile.backend"].DPBackend
def lower(self, gm, example_inputs, kwargs):
    try:
        return compile_fx_inner(gm, example_inputs, **kwargs)
    except Exception:
        traceback.print_exc(limit=-25)
        gm.print_readable()
        raise
cls.lower = lower
torch.manual_seed(0)
m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).to(DEV)
dp = dpcompile.dpcompile(m, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", policy="per_sample",
                         per_sample_tf32=False, backend="inductor")
try:
    dp(torch.randn(1, 3, 8, 8, device=DEV)).square().sum().backward()
except Exception as e:
    print("raised", type(e).__name__)
