"""Run a benchmark script with some of passes.plan's constants set otherwise, for A/B timings of a plan rule in one
call on the GPU machine. From the repo root:
  python benchmarks/with_plan.py NAME=VALUE ... -- SCRIPT [SCRIPT's arguments ...]
e.g. python benchmarks/with_plan.py SHIFTED_CONV_MAX_PRODUCTS=0 -- benchmarks/dp_throughput.py --model wrn16_4 --size 32
(per-sample conv gradients by unfold everywhere). Values are Python literals; a name the plan lacks is an error."""
from __future__ import annotations

import ast
import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from dpcompile.passes import plan  # noqa: E402


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") + 1 >= len(argv):
        sys.exit(__doc__)
    split = argv.index("--")
    for setting in argv[:split]:
        name, _, value = setting.partition("=")
        if not hasattr(plan, name):
            sys.exit(f"passes.plan has no {name!r}")
        setattr(plan, name, ast.literal_eval(value))
    script = argv[split + 1]
    sys.argv = argv[split + 1:]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])
