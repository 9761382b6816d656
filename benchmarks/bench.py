#!/usr/bin/env python3
"""Time one training step and its peak GPU memory, side by side, for:

  eager           non-private, eager PyTorch
  compile         non-private, torch.compile(model) (default inductor)
  dp_<policy>     dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=sigma, policy=<policy>)
  opacus          Opacus PrivacyEngine.make_private (grad_sample_mode="hooks")
  opacus_ghost    Opacus PrivacyEngine.make_private (grad_sample_mode="ghost", two backward passes)
  opacus_oop, opacus_ghost_oop   the same, on the ResNets with an out-of-place residual add
                  (opt-in; the stock torchvision `out += identity` makes Opacus fail)

Every step: loss = F.cross_entropy(model(x), y); loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
with SGD(lr=0.1), fp32, on one synthetic (random) batch of the configured shape. Time per step: median of
--steps timed steps after --warmup steps (the first warm-up step includes compilation), each step bracketed
by torch.cuda.synchronize() + time.perf_counter(). Peak memory: torch.cuda.max_memory_allocated() over the
timed steps, after reset_peak_memory_stats() (model, optimizer state and batch included).

--check compares dpcompile's gradient (noise_multiplier=0) with a torch.func per-sample reference before timing.

Usage (GPU):  python benchmarks/bench.py --configs resnet18_32,wrn16_4_32 --check --budget-seconds 540
Usage (CPU):  python benchmarks/bench.py --configs smoke --methods eager,compile --dp-backend eager
"""
from __future__ import annotations

import argparse
import copy
import datetime as _dt
import gc
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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
if ROOT not in sys.path:
    sys.path.append(ROOT)  # an installed dpcompile (or PYTHONPATH) wins over the source tree
import models as zoo  # noqa: E402  (examples/models.py)


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


def log(*a) -> None:
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


# ------------------------------------------------------------------------------------------------
# Configurations
# ------------------------------------------------------------------------------------------------

@dataclass
class Config:
    name: str
    title: str                       # row label, e.g. "ResNet-18, 32², 256"
    build: Callable[[], nn.Module]
    input_shape: tuple               # per sample; for token models: (T,)
    num_classes: int                 # for token models: the vocabulary size of the targets
    batch: int
    tokens: bool = False             # integer token input (B, T) instead of float images
    vocab: int = 0                   # token ids are drawn from [0, vocab)
    seq_targets: bool = False        # targets (B, T) and logits (B, T, V): next-token loss
    build_oop: Callable[[], nn.Module] | None = None   # out-of-place residual variant (Opacus)
    note: str = ""


CONFIGS: dict[str, Config] = {c.name: c for c in [
    # The peers' table (benchmarks in /work/shared/notes/peers.md).
    Config("resnet18_32", "ResNet-18, 32², 256", lambda: zoo.resnet18_gn(10, small_input=True), (3, 32, 32), 10, 256,
           build_oop=lambda: zoo.resnet18_gn(10, small_input=True, inplace_residual=False)),
    Config("wrn16_4_32", "WRN-16-4, 32², 256", lambda: zoo.wrn16_4(10), (3, 32, 32), 10, 256),
    Config("resnet18_224", "ResNet-18, 224², 64", lambda: zoo.resnet18_gn(1000, small_input=False), (3, 224, 224), 1000, 64,
           build_oop=lambda: zoo.resnet18_gn(1000, small_input=False, inplace_residual=False)),
    Config("resnet50_224", "ResNet-50, 224², 32", lambda: zoo.resnet50_gn(1000), (3, 224, 224), 1000, 32,
           build_oop=lambda: zoo.resnet50_gn(1000, inplace_residual=False)),
    Config("vit_s16_224", "ViT-S/16, 224², 64", lambda: zoo.vit_s16(1000), (3, 224, 224), 1000, 64),
    # Extras (not in the default set).
    Config("vit_tiny_32", "ViT-Tiny/4 (6 blocks), 32², 256", lambda: zoo.vit(), (3, 32, 32), 10, 256),
    Config("small_cnn_32", "small CNN, 32², 256", lambda: zoo.small_cnn(10), (3, 32, 32), 10, 256),
    Config("convnext_32", "ConvNeXt blocks, 32², 256", lambda: zoo.convnext_block_model(10, dims=(64, 128), blocks=2),
           (3, 32, 32), 10, 256),
    Config("mobilenet_32", "MobileNet blocks, 32², 256", lambda: zoo.mobilenet_block_model(10), (3, 32, 32), 10, 256),
    Config("text_conv1d", "text Conv1d, T=256, 256", lambda: zoo.text_conv1d(vocab=20000, embed_dim=128, channels=128),
           (256,), 2, 256, tokens=True, vocab=20000),
    Config("conv3d", "3-D CNN, 16×32², 64", lambda: zoo.conv3d_model(10, in_channels=1, width=16), (1, 16, 32, 32), 10, 64),
    Config("gpt_small", "GPT small (4×256, tied), T=128, 32", lambda: zoo.gpt_small(8192, 256, 4, 4, 128), (128,), 8192, 32,
           tokens=True, vocab=8192, seq_targets=True, note="loss is the mean over B·T tokens"),
    # CPU smoke tests.
    Config("smoke", "smoke: small CNN w8, 32², 16", lambda: zoo.small_cnn(10, width=8), (3, 32, 32), 10, 16),
    Config("smoke_vit", "smoke: ViT d24×2, 16², 8", lambda: zoo.vit(16, 4, 24, 2, 3, 10), (3, 16, 16), 10, 8),
    Config("smoke_resnet", "smoke: ResNet-18 w8, 16², 8", lambda: zoo.resnet18_gn(10, width=8), (3, 16, 16), 10, 8,
           build_oop=lambda: zoo.resnet18_gn(10, width=8, inplace_residual=False)),
]}
DEFAULT_CONFIGS = "resnet18_32,wrn16_4_32,resnet18_224,resnet50_224,vit_s16_224"

CHECK_MODELS: dict[str, tuple[Callable[[], nn.Module], tuple, int]] = {
    "small_cnn": (lambda: zoo.small_cnn(10, width=16), (3, 32, 32), 10),
    "vit_tiny": (lambda: zoo.vit(16, 4, 48, 2, 3, 10), (3, 16, 16), 10),
    "resnet_tiny": (lambda: zoo.resnet18_gn(10, width=8), (3, 16, 16), 10),
    "mobilenet": (lambda: zoo.mobilenet_block_model(10, width=8), (3, 32, 32), 10),
    "convnext": (lambda: zoo.convnext_block_model(10, dims=(16, 32), blocks=1, layer_scale=0.5), (3, 16, 16), 10),
}


def make_batch(cfg: Config, device: torch.device, batch: int | None = None, seed: int = 0):
    b = batch or cfg.batch
    g = torch.Generator().manual_seed(seed)
    if cfg.tokens:
        x = torch.randint(0, cfg.vocab, (b, *cfg.input_shape), generator=g)
    else:
        x = torch.randn(b, *cfg.input_shape, generator=g)
    y_shape = (b, *cfg.input_shape) if cfg.seq_targets else (b,)
    y = torch.randint(0, cfg.num_classes, y_shape, generator=g)
    return x.to(device), y.to(device)


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if out.dim() == 3:  # (B, T, V) logits, (B, T) targets
        return F.cross_entropy(out.flatten(0, 1), y.flatten())
    return F.cross_entropy(out, y)


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

def sgd_step(forward, model, x, y, args):
    """One training step through `forward`, updating `model`'s parameters with SGD."""
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)

    def step():
        loss = loss_fn(forward(x), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def setup_eager(model, x, y, args, policy=None):
    return sgd_step(model, model, x, y, args), {}


def setup_compile(model, x, y, args, policy=None):
    return sgd_step(torch.compile(model), model, x, y, args), {}


def setup_dpcompile(model, x, y, args, policy="mixed"):
    import dpcompile
    dp_model = dpcompile.dpcompile(model, max_grad_norm=args.max_grad_norm, noise_multiplier=args.noise_multiplier,
                                   policy=policy, backend=args.dp_backend)
    step = sgd_step(dp_model, model, x, y, args)

    def explain():
        try:
            return str(dp_model.explain())
        except Exception as e:  # noqa: BLE001
            return f"explain() failed: {first_line(e)}"
    return step, {"explain": explain}


def setup_opacus(model, x, y, args, policy=None, ghost=False):
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    loader = DataLoader(TensorDataset(x, y), batch_size=x.shape[0])
    engine = PrivacyEngine()
    kw = dict(module=model, optimizer=opt, data_loader=loader, noise_multiplier=args.noise_multiplier,
              max_grad_norm=args.max_grad_norm, poisson_sampling=False)
    if ghost:
        pmodel, popt, crit, _ = engine.make_private(**kw, criterion=nn.CrossEntropyLoss(), grad_sample_mode="ghost")

        def step():
            out = pmodel(x)
            loss = crit(out.flatten(0, 1), y.flatten()) if out.dim() == 3 else crit(out, y)
            loss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
    else:
        pmodel, popt, _ = engine.make_private(**kw)

        def step():
            loss = loss_fn(pmodel(x), y)
            loss.backward()
            popt.step()
            popt.zero_grad(set_to_none=True)
    return step, {}


def method_setup(method: str):
    """-> (setup function, kwargs, use the out-of-place model variant)."""
    if method == "eager":
        return setup_eager, {}, False
    if method == "compile":
        return setup_compile, {}, False
    if method.startswith("dp_"):
        return setup_dpcompile, {"policy": method[3:]}, False
    if method in ("opacus", "opacus_oop"):
        return setup_opacus, {"ghost": False}, method.endswith("_oop")
    if method in ("opacus_ghost", "opacus_ghost_oop"):
        return setup_opacus, {"ghost": True}, method.endswith("_oop")
    raise ValueError(f"unknown method {method!r}")


METHOD_TITLES = {
    "eager": "non-DP eager", "compile": "non-DP torch.compile", "opacus": "Opacus hooks",
    "opacus_ghost": "Opacus ghost", "opacus_oop": "Opacus hooks (out-of-place add)",
    "opacus_ghost_oop": "Opacus ghost (out-of-place add)",
}


def method_title(m: str, args) -> str:
    if m.startswith("dp_"):
        return f"dpcompile {m[3:]}" + ("" if args.dp_backend == "inductor" else f" ({args.dp_backend})")
    return METHOD_TITLES.get(m, m)


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------

def time_method(cfg: Config, method: str, base: nn.Module, base_oop: nn.Module | None, x, y, args,
                device: torch.device) -> dict:
    setup, kw, oop = method_setup(method)
    if oop and base_oop is None:
        return {"status": "n/a", "error": "no out-of-place variant for this model"}
    free_memory()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    model = copy.deepcopy(base_oop if oop else base).to(device).train()
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


FLOOR_FACTOR = 3.0


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

def cell(r: dict | None, ref: dict | None, short: bool = False) -> str:
    if r is None:
        return ""
    if r["status"] != "ok":
        if r["status"] == "fails":
            msg = r["error"]
            return "fails: " + (msg[:70] + "…" if short and len(msg) > 70 else msg).replace("|", "\\|")
        return r["status"]
    s = f"{r['ms']:.1f}"
    if r.get("peak_gib") is not None:
        s += f", {r['peak_gib']:.2f}"
    if ref and ref.get("status") == "ok" and ref is not r:
        s += f" ({r['ms'] / ref['ms']:.2f}×)"
    return s


def markdown(results: dict, args) -> str:
    env = results["env"]
    L = [f"# dpcompile benchmark — {env['device']}", "",
         f"- date: {env['date_utc']}; torch {env['torch']}; CUDA {env['cuda']}; cuDNN {env['cudnn']}; "
         f"Python {env['python']}; opacus {env['opacus']}; dpcompile {env['dpcompile']}; git {env['git']}",
         f"- {env['inputs']}; fp32 (TF32 matmul {env['tf32_matmul']}, TF32 cuDNN conv {env['tf32_cudnn']}, "
         f"cudnn.benchmark {env['cudnn_benchmark']}); SGD lr {args.lr}; σ={args.noise_multiplier}, R={args.max_grad_norm}; "
         f"dpcompile backend {args.dp_backend}",
         f"- ms/step: median of {args.steps} timed steps (synchronize + perf_counter around each) after "
         f"{args.warmup} warm-up steps; peak GiB: torch.cuda.max_memory_allocated over the timed steps; "
         f"(×) time relative to non-DP torch.compile.", ""]
    methods = results["methods"] if results["configs"] else []
    if methods:
        L += ["| model, input, batch | " + " | ".join(method_title(m, args) for m in methods) + " |",
              "| --- |" + " --- |" * len(methods)]
        for c in results["configs"]:
            rs = c["results"]
            L.append(f"| {c['title']} | "
                     + " | ".join(cell(rs.get(m), rs.get("compile"), short=True) for m in methods) + " |")
        L += ["", "Cells: ms/step, peak GiB (time ÷ non-DP compiled).", "",
              "## Details", "",
              "| config | method | ms/step median | min | back-to-back | peak GiB | × compiled time | "
              "× compiled memory | first step s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c in results["configs"]:
        ref = c["results"].get("compile")
        okref = ref is not None and ref.get("status") == "ok"
        for m in methods:
            r = c["results"].get(m)
            if r is None:
                continue
            if r["status"] != "ok":
                L.append(f"| {c['name']} | {method_title(m, args)} | {cell(r, None)} | | | | | | |")
                continue
            tr = f"{r['ms'] / ref['ms']:.2f}" if okref else "—"
            mr = (f"{r['peak_gib'] / ref['peak_gib']:.2f}" if okref and r.get("peak_gib") and ref.get("peak_gib")
                  else "—")
            pk = f"{r['peak_gib']:.3f}" if r.get("peak_gib") is not None else "—"
            L.append(f"| {c['name']} | {method_title(m, args)} | {r['ms']:.2f} | {r['ms_min']:.2f} | "
                     f"{r['ms_pipelined']:.2f} | {pk} | {tr} | {mr} | {r['first_step_s']:.1f} |")
        if c.get("error"):
            L.append(f"| {c['name']} | (config) | fails: {c['error']} | | | | | | |")
    if results.get("check"):
        L += ["", "## Gradient check (dpcompile, σ=0, vs torch.func per-sample reference, TF32 off, R = median per-sample norm)", "",
              "| model | policy | max relative error (param) | whole gradient | vs fp32 reference: max, whole | "
              "fp32 reference's own error | worst error ÷ allowed (param) | R | clipped | result |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["check"]:
            if r.get("status") == "ok":
                L.append(f"| {r['model']} | {r['policy']} | {r['max_rel_err']:.2e} ({r['worst_param']}) | "
                         f"{r['total_rel_err']:.2e} | {r['max_rel_err_vs_f32']:.2e}, {r['total_rel_err_vs_f32']:.2e} | "
                         f"{r['fp32_floor']:.2e} | {r['worst_over_allowed']:.2f} ({r['worst_over_allowed_param']}) | "
                         f"{r['clip']:.3g} | {r['frac_clipped']:.0%} | {'PASS' if r['passed'] else 'FAIL'} |")
            else:
                L.append(f"| {r['model']} | {r.get('policy', '')} | {r['status']}: {r.get('error', '')} | | | | | | | |")
        L += ["", "Relative errors ‖Δ‖/‖ref‖ of dpcompile's gradient (σ=0, fp32) against the torch.func per-sample "
                  "reference computed in float64 (and, secondary, in fp32). Allowed, per parameter and for the whole "
                  f"gradient: max({args.check_tol:g}, {FLOOR_FACTOR:g} × the fp32 reference's own error against "
                  "float64). PASS: all within, and no parameter without a gradient."]
    if results.get("skipped"):
        L += ["", f"Skipped (budget of {args.budget_seconds} s): {', '.join(results['skipped'])}"]
    return "\n".join(L) + "\n"


def save(results: dict, args) -> None:
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    js = json.loads(json.dumps(results, default=str))
    with open(stem + ".json", "w") as f:
        json.dump(js, f, indent=1)
    with open(stem + ".md", "w") as f:
        f.write(markdown(results, args))
    plans = [(c["name"], m, r["explain"]) for c in results["configs"] for m, r in c["results"].items() if r.get("explain")]
    if plans:
        with open(stem + "-plans.txt", "w") as f:
            for cname, m, text in plans:
                f.write(f"==== {cname} / {m} ====\n{text}\n\n")


def over_budget(args) -> bool:
    return args.budget_seconds is not None and time.time() - T0 > args.budget_seconds


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", default=DEFAULT_CONFIGS,
                   help=f"comma-separated, 'all', or 'none' (check only). Known: {', '.join(CONFIGS)}")
    p.add_argument("--methods", default="eager,compile,dpcompile,opacus,opacus_ghost",
                   help="comma-separated from eager, compile, dpcompile (= one run per --policies), "
                        "opacus, opacus_ghost, opacus_oop, opacus_ghost_oop")
    p.add_argument("--policies", default="mixed,auto", help="dpcompile policies, comma-separated")
    p.add_argument("--dp-backend", default="inductor", choices=["inductor", "eager"])
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
    p.add_argument("--no-explain", dest="explain", action="store_false", help="don't store dp_model.explain()")
    p.add_argument("--print-plans", action="store_true", help="print dp_model.explain() for each dpcompile run")
    p.add_argument("--cudnn-benchmark", action="store_true")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    args = p.parse_args(argv)
    args.policies = [s for s in args.policies.split(",") if s]
    methods = []
    for m in [s for s in args.methods.split(",") if s]:
        methods += [f"dp_{pol}" for pol in args.policies] if m == "dpcompile" else [m]
    args.methods = methods
    if args.configs == "all":
        args.configs = [c for c in CONFIGS if not c.startswith("smoke")]
    elif args.configs in ("", "none"):
        args.configs = []
    else:
        args.configs = [s for s in args.configs.split(",") if s]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; known: {list(CONFIGS)}")
    for m in args.methods:
        method_setup(m)
    if args.name is None:
        args.name = "bench-" + _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    results = {"env": environment(device), "args": {k: v for k, v in vars(args).items()},
               "methods": args.methods, "configs": [], "skipped": []}
    env = results["env"]
    log(f"{env['device']} | torch {env['torch']} | CUDA {env['cuda']} | {env['date_utc']} | opacus {env['opacus']} "
        f"| dpcompile {env['dpcompile']} | out {args.out}/{args.name}.*")

    if args.check:
        log(f"--check: models {args.check_models}, policies {args.policies}, backend {args.dp_backend}")
        try:
            run_check(args, device, results)
        except Exception as e:  # noqa: BLE001
            results["check"] = results.get("check", []) + [{"model": "*", "status": "fails", "error": first_line(e)}]
            log(f"check fails: {first_line(e)}")
        save(results, args)

    for cname in args.configs:
        cfg = CONFIGS[cname]
        if over_budget(args):
            results["skipped"].append(cname)
            log(f"{cname}: skipped (budget)")
            continue
        batch = args.batch or cfg.batch
        title = cfg.title if args.batch is None else f"{cfg.title.rsplit(',', 1)[0]}, {batch}"
        crec = {"name": cname, "title": title, "batch": batch, "input_shape": list(cfg.input_shape),
                "note": cfg.note, "results": {}}
        results["configs"].append(crec)
        base = base_oop = x = y = None
        try:
            torch.manual_seed(0)
            base = cfg.build()
            if cfg.build_oop is not None and any(m.endswith("_oop") for m in args.methods):
                torch.manual_seed(0)
                base_oop = cfg.build_oop()
            crec["params_m"] = sum(p.numel() for p in base.parameters()) / 1e6
            x, y = make_batch(cfg, device, batch)
            log(f"== {cname}: {title}, {crec['params_m']:.2f}M params, x {tuple(x.shape)}")
            for m in args.methods:
                if over_budget(args):
                    crec["results"][m] = {"status": "skipped (budget)"}
                    log(f"{cname} {m}: skipped (budget)")
                    continue
                reset_dynamo()
                try:
                    r = time_method(cfg, m, base, base_oop, x, y, args, device)
                except Exception as e:  # noqa: BLE001
                    r = {"status": "fails", "error": first_line(e), "traceback": traceback.format_exc()}
                    e = None  # noqa: F841  (drop the frames that hold GPU tensors)
                crec["results"][m] = r
                if r["status"] == "ok":
                    ref = crec["results"].get("compile")
                    rel = f" ({r['ms'] / ref['ms']:.2f}× compiled)" if ref and ref.get("status") == "ok" and m != "compile" else ""
                    pk = f", peak {r['peak_gib']:.3f} GiB" if r.get("peak_gib") is not None else ""
                    log(f"{cname} {m}: {r['ms']:.2f} ms/step{pk}{rel}; first step {r['first_step_s']:.1f} s")
                    if args.print_plans and r.get("explain"):
                        print(r["explain"], flush=True)
                else:
                    log(f"{cname} {m}: {r['status']}: {r.get('error', '')}")
                    if m.startswith("dp_") and r.get("traceback"):  # dpcompile's own failures: show where
                        print("    " + "\n    ".join(r["traceback"].strip().splitlines()[-6:]), flush=True)
                reset_dynamo()
                free_memory()
                save(results, args)
        except Exception as e:  # noqa: BLE001
            crec["error"] = first_line(e)
            crec["traceback"] = traceback.format_exc()
            log(f"{cname}: fails: {first_line(e)}")
        finally:
            del base, base_oop, x, y
            reset_dynamo()
            free_memory()
            save(results, args)

    results["total_s"] = time.time() - T0
    save(results, args)
    print("\n" + markdown(results, args), flush=True)
    log(f"wrote {os.path.join(args.out, args.name)}.json / .md")
    return results


if __name__ == "__main__":
    main()
