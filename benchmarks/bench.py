#!/usr/bin/env python3
"""Time one training step and its peak GPU memory, side by side, for:

  eager           non-private, eager PyTorch
  compile         non-private, torch.compile(model) (default inductor; --compile-backend)
  compile_graphs  the same with CUDA graphs (mode="reduce-overhead")
  dp_<policy>     dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=sigma, policy=<policy>)
  dp_<policy>_graphs  the same with cuda_graphs=True (peak memory not reported: the CUDA graphs' pool is set up in
                  the warm-up and replays allocate nothing; reserved memory is kept in the JSON)
  dp_<policy>_tf32[_graphs]  with per_sample_tf32=True (per-sample gradients as TF32 products)
  dp_<policy>_alltf32[_graphs]  with per_sample_tf32=True and ghost_tf32=True (ghost clipped sums too)
  opacus          Opacus PrivacyEngine.make_private (grad_sample_mode="hooks")
  opacus_ghost    Opacus PrivacyEngine.make_private (grad_sample_mode="ghost", two backward passes)
  opacus_oop, opacus_ghost_oop   the same, on the ResNets with an out-of-place residual add (the stock
                  torchvision `out += identity` makes Opacus fail); other models as they are
  fastdp          fastDP book-keeping, clipping_mode="MixOpt" (sources from --peers)
  fastdp_ghost    fastDP book-keeping, clipping_mode="MixGhostClip"
  private_vision  private_vision mixed ghost clipping (optimizer.step(loss=per-sample losses), no backward)

Every step: loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
with SGD(lr=0.1) on one synthetic (random) batch of the configured shape; --amp bf16 runs the forward and the
loss under torch.autocast(device, bfloat16). Time per step: median of --steps timed steps after --warmup steps
(the first warm-up step includes compilation), each step bracketed by torch.cuda.synchronize() +
time.perf_counter(). Peak memory: torch.cuda.max_memory_allocated() over the timed steps, after
reset_peak_memory_stats() (model, optimizer state and batch included).

--check compares dpcompile's gradient (noise_multiplier=0) with a torch.func per-sample reference before timing.
--largest-batch METHODS searches the largest batch that fits in GPU memory for those methods.
--resume adds to <out>/<name>.json what it lacks (a suite split over several calls).

Usage (GPU):  python benchmarks/bench.py --configs resnet18_32,wrn16_4_32 --check --budget-seconds 540
              python benchmarks/bench.py --configs suite --amp bf16 --methods eager,compile,dpcompile,fastdp
Usage (CPU):  python benchmarks/bench.py --configs smoke --methods eager,compile --dp-backend eager
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import gc
import importlib
import importlib.util
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings
from typing import Callable

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
if ROOT not in sys.path:
    sys.path.append(ROOT)  # an installed dpcompile (or PYTHONPATH) wins over the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # bench_configs, bench_report beside this file
from bench_configs import (CHECK_MODELS, CONFIG_GROUPS, CONFIGS, DEFAULT_CONFIGS, Config,  # noqa: E402
                           Unavailable, expand_configs, loss_fn, make_batch, missing_requirement, per_sample_loss)
from bench_report import FLOOR_FACTOR, lb_text, markdown, method_order, ok, save  # noqa: E402


class _PassesFinder:
    """Source-tree fallback for pyproject's package-dir mapping dpcompile.passes -> passes/ (when dpcompile
    is found through PYTHONPATH=<repo> rather than installed). Last on sys.meta_path, so an install wins."""

    @staticmethod
    def find_spec(fullname, path=None, target=None):
        import importlib.util
        if fullname != "dpcompile.passes" and not fullname.startswith("dpcompile.passes."):
            return None
        rel = fullname.split(".")[2:]
        base = os.path.join(ROOT, "passes", *rel)
        if os.path.isdir(base):
            return importlib.util.spec_from_file_location(fullname, os.path.join(base, "__init__.py"),
                                                          submodule_search_locations=[base])
        if os.path.isfile(base + ".py"):
            return importlib.util.spec_from_file_location(fullname, base + ".py")
        return None


sys.meta_path.append(_PassesFinder)

T0 = time.time()
warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching")
warnings.filterwarnings("ignore", message="Using a non-full backward hook")  # fastDP's and private_vision's hooks


def log(*a) -> None:
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def amp_context(args, x: torch.Tensor):
    """--amp bf16: torch.autocast(x's device type, bfloat16) around forward and loss; fp32: nothing."""
    if getattr(args, "amp", "fp32") == "bf16":
        return torch.autocast(x.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

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


def git_rev() -> str | None:
    """HEAD's short hash, with "-dirty" when the working tree differs from it (a copied checkout can
    carry an older .git than its files)."""
    try:
        return subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True,
                              text=True, timeout=5).stdout.strip() or None
    except Exception:  # noqa: BLE001
        return None


def environment(device: torch.device) -> dict:
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "python": platform.python_version(),
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "git": git_rev(),
        "inputs": "synthetic random batch (torch.randn images / uniform token ids, uniform labels)",
    }
    try:
        import opacus
        env["opacus"] = opacus.__version__
    except Exception as e:  # noqa: BLE001
        env["opacus"] = f"unavailable ({first_line(e)})"
    try:
        import dpcompile
        env["dpcompile"] = getattr(dpcompile, "__version__", "present")
    except Exception as e:  # noqa: BLE001
        env["dpcompile"] = f"unavailable ({first_line(e)})"
    return env


# ------------------------------------------------------------------------------------------------
# Methods: each returns (step function, extra info) for a fresh copy of the model
# ------------------------------------------------------------------------------------------------

def sgd_step(forward, model, x, y, args, opt=None):
    """One training step through `forward`, updating `model`'s parameters with SGD (or `opt`, a peer's)."""
    opt = opt if opt is not None else torch.optim.SGD(model.parameters(), lr=args.lr)

    def step(x=x, y=y):  # another batch: step(x, y) (the largest-batch search reuses one compiled setup)
        with amp_context(args, x):
            loss = loss_fn(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def setup_eager(model, x, y, args, policy=None):
    return sgd_step(model, model, x, y, args), {}


def setup_compile(model, x, y, args, policy=None, cuda_graphs=False):
    mode = "reduce-overhead" if cuda_graphs else None
    return sgd_step(torch.compile(model, backend=args.compile_backend, mode=mode), model, x, y, args), {}


def setup_dpcompile(model, x, y, args, policy="mixed", cuda_graphs=False, tf32=False, ghost_tf32=False):
    import dpcompile
    dp_model = dpcompile.dpcompile(model, max_grad_norm=args.max_grad_norm, noise_multiplier=args.noise_multiplier,
                                   policy=policy, backend=args.dp_backend, cuda_graphs=cuda_graphs,
                                   per_sample_tf32=tf32, ghost_tf32=ghost_tf32)
    step = sgd_step(dp_model, model, x, y, args)

    def explain():
        try:
            return str(dp_model.explain())
        except Exception as e:  # noqa: BLE001
            return f"explain() failed: {first_line(e)}"
    return step, {"explain": explain, "compilations": lambda: dp_model.compilations}


def setup_opacus(model, x, y, args, policy=None, ghost=False):
    try:
        from opacus import PrivacyEngine
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"opacus: {first_line(e)}") from None
    from torch.utils.data import DataLoader, TensorDataset
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=x.shape[0])
    engine = PrivacyEngine()
    kw = dict(module=model, optimizer=opt, data_loader=loader, noise_multiplier=args.noise_multiplier,
              max_grad_norm=args.max_grad_norm, poisson_sampling=False)
    if ghost:
        pmodel, popt, crit, _ = engine.make_private(**kw, criterion=nn.CrossEntropyLoss(), grad_sample_mode="ghost")

        def step():
            with amp_context(args, x):
                out = pmodel(x)
                loss = crit(out.flatten(0, 1), y.flatten()) if out.dim() == 3 else crit(out, y)
            loss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
    else:
        pmodel, popt, _ = engine.make_private(**kw)

        def step():
            with amp_context(args, x):
                loss = loss_fn(pmodel(x), y)
            loss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
    return step, {}


# Peers from unmodified sources (--peers DIR: fastDP/, private_vision/), imported here only, never by the product.

def import_peer(args, package: str):
    """`package` from the --peers folder (put first on sys.path); Unavailable with the reason if it won't import."""
    folder = args.peers
    if not folder or not os.path.isdir(os.path.join(folder, package)):
        raise Unavailable(f"no {package}/ in the peers folder {folder!r} (--peers or $DPCOMPILE_PEERS)")
    folder = os.path.abspath(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    try:
        return importlib.import_module(package)
    except Exception as e:  # noqa: BLE001  (fastDP imports transformers at the top)
        raise Unavailable(f"{package}: {first_line(e)}") from None


def setup_fastdp(model, x, y, args, policy=None, clipping_mode="MixOpt"):
    """fastDP book-keeping as its README attaches it: the usual loss.backward(); optimizer.step()."""
    fastdp = import_peer(args, "fastDP")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    engine = fastdp.PrivacyEngine(model, batch_size=x.shape[0], sample_size=args.sample_size,
                                  noise_multiplier=args.noise_multiplier, epochs=1, max_grad_norm=args.max_grad_norm,
                                  clipping_fn="Abadi", clipping_mode=clipping_mode, clipping_style="all-layer")
    engine.attach(opt)
    return sgd_step(model, model, x, y, args, opt), {}


def setup_private_vision(model, x, y, args, policy=None):
    """private_vision mixed ghost clipping: optimizer.step(loss=per-sample losses) runs both backward passes."""
    pv = import_peer(args, "private_vision")
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    engine = pv.PrivacyEngine(model, batch_size=x.shape[0], sample_size=args.sample_size, epochs=1,
                              max_grad_norm=args.max_grad_norm, noise_multiplier=args.noise_multiplier,
                              ghost_clipping=True, mixed=True)
    engine.attach(opt)

    def step():
        with amp_context(args, x):
            losses = per_sample_loss(model(x), y)
        opt.step(loss=losses)
        opt.zero_grad(set_to_none=True)  # private_vision's zero_grad (drops .grad, grad_sample, norm_sample)
    return step, {}


def method_setup(method: str):
    """-> (setup function, kwargs, use the out-of-place model variant)."""
    if method == "eager":
        return setup_eager, {}, False
    if method in ("compile", "compile_graphs"):
        return setup_compile, {"cuda_graphs": method.endswith("_graphs")}, False
    if method.startswith("dp_"):  # dp_<policy>[_tf32|_alltf32][_graphs]
        rest = method[3:]
        graphs, rest = rest.endswith("_graphs"), rest.removesuffix("_graphs")
        ghost_tf32, rest = rest.endswith("_alltf32"), rest.removesuffix("_alltf32")
        tf32, policy = ghost_tf32 or rest.endswith("_tf32"), rest.removesuffix("_tf32")
        return setup_dpcompile, {"policy": policy, "cuda_graphs": graphs, "tf32": tf32, "ghost_tf32": ghost_tf32}, False
    if method in ("opacus", "opacus_oop"):
        return setup_opacus, {"ghost": False}, method.endswith("_oop")
    if method in ("opacus_ghost", "opacus_ghost_oop"):
        return setup_opacus, {"ghost": True}, method.endswith("_oop")
    if method == "fastdp":
        return setup_fastdp, {"clipping_mode": "MixOpt"}, False
    if method == "fastdp_ghost":
        return setup_fastdp, {"clipping_mode": "MixGhostClip"}, False
    if method == "private_vision":
        return setup_private_vision, {}, False
    raise ValueError(f"unknown method {method!r}")


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

class Captured(io.StringIO):
    """stdout of a method's setup and steps (the peers print; private_vision on every step): kept, not shown."""

    def lines(self, limit: int = 10) -> list[str]:
        seen = list(dict.fromkeys(ln.strip()[:200] for ln in self.getvalue().splitlines() if ln.strip()))
        return seen[:limit] + ([f"... {len(seen) - limit} more distinct lines"] if len(seen) > limit else [])


def time_method(cfg: Config, method: str, base: nn.Module, base_oop: nn.Module | None, x, y, args,
                device: torch.device, search: bool = False) -> dict:
    """The method's timings; with search (a --largest-batch method whose setup steps any batch), then its largest
    batch through the same compiled setup, so the search costs steps, not another compilation."""
    setup, kw, oop = method_setup(method)
    if oop and base_oop is None:
        return {"status": "n/a", "error": "no out-of-place variant for this model"}
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(base_oop if oop else base).to(device).train()
    out = Captured()
    with contextlib.redirect_stdout(out):
        res, step, extra = _time_steps(setup, kw, model, x, y, args, device)
    if kw.get("cuda_graphs") and res.get("peak_gib") is not None:
        # replays allocate nothing: the recorded graphs' memory pool, set up in the warm-up, is not in the peak
        res["peak_gib_replay"], res["peak_gib"] = res["peak_gib"], None
        res["reserved_gib"] = torch.cuda.memory_reserved(device) / 2**30
    if out.lines():
        res["stdout"] = out.lines()
    if search and reuses_setup(method) and device.type == "cuda":
        res["largest_batch"] = largest_batch(cfg, method, res, x.shape[0], base, base_oop, args, device,
                                             SteppedSetup(cfg, device, model, step, extra))
        log_search(cfg, method, res["largest_batch"])
    return res


def _time_steps(setup, kw, model, x, y, args, device: torch.device) -> dict:
    t = time.perf_counter()
    step, extra = setup(model, x, y, args, **kw)
    setup_s = time.perf_counter() - t

    sync(device)
    t = time.perf_counter()
    step()                                   # first step: tracing / compilation
    sync(device)
    first_s = time.perf_counter() - t
    for _ in range(args.warmup - 1):
        step()
    sync(device)
    peak_all = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    times = []
    for _ in range(args.steps):
        sync(device)
        t = time.perf_counter()
        step()
        sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None

    # back-to-back steps, one synchronize at the end (throughput, lets CPU and GPU overlap)
    sync(device)
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    pipelined = (time.perf_counter() - t) * 1e3 / args.steps

    res = {
        "status": "ok",
        "ms": statistics.median(times),
        "ms_min": min(times),
        "ms_mean": statistics.fmean(times),
        "ms_steps": [round(v, 3) for v in times],
        "ms_pipelined": pipelined,
        "peak_gib": peak / 2**30 if peak is not None else None,
        "peak_gib_incl_warmup": peak_all / 2**30 if peak_all is not None else None,
        "setup_s": setup_s,
        "first_step_s": first_s,
    }
    if "explain" in extra and args.explain:
        res["explain"] = extra["explain"]()
    return res, step, extra


# ------------------------------------------------------------------------------------------------
# --largest-batch: the largest batch whose training step fits in GPU memory
# ------------------------------------------------------------------------------------------------

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
        seconds = max(0.0, min(seconds, args.budget_seconds - (time.time() - T0)))
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


# ------------------------------------------------------------------------------------------------
# --check: dpcompile's clipped gradient against a torch.func per-sample reference
# ------------------------------------------------------------------------------------------------

def reference_grad(model: nn.Module, x, y, clip: float | None, dtype=torch.float32):
    """torch.func reference: per-sample grads g_i by vmap(grad), C_i = min(1, R/(||g_i||+1e-6)),
    ref = (sum_i C_i g_i) / B, computed in `dtype`. clip=None: R = median ||g_i|| (half get clipped)."""
    from torch.func import functional_call, grad, vmap
    model = copy.deepcopy(model).to(dtype)
    x = x.to(dtype) if x.is_floating_point() else x
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def loss_i(p, xi, yi):
        return loss_fn(functional_call(model, (p, buffers), (xi.unsqueeze(0),)), yi.unsqueeze(0))

    g = vmap(grad(loss_i), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(v.flatten(1).pow(2).sum(1) for v in g.values()))
    if clip is None:
        clip = float(norms.median())
    c = (clip / (norms + 1e-6)).clamp(max=1.0)
    ref = {k: torch.einsum("b,b...->...", c, v) / x.shape[0] for k, v in g.items()}
    return ref, clip, norms


def rel_errors(grads: dict, ref: dict) -> tuple[dict, float]:
    """Per-parameter ||a-b||/||b|| in float64, and the same over the whole gradient."""
    per, d2, r2 = {}, 0.0, 0.0
    for k, r in ref.items():
        if grads.get(k) is None:
            continue
        d = float((grads[k].double() - r.double()).norm())
        n = float(r.double().norm())
        per[k] = d / max(n, 1e-30)
        d2, r2 = d2 + d * d, r2 + n * n
    return per, math.sqrt(d2) / max(math.sqrt(r2), 1e-30)




def run_check(args, device, results: dict) -> None:
    """dpcompile (sigma=0) against the torch.func reference in fp32 (the printed error) and in float64.
    PASS: every parameter's error against float64 is below max(tol, FLOOR_FACTOR x the fp32 reference's own error
    against float64), the same for the whole gradient, and every parameter has a gradient. (Some gradients,
    e.g. of a GroupNorm weight, are near-cancelling sums that lose digits in fp32 in any implementation.)"""
    import dpcompile
    prev = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = results.setdefault("check", [])
    try:
        for name in [m for m in args.check_models.split(",") if m]:
            build, shape, ncls = CHECK_MODELS[name]
            torch.manual_seed(0)
            base = build().to(device).train()
            g = torch.Generator().manual_seed(1)
            x = torch.randn(args.check_batch, *shape, generator=g).to(device)
            y = torch.randint(0, ncls, (args.check_batch,), generator=g).to(device)
            try:
                ref64, clip, norms = reference_grad(base, x, y, args.check_clip, torch.float64)
                ref32, _, _ = reference_grad(base, x, y, clip, torch.float32)
            except Exception as e:  # noqa: BLE001
                log(f"check {name}: reference failed: {first_line(e)}")
                out.append({"model": name, "status": "fails", "error": "reference: " + first_line(e)})
                continue
            floor, floor_all = rel_errors(ref32, ref64)
            clipped = float((norms > clip).float().mean())
            for policy in args.policies:
                if over_budget(args):
                    out.append({"model": name, "policy": policy, "status": "skipped (budget)"})
                    continue
                rec = {"model": name, "policy": policy, "backend": args.dp_backend, "clip": clip,
                       "frac_clipped": clipped, "batch": args.check_batch, "fp32_floor": floor_all}
                model = dp = None
                try:
                    reset_dynamo()
                    model = copy.deepcopy(base)
                    dp = dpcompile.dpcompile(model, max_grad_norm=clip, noise_multiplier=0.0, policy=policy,
                                             backend=args.dp_backend)
                    loss_fn(dp(x), y).backward()
                    grads = {k: p.grad for k, p in model.named_parameters()}
                    missing = [k for k, v in grads.items() if v is None]
                    e32, e32_all = rel_errors(grads, ref32)
                    e64, e64_all = rel_errors(grads, ref64)
                    ratio = {k: e64[k] / max(args.check_tol, FLOOR_FACTOR * floor[k]) for k in e64}
                    ratio_all = e64_all / max(args.check_tol, FLOOR_FACTOR * floor_all)
                    k32 = max(e32, key=e32.get)
                    k64 = max(e64, key=e64.get)
                    kr = max(ratio, key=ratio.get)
                    passed = max(ratio.values()) <= 1 and ratio_all <= 1 and not missing
                    rec.update(status="ok", max_rel_err=e64[k64], worst_param=k64, total_rel_err=e64_all,
                               max_rel_err_vs_f32=e32[k32], worst_param_vs_f32=k32, total_rel_err_vs_f32=e32_all,
                               worst_over_allowed=ratio[kr], worst_over_allowed_param=kr, missing_grads=missing,
                               passed=passed, per_param=e64, per_param_vs_f32=e32, fp32_floor_per_param=floor)
                    log(f"check {name} policy={policy}: max relative error {e64[k64]:.2e} ({k64}), whole gradient "
                        f"{e64_all:.2e} [vs float64 torch.func]; vs fp32 torch.func: max {e32[k32]:.2e} ({k32}), whole "
                        f"{e32_all:.2e} (the fp32 reference's own error: {floor_all:.2e}); worst/allowed {ratio[kr]:.2f} "
                        f"({kr}); R={clip:.3g}, {clipped:.0%} clipped; {'PASS' if passed else 'FAIL'}"
                        + (f"; no grad: {missing}" if missing else ""))
                except Exception as e:  # noqa: BLE001
                    rec.update(status="fails", error=first_line(e), traceback=traceback.format_exc())
                    log(f"check {name} policy={policy}: fails: {first_line(e)}")
                out.append(rec)
                del model, dp
                free_memory()
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        reset_dynamo()
        free_memory()


# ------------------------------------------------------------------------------------------------
# Output
# ------------------------------------------------------------------------------------------------

def over_budget(args) -> bool:
    return args.budget_seconds is not None and time.time() - T0 > args.budget_seconds


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def default_peers() -> str:
    return os.environ.get("DPCOMPILE_PEERS") or os.path.join(os.path.dirname(ROOT), "shared", "peers")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help="comma-separated config names and groups, 'all', or 'none' (check only). Groups: "
                        + "; ".join(f"{g} = {','.join(v)}" for g, v in CONFIG_GROUPS.items())
                        + f". Known: {', '.join(CONFIGS)}")
    p.add_argument("--methods", default="eager,compile,dpcompile,opacus,opacus_ghost",
                   help="comma-separated from eager, compile, dpcompile (= one run per --policies; or dp_<policy>), "
                        "opacus, opacus_ghost, opacus_oop, opacus_ghost_oop, fastdp, fastdp_ghost, private_vision")
    p.add_argument("--policies", default="mixed,auto", help="dpcompile policies, comma-separated")
    p.add_argument("--dp-backend", default="inductor", choices=["inductor", "eager"])
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend of the non-private 'compile' method (aot_eager: quick CPU tests)")
    p.add_argument("--amp", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: every method's forward and loss under torch.autocast(device, bfloat16)")
    p.add_argument("--peers", default=default_peers(),
                   help="folder holding the peers' sources fastDP/ and private_vision/ (default $DPCOMPILE_PEERS, "
                        "else <repo>/../shared/peers)")
    p.add_argument("--sample-size", type=int, default=50000, help="dataset size the peers' engines are told")
    p.add_argument("--largest-batch", default="",
                   help="comma-separated methods (dpcompile = every policy) whose largest batch that fits in GPU "
                        "memory is searched after timing")
    p.add_argument("--largest-batch-seconds", type=float, default=120.0, help="time cap of each method's search")
    p.add_argument("--largest-batch-attempts", type=int, default=8, help="training steps tried per method, at most")
    p.add_argument("--batch", type=int, default=None, help="override every config's batch size")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--noise-multiplier", type=float, default=1.0)
    p.add_argument("--check", action="store_true", help="gradient check of dpcompile before timing")
    p.add_argument("--check-models", default="small_cnn", help=f"for --check; known: {', '.join(CHECK_MODELS)}")
    p.add_argument("--check-batch", type=int, default=8)
    p.add_argument("--check-clip", type=float, default=None, help="R for --check (default: median per-sample norm)")
    p.add_argument("--check-tol", type=float, default=1e-4,
                   help="relative error always allowed in --check (more where fp32 itself loses digits)")
    p.add_argument("--budget-seconds", type=float, default=None, help="skip what is left after this many seconds")
    p.add_argument("--out", default=os.environ.get("OUT") or os.path.join(".", "runs"))
    p.add_argument("--name", default=None, help="file stem for the outputs (default bench-<UTC time>)")
    p.add_argument("--resume", action="store_true",
                   help="start from <out>/<name>.json (same amp) and run only what it lacks: methods skipped, "
                        "interrupted (retried once) or unavailable, and searches not yet done")
    p.add_argument("--print-configs", action="store_true", help="print the expanded --configs, one a line, and exit")
    p.add_argument("--no-explain", dest="explain", action="store_false", help="don't store dp_model.explain()")
    p.add_argument("--print-plans", action="store_true", help="print dp_model.explain() for each dpcompile run")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.policies = [s for s in args.policies.split(",") if s]

    def expand(spec: str) -> list[str]:
        out = []
        for m in [s for s in spec.split(",") if s]:
            out += [f"dp_{pol}" for pol in args.policies] if m == "dpcompile" else [m]
        return list(dict.fromkeys(out))
    args.methods = expand(args.methods)
    args.largest_batch = expand(args.largest_batch)
    args.configs = expand_configs(args.configs)
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; known: {list(CONFIGS)}; groups: {list(CONFIG_GROUPS)}")
    for m in args.methods:
        try:
            method_setup(m)
        except ValueError as e:
            p.error(str(e))
    extra = [m for m in args.largest_batch if m not in args.methods]
    if extra:
        p.error(f"--largest-batch {extra}: not among --methods {args.methods}")
    if args.name is None:
        args.name = "bench-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    args.cuda_broken = False
    return args


def searched(r: dict | None) -> bool:
    """A largest-batch result a --resume keeps: a search's record, or n/a on a CPU."""
    lb = (r or {}).get("largest_batch")
    return isinstance(lb, dict) or lb == "n/a (cpu)"


def done(r: dict | None) -> bool:
    """A measurement a --resume keeps: ok, failed, n/a, or interrupted twice (skipped and unavailable are retried)."""
    if r is None:
        return False
    return r["status"] in ("ok", "fails", "n/a") or (r["status"] == "interrupted" and r.get("interrupted", 0) >= 2)


def start_results(args, device: torch.device) -> dict:
    env = environment(device)
    if any(m in ("fastdp", "fastdp_ghost", "private_vision") for m in args.methods):
        env["peers"] = {"dir": args.peers}
        for pkg, ms in (("fastDP", ("fastdp", "fastdp_ghost")), ("private_vision", ("private_vision",))):
            if any(m in args.methods for m in ms):
                try:
                    with contextlib.redirect_stdout(Captured()):
                        env["peers"][pkg] = getattr(import_peer(args, pkg), "__version__", "present")
                except Unavailable as e:
                    env["peers"][pkg] = f"unavailable ({e})"
    run = {"date_utc": env["date_utc"], "device": env["device"], "git": env["git"], "argv": args.argv,
           "methods": args.methods, "configs": args.configs}
    path = os.path.join(args.out, args.name + ".json")
    if args.resume and os.path.exists(path):
        with open(path) as f:
            results = json.load(f)
        if results.get("amp", "fp32") != args.amp:
            raise SystemExit(f"--resume: {path} holds amp {results.get('amp', 'fp32')}, this run asks for {args.amp}")
        results["methods"] = sorted(set(results["methods"]) | set(args.methods), key=method_order)
        results.setdefault("runs", []).append(run)
        if env.get("peers"):
            results["env"]["peers"] = env["peers"]
        results["skipped"] = []
        log(f"--resume: {path} ({len(results['configs'])} configs, methods {results['methods']})")
        return results
    return {"env": env, "amp": args.amp, "args": {k: v for k, v in vars(args).items()},
            "methods": sorted(args.methods, key=method_order), "configs": [], "skipped": [], "runs": [run]}


def run_config(cfg: Config, crec: dict, args, device: torch.device, results: dict) -> None:
    """Time every method the record lacks, then the largest-batch searches it lacks; saves after each."""
    todo = [m for m in args.methods if not done(crec["results"].get(m))]
    search = [m for m in args.largest_batch if not searched(crec["results"].get(m))]
    if device.type != "cuda":  # no GPU memory to fill: nothing to search, whether timed now or before
        for m in [m for m in search if m not in todo]:
            crec["results"][m]["largest_batch"] = "n/a (cpu)"
        search = [m for m in search if m in todo]
    if not todo and not search:
        log(f"{cfg.name}: measured already")
        return
    base = base_oop = x = y = None
    current = searching = None
    try:
        torch.manual_seed(0)
        try:
            base = cfg.build()
        except ImportError as e:
            raise Unavailable(first_line(e)) from None
        if any(m.endswith("_oop") for m in todo):  # a model without an in-place residual is its own variant
            torch.manual_seed(0)
            base_oop = cfg.build_oop() if cfg.build_oop is not None else base
        crec["params_m"] = sum(p.numel() for p in base.parameters()) / 1e6
        x, y = make_batch(cfg, device, crec["batch"])
        log(f"== {cfg.name}: {crec['title']}, {crec['params_m']:.2f}M params, x {tuple(x.shape)}, {args.amp}")
        for m in todo:
            if over_budget(args) or args.cuda_broken:
                why = "skipped (CUDA context lost)" if args.cuda_broken else "skipped (budget)"
                crec["results"][m] = {"status": why}
                log(f"{cfg.name} {m}: {crec['results'][m]['status']}")
                continue
            current, prev = m, crec["results"].get(m)
            reset_dynamo()
            try:
                r = time_method(cfg, m, base, base_oop, x, y, args, device, search=m in search)
            except Unavailable as e:
                r = {"status": f"unavailable ({e})"}
            except Exception as e:  # noqa: BLE001
                r = {"status": "fails", "error": first_line(e), "traceback": traceback.format_exc()}
                if fatal_cuda_error(str(e)):
                    args.cuda_broken = True
                e = None  # noqa: F841  (drop the frames that hold GPU tensors)
            if prev and prev.get("interrupted"):
                r["interrupted"] = prev["interrupted"]
            current = None
            crec["results"][m] = r
            report(cfg, m, r, crec, args)
            reset_dynamo()
            free_memory()
            save(results, args)
        for m in search:
            r = crec["results"][m]
            if searched(r):  # with its timing, through the same setup
                continue
            if over_budget(args) or args.cuda_broken:
                r["largest_batch"] = "skipped (budget)" if not args.cuda_broken else "skipped (CUDA context lost)"
                continue
            searching = r
            log(f"{cfg.name} {m}: largest batch (cap {args.largest_batch_seconds:g} s, "
                f"{args.largest_batch_attempts} attempts)")
            r["largest_batch"] = largest_batch(cfg, m, r, crec["batch"], base, base_oop, args, device)
            searching = None
            log_search(cfg, m, r["largest_batch"])
            save(results, args)
    except Unavailable as e:
        crec["status"] = f"unavailable ({e})"
        for m in todo:
            crec["results"][m] = {"status": crec["status"]}
        log(f"{cfg.name}: {crec['status']}")
    except KeyboardInterrupt:  # the time limit (timeout -s INT): keep what was measured, retry this once
        if current is not None:
            prev = crec["results"].get(current) or {}
            crec["results"][current] = {"status": "interrupted", "interrupted": prev.get("interrupted", 0) + 1}
        if searching is not None:
            searching["largest_batch"] = "skipped (interrupted)"
        log(f"{cfg.name}: interrupted" + (f" in {current}" if current else " in a largest-batch search"))
        raise
    except Exception as e:  # noqa: BLE001
        crec["error"] = first_line(e)
        crec["traceback"] = traceback.format_exc()
        log(f"{cfg.name}: fails: {first_line(e)}")
    finally:
        del base, base_oop, x, y
        reset_dynamo()
        free_memory()
        save(results, args)


def report(cfg: Config, m: str, r: dict, crec: dict, args) -> None:
    if r["status"] == "ok":
        ref = crec["results"].get("compile")
        rel = f" ({r['ms'] / ref['ms']:.2f}× compiled)" if ok(ref) and m != "compile" else ""
        pk = f", peak {r['peak_gib']:.3f} GiB" if r.get("peak_gib") is not None else ""
        log(f"{cfg.name} {m}: {r['ms']:.2f} ms/step{pk}{rel}; first step {r['first_step_s']:.1f} s")
        if args.print_plans and r.get("explain"):
            print(r["explain"], flush=True)
    else:
        log(f"{cfg.name} {m}: {r['status']}" + (f": {r['error']}" if r.get("error") else ""))
        if m.startswith("dp_") and r.get("traceback"):  # dpcompile's own failures: show where
            print("    " + "\n    ".join(r["traceback"].strip().splitlines()[-6:]), flush=True)


def main(argv=None) -> dict:
    global T0
    T0 = time.time()
    args = parse_args(argv)
    if args.print_configs:
        print("\n".join(args.configs))
        return {}
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    results = start_results(args, device)
    env = results["env"]
    log(f"{env['device']} | torch {env['torch']} | CUDA {env['cuda']} | {results['runs'][-1]['date_utc']} | "
        f"amp {args.amp} | "
        f"opacus {env['opacus']} | dpcompile {env['dpcompile']} | out {args.out}/{args.name}.*")
    if env.get("peers"):
        log(f"peers: {env['peers']}")

    if args.check:
        log(f"--check: models {args.check_models}, policies {args.policies}, backend {args.dp_backend}")
        try:
            run_check(args, device, results)
        except Exception as e:  # noqa: BLE001
            results["check"] = results.get("check", []) + [{"model": "*", "status": "fails", "error": first_line(e)}]
            log(f"check fails: {first_line(e)}")
        save(results, args)

    by_name = {c["name"]: c for c in results["configs"]}
    for cname in args.configs:
        cfg = CONFIGS[cname]
        batch = args.batch or cfg.batch
        title = cfg.title if args.batch is None else f"{cfg.title.rsplit(',', 1)[0]}, {batch}"
        crec = by_name.get(cname)
        if crec is not None and crec["batch"] != batch:
            raise SystemExit(f"--resume: {cname} was measured at batch {crec['batch']}, this run asks for {batch}")
        if crec is None:
            crec = by_name[cname] = {"name": cname, "title": title, "batch": batch,
                                     "input_shape": list(cfg.input_shape), "note": cfg.note, "results": {}}
            results["configs"].append(crec)
        crec.pop("status", None)
        crec.pop("error", None)
        if over_budget(args) or args.cuda_broken:
            why = "skipped (CUDA context lost)" if args.cuda_broken else "skipped (budget)"
            for m in args.methods:
                if not done(crec["results"].get(m)):
                    crec["results"][m] = {"status": why}
            results["skipped"].append(cname)
            log(f"{cname}: {why}")
            save(results, args)
            continue
        missing = missing_requirement(cfg)
        if missing:
            crec["status"] = f"unavailable ({missing})"
            for m in args.methods:
                if not done(crec["results"].get(m)):
                    crec["results"][m] = {"status": crec["status"]}
            log(f"{cname}: {crec['status']}")
            save(results, args)
            continue
        run_config(cfg, crec, args, device, results)

    results["total_s"] = results.get("total_s", 0.0) + time.time() - T0
    save(results, args)
    print("\n" + markdown(results, args), flush=True)
    log(f"wrote {os.path.join(args.out, args.name)}.json / .md")
    return results


if __name__ == "__main__":
    main()
