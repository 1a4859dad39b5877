"""The engineering habits, enforced: lint, formatting, types, a wheel that installs, a changelog.

CI runs the test suite, so a lint error, an unformatted file, a type error, a broken wheel or a
version bump without a changelog entry fails CI. Each check is skipped (with the reason) only
when its tool is not installed; ``pip install -e ".[test]"`` installs them all.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

import dctps

ROOT = Path(__file__).resolve().parents[1]
LINTED = ["src", "tests", "examples", "benchmarks", "scripts"]


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install -e '.[test]')")


def _run(args: list[str], cwd: Path = ROOT, timeout: float = 300, **kw) -> str:
    proc = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{out[-6000:]}"
    return out


def test_ruff_check():
    _need("ruff")
    _run([sys.executable, "-m", "ruff", "check", *LINTED])


def test_ruff_format():
    _need("ruff")
    _run([sys.executable, "-m", "ruff", "format", "--check", *LINTED])


def test_mypy():
    _need("mypy")
    _run([sys.executable, "-m", "mypy", "src/dctps"])


USER_SCRIPT = """
import torch
from torch import nn

import dctps
from dctps.pruning import build


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.fc(x)
        return out


a: Net = dctps.sparsify(Net(), 0.5)
b: Net = dctps.prune(Net(), 0.5, "random")
c: Net = dctps.set_mode(a, "fast")
d: Net = dctps.load("m.pt", Net())
e: nn.Module = dctps.load("m.pt")
f: Net = build("random")(Net(), 0.5)
g: Net = dctps.note_supports(a)
x: torch.Tensor = a.features(torch.zeros(1, 4))
h: Net = dctps.to_dense(a)
i: nn.Linear = dctps.to_dense(dctps.DCTpSLinear(4, 4, nnz=8))
j: nn.Conv2d = dctps.to_dense(dctps.DCTpSConv2d(3, 4, 3, nnz=8))
k: int = dctps.to_dense(dctps.DCTpSLinear(4, 4, nnz=8)).in_features
"""


def test_a_users_script_keeps_its_models_type(tmp_path):
    """A typing review: `sparsify`, `prune`, `set_mode`, `load(path, model)` returned
    `nn.Module`, and `model.features(x)` of the user's own class failed type checking ("Tensor
    not callable") for the object it passed in and got back."""
    _need("mypy")
    script = tmp_path / "user.py"
    script.write_text(USER_SCRIPT)
    env = {**os.environ, "MYPYPATH": str(ROOT / "src")}
    _run([sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"),
          str(script)], env=env)  # fmt: skip


def test_changelog_top_version_is_the_package_version():
    """The package is its latest release, or, while CHANGELOG.md has unreleased changes, a
    development version after it (``X.Y.Z.devN``): a wheel of later code had the release's
    version, so pip kept the older install ("already installed with the same version") and
    checkpoints recorded ``0.1.0`` whatever wrote them (a packaging review)."""
    text = (ROOT / "CHANGELOG.md").read_text()
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+[^\]]*)\]", text, re.M)
    assert versions, "CHANGELOG.md has no '## [X.Y.Z] - DATE' section"
    unreleased = re.search(r"^## \[Unreleased\]\n(.*?)^## \[", text, re.M | re.S)
    if unreleased is None or not re.search(r"^- ", unreleased.group(1), re.M):
        assert versions[0] == dctps.__version__, (
            f"CHANGELOG.md's latest release is {versions[0]}, the package is "
            f"{dctps.__version__} (src/dctps/_version.py): add a changelog section for it"
        )
        return
    dev = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)\.dev\d+", dctps.__version__)
    assert dev, (
        f"CHANGELOG.md has unreleased changes: the package ({dctps.__version__}, "
        f"src/dctps/_version.py) must be a development version after {versions[0]}, "
        "e.g. X.Y.Z.dev0"
    )
    latest = tuple(int(v) for v in re.findall(r"\d+", versions[0])[:3])
    assert tuple(int(v) for v in dev.groups()) > latest, (dctps.__version__, versions[0])


def test_wheel_builds_and_installs_into_a_fresh_venv(tmp_path: Path):
    """Build the wheel offline (``--no-isolation``: no build dependencies are downloaded), install
    it with ``--no-deps`` into a fresh virtual environment that sees this environment's packages
    (torch, ...) and run the installed ``dctps`` from there, not from the source tree."""
    _need("build")
    _need("setuptools")
    src = tmp_path / "src_copy"  # build a copy: the build writes build/ and *.egg-info beside it
    shutil.copytree(ROOT / "src", src / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))  # fmt: skip
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist),
          str(src)], env=env)  # fmt: skip
    wheels = list(dist.glob("dctps-*.whl"))
    assert len(wheels) == 1, wheels
    assert f"dctps-{dctps.__version__}-" in wheels[0].name

    # A fresh venv. This interpreter may itself be a venv, whose packages --system-site-packages
    # would not show; so expose them with a .pth file. The .pth files *inside* that folder (such
    # as an editable install of dctps) are not processed, and the venv's own site-packages comes
    # first, so `import dctps` must find the installed wheel.
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=True).create(target)
    bindir = target / ("Scripts" if os.name == "nt" else "bin")
    py = bindir / ("python.exe" if os.name == "nt" else "python")
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                env=env).strip().splitlines()[-1]  # fmt: skip
    Path(site, "_outer_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheels[0])],
         env=env)  # fmt: skip

    where = _run([str(py), "-c", "import dctps; print(dctps.__file__); print(dctps.__version__)"],
                 cwd=tmp_path, env=env)  # fmt: skip
    path, version = where.splitlines()[-2:]  # a path may hold spaces (TMPDIR)
    assert Path(path).resolve().is_relative_to(target.resolve()), f"imported from {path}"
    assert version == dctps.__version__
    out = _run([str(bindir / "dctps"), "demo", "--help"], cwd=tmp_path, env=env)
    assert "digits" in out
    assert dctps.__version__ in _run([str(bindir / "dctps"), "--version"], cwd=tmp_path, env=env)


def test_sdist_carries_what_its_tests_need(tmp_path: Path):
    """The sdist held tests/test_*.py but not tests/conftest.py, the examples, configs, docs or
    CHANGELOG the tests read: its own test suite could not pass (a packaging review). Built
    offline from the tracked files; the wheel gets ``py.typed`` so users' mypy sees the types."""
    _need("build")
    _need("setuptools")
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout (the sdist is built from the tracked files)")
    tracked = _run(["git", "ls-files", "--cached", "--others", "--exclude-standard"]).split("\n")
    src = tmp_path / "checkout"
    for name in filter(None, tracked):
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PIP_REQUIRE_VIRTUALENV")}
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir",
          str(dist), str(src)], env=env)  # fmt: skip
    import tarfile
    import zipfile

    (sdist,) = dist.glob("dctps-*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {"tests/conftest.py", "CHANGELOG.md", "README.md", "LICENSE", "pyproject.toml"}
    needed |= {
        n for n in tracked if n.startswith(("tests/", "examples/", "configs/", "docs/", "scripts/"))
    }
    assert needed <= names, sorted(needed - names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    (wheel,) = dist.glob("dctps-*.whl")
    with zipfile.ZipFile(wheel) as z:
        members = z.namelist()
    assert "dctps/py.typed" in members and not [n for n in members if n.startswith("tests/")]
