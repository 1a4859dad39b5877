"""Progress in a log (a batch review): a tqdm bar on a terminal, one line per epoch, sweep run
or pruning where stderr is a file or a pipe, nothing with DCTPS_PROGRESS=none."""

from __future__ import annotations

import io
import re

import pytest
import torch
from conftest import interrupted_fit
from torch import nn
from typer.testing import CliRunner

from dctps import progress
from dctps.cli import app
from dctps.errors import DctpsError
from dctps.pruning import prune
from dctps.train import fit
from dctps.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SparsityConfig


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_style_follows_the_stream_and_the_environment(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    assert progress.style(_Tty()) == "bar"
    assert progress.style(io.StringIO()) == "lines"  # a file or a pipe
    monkeypatch.setenv(progress.ENV, "None ")
    assert progress.style(_Tty()) == "none"
    monkeypatch.setenv(progress.ENV, "bar")
    assert progress.style(io.StringIO()) == "bar"
    monkeypatch.setenv(progress.ENV, "bars")
    with pytest.raises(DctpsError, match=r"DCTPS_PROGRESS='bars': must be one of bar, lines, none"):
        progress.style()


def _cfg(root, epochs=3, method="dense", **sparsity) -> RunConfig:
    return RunConfig(
        model=ModelConfig("lenet5"),
        data=DataConfig("cifar10", root=str(root)),
        sparsity=SparsityConfig(method, None if method == "dense" else 0.05, **sparsity),
        optim=OptimConfig(epochs=epochs, batch_size=32),
        device="cpu",
    )


def test_a_run_logs_a_line_per_epoch_without_carriage_returns(
    fake_cifar10, tmp_path, capsys, monkeypatch
):
    """A bar in a SLURM log was one line of about 8 KB per epoch (1.5 MB over 200 epochs),
    its accuracies overwritten fragments; a resumed run said so only in its last line."""
    monkeypatch.delenv(progress.ENV, raising=False)
    interrupted_fit(_cfg(fake_cifar10, epochs=3), tmp_path, monkeypatch, epoch=3, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2
    for k, line in enumerate(epochs, 1):
        # a log has no bar: each line says how long the run took so far and has to go
        left = r", \d+:\d\d left" if k < 3 else ""
        assert re.match(rf"epoch {k}/3 {9 * k}/27 step: loss [\d.]+ acc [\d.]+% val [\d.]+% \d+ "
                        rf"img/s \[\d+:\d\d elapsed{left}\]$", line), line  # fmt: skip
    # resumed: the notice first, then the epoch left, whose accuracy the line gives
    r = fit(_cfg(fake_cifar10, epochs=3), tmp_path, progress=True)
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"resuming run {r['hash']} after epoch 2 of 3"
    (last,) = [line for line in lines if line.startswith("epoch ")]
    assert last.startswith("epoch 3/3 27/27 step: ")
    assert f"val {100 * r['history'][-1]['val_acc']:.2f}%" in last


def test_pruning_logs_its_start_and_its_end(capsys, monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,)))]
    prune(net, 0.3, "synflow", batches, progress=True, iterations=5)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[0] == "pruning synflow to density 0.3 0/5 iter"
    assert re.fullmatch(r"pruning synflow to density 0\.3 5/5 iter: done in [\d.]+ s",
                        err.splitlines()[1])  # fmt: skip
    assert len(err.splitlines()) == 2
    monkeypatch.setenv(progress.ENV, "none")
    torch.nn.utils.prune.remove(net[1], "weight")
    torch.nn.utils.prune.remove(net[3], "weight")
    prune(net, 0.3, "snip", batches, progress=True)
    assert capsys.readouterr().err == ""


def test_a_sweep_logs_what_runs_and_what_ended(fake_cifar10, tmp_path, capsys, monkeypatch):
    from dctps.results.sweep import expand_grid, run_sweep

    monkeypatch.delenv(progress.ENV, raising=False)
    grid = {"base": {"data": {"root": str(fake_cifar10)}, "optim": {"epochs": 1, "batch_size": 32},
                     "device": "cpu"},
            "models": ["lenet5"], "datasets": ["cifar10"], "methods": ["dense", "dctps"],
            "densities": [0.05], "seeds": [0]}  # fmt: skip
    cfgs = expand_grid(grid)
    run_sweep(cfgs, tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    sweep = [line for line in err.splitlines() if line.startswith("sweep ")]
    named = [f"{c.config_hash()[:8]} {c.summary()}" for c in cfgs]  # the hash: see the tags
    # in a log, each run's epoch line comes between its sweep lines (one process, one run at
    # a time: a SLURM job running a whole sweep)
    lines = [ln.split()[0] for ln in err.splitlines() if ln.startswith(("sweep ", "epoch "))]
    assert lines == ["sweep", "epoch", "sweep", "sweep", "epoch", "sweep"]
    assert [re.sub(r" \[\d+:\d\d elapsed(, \d+:\d\d left)?\]$", "", s) for s in sweep] == [
        f"sweep 0/2 run: done 0 failed 0 error 0 | running: {named[0]}",
        f"sweep 1/2 run: done 1 failed 0 error 0 | last: {named[0]}",
        f"sweep 1/2 run: done 1 failed 0 error 0 | running: {named[1]}",
        f"sweep 2/2 run: done 2 failed 0 error 0 | last: {named[1]}",
    ]
    # the time left once a run is done and while one remains
    assert [", " in s[s.rindex("[") :] for s in sweep] == [False, True, True, False]


def test_lines_say_how_long_the_work_took_and_has_left(monkeypatch):
    """A log has no bar, whose [elapsed<left] told a watcher how long a run had to go: the
    time left is the units to do at the mean rate of those done since the lines began."""
    now = [100.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    lines = progress.Lines(10, "epoch 3/5", "step", initial=2)  # resumed after 2 steps
    assert lines.line() == "epoch 3/5 2/10 step [0:00 elapsed]"
    now[0] = 130.0
    lines.update(3)
    lines.set_postfix_str("loss 1.0")
    # 3 steps in 30 s: the 5 left take 50 s (the 2 of an earlier session are not counted)
    assert lines.line() == "epoch 3/5 5/10 step: loss 1.0 [0:30 elapsed, 0:50 left]"
    now[0] = 100.0 + 3725
    lines.update(5)
    assert lines.line() == "epoch 3/5 10/10 step: loss 1.0 [1:02:05 elapsed]"
    assert progress.Lines(3, "x", timed=False).line() == "x 0/3 it"


def test_a_submitit_job_logs_its_epochs_and_a_local_worker_does_not(
    fake_cifar10, tmp_path, capsys, monkeypatch
):
    """A SLURM job's log said nothing between the start and the end of a 200-epoch run. A local
    sweep's runs stay quiet, also inside a submitit job (whose environment they inherit)."""
    from dctps.results import sweep
    from dctps.results.sweep import expand_grid, run_one, run_sweep

    monkeypatch.delenv(progress.ENV, raising=False)
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    r = run_one(_cfg(fake_cifar10, epochs=2).to_dict(), str(tmp_path / "a"))
    assert r["status"] == "done" and "epoch " not in capsys.readouterr().err
    r = run_one(_cfg(fake_cifar10, epochs=2).to_dict(), str(tmp_path / "b"), progress=True)
    epochs = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("epoch ")]
    assert r["status"] == "done" and len(epochs) == 2
    assert re.search(r"\[\d+:\d\d elapsed, \d+:\d\d left\]$", epochs[0]), epochs[0]
    # a submitit job is given progress=True; a local sweep's runs are not
    asked = []
    monkeypatch.setattr(sweep, "run_one", lambda *a, **k: asked.append((a, k)) or {
        "hash": None, "status": "done"})  # fmt: skip
    grid = {"base": {"data": {"root": str(fake_cifar10)}, "optim": {"epochs": 1},
                     "device": "cpu"}, "models": ["lenet5"], "datasets": ["cifar10"],
            "methods": ["dense"], "seeds": [0]}  # fmt: skip
    run_sweep(expand_grid(grid), tmp_path / "c", progress=False)
    ((args, kw),) = asked
    assert len(args) == 5 and kw == {"progress": False}  # no sweep lines: no epoch lines
    # a bad DCTPS_PROGRESS is refused up front, even with the sweep's own progress off
    monkeypatch.setenv(progress.ENV, "lnes")
    with pytest.raises(DctpsError, match="DCTPS_PROGRESS='lnes'"):
        run_sweep(expand_grid(grid), tmp_path / "d", progress=False)


def test_the_demo_logs_a_line_per_network(monkeypatch, capsys):
    from dctps import demo

    monkeypatch.delenv(progress.ENV, raising=False)
    seen = []
    monkeypatch.setattr(demo, "train_one", lambda m, d, e, s, bar: seen.append(bar) or (
        bar.update(e), bar.set_postfix_str(f"{m} {d:g} ep {e}"), progress.mark(bar),
        demo.DemoRow(m, d, 1, 0.5, 0.1))[-1])  # fmt: skip
    demo.run_demo(epochs=2)
    err = capsys.readouterr().err
    assert "\r" not in err
    untimed = [re.sub(r" \[\d+:\d\d elapsed(, \d+:\d\d left)?\]$", "", s) for s in err.splitlines()]
    assert untimed == [f"demo {2 * k}/10 epoch: {m} {d:g} ep 2" for k, (m, d) in
                                enumerate([("dense", 1.0), ("dctps", 0.1), ("random", 0.1),
                                           ("dctps", 0.01), ("random", 0.01)], 1)]  # fmt: skip
    assert all(isinstance(b, progress.Lines) for b in seen)
    # `dctps demo -q` (a consistency review: the only command without it)
    monkeypatch.setattr(demo, "train_one", lambda m, d, e, s, bar: seen.append(bar) or
                        demo.DemoRow(m, d, 1, 0.5, 0.1))  # fmt: skip
    res = CliRunner().invoke(app, ["demo", "--epochs", "1", "-q"])
    assert res.exit_code == 0 and seen[-5:] == [None] * 5 and "dctps" in res.stdout


def test_a_bad_setting_is_refused_before_any_work(fake_cifar10, tmp_path, monkeypatch):
    import subprocess
    import sys

    monkeypatch.setenv(progress.ENV, "bars")
    with pytest.raises(DctpsError, match="DCTPS_PROGRESS='bars'"):
        fit(_cfg(fake_cifar10, epochs=1), tmp_path, progress=True)
    assert not (tmp_path / "results.db").exists()
    out = subprocess.run([sys.executable, "-m", "dctps.cli", "demo", "--epochs", "1"],
                         capture_output=True, text=True)  # fmt: skip
    assert out.returncode == 2 and out.stdout == ""  # nothing trained
    assert out.stderr.strip() == "error: DCTPS_PROGRESS='bars': must be one of bar, lines, none"
    # a command that shows no progress is not stopped by it (a diff review: --help failed)
    out = subprocess.run([sys.executable, "-m", "dctps.cli", "--help"], capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0 and "demo" in out.stdout


class _Full(io.StringIO):
    """A log that refuses every write, as stderr redirected to a full disk does."""

    def write(self, s: str) -> int:
        raise OSError(28, "No space left on device")


def test_a_log_that_cannot_be_written_ends_the_progress_lines_not_the_run(
    fake_cifar10, tmp_path, monkeypatch
):
    """A locale review: `dctps train 2>/dev/full` (a SLURM log on a full $HOME), or a log piped
    to a reader that left, stopped the run at its first progress line, and every resume again.
    The lines are best effort; with stderr closed (None) they are dropped, not sent to stdout."""
    monkeypatch.setenv(progress.ENV, "lines")
    monkeypatch.setattr("sys.stderr", _Full())
    r = fit(_cfg(fake_cifar10, epochs=2), tmp_path, progress=True)
    assert r["status"] == "done" and len(r["history"]) == 2
    lines = progress.Lines(3, "x")
    lines.write("a")
    assert lines.lost
    out = io.StringIO()
    monkeypatch.setattr("sys.stderr", None)
    monkeypatch.setattr("sys.stdout", out)
    progress.Lines(3, "y").write("b")
    assert out.getvalue() == ""


def test_a_bar_keeps_a_line_per_epoch_above_itself(fake_cifar10, tmp_path, capsys, monkeypatch):
    """A locale review: on a terminal an epoch's validation accuracy was in the bar's text only
    until the next epoch's loss replaced it, and an 80-column terminal cut it to "val 8"."""
    monkeypatch.setenv(progress.ENV, "bar")
    r = fit(_cfg(fake_cifar10, epochs=2), tmp_path, progress=True)
    err = capsys.readouterr().err
    kept = re.findall(r"^epoch (\d)/2 (\d+)/18 step: loss [\d.]+ acc [\d.]+% val ([\d.]+)% \d+ "
                      r"img/s$", err.replace("\r", "\n"), flags=re.M)  # fmt: skip
    assert kept == [(str(k), str(9 * k), f"{100 * h['val_acc']:.2f}")
                    for k, h in enumerate(r["history"], 1)]  # fmt: skip
    assert "\r" in err  # and the bar itself


def test_a_kept_line_to_a_terminal_gone_ends_no_run(monkeypatch):
    """A second diff review: a run `disown`ed in an SSH session stopped at its next epoch line
    once the terminal closed (EIO), where tqdm's own writes swallow it."""
    from tqdm import tqdm

    bar = tqdm(total=4, file=io.StringIO(), desc="epoch 1/2")
    bar.update(2)
    monkeypatch.setattr("sys.stderr", _Full())
    progress.mark(bar, keep=True)  # raised OSError: [Errno 28] before
    progress.keep_line(bar, "resuming run x after epoch 1 of 2")
    bar.close()


def test_tagged_lines_name_their_writer_and_the_stream_comes_back(capsys, monkeypatch):
    """A parallel sweep's runs share one log: each line a run writes starts with its tag, a
    line written in parts is tagged once, and ``sys.stderr`` is restored even after an error."""
    import sys
    import warnings

    monkeypatch.setenv(progress.ENV, "lines")
    before = sys.stderr
    with pytest.raises(RuntimeError), progress.tagged("resnet18/cifar10 dctps@0.01 seed=1"):
        bar = progress.make_bar(2, "epoch 1/1", "step", timed=False)
        assert isinstance(bar, progress.Lines) and progress.style() == "lines"
        # tagged lines are for a log: never a bar's redraws, even where fd 2 is a terminal
        assert sys.stderr.isatty() is False
        bar.update(2)
        progress.mark(bar)
        print(
            warnings.formatwarning("lr too high", UserWarning, "run.py", 7), end="", file=sys.stderr
        )  # as warnings.warn does, where pytest does not catch it
        sys.stderr.write("two parts, ")
        sys.stderr.write("one line\nand a line left open")
        raise RuntimeError("the run stops")
    assert sys.stderr is before
    err = capsys.readouterr().err.splitlines()
    tag = "[resnet18/cifar10 dctps@0.01 seed=1] "
    assert err[0] == tag + "epoch 1/1 2/2 step"
    assert err[1] == tag + "run.py:7: UserWarning: lr too high"
    assert err[-2:] == [tag + "two parts, one line", tag + "and a line left open"]
    assert all(ln.startswith(tag) for ln in err), err
    print("after", file=sys.stderr)
    assert capsys.readouterr().err == "after\n"
