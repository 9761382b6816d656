"""batch_bucket=k: every batch padded with all-zero samples up to a multiple of k rows, outputs cut back to the
batch. The compiled graphs see only multiples of k (so CUDA graphs record once per bucket, not per Poisson batch
size); the gradients are the unpadded batch's, clipped per sample, in float64 against torch.func; the padded rows
add nothing to the release, whatever the batch holds."""
from __future__ import annotations

import pytest
import torch
from conftest import BACKEND, DEVICE
from helpers import Case, check_against_reference, max_relative_error, squared_error
from reference import dp_reference
from rule_cases import images, seq, sequences, tokens
from torch import nn

import dpcompile
from dpcompile.errors import ConfigError

CNN = Case("cnn_head", seq(nn.Conv2d(3, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5)),
           images(3, 6, 6))
TOKENS = Case("linear_3d", seq(nn.Linear(6, 4), nn.GELU(), nn.Linear(4, 3)), sequences(5, 6))


@pytest.mark.parametrize("case", [CNN, TOKENS], ids=lambda c: c.name)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("policy", ["ghost", "per_sample"])
def test_bucketed_batches_match_torch_func(case, reduction, policy):
    """Batches of 3, 5, 8 and 1 through one DP model padded to multiples of 4 (8 unpadded): each .grad is the
    clipped sum of the batch's own per-sample gradients (a bound R between them: both clip branches), a 'mean' loss
    normalised by expected_batch_size; one capture for all."""
    check_against_reference(case, policy=policy, reduction=reduction, batches=(3, 5, 8, 1), batch_bucket=4,
                            expected_batch_size=4 if reduction == "mean" else None)


def test_the_compiled_model_sees_only_multiples_of_the_bucket_and_the_outputs_are_the_batchs():
    """Every call reaches the compiled model with a multiple of k rows (the padding's point), and the DP model's
    outputs are the wrapped model's on the batch (the padded rows cut off)."""
    torch.manual_seed(0)
    model = CNN.model().to(DEVICE, torch.float64)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", batch_bucket=4,
                             backend=BACKEND)
    seen, compiled = [], dp._compiled

    def spy(*args, **kwargs):
        seen.append(args[0].shape[0])
        return compiled(*args, **kwargs)
    object.__setattr__(dp, "_compiled", spy)
    for B in (3, 4, 6, 1):
        x = CNN.inputs(B).to(DEVICE)
        out = dp(x)
        assert out.shape[0] == B
        torch.testing.assert_close(out, model(x), rtol=1e-12, atol=1e-12)
        out.square().sum().backward()
    assert seen == [4, 4, 8, 4]


def test_a_crafted_sample_padded_to_the_bucket_stays_within_R():
    """One sample crafted to a huge gradient (its target 10⁶ away), alone in its batch and padded with three zero
    samples, and with ordinary samples: the release moves by at most R when it joins (noise off, 'sum' loss), and
    no padded row is counted as dropped."""
    torch.manual_seed(0)
    model = CNN.model().to(DEVICE, torch.float64)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", batch_bucket=4,
                             backend=BACKEND)
    crafted = (CNN.inputs(1).to(DEVICE), torch.full((1, 5), 1e6, dtype=torch.float64, device=DEVICE))
    others = (CNN.inputs(2).to(DEVICE), torch.randn(2, 5, dtype=torch.float64, device=DEVICE))

    def release(x, y):
        model.zero_grad(set_to_none=True)
        squared_error(dp(x), y, "sum").backward()
        return torch.cat([p.grad.flatten() for p in model.parameters()])
    alone = release(*crafted)
    assert 0.999 < alone.norm().item() <= 1 + 1e-9  # clipped to R, nothing added by the padding
    joined = release(torch.cat([others[0], crafted[0]]), torch.cat([others[1], crafted[1]]))
    assert (joined - release(*others)).norm().item() <= 1 + 1e-9
    assert dp.privacy.dropped_samples == 0


def test_outputs_cut_along_their_batch_dims():
    """A model whose output has the batch on dim 1 (sequence first): the padded rows are cut there, and the
    gradients match torch.func on the batch."""
    torch.manual_seed(0)

    class SequenceFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(6, 3)

        def forward(self, x):
            return self.linear(x).transpose(0, 1)

    model = SequenceFirst().to(DEVICE, torch.float64)
    dp = dpcompile.dpcompile(model, max_grad_norm=0.5, noise_multiplier=0.0, loss_reduction="sum", batch_bucket=4,
                             backend=BACKEND)
    x = torch.randn(3, 5, 6, dtype=torch.float64, device=DEVICE)
    y = torch.randn(3, 5, 3, dtype=torch.float64, device=DEVICE)
    out = dp(x)
    assert out.shape == (5, 3, 3)
    squared_error(out.transpose(0, 1), y, "sum").backward()

    def first_loss(o, t, reduction="sum"):
        return squared_error(o.transpose(0, 1), t, reduction)
    ref, _ = dp_reference(model, x, y, 0.5, "sum", loss=first_loss)
    assert max_relative_error(model, ref) < 1e-10


@pytest.mark.parametrize("settings, message", [
    ({"batch_bucket": 0}, "positive integer"),
    ({"batch_bucket": 2.5}, "must be an integer"),
    ({"batch_bucket": 4, "loss_reduction": "mean"}, "needs expected_batch_size"),
    ({"batch_bucket": 4, "loss_reduction": "sum", "augmentation_multiplicity": 2}, "augmentation_multiplicity"),
])
def test_settings_that_cannot_pad_are_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        dpcompile.dpcompile(nn.Linear(3, 2), max_grad_norm=1.0, noise_multiplier=1.0, **settings)


def test_a_mean_loss_is_normalised_by_the_expected_batch_size_not_the_padded_one():
    """'mean' with n = 6: a batch of 5 padded to 8 releases Σ clipped / 6, each sample's gradient its own loss's
    (not 8/5 of it), against torch.func."""
    torch.manual_seed(0)
    model = TOKENS.model().to(DEVICE, torch.float64)
    x, y = TOKENS.inputs(5).to(DEVICE), torch.randn(5, 5, 3, dtype=torch.float64, device=DEVICE)
    # R between the samples' own norms (the draws differ by device): both clip branches on any device
    bound = dp_reference(model, x, y, 1.0, "mean", 6, loss=squared_error)[1][0].median().item()
    dp = dpcompile.dpcompile(model, max_grad_norm=bound, noise_multiplier=0.0, batch_bucket=8, expected_batch_size=6,
                             backend=BACKEND)
    squared_error(dp(x), y, "mean").backward()
    ref, norms = dp_reference(model, x, y, bound, "mean", 6, loss=squared_error)
    assert (norms[0] > bound).any() and (norms[0] < bound).any()  # both clip branches
    assert max_relative_error(model, ref) < 1e-10


EMBEDDING = Case("embedding", seq(nn.Embedding(10, 4), nn.Flatten(), nn.Linear(12, 3)), tokens(10, 3))


def test_token_ids_padded_with_index_zero_match_torch_func():
    """Integer inputs pad with id 0, a valid row of the table: its gradient there is zero, as every padded row's."""
    check_against_reference(EMBEDDING, policy="ghost", reduction="sum", batches=(3, 6), batch_bucket=4)


def test_an_empty_batch_and_accumulated_micro_batches():
    """An empty batch gives empty outputs and a noise-only step (zero gradients without noise); two micro-batches
    of 3 and 2 accumulate to the clipped sum of their union (one noisy release)."""
    torch.manual_seed(0)
    model = CNN.model().to(DEVICE, torch.float64)
    dp = dpcompile.dpcompile(model, max_grad_norm=1.0, noise_multiplier=0.0, loss_reduction="sum", batch_bucket=4,
                             gradient_accumulation_steps=2, backend=BACKEND)
    x, y = CNN.inputs(5).to(DEVICE), torch.randn(5, 5, dtype=torch.float64, device=DEVICE)
    squared_error(dp(x[:3]), y[:3], "sum").backward()
    squared_error(dp(x[3:]), y[3:], "sum").backward()
    ref, norms = dp_reference(model, x, y, 1.0, "sum", loss=squared_error)
    assert (norms[0] > 1).any()
    assert max_relative_error(model, ref) < 1e-10
    model.zero_grad(set_to_none=True)
    empty = dp(x[:0])
    assert empty.shape == (0, 5)
    squared_error(empty, y[:0], "sum").backward()
    squared_error(dp(x[:0]), y[:0], "sum").backward()  # the logical step's second micro-batch: the noisy one
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


class UnitRows(nn.Module):
    """x / ‖x‖ per sample: NaN for an all-zero sample, so a padded row's gradient is NaN."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(6, 3)

    def forward(self, x):
        return self.linear(x / x.norm(dim=1, keepdim=True))


def test_padded_rows_a_model_cannot_compute_are_dropped_and_the_release_stays_exact():
    """A model that gives NaN for an all-zero input: the padded rows' NaN gradients are dropped (counted in
    dropped_samples) and reach nothing; the batch's release is its clipped sum, against torch.func."""
    torch.manual_seed(0)
    model = UnitRows().to(DEVICE, torch.float64)
    dp = dpcompile.dpcompile(model, max_grad_norm=4.0, noise_multiplier=0.0, loss_reduction="sum", batch_bucket=4,
                             backend=BACKEND)
    x, y = torch.randn(3, 6, dtype=torch.float64, device=DEVICE), torch.randn(3, 3, dtype=torch.float64, device=DEVICE)
    squared_error(dp(x), y, "sum").backward()
    ref, norms = dp_reference(model, x, y, 4.0, "sum", loss=squared_error)
    assert (norms[0] > 4).any() and (norms[0] < 4).any()
    assert max_relative_error(model, ref) < 1e-10
    with pytest.warns(RuntimeWarning, match="all-zero samples that pad a batch"):
        assert dp.privacy.dropped_samples == 1
