"""Gradient-saliency pruning: Iter-SNIP (the DCTpS paper's "FORCE") and FORCE (de Jorge et al.,
ICLR 2021). ``BASELINES.md`` §3 and §4.

Both work on a deep copy of the network (train mode: BN uses batch statistics) with the mask
``m = 1`` and, for ``t = 1..T`` with ``d_t`` from :func:`~dctps.pruning.common.schedule`:

1. ``g = (1/B) sum_b dL_b/dW`` at the current weights ``W0 * m`` over ``B`` fresh batches;
2. the score
   * Iter-SNIP (``iter_snip``, naver/force ``prune_method=1``, the Jul-2020 code the DCTpS paper
     ran as "FORCE"): ``s = |(W0 * m) * g|``, and pruned entries get the global minimum, so
     pruned weights never come back;
   * FORCE (``force``, ``prune_method=3``): ``s = |W0 * g|`` with the dense initial weights, so a
     pruned weight whose gradient grows can come back;
3. ``m`` = the ``k_t = round(N d_t)`` largest scores (exactly, ties by index).

The final mask is applied to the caller's model (its initial weights). A step with fewer than
``k_t`` positive scores (all-zero saliency: FixupResNet110, App. D.2; throughput collapse at
extreme sparsity, App. D.1) raises :class:`~dctps.errors.PruningFailed`: the reference code's
``tau = 0`` there keeps every weight and silently trains a dense network. SNIP is the ``T = 1``
case (:mod:`dctps.pruning.snip`).

Reference quirk, kept as an option: the code's loss is ``F.nll_loss`` on RAW logits
(``loss='nll_raw'``, i.e. ``-mean z_{i, y_i}``); the default is cross-entropy, the papers' intent.
"""

from __future__ import annotations

import torch

from dctps.pruning.common import (
    Context,
    average_gradients,
    check_scores,
    density_of,
    global_masks,
    loss_fn,
    step_counts,
)

__all__ = ["gradient_saliency_masks", "iter_snip_masks", "force_masks"]


def gradient_saliency_masks(
    ctx: Context,
    *,
    method: str,
    reuse_dense: bool,
    steps: int,
    schedule: str,
    num_batches: int,
    loss: str,
    train_mode: bool,
) -> list[torch.Tensor]:
    """The shared loop (module doc); ``reuse_dense=True`` is FORCE, ``False`` Iter-SNIP/SNIP."""
    lossf = loss_fn(loss)
    counts = step_counts(ctx.density, steps, schedule, ctx.total, ctx.k)
    net, weights = ctx.working_copy(train=train_mode)
    w0 = [w.detach().clone() for w in weights]
    stream = ctx.stream()
    masks: list[torch.Tensor] | None = None
    reached = 1.0
    for t, k_t in enumerate(counts, 1):
        grads = average_gradients(net, weights, stream, num_batches, lossf)
        with torch.no_grad():
            base = w0 if reuse_dense else [w.detach() for w in weights]
            scores = [(w * g).abs_() for w, g in zip(base, grads)]
            check_scores(scores, k_t, method=method, step=t, steps=steps, reached=reached)
            if masks is not None and not reuse_dense:
                low = min(s.min() for s in scores)
                for s, m in zip(scores, masks):
                    s.masked_fill_(~m, low)
            masks = global_masks(scores, k_t)
            for w, w_init, m in zip(weights, w0, masks):
                w.copy_(w_init * m)
        reached = density_of(masks)
    assert masks is not None
    return masks


def iter_snip_masks(
    ctx: Context,
    *,
    steps: int = 60,
    schedule: str = "exp",
    num_batches: int = 1,
    loss: str = "cross_entropy",
    train_mode: bool = True,
) -> list[torch.Tensor]:
    """Iter-SNIP, ``BASELINES.md`` §3 (what the DCTpS paper calls FORCE).

    Args (defaults: DCTpS Table E.2):
        steps: ``T`` pruning steps (60).
        schedule: ``exp`` (``d_t = d^(t/T)``) or ``linear``.
        num_batches: ``B`` batches per gradient: 1 for CIFAR-10, 10 for CIFAR-100, 20 for Tiny
            ImageNet (:func:`dctps.pruning.default_batches`), batch size 128 in the paper.
        loss: ``cross_entropy`` or ``nll_raw`` (the reference's nll on raw logits).
        train_mode: score in train mode (BN batch statistics), as the reference.
    """
    return gradient_saliency_masks(
        ctx, method="iter_snip", reuse_dense=False, steps=steps, schedule=schedule,
        num_batches=num_batches, loss=loss, train_mode=train_mode,
    )  # fmt: skip


def force_masks(
    ctx: Context,
    *,
    steps: int = 60,
    schedule: str = "exp",
    num_batches: int = 1,
    loss: str = "cross_entropy",
    train_mode: bool = True,
) -> list[torch.Tensor]:
    """FORCE as published (ICLR 2021), ``BASELINES.md`` §4: ``s = |W0 * dL/dW (W0 * m)|``.

    Same arguments as :func:`iter_snip_masks`.
    """
    return gradient_saliency_masks(
        ctx, method="force", reuse_dense=True, steps=steps, schedule=schedule,
        num_batches=num_batches, loss=loss, train_mode=train_mode,
    )  # fmt: skip
