"""results/2026-12-07-s63/compile_census.py (the census's first step, timed: Triton code for the CPU, never compiled)
with the released gradients grouped for inductor or not (passes.rewrite.FOREACH_RELEASE_DEVICES = ("cpu",) or ()).
MODEL, SIZE, BATCH from the environment as there. In a venv with Triton:
    TORCHINDUCTOR_CACHE_DIR=<empty dir> BATCH=16 python compile_release.py on|off"""
import pathlib
import runpy
import sys

results = pathlib.Path(__file__).resolve().parents[1]
sys.path[:0] = [str(results / "2026-12-05-s46"), str(results / "2026-12-07-s63")]
from dpcompile.passes import rewrite  # noqa: E402

rewrite.FOREACH_RELEASE_DEVICES = ("cpu",) if sys.argv[1] == "on" else ()
print("FOREACH_RELEASE_DEVICES", rewrite.FOREACH_RELEASE_DEVICES)
sys.argv = [sys.argv[0], "default"]
runpy.run_path(str(results / "2026-12-07-s63" / "compile_census.py"), run_name="__main__")
