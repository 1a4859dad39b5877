"""Progress of a pruning run: the ``progress`` argument of :func:`dctps.pruning.prune`.

A method reports through :meth:`~dctps.pruning.common.Context.report`: ``report(0, T)`` once when
its loop starts (so a bar can appear before the first, possibly long, step), then
``report(t, T)`` after each of its ``T`` steps (``T = 1`` for the one-shot methods ``snip``,
``grasp`` and ``random``). ``prune`` passes these calls to a callback ``progress(t, T)``, or, with
``progress=True``, to a :class:`PruneBar`: one tqdm bar on stderr (a one-line status for one-shot
methods), closed when pruning ends or fails. Nothing here holds global state.
"""

from __future__ import annotations

import time
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
        self._off = False  # DCTPS_PROGRESS=none
        self._started = 0.0

    def __call__(self, step: int, steps: int) -> None:
        from dctps import progress

        if self._bar is None and not self._off:
            one_shot = steps == 1
            self._bar = progress.make_bar(
                steps,
                f"pruning {self.method} to density {self.density:g}",
                UNITS.get(self.method, "step"),
                timed=False,  # its two lines: that it started, then how long it took
                dynamic_ncols=True,
                leave=True,
                # one shot: a status line ("... 0/1 [elapsed]"), a bar would jump 0 -> 100%
                bar_format="{desc}: {n_fmt}/{total_fmt} [{elapsed}{postfix}]" if one_shot else None,
            )
            self._off = self._bar is None
            self._started = time.perf_counter()
            progress.mark(self._bar)  # in a log: that it started (SynFlow's 100 iterations)
        if self._bar is not None and step > self._bar.n:
            self._bar.update(step - self._bar.n)

    def close(self, ending: str | None = None) -> None:
        """Close the bar (if it was ever shown); ``ending`` (e.g. ``"failed"``, ``"interrupted"``):
        say so on it first, else how long the pruning took."""
        from dctps import progress

        if self._bar is None:
            return
        took = f"done in {time.perf_counter() - self._started:.1f} s"
        self._bar.set_postfix_str(ending or took, refresh=False)
        progress.mark(self._bar)
        self._bar.close()
        self._bar = None
