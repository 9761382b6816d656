"""The DP backward's generated calls (Triton kernel launches and extern calls) by stage: compiles one first step of a
zoo model with dpcompile (inductor), finds the generated wrapper module with the most DP nodes under
TORCHINDUCTOR_CACHE_DIR, and attributes each call to the stage (pass_times.STAGES) most of its source nodes belong to
(inductor's "Topologically Sorted Source Nodes" comments; the C++ wrapper writes them for extern calls only). Writes
the module, gzipped, to OUT if given. Usage: python kernels_by_stage.py MODEL SIZE BATCH DEVICE [OUT [TOP]]
(triton_census.py runs the same count on a CPU, with inductor's Triton code for CPU tensors)."""
import collections
import gzip
import os
import pathlib
import re
import sys

import torch
import torch.nn.functional as F

root = pathlib.Path(__file__).resolve().parents[3]
sys.path[:0] = [str(root / "benchmarks"), str(root / "examples")]
import dpcompile  # noqa: E402
import models as zoo  # noqa: E402
from pass_times import STAGES  # noqa: E402


def census(source: str) -> dict:
    """(stage, kernel or extern) -> [calls, {kernel name without its index: calls}] over the wrapper's call()."""
    stage = lambda n: next(label for prefix, label in STAGES if n.startswith(prefix))  # noqa: E731
    out, nodes = {}, None
    for line in source[source.index("def call("):].split("\n"):
        m = re.match(r"\s*# Topologically Sorted Source Nodes: \[(.*?)\](, Original ATen|$)", line)
        if m:
            nodes = [s.strip() for s in m.group(1).split(",")]
            continue
        kernel = re.match(r"\s*(triton_\w+)\.run\(", line)
        extern = re.search(r"(extern_kernels\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?)\(", line)
        if (kernel or extern) and nodes:
            key = (collections.Counter(map(stage, nodes)).most_common(1)[0][0], "kernel" if kernel else "extern")
            entry = out.setdefault(key, [0, collections.Counter()])
            entry[0] += 1
            entry[1][re.sub(r"_\d+$", "", kernel.group(1)) if kernel else extern.group(1)] += 1
    return out


def dp_backward_source(cache: pathlib.Path) -> str:
    """The generated wrapper module under the inductor cache with the most DP nodes named in it."""
    sources = [p.read_text() for p in cache.rglob("*.py")]
    return max((s for s in sources if "def call(" in s), key=lambda s: s.count("dp_"))


def report(title: str, source: str, top: int = 0) -> None:
    counts = census(source)
    print(f"{title}: DP backward, {source.count('async_compile.triton(')} Triton kernels generated")
    for (stage, kind), (calls, names) in sorted(counts.items(), key=lambda kv: -kv[1][0]):
        print(f"{calls:5d} {kind:7s} {stage}")
        for kernel, n in names.most_common(top):
            print(f"        {n:4d} {kernel[:110]}")
    print("total", sum(c for c, _ in counts.values()), "calls")


def first_step(name: str, size: int, batch: int, device: str) -> None:
    torch.manual_seed(0)
    builder = getattr(zoo, name)
    model = (builder(10) if name != "vit_s16" else builder(num_classes=10, image_size=size)).to(device)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum",
                             backend="inductor")
    x, y = torch.randn(batch, 3, size, size, device=device), torch.randint(0, 10, (batch,), device=device)
    F.cross_entropy(dp(x), y, reduction="sum").backward()


def main() -> None:
    name, size, batch, device = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    first_step(name, size, batch, device)
    source = dp_backward_source(pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]))
    if len(sys.argv) > 5:
        with gzip.open(pathlib.Path(sys.argv[5]) / f"{name}-{size}-bwd.py.gz", "wt") as f:
            f.write(source)
    report(f"{name} {size}² b{batch} {device}", source, int(sys.argv[6]) if len(sys.argv) > 6 else 0)


if __name__ == "__main__":
    main()
