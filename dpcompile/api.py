"""dpcompile(model, ...): the model, compiled so that loss.backward() leaves DP-SGD gradients in .grad."""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.fx.experimental._config as fx_config
from torch import nn
from torch.utils._pytree import tree_map

from .backend import DPBackend
from .config import DPConfig
from .errors import GraphBreakError
from .passes.safety import refuse_unsupported_modules
from .report import PlanReport, plan_report


class DPModel(nn.Module):
    """Runs the model through the DP backend; shares its parameters and its state_dict keys."""

    def __init__(self, model: nn.Module, config: DPConfig) -> None:
        super().__init__()
        refuse_unsupported_modules(model)
        self.module = model
        self.config = config
        self.backend = DPBackend(config, {id(p): n for n, p in model.named_parameters()})
        object.__setattr__(self, "_compiled", torch.compile(model, backend=self.backend, fullgraph=True, dynamic=False))

    def forward(self, *args, **kwargs):
        batch = next((a.shape[0] for a in args if isinstance(a, torch.Tensor) and a.dim() > 0), None)
        if batch == 0:  # an empty (Poisson) batch: one all-zero sample carries the noise-only step
            args, kwargs = _pad_empty_batch(args), {k: v for k, v in zip(kwargs, _pad_empty_batch(kwargs.values()))}
            return tree_map(lambda t: t[:0] if isinstance(t, torch.Tensor) and t.dim() > 0 else t,
                            self.forward(*args, **kwargs))
        for a in (*args, *kwargs.values()):
            if isinstance(a, torch.Tensor) and a.dim() > 0 and a.shape[0] == batch:
                torch._dynamo.mark_dynamic(a, 0)  # only the batch dimension is dynamic
        try:
            with fx_config.patch(backed_size_oblivious=True):  # batch sizes 0 and 1 share the graph
                out = self._compiled(*args, **kwargs)
        except torch._dynamo.exc.Unsupported as exc:
            raise GraphBreakError(
                f"the model does not capture as one graph ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
                "The clip factor needs every layer's norm, so the forward must be one graph: remove the "
                "data-dependent Python control flow or unsupported call named above.") from exc
        except Exception as exc:
            if self.backend.error is not None:
                raise self.backend.error from exc
            raise
        if self.backend.error is not None:
            raise self.backend.error
        return out

    @property
    def graphs(self) -> dict[str, fx.GraphModule]:
        """Captured forward, backward before and after rewriting (after the first forward call)."""
        return self.backend.graphs

    @property
    def compilations(self) -> int:
        """How many times the model was captured (recompiles included)."""
        return self.backend.compilations

    def explain(self) -> PlanReport:
        """The per-layer plan: sizes, both methods' costs, the decision and why."""
        if "backward_rewritten" not in self.graphs:
            raise RuntimeError("the plan is made at the first forward call; run one batch first")
        return plan_report(self.graphs["backward_rewritten"])

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.module.load_state_dict(state_dict, strict=strict, assign=assign)


def dpcompile(model: nn.Module, *, max_grad_norm: float, noise_multiplier: float, loss_reduction: str = "mean",
              expected_batch_size: int | None = None, policy: str = "mixed", backend: str = "inductor",
              seed: int | None = None, **privacy) -> DPModel:
    """Compile model for DP-SGD: after loss.backward(), .grad = (Σ_i C_i g_i + N(0, σ²R²)) / n."""
    config = DPConfig(max_grad_norm=max_grad_norm, noise_multiplier=noise_multiplier,
                      loss_reduction=loss_reduction, expected_batch_size=expected_batch_size,
                      policy=policy, backend=backend, seed=seed, **privacy)
    return DPModel(model, config)


def _pad_empty_batch(values):
    """Empty-batch tensors replaced by one zero sample; its output gradient, and so its clipped
    per-sample gradient, is zero, so the step adds noise only."""
    return tuple(v.new_zeros((1, *v.shape[1:])) if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == 0
                 else v for v in values)
