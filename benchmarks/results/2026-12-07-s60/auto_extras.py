"""auto's per-sample terms beyond mixed's plan (the memory cap's candidates) with their extra MiB and estimated time saved,
uncapped, on the CPU at the suite batch (the cap set out of reach).   python auto_extras.py CONFIG"""
import sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_configs import CONFIGS, make_batch, loss_fn
import dpcompile
from dpcompile.passes import plan
from dpcompile.passes.meta import PARAMS, PLAN, SITE

cfg = CONFIGS[sys.argv[1]]
torch.manual_seed(0)
dp = dpcompile.dpcompile(cfg.build(), max_grad_norm=1.0, noise_multiplier=1.0, backend="eager",
                         auto_extra_memory=1e9)  # no cap: auto's own choices
x, y = make_batch(cfg, torch.device("cpu"))
loss_fn(dp(x), y).backward()
gm = dp.graphs["backward"]
hints = plan.shape_hints(gm)
saved = plan.saved_tensor_bytes(gm, hints)
rows = []
for p in gm.meta[PARAMS]:
    if p.shared: continue
    for n in p.sites:
        d = n.meta[PLAN]
        if d.method != "per_sample" or "ghost" not in d.costs or plan.choose("mixed", n.meta[SITE], d.costs, hints)[0] != "ghost":
            continue
        more = d.numbers["per_sample"][1] - d.numbers["ghost"][1]
        g, ps = (plan.estimated_seconds(d.costs[m], hints) for m in ("ghost", "per_sample"))
        rows.append((p.name, more / 2**20, (g - ps) * 1e3, (g - ps) / more * 2**20 * 1e6))
tot = sum(r[1] for r in rows)
print(sys.argv[1], f"saved {saved/2**20:.0f} MiB, extras {tot:.0f} MiB = {tot * 2**20 / saved:.3f} of saved; est. ms saved by extras {sum(r[2] for r in rows):.3f}")
for r in sorted(rows, key=lambda r: r[3]): print(f"   {r[0]:36s} {r[1]:7.1f} MiB  saves {r[2]:.4f} ms  ({r[3]:.3f} us/MiB)")
