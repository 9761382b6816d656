"""Runs a benchmark script (dp_throughput.py, peak_memory.py) with the fifty-eighth session's copy-free alignments
(conv.COPY_FREE_ALIGNMENT_DEVICES: the padded grid's rows widened, conv.grid_widening; the unfold's rows padded,
conv.padded_rows) on for CUDA (on), off (the default), or one of them alone (grid, rows):
    python3 benchmarks/results/2026-12-07-s59/align_run.py on|off|grid|rows SCRIPT [the script's arguments]
SCRIPT is a file name under benchmarks/ (dp_throughput.py, peak_memory.py)."""
import runpy
import sys
from pathlib import Path

from dpcompile.passes.rules import conv

mode, script = sys.argv.pop(1), sys.argv.pop(1)
assert mode in ("on", "off", "grid", "rows"), mode
if mode != "off":
    conv.COPY_FREE_ALIGNMENT_DEVICES = ("cuda",)
if mode == "grid":
    conv.padded_rows = lambda flat: flat
if mode == "rows":
    conv.grid_widening = lambda x, kernel, padding: 0
root = Path(__file__).resolve().parents[3]
sys.argv[0] = str(root / "benchmarks" / script)
sys.path.insert(0, str(root / "benchmarks"))
print("alignments:", mode, file=sys.stderr)
runpy.run_path(sys.argv[0], run_name="__main__")
