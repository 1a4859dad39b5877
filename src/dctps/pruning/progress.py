"""Progress of a pruning run: the ``progress`` argument of :func:`dctps.pruning.prune`.

A method reports through :meth:`~dctps.pruning.common.Context.report`: ``report(0, T)`` once when
its loop starts (so a bar can appear before the first, possibly long, step), then
``report(t, T)`` after each of its ``T`` steps (``T = 1`` for the one-shot methods ``snip``,
``grasp`` and ``random``). ``prune`` passes these calls to a callback ``progress(t, T)``, or, with
``progress=True``, to a :class:`PruneBar`: one tqdm bar on stderr (a one-line status for one-shot
methods), closed when pruning ends or fails. Nothing here holds global state.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

__all__ = ["ProgressFn", "PruneBar", "UNITS"]

#: ``progress(step, steps)``: ``step`` of ``steps`` are done (``0``: the loop is starting).
ProgressFn = Callable[[int, int], None]

#: the bar's unit per method (the papers' words: SynFlow "iterations", FORCE "steps").
UNITS = {"synflow": "iter"}


class PruneBar:
    """A tqdm bar for one pruning run, usable as a :data:`ProgressFn`.

    It is created at the first call (when the method knows its number of steps), written to
    ``sys.stderr`` as it is at that moment, and left on screen by :meth:`close`, which can mark
    how it ended (``failed``, ``interrupted``).
    """

    def __init__(self, method: str, density: float) -> None:
        self.method = method
        self.density = density
        self._bar: Any = None

    def __call__(self, step: int, steps: int) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            one_shot = steps == 1
            self._bar = tqdm(
                total=steps,
                desc=f"pruning {self.method} to density {self.density:g}",
                unit=UNITS.get(self.method, "step"),
                file=sys.stderr,
                dynamic_ncols=True,
                leave=True,
                # one shot: a status line ("... 0/1 [elapsed]"), a bar would jump 0 -> 100%
                bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}{postfix}]" if one_shot else None,
            )
        if step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def close(self, ending: str | None = None) -> None:
        """Close the bar (if it was ever shown); ``ending`` (e.g. ``"failed"``, ``"interrupted"``):
        say so on it first."""
        if self._bar is None:
            return
        if ending:
            self._bar.set_postfix_str(ending, refresh=False)
        self._bar.close()
        self._bar = None
