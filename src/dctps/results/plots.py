"""Matplotlib figures read from results (never from a live run): allocation bar charts (Figure A.2,
C.10) and accuracy-vs-density curves.

The accuracy plots follow the paper: density on a log x axis (in %), per curve the mean over seeds
with a min-max band, points where every seed failed (a pruning method that could not reach the
density) drawn dashed at chance, points where some seeds failed averaged over the successful ones,
dense training as a horizontal line. Every plot function returns the data it drew (:class:`Point`
per curve and density), so tests check numbers, not pixels.
"""

from __future__ import annotations

import io
import json
import math
import numbers
import os
import re
import statistics
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from dctps.atomic import atomic_write, create_temp, foreign_file, unlink_quietly
from dctps.errors import DctpsError, cannot_write, show, user_path
from dctps.results.store import density_key, flat_identities, json_safe, row_config
from dctps.results.variants import (
    differing_settings,
    named_differences,
    own_settings,
    varying_keys,
)

if TYPE_CHECKING:
    from dctps.results.curves import CurvesData

__all__ = [
    "METHOD_LABELS", "METHOD_ORDER", "FigureData", "Panel", "Point", "aggregate",
    "check_figure_path", "curve_groups", "default_label", "display_name", "figure_target",
    "natural_key", "panel_title", "plot_accuracy", "plot_allocation", "plot_allocation_panels",
    "plot_command", "plot_runs", "save", "write_json",
]  # fmt: skip


def check_figure_path(path: str | Path) -> None:
    """A :class:`DctpsError` for a figure path whose suffix matplotlib cannot write (``out.txt``,
    ``results.db``), that is a folder, or under a file (``notes.txt/fig.png``), so a command
    refuses it before its work (a figure's sweep: days of training) and its printed table."""
    from matplotlib.backend_bases import FigureCanvasBase

    p = user_path(path, "the figure path")
    if str(path) == "-":  # as --csv - means standard output; it meant a file -.png
        raise DctpsError(
            "a figure is written to files (PNG and PDF, and its JSON), not to standard output: "
            "give a path such as plot.png"
        )
    if not p.suffix and p.exists() and not p.is_dir() and not p.is_file():
        # a device or a FIFO (/dev/full): the figure would go to new files beside it
        raise DctpsError(
            f"cannot write figure {path}: it is not a regular file, and a path without a suffix "
            f"means {p}.png and {p}.pdf; give a file path such as fig.png"
        )
    # without a suffix the figure goes to PATH.png and PATH.pdf (save): those must not be folders
    for target in [p] if p.suffix else [p.with_suffix(".png"), p.with_suffix(".pdf")]:
        if target.is_dir():
            raise DctpsError(
                f"cannot write figure {target}: that is a folder; give a file path in it"
            )
    for parent in p.parents:  # the nearest one that exists must be a folder we can write in
        if parent.exists():
            if not parent.is_dir():
                raise DctpsError(
                    f"cannot write figure {path}: {parent} is a file, not a folder; give a path "
                    "in a folder"
                )
            _check_writable(parent, path)
            break

    suffix = p.suffix.lower().lstrip(".")
    kinds = FigureCanvasBase.get_supported_filetypes()
    if suffix and suffix not in kinds:
        raise DctpsError(
            f"cannot write figure {path}: .{suffix} is not an image format; give one of "
            f"{', '.join('.' + k for k in sorted(kinds))} (e.g. .png; the other of PNG/PDF is "
            "written beside it)"
        )
    _check_not_foreign(p, path)


#: the first bytes of the files a figure writes (its PNG, PDF and JSON data, a JSON object):
#: a file at one of their paths that starts otherwise is not a figure's, and is not replaced
_FIGURE_FILES = {".png": (b"\x89PNG", "PNG image"), ".pdf": (b"%PDF", "PDF"),
                 ".json": (b"{", "figure's JSON data")}  # fmt: skip


def _check_not_foreign(p: Path, path: str | Path) -> None:
    """A :class:`DctpsError` where a file the figure at ``p`` would replace (``p``, the other of
    PNG/PDF beside it, ``p.json``) exists, is not empty, and is not of that kind: a figure's
    JSON beside ``runs.png`` would have replaced ``dctps results --json runs.json``'s export
    without a word."""
    main, twin = _image_paths(p)
    for f in (main, twin, main.with_suffix(".json")):
        known = _FIGURE_FILES.get(f.suffix.lower())
        if known is not None and foreign_file(f, known[0]):
            raise DctpsError(
                f"cannot write figure {path}: {f} exists and is not a {known[1]} that a figure "
                f"wrote; refusing to replace it. Give another figure path (the figure writes "
                f"{main.name}, {twin.name} and {main.with_suffix('.json').name})"
            )


def _check_writable(folder: Path, path: str | Path) -> None:
    """A :class:`DctpsError` naming ``folder`` when no file can be created in it (where the
    figure ``path``, or the folders above it, would go): a read-only folder or file system,
    or one like ``/proc``. Tried with a temporary file, removed at once: permission bits do not
    tell (root ignores them; a read-only mount ignores them too)."""
    try:
        fd, tmp = create_temp(folder / "figure")
    except OSError as e:
        raise DctpsError(
            f"cannot write figure {path}: cannot create files in {folder} "
            f"({e.strerror or e}); give a path in a folder you can write"
        ) from None
    os.close(fd)
    unlink_quietly(tmp)


def _image_paths(path: Path) -> tuple[Path, Path]:
    """The image a figure ``path`` names (``PATH.png`` without a suffix: matplotlib would add
    .png itself, and the reported path would not exist) and the other of PNG/PDF beside it."""
    main = path if path.suffix else path.with_suffix(".png")
    return main, main.with_suffix(".pdf" if main.suffix.lower() != ".pdf" else ".png")


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], squeeze: bool = True,
              layout: Literal["constrained"] | None = None) -> tuple[Figure, Any]:  # fmt: skip
    """``pyplot.subplots`` without pyplot: a figure only ever written to files needs no
    backend, and ``matplotlib.use("Agg")`` at import had switched a notebook's plots off."""
    fig = Figure(figsize=figsize, layout=layout)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save(fig: Figure, path: str | Path) -> list[Path]:
    """Save ``fig`` at ``path`` and, beside it, the other of PNG/PDF; return both paths."""
    path, twin = _image_paths(user_path(path, "the figure path"))
    out = [path, twin]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        images = []
        for p in out:  # both drawn before either is written
            buf = io.BytesIO()
            fig.savefig(buf, format=p.suffix[1:].lower(), bbox_inches="tight", dpi=150)
            images.append(buf.getvalue())
        for p, image in zip(out, images, strict=True):
            # a full disk or a kill leaves the previous figure whole, not a truncated one
            with atomic_write(p, "figure", "wb") as f:
                f.write(image)
    except OSError as e:
        raise cannot_write("figure", path, e) from None
    except DctpsError:  # atomic_write's own, already naming the figure (a ValueError too)
        raise
    except ValueError as e:  # e.g. an unknown image format (file suffix)
        raise DctpsError(f"cannot write figure {path}: {e}") from None
    finally:
        _close_if_pyplots(fig)
    return out


def _close_if_pyplots(fig: Any) -> None:
    """Close a figure a caller made with pyplot (which keeps every figure until closed); those
    drawn here are plain ``Figure`` objects that pyplot never held."""
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None and getattr(fig.canvas, "manager", None) is not None:
        pyplot.close(fig)


def _mark_empty(ax: Any, xs: Sequence[float], counts: Sequence[int], bars: Any, label: str) -> None:
    """Mark the layers a series leaves with 0 non-zeros: a bar of height 0 is invisible (and
    has no place on a log axis), yet an emptied layer is what a budget figure must show (e.g.
    SynFlow cutting the 1x1 shortcuts, Figure C.10). An ``x`` at the foot of the axis, in the
    series' colour, with a legend entry."""
    empty = [x for x, c in zip(xs, counts, strict=True) if c == 0]
    if not empty:
        return
    color = bars.patches[0].get_facecolor() if bars.patches else None
    ax.scatter(empty, [0.03] * len(empty), marker="x", color=color, s=18, zorder=3,
               transform=ax.get_xaxis_transform(), clip_on=False,
               label=f"{label}: layer with 0 non-zeros")  # fmt: skip


def plot_allocation(
    series: Mapping[str, Sequence[int]], title: str, path: str | Path, log: bool = True
) -> list[Path]:
    """Bar chart of non-zeros per prunable layer, one group of bars per series (e.g. EPL, EPF)."""
    _check_series(series)
    fig, ax = _subplots(figsize=(max(6, 0.3 * max(len(v) for v in series.values())), 3.5))
    k = len(series)
    width = 0.8 / k
    colour = series_colours(list(series))
    for i, (label, counts) in enumerate(series.items()):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(counts))]
        bars = ax.bar(xs, counts, width=width, label=label, color=colour[label])
        _mark_empty(ax, xs, counts, bars, label)
    n = max(len(v) for v in series.values())
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("prunable layer")
    ax.set_ylabel("trainable non-zeros")
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)


def _check_series(series: object) -> None:
    """A :class:`DctpsError` unless ``series`` maps names to non-empty lists of counts (``{}``
    raised "max() arg is an empty sequence", a word a ValueError from matplotlib)."""
    ok = isinstance(series, Mapping) and series and all(
        isinstance(v, Sequence) and not isinstance(v, str) and v
        and all(isinstance(c, numbers.Real) and not isinstance(c, bool) for c in v)
        for v in series.values()
    )  # fmt: skip
    if not ok:
        raise DctpsError(
            "series must map each allocation's name to its per-layer non-zero counts (e.g. "
            f"{{'epl': [120, 64, 10]}}), got {show(series)}"
        )


def plot_allocation_panels(
    panels: Sequence[tuple[str, Mapping[str, Sequence[int]]]],
    path: str | Path,
    log: bool = True,
    suptitle: str | None = None,
) -> dict[str, dict[str, list[int]]]:
    """One bar chart per panel (``(title, {label: counts per layer})``), side by side groups of
    bars per layer; returns ``{title: {label: counts}}``, the data drawn. Writes PNG and PDF."""
    panels = list(panels)
    if not panels:  # a ZeroDivisionError from the layout
        raise DctpsError("nothing to plot: no panels given (a list of (title, series) pairs)")
    for _, series in panels:
        if series:
            _check_series(series)
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    width_layers = max(len(v) for _, s in panels for v in s.values())
    fig, axes = _subplots(
        nrows, ncols, figsize=(ncols * max(5.0, 0.12 * width_layers), 3.2 * nrows), squeeze=False
    )
    data: dict[str, dict[str, list[int]]] = {}
    colour = series_colours(list(dict.fromkeys(lab for _, s in panels for lab in s)))
    for ax, (title, series) in zip(axes.flat, panels, strict=False):
        k = len(series)
        width = 0.8 / max(k, 1)
        for i, (label, counts) in enumerate(series.items()):
            xs = [j + (i - (k - 1) / 2) * width for j in range(len(counts))]
            bars = ax.bar(xs, counts, width=width, label=label, color=colour[label])
            _mark_empty(ax, xs, counts, bars, label)
        ax.set_xlabel("prunable layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("trainable non-zeros")
        if log:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
        data[title] = {label: [int(c) for c in counts] for label, counts in series.items()}
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    save(fig, path)
    return data


# ----------------------------------------------------------------------------- accuracy vs density
# Curve labels. The DCTpS paper's "FORCE" is Iter-SNIP (docs/BASELINES.md); the published FORCE is
# drawn as its own curve.
METHOD_LABELS = {
    "dense": "Dense",
    "dctps": "DCTpS",
    "random": "Random",
    "snip": "SNIP",
    "iter_snip": "FORCE (paper's) = Iter-SNIP",
    "force": "FORCE (published)",
    "synflow": "SynFlow",
    "grasp": "GraSP",
}
METHOD_ORDER = ("dense", "dctps", "random", "snip", "iter_snip", "force", "synflow", "grasp")
# Config entries that never split a curve (they vary along it, or do not change the experiment).


# Sparse methods keep one colour in every plot and figure (dense is drawn in black).
METHOD_COLOURS = {
    "DCTpS": "C0", "Random": "C1", "SNIP": "C2", "FORCE (paper's) = Iter-SNIP": "C3",
    "FORCE (published)": "C4", "SynFlow": "C5", "GraSP": "C6", "RigL (ERK)": "C7",
    "DCTpS+RigL": "C8",
}  # fmt: skip
# failed points at chance of the k-th of n failing curves sit at x * FAILED_DODGE**(k-(n-1)/2)
FAILED_DODGE = 1.06


def series_colours(labels: Sequence[str]) -> dict[str, str]:
    """A colour per curve label: a method's own (:data:`METHOD_COLOURS`) where it has one and no
    other label of the plot took it, else the first colour of matplotlib's cycle not yet used
    in the plot (cycling once all are)."""
    cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    fixed = {lab: cycle[int(c[1:]) % len(cycle)] for lab, c in METHOD_COLOURS.items()}
    out = {lab: fixed[lab] for lab in labels if lab in fixed}
    free = [c for c in cycle if c not in out.values()] or list(cycle)
    for i, lab in enumerate(lab for lab in labels if lab not in out):
        out[lab] = free[i % len(free)]
    return out


def series_markers(colours: Mapping[str, str]) -> dict[str, str]:
    """A marker per curve label: ``o`` for the first label of each colour, then ``s``, ``^``,
    ... for later labels that share it. Past ten curves the colour cycle repeats, and 25
    curves in 10 colours with one marker could not be told apart (a scale review)."""
    seen: dict[str, int] = {}
    out = {}
    for lab, c in colours.items():
        k = seen.get(c, 0)
        seen[c] = k + 1
        out[lab] = SERIES_MARKERS[k % len(SERIES_MARKERS)]
    return out


SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: the most points of a panel that are labelled with their shortfall ("1/3 failed") on the
#: plot: 713 such labels on a 9,000-run figure took two thirds of its drawing time and hid the
#: curves; past it the panel says how many points the table qualifies
MAX_ANNOTATED_POINTS = 40


class Point(NamedTuple):
    """One plotted point: accuracy over the seeds of one (curve, density).

    ``mean``/``min``/``max`` are over the successful seeds only (as the supplement's footnote to
    Figure A.1 does); ``failed`` is True when every seed failed, and then mean = min = max =
    chance (drawn dashed). ``n_open`` runs have no result yet (not counted in either), and a
    point of such runs only has NaN accuracies. Accuracies are fractions (the plot shows %).
    ``x`` is the plotted x value: the density, or the mean number of non-zero weights for
    ``x='nonzeros'``.
    ``metric``: the accuracy averaged, one every seed of the point recorded. A seed recorded
    twice (by two older versions of its computation) counts once: its finished, most recently
    updated row (:func:`_one_per_seed`).
    """

    density: float
    mean: float
    min: float
    max: float
    failed: bool
    n_ok: int
    n_failed: int
    x: float
    metric: str = ""  # the accuracy averaged: test_acc | val_acc
    #: runs of the point without a result yet (running, interrupted, or a figure's runs not
    #: started); a point with only such runs has no value (NaN: not drawn)
    n_open: int = 0
    #: finished runs that did not record the accuracy drawn (``--metric test_acc`` on runs that
    #: only validated); never averaged, and never a reason to call the point failed
    n_without: int = 0
    #: the sample standard deviation over the successful seeds (NaN below two)
    std: float = float("nan")
    #: the seeds of the failed runs, in order
    failed_seeds: tuple[int, ...] = ()
    #: why each seed of ``failed_seeds`` failed (the store's ``reason``), in the same order
    failed_reasons: tuple[str, ...] = ()


@dataclass
class Panel:
    """The data of one accuracy-vs-density panel (one model on one data set)."""

    model: str
    dataset: str
    title: str
    chance: float
    metric: str  # test_acc | val_acc | mixed (auto: each point's own, Point.metric)
    series: dict[str, list[Point]] = field(default_factory=dict)
    dense: dict[str, Point] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The panel as plain JSON values (what ``write_json`` stores beside the figure)."""
        return {
            "model": self.model, "dataset": self.dataset, "title": self.title,
            "chance": self.chance, "metric": self.metric,
            "series": {k: [p._asdict() for p in v] for k, v in self.series.items()},
            "dense": {k: p._asdict() for k, p in self.dense.items()},
        }  # fmt: skip


def written_png(paths: Sequence[Path]) -> bytes | None:
    """The bytes of the first PNG among ``paths`` (what a figure's data shows in a notebook),
    or ``None`` where there is none, or it was moved or deleted since (the text repr only)."""
    png = next((p for p in paths if p.suffix.lower() == ".png"), None)
    try:
        return png.read_bytes() if png is not None else None
    except OSError:
        return None


@dataclass(repr=False)
class FigureData:
    """What a figure function drew (``panels``) and where it wrote it (``paths``). In a
    notebook, a ``FigureData`` left as a cell's value shows the PNG it wrote."""

    panels: list[Panel]
    paths: list[Path]
    runs: int = 0  # store rows read
    missing: int = 0  # runs of the grid with no finished row yet
    missing_runs: list[str] = field(default_factory=list)  # their summaries
    #: of the missing runs, those whose config an older dctps recorded (not drawn: a
    #: computation of theirs changed since; dctps.results.store.older_records)
    older: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)  # runs that raised (dctps figure)
    title: str | None = None  # the figure's title (what ran; see dctps.results.figures.Setup)
    note: str | None = None  # drawn under the title (a quick run's sizes, missing runs)

    def to_dict(self) -> dict[str, Any]:
        """The figure's title, note, panels, paths and counts as plain JSON values."""
        return {
            "title": self.title, "note": self.note, "panels": [p.to_dict() for p in self.panels],
            "paths": [str(p) for p in self.paths],
            "runs": self.runs, "missing": self.missing, "missing_runs": self.missing_runs,
            "older": self.older, "errors": self.errors,
        }  # fmt: skip

    def __repr__(self) -> str:
        # the dataclass's repr was one line of every panel's every point (a notebook review)
        points = sum(len(v) for p in self.panels for v in p.series.values())
        return (
            f"FigureData({self.title!r}, {len(self.panels)} panel(s), {points} point(s), "
            f"paths={[str(p) for p in self.paths]}; .table() lists the points)"
        )

    def _repr_png_(self) -> bytes | None:
        """The PNG it wrote (IPython's display hook: the figure, inline)."""
        return written_png(self.paths)

    def table(self) -> str:
        """Plain text: one line per plotted point (accuracies in %)."""
        lines = []
        for p in self.panels:
            lines.append(f"{p.title} ({p.metric}, chance {100 * p.chance:.2f}%; "
                         "mean [min, max] over the seeds)")  # fmt: skip
            # labels naming options or an older version's record run past 34 characters
            w = max([34, *map(len, p.dense), *map(len, p.series)])
            for label, pt in p.dense.items():
                lines.append(f"  {label:<{w}} {'':>8} {_pt(pt)}{_metric_mark(p, pt)}")
            for label, pts in p.series.items():
                for pt in pts:
                    lines.append(
                        f"  {label:<{w}} {_pct(pt.density):>8} {_pt(pt)}{_metric_mark(p, pt)}"
                    )
        return "\n".join(lines)


def _pt(p: Point) -> str:
    unfinished = f", {p.n_open} without a result yet" if p.n_open else ""
    without = f", {p.n_without} without {p.metric or 'it'}" if p.n_without else ""
    if p.failed:
        return f"failed ({p.n_failed} of {p.n_failed} seeds{unfinished}): drawn at chance"
    if not p.n_ok and not p.n_without and not p.n_failed:
        return f"no result yet ({p.n_open} run{'s' if p.n_open != 1 else ''}): not drawn"
    if not p.n_ok:
        parts = [f"{p.n_open} without a result yet"] if p.n_open else []
        parts += [f"{p.n_without} without {p.metric or 'the accuracy'}"] if p.n_without else []
        parts += [f"{p.n_failed} failed"] if p.n_failed else []
        return f"no result ({', '.join(parts) or 'no runs'}): not drawn"
    extra = f", {p.n_failed} failed" if p.n_failed else ""
    extra += without
    return (f"{100 * p.mean:6.2f}  [{100 * p.min:.2f}, {100 * p.max:.2f}]  "
            f"({p.n_ok} seed{'s' if p.n_ok != 1 else ''}{extra}{unfinished})")  # fmt: skip


def _nothing_drawn(pts: Sequence[Point], metric: str) -> str:
    """Why a curve none of whose points is drawn (none averaged, none failed) has none:
    ``no result yet`` while a run has none, else ``no test_acc`` (its runs finished without the
    accuracy drawn)."""
    if any(pt.n_open for pt in pts) or not any(pt.n_without for pt in pts):
        return "no result yet"
    return f"no {metric if metric in ('test_acc', 'val_acc') else 'accuracy'}"


def _shortfall(p: Point) -> str:
    """``1/3 failed, 1/3 unfinished``: what a drawn point's average leaves out ("" for none)."""
    n = p.n_ok + p.n_failed + p.n_open + p.n_without
    parts = [f"{p.n_failed}/{n} failed"] if p.n_failed and not p.failed else []
    parts += [f"{p.n_open}/{n} unfinished"] if p.n_open else []
    parts += [f"{p.n_without}/{n} without {p.metric or 'it'}"] if p.n_without else []
    return ", ".join(parts)


def _metric_mark(p: Panel, pt: Point) -> str:
    """``  val_acc``: the accuracy a point of a ``mixed`` panel averaged (its title cannot say)."""
    return f"  {pt.metric}" if p.metric == "mixed" and pt.metric else ""


def _pct(d: float) -> str:
    return f"{100 * d:g}%"


def bounded_mean(values: Sequence[float]) -> float:
    """The mean of ``values`` (an exact sum, ``statistics.fmean``: 0.102, not
    0.10200000000000001), within ``[min, max]``: three seeds at 0.09 still averaged to
    0.09000000000000001, above their max in a CSV that a reader checks."""
    return min(max(statistics.fmean(values), min(values)), max(values))


def density_of(row: Mapping[str, Any]) -> float:
    """A run's density as the plots and tables group it (:func:`~dctps.results.store.density_key`:
    to the 6 significant digits its label shows), so float noise (``0.1 * 0.1 =
    0.010000000000000002``) is one point and one ``1%`` column with ``0.01``, not two."""
    return density_key(row["density"])


def fixed_alpha_label(init: Any) -> str:
    """``fixed α = 1`` / ``fixed α = Kaiming`` / ``fixed α = 0.5``: a fixed alpha keeps its
    ``alpha_init``."""
    if init in (None, 1, 1.0):
        value = "1"
    elif init == "kaiming":
        value = "Kaiming"
    else:
        value = f"{init:g}" if isinstance(init, float | int) else str(init)
    return f"fixed α = {value}"


def default_label(cfg: Mapping[str, Any]) -> str:
    """A curve label for a run config: the method, plus what differs from its defaults."""
    if not isinstance(cfg, Mapping):
        raise DctpsError(
            f"default_label needs a run config as a dict (row_config(row) of a store row), got "
            f"{show(cfg)}"
        )
    s = cfg.get("sparsity", {})
    m = s.get("method")
    alloc = s.get("allocation")
    rigl = bool(s.get("rigl"))
    if m == "random" and rigl:
        label = f"RigL ({(alloc or 'erk').upper()})"
    else:
        label = METHOD_LABELS.get(m, str(m)) + ("+RigL" if rigl else "")
        default_alloc = {"dctps": "epl", "random": "uniform"}.get(m)
        if alloc and default_alloc and alloc != default_alloc:
            label += f" ({alloc.upper() if alloc != 'uniform' else 'uniform'})"
    if m == "dctps":
        parts = dctps_setting_parts(s, name_init=s.get("train_alpha") is not False)
        if parts:
            label += ", " + ", ".join(parts)
    if s.get("train_alpha") is False:
        label += ", " + fixed_alpha_label(s.get("alpha_init", 1.0))
    return label


def dctps_setting_parts(s: Mapping[str, Any], name_init: bool = True) -> list[str]:
    """What a DCTpS run's ``sparsity`` settings change from the paper's, as label parts: the
    offset (``hadamard``), per-channel alphas (``α per channel``; ``(+alphas)`` where they train
    on top of the budget), and with ``name_init`` the alpha it starts from (``α init Kaiming``).
    Shared by the default curve labels and the ``offsets`` figure's."""
    off = s.get("offset") or "dct"
    parts = [] if off == "dct" else [str(off)]
    if s.get("alpha", "layer") == "channel":
        on_top = s.get("charge_alpha", True) is False and s.get("train_alpha") is not False
        parts.append("α per channel" + (" (+alphas)" if on_top else ""))
    if name_init:
        init = s.get("alpha_init", 1.0)
        if init == "kaiming":
            parts.append("α init Kaiming")
        elif init not in (1, 1.0, None):
            parts.append(f"α init {init}")
    return parts


def _recorded(row: Mapping[str, Any], metric: str) -> bool:
    """Whether ``row`` recorded ``metric`` (``auto``: either accuracy)."""
    names = ("test_acc", "val_acc") if metric == "auto" else (metric,)
    return any(row.get(m) is not None for m in names)


def _common_metric(rows: Sequence[Mapping[str, Any]]) -> str | None:
    """The accuracy every finished row of ``rows`` recorded: ``test_acc`` where all have it,
    else ``val_acc`` where all have that (``auto``'s order), else ``None``. What ``auto``
    averages and draws: choosing row by row averaged one seed's validation accuracy with
    another's test accuracy in one point (a store some of whose runs recorded only one)."""
    done = [r for r in rows if r.get("status") == "done"]
    for m in ("test_acc", "val_acc"):
        if all(r.get(m) is not None for r in done):
            return m
    return None


def _panel_metric(rows: Sequence[Mapping[str, Any]], metric: str) -> str:
    """The accuracy a panel of ``rows`` draws: ``metric`` as given; for ``auto`` the one every
    finished run recorded (:func:`_common_metric`), ``mixed`` (one per point) where none is, or
    ``auto`` still where no run finished (nothing is averaged)."""
    if metric != "auto":
        return metric
    if not any(r.get("status") == "done" for r in rows):
        return "auto"
    return _common_metric(rows) or "mixed"


def _point_metric(rows: Sequence[Mapping[str, Any]], where: str) -> str:
    """:func:`_common_metric` of one point's rows, or a :class:`DctpsError` naming the point
    (``where``) and which seeds recorded which accuracy."""
    m = _common_metric(rows)
    if m is not None:
        return m
    have = {k: [str(r.get("seed")) for r in rows if r.get("status") == "done" and
                r.get(k) is not None] for k in ("test_acc", "val_acc")}  # fmt: skip
    raise DctpsError(
        f"{where}: no accuracy is recorded by every seed (test_acc: seeds "
        f"{', '.join(have['test_acc']) or 'none'}; val_acc: seeds "
        f"{', '.join(have['val_acc']) or 'none'}), and one point must not average one seed's "
        "test accuracy with another's validation accuracy; give --metric test_acc or "
        "--metric val_acc (dctps plot, dctps results --summary) to use only the runs that "
        "recorded it"
    )


def _chance(dataset: str, rows: Sequence[Mapping[str, Any]] = ()) -> float:
    """``1 / classes``: the classes the panel's runs recorded (a reduced copy of Tiny ImageNet
    has fewer than 200; where its runs disagree, the most of them), else the data set's."""
    from dctps import data

    recorded = [int(r["classes"]) for r in rows if r.get("classes")]
    if recorded:
        return 1.0 / max(recorded)
    try:
        return 1.0 / data.get_info(dataset).num_classes
    except Exception:  # an unknown data set name in an old store
        return float("nan")


DISPLAY_NAMES = {
    "lenet5": "LeNet-5", "resnet18": "ResNet18", "resnet50": "ResNet50", "vgg19": "VGG19",
    "mobilenetv2": "MobileNetV2", "fixup_resnet110": "FixupResNet110", "cifar10": "CIFAR-10",
    "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny ImageNet", "digits": "digits",
}  # fmt: skip


def display_name(name: str) -> str:
    """``'ResNet18'`` for ``'resnet18'``: a model or data set as figures name it (unknown names
    pass through)."""
    return DISPLAY_NAMES.get(name, name)


def panel_title(model: str, dataset: str) -> str:
    """``'ResNet18, CIFAR-10'``-style title from registry names (unknown names pass through)."""
    return f"{display_name(model)}, {display_name(dataset)}"


def _check_rows(rows: object) -> list[Mapping[str, Any]]:
    """``rows`` as a list of store rows (mappings with a model and a data set, as
    :meth:`Store.query` returns them), or a :class:`DctpsError` naming the first bad one."""
    if isinstance(rows, (str, bytes, Mapping)) or not hasattr(rows, "__iter__"):
        raise DctpsError(f"rows must be a list of store rows (Store.query()), got {show(rows)}")
    out = list(rows)  # type: ignore[call-overload]
    for i, r in enumerate(out):
        lacks = [k for k in ("model", "dataset") if not isinstance(r, Mapping) or k not in r]
        if lacks:
            raise DctpsError(
                f"rows[{i}] must be a store row (Store.query()) with {' and '.join(lacks)}, got "
                f"{show(r)}"
            )
    return out


def aggregate(
    rows: Sequence[Mapping[str, Any]],
    label: Callable[[Mapping[str, Any]], str] = default_label,
    metric: str = "auto",
    x: str = "density",
    name_options: bool = True,
    keep_order: bool = False,
) -> list[Panel]:
    """Group store rows into panels (model, data set) and curves (``label`` of the run config).

    Done rows without the metric are counted on their points (``Point.n_without``), and so are rows
    without a result yet (running, interrupted, a figure's runs not started: ``Point.n_open``);
    neither is averaged. Within one curve, runs that differ in more than seed and density (e.g. two
    recipes) are split into curves whose labels name the difference, and the settings in which the
    panel's curves differ beyond their methods' own and their recipe's defaults
    (:func:`~dctps.results.variants.differing_settings`) are named on every curve.
    ``metric``: ``auto`` (test accuracy, or validation accuracy where there is no test score,
    e.g. Tiny ImageNet), ``test_acc`` or ``val_acc``. ``x``: ``density`` or ``nonzeros``.
    ``auto`` picks one accuracy per panel, the one every finished run of it recorded
    (``Panel.metric``); where none is, one per point (``mixed``; ``Point.metric`` says which),
    and a point whose seeds share none is refused. A run's method options are named in its
    label (:func:`~dctps.results.variants.own_settings`) unless ``name_options`` is false (a
    ``--quick`` figure, whose note names its shortened schedules). ``keep_order``: a method's
    curves in the order of ``rows`` (a figure's, in its grid's order), not of their values
    (:func:`curve_groups`).
    """
    rows = _check_rows(rows)
    if not callable(label):
        raise DctpsError(f"label must be a function of a run config, got {show(label)}")
    if x not in ("density", "nonzeros"):
        raise DctpsError(f"x must be density or nonzeros, got {x!r}")
    if metric not in ("auto", "test_acc", "val_acc"):
        raise DctpsError(f"metric must be auto, test_acc or val_acc, got {metric!r}")
    # every row: a done run without the metric, or one running, is counted on its point, not
    # averaged (dropped here, a point of 2 such seeds and 1 failed read "failed")
    by_panel: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        by_panel.setdefault((r["model"], r["dataset"]), []).append(r)
    panels = []
    for (model, dataset), prs in by_panel.items():
        chance = _chance(dataset, prs)
        curves = curve_groups(prs, label, name_options, keep_order)
        finished = [r for r in prs if r.get("status") == "failed" or (
            r.get("status") == "done" and _recorded(r, metric))]  # fmt: skip
        if not finished:
            continue  # a panel of unfinished runs only: the figure's note counts them
        chosen = _panel_metric(finished, metric)
        panel = Panel(model, dataset, panel_title(model, dataset), chance, chosen)
        for name in curves:
            where = f"{panel.title}, {name}"
            pts = _points(curves[name], chosen, chance, x, where)
            if curves[name][0].get("method") == "dense":
                if pts:
                    panel.dense[name] = pts[0]
            else:
                panel.series[name] = pts
        panels.append(panel)
    return panels


def curve_groups(
    rows: Sequence[Mapping[str, Any]],
    label: Callable[[Mapping[str, Any]], str] = default_label,
    name_options: bool = True,
    keep_order: bool = False,
) -> dict[str, list[Mapping[str, Any]]]:
    """The curves of one panel's store ``rows`` (one model on one data set): ``{name: rows}``,
    methods in :data:`METHOD_ORDER`, a method's curves by name with their numbers compared
    as numbers (:func:`natural_key`: ``lr=0.0024`` before ``lr=0.01``), or with
    ``keep_order`` in the order of their first rows (a figure's rows come in its grid's order:
    uniform, EPL, EPF, ERK, not alphabetically).

    A curve is the runs of one ``label`` of their config. Runs of one label that differ in more
    than seed and density (e.g. two recipes) are split into curves whose names add the
    difference, and the settings in which the panel's curves differ beyond their methods' own
    and their recipe's defaults (:func:`~dctps.results.variants.differing_settings`) are named
    on every curve; a run's method options are named unless ``name_options`` is false. Shared
    by the accuracy plots (:func:`aggregate`) and the learning curves
    (:mod:`dctps.results.curves`), so that one setting reads alike in both."""
    groups: dict[str, list[tuple[Mapping[str, Any], dict[str, Any]]]] = {}
    for r in rows:
        cfg = row_config(r)
        groups.setdefault(label(cfg), []).append((r, cfg))
    # settings in which the panel's curves differ, beyond each method's own and its
    # recipe's defaults (40 epochs of DCTpS beside 2 of SNIP read as a 40-point win)
    panel_flats = flat_identities(rows)
    flat_of = {id(r): f for r, f in zip(rows, panel_flats, strict=True)}
    across = differing_settings(panel_flats)
    curves: dict[str, list[Mapping[str, Any]]] = {}
    rank_of: dict[str, int] = {}
    for lab, members in groups.items():
        flats = [flat_of[id(r)] for r, _ in members]
        varying = sorted(set(varying_keys(flats)) | set(across))
        for (r, _), f in zip(members, flats, strict=True):
            name = lab
            own = own_settings(f, options=name_options)
            named = named_differences(f, sorted(set(varying) | set(own)))
            if named:
                name += " [" + ", ".join(named) + "]"
            curves.setdefault(name, []).append(r)
            m = r.get("method")
            rank_of[name] = METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER)

    # a method's variants in the order of their values (lr=0.0024 before lr=0.01), not of
    # the store's row order, which changed with each filter
    def key(n: str) -> tuple[int, Any]:
        return rank_of[n], 0 if keep_order else natural_key(n)  # sorted() keeps ties in order

    return {name: curves[name] for name in sorted(curves, key=key)}


# a number, with its minus sign where one stands after no word character (x=-1, not a-1)
_NUMBER = re.compile(r"((?:(?<![\w.])-)?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")


def natural_key(text: str) -> list[Any]:
    """``text`` as a sort key whose numbers compare as numbers: ``lr=0.0024`` before
    ``lr=0.01``, ``epochs=5`` before ``epochs=40``."""
    parts = _NUMBER.split(text)
    return [float(x) if i % 2 else x for i, x in enumerate(parts)]


def _points(
    rows: Sequence[Mapping[str, Any]], metric: str, chance: float, x: str, where: str = "a curve"
) -> list[Point]:
    """One :class:`Point` per density of a curve's ``rows``. ``metric``: a column, or ``mixed``
    (a panel no one accuracy covers): then each point's own :func:`_point_metric`, named in
    its ``metric``; ``where`` names the curve in that refusal."""
    by_d: dict[float, list[Mapping[str, Any]]] = {}
    for r in rows:
        by_d.setdefault(density_of(r), []).append(r)
    pts = []
    for d in sorted(by_d):
        rs = _one_per_seed(by_d[d])
        n_open = sum(r["status"] not in ("done", "failed") for r in rs)
        rs = [r for r in rs if r["status"] in ("done", "failed")]
        recorded = "auto" if metric == "mixed" else metric
        n_without = sum(r["status"] == "done" and not _recorded(r, recorded) for r in rs)
        rs = [r for r in rs if r["status"] == "failed" or _recorded(r, recorded)]
        done = [r for r in rs if r["status"] == "done"]
        m = metric if metric != "mixed" or not done else _point_metric(rs, f"{where} at {_pct(d)}")
        ok = [float(r[m]) for r in done]
        n_failed = sum(r["status"] == "failed" for r in rs)
        failures = sorted((int(r["seed"]), str(r.get("reason") or "no reason recorded"))
                          for r in rs if r["status"] == "failed"
                          and isinstance(r.get("seed"), int))  # fmt: skip
        failed_seeds = tuple(seed for seed, _ in failures)
        reasons = tuple(reason for _, reason in failures)
        nnz = [r["nonzeros"] for r in rs if r.get("nonzeros") is not None]
        if not nnz:  # pruning failed: the budget it missed, round(d N) of the N weights
            nnz = [round(d * r["weights"]) for r in rs if r.get("weights") is not None]
        xv = d if x == "density" else (sum(nnz) / len(nnz) if nnz else float("nan"))
        shown = m if m in ("test_acc", "val_acc") else ""
        if ok:
            mean = bounded_mean(ok)
            std = statistics.stdev(ok) if len(ok) > 1 else float("nan")
            pts.append(Point(d, mean, min(ok), max(ok), False, len(ok), n_failed, xv, m, n_open,
                             n_without, std, failed_seeds, reasons))  # fmt: skip
        elif n_failed and not n_open and not n_without:  # every seed failed
            pts.append(Point(d, chance, chance, chance, True, 0, n_failed, xv, "", 0,
                             failed_seeds=failed_seeds, failed_reasons=reasons))  # fmt: skip
        else:  # nothing to average yet (runs going, or without the metric): no value, not failed
            nan = float("nan")
            pts.append(Point(d, nan, nan, nan, False, 0, n_failed, xv, shown, n_open, n_without,
                             failed_seeds=failed_seeds, failed_reasons=reasons))  # fmt: skip
    return pts


def _one_per_seed(rows: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """``rows`` (one curve at one density) with one row per seed: two rows of one seed are two
    records of one computation (two older versions of it, each with its own hash), not two
    samples, and averaging them counted one seed twice. Kept: a finished row (done or failed)
    before an unfinished one, then the most recently updated. Rows without a seed are all
    kept."""
    best: dict[Any, Mapping[str, Any]] = {}
    out: list[Mapping[str, Any]] = []
    for r in rows:
        seed = r.get("seed")
        if seed is None:
            out.append(r)
        elif seed not in best or _recency(r) > _recency(best[seed]):
            best[seed] = r
    return out + list(best.values())


def _recency(row: Mapping[str, Any]) -> tuple[bool, str]:
    """How :func:`_one_per_seed` orders one seed's records: finished first, then updated."""
    return row.get("status") in ("done", "failed"), str(row.get("updated") or "")


def plot_accuracy(
    panels: Sequence[Panel],
    path: str | Path,
    title: str | None = None,
    x: str = "density",
    note: str | None = None,
) -> list[Path]:
    """Accuracy vs density (log x, in %) per panel: mean line and min-max band per curve, failed
    points dashed at chance, dense as a horizontal line. ``note``: a line under the title (e.g.
    how many runs have no result yet). Writes PNG and PDF; returns the paths."""
    panels = list(panels)
    if not panels:
        raise DctpsError("nothing to plot: no finished or failed runs match")
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _subplots(
        nrows, ncols, figsize=(5.2 * ncols, 3.8 * nrows + 0.6), squeeze=False, layout="constrained"
    )
    colour = series_colours(list(dict.fromkeys(k for p in panels for k in p.series)))
    marker = series_markers(colour)
    for ax, p in zip(axes.flat, panels, strict=False):
        xs_all: set[float] = set()
        failing = [lab for lab, pts in p.series.items() if any(pt.failed for pt in pts)]
        shift = _coincident_shifts(p)
        short_points = [pt for pts in p.series.values() for pt in pts if _shortfall(pt) and pt.n_ok]
        annotate = len(short_points) <= MAX_ANNOTATED_POINTS
        if not annotate:
            ax.text(0.01, 0.01, f"{len(short_points)} points over fewer seeds than were run: "
                    "see the table", transform=ax.transAxes, fontsize=6, color="0.3")  # fmt: skip
        for lab, pts in p.series.items():
            c = colour[lab]
            xs = [pt.x * (100 if x == "density" else 1) for pt in pts]
            xs_all.update(xs)
            xs = [xv * shift.get((lab, pt.density), 1.0) for xv, pt in zip(xs, pts, strict=True)]
            ys = [100 * pt.mean for pt in pts]
            ok_y = [y if not pt.failed else float("nan") for y, pt in zip(ys, pts, strict=True)]
            lo = [100 * pt.min if not pt.failed else float("nan") for pt in pts]
            hi = [100 * pt.max if not pt.failed else float("nan") for pt in pts]
            # the method the figures are about on top: drawn first (METHOD_ORDER), a baseline at
            # the same accuracy (a quick LeNet-5 run's chance) hid it (a newcomer review)
            z = 2.5 if lab.startswith("DCTpS") else 2
            # a curve with nothing to draw is listed, and says why
            waiting = not any(pt.n_ok or pt.failed for pt in pts)
            shown = f"{lab} ({_nothing_drawn(pts, p.metric)})" if waiting else lab
            ax.plot(xs, ok_y, "-", marker=marker[lab], color=c, ms=4, label=shown, zorder=z)
            ax.fill_between(xs, lo, hi, color=c, alpha=0.18, linewidth=0)
            for xv, y, a, b in zip(xs, ok_y, lo, hi, strict=True):
                if len(xs) == 1 and b > a:  # one density: a band has no width, show the spread
                    ax.errorbar([xv], [y], yerr=[[y - a], [b - y]], color=c, capsize=3, lw=1)
            for i in range(len(pts) - 1):  # segments touching a failed point: dashed
                if pts[i].failed or pts[i + 1].failed:
                    ax.plot(xs[i : i + 2], ys[i : i + 2], "--", color=c)
            fx = [xv for xv, pt in zip(xs, pts, strict=True) if pt.failed]
            if fx:  # several curves failing at one density would hide each other: dodged
                dodge = FAILED_DODGE ** (failing.index(lab) - (len(failing) - 1) / 2)
                ax.plot([v * dodge for v in fx], [100 * p.chance] * len(fx), "o", mfc="none",
                        color=c, ms=5)  # fmt: skip
            for xv, y, pt in zip(xs, ys, pts, strict=True):
                short = _shortfall(pt)  # averaged over the seeds that ran: say so
                if short and pt.n_ok and annotate:
                    ax.annotate(short, (xv, y), xytext=(4, 4), textcoords="offset points",
                                fontsize=6, color=c)  # fmt: skip
        dense_styles = ["-", "-.", (0, (5, 1)), (0, (1, 1))]
        for i, (lab, pt) in enumerate(p.dense.items()):
            short = _shortfall(pt)
            if pt.failed:  # every seed failed: at chance and dashed, never a solid result line
                ax.axhline(100 * p.chance, color="k", lw=1.2, ls="--", label=f"{lab} (failed)")
            elif not pt.n_ok:  # nothing to draw: listed, not drawn
                ax.plot([], [], color="k", lw=1.2, ls=":",
                        label=f"{lab} ({_nothing_drawn([pt], p.metric)})")  # fmt: skip
            else:  # several dense curves (variants) must stay apart in the legend
                style = dense_styles[i % len(dense_styles)]
                shown = f"{lab} ({short})" if short else lab  # a partly failed baseline
                ax.axhline(100 * pt.mean, color="k", lw=1.2, ls=style, label=shown)
            if pt.max > pt.min:
                ax.axhspan(100 * pt.min, 100 * pt.max, color="k", alpha=0.08, linewidth=0)
        if p.chance == p.chance:  # not NaN
            ax.axhline(100 * p.chance, color="0.5", lw=0.8, ls=":", label="chance")
        ax.set_xscale("log")
        if x == "density":
            ticks = sorted(xs_all)
            ax.set_xticks(ticks, [f"{t:g}%" for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel("density (trainable weights, %)")
        else:
            # the stored non-zeros: a pruned network's kept weights, DCTpS's entries of S (its W
            # is dense); a per-channel alpha run's extra trainable scalars are not in it
            ax.set_xlabel("sparse non-zeros (kept weights or entries of S; alphas not counted)")
        ax.set_ylabel({"test_acc": "test accuracy (%)", "val_acc": "validation accuracy (%)",
                       "mixed": "test or validation accuracy (%; per point: see the table)"}
                      .get(p.metric, "accuracy (%)"))  # fmt: skip
        ax.set_title(p.title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labs = legend_entries(axes, len(panels))
    if any(pt.failed for p in panels for pts in p.series.values() for pt in pts):
        handles.append(Line2D([], [], color="0.3", ls="--", marker="o", mfc="none"))
        labs.append("failed: drawn at chance")
    fig.legend(handles, labs, loc="outside lower center", ncol=min(4, len(labs)), fontsize=8)
    if title or note:
        fig.suptitle("\n".join(t for t in (title, note) if t))
    return save(fig, path)


def legend_entries(axes: Any, used: int) -> tuple[list[Any], list[str]]:
    """Hide the panels of a grid ``axes`` past the first ``used``, and return the handles and
    labels of every panel's legend entries, each label once, in the order first drawn: one
    legend for the whole figure."""
    for ax in list(axes.flat)[used:]:
        ax.set_visible(False)
    handles: list[Any] = []
    labs: list[str] = []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labs:
                handles.append(h)
                labs.append(lab)
    return handles, labs


def _coincident_shifts(p: Panel) -> dict[tuple[str, float], float]:
    """``{(curve, density): factor}`` for the points of ``p`` that sit on another curve's point
    (same density, mean within 0.01 points): each is drawn at ``x * FAILED_DODGE**(k-(n-1)/2)``
    as failed points are, so that none hides another (a quick figure's Random, Iter-SNIP and
    FORCE at one accuracy lay under the DCTpS dot, listed in the legend but not seen)."""
    by_density: dict[float, list[tuple[float, str]]] = {}
    for lab, pts in p.series.items():
        for pt in pts:
            if pt.n_ok and not pt.failed:
                by_density.setdefault(pt.density, []).append((100 * pt.mean, lab))
    out = {}
    for density, points in by_density.items():
        points.sort()
        cluster: list[str] = []
        last = None
        # chains of points each within 0.01 of the one before: one cluster, dodged apart
        for y, lab in [*points, (math.inf, "")]:
            if last is not None and y - last > 0.01:
                for k, name in enumerate(cluster):
                    if len(cluster) > 1:
                        out[(name, density)] = FAILED_DODGE ** (k - (len(cluster) - 1) / 2)
                cluster = []
            cluster.append(lab)
            last = y
    return out


def plot_runs(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    title: str | None = None,
    label: Callable[[Mapping[str, Any]], str] = default_label,
    metric: str = "auto",
    x: str = "density",
    panel_order: Sequence[tuple[str, str]] | None = None,
    note: str | None = None,
    name_options: bool = True,
    keep_order: bool = False,
) -> FigureData:
    """Aggregate store ``rows`` (:func:`aggregate`; ``keep_order``: its curves in the order of
    ``rows``) and draw them (:func:`plot_accuracy`).

    Returns the :class:`FigureData` drawn, also written as JSON beside the figure.
    """
    rows = _check_rows(rows)  # a generator: aggregate would use it up before it is counted
    panels = aggregate(
        rows, label=label, metric=metric, x=x, name_options=name_options, keep_order=keep_order
    )
    if panel_order:
        rank = {k: i for i, k in enumerate(panel_order)}
        panels.sort(key=lambda p: rank.get((p.model, p.dataset), len(rank)))
    waiting = [r for r in rows if r.get("status") not in ("done", "failed")]
    if waiting and note is None:  # `dctps plot` of a sweep still running, or interrupted
        note = (
            f"incomplete: {len(waiting)} of {len(rows)} runs have no result yet (running or "
            "interrupted)"
        )
    paths = plot_accuracy(panels, path, title=title, x=x, note=note)
    out = FigureData(panels, paths, runs=len(rows), title=title, note=note)
    out.missing = len(waiting)
    out.missing_runs = [_summary(r) for r in waiting]
    out.paths.append(write_json(out.to_dict(), paths[0].with_suffix(".json")))
    return out


def _summary(row: Mapping[str, Any]) -> str:
    """A stored run in one line, as :meth:`~dctps.train.config.RunConfig.summary` writes a
    config, with its status."""
    d = row.get("density")
    dens = f"@{d:g}" if isinstance(d, (int, float)) else ""
    return (
        f"{row.get('model')}/{row.get('dataset')} {row.get('method')}{dens} "
        f"recipe={row.get('recipe')} seed={row.get('seed')} ({row.get('status')})"
    )


def write_json(data: Any, path: str | Path) -> Path:
    """Write ``data`` as indented JSON (the numbers behind a figure)."""
    path = user_path(path, "the JSON path")
    text = json.dumps(json_safe(data), indent=1, default=str, allow_nan=False)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write("figure data", path, e) from None
    with atomic_write(path, "figure data") as f:
        f.write(text)
    return path


def figure_target(out: str | Path) -> Path:
    """The figure path ``--out`` names: ``plot.png`` inside it where it is a folder (as
    ``--out`` is for train/sweep/figure), else itself."""
    target = user_path(out)
    if str(out).endswith(("/", os.sep)) or target.is_dir():
        target = target / "plot.png"
    return target


def plot_command(
    db: str,
    where: Sequence[str] = (),
    out: str = "plot.png",
    x: str = "density",
    metric: str = "auto",
    title: str | None = None,
) -> FigureData | CurvesData:
    """``dctps plot``: draw the matching runs of a results database (accuracy vs density or
    non-zeros; with ``x='epoch'`` their learning curves,
    :func:`dctps.results.curves.curves_command`)."""
    if x == "epoch":
        from dctps.results.curves import curves_command

        return curves_command(db, where, out, metric, title)
    if x not in ("density", "nonzeros"):
        raise DctpsError(f"--x must be density, nonzeros or epoch, got {show(x)}")
    if metric not in ("auto", "test_acc", "val_acc"):
        from dctps.results.curves import EPOCH_METRICS

        hint = " (a per-epoch metric: draw learning curves with --x epoch)" if metric in (
            EPOCH_METRICS) else ""  # fmt: skip
        raise DctpsError(
            f"--metric must be auto, test_acc or val_acc for --x {x}, got {show(metric)}{hint}"
        )
    store, rows, target = plot_inputs(db, where, out)
    return plot_runs(rows, target, title=title, metric=metric, x=x)


def plot_inputs(
    db: str, where: Sequence[str], out: str | Path
) -> tuple[Any, list[dict[str, Any]], Path]:
    """What ``dctps plot`` draws from: the store at ``db`` (which must exist), its rows that
    match ``where`` (a :class:`DctpsError` naming what the filter could have said where none
    does, as ``dctps results`` tells it) and the figure path ``out`` names, checked before
    anything is drawn."""
    from dctps.results.store import Store, _what_is_there, existing_db, parse_where

    path = existing_db(db)
    target = figure_target(out)
    check_figure_path(target)
    store = Store(path)
    filters = parse_where(where)
    rows = store.query(filters)
    if not rows:
        raise DctpsError(
            f"nothing to plot: no runs in {path} match" + _what_is_there(store, filters)
        )
    return store, rows, target
