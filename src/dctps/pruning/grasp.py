"""GraSP (Wang et al., ICLR 2020), SynFlow-repository version, ``docs/BASELINES.md`` §6.

With the loss ``L = CE(f(x) / T_temp, y)`` (``T_temp = 200``) on ``B`` batches:

1. ``g = sum_b dL_b/dtheta`` (no graph);
2. ``Hg = sum_b d(g . dL_b/dtheta)/dtheta`` (a Hessian-gradient product, double backward);
3. ``s = theta * Hg``, SIGNED; keep the ``k`` largest (= remove the largest ``-theta * Hg``).

The reference also divides ``s`` by ``|sum s| + 1e-10``, which does not change the ranking and is
omitted. One shot; it collapses early at extreme sparsity (§6). Scores that are all zero or
non-finite raise :class:`~dctps.errors.PruningFailed`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from dctps.errors import DctpsError
from dctps.pruning.common import Context, Count, Positive, check_scores, global_masks, logits

__all__ = ["grasp_masks"]


def _accumulate(into: list[torch.Tensor], grads: tuple[torch.Tensor | None, ...]) -> None:
    for acc, g in zip(into, grads, strict=True):
        if g is not None:
            acc.add_(g)


def grasp_masks(
    ctx: Context,
    *,
    num_batches: Count = 1,
    temperature: Positive = 200.0,
    train_mode: bool = False,
) -> list[torch.Tensor]:
    """GraSP masks. ``train_mode=False``: eval mode, as the SynFlow repository prunes."""
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise DctpsError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise DctpsError(f"temperature must be > 0, got {temperature!r}")
    ctx.report(0, 1)
    net, weights = ctx.working_copy(train=train_mode)
    stream = ctx.stream()
    data = [stream.next() for _ in range(num_batches)]
    g_s = [torch.zeros_like(w) for w in weights]
    hg = [torch.zeros_like(w) for w in weights]
    # The math attention kernel: the fused ones have no double backward.
    with sdpa_kernel(SDPBackend.MATH):
        for x, y in data:
            loss = F.cross_entropy(logits(net, x) / temperature, y)
            _accumulate(g_s, torch.autograd.grad(loss, weights, allow_unused=True))
        for x, y in data:
            loss = F.cross_entropy(logits(net, x) / temperature, y)
            grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
            z = sum((g * s).sum() for g, s in zip(grads, g_s, strict=True) if g is not None)
            if isinstance(z, torch.Tensor) and z.requires_grad:
                _accumulate(hg, torch.autograd.grad(z, weights, allow_unused=True))
    with torch.no_grad():
        scores = [w.detach() * h for w, h in zip(weights, hg, strict=True)]
    check_scores(
        scores, ctx.k, method="grasp", step=1, steps=1, reached=1.0, require_positive=False
    )
    masks = global_masks(scores, ctx.k)
    ctx.report(1, 1)
    return masks
