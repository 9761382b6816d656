"""The per-sample convolution kernel (dpcompile.conv_kernels) at the suite's 224² layer shapes in bf16, never
timed there (the thirty-third session's benchmark ran 32² and below at B = 256). Inside the forty-eighth session's
profile of a small-input ResNet-18 at 224² b64 (what dp_throughput.py then built for "resnet18_gn 224"; s48 call 3,
H100) its rate varied 6× between layers of equal FLOPs (237 GFLOP each): 313 TFLOP/s for 128→128 at 112², 210 for
64→64 at 224², 100 for 512→512 at 28², 50 for 256→256 at 56² (4.78 ms a call). Layer by layer, against cuDNN's
batched weight gradient (the non-private floor, the same FLOPs): each of the kernel's configs (conv_kernels.CONFIGS)
with x and g each channels-last or not (in the compiled steps x comes channels-last and g NCHW), so that the layout,
the grid and the config are told apart; where C < 64, also the joint tiles (columns over kernel position and
channel: conv_kernels.JOINT_MAX_CHANNELS, off by default until this times it). One JSON line per shape and layout:
the best config's time, every config's, the floor, the rate (TFLOP/s of the per-sample products, GB/s of the
per-sample values written).
    python benchmarks/results/2026-12-06-s49/per_sample_224.py          # CUDA
    python benchmarks/results/2026-12-06-s49/per_sample_224.py --joint  # joint tiles against per-position, g cl
    python benchmarks/results/2026-12-06-s49/per_sample_224.py --smoke  # the plumbing on a CPU (reference op)"""
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import dpcompile  # noqa: F401  (registers dpcompile ops)
from dpcompile import conv_kernels

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import layer_costs  # noqa: E402  (benchmarks/layer_costs.py: its CUDA-event timer)

SMOKE = "--smoke" in sys.argv
DEVICE = "cpu" if SMOKE else "cuda"
DTYPE = torch.float32 if SMOKE else torch.bfloat16

SHAPES = [  # few input channels first (the joint tiles' question), then the rest; (name, B, C_in, C_out, H, kernel, stride, padding)
    ("wrn 32² stem 3→16 b256", 256, 3, 16, 32, 3, 1, 1),
    ("wrn 32² 16→64 b256", 256, 16, 64, 32, 3, 1, 1),
    ("r18 224 stem 7×7 s2 3→64 b64", 64, 3, 64, 224, 7, 2, 3),
    ("wrn 32² 64→64 b256 (reference point)", 256, 64, 64, 32, 3, 1, 1),
    ("r18 224 56² 64→64 b64", 64, 64, 64, 56, 3, 1, 1),
    ("r18 224 56²→28² 64→128 s2 b64", 64, 64, 128, 56, 3, 2, 1),
    ("r18 224 28² 128→128 b64", 64, 128, 128, 28, 3, 1, 1),
    ("r18 224 28²→14² 128→256 s2 b64", 64, 128, 256, 28, 3, 2, 1),
    ("r18 224 14² 256→256 b64", 64, 256, 256, 14, 3, 1, 1),
    ("r18 224 14²→7² 256→512 s2 b64", 64, 256, 512, 14, 3, 2, 1),
    ("r18 224 7² 512→512 b64", 64, 512, 512, 7, 3, 1, 1),
    ("small-input r18 224: 56² 256→256 b64 (50 TFLOP/s in the step)", 64, 256, 256, 56, 3, 1, 1),
    ("small-input r18 224: 112² 128→128 b64 (313 TFLOP/s in the step)", 64, 128, 128, 112, 3, 1, 1),
    ("r50 224 56² 64→64 b32", 32, 64, 64, 56, 3, 1, 1),
    ("r50 224 14² 256→256 b32", 32, 256, 256, 14, 3, 1, 1),
    ("r50 224 7² 512→512 b32", 32, 512, 512, 7, 3, 1, 1),
]
JOINT_QUESTION = "--joint" in sys.argv  # after s49 call 1: up to how many channels the joint tiles win, g channels-last
if JOINT_QUESTION:
    SHAPES = [("wrn 32² stem 3→16 b256", 256, 3, 16, 32, 3, 1, 1), ("r18 224 stem 7×7 s2 3→64 b64", 64, 3, 64, 224, 7, 2, 3),
              ("wrn 32² 16→64 b256", 256, 16, 64, 32, 3, 1, 1), ("32² 32→64 b256", 256, 32, 64, 32, 3, 1, 1),
              ("56² 32→64 b64", 64, 32, 64, 56, 3, 1, 1), ("32² 48→64 b256", 256, 48, 64, 32, 3, 1, 1),
              ("56² 48→96 b64", 64, 48, 96, 56, 3, 1, 1)]
if SMOKE:
    SHAPES = [("smoke", 2, 4, 8, 6, 3, 1, 1), ("smoke s2", 2, 3, 4, 7, 3, 2, 1)]


def timed(fn, reps=15):
    """Median ms: CUDA events (layer_costs.timed), or the wall clock for the CPU smoke run."""
    if not SMOKE:
        return round(layer_costs.timed(fn, reps), 4)
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return round(statistics.median(times), 4)


def run(g, x, kernel, stride, padding, config, joint):
    """The kernel itself on g and x as they are laid out (not the op, which passes them channels-last)."""
    if SMOKE:
        return conv_kernels.per_sample_conv2d_grad_reference(g, x, kernel, stride, padding, [1, 1])
    return conv_kernels.per_sample_conv2d_grad(g, x, kernel, stride, padding, [1, 1], config=config,
                                               joint_channels=10**6 if joint else 0)


CONFIGS = [None] if SMOKE else [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages)
                                for c in conv_kernels.CONFIGS]
torch.manual_seed(0)
for name, B, C, P, H, k, s, p in SHAPES:
    HO = (H + 2 * p - k) // s + 1
    kernel, stride, padding = [k, k], [s, s], [p, p]
    x0 = torch.randn(B, C, H, H, device=DEVICE, dtype=DTYPE)
    g0 = torch.randn(B, P, HO, HO, device=DEVICE, dtype=DTYPE)
    w = torch.empty(P, C, k, k, device=DEVICE, dtype=DTYPE)
    flops = 2 * B * P * C * k * k * HO * HO
    written = B * P * C * k * k * x0.element_size()
    floor = timed(lambda: torch.ops.aten.convolution_backward(
        g0, x0, w, None, stride, padding, [1, 1], False, [0, 0], 1, [False, True, False]))
    exact = torch.stack([torch.ops.aten.convolution_backward(
        g0[i:i + 1].double(), x0[i:i + 1].double(), w.double(), None, stride, padding, [1, 1], False, [0, 0], 1,
        [False, True, False])[1] for i in range(min(B, 4))])
    layouts = ["x cl, g cl", "x cl, g nchw", "x nchw, g cl", "x nchw, g nchw"]
    layouts += ["joint tiles, x cl, g nchw"] if C < 64 else []  # columns over (kernel position, channel)
    if JOINT_QUESTION:
        layouts = ["x cl, g cl", "joint tiles, x cl, g cl"]
    for layout in layouts:
        joint = layout.startswith("joint")
        x = x0.to(memory_format=torch.channels_last) if "x cl" in layout else x0.contiguous()
        g = g0.to(memory_format=torch.channels_last) if layout.endswith("g cl") else g0.contiguous()
        times = {}
        for config in CONFIGS:
            label = "reference" if config is None else "{BLOCK_M}x{BLOCK_N}x{BLOCK_K} w{num_warps} s{num_stages}".format(**config)
            try:
                times[label] = timed(lambda: run(g, x, kernel, stride, padding, config, joint))
            except Exception as err:  # noqa: BLE001  (a config that cannot launch here: say so, go on)
                times[label] = repr(err)[:120]
        got = run(g, x, kernel, stride, padding, CONFIGS[0], joint)
        err = ((got[:4].double() - exact).abs().amax() / exact.abs().amax()).item()
        best = min((t, c) for c, t in times.items() if isinstance(t, float))
        print(json.dumps({"shape": name, "layout": layout, "best_ms": best[0], "best_config": best[1],
                          "cudnn_batched_wgrad_ms": floor, "ratio_to_floor": round(best[0] / floor, 2),
                          "tflops": round(flops / best[0] / 1e9, 1), "written_gb_s": round(written / best[0] / 1e6, 1),
                          "rel_err": err, "configs": times, "dtype": str(DTYPE).split(".")[-1],
                          "device": torch.cuda.get_device_name() if not SMOKE else "cpu", "torch": torch.__version__}),
              flush=True)
    if not SMOKE:  # this shape's tensors are rebound at the next (the largest are a few hundred MB)
        torch.cuda.empty_cache()
