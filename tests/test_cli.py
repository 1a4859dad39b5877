"""The command line: tables equal the library's numbers, bad input is one line and exit 2."""

import re
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

import dctps
from dctps.cli import app
from dctps.errors import DctpsError
from dctps.models import build

runner = CliRunner()


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "dctps.cli", *args], capture_output=True, text=True, timeout=120
    )


def test_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and dctps.__version__ in r.output
    m = subprocess.run([sys.executable, "-m", "dctps", "--version"], capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert m.returncode == 0 and dctps.__version__ in m.stdout  # python -m dctps works too


def test_ctrl_c_while_the_console_script_imports_is_one_line_and_status_130(tmp_path):
    """Ctrl-C during the seconds `dctps` spends importing torch raised KeyboardInterrupt in the
    console script's import of dctps.cli, before main could catch it: a traceback. Simulated by
    an import hook raising it on dctps.layers, under the entry point pyproject.toml declares."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    module, func = re.search(r'^dctps = "([\w.]+):(\w+)"$', text, re.M).groups()
    code = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dctps.layers':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "sys.argv = ['dctps', '--version']\n"
        f"from {module} import {func}\n"  # what the console script does
        f"sys.exit({func}())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (130, "", "interrupted\n"), r.stderr
    # the same entry point without the interruption runs the command
    code = f"import sys; sys.argv = ['dctps', '--version']; from {module} import {func}; {func}()"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout == f"dctps {dctps.__version__}\n", r.stderr


def test_ctrl_c_after_the_command_finished_exits_130_without_a_traceback():
    """A Ctrl-C while the interpreter shut down after a finished command (an atexit handler,
    joining threads) printed Python's traceback or died by the signal (-2). Simulated by an atexit
    handler that sends SIGINT to its own process, under the console script's entry point."""
    code = (
        "import atexit, os, signal, sys, time\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(5)))\n"
        "sys.argv = ['dctps', '--version']\n"
        "from _dctps_cli import main\n"
        "main()\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (r.returncode, r.stdout, r.stderr) == (130, f"dctps {dctps.__version__}\n", ""), r.stderr


def test_budgets_totals_equal_count(tmp_path):
    r = runner.invoke(app, ["budgets", "resnet18", "--density", "0.001", "--allocation", "erk",
                            "--plot", str(tmp_path / "b.png")])  # fmt: skip
    assert r.exit_code == 0, r.output
    # --compare draws EPL and EPF: with --allocation erk it drew them under an ERK title
    bad = runner.invoke(app, ["budgets", "resnet18", "--density", "0.001", "--allocation", "erk",
                              "--plot", str(tmp_path / "c.png"), "--compare"])  # fmt: skip
    assert bad.exit_code == 1 and "--allocation erk would not be drawn" in str(bad.exception)
    assert not (tmp_path / "c.png").exists()
    cmp = runner.invoke(app, ["budgets", "resnet18", "--density", "0.001",
                              "--plot", str(tmp_path / "c.png"), "--compare"])  # fmt: skip
    assert cmp.exit_code == 0 and (tmp_path / "c.png").exists(), cmp.output
    total_line = [ln for ln in r.output.splitlines() if ln.startswith("total")][0]
    weights, nnz = (int(t.replace(",", "")) for t in total_line.split()[1:3])
    model = dctps.sparsify(build("resnet18"), 0.001, allocation="erk")
    c = dctps.count(model)
    assert (weights, nnz) == (c.weights, c.nonzeros)
    assert (tmp_path / "b.png").stat().st_size > 0 and (tmp_path / "b.pdf").exists()
    # --model as `dctps train` takes it (a newcomer review: "No such option: --model")
    alias = runner.invoke(app, ["budgets", "--model", "resnet18", "--density", "0.001",
                                "--allocation", "erk"])  # fmt: skip
    assert alias.exit_code == 0, alias.output
    assert [ln for ln in alias.output.splitlines() if ln.startswith("total")] == [total_line]
    both = runner.invoke(app, ["budgets", "lenet5", "--model", "vgg19", "-d", "0.01"])
    assert both.exit_code == 1 and "two models given" in str(both.exception)
    none = runner.invoke(app, ["budgets", "-d", "0.01"])
    assert none.exit_code == 1 and "give an architecture" in str(none.exception)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["budgets", "resnet18", "--density", "0"], "density"),
        (["budgets", "resnet18", "--density", "1.5"], "density"),
        (["budgets", "resnet18", "--density", "nan"], "density"),
        (["budgets", "resnet81", "--density", "0.1"], "Did you mean 'resnet18'"),
        (["budgets", "resnet18", "--density", "0.1", "--allocation", "epx"], "allocation"),
        (["budgets", "resnet18", "--density", "0.1", "--classes", "1"], "num_classes"),
        (["demo", "--epochs", "0"], "epochs"),
    ],
)
def test_bad_input_one_line_exit_2(args, needle):
    r = run_cli(*args)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert needle in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_import_is_light_and_exposes_the_subpackages():
    """`import dctps` must not import torch._dynamo (about a second of every command's start-up;
    the fast paths disable tracing lazily) and must expose dctps.models / dctps.data as the
    README's library table uses them."""
    code = (
        "import sys, dctps; "
        "print('torch._dynamo' in sys.modules, callable(dctps.models.build), "
        "callable(dctps.data.build))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True"], out


def test_readme_command_table_matches_the_cli():
    """The README's command table names every command, in `dctps --help`'s order."""
    from pathlib import Path

    import typer.main

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = [
        line.split("`")[1].split()[1]
        for line in readme.splitlines()
        if line.startswith("| `dctps ") and line.split("`")[1].split()[1:2]
    ]
    group = typer.main.get_command(app)
    assert table == list(group.commands)  # type: ignore[attr-defined]


def test_help_lists_come_from_the_registries(monkeypatch):
    """`--offset`, `--recipe`, `--optimizer` and `dctps budgets --allocation` listed their
    names by hand: a newly registered offset or allocation was missing from --help."""
    from dctps import allocation, offsets
    from dctps.train.config import OPTIMIZERS, RECIPES, fill_names

    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}, terminal_width=300)
    text = " ".join(r.output.split())
    for names in (offsets.names(), list(RECIPES), list(OPTIMIZERS)):
        assert " | ".join(names) in text, names
    r = runner.invoke(app, ["budgets", "--help"], env={"COLUMNS": "300"}, terminal_width=300)
    assert " | ".join(allocation.names()) in " ".join(r.output.split())
    monkeypatch.setattr(offsets, "names", lambda: ["dct", "mine"])
    monkeypatch.setattr(allocation, "names", lambda: ["epl", "sqrt"])
    assert fill_names("{offsets}; {allocations}") == "dct | mine; epl | sqrt"


def test_train_help_names_the_config_defaults():
    """The train flags default to "not given" (so a --config value stands); the help must still
    say what an omitted flag means: the RunConfig defaults."""
    from dctps.train.config import RunConfig

    r = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "300"}, terminal_width=300)
    assert r.exit_code == 0
    c = RunConfig()
    help_text = " ".join(r.output.split())
    for flag, value in (
        ("Architecture:", c.model.name),
        ("Data set:", c.data.dataset),
        ("dense | dctps |", c.sparsity.method),
        ("Seed of initialisation", c.seed),
    ):
        start = help_text.index(flag)
        assert f"(default: {value})" in help_text[start : start + 400], flag
    assert "(default: --no-rigl)" in help_text and "(default: --train-alpha)" in help_text


def test_train_threads_sets_torchs_threads(monkeypatch):
    import torch

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    r = runner.invoke(app, ["train", "--threads", "3", "--model", "nosuch"])
    assert calls == [3] and "unknown model 'nosuch'" in str(r.exception)
    r = runner.invoke(app, ["train", "--threads", "-1"])
    assert r.exit_code != 0 and calls == [3]
    assert "--threads must be >= 0 (0 = torch's default), got -1" in str(r.exception)


def test_budgets_for_a_data_set_build_the_model_as_train_does():
    """An extensibility review: `dctps budgets` always built a 3x32x32, 10-class model, so its
    table was not the one a run on digits (1 channel) or Tiny ImageNet (200 classes) trains.
    `--dataset` builds it as `dctps train` does; its totals equal `count` of that model."""
    from dctps.data import get_info

    for dataset in ("digits", "tiny_imagenet"):
        r = runner.invoke(app, ["budgets", "resnet18", "-d", "1%", "--dataset", dataset])
        assert r.exit_code == 0, r.output
        info = get_info(dataset)
        assert r.output.startswith(f"resnet18, {info.in_channels}x{info.image_size}x"
                                   f"{info.image_size} inputs ({dataset}), "
                                   f"{info.num_classes} classes")  # fmt: skip
        total = [ln for ln in r.output.splitlines() if ln.startswith("total")][0]
        weights, nnz = (int(t.replace(",", "")) for t in total.split()[1:3])
        model = build("resnet18", info.num_classes, info.in_channels, info.image_size)
        c = dctps.count(dctps.sparsify(model, 0.01))
        assert (weights, nnz) == (c.weights, c.nonzeros)
    plain = runner.invoke(app, ["budgets", "resnet18", "-d", "1%"]).output
    assert plain.startswith("resnet18, 3x32x32 inputs, 10 classes") and plain != r.output
    small = runner.invoke(app, ["budgets", "lenet5", "-d", "1%", "--dataset", "digits"])
    assert small.exit_code == 1 and "LeNet-5 needs 32x32" in str(small.exception)


def test_figure_and_budgets_take_densities_in_percent():
    """`dctps train --density 0.1%` worked, but `figure` and `budgets` refused percentages."""
    pct = runner.invoke(app, ["budgets", "lenet5", "-d", "1%"])
    dec = runner.invoke(app, ["budgets", "lenet5", "-d", "0.01"])
    assert pct.exit_code == 0 and pct.output == dec.output and "615" in pct.output
    r = runner.invoke(
        app, ["figure", "density-lenet5-cifar10", "--quick", "--density", "0.5%", "--dry-run"]
    )
    assert r.exit_code == 0 and "@0.005 " in r.output and "@0.01 " not in r.output
    bad = runner.invoke(app, ["budgets", "lenet5", "-d", "2x"])
    assert bad.exit_code != 0 and "--density: not a density: '2x'" in str(bad.exception)


def test_budgets_plot_into_a_folder_and_refusals(tmp_path):
    """`budgets --plot figs/` wrote figs.png beside the folder; a density that keeps no weight
    printed a table of zeros (train and sparsify refuse it)."""
    (tmp_path / "figs").mkdir()
    for target in (tmp_path / "figs", f"{tmp_path / 'new'}/"):
        r = runner.invoke(app, ["budgets", "lenet5", "-d", "0.1", "--plot", str(target)])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "figs" / "budgets_lenet5.png").is_file()
    assert (tmp_path / "new" / "budgets_lenet5.pdf").is_file()
    assert not (tmp_path / "figs.png").exists()
    r = runner.invoke(app, ["budgets", "lenet5", "-d", "1e-9"])
    assert isinstance(r.exception, DctpsError)
    assert re.search(r"density 1e-09 gives 0 of lenet5's [\d,]+ weights", str(r.exception))
    # a path that is no image format: refused before the table (which hid the error)
    r = runner.invoke(app, ["budgets", "lenet5", "-d", "0.1", "--plot", str(tmp_path / "b.txt")])
    assert isinstance(r.exception, DctpsError) and r.output == ""
    assert ".txt is not an image format; give one of" in str(r.exception)
    assert not (tmp_path / "b.txt").exists()
    # and so is a path under a file (a review: refused only after the table)
    (tmp_path / "notes.txt").write_text("kept")
    r = runner.invoke(app, ["budgets", "lenet5", "-d", "0.1", "--plot",
                            str(tmp_path / "notes.txt" / "b.png")])  # fmt: skip
    assert isinstance(r.exception, DctpsError) and r.output == ""
    assert "notes.txt is a file, not a folder" in str(r.exception)
    assert (tmp_path / "notes.txt").read_text() == "kept"
    r = runner.invoke(app, ["budgets", "lenet5", "-d", "0.1", "--plot", str(tmp_path / "B.PNG")])
    assert r.exit_code == 0, r.output  # a suffix in capitals is still PNG


def test_budgets_plot_into_a_folder_it_cannot_write_is_refused_before_the_table(
    tmp_path, monkeypatch
):
    """`budgets --plot PATH` whose folder (or the nearest existing one above it) takes no new
    file printed the whole table and then the error: refused first now, naming the folder."""
    from dctps.results import plots

    def refuse(path):  # a read-only folder or file system (root ignores permission bits)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(plots, "create_temp", refuse)
    target = tmp_path / "new" / "b.png"  # its folder does not exist: tmp_path is where it would go
    r = runner.invoke(app, ["budgets", "lenet5", "-d", "0.1", "--plot", str(target)])
    assert isinstance(r.exception, DctpsError) and r.output == ""
    assert str(r.exception) == (
        f"cannot write figure {target}: cannot create files in {tmp_path} (Permission denied); "
        "give a path in a folder you can write"
    )
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    if sys.platform.startswith("linux"):  # a real one: no folder can be created in /proc
        p = run_cli("budgets", "lenet5", "-d", "0.1", "--plot", "/proc/no-such/b.png")
        assert p.returncode == 2 and p.stdout == "", p.stdout
        assert p.stderr == (
            "error: cannot write figure /proc/no-such/b.png: cannot create files in /proc (No "
            "such file or directory); give a path in a folder you can write\n"
        )


def test_export_of_a_missing_checkpoint_says_it_does_not_exist(tmp_path):
    """`dctps export nothere.pt` called a missing file "truncated or not one"."""
    r = runner.invoke(app, ["export", str(tmp_path / "nothere.pt"), str(tmp_path / "m.dctps")])
    assert isinstance(r.exception, DctpsError)
    assert str(r.exception) == f"checkpoint {tmp_path / 'nothere.pt'} does not exist"


def test_a_folder_where_a_checkpoint_is_expected_is_named(tmp_path):
    """`dctps inspect RUN/` and `dctps export RUN/ m.dctps` gave a raw IsADirectoryError."""
    for args in (["inspect", str(tmp_path)], ["export", str(tmp_path), str(tmp_path / "m")]):
        r = runner.invoke(app, args)
        assert isinstance(r.exception, DctpsError), r.output
        assert f"{tmp_path} is a folder, not a checkpoint" in str(r.exception)
        # what to give instead (not a best.pt the folder does not hold: see test_checkpoint_io)
        assert "give a file (a run's runs/<hash>/best.pt, or a dctps.save file)" in str(r.exception)


def test_a_dctps_warning_is_one_line_on_the_command_line(monkeypatch):
    """A checkpoint-fallback warning printed Python's `loop.py:625: RuntimeWarning: ...` and
    then the source line of the call (a coverage review): `dctps` writes its own warnings as
    `warning: ...`; other packages' keep Python's format."""
    import warnings

    import dctps.train.loop as loop
    from dctps import cli

    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)
    monkeypatch.setattr(sys, "argv", ["dctps", "--version"])
    with pytest.raises(SystemExit):
        cli.main()
    assert warnings.formatwarning is cli._format_warning
    fmt = warnings.formatwarning  # what Python's showwarning writes to stderr
    w = fmt("checkpoint x is unreadable", RuntimeWarning, loop.__file__, 625, "ck = load()")
    assert w == "warning: checkpoint x is unreadable\n"
    w = fmt("a torch warning", UserWarning, torch.__file__, 7, "x = 1")
    assert w.startswith(f"{torch.__file__}:7: UserWarning: a torch warning\n")
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun: which process warned
    monkeypatch.setenv("RANK", "1")
    assert fmt("x", RuntimeWarning, loop.__file__, 1) == "[rank 1] warning: x\n"


def test_bare_dctps_prints_the_help_not_an_error(monkeypatch, capsys):
    """`dctps` with no command prints its usage and commands. With click >= 8.2 this is an
    exception, which typer 0.16-0.21 (allowed by our pins) did not name: the whole help became
    one `error: Usage: ...` line (a packaging review; those pairs were checked by hand, in a
    venv per pair: this test runs the installed one)."""
    from dctps import cli

    monkeypatch.setattr(sys, "argv", ["dctps"])
    with pytest.raises(SystemExit) as e:
        cli.main()
    out = capsys.readouterr()
    text = out.err + out.out
    assert e.value.code in (0, 2) and not text.startswith("error")
    assert text.lstrip().startswith("Usage:") and "train" in text and "demo" in text
    assert len(text.splitlines()) > 10


def test_figure_help_states_the_defaults_the_figures_use():
    """`figure --seeds` and `--epochs` said nothing of their defaults (a newcomer review); the
    help's numbers are the figures' and the recipes' own."""
    from dctps.results import figures as F
    from dctps.train.config import RECIPES

    text = " ".join(runner.invoke(app, ["figure", "--help"], terminal_width=200).output.split())
    assert f"(default: {len(F.SEEDS)}; --quick: {len(F.QUICK_SEEDS)})" in text
    assert {n: r.epochs for n, r in RECIPES.items() if r.epochs != 200} == {"lenet": 160}
    assert "(default: each recipe's, 200; LeNet-5's 160;" in text


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_a_standard_output_that_refuses_writes_is_one_error_line():
    """An error review: `dctps budgets ... > file` on a full disk (a SLURM log) ended in a
    traceback; a pipe closed early (`| head`) is no error of the command's to report."""
    cmd = [sys.executable, "-m", "dctps", "budgets", "lenet5", "--density", "0.1"]
    with open("/dev/full", "w") as full:
        res = subprocess.run(cmd, stdout=full, stderr=subprocess.PIPE, text=True, timeout=120)
    assert res.returncode == 1
    assert res.stderr == "error: cannot write to standard output: No space left on device\n"
    head = subprocess.Popen(cmd[:4] + ["resnet50", "--density", "0.1"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert head.stdout is not None and head.stdout.readline().startswith("resnet50")
    head.stdout.close()  # as `| head -1` does
    _, err = head.communicate(timeout=120)
    assert head.returncode in (0, 1) and "Traceback" not in err and "Exception" not in err
    # the demo printed its table with print(), whose refusal read as a bug: a traceback
    with open("/dev/full", "w") as full:
        res = subprocess.run([*cmd[:3], "demo", "--epochs", "1", "--threads", "1"], stdout=full,
                             stderr=subprocess.PIPE, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.endswith("error: cannot write to standard output: No space left on device\n")


def _cli_bytes(*args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
    import os

    return subprocess.run([sys.executable, "-m", "dctps.cli", *args], capture_output=True,
                          timeout=120, env={**os.environ, **(env or {})}, **kw)  # fmt: skip


def test_a_latin1_stdout_gets_escapes_to_read_and_utf8_data_to_read_back(tmp_path):
    """A locale review: under a Latin-1 or cp1252 locale (Windows, output redirected) `figure
    --list`, `plot` and a quick figure's note died on "α" and "—" with a traceback; `figure
    NAME --print-config > grid.yaml` left a cut file; `results --csv -` died on a non-ASCII
    data root, and a data root whose name is not UTF-8 could not be stored at all."""
    import csv
    import io

    import yaml

    from dctps.results import Store

    latin1 = {"PYTHONIOENCODING": "latin-1"}
    r = _cli_bytes("figure", "--list", env=latin1)
    assert r.returncode == 0 and b"\\u03b1 per channel" in r.stdout, r.stderr
    r = _cli_bytes("figure", "offsets", "--print-config", env=latin1)
    assert r.returncode == 0, r.stderr
    grid = r.stdout.decode("utf-8")  # the bytes a file of it holds, whatever the locale
    assert "α per channel" in grid and yaml.safe_load(grid)["name"] == "offsets"
    s = Store(tmp_path / "r.db")
    roots = {"a": "/d/é 中", "b": "/d/lat\udce9"}  # \udce9: the byte 0xe9 of a Latin-1 name
    for h, root in roots.items():
        s.start(h, {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"}, "seed": 0})
        s.update(h, data_root=root)
    assert [r["hash"] for r in s.query({"data_root": roots["b"]})] == ["b"]
    r = _cli_bytes("results", "--db", str(tmp_path / "r.db"), "--csv", "-", env=latin1)
    assert r.returncode == 0, r.stderr
    rows = csv.DictReader(io.StringIO(r.stdout.decode("utf-8"), newline=""))
    assert {row["hash"]: row["data_root"] for row in rows} == {"a": "/d/é 中", "b": "/d/lat\\xe9"}


@pytest.mark.skipif(sys.platform == "win32", reason="closes descriptor 1 (POSIX)")
def test_an_export_to_a_closed_stdout_is_one_line_not_a_traceback(tmp_path):
    """`dctps results --csv - >&-` raised a TypeError (sys.stdout is None), --json an
    AttributeError."""
    import os

    from dctps.results import Store

    Store(tmp_path / "r.db").start("a", {"model": {"name": "lenet5"}, "seed": 0})
    for kind in ("--csv", "--json"):
        r = _cli_bytes("results", "--db", str(tmp_path / "r.db"), kind, "-",
                       preexec_fn=lambda: os.close(1))  # fmt: skip
        assert r.returncode == 1 and b"Traceback" not in r.stderr, r.stderr
        assert r.stderr.decode().strip() == (
            f"error: cannot write {kind[2:].upper()} file -: standard output is closed"
        )


def test_the_help_gives_the_exit_statuses_the_errors_carry():
    """A consistency review: only the README gave the exit statuses; `dctps --help` does."""
    from dctps.errors import CannotWrite, DctpsError, RunBusy

    text = " ".join(runner.invoke(app, ["--help"], terminal_width=200).output.split())
    tail = text[text.index("Exit status:") :]
    for code, what in ((0, "done"), (CannotWrite.exit_code, "a write was refused"),
                       (DctpsError.exit_code, "bad input"),
                       (RunBusy.exit_code, "training in another process"),
                       (130, "Ctrl-C"), (143, "SIGTERM")):  # fmt: skip
        assert re.search(rf"\b{code} [^;]*{what}", tail), (code, tail)


def test_figure_takes_comma_lists_as_where_does(tmp_path):
    """A consistency review: `--where method=dctps,snip` took a comma list, `figure --density
    1%,0.1%` said "not a density" and `--model lenet5,resnet18` "unknown model"."""
    res = runner.invoke(app, ["figure", "A.1", "--quick", "--density", "1%,0.1%", "--model",
                              "lenet5,resnet18", "--dry-run", "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    runs = [ln for ln in res.output.splitlines() if " new " in f" {ln} "]
    assert {m for ln in runs for m in ("lenet5", "resnet18") if f" {m}/" in ln} == {
        "lenet5", "resnet18"}  # fmt: skip
    assert {d for ln in runs for d in ("@0.01 ", "@0.001 ") if d in ln} == {"@0.01 ", "@0.001 "}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file names are bytes")
def test_a_file_name_that_is_not_utf8_is_printed_with_its_own_bytes(tmp_path):
    """A diff review: escaping what stdout cannot encode (for a Latin-1 locale) had replaced
    Python's surrogateescape, so `wrote ... to caf\\xe9/o.csv` printed the text `\\udce9`, a
    path no script could open."""
    import os

    from dctps.results import Store

    folder = tmp_path / os.fsdecode(b"caf\xe9")
    Store(folder).start("a", {"model": {"name": "lenet5"}, "seed": 0})
    for io_encoding in ("utf-8:surrogateescape", "utf-8"):  # C.UTF-8's, and en_US.UTF-8's
        env = {"LC_ALL": "C.UTF-8", "PYTHONIOENCODING": io_encoding}
        r = _cli_bytes("results", "--db", str(folder), "--csv", str(folder / "o.csv"), env=env)
        assert r.returncode == 0, r.stderr
        assert os.fsencode(folder / "o.csv") in r.stdout and b"\\udce9" not in r.stdout


def test_the_command_list_reads_whole_at_80_columns():
    """A documentation audit: `dctps --help` cut every command's summary with an ellipsis."""
    out = runner.invoke(app, ["--help"], terminal_width=80).output
    block = out[out.index("Commands:") :].split("\n\n")[0].splitlines()[1:]
    names = [ln.split()[0] for ln in block if ln.strip()]
    assert set(names) >= {"demo", "train", "results", "sweep", "figure", "plot", "bench"}
    assert not any(ln.rstrip().endswith(("...", "…")) for ln in block), block
