"""The DP backward's Triton kernel launches by stage, without a GPU: inductor generates Triton code for the CPU
(`cpu_backend="triton"`) with the Triton compile replaced by a stub and Triton's driver by one that reports an sm90
target, so nothing runs; each launch and extern call in the generated wrapper is attributed to the stage (pass_times
.STAGES) most of its source nodes belong to. A proxy for CUDA's kernels: the fusion is inductor's Triton scheduling,
but the DP passes plan for the CPU (no per-sample convolution kernel, half or fused Grams, channels-last, TF32).
Needs Triton importable (not a project dependency: a separate venv with torch's CPU build, `pip install triton` and
this project). Usage: TORCHINDUCTOR_CACHE_DIR=<empty dir> python triton_census.py MODEL SIZE BATCH [TOP]
(forty-sixth session: WRN-16-4 32² b4 and ResNet-50 (GN) 64² b2; benchmarks/NOTES.md)."""
import collections
import os
import pathlib
import re
import sys

import torch
import torch.nn.functional as F
import torch._inductor.config as inductor_config
import triton
from torch._inductor import async_compile
from triton.backends.compiler import GPUTarget

root = pathlib.Path(__file__).resolve().parents[3]
sys.path[:0] = [str(root / "benchmarks"), str(root / "examples")]
import dpcompile  # noqa: E402
import models as zoo  # noqa: E402
from pass_times import STAGES  # noqa: E402

inductor_config.cpu_backend = "triton"
inductor_config.compile_threads = 1


class Stub:
    """A kernel that was generated and never compiled."""

    def __init__(self, *args, **kwargs):
        pass

    def run(self, *args, **kwargs):
        raise RuntimeError("stub kernel: generated, not compiled")

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


class Driver:
    """What inductor's Triton code generation asks of Triton's driver."""

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

    def get_current_device(self):
        return 0

    def get_current_stream(self, *args):
        return 0

    def get_active_torch_device(self):
        return torch.device("cpu")


async_compile.AsyncCompile.triton = lambda self, kernel_name, source_code, device_str="cuda", **kw: Stub()
triton.runtime.driver.set_active(Driver())


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
        extern = re.search(r"(extern_kernels\.\w+|torch\.ops\.\w+\.\w+)\(", line)
        if (kernel or extern) and nodes:
            key = (collections.Counter(map(stage, nodes)).most_common(1)[0][0], "kernel" if kernel else "extern")
            entry = out.setdefault(key, [0, collections.Counter()])
            entry[0] += 1
            entry[1][re.sub(r"_\d+$", "", kernel.group(1)) if kernel else extern.group(1)] += 1
    return out


def main() -> None:
    name, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    torch.manual_seed(0)
    dp = dpcompile.dpcompile(getattr(zoo, name)(10), max_grad_norm=1.0, noise_multiplier=1.0, loss_reduction="sum",
                             backend="inductor")
    try:
        F.cross_entropy(dp(torch.randn(batch, 3, size, size)), torch.randint(0, 10, (batch,)),
                        reduction="sum").backward()
    except RuntimeError as e:
        assert "stub kernel" in str(e), e
    sources = [p.read_text() for p in pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).rglob("*.py")]
    source = max((s for s in sources if "def call(" in s), key=lambda s: s.count("dp_"))
    counts = census(source)
    print(f"{name} {size}² b{batch}: DP backward, {source.count('async_compile.triton(')} Triton kernels generated")
    for (stage, kind), (calls, names) in sorted(counts.items(), key=lambda kv: -kv[1][0]):
        print(f"{calls:5d} {kind:7s} {stage}")
        for kernel, n in names.most_common(top):
            print(f"        {n:4d} {kernel[:110]}")
    print("total", sum(c for c, _ in counts.values()), "calls")


if __name__ == "__main__":
    main()
