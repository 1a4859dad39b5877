"""Seeded train/validation hold-out."""

from __future__ import annotations

import math

import torch

from dctps.errors import DctpsError


def holdout_size(n: int, fraction: float) -> int:
    """The hold-out examples :func:`holdout` takes from ``n``: ``round(fraction * n)``."""
    return round(fraction * n)


def holdout(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split ``range(n)`` into a training and a hold-out part, reproducibly from ``seed``.

    A permutation of ``range(n)`` is drawn with a ``torch.Generator`` seeded with ``seed``; its
    first ``round(fraction * n)`` entries are the hold-out indices and the rest the training
    indices. Both parts are returned in permutation order, so the first ``k`` training indices are a
    random subset of the training part. The authors' code shuffled with numpy, seeded with each
    run's seed, and held out ``floor((1 - 0.9) * n)`` (4,999 of CIFAR's 50,000): their split cannot
    be reproduced here (nor their file order, which the official batches fix), and one ``seed`` for
    every run puts all methods and seeds on the same hold-out (README, "Paper-exact vs ...").

    Args:
        n: number of examples (>= 0).
        fraction: hold-out fraction in [0, 1).
        seed: seed of the permutation; the same ``(n, fraction, seed)`` always gives the same split.

    Returns:
        ``(train_idx, val_idx)``: int64 tensors of shapes ``(n - k,)`` and ``(k,)``, disjoint,
        together covering ``range(n)``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise DctpsError(f"holdout: n must be a non-negative integer, got {n!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise DctpsError(f"val_fraction must be a number in [0, 1), got {fraction!r}")
    fraction = float(fraction)
    if math.isnan(fraction) or not (0.0 <= fraction < 1.0):
        raise DctpsError(f"val_fraction must be in [0, 1) (e.g. 0.1 for 10%), got {fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DctpsError(f"split seed must be an integer, got {seed!r}")
    k = holdout_size(n, fraction)
    g = torch.Generator()
    # manual_seed rejects negative seeds on some versions; fold them into the valid range.
    g.manual_seed(seed % (2**63))
    perm = torch.randperm(n, generator=g)
    return perm[k:].clone(), perm[:k].clone()
