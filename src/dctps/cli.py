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
