"""The documentation habits: every public name has a docstring, and pydoc renders the package."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import pydoc
import subprocess
import sys

import pytest

import dctps

# The package and the public submodules a user imports (their __all__ is the public API).
PUBLIC = ["dctps", "dctps.models", "dctps.pruning", "dctps.data", "dctps.dst", "dctps.results",
          "dctps.train", "dctps.sparsify", "dctps.layers", "dctps.dct", "dctps.allocation",
          "dctps.errors", "dctps.checkpoint_io", "dctps.fast"]  # fmt: skip


def _modules() -> list[str]:
    names = [
        m.name
        for m in pkgutil.walk_packages(dctps.__path__, "dctps.")
        if not m.name.rsplit(".", 1)[-1].startswith("_")
    ]
    return ["dctps", *names]


@pytest.mark.parametrize("name", PUBLIC)
def test_pydoc_renders(name: str):
    text = pydoc.render_doc(importlib.import_module(name), renderer=pydoc.plaintext)
    assert name in text and len(text) > 200


def test_python_m_pydoc_dctps():
    out = subprocess.run([sys.executable, "-m", "pydoc", "dctps"], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "sparsify" in out.stdout


def test_every_exported_name_has_a_docstring():
    for name in dctps.__all__:
        if name == "__version__":
            continue
        obj = getattr(dctps, name)
        assert (inspect.getdoc(obj) or "").strip(), f"dctps.{name} has no docstring"


@pytest.mark.parametrize("name", _modules())
def test_public_functions_and_classes_have_docstrings(name: str):
    """Every module has a docstring; so does every public function, class, method and property
    it defines (an override may inherit its parent's docstring, e.g. ``nn.Module.forward``)."""
    mod = importlib.import_module(name)
    assert (mod.__doc__ or "").strip(), f"module {name} has no docstring"
    missing = []
    for attr, obj in vars(mod).items():
        if attr.startswith("_") or getattr(obj, "__module__", None) != name:
            continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if not (obj.__doc__ or "").strip():
            missing.append(attr)
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                if member.startswith("_") or member == "extra_repr":
                    continue
                fn = value.fget if isinstance(value, property) else value
                if not inspect.isfunction(fn):
                    continue
                doc = value.__doc__ if isinstance(value, property) else None
                if not (doc or inspect.getdoc(getattr(obj, member)) or "").strip():
                    missing.append(f"{attr}.{member}")
    assert not missing, f"{name}: no docstring on {missing}"


@pytest.mark.parametrize(
    ("heading", "registry"),
    [("### Sparsity methods", "dctps.pruning"), ("### Allocations", "dctps.allocation"),
     ("### Architectures", "dctps.models"), ("### Data sets", "dctps.data")],
)  # fmt: skip
def test_the_readme_names_every_registered_entry(heading: str, registry: str):
    """The README's reference tables are written by hand: an extensibility review added a
    pruning method, an architecture and an allocation, and no test asked for their rows. Each
    registered name is in its section, as `` `name` ``."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index(heading)
    section = readme[start : readme.find("\n#", start + len(heading))]
    missing = [n for n in importlib.import_module(registry).names() if f"`{n}`" not in section]
    assert not missing, f"README.md's {heading!r} section does not name {missing}"


def test_the_subpackages_the_readme_names_are_attributes_of_the_package():
    """A typing review: the README's `dctps.train.fit`, `dctps.results.Store` and RigL's
    `dctps.dst` raised AttributeError after `import dctps` (and `dctps.pruning` worked only
    because another module imported it); the heavy ones are still imported on first use."""
    code = (
        "import sys, dctps\n"
        "lazy = [m for m in ('dctps.train', 'dctps.results', 'dctps.dst') if m in sys.modules]\n"
        "assert not lazy, lazy\n"
        "assert {'train', 'results', 'dst', 'pruning', 'allocation'} <= set(dir(dctps))\n"
        "print(dctps.train.fit.__name__, dctps.results.Store.__name__, dctps.dst.RigL.__name__,"
        " dctps.pruning.build.__name__, dctps.allocation.build.__name__)\n"
        "try:\n    dctps.no_such_name\nexcept AttributeError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [
        "fit Store RigL build build",
        "module 'dctps' has no attribute 'no_such_name'",
    ]
