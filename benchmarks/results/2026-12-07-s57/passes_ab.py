"""pass_times.py with the snippet traces through emit.record (lean) or make_fx alone (make_fx), for one A/B:
    python3 benchmarks/results/2026-12-07-s57/passes_ab.py lean|make_fx [pass_times.py's arguments]"""
import runpy
import sys
from pathlib import Path

from dpcompile.passes import emit

mode = sys.argv.pop(1)
if mode == "make_fx":
    def no_record(fn, values):
        raise emit.NotRecorded("make_fx alone")
    emit.record = no_record
root = Path(__file__).resolve().parents[3]
sys.argv[0] = str(root / "benchmarks/pass_times.py")
sys.path.insert(0, str(root / "benchmarks"))
print("snippets:", mode)
runpy.run_path(sys.argv[0], run_name="__main__")
