"""Learning curves read from a results database: a per-epoch metric of its runs (``dctps plot
--x epoch``).

One panel per model, data set and density; in it one line per curve (the runs of one setting, as
the accuracy plots name it: :func:`dctps.results.plots.curve_groups`), at each epoch the mean over
the seeds that recorded it, with a min-max band. A dense run of the panel's model and data set is
drawn in black in each of their panels, the reference a sparse curve is read against. A run that
failed (a diverged loss) is drawn up to its last recorded epoch and counted on its curve, so that a
baseline that collapses is seen collapsing; one that failed before training (pruning) has no
epoch, and its curve is listed, not drawn. Accuracies are stored as fractions and drawn in %.
Returns the data it drew (:class:`CurvesData`), so tests check numbers, not pixels.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from matplotlib.ticker import MaxNLocator

from dctps.errors import DctpsError, show
from dctps.results.plots import (
    SERIES_MARKERS,
    _check_rows,
    _one_per_seed,
    _pct,
    _subplots,
    bounded_mean,
    curve_groups,
    default_label,
    density_of,
    legend_entries,
    panel_title,
    save,
    series_colours,
    write_json,
    written_png,
)

__all__ = [
    "EPOCH_METRICS", "MAX_PANELS", "Curve", "CurvePanel", "CurvesData", "EpochPoint",
    "aggregate_curves", "curves_command", "plot_curves",
]  # fmt: skip

#: what a learning curve can draw: the per-epoch columns of the store's ``epochs`` table
EPOCH_METRICS = ("val_acc", "train_acc", "val_loss", "train_loss", "lr", "seconds")
#: the most panels one figure draws: past it (a whole store of many densities), the refusal
#: names the ``--where`` filters that would cut it down
MAX_PANELS = 24
_LABELS = {
    "val_acc": "validation accuracy (%)", "train_acc": "training accuracy (%)",
    "val_loss": "validation loss", "train_loss": "training loss", "lr": "learning rate",
    "seconds": "seconds per epoch (training)",
}  # fmt: skip
_PERCENT = ("val_acc", "train_acc")


class EpochPoint(NamedTuple):
    """A curve at one epoch: ``mean``/``min``/``max`` over the ``n`` seeds that recorded the
    metric at that epoch (fractions for accuracies)."""

    epoch: int
    mean: float
    min: float
    max: float
    n: int


@dataclass
class Curve:
    """One line of a panel: its ``label``, its points by epoch, and what became of its runs
    (one per seed: ``done``, ``failed``, and ``open``, running or ``interrupted``). ``failed_at``:
    per failed seed, the last epoch it recorded (0: none, e.g. pruning failed, or the first
    epoch's loss diverged), and ``reasons`` the distinct reasons they gave. ``recorded``: the
    most epochs one of its runs recorded, whatever metrics they hold (a run without validation
    has epochs, but no ``val_acc``)."""

    label: str
    dense: bool
    points: list[EpochPoint] = field(default_factory=list)
    done: int = 0
    failed: int = 0
    open: int = 0
    failed_at: list[int] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    interrupted: int = 0
    dead: int = 0
    recorded: int = 0
    #: its place in :func:`~dctps.results.plots.curve_groups`' order (method, then values)
    rank: int = 0
    #: its model and data set's place among the rows' (the accuracy plot's panel order)
    group: int = 0

    @property
    def seeds(self) -> int:
        """Its runs, one per seed, whatever became of them."""
        return self.done + self.failed + self.open

    def status(self) -> str:
        """``3 seeds``, ``2 seeds, 1 failed after epoch 4``, ``1 running``: what the legend
        and the table add to the label."""
        seeds = self.seeds
        parts = [f"{seeds} seed{'s' if seeds != 1 else ''}"]
        if self.failed:
            at: dict[int, int] = {}
            for e in self.failed_at:
                at[e] = at.get(e, 0) + 1
            when = {e: "before recording an epoch" if e == 0 else f"after epoch {e}" for e in at}
            if len(at) == 1 and sum(at.values()) == self.failed:
                parts.append(f"{self.failed} failed {when[next(iter(at))]}")
            elif at:
                where = ", ".join(f"{n} {when[e]}" for e, n in sorted(at.items()))
                parts.append(f"{self.failed} failed ({where})")
            else:  # their epochs were not read (aggregate_curves' epochs= left them out)
                parts.append(f"{self.failed} failed")
        running = self.open - self.interrupted - self.dead
        if running:
            parts.append(f"{running} running")
        if self.interrupted:
            parts.append(f"{self.interrupted} interrupted")
        if self.dead:  # recorded running, but its process is gone (dctps results: dead)
            parts.append(f"{self.dead} dead")
        return ", ".join(parts)


@dataclass
class CurvePanel:
    """One model on one data set at one density (``None``: a panel of dense runs only)."""

    model: str
    dataset: str
    density: float | None
    title: str
    metric: str
    curves: list[Curve] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The panel as plain JSON values."""
        return {
            "model": self.model, "dataset": self.dataset, "density": self.density,
            "title": self.title, "metric": self.metric,
            "curves": [
                {"label": c.label, "dense": c.dense, "done": c.done, "failed": c.failed,
                 "open": c.open, "interrupted": c.interrupted, "dead": c.dead,
                 "failed_at": c.failed_at,
                 "reasons": c.reasons, "recorded": c.recorded,
                 "points": [p._asdict() for p in c.points]}
                for c in self.curves
            ],
        }  # fmt: skip


@dataclass(repr=False)
class CurvesData:
    """What :func:`plot_curves` drew (``panels``) and where it wrote it (``paths``). In a
    notebook, a ``CurvesData`` left as a cell's value shows the PNG it wrote."""

    panels: list[CurvePanel]
    paths: list[Path]
    runs: int = 0
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The title, panels, paths and run count as plain JSON values."""
        return {"title": self.title, "panels": [p.to_dict() for p in self.panels],
                "paths": [str(p) for p in self.paths], "runs": self.runs}  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"CurvesData({self.title!r}, {len(self.panels)} panel(s), "
            f"{sum(len(p.curves) for p in self.panels)} curve(s), "
            f"paths={[str(p) for p in self.paths]}; .table() lists them)"
        )

    def _repr_png_(self) -> bytes | None:
        """The PNG it wrote (IPython's display hook: the figure, inline)."""
        return written_png(self.paths)

    def table(self) -> str:
        """Plain text: per panel, one line per curve, its last epoch and its best epoch (mean
        [min, max] over the seeds; accuracies in %)."""
        lines = []
        for p in self.panels:
            lines.append(f"{p.title} ({p.metric} by epoch; mean [min, max] over the seeds)")
            w = max([34, *(len(c.label) for c in p.curves)])
            for c in p.curves:
                lines.append(f"  {c.label:<{w}} {_summary(c, p.metric)}")
        return "\n".join(lines)


def _value(metric: str, v: float) -> str:
    if metric in _PERCENT:
        return f"{100 * v:.2f}%"
    return f"{v:.4g}"


def _summary(c: Curve, metric: str) -> str:
    if not c.points:
        why = ""
        if c.failed and not c.done and not c.open:
            more = len(c.reasons) - 1
            why = c.reasons[0] + (f" (and {more} other reason{'s' * (more > 1)})" if more else "")
        if c.recorded:  # epochs, without this metric (a run without validation)
            n = c.recorded
            return f"no {metric} in its {n} recorded epoch{'s' if n != 1 else ''} ({c.status()})"
        return f"no epoch recorded ({c.status()}{': ' + why if why else ''})"
    last = c.points[-1]
    # the best epoch: highest accuracy, lowest loss (lr and seconds: no best, the last only)
    if metric in _PERCENT:
        best = max(c.points, key=lambda p: p.mean)
    elif metric in ("val_loss", "train_loss"):
        best = min(c.points, key=lambda p: p.mean)
    else:
        best = None
    text = (
        f"epoch {last.epoch}: {_value(metric, last.mean)} [{_value(metric, last.min)}, "
        f"{_value(metric, last.max)}]"
    )
    if last.n < c.seeds:  # a seed stopped before it (failed, or still running)
        text += f" over {last.n} of {c.seeds} seeds"
    if best is not None and best.mean != last.mean:  # a tie: the last epoch says it
        text += f"; best at epoch {best.epoch}: {_value(metric, best.mean)}"
        if best.n < c.seeds:
            text += f" over {best.n} of {c.seeds} seeds"
    return f"{text} ({c.status()})"


def _check_metric(metric: object) -> str:
    if metric != "auto" and metric not in EPOCH_METRICS:
        extra = (
            " (test_acc is recorded once per run, after training, not per epoch)"
            if metric == "test_acc"
            else ""
        )
        raise DctpsError(
            f"a learning curve's metric (--metric with --x epoch) must be auto or one of "
            f"{', '.join(EPOCH_METRICS)}, got {show(metric)}{extra}"
        )
    return str(metric)


def _with_config_json(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A row of :meth:`Store.runs_with_epochs` (its config as a dict) as a store row
    (``config_json``), which curve naming reads."""
    if "config_json" in row or "config" not in row:
        return row
    cfg = row["config"]
    return {**row, "config_json": cfg if isinstance(cfg, str) else json.dumps(cfg)}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def aggregate_curves(
    rows: Sequence[Mapping[str, Any]],
    metric: str = "auto",
    label: Callable[[Mapping[str, Any]], str] = default_label,
    name_options: bool = True,
    epochs: Iterable[Mapping[str, Any]] | None = None,
) -> list[CurvePanel]:
    """Group runs into panels (model, data set, density) and curves, and average a per-epoch
    ``metric`` over each curve's seeds, epoch by epoch.

    Args:
        rows: store rows (:meth:`Store.query`), or runs with their epochs
            (:meth:`Store.runs_with_epochs`).
        metric: one of :data:`EPOCH_METRICS`, or ``auto``: ``val_acc``, or ``train_acc`` in a
            panel none of whose runs validated (``val_fraction: 0``).
        label: a curve label of a run config (as :func:`dctps.results.plots.aggregate` takes).
        name_options: name a run's method options in its curve's label.
        epochs: the runs' per-epoch records, read once: an iterable of mappings with ``hash``
            and ``epochs`` (a list of the store's ``epochs`` rows), e.g. ``Store._with_epochs``,
            which reads them a chunk of runs at a time. ``None``: each row's own ``epochs``.

    A seed recorded twice (two older versions of one computation) counts once
    (:func:`dctps.results.plots._one_per_seed`); a value that is not finite (a diverged loss)
    is not averaged.

    Returns:
        The panels, in order of model, data set and density (dense-only panels last); a
        :class:`DctpsError` past :data:`MAX_PANELS`, naming the filters that would cut them.
    """
    metric = _check_metric(metric)
    rows = [_with_config_json(r) for r in _check_rows(rows)]
    if epochs is None:
        lacking = next(
            (i for i, r in enumerate(rows) if not isinstance(r.get("epochs"), list)), None
        )
        if lacking is not None:
            raise DctpsError(
                f"rows[{lacking}] has no per-epoch records ('epochs'): give the runs of "
                "Store.runs_with_epochs(), or the epochs as epochs="
            )
        epochs = rows
    by_model: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in rows:
        by_model.setdefault((r["model"], r["dataset"]), []).append(r)

    # pass 1: every row's panels and curve; one row per seed of a curve at a density
    panels: dict[tuple[str, str, float | None], dict[str, Curve]] = {}
    targets: dict[str, list[Curve]] = {}  # hash -> the curves its epochs go to
    for group, ((model, dataset), mrows) in enumerate(by_model.items()):
        groups = curve_groups(mrows, label, name_options)
        sparse_densities: list[float] = sorted(
            {density_of(r) for r in mrows
             if r.get("method") != "dense" and r.get("density") is not None}
        )  # fmt: skip
        keys: list[tuple[str, str, float | None]] = [(model, dataset, None)]
        if sparse_densities:
            keys = [(model, dataset, d) for d in sparse_densities]
        for rank, (name, crows) in enumerate(groups.items()):
            dense = crows[0].get("method") == "dense"
            by_d: dict[float | None, list[Mapping[str, Any]]] = {}
            for r in crows:
                d = None if dense or r.get("density") is None else density_of(r)
                by_d.setdefault(d, []).append(r)
            for d, drows in by_d.items():
                kept = _one_per_seed(drows)
                for key in keys if dense else [(model, dataset, d)]:
                    c = panels.setdefault(key, {}).setdefault(
                        name, Curve(name, dense, rank=rank, group=group)
                    )
                    for r in kept:
                        status = r.get("status")
                        if status == "done":
                            c.done += 1
                        elif status == "failed":
                            c.failed += 1
                            reason = str(r.get("reason") or "no reason recorded")
                            if reason not in c.reasons:
                                c.reasons.append(reason)
                        else:
                            c.open += 1
                            c.interrupted += status == "interrupted"
                            c.dead += status == "dead"
                        targets.setdefault(r["hash"], []).append(c)
    if len(panels) > MAX_PANELS:
        raise DctpsError(_too_many(panels))

    # pass 2: the epochs, a run at a time
    wanted = ("val_acc", "train_acc") if metric == "auto" else (metric,)
    values: dict[int, dict[str, dict[int, list[float]]]] = {}  # id(curve) -> metric -> epoch
    status_of = {r["hash"]: r.get("status") for r in rows}
    for run in epochs:
        h = run.get("hash") if isinstance(run, Mapping) else None
        if h not in targets:
            continue
        recs = run.get("epochs") or []
        last = max((int(e["epoch"]) for e in recs), default=0)
        for cv in targets[h]:
            cv.recorded = max(cv.recorded, len(recs))
            if status_of.get(h) == "failed":
                cv.failed_at.append(last)
            per = values.setdefault(id(cv), {})
            for e in recs:
                for m in wanted:
                    v = e.get(m)
                    if _finite(v):
                        per.setdefault(m, {}).setdefault(int(e["epoch"]), []).append(float(v))

    out = []
    order = sorted(panels, key=lambda k: (k[0], k[1], k[2] is None, k[2] or 0.0))
    for key in order:
        model, dataset, d = key
        curves = list(panels[key].values())
        chosen = metric
        if metric == "auto":
            has_val = any("val_acc" in values.get(id(c), {}) for c in curves)
            chosen = "val_acc" if has_val else "train_acc"
        for c in curves:
            per_epoch = values.get(id(c), {}).get(chosen, {})
            c.points = [
                EpochPoint(ep, bounded_mean(vs), min(vs), max(vs), len(vs))
                for ep, vs in sorted(per_epoch.items())
            ]
        title = panel_title(model, dataset) + (f", density {_pct(d)}" if d is not None else "")
        # dense first (the reference), then the sparse curves in curve_groups' order
        curves.sort(key=lambda c: not c.dense)
        out.append(CurvePanel(model, dataset, d, title, chosen, curves))
    return out


def _too_many(panels: Mapping[tuple[str, str, float | None], Mapping[str, Curve]]) -> str:
    """The refusal of more than :data:`MAX_PANELS` panels, with the filters that cut them:
    a density (with 100%, which keeps the dense reference), a model or a data set where
    there are several."""
    models = sorted({k[0] for k in panels})
    datasets = sorted({k[1] for k in panels})
    densities = sorted({k[2] for k in panels if k[2] is not None}, reverse=True)
    dense = any(c.dense for curves in panels.values() for c in curves.values())
    ways = []
    if densities:
        ways.append(f"--where density={_pct(densities[0])}" + (",100%" if dense else ""))
    if len(models) > 1:
        ways.append(f"--where model={models[0]}")
    if len(datasets) > 1:
        ways.append(f"--where dataset={datasets[0]}")
    return (
        f"{len(panels)} learning-curve panels (one per model, data set and density: "
        f"{len(models)} model(s), {len(datasets)} data set(s), {len(densities)} density(ies)) "
        f"is more than one figure draws ({MAX_PANELS}); filter with --where, e.g. "
        + " or ".join(ways)
        + (" (100%: the dense runs, the reference curves)" if dense and densities else "")
    )


def _segments(
    xs: Sequence[float], ys: Sequence[float], full: Sequence[bool]
) -> tuple[list[float], list[list[tuple[float, float]]]]:
    """The solid line (``ys`` with NaN where a segment's end is not ``full``) and the
    segments that touch a point that is not (drawn dotted): ``(solid_ys, [[(x, y), (x, y)],
    ...])``."""
    solid = [y if f else math.nan for y, f in zip(ys, full, strict=True)]
    if sum(full) == 1:  # a lone full point: no solid segment would show it
        solid = [math.nan] * len(ys)
    thin = [
        [(xs[i], ys[i]), (xs[i + 1], ys[i + 1])]
        for i in range(len(xs) - 1)
        if not (full[i] and full[i + 1])
    ]
    return solid, thin


def plot_curves(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    metric: str = "auto",
    title: str | None = None,
    label: Callable[[Mapping[str, Any]], str] = default_label,
    epochs: Iterable[Mapping[str, Any]] | None = None,
) -> CurvesData:
    """Draw learning curves (:func:`aggregate_curves` of ``rows``): one panel per model, data
    set and density, epoch on the x axis, per curve the mean over its seeds with a min-max
    band, dense runs in black. Where the mean covers fewer seeds than the curve's best-covered
    epoch (a seed failed or is still running), its line is dotted; a seed's failure is marked
    with an x at its last epoch; curves with nothing to draw, and seeds that failed before
    recording an epoch, are named under their panel. Writes PNG and PDF at ``path`` and the
    data as JSON beside them; returns what it drew. A run recorded running whose process is
    gone reads ``running`` here (rows as the store has them); :func:`curves_command` (``dctps
    plot --x epoch``) reads it ``dead``, as ``dctps results`` does."""
    rows = _check_rows(rows)  # a generator: aggregate_curves would use it up before it is counted
    panels = aggregate_curves(rows, metric, label=label, epochs=epochs)
    if not any(c.points for p in panels for c in p.curves):
        raise DctpsError(
            "nothing to plot: none of the matching runs recorded an epoch"
            + ("" if metric == "auto" else f" with {metric}")
        )
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = _subplots(
        nrows, ncols, figsize=(5.2 * ncols, 3.9 * nrows + 0.6), squeeze=False, layout="constrained"
    )
    # in curve_groups' order, as the accuracy plot's legend and colours (not by density panel)
    # (panels are drawn by model, data set and density; the accuracy plot takes each model and
    # data set's curves in turn, in the rows' order)
    # a model and data set without a finished run has no panel there: its curves come last
    finished = {c.group for p in panels for c in p.curves if c.done or c.failed}
    ranked = sorted((c.group not in finished, c.group, c.rank, c.label)
                    for p in panels for c in p.curves if not c.dense)  # fmt: skip
    sparse = list(dict.fromkeys(lab for *_, lab in ranked))
    dense = list(dict.fromkeys(c.label for p in panels for c in p.curves if c.dense))
    colour = series_colours(sparse) | {lab: "k" for lab in dense}
    # a marker per curve: curves of one panel often coincide (a quick run's methods all at a
    # constant output), and past ten curves the colours repeat
    marker = {lab: SERIES_MARKERS[i % len(SERIES_MARKERS)] for i, lab in enumerate(sparse)}
    marker |= {lab: ("", "s", "^", "D")[i % 4] for i, lab in enumerate(dense)}
    crossed = dotted = False
    for ax, p in zip(axes.flat, panels, strict=False):
        scale = 100.0 if p.metric in _PERCENT else 1.0
        notes = []
        for c in p.curves:
            if not c.points:  # nothing to draw: said under the panel
                status = c.status()
                if c.recorded:
                    status += f", no {p.metric} recorded"
                elif "before recording an epoch" not in status:  # it says so already
                    status += ", no epoch recorded"
                notes.append(f"{c.label}: {status}")
                continue
            early = c.failed_at.count(0)
            if early:  # seeds in no point
                notes.append(
                    f"{c.label}: {early} of {c.seeds} seeds failed before recording an epoch"
                )
            col = colour[c.label]
            xs = [pt.epoch for pt in c.points]
            ys = [scale * pt.mean for pt in c.points]
            most = max(pt.n for pt in c.points)
            full = [pt.n == most for pt in c.points]
            solid, thin = _segments(xs, ys, full)
            z = 2.5 if c.label.startswith("DCTpS") else 2
            # steps for the learning rate: it changes at epochs, not between them
            steps = {"drawstyle": "steps-post"} if p.metric == "lr" else {}
            every = max(1, len(xs) // 12)  # markers on 200 epochs hid the line
            ax.plot(xs, solid, "-", color=col, lw=1.4 if c.dense else 1.5, marker=marker[c.label],
                    markevery=every, ms=3.5, label=c.label, zorder=z, **steps)  # fmt: skip
            for seg in thin:
                dotted = True
                ax.plot(*zip(*seg, strict=True), ":", color=col, lw=1.5, zorder=z, **steps)
            if sum(full) == 1:  # no solid segment: its one best-covered point, marked
                k = full.index(True)
                ax.plot([xs[k]], [ys[k]], marker[c.label] or "o", color=col, ms=3.5, zorder=z)
            lo = [scale * pt.min for pt in c.points]
            hi = [scale * pt.max for pt in c.points]
            ax.fill_between(xs, lo, hi, color=col, alpha=0.08 if c.dense else 0.16, linewidth=0,
                            **({"step": "post"} if steps else {}))  # fmt: skip
            by_epoch = dict(zip(xs, ys, strict=True))
            stops = [e for e in c.failed_at if e in by_epoch]
            if stops:  # where a seed's run failed: an x on the curve
                crossed = True
                ax.plot(stops, [by_epoch[e] for e in stops], "x", color=col, ms=7, mew=1.5,
                        zorder=z + 0.1)  # fmt: skip
        if notes:  # under the axes: a collapsed curve sits at the bottom of them
            ax.annotate("\n".join(notes), xy=(0, 0), xycoords="axes fraction",
                        xytext=(0, -30), textcoords="offset points", va="top", fontsize=6,
                        color="0.25", annotation_clip=False)  # fmt: skip
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(_LABELS.get(p.metric, p.metric))
        if p.metric == "lr" and all(pt.min > 0 for c in p.curves for pt in c.points):
            ax.set_yscale("log")  # step schedules divide by 10: equal steps on a log axis
        ax.set_title(p.title, fontsize=10)
        ax.grid(alpha=0.3)
    handles, labs = legend_entries(axes, len(panels))
    # as the accuracy plot's legend: the sparse curves in their colours' order, then dense
    # (panels are drawn lowest density first, and a variant of one density only came first)
    place = {lab: (False, i) for i, lab in enumerate(sparse)}
    place |= {lab: (True, i) for i, lab in enumerate(dense)}
    pairs = sorted(zip(handles, labs, strict=True), key=lambda hl: place[hl[1]])
    handles, labs = [h for h, _ in pairs], [lab for _, lab in pairs]
    from matplotlib.lines import Line2D

    if dotted:
        handles.append(Line2D([], [], color="0.3", ls=":"))
        labs.append("dotted: a mean over fewer seeds (one failed, or stopped before)")
    if crossed:
        handles.append(Line2D([], [], color="0.3", ls="none", marker="x", mew=1.5))
        labs.append("x: a seed's run failed after this epoch")
    fig.legend(handles, labs, loc="outside lower center", ncol=min(3, len(labs)), fontsize=7)
    if title:
        fig.suptitle(title)
    paths = save(fig, path)
    out = CurvesData(panels, paths, runs=len(rows), title=title)
    out.paths.append(write_json(out.to_dict(), paths[0].with_suffix(".json")))
    return out


def curves_command(
    db: str,
    where: Sequence[str] = (),
    out: str = "plot.png",
    metric: str = "auto",
    title: str | None = None,
) -> CurvesData:
    """``dctps plot --x epoch``: the learning curves of the matching runs of a results database.
    The runs' epochs are read a chunk of runs at a time, after the panels are counted. A run
    recorded running whose process is gone reads ``dead``, as in ``dctps results``."""
    from dctps.results.plots import plot_inputs
    from dctps.results.store import locks_folder, reading_dead

    metric = _check_metric(metric)
    store, stored, target = plot_inputs(db, where, out)
    rows = reading_dead(stored, locks_folder(store.path))
    return plot_curves(rows, target, metric, title, epochs=store._with_epochs(rows))
