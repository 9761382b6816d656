"""dp_throughput.py with the shifted per-sample products over the padded x's windows (conv.SHIFTED_STACKED = False):
one product per kernel position and no stacked copy of x, against the default's three products on x stacked. The
flag lived in the working tree for call 2 only (no gain measured, not committed), so this file no longer runs."""
import runpy
import sys

import dpcompile.passes.rules.conv as conv

conv.SHIFTED_STACKED = False
sys.argv = ["benchmarks/dp_throughput.py", *sys.argv[1:]]
runpy.run_path("benchmarks/dp_throughput.py", run_name="__main__")
