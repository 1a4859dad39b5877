"""SIGTERM handled as Ctrl-C, for the long-running commands (``dctps train``, ``dctps sweep``).

``timeout``, ``docker stop`` and a scheduler's pre-emption stop a process with SIGTERM, whose
default action kills it at once: no row saying where the run stopped, and a sweep's worker
processes left running on their own. Inside :func:`sigterm_as_interrupt` SIGTERM raises
:class:`Terminated`, a ``KeyboardInterrupt``, so the code that handles Ctrl-C handles it too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM during a command that turned it into an interrupt (:func:`sigterm_as_interrupt`):
    handled as a Ctrl-C is (the run's row says where it stopped; the same command resumes)."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM into :class:`Terminated` while the block runs.

    Not under ``torchrun``, which stops its workers with SIGTERM itself, and only in the main
    thread (where Python runs signal handlers); the previous handler comes back afterwards.
    """
    if "RANK" in os.environ or threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated

    before = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        # None: a handler installed from C, which Python cannot put back; the default then
        signal.signal(signal.SIGTERM, before if before is not None else signal.SIG_DFL)


def exit_code(e: KeyboardInterrupt) -> int:
    """The shell's convention: 143 (128 + SIGTERM) for :class:`Terminated`, else 130 (SIGINT)."""
    return 143 if isinstance(e, Terminated) else 130
