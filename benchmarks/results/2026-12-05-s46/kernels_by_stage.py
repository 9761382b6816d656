"""The DP backward's generated calls (kernels and extern calls) by stage: compiles one first step of a zoo model with
dpcompile (inductor), finds the generated wrapper module with the most DP nodes under TORCHINDUCTOR_CACHE_DIR, and
attributes each call to the stage (pass_times.STAGES) most of its source nodes belong to. Writes the module, gzipped,
to OUT if given. Usage: python kernels_by_stage.py MODEL SIZE BATCH DEVICE [OUT]"""
import collections, gzip, os, pathlib, re, sys
import torch, torch.nn.functional as F
root = pathlib.Path(__file__).resolve().parents[3]
sys.path[:0] = [str(root / "benchmarks"), str(root / "examples")]
import dpcompile  # noqa: E402
import models as zoo  # noqa: E402
from pass_times import STAGES  # noqa: E402

name, size, batch, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
b = getattr(zoo, name)
model = (b(10) if name != "vit_s16" else b(num_classes=10, image_size=size)).to(device)
dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum", backend="inductor")
x, y = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
F.cross_entropy(dp(x), y, reduction="sum").backward()
cache = pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
srcs = [p.read_text() for p in cache.rglob("*.py") if "def call(" in p.read_text()]
src = max(srcs, key=lambda s: s.count("dp_"))
if len(sys.argv) > 5:
    with gzip.open(pathlib.Path(sys.argv[5]) / f"{name}-{size}-bwd.py.gz", "wt") as f:
        f.write(src)
stage = lambda n: next(label for prefix, label in STAGES if n.startswith(prefix))  # noqa: E731
calls, lines = collections.Counter(), src.split("\n")
for i, line in enumerate(lines):
    m = re.match(r"\s*# Topologically Sorted Source Nodes: \[(.*?)\](, Original ATen|$)", line)
    if not m:
        continue
    j = i + 1
    while lines[j].strip().startswith("#") or "assert_size_stride" in lines[j] or "empty_strided" in lines[j] or "get_raw_stream" in lines[j] \
            or "reinterpret_tensor" in lines[j] and "=" in lines[j].split("(")[0]:
        j += 1
    call = lines[j].strip()
    kind = "extern" if ("extern_kernels" in call or "torch.ops" in call) else "kernel"
    names = [s.strip() for s in m.group(1).split(",")]
    calls[(collections.Counter(stage(n) for n in names).most_common(1)[0][0], kind)] += 1
print(f"{name} {size}² b{batch} {device}: DP backward calls by stage")
for (s, k), c in sorted(calls.items(), key=lambda kv: -kv[1]):
    print(f"{c:5d} {k:7s} {s}")
print("total", sum(calls.values()), "kernels", sum(c for (s, k), c in calls.items() if k == "kernel"))
