"""bench.py's --largest-batch: the largest batch whose training step fits in GPU memory."""
from __future__ import annotations

import contextlib
import copy
import math
import time
from typing import Callable

import torch
import torch.nn as nn

import bench_common as common
from bench_common import Captured, first_line, free_memory, is_oom, log, reset_dynamo, sync
from bench_configs import Config, make_batch
from bench_methods import method_setup
from bench_report import lb_text


def round_batch(b: float) -> int:
    """Batch sizes tried: multiples of 8 from 64 on (what people pick, and kernel-friendly)."""
    b = int(b)
    return b - b % 8 if b >= 64 else max(b, 1)


def predict_largest(points: list[tuple[int, float]], capacity: float) -> float | None:
    """Batch at which the peak memory reaches `capacity`, from (batch, peak bytes) points that fit: a line through
    the two largest; from one point, peak/batch as the per-sample cost (fixed costs counted per sample: an
    underestimate of the batch, so a safe jump)."""
    pts = sorted(p for p in points if p[1])
    if not pts:
        return None
    (b1, m1) = pts[-1]
    if len(pts) >= 2:
        b0, m0 = pts[-2]
        slope = (m1 - m0) / (b1 - b0) if b1 > b0 else 0.0
        if slope > 0:
            return b1 + (capacity - m1) / slope
    return b1 * capacity / m1


def search_largest_batch(attempt: Callable[[int], tuple[bool, float | None, str | None]], start: int,
                         start_peak: float | None, capacity: float, max_attempts: int = 8, seconds: float = 120.0,
                         tol: float = 0.10, clock: Callable[[], float] = time.monotonic) -> dict:
    """Largest batch b with attempt(b) -> (fits, peak bytes, error) true, `start` known to fit. Grows by doubling,
    or jumps to just under the batch the measured peaks predict for `capacity` bytes when that is further; once a
    batch fails, bisects (geometrically while the failing batch is over 4x the fitting one) until the failing one
    is within `tol` of the fitting one. Stops after max_attempts tries or when the next try would end past
    `seconds` (then "capped"), a try expected to take as long as the fastest after the first. The first try,
    far above the timed batch, may recompile a shared setup (inductor's 32-bit indexing guards at 2^31 elements)
    where later tries do not."""
    lo, hi, points, tries = start, None, [(start, start_peak)] if start_peak else [], []
    t0, capped = clock(), False
    while len(tries) < max_attempts:
        if hi is not None and hi <= lo * (1 + tol):
            break
        if clock() - t0 + min((t["s"] for t in tries[1:]), default=0.0) > seconds:
            capped = True
            break
        if hi is None:
            pred = predict_largest(points, capacity)
            if pred is None:
                b = 2 * lo
            elif pred > 2.2 * lo:
                b = 0.92 * pred                          # far: a big step that should still fit
            else:
                b = min(2 * lo, max(1.12 * lo, 1.06 * pred))  # near: just past the prediction, to find the ceiling
        else:
            b = math.sqrt(lo * hi) if hi > 4 * lo else (lo + hi) / 2  # bisect (in log scale after an overshoot)
        b = round_batch(b)
        if b <= lo or (hi is not None and b >= hi):
            break                                        # the rounding leaves nothing between: as close as it gets
        t = clock()
        fits, peak, error = attempt(b)
        last_s = clock() - t
        tries.append({"batch": b, "fits": fits, "peak_gib": peak / 2**30 if peak else None, "error": error,
                      "s": round(last_s, 2)})
        if fits:
            lo = b
            points.append((b, peak))
        else:
            hi = b
            if error and error != "out of memory" and fatal_cuda_error(error):
                break
    return {"batch": lo, "fails_at": hi, "attempts": tries, "capped": capped,
            "converged": hi is not None and hi <= lo * (1 + tol), "seconds": round(clock() - t0, 1),
            "capacity_gib": capacity / 2**30}


def log_search(cfg: Config, method: str, lb) -> None:
    if isinstance(lb, dict):
        log(f"{cfg.name} {method}: largest batch {lb_text(lb)} (fails at {lb['fails_at']}; {len(lb['attempts'])} "
            f"attempts, {lb['seconds']:.0f} s" + (", capped" if lb["capped"] else "") + ")")


def fatal_cuda_error(msg: str) -> bool:
    """An error after which the CUDA context is unusable (nothing more can run in this process)."""
    return any(k in msg for k in ("illegal memory access", "device-side assert", "unspecified launch failure"))


def reuses_setup(method: str) -> bool:
    """Whether the largest-batch search steps one compiled setup at every batch (non-DP torch.compile and the
    dpcompile policies without CUDA graphs: their batch dimension becomes or is dynamic, so a new batch costs a step,
    not a compilation) rather than setting up afresh per try (eager, the peers: their engines fix the batch size)."""
    return method == "compile" or (method.startswith("dp_") and not method.endswith("_graphs"))


class SteppedSetup:
    """A method's setup, compiled by a step at the config's batch, stepped at other batches: each try_batch(b) is
    one training step on a fresh batch of b samples, its peak memory measured from an emptied cache. The plan
    dpcompile made for the config's batch is kept (a fresh compilation at b would plan with b's hints)."""

    def __init__(self, cfg: Config, device: torch.device, model: nn.Module, step: Callable, extra=None,
                 setup_s: float = 0.0) -> None:
        self.cfg, self.device, self.model, self.step, self.extra, self.setup_s = cfg, device, model, step, extra, setup_s

    @classmethod
    def compiled(cls, cfg: Config, method: str, base: nn.Module, args, device: torch.device, batch: int):
        """A fresh setup of method, compiled by one step at batch."""
        setup, kw, _ = method_setup(method)
        t = time.perf_counter()
        model = copy.deepcopy(base).to(device).train()
        with contextlib.redirect_stdout(Captured()):
            step, extra = setup(model, *make_batch(cfg, device, batch), args, **kw)
            step()
        sync(device)
        return cls(cfg, device, model, step, extra, time.perf_counter() - t)

    def try_batch(self, batch: int) -> tuple[bool, float | None, str | None]:
        result = measured_step(self.device, lambda: self.step(*make_batch(self.cfg, self.device, batch)))
        if not result[0]:
            self.model.zero_grad(set_to_none=True)  # what a failed step left in .grad goes (the next one starts afresh)
        return result


def measured_step(device: torch.device, run: Callable[[], None]) -> tuple[bool, float | None, str | None]:
    """run() (one training step) with its peak memory measured from an emptied cache: (fits, peak bytes (None off
    CUDA), error); an OOM -> not fits, "out of memory"."""
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with contextlib.redirect_stdout(Captured()):
            run()
        sync(device)
        return True, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None, None
    except Exception as e:  # noqa: BLE001
        return False, None, "out of memory" if is_oom(e) else first_line(e)
    finally:
        free_memory()


def try_batch(cfg: Config, method: str, base: nn.Module, base_oop: nn.Module | None, args, device: torch.device,
              batch: int) -> tuple[bool, float | None, str | None]:
    """One training step of `method` at `batch` after a fresh setup (compilation included in the peak)."""
    oop = method_setup(method)[2]
    reset_dynamo()
    try:
        return measured_step(device, lambda: SteppedSetup.compiled(cfg, method, base_oop if oop else base, args,
                                                                    device, batch))
    finally:
        reset_dynamo()
        free_memory()


def largest_batch(cfg: Config, method: str, rec: dict, batch: int, base, base_oop, args,
                  device: torch.device, stepped: SteppedSetup | None = None) -> dict | str:
    """--largest-batch for one method whose timed run (rec, at `batch`) fitted; "n/a (cpu)" off the GPU. Tries step
    `stepped` (the timed run's setup), else a setup compiled here where the method's batch is dynamic, else each try
    sets up afresh."""
    if device.type != "cuda":
        return "n/a (cpu)"
    if rec.get("status") != "ok":
        return f"n/a (the timed run: {rec.get('status')})"
    free_memory()
    # what peaks can reach: free now (allocator emptied) and what live tensors hold; a margin for fragmentation
    capacity = (torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_allocated(device)) * 0.97
    peak = rec.get("peak_gib_incl_warmup") or rec.get("peak_gib")
    setup_s = None
    if stepped is None and reuses_setup(method):
        try:
            stepped = SteppedSetup.compiled(cfg, method, base, args, device, batch)
        except Exception as e:  # noqa: BLE001
            return f"n/a (its setup at batch {batch}: {'out of memory' if is_oom(e) else first_line(e)})"
    if stepped is not None:
        setup_s = round(stepped.setup_s, 1)
        attempt = stepped.try_batch
    else:
        def attempt(b):
            return try_batch(cfg, method, base, base_oop, args, device, b)
    seconds = args.largest_batch_seconds  # for the tries (a shared setup's compilation is not counted)
    if args.budget_seconds is not None:  # the search ends within --budget-seconds too
        seconds = max(0.0, min(seconds, args.budget_seconds - (time.time() - common.T0)))
    try:
        res = search_largest_batch(attempt, batch, peak * 2**30 if peak else None, capacity,
                                   args.largest_batch_attempts, seconds)
    finally:
        del stepped, attempt
        reset_dynamo()
        free_memory()
    res["setup_s"] = setup_s  # the compilation the tries shared, 0 for the timed run's (None: each set up afresh)
    if any(t["error"] and fatal_cuda_error(t["error"]) for t in res["attempts"]):
        args.cuda_broken = True
    return res
