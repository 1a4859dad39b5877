"""Errors raised by dctps, and the validators every entry point shares.

Every user-facing error derives from :class:`DctpsError` (a ``ValueError``), so the CLI can print
one line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable


class DctpsError(ValueError):
    """A bad input or an unusable file, with a message that names the bad value and what is valid."""


class PruningFailed(DctpsError):
    """A pruning method could not reach the requested density (all-zero or NaN saliency, ...).

    Attributes:
        reached: the density the method actually reached (``None`` when unknown).
        reason: short reason, recorded in the results store.
    """

    def __init__(self, reason: str, reached: float | None = None):
        self.reason = reason
        self.reached = reached
        msg = reason if reached is None else f"{reason} (density reached: {reached:.6g})"
        super().__init__(msg)


def check_density(density: object, name: str = "density") -> float:
    """Return ``density`` as a float in (0, 1], or raise :class:`DctpsError` naming the bad value."""
    if isinstance(density, bool) or not isinstance(density, (int, float)):
        try:
            density = float(density)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DctpsError(
                f"{name} must be a number in (0, 1], got {density!r}"
            ) from None
    d = float(density)
    if math.isnan(d) or not (0.0 < d <= 1.0):
        raise DctpsError(f"{name} must be in (0, 1] (e.g. 0.01 for 1%), got {density!r}")
    return d


def unknown_name(kind: str, name: object, valid: Iterable[str]) -> DctpsError:
    """An error for an unknown registry name, with a did-you-mean suggestion and the valid names."""
    valid = sorted(valid)
    hint = difflib.get_close_matches(str(name), valid, n=1)
    guess = f" Did you mean {hint[0]!r}?" if hint else ""
    return DctpsError(f"unknown {kind} {name!r}.{guess} Valid: {', '.join(valid)}")
