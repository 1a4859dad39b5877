"""Progress of pruning: ``prune(..., progress=...)`` reports each iteration of an iterative method
(a callback's calls, or a tqdm bar on stderr), is silent by default, and ``fit`` shows the bar only
when it shows progress."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn
from tqdm import tqdm

from dctps.errors import DctpsError, PruningFailed
from dctps.pruning import prune
from dctps.train import fit
from dctps.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SparsityConfig

# (method, options, number of steps it must report)
CASES = [
    ("synflow", {"iterations": 7}, 7),
    ("iter_snip", {"steps": 5}, 5),
    ("force", {"steps": 4}, 4),
    ("snip", {}, 1),
    ("grasp", {}, 1),
    ("random", {}, 1),
]


@pytest.fixture(autouse=True)
def _bars(monkeypatch):
    """These tests read tqdm's bar: under pytest stderr is no terminal, where the bar is lines
    (tests/test_progress.py)."""
    monkeypatch.setenv("DCTPS_PROGRESS", "bar")


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 3, (4,), generator=g))]


def _bar_states(err: str) -> list[tuple[int, int]]:
    """The ``n/total`` of every bar state tqdm wrote (it redraws the line with ``\\r``)."""
    return [(int(a), int(b)) for a, b in re.findall(r"\b(\d+)/(\d+) \[", err)]


@pytest.mark.parametrize(("method", "options", "steps"), CASES)
def test_callback_gets_every_step(method, options, steps):
    calls: list[tuple[int, int]] = []
    prune(_net(), 0.3, method, _batches(), progress=lambda t, n: calls.append((t, n)), **options)
    # once at the start (0), then once after each step, never more
    assert calls == [(t, steps) for t in range(steps + 1)]


@pytest.mark.parametrize(("method", "options", "steps"), CASES)
def test_bar_on_stderr_counts_the_iterations(method, options, steps, capsys):
    prune(_net(), 0.3, method, _batches(), progress=True, **options)
    out, err = capsys.readouterr()
    assert out == ""
    assert f"pruning {method} to density 0.3" in err
    states = _bar_states(err)
    assert states[0] == (0, steps) and states[-1] == (steps, steps)
    assert all(total == steps and 0 <= n <= steps for n, total in states)
    if method == "synflow":
        assert "iter" in err


@pytest.mark.parametrize(("method", "options", "steps"), CASES)
@pytest.mark.parametrize("progress", ["default", False, None])
def test_library_default_is_silent(method, options, steps, progress, capsys):
    kw = {} if progress == "default" else {"progress": progress}
    prune(_net(), 0.3, method, _batches(), **kw, **options)
    assert capsys.readouterr() == ("", "")


def test_bar_closed_and_marked_when_pruning_fails(capsys):
    m = _net()
    with torch.no_grad():
        m[1].weight.zero_()  # no path carries flow: SynFlow cannot keep 30%
    before = set(tqdm._instances)
    with pytest.raises(PruningFailed):
        prune(m, 0.3, "synflow", _batches(), iterations=5, progress=True)
    assert set(tqdm._instances) <= before  # our bar is closed
    err = capsys.readouterr().err
    assert "pruning synflow" in err and "failed" in err.rsplit("\r", 1)[-1]
    assert not hasattr(m[1], "weight_orig")


def test_bar_says_interrupted_on_ctrl_c(capsys):
    """A Ctrl-C during pruning is not a failure of the method: the bar says so."""
    batches, drawn = _batches(), []

    def stream():  # the third batch drawn is a Ctrl-C
        for b in batches:
            drawn.append(b)
            if len(drawn) == 3:
                raise KeyboardInterrupt
            yield b

    m = _net()
    with pytest.raises(KeyboardInterrupt):
        prune(m, 0.3, "iter_snip", stream, steps=5, progress=True)
    last = capsys.readouterr().err.rsplit("\r", 1)[-1]
    assert "interrupted" in last and "failed" not in last
    assert not hasattr(m[1], "weight_orig")


def test_prune_refuses_a_meta_model():
    with torch.device("meta"):
        m = _net()
    with pytest.raises(DctpsError, match="meta device .*to_empty"):
        prune(m, 0.3, "random")


def test_bar_closed_when_the_model_cannot_run(capsys):
    bad = [(torch.randn(4, 5), torch.randint(0, 3, (4,)))]  # wrong input width
    before = set(tqdm._instances)
    with pytest.raises(DctpsError, match="could not run the model"):
        prune(_net(), 0.3, "force", bad, steps=3, progress=True)
    assert set(tqdm._instances) <= before


def test_density_one_and_bad_progress():
    calls: list[tuple[int, int]] = []
    prune(_net(), 1.0, "synflow", _batches(), progress=lambda t, n: calls.append((t, n)))
    assert calls == []  # nothing to score, nothing to report
    with pytest.raises(DctpsError, match="progress must be"):
        prune(_net(), 0.3, "synflow", _batches(), progress="yes")


def _cfg(root, epochs: int = 1) -> RunConfig:
    return RunConfig(
        model=ModelConfig("lenet5"),
        data=DataConfig("cifar10", root=str(root)),
        sparsity=SparsityConfig("synflow", 0.05, options={"iterations": 6}),
        optim=OptimConfig(epochs=epochs, batch_size=32),
        seed=0,
        device="cpu",
    )


def test_fit_shows_the_pruning_bar_only_with_progress(fake_cifar10, tmp_path, capsys):
    r = fit(_cfg(fake_cifar10), tmp_path / "quiet", progress=False)
    assert r["status"] == "done"
    assert "pruning" not in capsys.readouterr().err
    r = fit(_cfg(fake_cifar10), tmp_path / "shown", progress=True)
    assert r["status"] == "done"
    err = capsys.readouterr().err
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    first = next(i for i, line in enumerate(lines) if "pruning" not in line)
    assert all("pruning" not in line for line in lines[first:])  # pruning ends before training
    pruning = "\n".join(lines[:first])
    assert "pruning synflow to density 0.05" in pruning
    assert _bar_states(pruning)[0] == (0, 6) and _bar_states(pruning)[-1] == (6, 6)
