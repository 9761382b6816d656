"""Where a host-bound DP step's host time goes, by Python function (the sixty-fourth session's Next 2): one config's
DP step (`auto`, inductor, the TF32 default) and non-private torch.compile's, each warmed up, then N steps under
cProfile; prints each method's wall ms a step and its top functions by own time, per step.
    python wrapper_profile.py [MODEL SIZE BATCH [STEPS]]      (default resnet18_gn 32 256 20; CUDA)"""
import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from dp_throughput import build  # noqa: E402
import dpcompile  # noqa: E402

model_name, size, batch = (sys.argv[1], int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else \
    ("resnet18_gn", 32, 256)
steps = int(sys.argv[4]) if len(sys.argv) > 4 else 20
device = torch.device("cuda")


def run(method: str) -> None:
    torch.manual_seed(0)
    model, classes = build(model_name, size)
    model = model.to(device)
    net = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0) if method == "dp" else \
        torch.compile(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(batch, 3, size, size, device=device)
    y = torch.randint(0, classes, (batch,), device=device)

    def step():
        F.cross_entropy(net(x), y).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    t = time.perf_counter()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    print(f"== {method}: warm-up {time.perf_counter() - t:.1f} s", flush=True)
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    print(f"{method}: {(time.perf_counter() - t) / steps * 1e3:.2f} ms a step (no profiler)")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    print(f"{method}: {stats.total_tt / steps * 1e3:.2f} ms a step of profiled Python")
    stats.sort_stats("tottime").print_stats(28)
    text = out.getvalue()
    print(text[text.find("ncalls"):])


for method in ("compile", "dp"):
    run(method)
