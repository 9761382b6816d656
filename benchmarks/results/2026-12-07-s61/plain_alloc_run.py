"""Runs a benchmark script (dp_throughput.py, peak_memory.py) with the lowered kernels' output buffers allocated as
before the sixty-first session (inductor's empty_strided, free to move before its operands) instead of
ops.empty_after, for a before/after in one call:
    python3 benchmarks/results/2026-12-07-s61/plain_alloc_run.py SCRIPT [the script's arguments]"""
import runpy
import sys
from pathlib import Path

from torch._inductor.lowering import empty_strided

from dpcompile import ops

ops.empty_after = lambda size, stride, dtype, device, *operands: empty_strided(size, stride, dtype=dtype, device=device)
script = sys.argv.pop(1)
root = Path(__file__).resolve().parents[3]
sys.argv[0] = str(root / "benchmarks" / script)
sys.path.insert(0, str(root / "benchmarks"))
print("plain allocations (empty_strided)", file=sys.stderr)
runpy.run_path(sys.argv[0], run_name="__main__")
