"""bench.py's --check: dpcompile's clipped gradient against a torch.func per-sample reference."""
from __future__ import annotations

import copy
import math
import traceback

import torch
import torch.nn as nn

from bench_common import first_line, free_memory, log, over_budget, reset_dynamo
from bench_configs import CHECK_MODELS, loss_fn
from bench_report import FLOOR_FACTOR


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
