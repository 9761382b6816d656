"""dp_throughput.py with the fifty-eighth session's copy-free alignments (conv.COPY_FREE_ALIGNMENT_DEVICES: the padded
grid's rows widened, conv.grid_widening; the unfold's rows padded, conv.padded_rows) on for CUDA (on), off (the
default since the session's call 2), or one of them alone (grid, rows), for one A/B:
    python3 benchmarks/results/2026-12-07-s58/align_ab.py on|off|grid|rows [dp_throughput.py's arguments]
(Call 2 ran an earlier form, in which the alignments followed ALIGNED_OPERAND_DEVICES and "off" made both no-ops.)"""
import runpy
import sys
from pathlib import Path

from dpcompile.passes.rules import conv

mode = sys.argv.pop(1)
assert mode in ("on", "off", "grid", "rows"), mode
if mode != "off":
    conv.COPY_FREE_ALIGNMENT_DEVICES = ("cuda",)
if mode == "grid":
    conv.padded_rows = lambda flat: flat
if mode == "rows":
    conv.grid_widening = lambda x, kernel, padding: 0
root = Path(__file__).resolve().parents[3]
sys.argv[0] = str(root / "benchmarks/dp_throughput.py")
sys.path.insert(0, str(root / "benchmarks"))
print("alignments:", mode, file=sys.stderr)
runpy.run_path(sys.argv[0], run_name="__main__")
