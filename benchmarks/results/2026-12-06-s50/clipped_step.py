"""The clipped sums inside a DP step, at ResNet-50 (GN) bf16's layer3 shapes (for the fiftieth session's device call).

clipped_sums.py (call 2b, H100): inductor's fusion of six 256→256 clipped sums, alone, reads at 1.1 TB/s (0.207 ms at
B = 32); in ResNet-50's step the same six took 0.572 ms (s49 call 2b), fused there with the release (the float64
scale, the noise added, the division: 91 source nodes). The suspect: inductor's loop ordering after fusion makes the
fused kernel's loop order the one of the release's contiguous gradient (the parameter's layout), against the stored
per-sample gradients' (B, P, K, K, C) order. Here: six 256→256 3×3 convolutions with GroupNorm and ReLU at 14², batch
32, bf16 autocast, every weight per-sample (the kernel's stored layout), a step compiled as dpcompile compiles it;
with --loaf 0, inductor's loop_ordering_after_fusion off; with --model resnet50_gn, the suite's ResNet-50 (GN) at 224²,
1000 classes, `auto` (as dp_throughput.py builds it), to read its clipped sums' kernel; with --aligned, the
misaligned bf16 Gram and per-sample product operands aligned (passes.rules.conv.ALIGNED_OPERAND_DEVICES = ("cuda",),
the default since the fifty-first session; --unaligned sets it to ()); with --fp32, no autocast (fp32, the TF32 defaults); --aligned-fp32 (fifty-first
session: fp32 operands of TF32 products aligned too) ran in the fifty-second session's call 1 and is gone since (slower;
the option now stops with an error). With --who, the aten op and input shapes that launched each
top GEMM kernel (profiler with record_shapes; for the fifty-second session's unexplained TF32 align-1 kernel). Prints
the kernels of the step by device time (torch profiler, 10 steps) and writes the generated code of the backward to --code.
    python benchmarks/results/2026-12-06-s50/clipped_step.py [--loaf 0|1] [--code FILE]"""
import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
import dpcompile  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--loaf", type=int, default=1)
p.add_argument("--code", default="")
p.add_argument("--batch", type=int, default=32)
p.add_argument("--model", default="")
p.add_argument("--aligned", action="store_true")
p.add_argument("--unaligned", action="store_true")
p.add_argument("--fp32", action="store_true")
p.add_argument("--aligned-fp32", action="store_true")
p.add_argument("--who", action="store_true", help="also name the op and input shapes that launched each GEMM kernel")
args = p.parse_args()


def block():
    return [nn.Conv2d(256, 256, 3, padding=1, bias=False), nn.GroupNorm(32, 256), nn.ReLU()]


if args.aligned:
    from dpcompile.passes.rules import conv as conv_rule
    conv_rule.ALIGNED_OPERAND_DEVICES = ("cuda",)
if args.unaligned:
    from dpcompile.passes.rules import conv as conv_rule
    conv_rule.ALIGNED_OPERAND_DEVICES = ()
if args.aligned_fp32:
    sys.exit("--aligned-fp32: the fp32 alignment was removed in the fifty-second session (slower: benchmarks/NOTES.md)")
torch.manual_seed(0)
if args.model:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import dp_throughput  # noqa: E402
    model, classes = dp_throughput.build(args.model, 224)
    model, shape, policy = model.cuda(), (3, 224, 224), "auto"
else:
    model = nn.Sequential(*[m for _ in range(6) for m in block()], nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(256, 10)).cuda()
    classes, shape, policy = 10, (256, 14, 14), "per_sample"
codes = []
from torch._inductor import config  # noqa: E402
from torch._inductor import graph as inductor_graph  # noqa: E402

original = inductor_graph.GraphLowering.codegen


def recorded(self, *a, **k):
    out = original(self, *a, **k)
    code = out[0] if isinstance(out, tuple) else out
    codes.append(str(getattr(code, "value", code)))
    return out


inductor_graph.GraphLowering.codegen = recorded
x = torch.randn(args.batch, *shape, device="cuda")
y = torch.randint(0, classes, (args.batch,), device="cuda")
with config.patch(loop_ordering_after_fusion=bool(args.loaf)):
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, seed=0, backend="inductor",
                             policy=policy)

    def step():
        with torch.autocast("cuda", torch.bfloat16, enabled=not args.fp32):
            out = dp(x)
        torch.nn.functional.cross_entropy(out.float(), y).backward()
        for q in model.parameters():
            q.grad = None
    for _ in range(3):
        step()
torch.cuda.synchronize()
if args.code:
    Path(args.code).write_text("\n\n# ===== next graph =====\n\n".join(codes))
from torch.profiler import ProfilerActivity, profile  # noqa: E402
activities = [ProfilerActivity.CUDA, *([ProfilerActivity.CPU] if args.who else [])]
with profile(activities=activities, record_shapes=args.who) as prof:
    for _ in range(10):
        step()
    torch.cuda.synchronize()
kernels = {}
for e in prof.events():
    if e.device_type == torch.autograd.DeviceType.CUDA:
        kernels[e.name] = kernels.get(e.name, 0.0) + e.device_time / 10 / 1e3
total = sum(kernels.values())
top = sorted(kernels.items(), key=lambda kv: -kv[1])[:40]
launchers = {}  # --who: GEMM kernel name -> {(op, input shapes): launches in the 10 steps}
for e in prof.events() if args.who else ():
    if e.device_type == torch.autograd.DeviceType.CPU and e.name.startswith(("aten::", "dpcompile::")):
        for k in getattr(e, "kernels", []):
            if "gemm" in k.name.lower() or "Kernel2" in k.name:
                per_op = launchers.setdefault(k.name[:120], {})
                key = f"{e.name} {e.input_shapes}"
                per_op[key] = per_op.get(key, 0) + 1
print(json.dumps({"loaf": args.loaf, "aligned": args.aligned, "fp32": args.fp32, "aligned_fp32": args.aligned_fp32,
                  "batch": args.batch, "device_ms_per_step": round(total, 3),
                  "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                  "top": [[k[:120], round(v, 4)] for k, v in top],
                  "launchers": {k: v for k, v in launchers.items() if any(k == name[:120] for name, _ in top)}},
                 indent=1))
