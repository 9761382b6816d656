"""Runs a benchmark script (dp_throughput.py, peak_memory.py) with plan.AUTO_EXTRA_MEMORY (the share of the saved
tensors that `auto`'s per-sample gradients may hold beyond the paper rule's plan) set to VALUE:
    python3 benchmarks/results/2026-12-07-s60/cap_run.py VALUE SCRIPT [the script's arguments]
For the code the session's calls ran (a755e48), where the cap was that module constant; since then it is dpcompile's
setting auto_extra_memory, and the scripts take --auto-extra-memory (this runner refuses newer code)."""
import runpy
import sys
from pathlib import Path

from dpcompile.passes import plan

value, script = float(sys.argv.pop(1)), sys.argv.pop(1)
assert hasattr(plan, "AUTO_EXTRA_MEMORY"), "the cap is dpcompile's auto_extra_memory now: pass --auto-extra-memory"
plan.AUTO_EXTRA_MEMORY = value
root = Path(__file__).resolve().parents[3]
sys.argv[0] = str(root / "benchmarks" / script)
sys.path.insert(0, str(root / "benchmarks"))
print("AUTO_EXTRA_MEMORY:", value, file=sys.stderr)
runpy.run_path(sys.argv[0], run_name="__main__")
