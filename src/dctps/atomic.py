"""Atomic file writes: a temporary sibling, flushed and fsynced, then renamed over the target.

A failure at any moment (a full disk, Ctrl-C, an exception while writing) leaves the target as it
was, the old file or none, never a partial one, and removes the temporary file. Only a hard kill
can leave a temporary file behind; it is named ``.NAME.<random>.tmp``, next to ``NAME``, so a
later writer removes it (:func:`remove_stale_temps`: once an hour old, as a concurrent writer
may own a fresh one; :mod:`dctps.train.checkpoint` at once, under its run lock).
:func:`starts_with` tells a writer whether the file it would replace is one of its own.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import io
import os
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from dctps.errors import DctpsError, cannot_write, user_path

__all__ = [
    "atomic_write",
    "check_file_target",
    "create_temp",
    "make_parent",
    "remove_stale_temps",
    "replace",
    "starts_with",
    "unlink_quietly",
    "utf8_stdout",
]


def create_temp(path: Path) -> tuple[int, str]:
    """A new, empty temporary file beside ``path``: its descriptor and name.

    Like ``tempfile.mkstemp`` but created with mode 0666 less the umask (as ``open`` would), not
    0600: the file reads like the run's other files once it replaces ``path``. The random part of
    the name keeps concurrent writers of the same target apart.
    """
    # O_BINARY (Windows only): without it a descriptor from os.open is in text mode there, and
    # the C runtime writes every b"\n" of a checkpoint or figure as b"\r\n" (tempfile sets it too)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:  # pragma: no cover - a 48-bit name collision
            continue


#: seconds :func:`replace` keeps retrying a target that another program holds open (Windows)
REPLACE_RETRY_SECONDS = 3.0


def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """``os.replace(src, dst)``; on Windows retried for up to :data:`REPLACE_RETRY_SECONDS` while
    it fails with ``PermissionError``: there a target that another program has open (a virus
    scanner or indexer reading a fresh checkpoint, a CSV open in a spreadsheet) cannot be
    replaced, and the run stopped on that moment's refusal. POSIX replaces open files."""
    delay, waited = 0.05, 0.0
    while True:
        try:
            os.replace(src, dst)
            return
        except PermissionError:
            if sys.platform != "win32" or waited >= REPLACE_RETRY_SECONDS:
                raise
        time.sleep(delay)
        waited += delay
        delay = min(2 * delay, 0.5)


def starts_with(path: str | os.PathLike[str], magic: bytes) -> bool:
    """Whether ``path`` is a readable file whose first bytes are ``magic`` (even if it is
    truncated after them): what a writer checks before replacing a file it may not own."""
    if not os.path.isfile(path):  # a FIFO or a terminal would block the read
        return False
    try:
        with open(path, "rb") as f:
            return f.read(len(magic)) == magic
    except OSError:
        return False


def foreign_file(path: str | os.PathLike[str], magic: bytes) -> bool:
    """Whether ``path`` is a non-empty regular file that does not start with ``magic``: not one
    the writer that asks wrote, so not one it may replace (an empty file holds nothing to lose)."""
    return os.path.isfile(path) and os.path.getsize(path) > 0 and not starts_with(path, magic)


def check_file_target(path: str | os.PathLike[str], what: str, example: str = "out.bin") -> None:
    """A :class:`DctpsError` when ``path`` names a folder (an existing one, or a path ending in
    a separator) where a file is to be written: ``Path("out/")`` is ``out``, and the write would
    create a file called ``out`` (or fail on the folder). ``example``: a file name to suggest.

    Also where it names something a file written beside it and renamed over it would destroy:
    a FIFO, a device or a socket (``/dev/null``, as root: replaced by a plain file), or an
    SQLite database (a results store given by mistake)."""
    text = os.path.expanduser(os.fspath(path))
    if text.endswith(("/", os.sep)) or Path(text).is_dir():
        raise DctpsError(
            f"cannot write {what} {text}: that is a folder; give a file path in it, e.g. "
            f"{Path(text) / example}"
        )
    if os.path.exists(text) and not os.path.isfile(text):
        raise DctpsError(
            f"cannot write {what} {text}: that is not a regular file (a FIFO, a device or a "
            f"socket), which a write would replace; give a file path, e.g. {example}"
        )
    if starts_with(text, SQLITE_MAGIC):
        raise DctpsError(
            f"cannot write {what} {text}: that is an SQLite database (a results store?); "
            f"refusing to replace it. Give another path, e.g. {example}"
        )


#: the first bytes of an SQLite database file
SQLITE_MAGIC = b"SQLite format 3\x00"


def make_parent(path: str | os.PathLike[str], what: str, example: str = "out.bin") -> None:
    """Create the folder that will hold ``path`` (and its parents), as every ``dctps`` command
    does for its outputs; a failure (a parent that is a file, a read-only folder) becomes a
    :class:`DctpsError` naming ``what`` and ``path``. The library's own writers
    (:func:`dctps.save`, :meth:`~dctps.results.store.Store.to_csv`) do not call it: like
    ``torch.save``, they refuse a missing folder. A folder given as ``path`` is refused
    (:func:`check_file_target`, suggesting ``example``)."""
    check_file_target(path, what, example)
    try:
        user_path(path).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write(what, path, e) from None


def unlink_quietly(path: str | os.PathLike[str]) -> None:
    """Remove a temporary file that a failed write leaves, hiding nothing but its own failure."""
    try:
        os.unlink(path)
    except OSError:
        pass


#: a temporary file of :func:`create_temp` untouched this long is a killed writer's leftover
#: (a live writer's keeps changing; a concurrent writer of the same target may own a fresh one)
STALE_TEMP_SECONDS = 3600.0


def remove_stale_temps(path: Path, min_age: float = STALE_TEMP_SECONDS) -> None:
    """Delete the temporary files of ``path`` (:func:`create_temp`'s ``.NAME.*.tmp``) that a
    killed writer left, at least ``min_age`` seconds old; never raises."""
    now = time.time()
    try:
        for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            with contextlib.suppress(OSError):
                if now - p.stat().st_mtime >= min_age:
                    p.unlink()
    except OSError:
        pass


@contextmanager
def atomic_write(
    path: str | os.PathLike[str], what: str, mode: str = "w", **open_kw: Any
) -> Iterator[IO]:
    """Open a temporary file beside ``path`` (``mode``: ``"w"`` or ``"wb"``; ``open_kw`` as for
    :func:`open`, e.g. ``newline=""``) whose contents replace ``path`` when the block ends.

    An :class:`OSError`, in the block or in the replace, becomes a :class:`DctpsError` that names
    ``what`` and ``path`` (:func:`dctps.errors.cannot_write`); any other exception, Ctrl-C
    included, propagates. Either way the temporary file is removed and ``path`` is untouched.
    """
    check_file_target(path, what)
    target = user_path(path)
    if target.is_symlink():  # the link stays; the file it names is replaced (not the link)
        target = Path(os.path.realpath(target))
    remove_stale_temps(target)
    try:
        fd, tmp = create_temp(target)
    except OSError as e:
        raise cannot_write(what, target, e) from None
    try:
        if "b" not in mode:  # dctps's text files are UTF-8 whatever the locale (Windows: cp1252)
            open_kw.setdefault("encoding", "utf-8")
        with os.fdopen(fd, mode, **open_kw) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace(tmp, target)
    except BaseException as e:
        unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise cannot_write(what, target, e) from None
        raise


@contextmanager
def utf8_stdout(newline: str | None = None) -> Iterator[IO[str]]:
    """Standard output as a UTF-8 text stream, for data written there to be read back (``dctps
    results --csv -``, ``dctps figure --print-config``): the same bytes as the file would hold.
    Under a Latin-1 or cp1252 locale (Windows, whenever output is redirected) the stream's own
    encoding failed on a run's non-ASCII data root or a label's "α". An ``OSError`` (EBADF)
    where standard output is closed (``>&-``)."""
    out = sys.stdout
    if out is None:
        raise OSError(errno.EBADF, "standard output is closed")
    buffer = getattr(out, "buffer", None)
    if buffer is None or (out.encoding or "").lower().replace("-", "") == "utf8":
        yield out
        return
    out.flush()  # what was printed before comes first
    # surrogateescape: a file name's undecodable bytes (a Latin-1 data root) as those bytes
    f = io.TextIOWrapper(
        buffer, encoding="utf-8", errors="surrogateescape", newline=newline, write_through=True
    )
    try:
        yield f
        f.flush()
    finally:
        f.detach()  # leaves the buffer (and standard output) open
