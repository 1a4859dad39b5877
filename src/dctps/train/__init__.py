"""Training runs: typed config, the training loop, resumable checkpoints, DDP.

``fit(RunConfig(...), out_dir)`` trains one run and records it in the results store; the
``dctps train`` command is the same call with the config from flags and/or a YAML file.
"""

from __future__ import annotations

import inspect
from typing import Any

from dctps.errors import refuse_empty, set_threads
from dctps.interrupts import Terminated, exit_code, sigterm_as_interrupt
from dctps.train.config import (
    RECIPES,
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    SparsityConfig,
    cli_fields,
    config_from_cli,
    load_config,
    save_config,
)
from dctps.train.distributed import reporting_rank
from dctps.train.loop import STOPPED, describe, evaluate, fit, train_one_epoch

__all__ = [
    "RECIPES",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "RunConfig",
    "SparsityConfig",
    "Terminated",
    "cli_fields",
    "config_from_cli",
    "describe",
    "evaluate",
    "fit",
    "load_config",
    "save_config",
    "train_command",
    "train_one_epoch",
]


def _train(**kw: Any) -> None:
    import typer

    config, out, db = kw.pop("config"), kw.pop("out"), kw.pop("db")
    resume, quiet, threads = kw.pop("resume"), kw.pop("quiet"), kw.pop("threads")
    for flag, value, example in (("--config", config, "run.yaml"), ("--out", out, "results"),
                                 ("--db", db, "results.db")):  # fmt: skip
        refuse_empty(value, flag, example)
    set_threads(threads)
    base = load_config(config) if config is not None else None
    cfg = config_from_cli(kw, base)
    try:
        with sigterm_as_interrupt():
            result = fit(cfg, out, store=db, progress=not quiet, resume=True if resume else None)
    except KeyboardInterrupt as e:
        # typer would exit 130 without a word; say what survives and how to go on
        term = isinstance(e, Terminated)
        where = getattr(e, STOPPED, None)  # "run H interrupted after epoch 3 of 200; run ..."
        if reporting_rank():
            typer.echo(
                f"\n{'terminated (SIGTERM)' if term else 'interrupted'}: "
                + (
                    where.replace(" interrupted ", " stopped ", 1)
                    if where
                    else "run the same command again to resume from the last completed epoch's "
                    "checkpoint (a run stopped before its first epoch ended starts over)"
                ),
                err=True,
            )
        raise typer.Exit(exit_code(e)) from None
    if reporting_rank():
        typer.echo(describe(result))
    if result.get("status") == "failed":
        raise typer.Exit(1)


def _make_train_command() -> Any:
    import typer

    from dctps.train.config import cli_parameters

    extra = [
        inspect.Parameter(
            "config",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--config",
                help="YAML run config; flags given on the command line override it.",
            ),
            annotation=str | None,
        ),  # noqa: UP045
        inspect.Parameter(
            "out",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                "results", "--out", help="Output folder: results.db and runs/<hash>/ checkpoints."
            ),
            annotation=str,
        ),
        inspect.Parameter(
            "db",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                None,
                "--db",
                help="Results database, or a folder for its results.db (default: OUT/results.db).",
            ),
            annotation=str | None,
        ),  # noqa: UP045
        inspect.Parameter(
            "resume",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                False,
                "--resume",
                help="Require resuming from "
                "the run's last checkpoint (a checkpoint is "
                "resumed automatically anyway).",
            ),
            annotation=bool,
        ),
        inspect.Parameter(
            "quiet",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(False, "--quiet", "-q", help="No progress bar."),
            annotation=bool,
        ),
        inspect.Parameter(
            "threads",
            inspect.Parameter.KEYWORD_ONLY,
            default=typer.Option(
                0,
                "--threads",
                help="torch CPU threads (0 = torch's default). Not part of the run's identity, "
                "yet a CPU run's numbers depend on it (float sums split differently): give the "
                "same count to compare runs bit for bit; a resume with another count warns.",
            ),
            annotation=int,
        ),
    ]
    params = cli_parameters() + extra

    def train(**kw: Any) -> None:
        _train(**kw)

    train.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    train.__annotations__ = {p.name: p.annotation for p in params}
    train.__doc__ = (
        "Train one run (model x dataset x sparsity x recipe); record it in the results store.\n\n"
        "Recipes follow Table E.3 (adam, sgd, lenet); any flag overrides the recipe. A finished "
        "config is not re-run; an interrupted one resumes from its last checkpoint; a failed "
        "one (recorded `failed`) is tried again, from its last checkpoint if it has one (a "
        "sweep skips it unless given --retry-failed). Under `torchrun --nproc_per_node N` it "
        "trains with DDP."
    )
    return train


train_command = _make_train_command()
