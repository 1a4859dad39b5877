"""The README's result tables are the committed CSVs (docs/results/), not numbers typed by hand."""

import csv
import re
import statistics
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
ROWS = {  # README row label -> (method) as stored
    "dense (100%)": "dense",
    "**DCTpS** (EPL)": "dctps",
    "random (uniform)": "random",
    "SNIP": "snip",
    "SynFlow": "synflow",
    'Iter-SNIP (the paper\'s "FORCE")': "iter_snip",
    "FORCE (published)": "force",
}
COLUMNS = [0.01, 0.001, 0.0001]


def table_after(heading: str) -> dict[str, list[str]]:
    """The first Markdown table after ``heading`` in the README: {row label: cells}."""
    start = README.index(heading)
    lines = README[start:].splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("| test accuracy %"))
    out = {}
    for line in lines[first + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        out[cells[0]] = cells[1:]
    return out


def accuracies(csv_name: str) -> dict[tuple[str, float], list[float]]:
    with open(REPO / "docs" / "results" / csv_name, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "done"]
    acc: dict[tuple[str, float], list[float]] = {}
    for r in rows:
        acc.setdefault((r["method"], float(r["density"])), []).append(100 * float(r["test_acc"]))
    return acc


def first_number(cell: str) -> float:
    return float(re.search(r"\d+\.\d+", cell).group())


@pytest.mark.parametrize(
    "heading, csv_name, seeds",
    [
        ("**LeNet-5 on real CIFAR-10.**", "lenet5_cifar10.csv", 3),
        ("**ResNet18 on real CIFAR-10, one GPU**", "resnet18_cifar10_gpu.csv", 1),
    ],
)
def test_readme_tables_equal_the_csv(heading, csv_name, seeds):
    table = table_after(heading)
    acc = accuracies(csv_name)
    checked = 0
    for label, cells in table.items():
        method = ROWS[label]
        for density, cell in zip(COLUMNS, cells, strict=False):
            if method == "dense":
                density = 1.0
            if not cell:
                continue
            values = acc[(method, density)]
            assert len(values) <= seeds
            mean = statistics.mean(values)
            assert first_number(cell) == pytest.approx(mean, abs=0.006), (label, density)
            if "[" in cell:  # mean [min, max]
                lo, hi = map(float, re.search(r"\[([\d.]+), ([\d.]+)\]", cell).groups())
                assert (lo, hi) == pytest.approx((min(values), max(values)), abs=0.006)
            checked += 1
            if method == "dense":
                break
    assert checked >= 10
