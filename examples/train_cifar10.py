"""The main job: a short differentially private training run of a small CNN on real CIFAR-10.

Trains `small_cnn` (examples/models.py) on the built-in subset of CIFAR-10 (5,000 training and 1,000
test images, dpcompile/data/) with DP-SGD: Poisson-sampled batches, per-sample clipping to R, Gaussian
noise calibrated to a target (ε, δ), accounted by dp-accounting (PLD). Prints the compiler's per-layer
plan, progress, test accuracy and the privacy spent.

    python examples/train_cifar10.py                       # a few minutes on a 2-core CPU
    python examples/train_cifar10.py --backend inductor    # compile the rewritten graphs (slower start)
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from models import small_cnn
from tqdm import tqdm

import dpcompile
from dpcompile.datasets import load_cifar10


def evaluate(model: torch.nn.Module, data, batch: int = 500) -> float:
    """Top-1 accuracy in percent."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), batch):
            x, y = data[i:i + batch]
            correct += (model(x).argmax(1) == y).sum().item()
    model.train()
    return 100.0 * correct / len(data)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=float, default=6)
    parser.add_argument("--batch", type=int, default=250, help="expected (Poisson) batch size")
    parser.add_argument("--lr", type=float, default=2.0)
    parser.add_argument("--max-grad-norm", type=float, default=1.0)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--policy", default="auto", choices=["mixed", "ghost", "per_sample", "auto"])
    parser.add_argument("--backend", default="eager", choices=["eager", "inductor"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    train, test = load_cifar10("train"), load_cifar10("test")
    q = args.batch / len(train)
    steps = round(args.epochs / q)
    loader = dpcompile.poisson_loader(train, sample_rate=q, steps=steps, seed=args.seed)
    model = small_cnn(width=args.width)
    dp_model = dpcompile.dpcompile(model, max_grad_norm=args.max_grad_norm, target_epsilon=args.epsilon,
                                   target_delta=args.delta, steps=steps, data_loader=loader,
                                   policy=args.policy, backend=args.backend, seed=args.seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    print(f"DP-SGD on CIFAR-10 (built-in subset: {len(train)} train / {len(test)} test images): "
          f"{steps} steps at sample rate q={q:.4f} (expected batch {args.batch}), R={args.max_grad_norm}, "
          f"σ={dp_model.privacy.noise_multiplier:.3f} calibrated for ε={args.epsilon} at δ={args.delta}")

    start, plan_shown = time.perf_counter(), False
    progress = tqdm(loader, total=steps, desc="training", unit="step")
    for x, y in progress:
        loss = F.cross_entropy(dp_model(x), y)  # a mean over this batch; dpcompile divides by the expected size
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if not plan_shown:
            tqdm.write("\nThe compiler's plan (one row per parameter-gradient term):\n" + str(dp_model.explain()) + "\n")
            plan_shown = True
        progress.set_postfix(batch=len(x), loss=f"{loss.item():.3f}")
    minutes = (time.perf_counter() - start) / 60

    accuracy = evaluate(model, test)
    epsilon = dp_model.privacy.epsilon(args.delta)
    print(f"\ntest accuracy: {accuracy:.1f}% (chance: 10%) after {minutes:.1f} min")
    print(f"privacy: ε = {epsilon:.2f} at δ = {args.delta} (PLD accountant, {dp_model.privacy.steps} noisy steps, "
          f"q = {q:.4f}, σ = {dp_model.privacy.noise_multiplier:.3f}, R = {args.max_grad_norm}; "
          "privacy unit: one training image)")


if __name__ == "__main__":
    main()
