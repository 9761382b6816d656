"""Session 37, not run (no device time was left); for a session where s38_call1.sh still shows a DP graph that the
C++ wrapper fails on: which part of it fails. Session 37's call 3: WRN-16-4 bf16 under cpp_wrapper=True, the DP
backward ran without inductor ("CppCompileError"). One variant per process: default, no_conv_kernel
(IMPLICIT_CONV_DEVICES=()), no_half (HALF_GRAM_DEVICES=()), neither, fp32 (TF32 ops). The warning raised as an
error, so the traceback carries inductor's whole message. Run: python3 cpp_wrapper_probe.py VARIANT OUTDIR."""
import sys, time, traceback, warnings
import torch
import torch._inductor.config as ic
sys.path[:0] = ["examples"]
import dpcompile
from dpcompile.passes.rules import bounds, conv
from models import wrn16_4

variant = sys.argv[1]
if variant in ("no_conv_kernel", "neither"):
    conv.IMPLICIT_CONV_DEVICES = ()
if variant in ("no_half", "neither"):
    bounds.HALF_GRAM_DEVICES = ()
torch.manual_seed(0)
model = dpcompile.dpcompile(wrn16_4().cuda(), max_grad_norm=1.0, noise_multiplier=1.0, policy="auto")
x, y = torch.randn(16, 3, 32, 32, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
start = time.time()
try:
    with ic.patch(cpp_wrapper=True), warnings.catch_warnings(), \
            torch.autocast("cuda", torch.bfloat16, enabled=variant != "fp32"):
        warnings.simplefilter("error", RuntimeWarning)
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
    print(variant, "OK", round(time.time() - start, 1), "s")
except BaseException:
    text = traceback.format_exc()
    print(variant, "FAILED", round(time.time() - start, 1), "s")
    lines = text.splitlines()
    keep = [l for l in lines if "error" in l.lower()][:25]
    print("\n".join(keep))
    with open(f"{sys.argv[2]}/probe-{variant}.txt", "w") as f:
        f.write(text)
