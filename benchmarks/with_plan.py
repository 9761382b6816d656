"""Run a benchmark script with some of the plan's constants set otherwise (those of passes.plan, passes.rules.conv's
choice of how per-sample convolution gradients are formed, passes.rules.bounds' HALF_GRAM_DEVICES and
FUSED_GRAM_DEVICES, dpcompile.backend's STRICT_ARITHMETIC (the DP graphs' inductor arithmetic settings) and dpcompile.ops' lowering
switches such as HALF_GRAM_ROW_ALIGN), for A/B timings of a plan rule in one call on the GPU machine. From the repo
root:
  python benchmarks/with_plan.py NAME=VALUE ... -- SCRIPT [SCRIPT's arguments ...]
e.g. python benchmarks/with_plan.py SHIFTED_CONV_MAX_PRODUCTS=0 -- benchmarks/dp_throughput.py --model wrn16_4 --size 32
(per-sample conv gradients by unfold everywhere). Values are Python literals; a name that none of these modules
has, or that more than one has, is an error."""
from __future__ import annotations

import ast
import importlib
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpcompile.passes import plan  # noqa: E402
from dpcompile.passes.rules import bounds, conv  # noqa: E402

backend = importlib.import_module("dpcompile.backend")  # the module (dpcompile.backend is also a function's name)
ops = importlib.import_module("dpcompile.ops")
MODULES = (plan, conv, bounds, backend, ops)  # where the plan's constants live


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") + 1 >= len(argv):
        sys.exit(__doc__)
    split = argv.index("--")
    for setting in argv[:split]:
        name, _, value = setting.partition("=")
        owners = [m for m in MODULES if name.isupper() and hasattr(m, name)]
        if len(owners) != 1:
            sys.exit(f"{name!r} is a constant of {len(owners)} of: {', '.join(m.__name__ for m in MODULES)}")
        setattr(owners[0], name, ast.literal_eval(value))
    script = argv[split + 1]
    sys.argv = argv[split + 1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
