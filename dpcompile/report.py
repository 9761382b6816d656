"""The per-layer plan as data (rows) and as a table (str)."""
from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from .passes.meta import PARAMS, PLAN, SITE


@dataclass(frozen=True)
class PlanRow:
    """One parameter-gradient term: where, what, sizes, both methods' costs, the choice and why."""

    param: str
    module: str
    op: str
    B: str
    T: str
    d: str
    p: str
    costs: dict          # method -> (flops expr, bytes expr) as strings
    numbers: dict        # method -> (flops, bytes) for the batch the graph was compiled on
    method: str
    impl: str
    reason: str


@dataclass(frozen=True)
class PlanReport:
    rows: tuple[PlanRow, ...]

    def __str__(self) -> str:
        head = ("parameter", "op", "B", "T", "d", "p", "ghost MFLOP/MiB", "per-sample MFLOP/MiB", "method", "reason")
        lines = [head]
        for r in self.rows:
            def fmt(m):
                if m not in r.numbers:
                    return "-"
                f, b = r.numbers[m]
                return f"{f/1e6:.3g} / {b/2**20:.3g}"
            method = r.method + (f" ({r.impl})" if r.impl else "")
            lines.append((r.param, r.op, r.B, r.T, r.d, r.p, fmt("ghost"), fmt("per_sample"), method, r.reason))
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(head))]
        out = ["  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
        out.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(out)

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def plan_report(backward: fx.GraphModule) -> PlanReport:
    """Rows from an annotated backward graph (dp_params, dp_site, dp_plan)."""
    rows = []
    for param in backward.meta.get(PARAMS, ()):
        for node in param.sites:
            site, decision = node.meta[SITE], node.meta[PLAN]
            s = site.shape
            rows.append(PlanRow(
                param=param.name, module=param.name.rpartition(".")[0], op=site.op or site.rule,
                B=str(s.B), T=str(s.T), d=str(s.d), p=str(s.p * s.groups),
                costs={m: (str(c.flops), str(c.bytes)) for m, c in decision.costs.items()},
                numbers=decision.numbers, method=decision.method,
                impl=", ".join(filter(None, (decision.impl, "TF32" if decision.tf32 else ""))), reason=decision.reason))
    return PlanReport(tuple(rows))
