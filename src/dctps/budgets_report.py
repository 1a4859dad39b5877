"""The per-layer budget view behind ``dctps budgets`` (Figure A.2 of the supplement).

For a paper architecture, a density and an allocation, it lists every prunable layer with its
weight shape, weights, non-zeros (as :func:`dctps.sparsify` would allocate them) and layer density.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dctps.allocation import budgets
from dctps.errors import DctpsError, check_density
from dctps.sparsify import prunable_layers


@dataclass(frozen=True)
class BudgetRow:
    layer: str
    shape: tuple[int, ...]
    weights: int
    nonzeros: int

    @property
    def density(self) -> float:
        """``nonzeros / weights`` of this layer."""
        return self.nonzeros / self.weights


def budget_rows(
    model_name: str,
    density: float,
    allocation: str = "epl",
    num_classes: int = 10,
    in_channels: int = 3,
    image_size: int = 32,
) -> list[BudgetRow]:
    """One row per prunable layer of ``dctps.models.build(model_name, num_classes,
    in_channels, image_size)`` (a data set's input changes the first layer's weights, and
    those of an architecture without a global pooling)."""
    from dctps.models import build

    d = check_density(density)
    with torch.device("meta"):  # shapes only: no memory, whatever --classes asks for
        model = build(model_name, num_classes, in_channels, image_size)
        layers = list(prunable_layers(model))
    counts = budgets([s for _, _, s in layers], d, allocation)
    if sum(counts) == 0:  # as sparsify and train refuse it: a table of zeros is no answer
        total = sum(math.prod(s) for _, _, s in layers)
        raise DctpsError(
            f"density {d:g} gives 0 of {model_name}'s {total:,} weights (round(density * "
            f"weights) = 0); density {1 / total:.2g} keeps one weight"
        )
    return [
        BudgetRow(name, shape, math.prod(shape), n)
        for (name, _, shape), n in zip(layers, counts, strict=True)
    ]


def format_rows(rows: list[BudgetRow]) -> str:
    """A fixed-width table with a totals line."""
    w = max(len("layer"), *(len(r.layer) for r in rows))
    head = f"{'layer':<{w}}  {'shape':<18} {'weights':>12} {'non-zeros':>10} {'density':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        lines.append(
            f"{r.layer:<{w}}  {shape:<18} {r.weights:>12,} {r.nonzeros:>10,} {r.density:>9.4%}"
        )
    weights, nnz = sum(r.weights for r in rows), sum(r.nonzeros for r in rows)
    lines.append("-" * len(head))
    lines.append(f"{'total':<{w}}  {'':<18} {weights:>12,} {nnz:>10,} {nnz / weights:>9.4%}")
    return "\n".join(lines)
