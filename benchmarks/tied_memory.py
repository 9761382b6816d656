#!/usr/bin/env python3
"""Peak memory and step time of a GPT-2-sized tied embedding (50257 × 768, the output layer is the token
table) under dpcompile: tied ghost clipping (uses' ghost norms and cross terms) against per-sample
instantiation of the tied gradient (B × 50257 × 768) and non-private torch.compile, in one process on one
card. Also compares the two DP gradients (noise off): they must agree to rounding.

    python benchmarks/tied_memory.py [--batch 32] [--length 256] [--out DIR]     # GPU
    python benchmarks/tied_memory.py --vocab 500 --dim 32 --batch 4 --length 16   # CPU smoke
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

import dpcompile


class TiedLM(nn.Module):
    """Token embeddings and a position parameter, one MLP block with LayerNorm, output layer = the token table."""

    def __init__(self, vocab: int, dim: int, length: int):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Parameter(torch.zeros(length, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x):
        h = self.tok(x) + self.pos[: x.shape[1]]
        h = h + self.fc2(F.gelu(self.fc1(self.norm1(h))))
        return self.norm2(h) @ self.tok.weight.t()


def run(method: str, args, device) -> tuple[dict, dict]:
    torch.manual_seed(0)
    model = TiedLM(args.vocab, args.dim, args.length).to(device)
    if method == "compile":
        step_model = torch.compile(model)
    else:
        step_model = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, policy=method)
    g = torch.Generator(device="cpu").manual_seed(1)
    x = torch.randint(0, args.vocab, (args.batch, args.length), generator=g).to(device)
    y = torch.randint(0, args.vocab, (args.batch, args.length), generator=g).to(device)

    def step():
        model.zero_grad(set_to_none=True)
        out = step_model(x)
        F.cross_entropy(out.flatten(0, 1), y.flatten()).backward()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(1e3 * (time.perf_counter() - t))
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    grads = {n: p.grad.detach().double().cpu() for n, p in model.named_parameters()}
    plan = str(step_model.explain()) if method != "compile" else ""
    del step_model, model
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"ms": statistics.median(times), "peak_gib": peak, "first_step_s": first, "plan": plan}, grads


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--methods", default="compile,ghost,per_sample")
    p.add_argument("--out", default=os.environ.get("OUT", "runs"))
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    info = {"card": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "torch": torch.__version__,
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "args": vars(args)}
    results, grads = {}, {}
    for method in args.methods.split(","):
        try:
            results[method], grads[method] = run(method, args, device)
        except Exception as e:  # noqa: BLE001  (record an OOM or a refusal as such)
            results[method] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}
            torch._dynamo.reset()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        print(method, {k: v for k, v in results[method].items() if k != "plan"}, flush=True)
    if "ghost" in grads and "per_sample" in grads:
        a, b = grads["ghost"], grads["per_sample"]
        num = sum((a[n] - b[n]).square().sum() for n in a).sqrt()
        den = sum(b[n].square().sum() for n in b).sqrt()
        info["ghost_vs_per_sample_relative_difference"] = (num / den).item()
        print("ghost vs per_sample gradient, relative difference:", info["ghost_vs_per_sample_relative_difference"])
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "tied_memory.json"), "w") as f:
        json.dump({**info, "results": results}, f, indent=1)
    base = results.get("compile", {})
    lines = [f"Tied {args.vocab}×{args.dim} table, batch {args.batch}, length {args.length}, fp32; {info['card']}, "
             f"torch {info['torch']}, {info['date']}", "", "| method | ms/step | peak GiB | × compile time | × compile memory |",
             "| --- | --- | --- | --- | --- |"]
    for m, r in results.items():
        if "error" in r:
            lines.append(f"| {m} | {r['error']} | | | |")
            continue
        rt = f"{r['ms'] / base['ms']:.2f}×" if base.get("ms") else "-"
        rm = f"{r['peak_gib'] / base['peak_gib']:.2f}×" if base.get("peak_gib") and r["peak_gib"] else "-"
        pk = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        lines.append(f"| {m} | {r['ms']:.1f} | {pk} | {rt} | {rm} |")
    with open(os.path.join(args.out, "tied_memory.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
