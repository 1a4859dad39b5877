"""Matplotlib figures read from results (never from a live run): allocation bar charts (Figure A.2,
C.10) and accuracy-vs-density curves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are files, never windows
import matplotlib.pyplot as plt  # noqa: E402


def save(fig, path: str | Path) -> list[Path]:
    """Save ``fig`` at ``path`` and, beside it, the other of PNG/PDF; return both paths."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path]
    twin = path.with_suffix(".pdf" if path.suffix.lower() != ".pdf" else ".png")
    out.append(twin)
    for p in out:
        fig.savefig(p, bbox_inches="tight", dpi=150)
    plt.close(fig)
    return out


def plot_allocation(
    series: Mapping[str, Sequence[int]], title: str, path: str | Path, log: bool = True
) -> list[Path]:
    """Bar chart of non-zeros per prunable layer, one group of bars per series (e.g. EPL, EPF)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * max(len(v) for v in series.values())), 3.5))
    k = len(series)
    width = 0.8 / k
    for i, (label, counts) in enumerate(series.items()):
        xs = [j + (i - (k - 1) / 2) * width for j in range(len(counts))]
        ax.bar(xs, counts, width=width, label=label)
    n = max(len(v) for v in series.values())
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_xlabel("prunable layer")
    ax.set_ylabel("trainable non-zeros")
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return save(fig, path)
