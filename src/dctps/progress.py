"""How long work shows its progress: a tqdm bar where someone watches it (a terminal, a
notebook), plain lines where it goes to a log (a SLURM job's output file, ``| tee``, CI).

A bar redraws itself with carriage returns about ten times a second and ends its line only when
it closes: in a log file a 200-epoch run was one line of 1.5 MB, and its per-epoch accuracies
were overwritten fragments of it. In a log each epoch (or sweep run) is one line instead.
``DCTPS_PROGRESS=bar|lines|none`` chooses for every command; ``-q`` still silences one.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import time
from collections.abc import Iterator
from typing import Any

from dctps.errors import DctpsError

__all__ = ["ENV", "STYLES", "Lines", "clock", "make_bar", "mark", "style", "tagged"]

#: the environment variable that overrides :func:`style`
ENV = "DCTPS_PROGRESS"
STYLES = ("bar", "lines", "none")


def style(stream: Any = None) -> str:
    """``"bar"`` where ``stream`` (default ``sys.stderr``) is a terminal or the process runs in
    a Jupyter kernel, ``"lines"`` elsewhere (a file, a pipe); :data:`ENV` overrides."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in STYLES:
            raise DctpsError(f"{ENV}={forced!r}: must be one of {', '.join(STYLES)}")
        return forced
    stream = sys.stderr if stream is None else stream
    try:
        tty = bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        tty = False
    return "bar" if tty or _in_notebook() else "lines"


def _in_notebook() -> bool:
    """Whether tqdm.auto draws its notebook widget here (a kernel's stderr is no terminal)."""
    if "IPython" not in sys.modules:  # not imported: not a kernel (and not worth importing)
        return False
    import tqdm.auto  # noqa: F401 - it picks the notebook class in tqdm.autonotebook

    return getattr(sys.modules["tqdm.autonotebook"].tqdm, "__module__", "") == "tqdm.notebook"


def clock(seconds: float) -> str:
    """``m:ss``, or ``h:mm:ss`` from an hour on (tqdm's ``mm:ss`` without its leading zero)."""
    s = max(0, int(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Lines:
    """What a tqdm bar is to the code that drives it (``update``, ``set_postfix_str``,
    ``set_description``, ``write``, ``close``), written as one line per :func:`mark` on
    ``sys.stderr``: ``<desc> <n>/<total> <unit>: <postfix> [<elapsed> elapsed, <left> left]``.
    The time left is the units still to do at the mean rate of those done since the lines
    began (a resumed run's earlier units do not count; tqdm smooths its rate instead, which a
    line a minute or an hour apart has no use for)."""

    def __init__(
        self, total: int, desc: str = "", unit: str = "it", initial: int = 0, timed: bool = True
    ) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.initial, self.timed = initial, timed
        self.postfix = ""
        self.lost = False  # a write failed: progress stops, the work goes on
        self.start = time.monotonic()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more units (nothing is written)."""
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """The text after the count in the next line."""
        self.postfix = s

    def set_description(self, desc: str = "", refresh: bool = True) -> None:
        """The text before the count in the next line."""
        self.desc = desc

    def write(self, s: str, file: Any = None) -> None:
        """Write ``s`` as its own line (``sys.stderr`` unless ``file``), flushed. Best effort: a
        log that cannot be written (a SLURM log on a full disk, a pipe whose reader left, a
        closed stderr) ends the progress lines, not the run; every resume had stopped again on
        its first line."""
        out = sys.stderr if file is None else file
        if self.lost or out is None:  # print(file=None) would write to stdout
            return
        try:
            print(s, file=out, flush=True)
        except (OSError, ValueError):  # ValueError: a closed file
            self.lost = True

    def line(self) -> str:
        """``<desc> <n>/<total> <unit>: <postfix> [<elapsed> elapsed, <left> left]``, as
        :func:`mark` writes it: a log has no bar to tell how long a run has to go."""
        head = f"{self.desc} {self.n}/{self.total} {self.unit}".strip()
        text = f"{head}: {self.postfix}" if self.postfix else head
        return f"{text} [{self.timing()}]" if self.timed else text

    def timing(self) -> str:
        """``1:02 elapsed, 39:40 left`` (``left`` once a unit is done and while some remain)."""
        elapsed = time.monotonic() - self.start
        out = f"{clock(elapsed)} elapsed"
        done = self.n - self.initial
        if done > 0 and self.total and self.n < self.total:
            out += f", {clock(elapsed / done * (self.total - self.n))} left"
        return out

    def close(self) -> None:
        """Nothing to close: every line is whole when written."""


def make_bar(total: int, desc: str, unit: str, initial: int = 0, enabled: bool = True,
             timed: bool = True, **tqdm_options: Any) -> Any:  # fmt: skip
    """A tqdm bar, a :class:`Lines`, or ``None`` (``enabled`` false, or :data:`ENV` ``none``),
    as :func:`style` says. ``timed``: lines end with the time elapsed and left (work whose
    last line says how long it took, as pruning's does, leaves it out)."""
    if not enabled:
        return None
    how = style()
    if how == "none":
        return None
    if how == "lines":
        return Lines(total, desc, unit, initial, timed)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                **tqdm_options)  # fmt: skip


def mark(bar: Any, keep: bool = False) -> None:
    """Write ``bar``'s line now if it is a :class:`Lines` (a tqdm bar shows itself). With
    ``keep``, a tqdm bar prints it too, above itself, where it stays: a run's epochs, whose
    accuracies the bar's text held only until the next epoch's loss replaced them (and an
    80-column terminal cut to "val 8")."""
    if isinstance(bar, Lines):
        bar.write(bar.line())
    elif keep and bar is not None:
        desc = bar.desc[:-2] if bar.desc.endswith(": ") else bar.desc  # tqdm adds ": "
        head = f"{desc} {bar.n}/{bar.total} {bar.unit}".strip()
        keep_line(bar, f"{head}: {bar.postfix}" if bar.postfix else head)


def keep_line(bar: Any, text: str) -> None:
    """Write ``text`` above a tqdm ``bar`` (or as a :class:`Lines`' line), best effort: a
    terminal gone (an SSH session closed under a `disown`ed run: EIO) ends no run; tqdm's own
    writes already swallow it."""
    try:
        bar.write(text, file=sys.stderr)
    except (OSError, ValueError):
        pass


class _Prefixed(io.TextIOBase):
    """A text stream writing each whole line of its own to ``stream`` as ``prefix + line``
    (flushed, so lines from parallel processes sharing one log do not cut into each other); a
    line not yet ended waits for its end, or for :meth:`finish`."""

    def __init__(self, stream: Any, prefix: str) -> None:
        super().__init__()
        self.stream, self.prefix, self.pending = stream, prefix, ""

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        # what style() asks: lines are tagged for a log, so the run's progress is lines even
        # where only the sweep's sys.stderr was a file and fd 2, the workers', a terminal
        return False

    def write(self, s: str) -> int:
        *whole, self.pending = (self.pending + s).split("\n")
        if whole:
            self.stream.write("".join(f"{self.prefix}{line}\n" for line in whole))
            self.stream.flush()
        return len(s)

    def flush(self) -> None:
        self.stream.flush()

    def finish(self) -> None:
        """Write a line left unended."""
        if self.pending:
            self.write("\n")


@contextlib.contextmanager
def tagged(tag: str) -> Iterator[None]:
    """Within the block, every line written to ``sys.stderr`` (progress lines, warnings)
    starts with ``[tag] ``: a sweep's parallel local runs share one log, and their lines must
    say which run wrote them. For a process of its own (a sweep worker), as it swaps
    ``sys.stderr``; a stream that is gone (``None``) stays so."""
    old = sys.stderr
    if old is None:
        yield
        return
    stream = _Prefixed(old, f"[{tag}] ")
    sys.stderr = stream
    try:
        yield
    finally:
        sys.stderr = old
        with contextlib.suppress(OSError, ValueError):  # a log gone: the run's result still counts
            stream.finish()
