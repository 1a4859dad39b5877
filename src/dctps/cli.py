"""The ``dctps`` command line: ``dctps demo | train | results | sweep | figure | plot | budgets |
inspect | export | bench``.

Each command is a thin wrapper over a library function; bad input raises :class:`DctpsError`, which
:func:`main` prints as one line (no traceback) with exit status 2 (1 for a write the machine
refused while the command ran, :class:`dctps.errors.CannotWrite`).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from dctps._version import __version__
from dctps.atomic import check_file_target, make_parent, starts_with, utf8_stdout
from dctps.errors import DctpsError, parse_density, refuse_empty
from dctps.train.config import fill_names

WHERE_HELP = (
    "Filter column=value, exact matches (repeatable; a repeated column or a comma list means any "
    "of its values; '-' or none: an empty cell; rigl: yes/no; density: 0.001 or 0.1%; "
    "accuracies are stored as fractions, 0.5 not 50). A config key filters on the runs' "
    "configs, as the variant column names it: epochs=6, train_alpha=false, subset=all, or "
    'dotted: optim.lr=0.1; a method\'s options as a whole, options={"iterations":3} (the '
    "column names them one by one, and its recorded_by mark is not a filter)."
)
app = typer.Typer(
    help="Dense for the Price of Sparse (DCTpS): sparse-from-the-start networks, their baselines, "
    "and the paper's experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: rich's option table left a 20-column help column at 80 columns and cut
    # phrases with an ellipsis (and tagged every flag <bool>)
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit status: 0 done; 1 the run of `train` failed, a run raised (train, sweep, "
    "figure: a sweep's failed runs are results, exit 0) or a write was refused (a full "
    "disk); 2 bad input (one `error:` line); 75 the run is training in another process; 130 "
    "Ctrl-C and 143 SIGTERM, which record where a run stopped (the same command resumes it).",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dctps {__version__}")
        raise typer.Exit()


def _path(example: str) -> Any:
    """A typer callback refusing an empty path (``--out "$UNSET"``): ``Path("")`` is the
    current folder, where a run, database or figure would land without a word."""

    def check(ctx: typer.Context, param: Any, value: Any) -> Any:
        flag = next((o for o in param.opts if o.startswith("--")), str(param.name).upper())
        refuse_empty(value, flag, example)
        return value

    return check


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """DCTpS: W = alpha * D + S in every Linear/Conv2d layer."""


@app.command(short_help="Dense vs DCTpS vs random pruning on embedded digits.")
def demo(
    epochs: int = typer.Option(20, help="Training epochs per network."),
    seed: int = typer.Option(0, help="Seed for data split, initialisation and supports."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train dense, DCTpS and randomly pruned nets on the embedded digits data; print a table.

    Runs in well under a minute on a laptop CPU, no download: scikit-learn ships the digits.
    """
    from dctps.demo import run_demo

    # typer.echo: a refused write (stdout on a full disk) is one error line, not a traceback
    run_demo(epochs=epochs, seed=seed, threads=threads, echo=typer.echo, progress=not quiet)


from dctps.train import train_command as _train_command  # noqa: E402

app.command("train", short_help="Train one run and record it (resumes).")(_train_command)


@app.command("results", short_help="The runs of a results database, or --summary.")
def results_cmd(
    db: str = typer.Option(
        "results", "--db", help="Results database, or a --out folder.", callback=_path("results")
    ),
    where: list[str] = typer.Option([], "--where", help=WHERE_HELP),
    csv: str = typer.Option(
        None,
        "--csv",
        callback=_path("rows.csv"),
        help="Also write the rows to this CSV file ('-' or /dev/stdout: print only the CSV).",
    ),
    json_path: str = typer.Option(
        None,
        "--json",
        callback=_path("runs.json"),
        help="Also write the runs to this JSON file, each with its config and per-epoch "
        "metrics (learning curves) ('-' or /dev/stdout: print only the JSON).",
    ),
    summary: bool = typer.Option(
        False,
        "--summary",
        help="Print the accuracy over seeds instead: per model and data set a Markdown table, "
        "a row per setting, a column per density, cells mean [min, max] in % (what `dctps "
        "plot` draws), and below it why each failed seed failed; --csv/--json then hold a row "
        "per setting and density, with the standard deviation and the failed seeds' reasons.",
    ),
    metric: str = typer.Option(
        None,
        "--metric",
        help="With --summary: auto | test_acc | val_acc (auto: test_acc where every run of a "
        "table recorded it, else val_acc).",
        show_default=False,
    ),
) -> None:
    """Print the runs in a results database as a table (accuracies in %), or their accuracy
    over seeds (--summary)."""
    from dctps.results.store import print_results

    print_results(db, where, csv, echo=typer.echo, json_path=json_path, summary=summary,
                  metric=metric)  # fmt: skip


@contextlib.contextmanager
def _resume_hint(command: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM in a sweep: say what is kept and how to go on (typer would exit 130
    silently, and SIGTERM killed the sweep outright, leaving its workers running)."""
    from dctps.interrupts import Terminated, exit_code, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():
            yield
    except KeyboardInterrupt as e:
        from dctps.train.distributed import reporting_rank

        what = "terminated (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
        if reporting_rank():  # under torchrun every rank stops: one hint
            typer.echo(
                f"\n{what}: finished runs are in the results store; run the same `dctps "
                f"{command}` again to go on (interrupted runs resume from their checkpoints)",
                err=True,
            )
        raise typer.Exit(exit_code(e)) from None


QUIET_SWEEP_HELP = "No progress: no bar or lines here, no epoch lines in a job's own log."
SLURM_HELP = (
    "slurm: a submitit job parameter KEY=VALUE over the grid's `slurm:` (repeatable), e.g. "
    "slurm_partition=gpu, cpus_per_task=8, mem_gb=32. Default: timeout_min=4320 and, unless "
    "every run is --device cpu, gpus_per_node=1 (--dry-run prints them)."
)


#: ``--db`` of the commands that write runs into ``--out`` (sweep, figure)
OUT_DB_HELP = "Results database, or a folder for its results.db (default: OUT/results.db)"
SWEEP_THREADS_HELP = (
    "torch CPU threads of each run (0: CPUs // --workers for parallel runs, a SLURM job's "
    "cpus_per_task, else torch's default). Give the count of the runs you compare with."
)


@app.command("sweep", short_help="Train a YAML grid of runs (local or SLURM).")
def sweep_cmd(
    config: str = typer.Argument(
        ...,
        callback=_path("configs/A.1.yaml"),
        help="Sweep YAML: base + grid lists (the repository's configs/, or write one with "
        "`dctps figure NAME --print-config > grid.yaml`).",
    ),
    out: str = typer.Option(
        "results", "--out", help="Output folder (results.db, runs/).", callback=_path("results")
    ),
    db: str = typer.Option(
        None,
        "--db",
        callback=_path("results.db"),
        help=f"{OUT_DB_HELP}.",
    ),
    workers: int = typer.Option(
        None,
        "--workers",
        help="Parallel runs (default: 1; slurm: all). With N > 1 (or submitit-local) each run gets "
        "CPUs // N torch threads (OMP_NUM_THREADS sets CPUs), else torch's default; a run's "
        "float sums, so its numbers, depend on its thread count (docs/RELIABILITY.md).",
    ),
    threads: int = typer.Option(0, "--threads", help=SWEEP_THREADS_HELP),
    executor: str = typer.Option("local", "--executor", help="local | submitit-local | slurm."),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Re-run failed runs from scratch (their old checkpoints are kept as *.before-retry).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expanded runs and exit."),
    data_root: str = typer.Option(
        None, "--data-root", help="Data root for every run.", callback=_path("~/data")
    ),
    epochs: int = typer.Option(None, "--epochs", help="Override the epochs of every run."),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N] for every run."),
    sets: list[str] = typer.Option([], "--set", help="Override a field, e.g. optim.lr=0.01."),
    wait: bool = typer.Option(True, "--wait/--no-wait", help="slurm: wait for the jobs."),
    slurm: list[str] = typer.Option(
        [],
        "--slurm",
        help=SLURM_HELP,
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_SWEEP_HELP),
) -> None:
    """Expand a YAML grid to runs; train those not done yet (crashed ones resume)."""
    from dctps.results.sweep import sweep_command

    with _resume_hint("sweep"):
        rep = sweep_command(config, out, db, workers, executor, retry_failed, dry_run, data_root,
                            epochs, device, sets, wait, quiet, echo=typer.echo,
                            slurm=slurm, threads=threads)  # fmt: skip
    if rep is not None and rep.errors:
        raise typer.Exit(1)


@app.command("figure", short_help="Run and draw a paper figure (--list).")
def figure_cmd(
    name: str = typer.Argument(None, help="Figure name (see --list)."),
    list_: bool = typer.Option(False, "--list", help="List the figures and exit."),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="CPU-minutes run: 1%/0.1%, 1 seed, 1-2 epochs, 256-2,000 images. It checks the "
        "pipeline, not the paper's accuracies: curves may sit near chance (LeNet-5, without "
        "BatchNorm, needs many epochs).",
    ),
    executor: str = typer.Option("local", "--executor", help="local | submitit-local | slurm."),
    workers: int = typer.Option(None, "--workers", help="Parallel runs (default: 1; slurm: all)."),
    threads: int = typer.Option(0, "--threads", help=SWEEP_THREADS_HELP),
    out: str = typer.Option(
        "results", "--out", help="Output folder (results.db, figures/).", callback=_path("results")
    ),
    db: str = typer.Option(
        None,
        "--db",
        callback=_path("results.db"),
        help=f"{OUT_DB_HELP}: a sweep's --db, to draw its runs.",
    ),
    data_root: str = typer.Option(
        None, "--data-root", help="Data root for every run.", callback=_path("~/data")
    ),
    model: list[str] = typer.Option(
        [], "--model", help="Replace the figure's models (repeatable, or a comma list)."
    ),
    dataset: list[str] = typer.Option(
        [], "--dataset", help="Replace the figure's data sets (repeatable, or a comma list)."
    ),
    density: list[str] = typer.Option(
        [], "--density", help="Replace the densities (0.001 or 0.1%; repeatable, or a comma list)."
    ),
    seeds: int = typer.Option(
        None, "--seeds", help="Number of seeds (0..N-1) (default: 3; --quick: 1)."
    ),
    epochs: int = typer.Option(
        None,
        "--epochs",
        help="Override the epochs of every run (default: each recipe's, 200; LeNet-5's 160; "
        "--quick: a few).",
    ),
    device: str = typer.Option(None, "--device", help="auto | cpu | cuda[:N] for every run."),
    sets: list[str] = typer.Option([], "--set", help="Override a field, e.g. optim.lr=0.01."),
    config: str = typer.Option(
        None, "--config", help="Use this sweep YAML as the grid.", callback=_path("grid.yaml")
    ),
    retry_failed: bool = typer.Option(
        False,
        "--retry-failed",
        help="Re-run failed runs from scratch (their old checkpoints are kept as *.before-retry).",
    ),
    plot_only: bool = typer.Option(False, "--plot-only", help="Draw from the store; run nothing."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the runs and exit."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the grid as YAML."),
    slurm: list[str] = typer.Option(
        [],
        "--slurm",
        help=SLURM_HELP,
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help=QUIET_SWEEP_HELP),
) -> None:
    """Run (or resume) the sweep behind a paper figure, then draw it (PNG + PDF + JSON)."""
    from dctps.results import figures

    # a comma list, as --where takes one, or the flag repeated
    model, dataset = _items(model, "--model"), _items(dataset, "--dataset")
    densities = [parse_density(d, "--density") for d in _items(density, "--density")] or None
    if list_ or not name:
        typer.echo(figures.list_figures())
        return
    if print_config:
        # flags that apply on top of every run, not part of the grid: repeated in its comments
        run_flags = [*(["--data-root", data_root] if data_root else []),
                     *(["--db", db] if db else []),
                     *(["--epochs", str(epochs)] if epochs is not None else []),
                     *(["--device", device] if device else []),
                     *(f for s in sets for f in ("--set", s))]  # fmt: skip
        with utf8_stdout() as f:  # a grid to read back: UTF-8, whatever the locale
            f.write(figures.grid_yaml(
                name,
                quick,
                model or None,
                dataset or None,
                densities,
                seeds,
                config,
                run_flags=run_flags,
            ))  # fmt: skip
        return
    with _resume_hint("figure"):
        data = figures.run_figure(
            name, out, quick=quick, executor=executor, workers=workers, db=db,
            data_root=data_root,
            models=model or None, datasets=dataset or None, densities=densities,
            seeds=seeds, epochs=epochs, device=device, sets=sets, config=config,
            retry_failed=retry_failed, plot_only=plot_only,
            dry_run=dry_run, progress=not quiet, echo=typer.echo, slurm=slurm, threads=threads,
        )  # fmt: skip
    if getattr(data, "errors", None):
        raise typer.Exit(1)  # some runs raised (listed above); the figure shows the rest


@app.command("plot", short_help="Accuracy vs density, or --x epoch curves.")
def plot_cmd(
    db: str = typer.Option(
        "results", "--db", help="Results database, or a --out folder.", callback=_path("results")
    ),
    where: list[str] = typer.Option([], "--where", help=WHERE_HELP),
    x: str = typer.Option(
        "density",
        "--x",
        help="density | nonzeros | epoch (learning curves: one panel per model, data set and "
        "density, the mean over seeds by epoch).",
    ),
    metric: str = typer.Option(
        "auto",
        "--metric",
        help="auto | test_acc | val_acc (auto, per panel: test_acc where every run recorded "
        "it, else val_acc; the table names the one used). With --x epoch: auto (val_acc, "
        "else train_acc) | val_acc | train_acc | val_loss | train_loss | lr | seconds.",
    ),
    out: str = typer.Option(
        "plot.png", "--out", help="Figure path (PNG + PDF + JSON); a folder: plot.png in it."
    ),
    title: str = typer.Option(None, "--title", help="Figure title."),
) -> None:
    """Accuracy vs density of any subset of a results database (one panel per model/data), or
    its learning curves (--x epoch)."""
    from dctps.results.plots import plot_command
    from dctps.results.store import sqlite_text

    refuse_empty(out, "--out", "plot.png")
    # bytes that are not UTF-8 (a Latin-1 terminal) as \xe9: matplotlib raised a TypeError
    data = plot_command(db, where, out, x, metric, sqlite_text(title))
    typer.echo(data.table())
    typer.echo(f"wrote {', '.join(map(str, data.paths))}")


@app.command("budgets", short_help="Per-layer non-zero budgets of a model.")
def budgets_cmd(
    model_arg: str = typer.Argument(
        None, metavar="MODEL", help=fill_names("Architecture: {models}."), show_default=False
    ),
    model_opt: str = typer.Option(
        None, "--model", help="The architecture, as `dctps train --model` takes it."
    ),
    density_arg: str = typer.Option(
        ..., "--density", "-d", help="Global density in (0, 1]: 0.001 or 0.1%."
    ),
    allocation: str = typer.Option(
        "epl", help=fill_names("How the global density is split over the layers: {allocations}.")
    ),
    classes: int = typer.Option(
        None,
        "--classes",
        help="Number of output classes (default: the data set's; 10).",
        show_default=False,
    ),
    dataset: str = typer.Option(
        None,
        "--dataset",
        show_default=False,
        help=fill_names(
            "Build the model for this data set's images and classes, as `dctps "
            "train` does: {datasets} (default: CIFAR-10's 3x32x32, 10 classes)."
        ),
    ),
    plot: str = typer.Option(None, help="Also draw the per-layer bar chart (PNG + PDF) here."),
    compare: bool = typer.Option(
        False, help="Plot EPL and EPF side by side (Figure A.2); needs --plot."
    ),
) -> None:
    """Per-layer budget table (layer, shape, weights, non-zeros, density) and totals, e.g.
    `dctps budgets resnet18 -d 1%` (or --model resnet18)."""
    from dctps.budgets_report import budget_rows, format_rows

    if model_arg is not None and model_opt is not None and model_arg != model_opt:
        raise DctpsError(f"two models given: {model_arg!r} and --model {model_opt!r}; give one")
    model = model_arg if model_arg is not None else model_opt
    if model is None:
        raise DctpsError(
            fill_names("give an architecture, e.g. `dctps budgets resnet18 -d 1%`: {models}")
        )

    density = parse_density(density_arg, "--density")

    refuse_empty(plot, "--plot", "budgets.png")
    plot = plot or ""
    if compare and not plot:
        raise DctpsError("--compare draws EPL and EPF side by side: give --plot FILE.png too")
    if compare and allocation not in ("epl", "epf"):  # it drew EPL and EPF under an ERK title
        raise DctpsError(
            f"--compare draws EPL and EPF side by side; --allocation {allocation} would not be "
            "drawn: leave --allocation out (or give epl or epf)"
        )
    if plot and (plot.endswith(("/", os.sep)) or os.path.isdir(os.path.expanduser(plot))):
        # a folder, as --out is for train/sweep/figure/plot (it wrote FOLDER.png beside it)
        plot = os.path.join(plot, f"budgets_{model}.png")
    if plot:
        from dctps.results.plots import check_figure_path

        check_figure_path(plot)  # before the table: it would hide the refusal
    shape = (3, 32)
    if dataset is not None:
        from dctps.data import get_info

        info = get_info(dataset)
        shape = (info.in_channels, info.image_size)
        classes = classes if classes is not None else info.num_classes
    classes = classes if classes is not None else 10
    rows = budget_rows(model, density, allocation, classes, *shape)
    size = f"{shape[0]}x{shape[1]}x{shape[1]} inputs" + (f" ({dataset})" if dataset else "")
    typer.echo(f"{model}, {size}, {classes} classes, density {density:g}, allocation {allocation}")
    typer.echo(format_rows(rows))
    if plot:
        from dctps.results.plots import plot_allocation

        series = {allocation: [r.nonzeros for r in rows]}
        if compare:
            series = {a: [r.nonzeros for r in budget_rows(model, density, a, classes, *shape)]
                      for a in ("epl", "epf")}  # fmt: skip
        paths = plot_allocation(series, f"{model}, density {density:g}", plot)
        typer.echo("wrote " + ", ".join(map(str, paths)))


@app.command("inspect", short_help="Per-layer non-zeros and size of a checkpoint.")
def inspect_cmd(
    ckpt: str = typer.Argument(
        ...,
        help="A file written by dctps.save / dctps export, or a run's best.pt / last.pt.",
        callback=_path("model.dctps"),
    ),
) -> None:
    """Print a sparse checkpoint's per-layer non-zeros, shapes, density and the file size.

    A `dctps train` checkpoint (RUN/best.pt, last.pt) is shown as `dctps export` would write it.
    """
    from dctps.checkpoint_io import inspect

    ckpt = os.path.expanduser(ckpt)
    if not starts_with(ckpt, b"PK\x03\x04"):  # torch.save writes zip files; dctps.save does not
        typer.echo(inspect(ckpt).table())
        return
    import tempfile
    from pathlib import Path

    from dctps.checkpoint_io import save
    from dctps.sparsify import count
    from dctps.train.checkpoint import model_from_checkpoint

    model, obj = model_from_checkpoint(ckpt)
    size = Path(ckpt).stat().st_size
    method = obj["method"]
    if method != "dctps":
        c = count(model)
        # a dense run has no masks: all its weights train
        where = "" if method == "dense" else " (in the masks; some may hold 0.0)"
        typer.echo(
            f"{ckpt}: dctps train checkpoint of run {obj.get('config_hash')} (method {method}), "
            f"epoch {obj.get('epoch')}, {size:,} bytes: {c.nonzeros:,} of {c.weights:,} weights "
            f"trainable{where}, {c.other:,} other parameters. Not a DCTpS model: no per-layer "
            "table."
        )
        return
    typer.echo(
        f"{ckpt}: dctps train checkpoint of run {obj.get('config_hash')}, epoch "
        f"{obj.get('epoch')}, {size:,} bytes (a last.pt also holds the optimizer state and "
        "history). As `dctps export` writes it:"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "model.dctps"
        save(model, out)
        typer.echo(inspect(out).table())


@app.command("export", short_help="A run's model as a sparse checkpoint.")
def export_cmd(
    ckpt: str = typer.Argument(
        ...,
        callback=_path("results/runs/HASH/best.pt"),
        help="A dctps train checkpoint: a run's best.pt (the model of its best validation "
        "epoch, whose accuracies `dctps results` reports) or last.pt (its last finished epoch).",
    ),
    out: str = typer.Argument(..., help="Where to write the sparse checkpoint (dctps.save)."),
) -> None:
    """Write the model of a DCTpS run's checkpoint as a sparse checkpoint (dctps.save).

    The result holds only the non-zeros, alphas, biases and BatchNorm; `dctps.load(OUT)` rebuilds
    the model without the run's config, and `dctps.to_dense` turns it into plain PyTorch. A
    pruned or dense run is refused: its weights are in torch.load(CKPT)['model'].
    """
    from pathlib import Path

    from dctps.checkpoint_io import MAGIC, inspect, save
    from dctps.train.checkpoint import model_from_checkpoint

    refuse_empty(out, "OUT", "model.dctps")
    ckpt, out = os.path.expanduser(ckpt), os.path.expanduser(out)
    check_file_target(out, "checkpoint", "model.dctps")
    if Path(out).name in ("best.pt", "last.pt", "prev.pt") or (
        Path(out).exists() and Path(out).resolve() == Path(ckpt).resolve()
    ):
        raise DctpsError(
            f"{out} would overwrite a run checkpoint (resuming needs last.pt / prev.pt): write "
            "the export elsewhere, e.g. model.dctps"
        )
    if Path(out).exists() and not starts_with(out, MAGIC):
        # only an earlier export may be replaced: not a results.db, a config.yaml, ...
        raise DctpsError(
            f"{out} exists and is not a dctps sparse checkpoint; refusing to overwrite it. "
            "Write the export elsewhere, e.g. model.dctps"
        )
    model, obj = model_from_checkpoint(ckpt)
    method = obj["method"]
    if method != "dctps":
        raise DctpsError(
            f"{ckpt} is a run of method {method!r}: dctps export writes DCTpS models only "
            + (
                "(its dense weights are in torch.load(CKPT)['model'])"
                if method == "dense"
                else "(its masked dense layers are in torch.load(CKPT)['model'])"
            )
        )
    make_parent(out, "checkpoint", "model.dctps")
    save(model, out)
    info = inspect(out)
    which = {"best.pt": " (best validation)", "last.pt": " (last finished)"}.get(
        Path(ckpt).name, ""
    )
    typer.echo(
        f"wrote {out}: the model of epoch {obj.get('epoch')}{which}, {info.nnz:,} non-zeros in "
        f"{len(info.rows)} DCTpS layers, {info.file_bytes:,} bytes"
    )


@app.command("bench", short_help="Speed, size and memory vs dense (ratios).")
def bench_cmd(
    name: str = typer.Argument("all", help="linear | conv | step | ckpt | memory | all"),
    quick: bool = typer.Option(
        False,
        "--quick",
        help="Smaller batches, fewer repetitions (memory runs its full size: the target's).",
    ),
    device: str = typer.Option(
        "cpu", "--device", help="cpu | cuda[:N] | auto (CUDA where there is one)."
    ),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0 = torch's default)."),
) -> None:
    """Benchmark the DCTpS fast paths, checkpoints and memory against dense (prints ratios).

    \b
    linear  Linear 1024-8192 at 0.1%: mode='fast' vs nn.Linear
    conv    ResNet18/VGG19 conv shapes: DCTpS paths, 'auto' vs nn.Conv2d
    step    ResNet18 SGD step: dense, DCTpS 'auto', DCTpS batched rebuild
    ckpt    ResNet50 checkpoint bytes: dctps.save vs torch.save (dense)
    memory  peak memory of a Linear 8192 training step: 'fast' vs dense
    Recorded results and commands: benchmarks/RESULTS.md in the repository.
    """
    from dctps.bench import run

    run(name, quick=quick, device=device, echo=typer.echo, threads=threads)


def _given(e: Exception, msg: str, argv: list[str]) -> str:
    """``, got '1.5'`` for a flag value click refused without repeating it (typer >= 0.22:
    "Input should be a valid integer, unable to parse string as an integer"), taken from the
    command line; nothing where the message already shows it or the flag is not found."""
    opts = [o for o in getattr(getattr(e, "param", None), "opts", None) or () if o.startswith("-")]
    value = None
    for i, arg in enumerate(argv):
        for o in opts:
            if arg == o and i + 1 < len(argv):
                value = argv[i + 1]
            elif o.startswith("--") and arg.startswith(o + "="):
                value = arg[len(o) + 1 :]
    if value is None or repr(value) in msg or f'"{value}"' in msg:
        return ""
    return f", got {value!r}"


def _items(values: list[str], flag: str) -> list[str]:
    """A repeatable flag's values with comma lists split (``--density 1%,0.1%``); an empty
    item (``1%,,0.1%``, a trailing comma) is refused, not dropped."""
    out = []
    for value in values:
        parts = [p.strip() for p in value.split(",")]
        if not all(parts):
            raise DctpsError(f"{flag} {value!r} is empty or has an empty item between commas")
        out += parts
    return out


def _dash_path_hint(option: str, argv: list[str]) -> str:
    """Advice for a file name that starts with a dash, which click read as an unknown option
    (``dctps export CKPT -m.dctps``: "No such option: -m"); nothing for other unknown flags."""
    for arg in argv:
        if arg.startswith(option) and any(c in arg for c in "./") and not arg.startswith("--"):
            return f" (a path that starts with '-': write ./{arg}, or put -- before it)"
    return ""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _format_warning(message: Warning | str, category: type[Warning], filename: str,
                    lineno: int, line: str | None = None, _default: Any = warnings.formatwarning,
                    ) -> str:  # fmt: skip
    """A dctps warning as ``warning: MESSAGE`` (Python's own format adds the file, line and
    source line of the call: noise to a command-line user); others as Python writes them."""
    if getattr(category, "dctps", False) or Path(filename).resolve().is_relative_to(_PACKAGE):
        return f"{_rank_prefix()}warning: {message}\n"
    return str(_default(message, category, filename, lineno, line))


_PACKAGE = Path(__file__).resolve().parent


def main() -> None:
    """Entry point: run the app, turning every DctpsError and every usage error (a bad flag or
    flag value) into one line on stderr and exit status 2 (1 for a write the machine refused
    while the command ran: :class:`dctps.errors.CannotWrite`); dctps's own warnings are one
    ``warning:`` line each."""
    warnings.formatwarning = _format_warning
    for stream in (sys.stdout, sys.stderr):
        # a Latin-1 or cp1252 locale (Windows, output redirected) cannot encode a label's "α"
        # or a note's "—": escaped, not a traceback; data read back is UTF-8 (utf8_stdout)
        if getattr(stream, "errors", None) == "strict":
            utf8 = (getattr(stream, "encoding", "") or "").lower().replace("-", "") == "utf8"
            # UTF-8 encodes every character but a file name's undecodable bytes (surrogates),
            # which surrogateescape writes back as those bytes; another encoding escapes
            with contextlib.suppress(AttributeError, ValueError):
                stream.reconfigure(  # type: ignore[union-attr]
                    errors="surrogateescape" if utf8 else "backslashreplace"
                )
    try:
        try:
            from typer._click import exceptions as click_errors
        except ImportError:  # typer < 0.22 uses click itself
            from click import exceptions as click_errors  # type: ignore[no-redef]
        # click >= 8.2 raises it for a bare `dctps` (older click prints the help itself); typer
        # 0.16-0.21 pair with such a click, and the whole help became one `error:` line
        no_args: Any = getattr(click_errors, "NoArgsIsHelpError", ())
        try:
            rv = app(standalone_mode=False)
        except no_args as e:  # `dctps` alone: the help text, as before
            typer.echo(e.format_message(), err=True)
            sys.exit(2)
        except (
            click_errors.ClickException
        ) as e:  # usage errors: no such option, not a valid float, ...
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            msg = _one_line(e.format_message())
            if isinstance(e, click_errors.NoSuchOption):
                hint = _dash_path_hint(e.option_name, sys.argv[1:]) or hint
            typer.echo(f"error: {msg}{_given(e, msg, sys.argv[1:])}{hint}", err=True)
            sys.exit(e.exit_code)
        sys.exit(rv if isinstance(rv, int) else 0)
    except DctpsError as e:
        typer.echo(f"{_rank_prefix()}error: {_one_line(str(e))}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        if not _stdout_refused(e):
            raise
        # `dctps results > file` on a full disk gave a traceback; `| head` closing the pipe is
        # no error of the command's
        if not isinstance(e, BrokenPipeError):
            typer.echo(f"error: cannot write to standard output: {e.strerror or e}", err=True)
        _drop_stdout()
        sys.exit(1)
    except Exception as e:
        if type(e).__name__ != "Abort":
            raise
        typer.echo("aborted", err=True)
        sys.exit(1)


def _stdout_refused(e: OSError) -> bool:
    """Whether ``e`` is standard output refusing a write (a full disk, a closed pipe): raised
    by an echo to it, or left in its buffer."""
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_locals.get("file") is sys.stdout:  # click's echo(..., file=...)
            return True
        tb = tb.tb_next
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        return True
    return False


def _drop_stdout() -> None:
    """Point standard output at the null device: Python's own flush at exit would fail again,
    with an "Exception ignored" message."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # no file descriptor (a notebook's stream)
        pass


def _rank_prefix() -> str:
    """``[rank N] `` under ``torchrun`` with several processes (each prints its own error: the
    reader must tell which one failed first), else nothing."""
    from dctps.train.distributed import launched_world_size

    if launched_world_size() > 1:
        return f"[rank {os.environ.get('RANK', '?')}] "
    return ""


if __name__ == "__main__":
    main()
