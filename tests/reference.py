"""The obviously-correct reference: torch.func per-sample gradients, clipped, summed, normalised."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap


def per_sample_grads(model, x, y, loss=F.cross_entropy) -> dict[str, torch.Tensor]:
    """g_i for every trainable parameter: gradient of sample i's own loss term (vmap of grad)."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def sample_loss(ps, xi, yi):
        out = functional_call(model, {**ps, **frozen, **buffers}, (xi.unsqueeze(0),))
        return loss(out, yi.unsqueeze(0), reduction="sum")

    return vmap(grad(sample_loss), in_dims=(None, 0, 0))(params, x, y)


def dp_reference(model, x, y, max_grad_norm, loss_reduction="mean", expected_batch_size=None,
                 loss=F.cross_entropy, clipping="abadi", clip_stability=0.01, groups=None, bounds=None):
    """(Σ_i C_i g_i) / n with C_i = min(1, R/(‖g_i‖+1e-6)); also returns the per-sample norms."""
    g = per_sample_grads(model, x, y, loss)
    groups = groups or [list(g)]
    bounds = bounds or [max_grad_norm / len(groups) ** 0.5] * len(groups)
    out, norms = {}, []
    for names, bound in zip(groups, bounds):
        norm = torch.sqrt(sum(g[n].reshape(len(g[n]), -1).square().sum(1) for n in names))
        c = bound / (norm + clip_stability) if clipping == "automatic" else (bound / (norm + 1e-6)).clamp(max=1.0)
        norms.append(norm)
        for n in names:
            out[n] = torch.einsum("b,b...->...", c, g[n])
    n = (expected_batch_size or x.shape[0]) if loss_reduction == "mean" else 1
    return {k: v / n for k, v in out.items()}, norms
