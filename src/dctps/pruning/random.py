"""Random pruning at initialisation (``docs/BASELINES.md`` §1; the DCTpS paper's "Random" row).

Each layer ``l`` keeps exactly ``n_l`` weights at uniformly random positions, with
``n = budgets(shapes, d, allocation)`` from :func:`dctps.allocation.budgets` (default
``uniform``: ``n_l ~ d N_l``; also ``epl``, ``epf``, ``erk``, ``epl_ref``), so the total is exactly
``round(d N)`` (except ``epl_ref``, the authors' EPL, which can end below or above it). ``epf``
draws the same count per output filter, uniform within each filter (Appendix A.2). The DCTpS
code draws each layer with ``scipy.sparse.random``: the same distribution.
"""

from __future__ import annotations

import math

import torch

from dctps.allocation import budgets
from dctps.layers import draw_indices, make_generator
from dctps.pruning.common import Context, Seed

__all__ = ["random_masks"]


def random_masks(ctx: Context, *, seed: Seed = None) -> list[torch.Tensor]:
    """Masks with ``budgets(shapes, d, allocation)`` uniformly random non-zeros per layer.

    Args:
        seed: seed of a private generator; ``None`` draws from torch's global RNG (reproducible
            under ``torch.manual_seed``).
    """
    allocation = ctx.allocation or "uniform"
    shapes = [tuple(t.weight.shape) for t in ctx.targets]
    counts = budgets(shapes, ctx.density, allocation)
    gen = make_generator(seed)
    ctx.report(0, 1)
    masks = []
    for shape, n in zip(shapes, counts, strict=True):
        idx = draw_indices(shape, n, gen, per_filter=allocation == "epf")
        mask = torch.zeros(math.prod(shape), dtype=torch.bool)
        mask[idx] = True
        masks.append(mask.view(shape).to(ctx.device))
    ctx.report(1, 1)
    return masks
