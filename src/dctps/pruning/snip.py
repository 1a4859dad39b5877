"""SNIP (Lee et al., ICLR 2019), ``docs/BASELINES.md`` §2: one shot, ``s = |W * g|`` with ``g`` the
gradient of the loss averaged over ``B`` batches, keep the global top ``k = round(d N)``.

This is Iter-SNIP with ``T = 1`` (as in the FORCE repository); one-shot SNIP is known to empty
whole layers at extreme sparsity ("layer collapse", Tanaka et al. 2020).
"""

from __future__ import annotations

import torch

from dctps.pruning.common import Context, Count, Loss
from dctps.pruning.force import gradient_saliency_masks

__all__ = ["snip_masks"]


def snip_masks(
    ctx: Context,
    *,
    num_batches: Count = 1,
    loss: Loss = "cross_entropy",
    train_mode: bool = True,
) -> list[torch.Tensor]:
    """SNIP masks. ``loss``: ``cross_entropy`` or ``nll_raw`` (nll on raw logits, the FORCE
    code's quirk); ``train_mode``: BN batch statistics, as the FORCE code."""
    return gradient_saliency_masks(
        ctx, method="snip", reuse_dense=False, steps=1, schedule="exp",
        num_batches=num_batches, loss=loss, train_mode=train_mode,
    )  # fmt: skip
