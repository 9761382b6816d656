"""The census's first step (MODEL, SIZE, BATCH from the environment; ResNet-50 (GN) 64² b2 by default) with inductor's
max_fusion_buffer_group_pairwise_attempts at its default (argument "default") or at N: the scheduler's can_fuse
checks counted, its fuse_nodes and each graph's lowering (GraphLowering.run) and code generation timed (process
time). Runs beside results/2026-12-05-s46/triton_census.py and kernels_by_stage.py, in a venv with Triton:
    TORCHINDUCTOR_CACHE_DIR=<empty dir> python attempts_census.py default|N"""
import os, pathlib, sys, time
import triton_census  # the stubs
from kernels_by_stage import dp_backward_source, census, first_step
from dpcompile import passes
mode = sys.argv[1]
import torch._inductor.config as ic
if mode != "default":
    ic.max_fusion_buffer_group_pairwise_attempts = int(mode)
from torch._inductor import scheduler as sch
checks = [0]
orig_can_fuse = sch.Scheduler.can_fuse
def can_fuse(self, *a, **k):
    checks[0] += 1
    return orig_can_fuse(self, *a, **k)
sch.Scheduler.can_fuse = can_fuse
fuse_time = []
orig_fuse_nodes = sch.Scheduler.fuse_nodes
def fuse_nodes(self, *a, **k):
    t = time.process_time()
    try:
        return orig_fuse_nodes(self, *a, **k)
    finally:
        fuse_time.append(round(time.process_time() - t, 2))
sch.Scheduler.fuse_nodes = fuse_nodes
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
    first_step(os.environ.get("MODEL", "resnet50_gn"), int(os.environ.get("SIZE", "64")), int(os.environ.get("BATCH", "2")), "cpu")
except RuntimeError as e:
    assert "stub kernel" in str(e), e
w, p = time.perf_counter() - w, time.process_time() - p
src = dp_backward_source(pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]))
counts = census(src)
print(mode, "wall", round(w, 1), "process", round(p, 1), "calls", sum(c for c, _ in counts.values()),
      "kernels generated", src.count("async_compile.triton("), phases, "can_fuse calls", checks[0], "fuse_nodes s", fuse_time)
