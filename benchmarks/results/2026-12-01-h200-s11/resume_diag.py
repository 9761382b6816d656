"""test_resume_equals_uninterrupted on CUDA, with the differences printed (diagnostics.txt). From the repo root:
    DPCOMPILE_TEST_DEVICE=cuda DPCOMPILE_TEST_BACKEND=inductor python3 benchmarks/results/2026-12-01-h200-s11/resume_diag.py"""
import os
import sys
sys.path.insert(0, "tests")
os.environ.setdefault("DPCOMPILE_TEST_DEVICE", "cuda")
import test_privacy_engine as t
model, dp, opt, loader = t.run_setup()
it = t.batches(loader)
t.train(model, dp, opt, it, 3)
saved = t.checkpoint(model, dp, opt)
t.train(model, dp, opt, it, 4)
model2, dp2, opt2, loader2 = t.run_setup(model_seed=1, loader_seed=123, seed=77)
model2.load_state_dict(saved["model"]); opt2.load_state_dict(saved["opt"]); dp2.privacy.load_state_dict(saved["dp"])
t.train(model2, dp2, opt2, t.batches(loader2), 4)
for (n, p), q in zip(model.named_parameters(), model2.parameters()):
    print("resume", n, "max|p-q| =", (p - q).abs().max().item(), "max|p| =", p.abs().max().item())
print("compilations", dp.compilations, dp2.compilations)
