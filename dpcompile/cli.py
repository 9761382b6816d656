"""The command line: `python -m dpcompile {epsilon,calibrate,explain} ...` (errors as one line, exit 2)."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .config import AUTO_EXTRA_MEMORY
from .errors import DPCompileError


def positive_ints(text: str) -> tuple[int, ...]:
    """'3,32,32' -> (3, 32, 32)."""
    try:
        sizes = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sizes


def steps_of(args) -> int:
    """--steps, or the steps of --epochs at the sample rate."""
    from .privacy.accounting import steps_for
    return args.steps if args.steps is not None else steps_for(args.epochs, args.sample_rate)


def cmd_epsilon(args) -> str:
    """ε spent by `steps` Poisson-subsampled Gaussian steps."""
    from .privacy.accounting import Accountant
    accountant = Accountant(args.accountant)
    accountant.record(args.noise_multiplier, args.sample_rate, steps_of(args))
    return f"{accountant.epsilon(args.delta):.6g}"


def cmd_calibrate(args) -> str:
    """The smallest σ whose ε after `steps` steps is at most the target."""
    from .privacy.accounting import calibrate_noise_multiplier
    return f"{calibrate_noise_multiplier(args.epsilon, args.delta, args.sample_rate, steps_of(args), mechanism=args.accountant):.6g}"


def load_factory(spec: str):
    """'package.module:factory' -> the callable."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DPCompileError(f"expected package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DPCompileError(f"cannot import {module_name!r}: {exc}") from exc
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise DPCompileError(f"{module_name!r} has no callable {attr!r}")
    return factory


def cmd_explain(args) -> str:
    """The per-layer plan for a model built by a factory, on one random batch (no training)."""
    import torch

    from .api import dpcompile
    model = load_factory(args.factory)()
    if not isinstance(model, torch.nn.Module):
        raise DPCompileError(f"{args.factory} returned a {type(model).__name__}, not an nn.Module")
    shape = (args.batch, *args.input_shape)
    x = torch.randint(0, args.vocab, shape) if args.vocab else torch.randn(shape)
    dp = dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, policy=args.policy, backend="eager",
                   auto_extra_memory=args.auto_extra_memory)
    dp(x).float().square().sum().backward()
    return str(dp.explain())


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m dpcompile", description="dpcompile: privacy accounting and plans.")
    sub = p.add_subparsers(dest="command", required=True)

    def accounting(q: argparse.ArgumentParser) -> None:
        q.add_argument("--sample-rate", type=float, required=True, help="Poisson sampling rate q (batch / dataset size)")
        q.add_argument("--delta", type=float, required=True, help="δ of the (ε, δ) guarantee")
        when = q.add_mutually_exclusive_group(required=True)
        when.add_argument("--steps", type=int, help="number of noisy steps")
        when.add_argument("--epochs", type=float, help="epochs (steps = epochs / sample rate)")
        q.add_argument("--accountant", choices=("pld", "rdp"), default="pld", help="dp-accounting's PLD (default) or RDP")

    e = sub.add_parser("epsilon", help="ε spent by DP-SGD with noise multiplier σ", description="Print ε.")
    e.add_argument("--noise-multiplier", type=float, required=True, help="σ: noise std = σ·R")
    accounting(e)
    e.set_defaults(run=cmd_epsilon)

    c = sub.add_parser("calibrate", help="σ that reaches a target ε", description="Print the noise multiplier σ.")
    c.add_argument("--epsilon", type=float, required=True, help="target ε")
    accounting(c)
    c.set_defaults(run=cmd_calibrate)

    x = sub.add_parser("explain", help="per-layer plan of a model, without training",
                       description="Print the per-layer plan (sizes, both methods' costs, the choice).")
    x.add_argument("factory", help="package.module:factory, a callable returning the nn.Module")
    x.add_argument("--input-shape", type=positive_ints, required=True, help="one sample's shape, e.g. 3,32,32")
    x.add_argument("--batch", type=int, default=2, help="batch size of the random batch (default 2)")
    x.add_argument("--vocab", type=int, default=0, help="integer token inputs in [0, vocab) instead of floats")
    x.add_argument("--policy", choices=("mixed", "ghost", "per_sample", "auto"), default="auto")
    x.add_argument("--auto-extra-memory", type=float, default=AUTO_EXTRA_MEMORY, metavar="SHARE",
                   help="policy auto's memory cap: the share of the saved tensors its per-sample gradients may hold "
                        f"beyond mixed's plan (default {AUTO_EXTRA_MEMORY}; lower trades step time for memory)")
    x.set_defaults(run=cmd_explain)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a user error prints one line and returns 2."""
    args = parser().parse_args(argv)
    try:
        print(args.run(args))
    except (DPCompileError, ValueError) as exc:
        print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
        return 2
    return 0
