"""Errors raised by dctps, and the validators every entry point shares.

Every user-facing error derives from :class:`DctpsError` (a ``ValueError``), so the CLI can print
one line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
import operator
import os
import sys
import types
import warnings
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

#: the folder of the dctps package, whose frames :func:`warn_at_caller` skips
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_at_caller(message: str, category: type[Warning] = UserWarning) -> None:
    """``warnings.warn`` attributed to the first frame outside dctps, ``contextlib`` and
    ``torch.nn.Module``'s machinery: the line of the user's that called in, however deep in
    dctps (in ``with`` blocks, in ``load_state_dict``'s recursion) the warning was found. A
    fixed ``stacklevel`` pointed into ``contextlib`` from a context manager entered through an
    ``ExitStack``."""
    import contextlib

    import torch.nn.modules.module as torch_module

    skip = tuple(os.path.abspath(f) for f in (contextlib.__file__, torch_module.__file__)) + (
        _PACKAGE,
    )
    frame: types.FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(skip):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, dctps_warning(category), stacklevel=level)  # type: ignore[arg-type]


class DctpsUserWarning(UserWarning):
    """A ``UserWarning`` of dctps's (:func:`dctps_warning`)."""

    dctps = True


class DctpsRuntimeWarning(RuntimeWarning):
    """A ``RuntimeWarning`` of dctps's (:func:`dctps_warning`)."""

    dctps = True


@functools.cache
def dctps_warning(category: type[Warning]) -> type[Warning]:
    """``category`` marked as dctps's: ``Dctps<Category>``, a subclass with ``dctps = True``
    (filters and ``pytest.warns`` of ``category`` still catch it), which the command line
    prints as one ``warning:`` line wherever :func:`warn_at_caller` attributed it (in ``dctps
    train``, to typer's frame). Each is a global of this module, so that a warning pickled
    to another process (pytest-xdist, a sweep's pool) is found again by its name: the two
    dctps raises are defined here, others made once."""
    name = f"Dctps{category.__name__}"
    marked = globals().get(name)
    if marked is None:
        marked = type(name, (category,), {"dctps": True, "__module__": __name__})
        globals()[name] = marked
    return marked


#: the longest message a :class:`DctpsError` keeps whole: one that quotes a bad value (a list
#: of 729 names from a YAML file of 156 bytes) is cut in the middle, keeping the advice at its
#: end. Not lower: a message naming two files under a long cluster path lost their names.
MAX_MESSAGE = 1000


class DctpsError(ValueError):
    """A bad input or an unusable file; the message names the bad value and what is valid.

    ``exit_code``: the command line's exit status for it, 2 (the command or its files are
    wrong: running it again unchanged fails again)."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str) and "\n" in args[0]:
            args = (" ".join(args[0].split()),)  # a quoted repr's lines: one line, as printed
        if len(args) == 1 and isinstance(args[0], str) and len(args[0]) > MAX_MESSAGE:
            m = args[0]
            cut = len(m) - 900
            args = (f"{m[:650]} ... [{cut:,} characters cut] ... {m[-250:]}",)
        super().__init__(*args)


class CannotWrite(DctpsError):
    """A write the machine refused while the command ran (a full disk, a file-size or disk
    quota limit, a folder made read-only or removed, no permission): the command was valid,
    so its exit status is 1, that of a failed run, not 2 (a job script can tell "fix the
    command" from "fix the machine, then run it again": the same command resumes)."""

    exit_code = 1


class InputDtypeError(DctpsError, RuntimeError):
    """An input whose dtype a DCTpS layer's fast paths cannot take: also a ``RuntimeError``, as
    the dense path's (and ``nn.Linear``'s) refusal is, so code catching that catches both."""


class InputShapeError(DctpsError, RuntimeError):
    """An input whose shape a DCTpS layer cannot take (wrong features or channels, a kernel
    larger than the input): also a ``RuntimeError``, as ``nn.Conv2d``'s refusal and the dense
    path's are, so code catching that catches it in every mode."""


class ImageTooSmall(DctpsError):
    """An input size an architecture cannot take (its poolings would leave nothing):
    :func:`dctps.models.build` adds which registered models take it."""


class RunBusy(DctpsError):
    """The run is being trained by another process (its run folder's lock is held): a sweep
    leaves it to that process and goes on with its other runs. ``dctps train`` exits with 75
    (``EX_TEMPFAIL``): nothing is wrong with the command, which a job script can tell from a
    bad input's 2 (a SLURM array of trains marked such a job failed, as a typo)."""

    exit_code = 75


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


def show(value: object, limit: int = 80) -> str:
    """``value`` as an error message quotes it: a model, tensor, array or optimizer by its type
    (and shape), anything else as its one-line ``repr`` cut to ``limit`` characters. A swapped
    argument (``sparsify(0.01, model)``) quoted a whole ResNet's repr, 900 characters over
    many lines."""
    torch = sys.modules.get("torch")
    if torch is not None:
        if isinstance(value, torch.Tensor):
            return f"a tensor of shape {list(value.shape)} ({str(value.dtype)[6:]})"
        if isinstance(value, torch.nn.Module):
            return f"a {type(value).__name__} (an nn.Module)"
        if isinstance(value, torch.optim.Optimizer):
            return f"a {type(value).__name__} optimizer"
    numpy = sys.modules.get("numpy")
    if numpy is not None and isinstance(value, numpy.ndarray):
        return f"a numpy array of shape {list(value.shape)} ({value.dtype})"
    text = " ".join(repr(value).split())
    if text.startswith("<") and " at 0x" in text:  # object's default repr: an address
        return f"a {type(value).__name__}"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_module(model: object, who: str) -> None:
    """A :class:`DctpsError` unless ``model`` is an ``nn.Module``: ``who`` (a function's name)
    needs one, where the first use of another object raised an AttributeError."""
    from torch import nn

    if not isinstance(model, nn.Module):
        raise DctpsError(f"{who} needs an nn.Module, got {type(model).__name__}")


def check_flag(value: object, name: str) -> None:
    """A :class:`DctpsError` unless ``value`` is ``True`` or ``False``: a word ("no"), ``None`` or
    a tensor was read by its truth, or failed deep in torch."""
    if not isinstance(value, bool):
        raise DctpsError(f"{name} must be True or False, got {show(value)}")


def check_generator(generator: object, name: str, cpu: bool = True) -> None:
    """A :class:`DctpsError` unless ``generator`` is ``None`` or a ``torch.Generator`` (on the
    CPU where ``cpu``): a seed given in its place failed deep in torch ("randperm() received
    an invalid combination of arguments")."""
    from torch import Generator

    if generator is not None and (
        not isinstance(generator, Generator) or (cpu and generator.device.type != "cpu")
    ):
        raise DctpsError(
            f"{name} must be a {'CPU ' if cpu else ''}torch.Generator or None, got "
            f"{show(generator)} (for a seed: g = torch.Generator(); g.manual_seed(seed))"
        )


def as_items(value: object, name: str) -> list[Any]:
    """A list argument of strings (``sets``, ``where``, ``slurm``): ``None`` is none, one
    string is one item (iterated, ``"optim.lr=0.1"`` was 12 one-letter settings), any other
    iterable its items; else a :class:`DctpsError` naming ``name``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    try:
        return list(value)  # type: ignore[call-overload]
    except TypeError:
        raise DctpsError(f"{name} must be a list of strings, got {show(value)}") from None


def check_density(density: object, name: str = "density") -> float:
    """``density`` (a number, or a string: ``"0.001"``, ``"0.1%"``) as a float in (0, 1], or a
    :class:`DctpsError` naming the bad value."""
    if isinstance(density, str) and density.strip().endswith("%"):  # "0.1%", as the CLI takes
        return parse_density(density, name)
    if isinstance(density, bool):  # float(True) == 1.0 would silently mean "dense"
        raise DctpsError(f"{name} must be a number in (0, 1], got {density!r}")
    if not isinstance(density, (int, float)):
        try:
            density = float(density)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise DctpsError(f"{name} must be a number in (0, 1], got {show(density)}") from None
    d = float(density)
    if math.isnan(d) or not (0.0 < d <= 1.0):
        raise DctpsError(f"{name} must be in (0, 1] (e.g. 0.01 for 1%), got {density!r}")
    return d


def unknown_name(
    kind: str, name: object, valid: Iterable[str], limit: int | None = None
) -> DctpsError:
    """An error for an unknown registry name, with a did-you-mean suggestion and the valid names:
    all of them, or, beyond ``limit``, the ``limit`` nearest to ``name`` and how many more (a
    list of 41 SLURM parameters made a 770-character line)."""
    valid = sorted(valid)
    lower = {v.lower(): v for v in valid}  # case-insensitive: 'a.1' -> 'A.1'
    hint = difflib.get_close_matches(str(name).lower(), list(lower), n=1)
    guess = f" Did you mean {lower[hint[0]]!r}?" if hint else ""
    if limit is not None and len(valid) > limit:
        near = difflib.get_close_matches(str(name).lower(), list(lower), n=limit, cutoff=0.0)
        shown = ", ".join(sorted(lower[n] for n in near))
        return DctpsError(
            f"unknown {kind} {show(name)}.{guess} Valid: {len(valid)} names, among them {shown}"
        )
    return DctpsError(f"unknown {kind} {show(name)}.{guess} Valid: {', '.join(valid)}")


def as_int(v: object) -> int | None:
    """``v`` as an ``int`` if it is an integer (Python, numpy or 0-d torch; not a bool, not a
    float), else ``None``."""
    if isinstance(v, bool):
        return None
    try:
        return operator.index(v)  # type: ignore[arg-type]
    except TypeError:
        return None


def check_seed(seed: object, name: str = "seed") -> int | None:
    """Return ``seed`` as an ``int`` (``None`` stays ``None``), or raise naming the bad value."""
    if seed is None:
        return None
    value = as_int(seed)
    if value is None:
        raise DctpsError(f"{name} must be an integer or None, got {seed!r}")
    if not 0 <= value < SEED_LIMIT:  # torch's generators and SQLite take 64-bit integers
        raise DctpsError(f"{name} must be in [0, 2**63), got {seed!r}")
    return value


#: seeds are below this (torch generators and SQLite INTEGER columns hold 64-bit values)
SEED_LIMIT = 2**63


def yaml_problem(e: Exception) -> str:
    """A one-line description of a ``yaml.YAMLError`` (its own text spans several lines)."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or type(e).__name__
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    context = getattr(e, "context", None)
    return f"{where}{problem}" + (f" ({context})" if context else "")


def refuse_empty(path: str | os.PathLike[str] | None, name: str, example: str) -> None:
    """A :class:`DctpsError` for an empty path argument (an unset shell variable): it would
    mean the current folder, or nothing, without a word. ``None`` (not given) passes."""
    if path is not None and not str(path).strip():
        raise DctpsError(f"{name} is empty; give a path, e.g. {example}")


def user_path(path: str | os.PathLike[str], name: str = "the path") -> Path:
    """``path`` as given by a user, with a leading ``~`` expanded: the shell leaves a quoted
    ``'~/out'`` or ``--out=~/out`` alone, and every path dctps reads or writes (outputs,
    databases, configs, data, checkpoints) must mean the same folder. An empty ``path`` (an
    unset variable in ``fit(cfg, os.environ.get("OUT", ""))``) is refused, naming ``name``:
    ``Path("")`` is the current folder, which would be written to without a word."""
    if not isinstance(path, (str, os.PathLike)):  # a buffer, as torch.save takes: not here
        raise DctpsError(
            f"{name} must be a file path (a str or os.PathLike), got {show(path)}: dctps "
            "writes and reads files by path (atomically, beside their final name)"
        )
    if not os.fspath(path).strip():
        raise DctpsError(
            f"{name} is empty ({os.fspath(path)!r}): it would mean the current folder; give a "
            'path ("." for the current folder)'
        )
    p = Path(path).expanduser()
    unit = "UTF-16 units" if os.name == "nt" else "bytes"  # NTFS counts UTF-16 code units
    for part in p.parts:
        n = len(part.encode("utf-16-le")) // 2 if os.name == "nt" else len(os.fsencode(part))
        if n > NAME_MAX:  # else a raw "[Errno 36] File name too long" from the first stat
            raise DctpsError(
                f"path {str(p)[:80]}... has a name of {n} {unit} ({part[:24]}...); file "
                f"systems take names of at most {NAME_MAX} {unit}: give a shorter one"
            )
    return p


def user_device(value: object, name: str) -> Any:
    """``torch.device(value)``, or a :class:`DctpsError` naming ``name`` and ``value`` (torch's
    own "Expected one of cpu, cuda, ipu, xpu, ... device type at start of device string: gpu"
    listed 20 types and named no argument)."""
    import torch

    try:
        return torch.device(value)  # type: ignore[call-overload]
    except (RuntimeError, TypeError, ValueError):
        raise DctpsError(
            f"{name} must be a device, got {show(value)}: give 'cpu', 'cuda', 'cuda:N', 'mps' or a "
            "torch.device"
        ) from None


#: the longest file or folder name (bytes) of ext4, XFS, APFS, NTFS (UTF-16 units) and others
NAME_MAX = 255


def no_cuda(what: str, advice: str) -> str:
    """The message for a CUDA device asked for (``what``: the flag or argument and its value) on
    a host without one, with ``advice`` on what to give instead."""
    return f"{what} requested but CUDA is not available on this host ({advice})"


def is_count(v: object) -> bool:
    """Whether ``v`` is a non-negative ``int`` (not a ``bool``): a size, offset or dimension
    read from a file, checked before it is used."""
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def not_a_file(path: Path) -> str:
    """Why ``path``, which is not a regular file, cannot be read as one: ``missing file P``,
    ``P is a folder, not a file``, or ``P is not a regular file`` (a FIFO or a device)."""
    if path.is_dir():
        return f"{path} is a folder, not a file"
    if path.exists():
        return f"{path} is not a regular file"
    return f"missing file {path}"


def missing_data_folder(root: str | os.PathLike[str], sub: str, layout: str) -> DctpsError:
    """The error for a data root without its data set's folder ``sub`` (``cifar-10-batches-py``),
    naming the parent where ``root`` is that folder itself: a root one level too deep read as
    ``.../cifar-10-batches-py/cifar-10-batches-py`` missing, and left the user to guess."""
    root = Path(root)
    hint = (
        f"; {root} is that folder itself: give the folder that holds it, {root.parent}"
        if root.name == sub and root.is_dir()
        else ""
    )
    return DctpsError(f"missing folder {root / sub}; expected layout: {layout}{hint}")


def one_line(e: BaseException, empty: str = "") -> str:
    """``Type: first line of the message`` of ``e`` (``Type: empty``, or ``Type`` alone, where
    it has no message): what a one-line error or a store row's reason quotes of a cause."""
    first = (str(e).strip().splitlines() or [""])[0] or empty
    return f"{type(e).__name__}: {first}" if first else type(e).__name__


def cannot_write(what: str, path: str | os.PathLike[str], e: OSError) -> DctpsError:
    """A one-line error for a failed write of ``path``: a :class:`DctpsError` where the path is
    wrong (a parent, or the folder to make, is a file), else a :class:`CannotWrite` naming the
    cause (a full disk, a read-only folder)."""
    p = Path(path)
    if isinstance(e, FileExistsError) and p.exists() and not p.is_dir():  # a mkdir's target
        return DctpsError(f"cannot write {what} {p}: it is a file, not a folder")
    for parent in p.parents:
        if parent.exists():
            if not parent.is_dir():
                return DctpsError(f"cannot write {what} {p}: {parent} is a file, not a folder")
            break
    return CannotWrite(f"cannot write {what} {p}: {e.strerror or e}")


def parse_density(value: Any, where: str = "density") -> float:
    """``0.001``, ``"1e-3"`` or ``"0.1%"`` -> ``0.001`` (checked to lie in (0, 1])."""
    raw = value
    if isinstance(value, str):
        s = value.strip()
        try:
            # "0.7%" is the decimal 0.007 scaled exactly (float("0.7") / 100 is 0.006999...),
            # so it hashes like --density 0.007 and --where density=0.007 finds it
            value = float(Decimal(s[:-1]).scaleb(-2)) if s.endswith("%") else float(s)
        except (ValueError, ArithmeticError):
            raise DctpsError(f"{where}: not a density: {raw!r}") from None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):  # numpy's floats too
        raise DctpsError(f"{where}: not a density: {show(raw)}")
    if not 0.0 < float(value) <= 1.0:
        raise DctpsError(f"{where}: density must be in (0, 1] (0.01 = 1%), got {raw!r}")
    return float(value)


def check_threads(threads: object, flag: str = "--threads", here: bool = True) -> int:
    """``threads`` if it is a thread count torch can start: an integer from 0 (torch's default)
    to 4x the CPUs (``here``: of this machine; not for runs on other machines, as a SLURM
    sweep's); anything else is a :class:`DctpsError` naming ``flag``."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise DctpsError(f"{flag} must be >= 0 (0 = torch's default), got {threads!r}")
    most = 4 * (os.cpu_count() or 1)
    if here and threads > most:  # torch then fails to start its pool, with a traceback
        raise DctpsError(
            f"{flag} {threads} is more than 4x this machine's {os.cpu_count()} CPUs; give at "
            f"most {most} (0 = torch's default)"
        )
    return threads


def set_threads(threads: object, flag: str = "--threads") -> None:
    """``torch.set_num_threads(threads)`` for ``threads > 0``; 0 keeps torch's default; anything
    else is a :class:`DctpsError` naming ``flag`` (:func:`check_threads`)."""
    n = check_threads(threads, flag)
    if n:
        import torch

        torch.set_num_threads(n)
