"""SynFlow (Tanaka et al., NeurIPS 2020), ``docs/BASELINES.md`` §5: iterative, data-free.

On a deep copy of the network in eval mode, linearised by replacing every floating tensor of the
``state_dict`` (weights, biases, BN affine parameters AND BN running statistics) by its absolute
value, and with the mask ``m = 1``, for ``t = 1..T`` (``T = 100``, exponential schedule):

1. ``R = sum(f(1; |theta| * m))``, the sum of the outputs on ONE all-ones input of the model's
   input shape ``[1, C, H, W]``;
2. ``s = |theta * dR/dtheta|`` for every prunable weight (pruned entries score 0, so they never
   come back);
3. ``m`` = the ``k_t`` largest scores (exactly, ties by index).

For a bias-free network of ReLU/linear layers, ``R`` is the sum over input-output paths of the
product of the absolute weights on the path, and ``s_e`` for an edge ``e`` is the sum of those
products over the paths through ``e`` (the "synaptic flow").

The reference multiplies the signs back after each step because it prunes the model in place;
here the copy is discarded and the caller's model (with its signs) gets the final mask.

Reference quirk, kept as an option: the reference scores in float32, where ``R`` overflows on
deep networks (``log10 R ~ 72`` for ResNet50 at init; estimate in §5); the default here is
``synflow_dtype=torch.float64``. Non-finite scores, no positive score (FixupResNet110, App. D.2),
or fewer than ``k`` positive scores at the last step raise :class:`~dctps.errors.PruningFailed`.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch

from dctps.errors import DctpsError
from dctps.pruning.common import (
    Context,
    Count,
    Schedule,
    any_positive,
    check_scores,
    density_of,
    global_masks,
    logits,
    step_counts,
)

__all__ = ["synflow_masks"]


def _input_shape(ctx: Context, input_shape: Sequence[int] | None) -> tuple[int, ...]:
    if input_shape is not None:
        # a string ("abc") or a float (3.5, cut to 3) failed in int() with a traceback, or passed
        ok = (
            isinstance(input_shape, Sequence)
            and not isinstance(input_shape, (str, bytes))
            and len(input_shape) > 0
            and all(
                isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1
                for s in input_shape
            )
        )
        if not ok:
            raise DctpsError(
                "synflow's input_shape must be positive integer sizes (C, H, W), e.g. "
                f"[3, 32, 32], got {input_shape!r}"
            )
        shape = tuple(int(s) for s in input_shape)
        ctx.input_shape = shape
        return shape
    if ctx.batches is None:
        raise DctpsError(
            "synflow needs the model's input shape: pass input_shape=(C, H, W) or batches= "
            "(only the shape of the first batch is used)"
        )
    x, _ = ctx.stream().next()
    return tuple(x.shape[1:])


def synflow_masks(
    ctx: Context,
    *,
    iterations: Count = 100,
    schedule: Schedule = "exp",
    input_shape: Sequence[int] | None = None,
    synflow_dtype: torch.dtype = torch.float64,
    train_mode: bool = False,
) -> list[torch.Tensor]:
    """SynFlow masks (module doc).

    Args:
        iterations: ``T`` (100, DCTpS Table E.2 / SynFlow paper).
        schedule: ``exp`` or ``linear``.
        input_shape: ``(C, H, W)`` of one input; default: the shape of the first of ``batches``.
        synflow_dtype: ``torch.float64`` (default) or ``torch.float32`` (the reference; overflows
            on deep networks, which then raises :class:`~dctps.errors.PruningFailed`).
        train_mode: score in train mode (the reference's ``--prune-train-mode``); BN on a single
            constant image then gives degenerate scores.
    """
    if isinstance(synflow_dtype, str):  # "float32" / "float64" from a config file or CLI
        synflow_dtype = getattr(torch, synflow_dtype, synflow_dtype)  # type: ignore[assignment]
    if synflow_dtype not in (torch.float64, torch.float32):
        # half types overflow R at a few layers (float16: non-finite scores) or round a quarter
        # of the mask away from float64's (bfloat16), silently
        raise DctpsError(
            f"synflow_dtype must be float64 (default) or float32 (the reference), got "
            f"{synflow_dtype!r}"
        )
    if synflow_dtype == torch.float64 and torch.device(ctx.device).type == "mps":
        raise DctpsError(
            "synflow scores in float64, which MPS does not have: prune the model on the CPU "
            "(model.cpu(), then move it back) or pass synflow_dtype=torch.float32 (the "
            "reference's; it overflows on deep networks, e.g. ResNet50)"
        )
    shape = _input_shape(ctx, input_shape)
    counts = step_counts(ctx.density, iterations, schedule, ctx.total, ctx.k)
    net, weights = ctx.working_copy(train=train_mode, dtype=synflow_dtype)
    with torch.no_grad():
        for v in net.state_dict().values():
            if v.is_floating_point():
                v.abs_()
    w0 = [w.detach().clone() for w in weights]
    x = torch.ones((1, *shape), dtype=synflow_dtype, device=ctx.device)
    masks: list[torch.Tensor] | None = None
    reached = 1.0
    ctx.report(0, iterations)
    for t, k_t in enumerate(counts, 1):
        out = logits(net, x, classes=False)  # SynFlow sums the outputs: no labels
        grads = torch.autograd.grad(out.sum(), weights, allow_unused=True)
        with torch.no_grad():
            scores = [
                torch.zeros_like(w) if g is None else (w * g).abs_()
                for w, g in zip(weights, grads, strict=True)
            ]
            # Zero-score weights lie on no input-output path and never regain a score, so a
            # shortfall before the last step is harmless (the reference keeps only the positive
            # ones); with no positive score at all, R = 0 for good.
            final = t == iterations or not any_positive(scores)
            ok = check_scores(
                scores, k_t, method="synflow", step=t, steps=iterations, reached=reached,
                final=final,
            )  # fmt: skip
            if masks is not None:
                # On a shortfall the k_t kept weights include zero scores, ranked by index; a
                # weight pruned earlier also scores 0 and must not come back in that fill, so it
                # ranks below every live one (the reference keeps only positive scores).
                for s_, m in zip(scores, masks, strict=True):
                    s_.masked_fill_(~m, -1.0)
            masks = global_masks(scores, k_t)
            for w, w_init, m in zip(weights, w0, masks, strict=True):
                w.copy_(w_init * m)
        if ok:
            reached = density_of(masks)
        ctx.report(t, iterations)
    assert masks is not None
    return masks
