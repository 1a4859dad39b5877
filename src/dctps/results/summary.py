"""Accuracy over seeds, as tables: ``dctps results --summary``.

The numbers ``dctps plot`` draws (:func:`dctps.results.plots.aggregate`: a curve per setting, a
point per density, one run per seed, failed seeds counted and not averaged), written as a paper's
table: per model and data set one Markdown table, a row per setting, a column per density (dense
runs under 100%), each cell ``mean [min, max]`` over the seeds in %. :func:`summary_rows` gives
the long form, one row per setting and density with the sample standard deviation, for a CSV or
a JSON file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from dctps.results.plots import Panel, Point, _pct, aggregate

__all__ = ["SUMMARY_COLUMNS", "format_summary", "summarise", "summary_rows"]

#: the columns of :func:`summary_rows` (accuracies as fractions, as the store keeps them)
SUMMARY_COLUMNS = (
    "model", "dataset", "setting", "density", "metric", "mean", "std", "min", "max", "seeds",
    "failed", "open", "without", "failed_seeds", "failed_reasons",
)  # fmt: skip
_METRIC_NAMES = {"test_acc": "test accuracy", "val_acc": "validation accuracy",
                 "mixed": "test or validation accuracy",
                 "auto": "accuracy"}  # fmt: skip  # auto: no run of the table has one


def summarise(rows: Sequence[Mapping[str, Any]], metric: str = "auto") -> list[Panel]:
    """The panels of store ``rows`` (:meth:`Store.query`) as ``dctps plot`` aggregates them
    (:func:`dctps.results.plots.aggregate`; ``metric``: auto, test_acc or val_acc)."""
    return aggregate(rows, metric=metric)


def _points(p: Panel) -> list[tuple[str, Point]]:
    """``(setting, point)`` of a panel: dense first, then each curve's densities."""
    out = [(label, pt) for label, pt in p.dense.items()]
    out += [(label, pt) for label, pts in p.series.items() for pt in pts]
    return out


def _table_order(pts: list[tuple[str, Point]]) -> list[tuple[str, Point]]:
    """``pts`` as the tables read them: by setting (first seen first), densities highest first."""
    rank = {label: i for i, label in enumerate(dict.fromkeys(lab for lab, _ in pts))}
    return sorted(pts, key=lambda lp: (rank[lp[0]], -lp[1].density))


def _md(text: str) -> str:
    """``text`` safe in a Markdown table cell: pipes escaped, line breaks as spaces."""
    return " ".join(text.replace("|", "\\|").split("\n"))


def _seeds(seeds: Sequence[int]) -> str:
    """``seed 2`` / ``seeds 0, 2``: which seeds a cell's failures were (``""``: none known)."""
    if not seeds:
        return ""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"


def _cell(pt: Point, mixed: bool = False) -> str:
    """``61.23 [60.10, 62.00]``, with what the seeds did beside it: ``1 of 3 failed``; a point
    every seed of which failed reads ``failed (3 of 3)``, one without a value says why."""
    seeds = pt.n_ok + pt.n_failed + pt.n_open + pt.n_without
    notes = []
    which = _seeds(pt.failed_seeds)
    if pt.failed:
        return f"failed ({pt.n_failed} of {pt.n_failed}{', ' + which if which else ''})"
    if pt.n_failed:
        notes.append(f"{pt.n_failed} of {seeds} failed" + (f" ({which})" if which else ""))
    if pt.n_open:
        notes.append(f"{pt.n_open} without a result yet")
    if pt.n_without:
        notes.append(f"{pt.n_without} without {pt.metric or 'an accuracy'}")
    if not pt.n_ok:
        return "no result (" + ", ".join(notes) + ")" if notes else "no result"
    text = f"{100 * pt.mean:.2f} [{100 * pt.min:.2f}, {100 * pt.max:.2f}]"
    if mixed:  # a panel no one accuracy covers: say which this cell is
        text += {"test_acc": " (test)", "val_acc": " (val)"}.get(pt.metric, "")
    if pt.n_ok == 1:
        notes.insert(0, "1 seed")
    return text + (", " + ", ".join(notes) if notes else "")


def _failures(pts: Sequence[tuple[str, Point]]) -> list[str]:
    """A Markdown list item per setting, density and reason of the failed seeds:
    ``- SNIP at 0.1%, seeds 0, 2: snip: layer collapse`` (seeds failing alike share one)."""
    out = []
    for label, pt in pts:
        by_reason: dict[str, list[int]] = {}
        for seed, reason in zip(pt.failed_seeds, pt.failed_reasons, strict=True):
            by_reason.setdefault(" ".join(reason.split()), []).append(seed)
        out += [f"- {label} at {_pct(pt.density)}, {_seeds(seeds)}: {reason}"
                for reason, seeds in by_reason.items()]  # fmt: skip
    return out


def format_summary(panels: Sequence[Panel]) -> str:
    """Per panel a heading and a Markdown table: a row per setting, a column per density
    (highest first; dense runs under 100%), each cell :func:`_cell` of its point; below it, why
    each failed seed failed (:func:`_failures`)."""
    blocks = []
    for p in panels:
        pts = _points(p)
        densities = sorted({pt.density for _, pt in pts}, reverse=True)
        settings = list(dict.fromkeys(label for label, _ in pts))
        cells = {(label, pt.density): _cell(pt, p.metric == "mixed") for label, pt in pts}
        metric = _METRIC_NAMES.get(p.metric, p.metric)
        head = ["setting", *(_pct(d) for d in densities)]
        body = [[_md(s), *(cells.get((s, d), "") for d in densities)] for s in settings]
        widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

        def line(cols: list[str], widths: list[int] = widths) -> str:
            return "| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)) + " |"

        failures = _failures(_table_order(pts))
        blocks.append("\n".join([
            f"{p.title}: {metric} in %, mean [min, max] over the seeds",
            "",
            line(head),
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(r) for r in body),
            *(["", "Failed seeds:", *failures] if failures else []),
        ]))  # fmt: skip
    return "\n\n".join(blocks)


def _fraction(v: float) -> float | None:
    return None if math.isnan(v) else v


def summary_rows(panels: Sequence[Panel]) -> list[dict[str, Any]]:
    """One row per setting and density (:data:`SUMMARY_COLUMNS`): ``mean``/``std``/``min``/
    ``max`` of the accuracy ``metric`` over the seeds that finished (fractions; ``None`` where
    no seed did, and ``std`` below two), ``seeds`` the seeds averaged, ``failed``, ``open``
    (without a result yet), ``without`` (finished without the metric), and the failed runs'
    ``failed_seeds`` and ``failed_reasons`` (lists in one order)."""
    out = []
    for p in panels:
        for label, pt in _table_order(_points(p)):
            failed = pt.failed
            out.append({
                "model": p.model, "dataset": p.dataset, "setting": label, "density": pt.density,
                "metric": pt.metric or (p.metric if p.metric not in ("mixed", "auto") else ""),
                "mean": None if failed else _fraction(pt.mean),
                "std": None if failed else _fraction(pt.std),
                "min": None if failed else _fraction(pt.min),
                "max": None if failed else _fraction(pt.max),
                "seeds": pt.n_ok, "failed": pt.n_failed, "open": pt.n_open,
                "without": pt.n_without,
                "failed_seeds": list(pt.failed_seeds),  # a CSV writes "0 2"
                "failed_reasons": list(pt.failed_reasons),  # in that order; a CSV: JSON text
            })  # fmt: skip
    return out
