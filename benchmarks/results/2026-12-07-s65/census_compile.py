"""The census (results/2026-12-05-s46/triton_census.py: inductor's Triton code for CPU tensors, never compiled) of
non-private torch.compile's backward, the batch marked dynamic as dpcompile's capture has it: its launches, against
the DP backward's "the model's own" stage. Usage: TORCHINDUCTOR_CACHE_DIR=<empty dir> python census_compile.py MODEL
SIZE BATCH"""
import pathlib
import re
import sys

results = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(results / "2026-12-05-s46"))
import triton_census  # noqa: E402,F401  (Triton code for the CPU, the stubs)
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from kernels_by_stage import zoo  # noqa: E402


def main() -> None:
    name, size, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    torch.manual_seed(0)
    builder = getattr(zoo, name)
    model = builder(10) if name != "vit_s16" else builder(num_classes=10, image_size=size)
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    torch._dynamo.mark_dynamic(x, 0)
    try:
        F.cross_entropy(torch.compile(model, backend="inductor")(x), y, reduction="sum").backward()
    except RuntimeError as e:
        assert "stub kernel" in str(e), e
    import os
    sources = [p.read_text() for p in pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]).rglob("*.py")]
    backward = max((s for s in sources if "def call(" in s), key=lambda s: s.count("convolution_backward")
                   + s.count("native_layer_norm_backward"))
    body = backward[backward.index("def call("):]
    kernels = len(re.findall(r"^\s*triton_\w+\.run\(", body, re.M))
    externs = len(re.findall(r"(extern_kernels\.\w+|torch\.ops\.\w+\.\w+(?:\.\w+)?)\(", body))
    print(f"{name} {size}² b{batch} non-private backward: {kernels} kernel launches, {externs} extern calls, "
          f"{backward.count('async_compile.triton(')} Triton kernels generated")


if __name__ == "__main__":
    main()
