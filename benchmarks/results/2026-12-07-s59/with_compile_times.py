"""Runs a benchmark script under benchmarks/ and, at exit, prints Dynamo's per-phase compile times
(torch._dynamo.utils.compile_times: each timed function's total seconds over the process) to stderr:
    python3 benchmarks/results/2026-12-07-s59/with_compile_times.py SCRIPT [the script's arguments]"""
import atexit
import runpy
import sys
from pathlib import Path

import torch._dynamo.utils


def report():
    print("compile_times:", torch._dynamo.utils.compile_times(repr="str", aggregate=True), file=sys.stderr)


atexit.register(report)
root = Path(__file__).resolve().parents[3]
script = sys.argv.pop(1)
sys.argv[0] = str(root / "benchmarks" / script)
sys.path.insert(0, str(root / "benchmarks"))
runpy.run_path(sys.argv[0], run_name="__main__")
