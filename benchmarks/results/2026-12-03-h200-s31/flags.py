"""dp_throughput.py with module flags set first (a run's variant of the committed code, for a same-call comparison):
python3 flags.py dpcompile.backend.STATIC_BATCH_LAYOUT=True -- benchmarks/dp_throughput.py <its arguments>."""
import importlib
import runpy
import sys

split = sys.argv.index("--")
for item in sys.argv[1:split]:
    target, value = item.split("=", 1)
    module, attr = target.rsplit(".", 1)
    setattr(importlib.import_module(module), attr, {"True": True, "False": False}[value])
    print(f"{target} = {value}", file=sys.stderr)
sys.argv = sys.argv[split + 1:]
runpy.run_path(sys.argv[0], run_name="__main__")
