"""examples/cifar10.py on CPU: two steps on the built-in subset, a log, a checkpoint that resumes exactly."""
import json

import torch
from cifar10 import augment, main


def run(out, *extra: str) -> dict:
    argv = ["--size", "mini", "--model", "small_cnn", "--steps", "2", "--batch", "40", "--micro-batches", "2",
            "--backend", "eager", "--device", "cpu", "--out", str(out), "--eval-every", "0.008", "--lr", "0.5"]
    return main(argv + list(extra))


def test_two_steps_log_and_exact_resume(tmp_path):
    log = run(tmp_path / "a")
    assert [r["step"] for r in log["epochs"]] == [1, 2] and log["epochs"][-1]["epsilon"] > 0
    assert json.loads((tmp_path / "a" / "log.json").read_text())["steps"] == 2
    run(tmp_path / "b", "--stop-after", "1")
    resumed = run(tmp_path / "b", "--resume")
    a = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    b = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert resumed["epochs"][-1]["epsilon"] == log["epochs"][-1]["epsilon"]
    assert a["privacy"]["steps"] == b["privacy"]["steps"] == 2


def test_augment_crops_and_flips_each_image():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # every output row is a (possibly reversed) window of a reflection-padded input row
        padded = torch.nn.functional.pad(x[i:i + 1], (4, 4, 4, 4), mode="reflect")[0]
        row = out[i, 0, 10]
        windows = padded[0].unfold(1, 32, 1).reshape(-1, 32)
        assert any(torch.equal(row, w) or torch.equal(row, w.flip(0)) for w in windows)
