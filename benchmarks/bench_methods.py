"""bench.py's methods: each setup returns (step function, extra info) for a fresh copy of the model; method_setup
maps a method's name to its setup."""
from __future__ import annotations

import importlib
import os
import sys

import torch
import torch.nn as nn

from bench_common import amp_context, first_line
from bench_configs import Unavailable, loss_fn, per_sample_loss


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


def setup_dpcompile(model, x, y, args, policy="mixed", cuda_graphs=False, tf32=None, ghost_tf32=None):
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
    if method.startswith("dp_"):  # dp_<policy>[_ieee|_tf32|_alltf32][_graphs]
        rest = method[3:]
        graphs, rest = rest.endswith("_graphs"), rest.removesuffix("_graphs")
        tf32 = None  # the TF32 options as PyTorch's settings have each kind of product (DPConfig's default)
        for suffix, options in (("_ieee", (False, False)), ("_tf32", (True, False)), ("_alltf32", (True, True))):
            if rest.endswith(suffix):
                tf32, rest = options, rest.removesuffix(suffix)
        tf32, ghost_tf32 = tf32 or (None, None)
        return setup_dpcompile, {"policy": rest, "cuda_graphs": graphs, "tf32": tf32, "ghost_tf32": ghost_tf32}, False
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
