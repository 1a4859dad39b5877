"""Every example runs and its closing assertion holds; the README's code is the examples' code.

Each example is run as a user would run it (``python examples/NAME.py``, a fresh interpreter), so
an API change that breaks one fails here instead of rotting in the docs. Each takes well under a
minute on one CPU thread (``OMP_NUM_THREADS=1`` is inherited from ``conftest.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))
README = ROOT / "README.md"
START, END = "# --- readme start ---\n", "# --- readme end ---\n"


def test_the_examples_exist():
    names = {p.name for p in EXAMPLES}
    expected = {"sparsify_mlp.py", "transformer.py", "compare_snip.py", "checkpoint_export.py"}
    assert expected <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(path: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "MPLBACKEND": "Agg"}
    proc = subprocess.run(
        [sys.executable, str(path)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}"
    assert proc.stdout.strip(), f"{path.name} printed nothing"
    if path.name == "sparsify_mlp.py":  # the README shows what it prints
        shown = re.search(r"^Output:\n\n```text\n(.*?)^```", README.read_text(), re.S | re.M)
        assert shown, "the README lost the example's Output block"
        printed, readme = proc.stdout.splitlines(), shown.group(1).splitlines()
        assert printed[0] == readme[0]  # the counts are exact
        pct = [float(re.search(r"([\d.]+)%", line).group(1)) for line in (printed[1], readme[1])]
        assert abs(pct[0] - pct[1]) <= 1.0, (printed[1], readme[1])  # float order may vary


def _readme_regions() -> dict[str, str]:
    out = {}
    for path in EXAMPLES:
        text = path.read_text()
        if START in text:
            assert text.count(START) == 1 and text.count(END) == 1, path.name
            out[path.name] = text.split(START, 1)[1].split(END, 1)[0]
    return out


def test_readme_python_is_example_code_verbatim():
    """Every ```python block of the README is the marked region of an example, and vice versa."""
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.S | re.M)
    regions = _readme_regions()
    assert blocks, "the README has no Python snippet"
    assert regions, "no example has a '# --- readme start ---' region"
    for block in blocks:
        assert block in regions.values(), (
            "a README Python block differs from every example's readme region; copy "
            "the region between the '# --- readme start/end ---' markers into the README:\n" + block
        )
    for name, region in regions.items():
        assert region in blocks, f"the readme region of examples/{name} is not in the README"
