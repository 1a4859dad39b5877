"""Tables and plot of the issue-10 offset measurement (docs/results/offsets.md).

Reads only the results store of the sweeps (``runs/offsets/results.db``), restricted to the runs
of the grids given on the command line; prints one Markdown table per model (mean +- sample std
of test accuracy over seeds, per variant and density, with the trainable-parameter counts
``non-zeros + alphas`` of that configuration) and draws ``docs/results/offsets.png``.

    python docs/results/offsets_summary.py runs/offsets docs/results/offsets-lenet5.yaml \
        docs/results/offsets-resnet18.yaml --png docs/results/offsets.png
"""

from __future__ import annotations

import argparse
import math
import statistics
from pathlib import Path

import torch

import dctps
from dctps import models
from dctps.results.figures import _offset_label
from dctps.results.plots import plot_runs
from dctps.results.store import Store, resolve_db_path, row_config
from dctps.results.sweep import expand_grid, load_grid


def trainable(model: str, sparsity: dict) -> tuple[int, int]:
    """(non-zeros, alphas) of the configuration, counted on a freshly built model."""
    if sparsity["method"] == "dense":
        c = dctps.count(models.build(model, num_classes=10))
        return c.nonzeros, 0
    torch.manual_seed(0)
    net = models.build(model, num_classes=10)
    dctps.sparsify(
        net, sparsity["density"], sparsity.get("allocation") or "epl", seed=0,
        offset=sparsity.get("offset", "dct"), alpha=sparsity.get("alpha", "layer"),
        alpha_init=sparsity.get("alpha_init", 1.0),
        charge_alpha=sparsity.get("charge_alpha", True),
    )  # fmt: skip
    c = dctps.count(net)
    return c.nonzeros, c.alphas


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("grids", nargs="+")
    ap.add_argument("--png", default=None)
    a = ap.parse_args()
    cfgs = [c for g in a.grids for c in expand_grid(load_grid(g), g)]
    hashes = {c.config_hash() for c in cfgs}
    store = Store(resolve_db_path(a.out))
    rank = {c.config_hash(): i for i, c in enumerate(cfgs)}
    # in grid order, as the figure's curves and colours follow it (keep_order below)
    rows = sorted((r for r in store.query() if r["hash"] in hashes), key=lambda r: rank[r["hash"]])
    done = [r for r in rows if r["status"] == "done" and r.get("test_acc") is not None]
    groups: dict[tuple[str, str, float], list[float]] = {}
    counts: dict[tuple[str, str, float], tuple[int, int]] = {}
    order = list(dict.fromkeys(_offset_label(c.to_dict()) for c in cfgs))  # grid order
    for r in done:
        cfg = row_config(r)
        lab = _offset_label(cfg)
        key = (r["model"], lab, float(r["density"]))
        groups.setdefault(key, []).append(100 * float(r["test_acc"]))
        if key not in counts:
            counts[key] = trainable(r["model"], cfg["sparsity"])
    for model in dict.fromkeys(k[0] for k in groups):
        dens = sorted({k[2] for k in groups if k[0] == model and k[2] < 1}, reverse=True)
        print(f"\n### {model}: test accuracy (%), mean ± std over seeds (n)\n")
        head = "| variant | " + " | ".join(f"{100 * d:g}%" for d in dens) + " |"
        print(head)
        print("|" + "---|" * (len(dens) + 1))
        for lab in order:
            cells = []
            for d in dens if lab != "Dense" else [1.0]:
                v = groups.get((model, lab, d))
                if not v:
                    cells.append("–")
                    continue
                sd = statistics.stdev(v) if len(v) > 1 else math.nan
                cells.append(f"{statistics.mean(v):.2f} ± {sd:.2f} ({len(v)})")
            if lab == "Dense":
                cells = cells + [""] * (len(dens) - 1)
            if any(c not in ("–", "") for c in cells):
                print(f"| {lab} | " + " | ".join(cells) + " |")
        print(f"\n{model}: trainable = non-zeros + alphas (+ biases/BN, the same for all)\n")
        print("| variant | " + " | ".join(f"{100 * d:g}%" for d in dens) + " |")
        print("|" + "---|" * (len(dens) + 1))
        for lab in order:
            if lab == "Dense":
                continue
            cells = []
            for d in dens:
                c = counts.get((model, lab, d))
                cells.append("–" if c is None else f"{c[0]} + {c[1]} = {c[0] + c[1]}")
            if any(c != "–" for c in cells):
                print(f"| {lab} | " + " | ".join(cells) + " |")
    if a.png:
        data = plot_runs(rows, a.png, title="Offsets and α scalings (CPU probe)",
                         label=_offset_label, keep_order=True)  # fmt: skip
        print(f"\nwrote {Path(a.png)} ({data.runs} runs)")


if __name__ == "__main__":
    main()
