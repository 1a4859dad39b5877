"""The ``dctps`` command line: ``dctps demo | train | results | sweep | figure | plot | budgets |
inspect | bench``.

Each command is a thin wrapper over a library function; bad input raises :class:`DctpsError`, which
:func:`main` prints as one line (no traceback) with exit status 2.
"""

from __future__ import annotations

import sys

import typer

from dctps._version import __version__
from dctps.errors import DctpsError

app = typer.Typer(
    help="Dense for the Price of Sparse (DCTpS): sparse-from-the-start networks, their baselines, "
    "and the paper's experiments.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"dctps {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """DCTpS: W = alpha * D + S in every Linear/Conv2d layer."""


@app.command()
def demo(
    epochs: int = typer.Option(30, help="Training epochs per network."),
    seed: int = typer.Option(0, help="Seed for data split, initialisation and supports."),
    threads: int = typer.Option(0, help="torch threads (0 = torch's default)."),
) -> None:
    """Train dense, DCTpS and randomly pruned nets on the embedded digits data; print a table.

    Runs in about a minute on a laptop CPU, no download: scikit-learn ships the digits.
    """
    from dctps.demo import run_demo

    run_demo(epochs=epochs, seed=seed, threads=threads)


@app.command("budgets")
def budgets_cmd(
    model: str = typer.Argument(..., help="Architecture name (see `dctps.models.names()`)."),
    density: float = typer.Option(..., "--density", "-d", help="Global density in (0, 1]."),
    allocation: str = typer.Option("epl", help="uniform | epl | epf | erk | epl_ref."),
    classes: int = typer.Option(10, "--classes", help="Number of output classes."),
    plot: str = typer.Option("", help="Also draw the per-layer bar chart (PNG + PDF) here."),
    compare: bool = typer.Option(False, help="Plot EPL and EPF side by side (Figure A.2)."),
) -> None:
    """Per-layer budget table (layer, shape, weights, non-zeros, density) and totals."""
    from dctps.budgets_report import budget_rows, format_rows

    rows = budget_rows(model, density, allocation, classes)
    typer.echo(f"{model}, {classes} classes, density {density:g}, allocation {allocation}")
    typer.echo(format_rows(rows))
    if plot:
        from dctps.results.plots import plot_allocation

        series = {allocation: [r.nonzeros for r in rows]}
        if compare:
            series = {a: [r.nonzeros for r in budget_rows(model, density, a, classes)]
                      for a in ("epl", "epf")}  # fmt: skip
        paths = plot_allocation(series, f"{model}, density {density:g}", plot)
        typer.echo("wrote " + ", ".join(map(str, paths)))


# --- commands added by other modules go below; keep each a thin wrapper ---


def main() -> None:
    """Entry point: run the app, turning every DctpsError into one line on stderr and exit 2."""
    try:
        app()
    except DctpsError as e:
        typer.echo(f"error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
