"""The DP backward's Triton kernel launches by stage, without a GPU: inductor generates Triton code for the CPU
(`cpu_backend="triton"`) with the Triton compile replaced by a stub and Triton's driver by one that reports an sm90
target, so nothing runs; each launch and extern call in the generated wrapper is attributed to the stage (pass_times
.STAGES) most of its source nodes belong to. A proxy for CUDA's kernels: the fusion is inductor's Triton scheduling,
but the DP passes plan for the CPU (no per-sample convolution kernel, half or fused Grams, channels-last, TF32).
Needs Triton importable (not a project dependency: a separate venv with torch's CPU build, `pip install triton` and
this project). Usage: TORCHINDUCTOR_CACHE_DIR=<empty dir> python triton_census.py MODEL SIZE BATCH [TOP]
(forty-sixth session: WRN-16-4 32² b4 and ResNet-50 (GN) 64² b2; benchmarks/NOTES.md)."""
import os
import pathlib
import sys

import torch
import torch._inductor.config as inductor_config
import triton
from torch._inductor import async_compile
from triton.backends.compiler import GPUTarget

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from kernels_by_stage import dp_backward_source, first_step, report  # noqa: E402

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


def main() -> None:
    name, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    try:
        first_step(name, size, batch, "cpu")
    except RuntimeError as e:
        assert "stub kernel" in str(e), e
    source = dp_backward_source(pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]))
    report(f"{name} {size}² b{batch} (Triton code for the CPU, not compiled)", source,
           int(sys.argv[4]) if len(sys.argv) > 4 else 0)


if __name__ == "__main__":
    main()
