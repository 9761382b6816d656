"""What bench.py and its parts share: the run's clock and log, autocast, synchronisation, memory and Dynamo resets,
error texts, and the captured stdout of a method."""
from __future__ import annotations

import contextlib
import gc
import io
import time

import torch

T0 = time.time()  # the run's start (bench.main resets it): the log's clock and --budget-seconds count from it


def log(*a) -> None:
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def amp_context(args, x: torch.Tensor):
    """--amp bf16: torch.autocast(x's device type, bfloat16) around forward and loss; fp32: nothing."""
    if getattr(args, "amp", "fp32") == "bf16":
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def reset_dynamo() -> None:
    try:
        torch._dynamo.reset()
    except Exception:  # noqa: BLE001
        pass


def is_oom(e: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, or any error whose text (or its cause's) says "out of memory" (inductor and
    cuDNN wrap it)."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else ''}"[:300]


class Captured(io.StringIO):
    """stdout of a method's setup and steps (the peers print; private_vision on every step): kept, not shown."""

    def lines(self, limit: int = 10) -> list[str]:
        seen = list(dict.fromkeys(ln.strip()[:200] for ln in self.getvalue().splitlines() if ln.strip()))
        return seen[:limit] + ([f"... {len(seen) - limit} more distinct lines"] if len(seen) > limit else [])


def over_budget(args) -> bool:
    return args.budget_seconds is not None and time.time() - T0 > args.budget_seconds
