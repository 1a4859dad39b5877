"""The ``dctps`` console script's entry point, outside the ``dctps`` package on purpose.

Importing anything under ``dctps`` first runs ``dctps/__init__.py``, which imports torch (a second
or more). With the script pointing at ``dctps.cli:main``, a Ctrl-C in that time raised
``KeyboardInterrupt`` in the script's own import line, before :func:`dctps.cli.main` could catch
it: Python's traceback instead of the one line and exit status 130 of a Ctrl-C later in a run.
This module imports nothing heavy, so the script reaches :func:`main`, which catches it around the
import. ``python -m dctps.cli`` and ``python -m dctps`` run :func:`dctps.cli.main` directly.
"""

from __future__ import annotations

import sys


def main() -> None:
    """Import the command line and run it (:func:`dctps.cli.main`); a Ctrl-C while importing
    is one ``interrupted`` line on stderr and exit status 130, as it is later in a command."""
    try:
        from dctps.cli import main as run
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    try:
        run()
    finally:
        _exit_130_on_ctrl_c()


def _exit_130_on_ctrl_c() -> None:
    """From here on the command's work is done (its output written, its exit status chosen):
    a Ctrl-C while the interpreter shuts down (joining threads, atexit handlers) exits with
    status 130, as one during the command does, instead of dying by the signal (-2)."""
    import os
    import signal

    def handler(signum: int, frame: object) -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(130)

    try:
        signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: signals go to the main thread's handler anyway
        pass


if __name__ == "__main__":
    main()
