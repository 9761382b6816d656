"""dp_throughput.py with the fifty-eighth session's copy-free alignments (conv.COPY_FREE_ALIGNMENT_DEVICES: the padded
grid's rows widened, conv.grid_widening; the unfold's rows padded, conv.padded_rows) on for CUDA (on), off (the
default since the session's call 2), or one of them alone (grid, rows), for one A/B:
    python3 benchmarks/results/2026-12-07-s58/align_ab.py on|off|grid|rows [dp_throughput.py's arguments]
(Call 2 ran an earlier form, in which the alignments followed ALIGNED_OPERAND_DEVICES and "off" made both no-ops.)
Now a shorthand for the fifty-ninth session's align_run.py, which runs any benchmark script so."""
import runpy
import sys
from pathlib import Path

sys.argv.insert(2, "dp_throughput.py")
runpy.run_path(str(Path(__file__).resolve().parents[1] / "2026-12-07-s59" / "align_run.py"), run_name="__main__")
