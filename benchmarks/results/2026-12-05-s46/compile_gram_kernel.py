"""The fused Gram-sum kernel compiled for sm90 on a CPU (no GPU): Triton 3.5 and its bundled ptxas, each dtype and
autotune config; prints the shared memory each needs and the PTX MMA instructions of the fp32 (TF32) form. Needs
Triton importable (a separate venv, as triton_census.py). Forty-sixth session: benchmarks/NOTES.md."""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dpcompile import gram_kernels as gk
fn = gk._gram_sums
names = fn.arg_names
sig = {}
for n in names:
    if n in ("EXACT", "TF32", "BLOCK_T", "BLOCK_K"):
        sig[n] = "constexpr"
    elif n.endswith("_ptr"):
        sig[n] = "*fp64" if n in ("r_ptr", "rho_ptr", "out_ptr") else "*{dt}"
    else:
        sig[n] = "i64"
for dt, tf32, bt in [("fp32", True, 64), ("bf16", False, 64)]:
    for bk, warps, stages in [(32, 4, 3), (64, 4, 3), (64, 8, 3), (128, 4, 2)]:
        s = {k: (v.format(dt=dt) if "{dt}" in v else v) for k, v in sig.items()}
        const = {"EXACT": False, "TF32": tf32, "BLOCK_T": bt, "BLOCK_K": bk}
        src = ASTSource(fn=fn, signature=s, constexprs={(names.index(k),): v for k, v in const.items()})
        try:
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps, "num_stages": stages})
            print(dt, bk, warps, stages, "ok, shared", k.metadata.shared, "tf32 mma" , "tf32" in k.asm["ptx"])
        except Exception as e:
            print(dt, bk, warps, stages, "FAILED", type(e).__name__, str(e)[:300])
s = {k: (v.format(dt="fp32") if "{dt}" in v else v) for k, v in sig.items()}
src = ASTSource(fn=fn, signature=s, constexprs={(names.index(k),): v for k, v in {"EXACT": False, "TF32": True, "BLOCK_T": 64, "BLOCK_K": 32}.items()})
k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 3})
import re
ptx = k.asm["ptx"]
print(sorted(set(re.findall(r"(wgmma[\w.]*|mma[\w.]*|cvt\.rna\.tf32\.f32|cvt\.rn\.tf32\.f32)", ptx)))[:10])
