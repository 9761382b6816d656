"""A first batch of one on CUDA with inductor: does any graph fall back (CantSplit)? Shifted products forced."""
import warnings, torch
from torch import nn
import dpcompile
from dpcompile.passes import plan
plan.SHIFTED_CONV_MIN_POSITIONS = plan.SHIFTED_CONV_MIN_CHANNELS = 1
for policy in ("per_sample", "ghost"):
    torch._dynamo.reset()
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).cuda()
    dp = dpcompile.dpcompile(m, max_grad_norm=1e-3, noise_multiplier=0.0, loss_reduction="sum", policy=policy, backend="inductor")
    for B in (1, 5):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            m.zero_grad()
            dp(torch.randn(B, 3, 8, 8, device="cuda")).square().sum().backward()
        msgs = [str(x.message)[:200] for x in w if "inductor could not" in str(x.message)]
        g = torch.cat([p.grad.flatten() for p in m.parameters()]).norm().item()
        print(f"{policy} B={B}: {'FALLBACK ' + msgs[0] if msgs else 'ok'}; compilations {dp.compilations}; norm {g:.3g} <= {1e-3 * B}", flush=True)
