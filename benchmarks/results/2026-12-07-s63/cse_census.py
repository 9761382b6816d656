"""The census of ResNet-50 (GN) 64² b2 with or without the CSE pass (cse_pass.patch applied), timed over the first
step, with inductor's lowering (GraphLowering.run) and code generation (GraphLowering.codegen) of each graph apart.
Runs beside results/2026-12-05-s46/triton_census.py and kernels_by_stage.py (copied together, their root pointing at
the checkout), in a venv with Triton:
    TORCHINDUCTOR_CACHE_DIR=<empty dir> python cse_census.py with|without"""
import os, pathlib, sys, time
import triton_census  # the stubs
from kernels_by_stage import dp_backward_source, census, first_step
from dpcompile import passes
mode = sys.argv[1]
if mode == "without":
    passes.PIPELINE = passes.PIPELINE[:-1]
assert passes.PIPELINE[-1].__name__ == ("eliminate_common_subexpressions" if mode == "with" else "rewrite_backward")
from torch._inductor.graph import GraphLowering
phases = {}
def timed(name, fn):
    def wrapper(self, *a, **k):
        t = time.process_time()
        try:
            return fn(self, *a, **k)
        finally:
            phases.setdefault(name, []).append(round(time.process_time() - t, 2))
    return wrapper
GraphLowering.run = timed("run", GraphLowering.run)
GraphLowering.codegen = timed("codegen", GraphLowering.codegen)
w, p = time.perf_counter(), time.process_time()
try:
    first_step("resnet50_gn", 64, 2, "cpu")
except RuntimeError as e:
    assert "stub kernel" in str(e), e
w, p = time.perf_counter() - w, time.process_time() - p
src = dp_backward_source(pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]))
counts = census(src)
print(mode, "wall", round(w, 1), "process", round(p, 1), "calls", sum(c for c, _ in counts.values()),
      "kernels generated", src.count("async_compile.triton("), phases)
