#!/usr/bin/env python3
"""Time one training step and its peak GPU memory, side by side, for:

  eager           non-private, eager PyTorch
  compile         non-private, torch.compile(model) (default inductor; --compile-backend)
  compile_graphs  the same with CUDA graphs (mode="reduce-overhead")
  dp_<policy>     dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=sigma, policy=<policy>)
  dp_<policy>_graphs  the same with cuda_graphs=True (peak memory not reported: the CUDA graphs' pool is set up in
                  the warm-up and replays allocate nothing; reserved memory is kept in the JSON)
                  (the TF32 options at their default: convolutions' DP products on TF32 where cuDNN's are)
  dp_<policy>_ieee[_graphs]  with per_sample_tf32=False and ghost_tf32=False (every DP product IEEE fp32)
  dp_<policy>_tf32[_graphs]  with per_sample_tf32=True, ghost_tf32=False (per-sample gradients as TF32 products)
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

This file holds the command line, the timing and the run's loop; its parts beside it: bench_configs (the configs and
their batches), bench_methods (each method's setup), bench_largest (--largest-batch), bench_check (--check),
bench_report (JSON and markdown), bench_common (the clock, log and helpers they share).
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as _dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import traceback
import warnings

import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
if ROOT not in sys.path:
    sys.path.append(ROOT)  # an installed dpcompile (or PYTHONPATH) wins over the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its parts, bench_*.py, beside this file
from bench_configs import (CHECK_MODELS, CONFIG_GROUPS, CONFIGS, DEFAULT_CONFIGS, Config,  # noqa: E402
                           Unavailable, expand_configs, make_batch, missing_requirement)
from bench_report import markdown, method_order, ok, save  # noqa: E402
import bench_common as common  # noqa: E402
from bench_check import run_check  # noqa: E402
from bench_common import Captured, first_line, free_memory, log, over_budget, reset_dynamo, sync  # noqa: E402
from bench_largest import SteppedSetup, fatal_cuda_error, largest_batch, log_search, reuses_setup  # noqa: E402
from bench_methods import import_peer, method_setup  # noqa: E402


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

warnings.filterwarnings("ignore", message="Secure RNG turned off")
warnings.filterwarnings("ignore", message="Full backward hook is firing")
warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet implemented the batching")
warnings.filterwarnings("ignore", message="Using a non-full backward hook")  # fastDP's and private_vision's hooks


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
# Timing
# ------------------------------------------------------------------------------------------------

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
    common.T0 = time.time()
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

    results["total_s"] = results.get("total_s", 0.0) + time.time() - common.T0
    save(results, args)
    print("\n" + markdown(results, args), flush=True)
    log(f"wrote {os.path.join(args.out, args.name)}.json / .md")
    return results


if __name__ == "__main__":
    main()
