"""The grouped release (passes.rewrite.FOREACH_RELEASE_DEVICES) against the ungrouped one in one process: two copies
of a model, one captured without the group and one with it, their steps timed in alternating blocks, so that the
host's speed, which moved by ±30% between processes in this session's two calls, is the same for both. Each step is
synchronized (wall = host-bound step where the host bounds it). Usage: python interleaved.py MODEL SIZE BATCH
(DEVICE=cpu BACKEND=eager: a dry run on a CPU)"""
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "examples"))
import models as zoo  # noqa: E402

import dpcompile  # noqa: E402
from dpcompile.passes import rewrite  # noqa: E402

name, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device, backend = os.environ.get("DEVICE", "cuda"), os.environ.get("BACKEND", "inductor")
sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
torch.manual_seed(0)
base = getattr(zoo, name)(10, small_input=size <= 64).to(device)
x = torch.randn(batch, 3, size, size, device=device)
y = torch.randint(0, 10, (batch,), device=device)
steps = {}
for grouped in (False, True):
    model = copy.deepcopy(base)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, policy="auto",
                             backend=backend)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)

    def step(dp=dp, opt=opt):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(dp(x), y).backward()
        opt.step()
    rewrite.FOREACH_RELEASE_DEVICES = (device,) if grouped else ()
    start = time.perf_counter()
    for _ in range(3):  # the capture (the flag is read as the backward is rewritten) and warm-up
        step()
    sync()
    print(f"grouped={grouped}: first steps {time.perf_counter() - start:.1f} s", flush=True)
    steps[grouped] = step
rewrite.FOREACH_RELEASE_DEVICES = ()
if device == "cuda":  # that the group is in effect: each variant's kernels in one step, and its combo kernels among them
    from torch.profiler import ProfilerActivity, profile
    for grouped in (False, True):
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            steps[grouped]()
            sync()
        kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        print(f"grouped={grouped}: {len(kernels)} device events a step, "
              f"{sum('triton_for_fused' in k for k in kernels)} of them combo kernels (triton_for_fused)", flush=True)
times = {False: [], True: []}
for block in range(8):
    for grouped in ((False, True) if block % 2 == 0 else (True, False)):
        for _ in range(10):
            sync()
            t0 = time.perf_counter()
            steps[grouped]()
            sync()
            times[grouped].append(time.perf_counter() - t0)
for grouped, ts in times.items():
    ms = sorted(1000 * t for t in ts)
    print(f"{name} {size}² b{batch} grouped={grouped}: median {statistics.median(ms):.2f} ms, "
          f"quartiles {ms[len(ms) // 4]:.2f}–{ms[3 * len(ms) // 4]:.2f}, min {ms[0]:.2f} ({len(ms)} steps)")
card = torch.cuda.get_device_name() if device == "cuda" else device
print(card, torch.__version__, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
if os.environ.get("PROFILE"):  # where each variant's host time goes: 10 steps under cProfile, by own time
    import cProfile
    import pstats
    for grouped in (False, True):
        profile = cProfile.Profile()
        profile.enable()
        for _ in range(10):
            steps[grouped]()
        sync()
        profile.disable()
        print(f"== grouped={grouped}: cProfile of 10 steps, by own time")
        pstats.Stats(profile).sort_stats("tottime").print_stats(12)
