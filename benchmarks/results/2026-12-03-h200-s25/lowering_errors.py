"""Session 25: the full traceback of each inductor lowering error behind dpcompile's "runs without inductor"
warning on CUDA (torchvision's VisionTransformer, the attention rule cases, the tied LM), float64 and float32, two
batch sizes through one compiled model (the second compiles with a symbolic batch)."""
import os
import sys

import report_lowering_errors  # noqa: F401  (this folder: prints each lowering error's traceback)
import torch

sys.path.insert(0, "tests")
import dpcompile  # noqa: E402
from rule_cases import Attention  # noqa: E402

DEVICE = os.environ.get("DEVICE", "cuda")


def run(name, model, inputs, dtype, batches=(3, 5)):
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = model().to(DEVICE, dtype)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, policy="mixed", backend="inductor")
    for B in batches:
        x = inputs(B).to(DEVICE)
        x = x.to(dtype) if x.is_floating_point() else x
        model.zero_grad(set_to_none=True)
        dp(x).float().square().mean().backward()
    print(f"--- {name} {dtype} batches {batches}: done, {dp.compilations} captures", flush=True)


def vit():
    import torchvision
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                                                 mlp_dim=64, num_classes=10)
    dpcompile.fix(model)
    return model.eval()


which = sys.argv[1:] or ["vit", "sdpa", "mha", "tied"]
for dtype in (torch.float64, torch.float32):
    if "vit" in which:
        run("torchvision vit", vit, lambda B: torch.randn(B, 3, 32, 32), dtype)
    for kind in ("mha", "sdpa", "sdpa_causal"):
        if kind.split("_")[0] in which:
            for length in (1, 4):
                run(f"attention {kind} T={length}", lambda: Attention(kind, 6, 2), lambda B: torch.randn(B, length, 6),
                    dtype)
    if "tied" in which:
        from test_tied import TiedLM
        run("tied_lm", TiedLM, lambda B: torch.randint(0, 11, (B, 8)), dtype, batches=(4, 6, 1))
