"""The per-sample convolution kernel compiled for sm90 on a CPU (no GPU; Triton's bundled ptxas), both tilings
(JOINT: columns over kernel position and channel, or one kernel position a tile) in bf16 and fp16 under every
autotune config, and float64 (EXACT); prints each compile's shared memory and registers, or the error. Needs Triton
importable (a separate venv with triton==3.9, as the forty-eighth session's). benchmarks/NOTES.md, forty-eighth
session."""
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from dpcompile import conv_kernels as ck

fn = ck._per_sample_conv2d_grad
names = fn.arg_names
CONST = ("TF32", "EXACT", "JOINT", "BLOCK_M", "BLOCK_N", "BLOCK_K")
failed = 0
for dt, exact in [("bf16", False), ("fp16", False), ("fp64", True)]:
    configs = [dict(c.kwargs, num_warps=c.num_warps, num_stages=c.num_stages) for c in ck.CONFIGS] if not exact \
        else [dict(ck.EXACT_CONFIG, num_warps=4, num_stages=2)]
    for joint in (False, True):
        for cfg in configs:
            sig = {n: ("constexpr" if n in CONST else f"*{dt}" if n.endswith("_ptr") else "i64") for n in names}
            const = {"TF32": False, "EXACT": exact, "JOINT": joint,
                     **{k: cfg[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}}
            src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items()})
            label = f"{dt} joint={joint} {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} w{cfg['num_warps']} " \
                    f"s{cfg['num_stages']}"
            try:
                k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                                   options={"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]})
                print(label, "ok, shared", k.metadata.shared, "mma", "mma" in k.asm["ptx"])
            except Exception as e:  # noqa: BLE001
                failed += 1
                print(label, "FAILED", type(e).__name__, str(e)[:300])
print("failed:", failed)
