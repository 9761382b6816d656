"""Host time per call of the per-sample convolution kernel (call 4: WRN-16-4 bf16's host time grew by 4 ms a step
with it): through the op, the autotuned launcher and a fixed config, 100 calls each without synchronising, then a
cProfile of 20 op calls."""
import cProfile
import io
import json
import pstats
import time

import torch

import dpcompile  # noqa: F401
from dpcompile import conv_kernels

g = torch.randn(256, 64, 32, 32, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
x = torch.randn(256, 64, 32, 32, device="cuda", dtype=torch.bfloat16).to(memory_format=torch.channels_last)
args = ([3, 3], [1, 1], [1, 1], [1, 1])
op = torch.ops.dpcompile.per_sample_conv2d_grad.default
fixed = dict(BLOCK_M=64, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3)
calls = {"op": lambda: op(g, x, *args), "autotuned": lambda: conv_kernels.per_sample_conv2d_grad(g, x, *args),
         "fixed": lambda: conv_kernels.per_sample_conv2d_grad(g, x, *args, config=fixed)}
row = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
import triton  # noqa: E402
row["triton"] = triton.__version__
for name, fn in calls.items():
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    for reps in (1, 100):
        start = time.perf_counter()
        for _ in range(reps):
            fn()
        host = (time.perf_counter() - start) / reps
        torch.cuda.synchronize()
        total = (time.perf_counter() - start) / reps
    row[name] = {"host_us": round(host * 1e6, 1), "with_device_us": round(total * 1e6, 1)}
print(json.dumps(row), flush=True)
prof = cProfile.Profile()
prof.enable()
for _ in range(20):
    op(g, x, *args)
prof.disable()
torch.cuda.synchronize()
out = io.StringIO()
pstats.Stats(prof, stream=out).sort_stats("cumulative").print_stats(25)
print(out.getvalue()[-6000:])
