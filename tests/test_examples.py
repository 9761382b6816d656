"""examples/cifar10.py on CPU: two steps on the built-in subset with two augmented views per sample, a log,
a checkpoint that resumes exactly; the same under torchrun with two gloo processes (one view)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from cifar10 import augment, loss_of_views, main, views


def run(out, *extra: str) -> dict:
    """Two steps of the example. σ is given, not calibrated to --epsilon: calibration at the mini subset's sample
    rate took 15 of a run's 40 s here, and the README's main job and tests/test_accounting.py cover it."""
    argv = ["--size", "mini", "--model", "small_cnn", "--steps", "2", "--batch", "40", "--micro-batches", "2",
            "--backend", "eager", "--device", "cpu", "--out", str(out), "--eval-every", "0.008", "--lr", "0.5",
            "--augmult", "2", "--sigma", "1.0"]
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


@pytest.mark.slow  # the example's other runs (two steps, exact resume) are in the default suite
def test_time_limit_stops_with_an_evaluation_and_evaluate_reads_the_checkpoint(tmp_path):
    """--time-limit 0: one step, then a stop with an evaluation, a checkpoint and a plot; --evaluate then scores
    the checkpoint's EMA model on a test set and records it in log.json (a tiny WRN with De et al.'s options:
    weight-standardised convolutions, 16 GroupNorm groups, which --evaluate rebuilds from the log)."""
    log = run(tmp_path, "--steps", "50", "--time-limit", "0", "--ema", "0.9", "--model", "tiny_wrn", "--ws", "--groups", "16")
    assert [r["step"] for r in log["epochs"]] == [1] and log["args"]["ws"] and log["args"]["groups"] == 16
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["privacy"]["steps"] == 1
    done = main(["--evaluate", "--size", "mini", "--out", str(tmp_path), "--device", "cpu"])
    final = json.loads((tmp_path / "log.json").read_text())["final_test_accuracy"]
    assert final == done["final_test_accuracy"] and final["test_images"] == 1000 and final["step"] == 1
    assert final["evaluated"] == "ema" and 0 <= final["accuracy"] <= 100


def test_augment_crops_and_flips_each_image():
    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).view(2, 3, 32, 32)
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for i in range(2):  # every output row is a (possibly reversed) window of a reflection-padded input row
        padded = torch.nn.functional.pad(x[i:i + 1], (4, 4, 4, 4), mode="reflect")[0]
        row = out[i, 0, 10]
        windows = padded[0].unfold(1, 32, 1).reshape(-1, 32)
        assert any(torch.equal(row, w) or torch.equal(row, w.flip(0)) for w in windows)


def test_views_are_k_augmentations_of_each_sample_and_the_loss_averages_them():
    x = torch.randn(3, 3, 32, 32)
    v = views(x, 4, torch.Generator().manual_seed(0))
    assert v.shape == (3, 4, 3, 32, 32)
    assert not torch.equal(v[0, 0], v[0, 1])  # independent crops and flips (this seed)
    out, y = torch.randn(3, 4, 10), torch.tensor([1, 2, 3])
    expected = sum(torch.nn.functional.cross_entropy(out[:, k], y) for k in range(4)) / 4
    assert torch.allclose(loss_of_views(out, y), expected)


@pytest.mark.slow  # two ranks' processes (test_distributed.py has gloo ranks in the default suite)
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not built")
def test_two_gloo_ranks_under_torchrun_checkpoint_and_resume(tmp_path):
    """torchrun, 2 CPU processes: step 1, a checkpoint written by rank 0, step 2 resumed on both ranks."""
    script = Path(__file__).parents[1] / "examples" / "cifar10.py"
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(script),
            "--size", "mini", "--model", "small_cnn", "--steps", "2", "--batch", "40", "--micro-batches", "2",
            "--backend", "eager", "--device", "cpu", "--out", str(tmp_path), "--eval-every", "0.008", "--lr", "0.5",
            "--sigma", "1.0"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (["--stop-after", "1"], ["--resume"]):
        done = subprocess.run(argv + extra, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = json.loads((tmp_path / "log.json").read_text())
    assert log["world_size"] == 2 and [r["step"] for r in log["epochs"]] == [1, 2] and log["epochs"][-1]["epsilon"] > 0
    privacy = torch.load(tmp_path / "checkpoint.pt", weights_only=False)["privacy"]
    assert privacy["steps"] == 2
    assert [(p["sampler"]["rank"], p["sampler"]["step"]) for p in privacy["ranks"]] == [(0, 2), (1, 2)]
