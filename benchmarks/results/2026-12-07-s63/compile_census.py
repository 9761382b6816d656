"""The census's first step, timed: MODEL, SIZE, BATCH from the environment (ResNet-50 (GN) 64² b2 by default); each
graph's lowering (GraphLowering.run), code generation (GraphLowering.codegen) and the scheduler's fusion (fuse_nodes)
in process time, and the scheduler's can_fuse checks counted. The argument: "default"; N, inductor's
max_fusion_buffer_group_pairwise_attempts at N; or "without-last-pass", the DP pipeline without its last pass (the
sixty-third session ran it with cse_pass.patch applied, against "default"). Runs beside
results/2026-12-05-s46/triton_census.py and kernels_by_stage.py (copied together, their root pointing at the
checkout), in a venv with Triton:
    TORCHINDUCTOR_CACHE_DIR=<empty dir> python compile_census.py default|N|without-last-pass"""
import os
import pathlib
import sys
import time

import torch._inductor.config as inductor_config
import triton_census  # noqa: F401  (the stubs: Triton code generated, never compiled)
from kernels_by_stage import census, dp_backward_source, first_step
from torch._inductor import scheduler
from torch._inductor.graph import GraphLowering

from dpcompile import passes

mode = sys.argv[1]
if mode == "without-last-pass":
    passes.PIPELINE = passes.PIPELINE[:-1]
elif mode != "default":
    inductor_config.max_fusion_buffer_group_pairwise_attempts = int(mode)
times: dict[str, list] = {}
checks = [0]


def timed(name, fn):
    def wrapper(self, *args, **kwargs):
        start = time.process_time()
        try:
            return fn(self, *args, **kwargs)
        finally:
            times.setdefault(name, []).append(round(time.process_time() - start, 2))
    return wrapper


def counted(fn):
    def wrapper(self, *args, **kwargs):
        checks[0] += 1
        return fn(self, *args, **kwargs)
    return wrapper


GraphLowering.run = timed("run", GraphLowering.run)
GraphLowering.codegen = timed("codegen", GraphLowering.codegen)
scheduler.Scheduler.fuse_nodes = timed("fuse_nodes", scheduler.Scheduler.fuse_nodes)
scheduler.Scheduler.can_fuse = counted(scheduler.Scheduler.can_fuse)
wall, process = time.perf_counter(), time.process_time()
try:
    first_step(os.environ.get("MODEL", "resnet50_gn"), int(os.environ.get("SIZE", "64")),
               int(os.environ.get("BATCH", "2")), "cpu")
except RuntimeError as e:
    assert "stub kernel" in str(e), e
wall, process = time.perf_counter() - wall, time.process_time() - process
source = dp_backward_source(pathlib.Path(os.environ["TORCHINDUCTOR_CACHE_DIR"]))
print(mode, "wall", round(wall, 1), "process", round(process, 1),
      "calls", sum(calls for calls, _ in census(source).values()),
      "kernels generated", source.count("async_compile.triton("), times, "can_fuse calls", checks[0])
