"""triton_census.py (forty-sixth session) with the released gradients grouped for inductor or not: the DP backward's
Triton launches by stage, without a GPU, for passes.rewrite.FOREACH_RELEASE_DEVICES = ("cpu",) against ().
Usage: TORCHINDUCTOR_CACHE_DIR=<empty dir> python census_release.py on|off MODEL SIZE BATCH [TOP]"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "2026-12-05-s46"))
import triton_census  # noqa: E402  (sets inductor's Triton CPU backend and the stubs)

from dpcompile.passes import rewrite  # noqa: E402

if __name__ == "__main__":
    rewrite.FOREACH_RELEASE_DEVICES = ("cpu",) if sys.argv.pop(1) == "on" else ()
    triton_census.main()
