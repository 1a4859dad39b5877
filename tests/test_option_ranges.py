"""A pruning option's range is checked with its own name before any data is loaded: a sweep's
``--dry-run`` refuses ``iterations: 0`` instead of listing it as a new run that then fails at
run time (and SynFlow's error named its ``iterations`` ``steps``)."""

from __future__ import annotations

import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

from dctps.cli import app
from dctps.errors import DctpsError
from dctps.pruning import canonical_options, prune

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
