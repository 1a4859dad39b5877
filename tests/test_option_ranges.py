"""A pruning option's range is checked with its own name before any data is loaded: a sweep's
``--dry-run`` refuses ``iterations: 0`` instead of listing it as a new run that then fails at
run time (and SynFlow's error named its ``iterations`` ``steps``)."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from dctps.cli import app
from dctps.errors import DctpsError
from dctps.pruning import canonical_options, prune
from dctps.pruning.common import Positive

CASES = [
    ("synflow", "iterations", 0, r"option iterations of pruning method 'synflow' must be"),
    ("iter_snip", "steps", -1, r"option steps of pruning method 'iter_snip' must be"),
    ("snip", "num_batches", 0, r"option num_batches of pruning method 'snip' must be"),
    ("grasp", "temperature", 0.0, r"option temperature of pruning method 'grasp' must be > 0"),
    ("random", "seed", -1, r"option seed of pruning method 'random' must be in"),
]


@pytest.mark.parametrize(("method", "name", "value", "needle"), CASES)
def test_canonical_options_checks_ranges(method, name, value, needle):
    with pytest.raises(DctpsError, match=needle):
        canonical_options(method, {name: value}, "digits")


@pytest.mark.parametrize(("method", "name", "value", "needle"), CASES)
def test_prune_names_the_option(method, name, value, needle):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(2, 4), torch.tensor([0, 1]))]
    with pytest.raises(DctpsError, match=needle):
        prune(model, 0.5, method, batches, **{name: value})


def test_sweep_dry_run_refuses_a_zero_count(tmp_path):
    grid = {
        "name": "t",
        "description": "t",
        "base": {"optim": {"epochs": 1}, "data": {"subset": 64}},
        "models": ["resnet18"],
        "datasets": ["digits"],
        "methods": [{"method": "synflow", "options": {"iterations": 0}}],
        "densities": [0.01],
        "seeds": [0],
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    r = CliRunner().invoke(app, ["sweep", str(path), "--out", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code != 0
    assert isinstance(r.exception, DctpsError)
    assert "option iterations of pruning method 'synflow'" in str(r.exception)


def _cyclic_masks(ctx, *, schedule: str = "cosine", power: Positive = 1.0, steps: int = 0,
                  width: Literal[1, 2, 4] | None = None):  # fmt: skip
    return []  # never called: the options are what is tested


def test_each_method_declares_its_own_option_checks(monkeypatch):
    """An extensibility review: the choices and ranges were keyed by option name across every
    method, so a new method's `schedule: str = "cosine"` or `steps: int = 0` was refused by
    FORCE's and SynFlow's rules, even at its own default. A method declares them in its
    annotations (`Literal`, `Annotated[..., Bound(...)]`), and they hold for it alone; its
    own `Bound` is checked by `build` and `prune` as by a run's config."""
    from dctps import pruning

    monkeypatch.setitem(pruning._REGISTRY, "cyclic", pruning.Method(_cyclic_masks, False))
    pruning._signature.cache_clear()
    try:
        assert canonical_options("cyclic", {"schedule": "step", "steps": -2}) == {
            "schedule": "step", "steps": -2}  # fmt: skip
        for check in (lambda: canonical_options("cyclic", {"power": -1.0}),
                      lambda: pruning.build("cyclic", power=0)):  # fmt: skip
            with pytest.raises(DctpsError, match=r"option power of pruning method 'cyclic' "
                               r"must be > 0, got "):  # fmt: skip
                check()
        # choices that are not strings, an optional one
        assert canonical_options("cyclic", {"width": 2.0, "power": 2}) == {"width": 2, "power": 2.0}
        with pytest.raises(DctpsError, match=r"option width .* must be one of 1, 2, 4, got 3"):
            canonical_options("cyclic", {"width": 3})
        # and FORCE keeps its own
        with pytest.raises(DctpsError, match=r"schedule of pruning method 'force' must be one "
                           r"of exp, linear, got 'step'"):  # fmt: skip
            pruning.build("force", schedule="step")
    finally:
        pruning._signature.cache_clear()


def test_a_methods_revision_enters_its_runs_identity(monkeypatch):
    """An extensibility review: options equal to their default are left out of a run's
    identity, so a method whose default (or algorithm) changed reused the runs recorded
    before. `Method.revision` above 1 enters the identity; 1 leaves every hash as it was
    (twelve are pinned in test_train)."""
    import dataclasses

    from dctps import pruning
    from dctps.train.config import ModelConfig, RunConfig, SparsityConfig

    cfg = RunConfig(model=ModelConfig("lenet5"), sparsity=SparsityConfig("snip", 0.01))
    before = cfg.config_hash()
    assert "method_revision" not in cfg.identity()["sparsity"]
    entry = pruning._REGISTRY["snip"]
    monkeypatch.setitem(pruning._REGISTRY, "snip", dataclasses.replace(entry, revision=2))
    assert cfg.identity()["sparsity"]["method_revision"] == 2
    assert cfg.config_hash() != before


def _buggy_masks(ctx):
    return [torch.ones(2, 3) @ torch.ones(2, 3)]  # a contributor's bug, not the user's input


def test_a_bug_in_a_methods_own_code_is_not_reported_as_bad_batches(monkeypatch):
    """An extensibility review: any RuntimeError of a method read as "could not run the model
    on the batches (check the input shape ...)", a bad input, though this method takes no
    batches and its own matmul failed. Only errors from a module's forward or a loss are the
    batches' fault (test_bad_input's prune-wrong-input-shape and prune-label-out-of-range)."""
    from dctps import pruning

    monkeypatch.setitem(pruning._REGISTRY, "buggy", pruning.Method(_buggy_masks, False))
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(RuntimeError, match="cannot be multiplied") as e:
        prune(model, 0.5, "buggy")
    assert not isinstance(e.value, DctpsError)

    # what the model, autograd or the caller's batches raise stays the caller's to fix
    class NoGrad(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            with torch.no_grad():
                return self.fc(x)

    batch = (torch.randn(8, 4), torch.randint(0, 2, (8,)))

    def dying():
        yield batch
        raise RuntimeError("a DataLoader worker died")

    for net, method, batches, why in ((NoGrad(), "snip", [batch], "does not require grad"),
                                      (model, "iter_snip", dying, "worker died")):  # fmt: skip
        with pytest.raises(DctpsError, match=f"could not run the model on the batches: .*{why}"):
            prune(net, 0.5, method, batches, **({"steps": 3} if method == "iter_snip" else {}))
