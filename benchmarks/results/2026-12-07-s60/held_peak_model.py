"""The DP ÷ non-private backward peaks a walk over the captured graphs predicts (CPU, backend eager, the suite batch):
the non-private backward's live bytes in graph order (live_memory.py's walk), plus each term's held values from its
site to the end (per-sample gradients, or a ghost term's two operands).   python held_peak_model.py CONFIG"""
import sys, torch
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from bench_configs import CONFIGS, make_batch, loss_fn
import dpcompile
from dpcompile.passes.meta import PARAMS, PLAN, SITE
from live_memory import storages, value_bytes

def profile(gm, batch):
    """The nodes in order, their index, and the bytes live after each (live_memory.storages' lifetimes)."""
    nodes, size, free_at = storages(gm, batch)
    index = {n: i for i, n in enumerate(nodes)}
    delta = [0] * (len(nodes) + 1)
    for n in nodes:
        if size[n]:
            delta[index[n]] += size[n]; delta[free_at[n] + 1] -= size[n]
    live, t = [], 0
    for i in range(len(nodes)):
        t += delta[i]; live.append(t)
    return nodes, index, live

name = sys.argv[1]
cfg = CONFIGS[name]
torch.manual_seed(0)
dp = dpcompile.dpcompile(cfg.build(), max_grad_norm=1.0, noise_multiplier=1.0, backend="eager")
x, y = make_batch(cfg, torch.device("cpu"))
loss_fn(dp(x), y).backward()
gm = dp.graphs["backward"]
B = cfg.batch
nodes, index, live = profile(gm, B)
peak_np = max(live)
held = [0] * len(nodes)
for p in gm.meta[PARAMS]:
    for s in p.sites:
        d = s.meta[PLAN]
        i = index[s]
        if d.method == "per_sample":
            held[i] += d.numbers["per_sample"][1]
        else:
            site = s.meta[SITE]
            held[i] += sum(value_bytes(a.meta["val"], B) for a in site.inputs[:2])
cum, dp_curve = 0, []
for i in range(len(nodes)):
    cum += held[i]; dp_curve.append(live[i] + cum)
k = max(range(len(nodes)), key=lambda i: dp_curve[i])
print(name, "np peak MiB", round(peak_np / 2**20), "at", live.index(peak_np), "/", len(nodes),
      "dp est MiB", round(dp_curve[k] / 2**20), "at", k, nodes[k].name, "ratio", round(dp_curve[k] / peak_np, 3),
      "held total", round(cum / 2**20))
