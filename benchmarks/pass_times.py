"""Host time of dpcompile's own passes at the first (capturing) step, per pass, on the CPU.

    python benchmarks/pass_times.py [--models resnet50_gn,vit_s16,wrn16_4] [--size 64] [--batch 2]

Runs each model's first step with backend="eager" (no inductor) on the CPU and reports the process CPU
time spent in the safety pass (graph check), the numerical sample-independence check (two eager runs of
the forward graph), each pass of the pipeline (shapes, plan, rewrite), and the whole first step. This is compile time, which runs on the host whatever the device; it is not a
training-speed figure.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import models as zoo  # noqa: E402

import dpcompile  # noqa: E402
from dpcompile import passes  # noqa: E402

SPENT: dict[str, float] = defaultdict(float)


def timed(name, fn):
    def wrapper(*args, **kwargs):
        start = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[name] += time.process_time() - start
    return wrapper


def instrument() -> None:
    """Time every pipeline pass and the safety pass (the backend looks them up at call time)."""
    passes.PIPELINE = tuple(timed(p.__name__, p) for p in passes.PIPELINE)
    passes.check_sample_independence = timed("check_sample_independence", passes.check_sample_independence)
    passes.safety.SampleCheck.check = timed("numerical check", passes.safety.SampleCheck.check)


def first_step(name: str, size: int, batch: int) -> dict[str, float]:
    SPENT.clear()
    torch.manual_seed(0)
    builder = getattr(zoo, name)
    model = builder(10) if name != "vit_s16" else builder(num_classes=10, image_size=size)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", backend="eager")
    x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
    start = time.process_time()
    F.cross_entropy(dp(x), y, reduction="sum").backward()
    return {**SPENT, "first step": time.process_time() - start}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet50_gn,wrn16_4,vit_s16")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    instrument()
    print(f"CPU time, s ({platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')})")
    for name in args.models.split(","):
        t = first_step(name, args.size, args.batch)
        dp_passes = sum(v for k, v in t.items() if k != "first step")
        print(f"{name}: DP passes {dp_passes:.1f} (" + ", ".join(f"{k} {v:.1f}" for k, v in t.items()
                                                            if k != "first step") + f"); first step {t['first step']:.1f}")


if __name__ == "__main__":
    main()
