"""Gradient-saliency pruning: Iter-SNIP (the DCTpS paper's "FORCE") and FORCE (de Jorge et al.,
ICLR 2021). ``docs/BASELINES.md`` §3 and §4.

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

The final mask is applied to the caller's model (its initial weights). SNIP is the ``T = 1``
case (:mod:`dctps.pruning.snip`).

Failure (App. D). When a step has fewer than ``k_t`` scores ``> 0`` (a "shortfall"), the reference
gets ``tau = 0`` and keeps EVERY weight at that step. At the last step that means it returns a
dense network (throughput collapse at extreme sparsity, App. D.1; all-zero saliency on
FixupResNet110, App. D.2); here that raises :class:`~dctps.errors.PruningFailed`. At an earlier
step the reference goes on (Iter-SNIP with the same weights, FORCE from the dense weights) and can
still end at a valid sparse mask, so by default (``shortfall='keep_all'``) so do we; a step with no
positive score that keeping everything cannot change (Iter-SNIP, or FORCE already dense) raises at
once, and ``shortfall='raise'`` raises at the first shortfall.

Reference quirk, kept as an option: the code's loss is ``F.nll_loss`` on RAW logits
(``loss='nll_raw'``, i.e. ``-mean z_{i, y_i}``); the default is cross-entropy, the papers' intent.
"""

from __future__ import annotations

from typing import Literal, get_args

import torch

from dctps.errors import unknown_name
from dctps.pruning.common import (
    Context,
    Count,
    Loss,
    Schedule,
    any_positive,
    average_gradients,
    check_scores,
    density_of,
    global_masks,
    loss_fn,
    step_counts,
)

__all__ = ["gradient_saliency_masks", "iter_snip_masks", "force_masks", "SHORTFALL"]

Shortfall = Literal["keep_all", "raise"]
SHORTFALL: tuple[str, ...] = get_args(Shortfall)


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
    shortfall: str = "keep_all",
) -> list[torch.Tensor]:
    """The shared loop (module doc); ``reuse_dense=True`` is FORCE, ``False`` Iter-SNIP/SNIP."""
    if shortfall not in SHORTFALL:
        raise unknown_name("shortfall policy", shortfall, SHORTFALL)
    lossf = loss_fn(loss)
    counts = step_counts(ctx.density, steps, schedule, ctx.total, ctx.k)
    net, weights = ctx.working_copy(train=train_mode)
    w0 = [w.detach().clone() for w in weights]
    stream = ctx.stream()
    masks = [torch.ones_like(w, dtype=torch.bool) for w in weights]
    dense = True  # the current mask is all ones
    reached = 1.0
    ctx.report(0, steps)
    for t, k_t in enumerate(counts, 1):
        grads = average_gradients(net, weights, stream, num_batches, lossf)
        with torch.no_grad():
            base = w0 if reuse_dense else [w.detach() for w in weights]
            scores = [(w * g).abs_() for w, g in zip(base, grads, strict=True)]
            # No positive score at all, and keeping every weight would not change the network
            # (Iter-SNIP never revives weights; FORCE already restarted dense): a fixed point.
            hopeless = (dense or not reuse_dense) and not any_positive(scores)
            final = t == steps or shortfall == "raise" or hopeless
            ok = check_scores(
                scores, k_t, method=method, step=t, steps=steps, reached=reached, final=final
            )
            if ok:
                if not reuse_dense and not dense:
                    # one read of the global minimum: Python's min() over 0-d tensors read
                    # each comparison (L - 1 syncs on CUDA), and masked_fill_ with a tensor
                    # value reads it again per layer (CUDA's kernel takes value.item())
                    low = torch.stack([s.min() for s in scores]).min().item()
                    for s, m in zip(scores, masks, strict=True):
                        s.masked_fill_(~m, low)
                masks = global_masks(scores, k_t)
                reached = min(reached, density_of(masks))
            else:  # the reference's tau = 0: keep every weight at this step
                masks = [torch.ones_like(m) for m in masks]
            dense = not ok
            for w, w_init, m in zip(weights, w0, masks, strict=True):
                if reuse_dense:
                    w.copy_(w_init * m)
                else:
                    w.mul_(m)
        ctx.report(t, steps)
    return masks


def iter_snip_masks(
    ctx: Context,
    *,
    steps: Count = 60,
    schedule: Schedule = "exp",
    num_batches: Count = 1,
    loss: Loss = "cross_entropy",
    train_mode: bool = True,
    shortfall: Shortfall = "keep_all",
) -> list[torch.Tensor]:
    """Iter-SNIP, ``docs/BASELINES.md`` §3 (what the DCTpS paper calls FORCE).

    Args (defaults: DCTpS Table E.2):
        steps: ``T`` pruning steps (60).
        schedule: ``exp`` (``d_t = d^(t/T)``) or ``linear``.
        num_batches: ``B`` batches per gradient: 1 for CIFAR-10, 10 for CIFAR-100, 20 for Tiny
            ImageNet (:func:`dctps.pruning.default_batches`), batch size 128 in the paper.
        loss: ``cross_entropy`` or ``nll_raw`` (the reference's nll on raw logits).
        train_mode: score in train mode (BN batch statistics), as the reference.
        shortfall: what a step before the last does when fewer than ``k_t`` scores are ``> 0``:
            ``keep_all`` (the reference's ``tau = 0``: keep every weight this step and go on;
            FORCE then restarts from the dense weights) or ``raise`` (fail at once). The last
            step, and a step with no positive score that keeping all could not change, always
            raise :class:`~dctps.errors.PruningFailed`.
    """
    return gradient_saliency_masks(
        ctx, method="iter_snip", reuse_dense=False, steps=steps, schedule=schedule,
        num_batches=num_batches, loss=loss, train_mode=train_mode, shortfall=shortfall,
    )  # fmt: skip


def force_masks(
    ctx: Context,
    *,
    steps: Count = 60,
    schedule: Schedule = "exp",
    num_batches: Count = 1,
    loss: Loss = "cross_entropy",
    train_mode: bool = True,
    shortfall: Shortfall = "keep_all",
) -> list[torch.Tensor]:
    """FORCE as published (ICLR 2021), ``docs/BASELINES.md`` §4: ``s = |W0 * dL/dW (W0 * m)|``.

    Same arguments as :func:`iter_snip_masks`.
    """
    return gradient_saliency_masks(
        ctx, method="force", reuse_dense=True, steps=steps, schedule=schedule,
        num_batches=num_batches, loss=loss, train_mode=train_mode, shortfall=shortfall,
    )  # fmt: skip
