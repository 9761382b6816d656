"""How much harder `ghost_tf32=True` clips: each sample's certified norm N_i with the ghost terms' clipped sums as
TF32 products (their truncation in the margin, (2⁻⁹ + γ)·M_i) against IEEE ones, on real CIFAR-10 images (the
built-in mini set) through a suite model and the plan of a full batch.

One sample at a time within the batch: the loss weights one sample j (the others' gradients are zero and release
nothing) and R is far below every norm, so what is released is R·ĝ_j/N_j. The ratio of the two releases' norms,
IEEE over TF32, is N_j(TF32)/N_j(IEEE), up to TF32's rounding of ĝ_j (~3·10⁻⁴ of it): the over-clipping, 1 + δ_j.
R over the IEEE release's norm is N_j(IEEE)/‖ĝ_j‖: what the certified bounds themselves cost in clipping, with IEEE
products (`certified_*` in the output).

    python3 benchmarks/tf32_overclip.py --model resnet18_gn --batch 256 --samples 64 --policy auto
    python3 benchmarks/tf32_overclip.py --model vit_s16 --size 224 --batch 64 --samples 16   (images resized)
"""
from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dp_throughput import build  # noqa: E402

import dpcompile  # noqa: E402
from dpcompile.datasets import load_cifar10  # noqa: E402

R = 1e-6  # far below any sample's gradient norm: every sample is clipped


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18_gn")
    p.add_argument("--size", type=int, default=32, help="image side: CIFAR-10's 32, or the images resized (bilinear)")
    p.add_argument("--batch", type=int, default=256, help="the batch the plan is made for")
    p.add_argument("--samples", type=int, default=64, help="samples measured, one step each per setting")
    p.add_argument("--policy", default="auto")
    p.add_argument("--backend", default="inductor", choices=["inductor", "eager"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p.parse_args(argv)


def releases(args, ghost_tf32: bool, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, list]:
    """‖released_j‖ for j < args.samples (float64), and the plan's rows."""
    torch.manual_seed(0)
    model = build(args.model, x.shape[-1])[0].to(args.device)  # CIFAR-10's labels: < 10 of any model's classes
    dp = dpcompile.dpcompile(model, max_grad_norm=R, noise_multiplier=0.0, loss_reduction="sum", policy=args.policy,
                             backend=args.backend, ghost_tf32=ghost_tf32, per_sample_tf32=False)
    norms = []
    for j in range(args.samples):
        weight = torch.zeros(len(x), device=x.device)
        weight[j] = 1.0
        model.zero_grad(set_to_none=True)
        (F.cross_entropy(dp(x), y, reduction="none") * weight).sum().backward()
        grads = [p.grad.double().flatten() for p in model.parameters() if p.grad is not None]
        norms.append(torch.cat(grads).norm())
    return torch.stack(norms).cpu(), dp.explain().rows


def main(argv=None) -> dict:
    args = parse_args(argv)
    images, labels = load_cifar10("train", size="mini").tensors
    x, y = images[:args.batch].to(args.device), labels[:args.batch].to(args.device)
    if args.size != x.shape[-1]:
        x = F.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False)
    ieee, _ = releases(args, False, x, y)
    tf32, rows = releases(args, True, x, y)
    over = (ieee / tf32 - 1).tolist()
    certified = (R / ieee - 1).tolist()
    result = {"model": args.model, "size": args.size, "batch": args.batch, "samples": args.samples,
              "policy": args.policy, "tf32_terms": [r.param for r in rows if "TF32" in r.impl],
              "overclip_median": statistics.median(over), "overclip_max": max(over), "overclip_min": min(over),
              "share_over_1pct": sum(o > 0.01 for o in over) / len(over),
              "certified_median": statistics.median(certified), "certified_max": max(certified),
              "certified_min": min(certified),
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu", "torch": torch.__version__,
              "date": datetime.date.today().isoformat()}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
