"""DP-SGD from scratch on all of CIFAR-10 (GPU): WRN-16-4 with GroupNorm, a target (ε, δ), Poisson batches.

    python examples/cifar10.py --out runs/wrn --epsilon 8 --batch 4096 --epochs 100        # on a GPU
    python examples/cifar10.py --out runs/wrn --resume                                      # continue exactly
    torchrun --nproc-per-node=4 examples/cifar10.py --out runs/wrn --epsilon 8 --batch 4096 --epochs 100

The data is decoded once (the ImageFolder-style JPEG zips in ../shared/data/cifar10, or --data DIR) and
kept on the device; augmentation (random crop with 4-pixel reflection padding, horizontal flip) runs
there too, seeded by (seed, step, rank) so a resumed run draws the same views. --augmult K gives each
sample K augmented views, clipped together as one sample (augmentation multiplicity, De et al. 2022);
--bf16 runs under bfloat16 autocast. Each logical Poisson batch (expected --batch
examples at q = batch / 50,000) is split into --micro-batches micro-batches (gradient accumulation:
clipped sums add up, the noise is added once per logical step). Optional parameter averaging (--ema).
Per epoch: test accuracy (of the EMA model when on), ε spent, wall time, to stdout and to
OUT/log.json; OUT/checkpoint.pt after every epoch (model, optimizer, EMA, privacy state with the
noise generator and the sampler's position); OUT/accuracy.png at the end (matplotlib, if installed).

Under torchrun (one process per GPU; NCCL on CUDA, gloo on CPU) every rank trains on its shard of each
Poisson batch (the global rate q, global expected batch size), dpcompile sums the ranks' clipped sums
and rank 0 adds the noise; rank 0 alone evaluates, logs and writes the checkpoint, which holds every
rank's sampler position, so --resume continues every rank exactly.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from models import small_cnn, wrn16_4
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

import dpcompile
from dpcompile.datasets import load_cifar10

MODELS = {"wrn16_4": lambda **wrn: wrn16_4(**wrn), "small_cnn": lambda **_: small_cnn(width=16),
          "tiny_wrn": lambda **wrn: wrn16_4(base=2, widen=2, **wrn)}


def build_model(args: dict) -> torch.nn.Module:
    """The --model, with the WRN options (GroupNorm groups, weight standardisation) of the run's arguments."""
    return MODELS[args["model"]](groups=args.get("groups", 32), standardise=args.get("ws", False))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 32×32 crops of the 4-pixel reflection-padded images and random horizontal flips, batched."""
    B, size = x.shape[0], x.shape[-1]
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy, dx = (torch.randint(0, 9, (2, B), generator=generator, device=x.device))
    flip = torch.rand(B, generator=generator, device=x.device) < 0.5
    cols = torch.arange(size, device=x.device)
    rows = dy[:, None] + cols                                          # (B, size)
    cols = torch.where(flip[:, None], dx[:, None] + size - 1 - cols, dx[:, None] + cols)
    batch = torch.arange(B, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def views(x: torch.Tensor, k: int, generator: torch.Generator, random: bool = True) -> torch.Tensor:
    """The batch's augmented images: (B, ...) for k = 1, else k views of each, (B, k, ...)."""
    if k == 1:
        return augment(x, generator) if random else x
    many = x.repeat_interleave(k, 0)
    return (augment(many, generator) if random else many).unflatten(0, (x.shape[0], k))


def loss_of_views(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy, averaged over each sample's views when out is (B, K, classes)."""
    if out.dim() == 3:
        return F.cross_entropy(out.flatten(0, 1), y.repeat_interleave(out.shape[1]))
    return F.cross_entropy(out, y)


def augment_seed(seed: int, step: int, rank: int) -> int:
    """The augmentation generator's seed for one step of one rank: (seed·2³² + step)·2¹⁰ + rank, mod 2⁶³."""
    return ((((seed << 32) + step) << 10) + rank) % 2**63


def join_ranks(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, device): under torchrun, join the process group (NCCL on CUDA, gloo on CPU) on the
    local rank's GPU; else (0, 1, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        correct = sum((model(images[i:i + batch]).argmax(1) == labels[i:i + batch]).sum().item()
                      for i in range(0, len(images), batch))
    model.train(was_training)
    return 100.0 * correct / len(images)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/cifar10", help="folder for log.json, checkpoint.pt, accuracy.png")
    p.add_argument("--data", default=None, help="folder with cifar10-train.zip and cifar10-test.zip "
                                                "(default: $DPCOMPILE_CIFAR10_DIR or ../shared/data/cifar10)")
    p.add_argument("--size", default="full", choices=["full", "mini"], help="all of CIFAR-10, or the built-in subset")
    p.add_argument("--test-size", default=None, choices=["full", "mini"],
                   help="test set evaluated during training (default: --size); with 'mini' (1,000 images) run "
                        "--evaluate on the full test set afterwards")
    p.add_argument("--model", default="wrn16_4", choices=sorted(MODELS))
    p.add_argument("--groups", type=int, default=32, help="GroupNorm groups of the WRN (De et al. 2022: 16)")
    p.add_argument("--ws", action="store_true", help="weight-standardised convolutions in the WRN (De et al. 2022)")
    p.add_argument("--epsilon", type=float, default=8.0)
    p.add_argument("--sigma", type=float, default=None, help="noise multiplier (instead of calibrating to --epsilon)")
    p.add_argument("--delta", type=float, default=1e-5)
    p.add_argument("--epochs", type=float, default=100, help="epochs of Poisson steps (steps = epochs / q)")
    p.add_argument("--steps", type=int, default=None, help="logical steps (instead of --epochs)")
    p.add_argument("--batch", type=int, default=4096, help="expected logical (Poisson) batch size")
    p.add_argument("--micro-batches", type=int, default=8, help="micro-batches per logical batch (accumulation)")
    p.add_argument("--lr", type=float, default=4.0)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--max-grad-norm", type=float, default=1.0)
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the evaluated parameters, warmed up as min(decay, (1+n)/(10+n)) (0: off)")
    p.add_argument("--no-augment", dest="augment", action="store_false")
    p.add_argument("--augmult", type=int, default=1, help="augmentation multiplicity K: K augmented views of each "
                   "sample, averaged inside its clipped gradient (De et al. 2022 use 16; K times the compute)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (CUDA)")
    p.add_argument("--policy", default="auto", choices=["mixed", "ghost", "per_sample", "auto"])
    p.add_argument("--backend", default="inductor", choices=["inductor", "eager"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=float, default=1.0, help="epochs between evaluations and checkpoints")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps of this call; --resume continues")
    p.add_argument("--time-limit", type=float, default=None,
                   help="minutes of wall time (first step included): stop there with an evaluation and a checkpoint; "
                        "ε is reported for the steps taken (σ stays calibrated for all of them)")
    p.add_argument("--evaluate", action="store_true",
                   help="no training: evaluate OUT/checkpoint.pt (the EMA model when on) on the --size test set and "
                        "record it in OUT/log.json as final_test_accuracy")
    return p.parse_args(argv)


def past(deadline: float | None, world: int, device: torch.device) -> bool:
    """Whether the time limit has passed, as rank 0 sees it (every rank stops at the same step); one process
    reads its clock only (no device synchronisation in the training loop)."""
    if deadline is None or world == 1:
        return deadline is not None and time.perf_counter() > deadline
    late = torch.tensor([float(time.perf_counter() > deadline)], device=device)
    dist.broadcast(late, 0)
    return bool(late.item())


def ema_with_warmup(decay: float):
    """Parameter averaging whose decay warms up, d_n = min(decay, (1 + n)/(10 + n)) after n updates (De et
    al. 2022): a fixed 0.999 would still weigh the random initialisation 0.999^n (0.3 after 1200 steps)."""
    def update(averaged, current, num_averaged):
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))
    return update


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.evaluate:
        return evaluate_checkpoint(args, torch.device(args.device))
    rank, world, device = join_ranks(torch.device(args.device))
    try:
        return train(args, rank, world, device)
    finally:
        if world > 1:
            dist.destroy_process_group()


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict:
    """The training loop on every rank; rank 0 evaluates, logs and checkpoints."""
    torch.manual_seed(args.seed)
    test_size = args.test_size or args.size
    train, test = load_cifar10("train", size=args.size, root=args.data if args.size == "full" else None), \
        load_cifar10("test", size=test_size, root=args.data if test_size == "full" else None)
    train_x, train_y = (t.to(device) for t in train.tensors)  # decoded once, kept on the device
    test_x, test_y = (t.to(device) for t in test.tensors)
    q = min(1.0, args.batch / len(train_x))
    steps = args.steps or max(1, round(args.epochs / q))
    loader = dpcompile.poisson_loader(torch.utils.data.TensorDataset(torch.arange(len(train_x))), sample_rate=q,
                                      steps=steps, seed=args.seed)  # this rank's shard, at the global rate q
    model = build_model(vars(args)).to(device)
    for tensor in model.state_dict().values() if world > 1 else ():
        dist.broadcast(tensor, 0)  # every rank starts from rank 0's parameters
    noise = dict(noise_multiplier=args.sigma) if args.sigma is not None else \
        dict(target_epsilon=args.epsilon, steps=steps)
    dp_model = dpcompile.dpcompile(model, max_grad_norm=args.max_grad_norm, target_delta=args.delta,
                                   data_loader=loader, policy=args.policy, backend=args.backend, seed=args.seed,
                                   gradient_accumulation_steps=args.micro_batches,
                                   augmentation_multiplicity=args.augmult, **noise)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(args.ema)) if args.ema else None
    generator = torch.Generator(device=device)
    os.makedirs(args.out, exist_ok=True)
    ckpt_path, log_path = os.path.join(args.out, "checkpoint.pt"), os.path.join(args.out, "log.json")
    log = {"args": vars(args), "sigma": dp_model.privacy.noise_multiplier, "sample_rate": q, "steps": steps,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "world_size": world,
           "torch": torch.__version__, "epochs": []}
    done, elapsed = 0, 0.0
    if args.resume and os.path.exists(ckpt_path):  # every rank reads rank 0's checkpoint
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        dp_model.privacy.load_state_dict(state["privacy"])  # this rank's own sampler position
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        done, elapsed, log = state["step"], state["elapsed"], state["log"]
    if rank == 0:
        print(f"DP-SGD on CIFAR-10 ({len(train_x)} train / {len(test_x)} test images), {args.model}: {steps} steps "
              f"at q={q:.5f} (expected batch {args.batch}, {args.micro_batches} micro-batches, {world} rank(s)), "
              f"R={args.max_grad_norm}, σ={dp_model.privacy.noise_multiplier:.4f}"
              + (f" for ε={args.epsilon} at δ={args.delta}" if args.sigma is None else "")
              + f"; device {log['device']}")

    batches = iter(loader)  # the sampler continues where the checkpoint left it
    every = max(1, round(args.eval_every / q))
    start = time.perf_counter() - elapsed
    progress = tqdm(total=steps, initial=done, desc="training", unit="step", disable=rank != 0)
    last = steps if args.stop_after is None else min(steps, done + args.stop_after)
    deadline = None if args.time_limit is None else start + 60 * args.time_limit
    for step in range(done, last):
        (indices,) = next(batches)
        x, y = train_x[indices.to(device)], train_y[indices.to(device)]
        if args.augment or args.augmult > 1:
            x = views(x, args.augmult, generator.manual_seed(augment_seed(args.seed, step, rank)), args.augment)
        for xb, yb in zip(x.tensor_split(args.micro_batches), y.tensor_split(args.micro_batches)):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
                out = dp_model(xb)
            loss_of_views(out.float(), yb).backward()  # a mean; dpcompile divides by the expected batch
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update_parameters(model)
        progress.update(1)
        out_of_time = past(deadline, world, device)  # once per step, the same answer on every rank
        if (step + 1) % every == 0 or step + 1 in (steps, last) or out_of_time:
            privacy = dp_model.privacy.state_dict()  # on every rank: it gathers their sampler positions
            if rank == 0:
                accuracy = evaluate(ema.module if ema is not None else model, test_x, test_y)
                record = {"step": step + 1, "epoch": (step + 1) * q, "test_accuracy": accuracy,
                          "epsilon": dp_model.privacy.epsilon(args.delta),
                          "minutes": (time.perf_counter() - start) / 60}
                log["epochs"].append(record)
                tqdm.write(f"step {record['step']}: test accuracy {accuracy:.2f}%, ε = {record['epsilon']:.3f}, "
                           f"{record['minutes']:.1f} min")
                with open(log_path, "w") as f:
                    json.dump(log, f, indent=1)
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "privacy": privacy,
                            "ema": ema.state_dict() if ema is not None else None, "step": step + 1,
                            "elapsed": time.perf_counter() - start, "log": log}, ckpt_path + ".tmp")
                os.replace(ckpt_path + ".tmp", ckpt_path)  # a crash while writing leaves the last checkpoint whole
        if out_of_time:
            tqdm.write(f"time limit of {args.time_limit} min reached after {step + 1} steps")
            break
    progress.close()
    if (last == steps or args.time_limit is not None) and rank == 0:
        plot(log, os.path.join(args.out, "accuracy.png"))
    return log


def evaluate_checkpoint(args: argparse.Namespace, device: torch.device) -> dict:
    """Test accuracy of OUT/checkpoint.pt's evaluated model (the EMA when the run had one) on the --size test
    set, written into OUT/log.json (final_test_accuracy, with the step and ε it was taken at)."""
    state = torch.load(os.path.join(args.out, "checkpoint.pt"), map_location="cpu", weights_only=False)
    log = state["log"]
    model = build_model(log["args"]).to(device)
    if state.get("ema") is not None:
        model.load_state_dict({k.removeprefix("module."): v for k, v in state["ema"].items()
                               if k.startswith("module.")})
    else:
        model.load_state_dict(state["model"])
    test = load_cifar10("test", size=args.size, root=args.data if args.size == "full" else None)
    x, y = (t.to(device) for t in test.tensors)
    accuracy = evaluate(model, x, y)
    last = log["epochs"][-1] if log["epochs"] else {}
    log["final_test_accuracy"] = {"test_images": len(x), "accuracy": accuracy, "step": state["step"],
                                  "epsilon": last.get("epsilon"), "evaluated": "ema" if state.get("ema") else "model"}
    with open(os.path.join(args.out, "log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print(f"{len(x)} test images: {accuracy:.2f}% after {state['step']} steps"
          + (f" (ε = {last['epsilon']:.3f})" if last.get("epsilon") is not None else ""))
    return log


def plot(log: dict, path: str) -> None:
    """Test accuracy and ε against steps (needs matplotlib; skipped without it)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    steps = [r["step"] for r in log["epochs"]]
    fig, acc = plt.subplots(figsize=(6, 4))
    acc.plot(steps, [r["test_accuracy"] for r in log["epochs"]], color="tab:blue", marker=".")
    acc.set_xlabel("step"), acc.set_ylabel("test accuracy (%)", color="tab:blue")
    eps = acc.twinx()
    eps.plot(steps, [r["epsilon"] for r in log["epochs"]], color="tab:red")
    eps.set_ylabel("ε", color="tab:red")
    fig.suptitle(f"DP-SGD on CIFAR-10: σ = {log['sigma']:.3f}, q = {log['sample_rate']:.4f}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
