"""Sweeps: a YAML grid of runs, expanded to :class:`RunConfig` objects and trained by an executor.

A grid file (see ``configs/*.yaml``)::

    name: lenet5_cifar10              # optional
    description: one line             # optional
    base:                             # RunConfig fields shared by every run (as in `dctps train
      data: {dataset: cifar10}        #   --config`); unknown keys are rejected
      optim: {epochs: 160}
    models: [lenet5]                  # default: base.model.name
    datasets: [cifar10]               # default: base.data.dataset
    methods:                          # a method name, or a mapping of sparsity fields plus
      - dense                         #   `densities:` to override the grid's densities
      - dctps
      - {method: dctps, rigl: true}
      - {method: iter_snip, options: {steps: 30}}
    densities: [0.01, 0.001, 1e-4]    # floats, or strings such as "0.1%"
    seeds: [0, 1, 2]                  # a list, or an integer n for seeds 0..n-1
    variants:                         # optional: partial RunConfigs, one copy of the grid each
      - {}
      - {optim: {recipe: sgd}}
    slurm: {timeout_min: 2880, slurm_partition: gpu, gpus_per_node: 1}   # submitit parameters

The runs are ``variants x models x datasets x methods x densities x seeds``; ``dense`` runs are not
multiplied by densities, and runs whose resolved configs are equal are kept once.

:func:`run_sweep` skips runs already ``done`` in the results store, resumes crashed ones (``fit``
resumes from the run's checkpoint), leaves ``failed`` ones (e.g. a ``PruningFailed``) alone unless
``retry_failed``, and trains the rest with one of three executors:

* ``local``: ``workers`` processes on this machine (``workers=1``: in this process);
* ``submitit-local``: one ``submitit`` local job (a subprocess) per run, ``workers`` at a time;
* ``slurm``: one SLURM job per run, submitted as a ``submitit`` job array.

A run that raises an unexpected exception (a missing data set, a bug) is reported as an ``error``
and left as it is in the store, so the next sweep tries it again; one run's error never stops the
others.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dctps import progress as progress_mod
from dctps.errors import (
    DctpsError,
    RunBusy,
    as_items,
    cannot_write,
    check_threads,
    no_cuda,
    parse_density,
    show,
    unknown_name,
    user_path,
)
from dctps.train.config import (
    GRID_KEYS,
    RunConfig,
    SparsityConfig,
    parse_assignment,
    read_yaml,
)

__all__ = [
    "EXECUTORS",
    "GRID_KEYS",
    "PlannedRun",
    "SweepReport",
    "apply_sets",
    "expand_grid",
    "load_grid",
    "parse_density",
    "plan",
    "run_one",
    "run_sweep",
    "sweep_command",
]

EXECUTORS = ("local", "submitit-local", "slurm")
METHOD_KEYS = tuple(f.name for f in dataclasses.fields(SparsityConfig) if f.name != "density") + (
    "densities",
)
# submitit parameters of a local job: a generous timeout (submitit's default is 2 minutes)
LOCAL_SUBMITIT = {"timeout_min": 7 * 24 * 60}

#: the folder of ``--out`` where a run that raised leaves its traceback (``<hash>.txt``)
ERRORS_DIR = "errors"


# ----------------------------------------------------------------------------- grid
def _as_list(value: Any, where: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        if not value:  # an empty axis empties the whole grid: "0 runs" would hide the mistake
            raise DctpsError(f"{where}: the list is empty; leave the key out for the default")
        return list(value)
    if value is None or isinstance(value, Mapping):
        raise DctpsError(f"{where}: expected a list, got {value!r}")
    return [value]


def _merge(a: Mapping[str, Any], b: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: mappings merge key by key, anything else in ``b`` replaces ``a``'s."""
    out = copy.deepcopy(dict(a))
    for k, v in b.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


#: the most seeds a grid's count (``seeds: N``) stands for
MAX_SEEDS = 10_000


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise DctpsError(f"{where}: the number of seeds must be >= 1, got {value}")
        if value > MAX_SEEDS:  # a count of 1e11 (a bracket left out: `seeds: 30000`) ran
            raise DctpsError(  # out of memory listing them
                f"{where}: {value:,} seeds is more than {MAX_SEEDS:,}: give a count up to it, or "
                "a list of seeds such as [0, 1, 2]"
            )
        return list(range(value))
    out = []
    for s in _as_list(value, where):
        if isinstance(s, bool) or not isinstance(s, int):
            raise DctpsError(f"{where}: seeds must be integers, got {s!r}")
        out.append(s)
    return out


def _method_entry(entry: Any, where: str) -> tuple[dict[str, Any], list[float] | None]:
    """A ``methods:`` item -> (sparsity fields, its own densities or None)."""
    if isinstance(entry, str):
        return {"method": entry}, None
    if not isinstance(entry, Mapping):
        raise DctpsError(f"{where}: expected a method name or a mapping, got {entry!r}")
    bad = [k for k in entry if k not in METHOD_KEYS]
    if bad:
        raise DctpsError(
            f"{where}: unknown key {bad[0]!r} in a method entry; valid: {', '.join(METHOD_KEYS)}"
        )
    if "method" not in entry:
        raise DctpsError(f"{where}: a method entry needs `method:`")
    fields = {k: copy.deepcopy(v) for k, v in entry.items() if k != "densities"}
    dens = None
    if "densities" in entry:
        dens = [parse_density(d, f"{where}.densities") for d in _as_list(entry["densities"], where)]
    return fields, dens


def _entry_hint(
    message: str, base: Mapping[str, Any], overrides: Mapping[str, Any] | None, n_methods: int
) -> str:
    """How to scope a setting of ``base`` or ``--set`` that one of a grid's methods refuses
    (``sparsity.alpha`` on its SNIP runs): in the entries of the methods it applies to. Both
    reach every run, and ``--set sparsity.rigl_alpha=0.5`` on a grid of RigL and static runs
    had no way out. Empty where the grid has one method or the message names no such key."""
    if n_methods < 2:
        return ""
    for where, given in (("--set", overrides or {}), ("base", base)):
        sparsity = given.get("sparsity")
        for key, value in sparsity.items() if isinstance(sparsity, Mapping) else ():
            named = f"sparsity.{key}" in message or (key == "options" and "option" in message)
            if key in METHOD_KEYS and key != "method" and named:
                shown = str(value).lower() if isinstance(value, bool) else value  # as YAML
                shown = json.dumps(value) if isinstance(value, dict) else shown
                return (
                    f". {where} reaches every run: give sparsity.{key} in the entries of the "
                    f"methods it applies to, e.g. methods: [{{method: ..., {key}: {shown}}}]"
                )
    return ""


def load_grid(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a grid YAML file (checked by :func:`expand_grid`); unknown top-level keys raise."""
    p = user_path(path, "the sweep config path")
    if not p.exists():  # the repository's configs/ are not in the package: say how to get one
        from dctps.results.figures import names as figure_names

        hint = (f" (the repository's {p.parent.name}/ is not installed with the package: `dctps "
                f"figure {p.stem} --print-config > {p.name}` writes this grid)"
                if p.stem in figure_names() else "")  # fmt: skip
        raise DctpsError(f"cannot read sweep config {p}: no such file{hint}")
    grid = read_yaml(p, "sweep config")
    _check_grid(grid, str(p))
    return grid


def _check_grid(grid: Any, source: str) -> None:
    if not isinstance(grid, Mapping):
        raise DctpsError(
            f"{source}: a sweep config must be a mapping with keys {', '.join(GRID_KEYS)}"
        )
    bad = [k for k in grid if k not in GRID_KEYS]
    if bad:
        run_keys = {f.name for f in dataclasses.fields(RunConfig)}
        # `dctps sweep RUN.yaml`: a run's config.yaml, say (one key may be a typo: model:)
        if len(grid) >= 2 and set(grid) <= run_keys:
            raise DctpsError(
                f"{source} is a run config (keys {', '.join(map(str, grid))}), not a sweep grid: "
                f"train it with `dctps train --config {source}`"
            )
        raise DctpsError(f"{source}: unknown key {bad[0]!r}; valid keys: {', '.join(GRID_KEYS)}")
    slurm = grid.get("slurm")
    if slurm is not None and not isinstance(slurm, Mapping):
        raise DctpsError(
            f"{source}: slurm must be a mapping of submitit parameters (e.g. "
            f"{{timeout_min: 2880, slurm_partition: gpu}}), got {slurm!r}"
        )


#: the grid's axes: the config field each one sets, and the grid key that lists its values
_AXES = {
    ("model", "name"): "models",
    ("data", "dataset"): "datasets",
    ("sparsity", "method"): "methods",
    ("sparsity", "density"): "densities (or a method entry's own densities)",
    ("seed",): "seeds",
}


def _refuse_axes(d: Mapping[str, Any], where: str, only: Iterable[tuple[str, ...]] | None = None
                 ) -> None:  # fmt: skip
    """A :class:`DctpsError` for a variant or ``--set`` that sets a field one of the grid's axes
    sets for every run (``only``: of these axes): the axis replaced a variant's value silently
    (``variants: [{seed: 1}, {seed: 2}]`` gave one run, at the grid's seed), and a ``--set`` of
    an axis of several values collapsed them into one."""
    axes = _AXES if only is None else {p: _AXES[p] for p in only}
    for path, axis in axes.items():
        node: Any = d
        for part in path:
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is not None:
            raise DctpsError(
                f"{where} sets {'.'.join(path)}={node!r}, which the grid's {axis.split()[0]} "
                f"axis sets for every run: list the values in `{axis}` instead"
            )


def set_dotted(target: dict[str, Any], key: str, value: Any) -> bool:
    """Set ``target[a][b][c] = value`` for ``key`` ``'a.b.c'``, making the inner dicts; ``False``
    (nothing set) where a non-dict value already stands on the way."""
    *parents, leaf = key.split(".")
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            return False
    target[leaf] = value
    return True


def apply_sets(items: Iterable[str]) -> dict[str, Any]:
    """``["optim.epochs=20", "data.subset=2000"]`` -> a nested override dict (YAML values)."""
    out: dict[str, Any] = {}
    for item in as_items(items, "sets"):
        key, value = parse_assignment(item, "--set", "section.field=value")
        if not set_dotted(out, key, value):
            raise DctpsError(f"--set {item!r} conflicts with another --set")
    return out


def expand_grid(
    grid: Mapping[str, Any],
    source: str = "sweep config",
    overrides: Mapping[str, Any] | None = None,
) -> list[RunConfig]:
    """The resolved :class:`RunConfig` of every run of ``grid`` (module doc), in grid order.

    ``overrides`` (a partial RunConfig dict, e.g. ``{"optim": {"epochs": 2}}``) is merged over every
    run last. Unknown keys anywhere raise :class:`DctpsError` naming the key.
    """
    _check_grid(grid, source)
    base = grid.get("base") or {}
    RunConfig.from_dict(base, source=f"{source}: base")  # names a bad key in `base` itself
    base_cfg = RunConfig.from_dict(base)
    models = _as_list(grid.get("models", [base_cfg.model.name]), f"{source}: models")
    datasets = _as_list(grid.get("datasets", [base_cfg.data.dataset]), f"{source}: datasets")
    methods = [
        _method_entry(m, f"{source}: methods[{i}]")
        for i, m in enumerate(_as_list(grid.get("methods", [base_cfg.sparsity.method]),
                                       f"{source}: methods"))
    ]  # fmt: skip
    if "densities" in grid:
        densities: list[float | None] = [
            parse_density(d, f"{source}: densities")
            for d in _as_list(grid["densities"], f"{source}: densities")
        ]
    else:
        densities = [base_cfg.sparsity.density]
    seeds = _seeds(grid.get("seeds", [base_cfg.seed]), f"{source}: seeds")
    variants = _as_list(grid.get("variants", [{}]), f"{source}: variants")
    for i, v in enumerate(variants):
        RunConfig.from_dict(v or {}, source=f"{source}: variants[{i}]")
        _refuse_axes(v or {}, f"{source}: variants[{i}]")
    overrides = dict(overrides or {})
    if overrides:
        RunConfig.from_dict(overrides, source="overrides")
        # one value for an axis of one value replaces it (a figure's data set); an axis of
        # several values would collapse into one run each, silently
        n_dens = max([len(densities)] + [len(own) for _, own in methods if own])
        sizes = {("model", "name"): len(models), ("data", "dataset"): len(datasets),
                 ("sparsity", "method"): len(methods), ("seed",): len(seeds),
                 ("sparsity", "density"): n_dens}  # fmt: skip
        _refuse_axes(overrides, "--set", only=[p for p, n in sizes.items() if n > 1])

    out: list[RunConfig] = []
    seen: set[str] = set()
    for vi, variant in enumerate(variants):
        for model in models:
            for dataset in datasets:
                for mi, (fields, own) in enumerate(methods):
                    dens = [None] if fields["method"] == "dense" else (own or densities)
                    for density in dens:
                        for seed in seeds:
                            d = _merge(base, variant or {})
                            d = _merge(d, {"model": {"name": model}, "data": {"dataset": dataset},
                                           "sparsity": fields, "seed": seed})  # fmt: skip
                            d["sparsity"]["density"] = density
                            d = _merge(d, overrides)
                            where = (f"{source}: run (variant {vi}, {model}, {dataset}, "
                                     f"methods[{mi}], density {density}, seed {seed})")  # fmt: skip
                            try:
                                cfg = RunConfig.from_dict(d, source=where).resolve()
                            except DctpsError as e:
                                if str(e).startswith(source):
                                    raise
                                hint = _entry_hint(str(e), base, overrides, len(methods))
                                raise DctpsError(f"{where}: {e}{hint}") from None
                            h = cfg.config_hash()
                            if h not in seen:
                                seen.add(h)
                                out.append(cfg)
    return out


# ----------------------------------------------------------------------------- planning
@dataclass
class PlannedRun:
    """One run of a sweep and what the sweep does with it.

    ``action``: ``new`` (no row), ``resume`` (a ``running`` or ``interrupted`` row with a
    checkpoint), ``restart`` (one without), ``retry`` (``failed``, with ``retry_failed``),
    ``skip-done``, ``skip-failed``.
    """

    cfg: RunConfig
    hash: str
    action: str
    status: str | None = None  # the store's status before the sweep
    #: for a ``new`` run: the row of its config that an older dctps recorded, which it cannot
    #: reuse (:func:`dctps.results.store.older_records`), as its hash
    older: str | None = None

    @property
    def runs(self) -> bool:
        """Whether this run will be (re)started, i.e. its action is not a skip."""
        return not self.action.startswith("skip")


def plan(
    configs: Sequence[RunConfig],
    out: str | os.PathLike[str],
    db: str | os.PathLike[str] | None = None,
    retry_failed: bool = False,
) -> list[PlannedRun]:
    """What :func:`run_sweep` would do with each config (reads the store, runs nothing).

    A :class:`DctpsError` where a finished run it would skip was trained on other data than
    its config now reads (:func:`dctps.train.loop.other_data`)."""
    from dctps.results.store import Store, older_records, out_db_path
    from dctps.train import checkpoint as ckpt_io
    from dctps.train.loop import RUNS_DIR, other_data

    configs = run_list(configs, "plan")
    out = user_path(out, "the output folder (out, --out)")
    path = out_db_path(out, db)
    hashes = [c.config_hash() for c in configs]
    rows: dict[str, dict[str, Any]] = {}
    if path.is_file() and hashes:
        store = Store(path)
        for i in range(0, len(hashes), 500):
            for r in store.query({"hash": hashes[i : i + 500]}, order_by=""):
                rows[r["hash"]] = r
    planned, problems = [], []
    memo: dict[tuple[Any, ...], str] = {}  # one load per data setting, not per run
    for cfg, h in zip(configs, hashes, strict=True):
        status = rows[h]["status"] if h in rows else None
        if status == "done" or (status == "failed" and not retry_failed):
            why = other_data(rows[h], cfg.data, str(path), memo)
            if why is not None:
                problems.append(why)
        if status == "done":
            action = "skip-done"
        elif status == "failed":
            action = "retry" if retry_failed else "skip-failed"
        elif status is None:
            action = "new"
        else:
            action = "resume" if ckpt_io.exists(out / RUNS_DIR / h) else "restart"
        planned.append(PlannedRun(cfg, h, action, status))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DctpsError(problems[0] + more)
    new = [p for p in planned if p.action == "new"]
    if new and path.is_file():
        older = older_records(Store(path), [p.cfg for p in new], [p.hash for p in new])
        for p in new:
            p.older = older[p.hash]["hash"] if p.hash in older else None
    return planned


# ----------------------------------------------------------------------------- one run
def _init_worker(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


# Set in a pool worker by its SIGINT handler (a signal handler can only reach module state). A
# terminal's Ctrl-C reaches every worker of the process group once: the run it is training stops,
# and the calls already queued to it must return at once instead of training to the end.
_worker_interrupted = False
# In a pool worker: the pid of its sweep (a worker outliving it exits, see _watch_parent).
_pool_parent: int | None = None


# In a pool worker: whether it is training a run (an interrupt outside one only stops the queue).
_in_run = False


def _on_sigint(signum: int, frame: Any) -> None:
    global _worker_interrupted
    if _worker_interrupted:  # the terminal's Ctrl-C and the sweep's own: one is enough, and a
        return  # second would cut short the run's recording of where it stopped
    _worker_interrupted = True
    if _in_run:  # an idle worker waits for the queue's end instead (no traceback)
        raise KeyboardInterrupt


def _init_pool_worker(threads: int | None, parent: int | None = None) -> None:
    """Initializer of the local process pool's workers (see :data:`_worker_interrupted`); with
    the sweep's ``parent`` pid, a watchdog that stops the worker if the sweep dies."""
    import signal
    import threading

    global _pool_parent
    signal.signal(signal.SIGINT, _on_sigint)
    # SLURM's scancel and time limit, `kill -- -PGID`, docker stop: SIGTERM reaches every
    # process of the job at once; by default it killed the workers outright, and their rows
    # stayed `running` with no word of where they stopped (a batch review)
    signal.signal(signal.SIGTERM, _on_sigint)
    if parent is not None:
        _pool_parent = parent
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    _init_worker(threads)


def _watch_parent(parent: int) -> None:
    """Stop this pool worker once its sweep has died (SIGKILL, out of memory): interrupt the run
    it trains, as Ctrl-C does, so that its row says where it stopped, then exit after
    :data:`WORKER_GRACE_SECONDS`. Without this a worker trained on, started the runs queued to
    it, and then waited forever for work from a parent that was gone (the queue never reports
    EOF: every worker holds its writing end too)."""
    import multiprocessing
    import signal

    proc = multiprocessing.parent_process()
    if proc is not None:
        # its sentinel turns readable when the parent dies, on every platform; on Windows
        # os.getppid() keeps naming a dead parent, and the workers trained on, then waited forever
        while proc.is_alive():
            proc.join()
    else:  # pragma: no cover - a pool worker always has a multiprocessing parent
        while os.getppid() == parent:
            time.sleep(1.0)
    if not _worker_interrupted:
        os.kill(os.getpid(), signal.SIGINT)  # handled by _on_sigint in the main thread
    time.sleep(WORKER_GRACE_SECONDS)
    os._exit(130)


def run_one(
    cfg: dict[str, Any] | RunConfig,
    out: str,
    db: str | None = None,
    restart: bool = False,
    threads: int | None = None,
    progress: bool = False,
    tag: bool = False,
) -> dict[str, Any]:
    """Train one run (in a worker process or job); never raises for a failing run, except
    under ``torchrun`` (several processes), where an error in a run stops the sweep.
    ``progress``: log the run's epochs (a submitit job, whose log is its own, or a local
    sweep whose progress is a log). ``tag``: start each line the run writes to ``stderr`` with
    ``[<its hash's first 8 characters> <its summary>]`` (:func:`dctps.progress.tagged`; a
    parallel local worker, whose lines share the sweep's log with the other runs').

    Returns ``{hash, status, reason, val_acc, test_acc, resumed_from, skipped, wall_seconds}``
    with ``status`` ``done`` / ``failed`` (recorded in the store by ``fit``) or ``error`` (an
    exception: the run is left as it is in the store; ``reason`` names it, ``traceback`` has it).
    """
    from dctps.train.loop import fit

    h = None
    if _worker_interrupted:  # Ctrl-C: the sweep is stopping, do not start another run
        return {"hash": h, "status": "error", "reason": "interrupted (Ctrl-C)"}
    global _in_run
    try:
        c = cfg if isinstance(cfg, RunConfig) else RunConfig.from_dict(cfg)
        h = c.config_hash()
        # checked here, on the machine that runs it (a SLURM node): torch crashed on 100000
        _init_worker(check_threads(threads or 0, "threads") or None)
        _in_run = True
        try:
            with progress_mod.tagged(_named(h, c)) if tag else contextlib.nullcontext():
                r = fit(
                    c, out, db, progress=progress, resume=False if restart else None, warn=False
                )
        finally:
            _in_run = False
    except KeyboardInterrupt:
        if _pool_parent is not None and os.getppid() != _pool_parent:
            os._exit(130)  # the sweep is gone: the run has recorded where it stopped
        raise
    except RunBusy as e:  # another sweep (or `dctps train`) on the same --out or --db trains it
        return {"hash": h, "status": "busy", "reason": str(e)}
    except Exception as e:  # one run's error must not stop the sweep
        from dctps.train.distributed import launched_world_size

        if launched_world_size() > 1:
            # ... except under torchrun: the other ranks may still be inside this run's
            # collectives, and one that went on to the next run hung them there (or aborted
            # on gloo's collective mismatch, hiding this error): stop, as `dctps train` does
            raise
        tb = traceback.format_exc()
        res = {"hash": h, "status": "error", "reason": f"{type(e).__name__}: {e}",
               "traceback": tb}  # fmt: skip
        if h is not None:  # kept where the summary can point (a job's own log may be gone)
            with contextlib.suppress(OSError):
                path = Path(out) / ERRORS_DIR / f"{h}.txt"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(tb, encoding="utf-8")
                res["traceback_file"] = str(path)
        return res
    if r.get("status") in ("done", "failed"):  # an earlier attempt's traceback is history now
        with contextlib.suppress(OSError):
            (Path(out) / ERRORS_DIR / f"{h}.txt").unlink(missing_ok=True)
    keys = ("hash", "status", "reason", "val_acc", "test_acc", "resumed_from", "skipped",
            "wall_seconds")  # fmt: skip
    return {k: r.get(k) for k in keys}


# ----------------------------------------------------------------------------- report
@dataclass
class SweepReport:
    """What a sweep planned and what its runs returned (``results[hash]``)."""

    planned: list[PlannedRun]
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    submitted: dict[str, str] = field(default_factory=dict)  # hash -> job id (slurm, no wait)

    def outcome(self, h: str) -> str:
        """``done`` / ``failed`` / ``error`` / ``busy`` (another process trains it) /
        ``done-elsewhere`` (another process finished it meanwhile) / ``submitted`` /
        ``skip-done`` / ``skip-failed``."""
        p = next((p for p in self.planned if p.hash == h), None)
        if p is None and h not in self.results and h not in self.submitted:
            raise KeyError(h)
        return self._outcome(h, p)

    def _outcome(self, h: str, p: PlannedRun | None) -> str:
        if h in self.results:
            r = self.results[h]
            # found done by another process (a sweep beside this one): not trained here
            return (
                "done-elsewhere" if r["status"] == "done" and r.get("skipped") else str(r["status"])
            )
        if h in self.submitted:
            return "submitted"
        assert p is not None
        return p.action if not p.runs else "not run"

    def counts(self) -> dict[str, int]:
        """Number of planned runs per outcome (``done``, ``failed``, ``error``, ``skip ...``).
        Linear in the plan: a progress bar asks after every run (it searched the plan for
        each run: 0.7 s per call at 10,000 runs, most of a day over a 20,000-run sweep)."""
        out: dict[str, int] = {}
        for p in self.planned:
            k = self._outcome(p.hash, p)
            out[k] = out.get(k, 0) + 1
        return out

    @property
    def errors(self) -> list[dict[str, Any]]:
        """Result rows of the runs that raised an exception (status ``error``)."""
        return [r for r in self.results.values() if r["status"] == "error"]

    def summary(self) -> str:
        """A few lines: counts, then one line per failed or errored run."""
        by = {p.hash: p for p in self.planned}
        counts = ", ".join(f"{v} {k}" for k, v in sorted(self.counts().items()))
        # "done" alone hid that a run went on from its checkpoint (a newcomer review)
        resumed = sum(
            1
            for r in self.results.values()
            if r["status"] == "done" and r.get("resumed_from") and not r.get("skipped")
        )
        note = f" ({resumed} resumed from a checkpoint)" if resumed else ""
        again = sum(1 for p in self.planned if p.older and p.hash in self.results)
        if again:
            note += f" ({_older_note(again)})"
        lines = [f"{len(self.planned)} runs: {counts}{note}"]
        bad = [(h, r) for h, r in self.results.items() if r["status"] in ("failed", "error")]
        if len(bad) <= SUMMARY_RUNS:
            for h, r in bad:
                lines.append(f"  {r['status']:<6} {h} {by[h].cfg.summary()}: {r.get('reason')}")
                if r.get("traceback_file"):
                    lines.append(f"         traceback: {r['traceback_file']}")
        else:  # one line per distinct reason: 9,000 runs failing alike printed 18,000 lines
            groups: dict[tuple[str, str], list[str]] = {}
            for h, r in bad:
                groups.setdefault((r["status"], str(r.get("reason"))), []).append(h)
            for (status, reason), hashes in sorted(groups.items(), key=lambda g: -len(g[1])):
                lines.append(f"  {len(hashes)} {status}: {reason}")
                more = f" and {len(hashes) - 1} more" if len(hashes) > 1 else ""
                lines.append(f"         e.g. {hashes[0]} {by[hashes[0]].cfg.summary()}{more}")
            tracebacks = sorted({str(Path(r["traceback_file"]).parent) for _, r in bad
                                 if r.get("traceback_file")})  # fmt: skip
            lines += [f"  tracebacks in {folder}" for folder in tracebacks]
        busy = [h for h, r in self.results.items() if r["status"] == "busy"]
        if busy:
            lines.append(f"  {len(busy)} run{'s' * (len(busy) > 1)} busy: being trained by another "
                         "process (on the same --out or --db), which records them (run the sweep "
                         "again after it to see them done)")  # fmt: skip
            lines += [f"  busy   {h} {by[h].cfg.summary()}" for h in busy[:SUMMARY_RUNS]]
            if len(busy) > SUMMARY_RUNS:
                lines.append(f"  ... and {len(busy) - SUMMARY_RUNS} more busy")
        jobs = list(self.submitted.items())
        for h, job in jobs[:SUMMARY_RUNS]:
            lines.append(f"  submitted {h} {by[h].cfg.summary()}: job {job}")
        if len(jobs) > SUMMARY_RUNS:
            lines.append(f"  ... and {len(jobs) - SUMMARY_RUNS} more submitted (jobs "
                         f"{jobs[SUMMARY_RUNS][1]} to {jobs[-1][1]})")  # fmt: skip
        return "\n".join(lines)


#: the most runs a sweep's summary lists one by one (of those that failed, are busy or were
#: submitted); beyond, failures are grouped by reason and the rest counted
SUMMARY_RUNS = 10


# ----------------------------------------------------------------------------- executors
def _bar(total: int, enabled: bool) -> Any:
    """A bar over the runs on a terminal, a line per finished run in a log."""
    return progress_mod.make_bar(
        total, "sweep", "run", 0, enabled and total > 0, dynamic_ncols=True
    )


def _named(h: str, cfg: RunConfig) -> str:
    """``2d01ae85 lenet5/cifar10 dctps@0.01 recipe=lenet seed=0``: run ``h`` of config ``cfg``
    as the sweep's lines and its parallel workers' tags name it; the hash tells apart runs
    whose summaries match (a learning-rate variant)."""
    return f"{h[:8]} {cfg.summary()}"


def _tick(bar: Any, report: SweepReport, p: PlannedRun) -> None:
    if bar is None:
        return
    bar.set_postfix_str(_postfix(report, f"last: {_named(p.hash, p.cfg)}"), refresh=False)
    bar.update(1)
    progress_mod.mark(bar)


def _postfix(report: SweepReport, what: str) -> str:
    """The sweep bar's counts so far, then ``what`` (the run that ended or is running)."""
    c = report.counts()
    busy = f" busy {c['busy']}" if c.get("busy") else ""
    busy += f" done-elsewhere {c['done-elsewhere']}" if c.get("done-elsewhere") else ""
    return (f"done {c.get('done', 0)} failed {c.get('failed', 0)} error {c.get('error', 0)}"
            f"{busy} | {what}")  # fmt: skip


# how long an interrupted sweep waits for its workers to record where their runs stopped
WORKER_GRACE_SECONDS = 30.0


def available_cpus() -> int:
    """The CPUs this process may use: ``OMP_NUM_THREADS`` where set (a positive integer), else
    the CPU affinity (a cgroup or ``taskset`` limit), else ``os.cpu_count()``."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def _threads(workers: int) -> int:
    """torch threads per run when ``workers`` runs share :func:`available_cpus`."""
    return max(1, available_cpus() // max(workers, 1))


def _collect(futs: dict[Any, str], by: dict[str, PlannedRun], report: SweepReport, bar: Any,
             broken: list[PlannedRun]) -> None:  # fmt: skip
    """Record the pool's results as they complete; runs of a dead worker go to ``broken``."""
    from concurrent.futures import as_completed
    from concurrent.futures.process import BrokenProcessPool

    for fut in as_completed(futs):
        h = futs[fut]
        try:
            res = fut.result()
        except BrokenProcessPool:
            broken.append(by[h])
            continue
        except Exception as e:  # pragma: no cover - pickling problems and the like
            res = {"hash": h, "status": "error", "reason": f"{type(e).__name__}: {e}"}
        res["hash"] = h
        report.results[h] = res
        _tick(bar, report, by[h])


def _stop_workers(pool: Any, grace: float = WORKER_GRACE_SECONDS) -> None:
    """Stop a local pool whose sweep is interrupted: cancel its queued runs and interrupt the
    running ones as Ctrl-C does (a terminal's Ctrl-C reaches them already; a SIGTERM sent to
    the sweep alone does not), so that each records where it stopped; a worker still alive
    after ``grace`` seconds is killed. No worker outlives the sweep."""
    import signal

    procs = list(getattr(pool, "_processes", {}).values())  # the executor's own worker table
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            if proc.is_alive() and proc.pid is not None:
                os.kill(proc.pid, signal.SIGINT)
    deadline = time.monotonic() + grace
    for proc in procs:
        with contextlib.suppress(OSError, ValueError):
            proc.join(max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                # SIGKILL: the workers take SIGTERM as Ctrl-C, which one stuck in a long C call
                # (or already interrupted) does not act on
                proc.kill()
                proc.join(5)


def _run_local(todo: list[PlannedRun], out: str, db: str, workers: int, report: SweepReport,
               bar: Any, threads: int | None = None) -> None:  # fmt: skip
    by = {p.hash: p for p in todo}
    # in a log (a SLURM job running a whole sweep) each run's epochs too: one after another
    # between the sweep's lines, or, from parallel workers, tagged with their runs; a
    # terminal's bar stays alone
    logged = isinstance(bar, progress_mod.Lines)
    if workers <= 1:
        import torch

        before = torch.get_num_threads()  # the runs train in this process: leave it as it was
        try:
            for p in todo:
                if bar is not None:  # a run can take hours (FORCE's pruning alone): say which
                    bar.set_postfix_str(_postfix(report, f"running: {_named(p.hash, p.cfg)}"))
                    progress_mod.mark(bar)
                report.results[p.hash] = run_one(
                    p.cfg, out, db, p.action == "retry", threads, progress=logged
                )
                report.results[p.hash].setdefault("hash", p.hash)
                _tick(bar, report, p)
        finally:
            torch.set_num_threads(before)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    pending = list(todo)
    deaths: dict[str, int] = {}
    while pending:
        broken: list[PlannedRun] = []
        with ProcessPoolExecutor(
            max_workers=min(workers, len(pending)), mp_context=mp.get_context("spawn"),
            initializer=_init_pool_worker,
            initargs=(threads or _threads(workers), os.getpid()),
        ) as pool:  # fmt: skip
            futs = {
                pool.submit(
                    run_one, p.cfg.to_dict(), out, db, p.action == "retry", None, logged, logged
                ): p.hash
                for p in pending
            }
            try:
                _collect(futs, by, report, bar, broken)
            except KeyboardInterrupt:
                # Ctrl-C or SIGTERM: drop the queued runs and stop the running ones (they
                # resume from their checkpoints on the next `dctps sweep`)
                _stop_workers(pool)
                raise
        pending = []
        for p in broken:  # a worker died (killed, out of memory): try its runs once more
            deaths[p.hash] = deaths.get(p.hash, 0) + 1
            if deaths[p.hash] >= 2:
                report.results[p.hash] = {
                    "hash": p.hash, "status": "error",
                    "reason": "the worker process died (killed or out of memory) twice"
                    + _unguarded_script_hint(),
                }  # fmt: skip
                _tick(bar, report, p)
            else:
                pending.append(p)


def _unguarded_script_hint() -> str:
    """Where the sweep was started by a Python script (not the ``dctps`` command), the likeliest
    cause of workers that die at once: each spawned worker imports that script, and a script
    that calls :func:`run_sweep` outside ``if __name__ == "__main__":`` cannot start them."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    spec = getattr(main, "__spec__", None)
    if not path or not str(path).endswith(".py") or (spec and spec.name.startswith("dctps")):
        return ""
    return (
        f", or could not start: workers import {Path(path).name}, so a script that calls "
        'run_sweep must do so under `if __name__ == "__main__":`'
    )


def _check_not_a_worker_import() -> None:
    """A :class:`DctpsError` for :func:`run_sweep` called while a spawned worker imports the
    main script (multiprocessing's bootstrapping phase): the script lacks its
    ``if __name__ == "__main__":`` guard, and every worker would start a sweep of its own."""
    import multiprocessing as mp

    if getattr(mp.current_process(), "_inheriting", False):
        raise DctpsError(
            "run_sweep was called while a sweep worker was importing the main script: sweep "
            "workers are spawned processes that import it, so call run_sweep under "
            '`if __name__ == "__main__":`'
        )


def _submitit_executor(kind: str, folder: Path, params: Mapping[str, Any]) -> Any:
    try:
        import submitit
    except ImportError as e:  # pragma: no cover - submitit is a dependency
        raise DctpsError(f"the {kind} executor needs submitit ({e})") from None
    cluster = "local" if kind == "submitit-local" else "slurm"
    try:
        ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster=cluster)
    except (RuntimeError, ValueError) as e:
        raise DctpsError(f"cannot start the {kind} executor: {e}") from None
    base = dict(LOCAL_SUBMITIT) if cluster == "local" else {"timeout_min": 3 * 24 * 60}
    try:
        ex.update_parameters(**{**base, **dict(params)})
    except (NameError, ValueError, TypeError) as e:
        raise DctpsError(f"bad submitit parameters {dict(params)}: {e}") from None
    return ex


def job_failure(e: BaseException) -> str:
    """One line for a submitit job that failed outside ``run_one`` (a timeout, a killed node,
    an error in submitit's own start-up): ``FailedJobError``'s message is the job's traceback
    then where its logs are; the line is the traceback's last (the error itself) and the
    ``.err`` log, not the last line (the ``.out`` log's path)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines()]
    end = next((i for i, ln in enumerate(lines) if ln.startswith("You can check full logs")),
               len(lines))  # fmt: skip
    body = [ln for ln in lines[:end] if ln and not set(ln) <= {"-"}]
    what = body[-1] if body else type(e).__name__
    err = next((ln.lstrip("- ") for ln in lines[end:] if ln.endswith(".err")), None)
    return what + (f" (log: {err})" if err else "")


def _job_result(job: Any, h: str) -> dict[str, Any]:
    try:
        res = job.result()
    except Exception as e:  # the job itself died (timeout, node failure, killed)
        reason = f"job {job.job_id}: {type(e).__name__}: {job_failure(e)}"
        return {"hash": h, "status": "error", "reason": reason}
    res["hash"] = h
    return res


def _run_submitit(
    ex: Any, kind: str, todo: list[PlannedRun], out: str, db: str, workers: int | None,
    params: Mapping[str, Any], wait: bool, report: SweepReport, bar: Any, poll: float,
    threads: int | None = None,
) -> None:  # fmt: skip
    threads = (
        threads
        or params.get("cpus_per_task")
        or (_threads(workers or 1) if kind != "slurm" else None)
    )
    # a job's log is its own: its run's epochs go there, one line each with the time left
    # (unless the sweep is quiet: -q silences the whole command, its jobs too)
    logged = bar is not None
    args = [(p.cfg.to_dict(), out, db, p.action == "retry", threads, logged) for p in todo]
    by = {p.hash: p for p in todo}
    if kind == "slurm":
        if workers:
            ex.update_parameters(slurm_array_parallelism=workers)
        try:
            jobs = ex.map_array(run_one, *zip(*args, strict=True))
        except Exception as e:
            raise DctpsError(f"SLURM submission failed: {type(e).__name__}: {e}") from None
        inflight = {j: p.hash for j, p in zip(jobs, todo, strict=True)}
        if not wait:
            report.submitted.update({h: j.job_id for j, h in inflight.items()})
            return
        queue: list[int] = []
    else:
        inflight = {}
        queue = list(range(len(todo)))
    limit = max(1, workers or 1)
    try:
        while inflight or queue:
            while queue and len(inflight) < limit and kind != "slurm":
                i = queue.pop(0)
                inflight[ex.submit(run_one, *args[i])] = todo[i].hash
            finished = [j for j in inflight if j.done()]
            if not finished:
                time.sleep(poll)
                continue
            for j in finished:
                h = inflight.pop(j)
                report.results[h] = _job_result(j, h)
                _tick(bar, report, by[h])
    except KeyboardInterrupt:
        if kind != "slurm":  # local jobs are this sweep's children: they stop with it
            _stop_jobs(list(inflight))
        raise


def _stop_jobs(jobs: Sequence[Any], grace: float | None = None) -> None:
    """Interrupt submitit-local ``jobs`` (``cancel`` sends SIGINT: each run records where it
    stopped, as under Ctrl-C) and wait up to ``grace`` seconds for them to end; without this,
    the jobs of a sweep stopped by Ctrl-C or SIGTERM went on training, orphaned."""
    grace = WORKER_GRACE_SECONDS if grace is None else grace
    for j in jobs:
        with contextlib.suppress(Exception):
            j.cancel(check=False)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        try:
            if all(j.done() for j in jobs):
                return
        except Exception:
            return
        time.sleep(0.2)


def run_list(configs: Any, who: str) -> list[RunConfig]:
    """``configs`` as a list of :class:`RunConfig` (one config: a list of it; a generator: walked
    once), or a :class:`DctpsError` for a grid file's path, a grid mapping or other items: an
    AttributeError on 'config_hash' said nothing."""
    if isinstance(configs, RunConfig):
        return [configs]
    if not isinstance(configs, (str, os.PathLike, Mapping)):
        with contextlib.suppress(TypeError):
            configs = list(configs)
    if not isinstance(configs, list) or not all(isinstance(c, RunConfig) for c in configs):
        what = "a grid" if isinstance(configs, Mapping) else "not only RunConfigs"
        what = "a path" if isinstance(configs, (str, os.PathLike)) else what
        raise DctpsError(
            f"{who} takes a list of RunConfig, got {what} ({show(configs)}): expand a grid file "
            "with expand_grid(load_grid(path)), or run it with `dctps sweep PATH`"
        )
    return configs


def run_sweep(
    configs: Sequence[RunConfig],
    out: str | os.PathLike[str],
    *,
    db: str | os.PathLike[str] | None = None,
    executor: str = "local",
    workers: int | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    slurm: Mapping[str, Any] | None = None,
    wait: bool = True,
    poll: float = 1.0,
    threads: int | None = None,
) -> SweepReport:
    """Train every config of ``configs`` not yet done (module doc) and return the report.

    Args:
        configs: the runs (e.g. from :func:`expand_grid`).
        out: output folder: ``out/runs/<hash>/`` checkpoints, ``out/results.db``,
            ``out/submitit/`` job logs.
        db: the results database (default ``out/results.db``).
        executor: ``local``, ``submitit-local`` or ``slurm``.
        workers: parallel runs (local: processes, default 1; submitit-local: jobs at a time,
            default 1; slurm: the job array's parallelism, default unlimited). Local workers
            are spawned processes, which import the main script: a script must call
            ``run_sweep`` under ``if __name__ == "__main__":`` (else :class:`DctpsError`).
        retry_failed: run ``failed`` runs again (from scratch).
        progress: an overall bar over the runs to train (a line per run where stderr is a
            log, and then also each run's epoch lines, tagged with the run where local workers
            run in parallel); ``False`` silences the runs too, a submitit job's own log included.
        slurm: submitit parameters (``timeout_min``, ``gpus_per_node``, ``cpus_per_task``,
            ``mem_gb``, ``slurm_partition``, ...), merged over the executor's defaults.
        wait: slurm only: wait for the jobs (``False``: submit and return their ids).
        poll: seconds between checks of submitit jobs.
        threads: torch threads of each run (``None`` or 0: :func:`available_cpus` // workers
            for parallel local runs and submitit-local jobs, a SLURM job's ``cpus_per_task``,
            else torch's default). A run's numbers depend on its thread count.
    """
    from dctps.results.store import out_db_path

    _check_not_a_worker_import()
    configs = run_list(configs, "run_sweep")
    if executor not in EXECUTORS:
        raise unknown_name("executor", executor, EXECUTORS)
    check_workers(workers)
    threads = check_threads(threads or 0, "threads", here=executor != "slurm") or None
    # a bad DCTPS_PROGRESS: refused before any run, even with progress off here (a submitit
    # job logs its epochs: each had failed on it)
    progress_mod.style()
    from dctps.train.distributed import launched_world_size

    world = launched_world_size()
    if world > 1 and ((workers or 1) > 1 or executor != "local"):
        # each worker or job would join the launcher's process group: runs of different
        # configs met in one DDP group and the sweep hung
        raise DctpsError(
            f"a sweep under torchrun ({world} processes) trains its runs one after the other, "
            f"each with DDP: give workers=1 and executor local (--workers 1 --executor local; "
            f"got {workers}, {executor}); or run the sweep without torchrun"
        )
    out_p = user_path(out, "the output folder (out, --out)").resolve()
    db_p = out_db_path(out_p, db).resolve()

    def prepare() -> list[PlannedRun]:
        planned = plan(configs, out_p, db_p, retry_failed)
        todo = [p for p in planned if p.runs]
        if todo:
            # once, before any run and any output: not the same error from every run
            problems = preflight([p.cfg for p in todo], executor, slurm)
            if problems:
                raise DctpsError("; ".join(problems))
            _check_outputs(out_p, db_p)
        return planned

    # under torchrun rank 0 plans, and every rank takes its plan: ranks that read the store
    # apart (a sweep beside this one finishing a run between their reads) paired one run's
    # collectives with another's
    group = _join_torchrun_group(configs) if world > 1 and configs else None
    try:
        if group is None:
            planned = prepare()
        else:
            from dctps.train.loop import main_decides

            planned = group.broadcast(main_decides(group, prepare))
        report = SweepReport(planned)
        todo = [p for p in planned if p.runs]
        if not todo:
            return report
        if executor == "slurm":
            slurm = slurm_parameters([p.cfg for p in todo], slurm or {})
        ex = None
        if executor != "local":  # fails here, before any bar, when e.g. SLURM is not available
            ex = _submitit_executor(executor, out_p / "submitit", slurm or {})
        _run_planned(todo, executor, ex, str(out_p), str(db_p), workers, slurm, wait, report,
                     progress, poll, threads)  # fmt: skip
    finally:
        if group is not None:
            from dctps.train.distributed import teardown

            teardown(group)
    return report


def _check_outputs(out_p: Path, db_p: Path) -> None:
    """Create the sweep's output and run folders and check they and the results database can
    be written: an unusable one fails here, once, not in every run (the folders first: their
    failure then leaves no new, empty database behind)."""
    from dctps.results.store import Store
    from dctps.train.loop import RUNS_DIR

    try:
        out_p.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write("sweep output folder", out_p, e) from None
    runs_dir = out_p / RUNS_DIR
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise cannot_write("run folder", runs_dir, e) from None
    if not os.access(runs_dir, os.W_OK | os.X_OK):
        raise DctpsError(f"cannot write run folder {runs_dir}: permission denied")
    Store(db_p).check_writable("Give another --out or --db: a sweep writes a row per run")


def _run_planned(
    todo: list[PlannedRun], executor: str, ex: Any, out: str, db: str, workers: int | None,
    slurm: Any, wait: bool, report: SweepReport, progress: bool, poll: float, threads: int | None,
) -> None:  # fmt: skip
    """Train the runs of ``todo`` with ``executor``, recording each outcome in ``report``."""
    bar = _bar(len(todo), progress)
    try:
        if executor == "local":
            _run_local(todo, out, db, workers or 1, report, bar, threads)
        else:
            _run_submitit(ex, executor, todo, out, db, workers, slurm or {}, wait, report, bar,
                          poll, threads)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()


def _join_torchrun_group(cfgs: Sequence[RunConfig]) -> Any:
    """Under ``torchrun``, join the process group once for the whole sweep (its
    :class:`~dctps.train.distributed.DistContext`): each run then finds it joined and leaves it
    be. A run that created and destroyed its own group, one after the other on the same
    rendezvous, failed the next run's first collective now and then ("Connection reset by
    peer") or hung. The runs must share one kind of device (one backend: gloo or nccl)."""
    from dctps.train.distributed import device_kind, setup

    kinds = sorted({device_kind(c.device) for c in cfgs})
    if len(kinds) > 1:
        raise DctpsError(
            f"a sweep under torchrun joins one process group for all its runs, but its runs ask "
            f"for devices of {' and '.join(kinds)} (one backend each): give every run the same "
            "device (--device; --set device=cuda)"
        )
    return setup(cfgs[0].device)


def check_workers(workers: int | None) -> None:
    """``workers`` is ``None`` (the default) or a positive integer; else a DctpsError."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):  # fmt: skip
        raise DctpsError(f"workers must be a positive integer, got {workers!r}")


#: submitit parameters of a SLURM job unless the grid's ``slurm:`` or ``--slurm`` set them
SLURM_DEFAULTS = {"timeout_min": 3 * 24 * 60}


#: sbatch options (submitit parameters without their ``slurm_`` prefix, or
#: ``slurm_additional_parameters`` keys) that ask for GPUs by their name alone, and those that do
#: when their value names a GPU (``gres: gpu:1``, not ``gres: tmpfs:10G``)
_GPU_OPTIONS = ("gpus", "gpus_per_node", "gpus_per_task", "gpus_per_socket", "num_gpus",
                "mem_per_gpu", "cpus_per_gpu")  # fmt: skip
_GPU_IF_VALUE = ("gres", "tres_per_node", "tres_per_task", "tres_per_socket")


def _asks_for_gpus(key: object, value: object) -> bool:
    """Whether sbatch option ``key: value`` asks for GPUs (``gpu_bind``, ``gres_flags`` and
    ``gpu-freq`` only tune them)."""
    k = str(key).lower().replace("-", "_").removeprefix("slurm_")
    return k in _GPU_OPTIONS or (k in _GPU_IF_VALUE and "gpu" in str(value).lower())


def slurm_parameters(configs: Sequence[RunConfig], params: Mapping[str, Any]) -> dict[str, Any]:
    """The submitit parameters of the SLURM jobs of ``configs``: :data:`SLURM_DEFAULTS`, one GPU
    per job (``gpus_per_node: 1``) unless every run is ``device: cpu`` or ``params`` asks for GPUs
    itself (an option of :data:`_GPU_OPTIONS`, or a GPU ``gres``, also among
    ``slurm_additional_parameters``), then ``params``. Without the GPU a job's ``device: auto`` run
    would train on the node's CPU for days, silently."""
    base: dict[str, Any] = dict(SLURM_DEFAULTS)
    extra = params.get("slurm_additional_parameters")
    options = {**(extra if isinstance(extra, Mapping) else {}), **params}
    asked = any(_asks_for_gpus(k, v) for k, v in options.items())
    if any(c.device != "cpu" for c in configs) and not asked:
        base["gpus_per_node"] = 1
    return {**base, **params}


#: submitit parameters that are counts (of GPUs, CPUs, GB, minutes, nodes, jobs at a time)
COUNT_PARAMETERS = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes",
                    "tasks_per_node", "slurm_array_parallelism", "slurm_cpus_per_gpu",
                    "slurm_gpus_per_task", "slurm_num_gpus", "slurm_gpus_per_node")  # fmt: skip


def submitit_parameter_problems(params: Mapping[str, Any]) -> list[str]:
    """The keys of ``params`` that submitit's SLURM executor would refuse, and counts
    (:data:`COUNT_PARAMETERS`) that are not non-negative numbers: checked without a cluster, so
    that a typo fails a dry run on a laptop, not the submission on the cluster."""
    problems = [
        f"SLURM parameter {k} must be a non-negative number, got {v!r}"
        for k, v in params.items()
        if k in COUNT_PARAMETERS
        and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0)
    ]
    try:
        import submitit
        from submitit.slurm.slurm import SlurmExecutor

        valid = set(submitit.AutoExecutor._valid_parameters())
        valid |= {"slurm_" + k for k in SlurmExecutor._valid_parameters()}
    except Exception:  # pragma: no cover - submitit's private API moved: it checks at submission
        return problems
    return [str(unknown_name("SLURM (submitit) parameter", k, valid, limit=12)) for k in params
            if k not in valid] + problems  # fmt: skip


def preflight(
    configs: Sequence[RunConfig], executor: str = "local", slurm: Mapping[str, Any] | None = None
) -> list[str]:
    """What would make runs of ``configs`` fail before they train, found once for the grid
    instead of the same error from each run: :func:`grid_problems`, and for the executors that
    run on this host (``local``, ``submitit-local``) :func:`host_problems`. One message per
    problem (empty: none found)."""
    problems = grid_problems(configs, executor, slurm)
    if executor == "submitit-local" and sys.platform == "win32":
        # submitit's local jobs signal themselves with SIGCONT, which Windows lacks: every
        # job failed, reported as the path of its log
        problems.append("--executor submitit-local does not run on Windows (submitit's local "
                        "jobs need POSIX signals); use --executor local")  # fmt: skip
    return problems + (host_problems(configs) if executor != "slurm" else [])


def grid_problems(
    configs: Sequence[RunConfig], executor: str = "local", slurm: Mapping[str, Any] | None = None
) -> list[str]:
    """Problems of ``configs`` on any host (milliseconds: models are built on the meta device):
    a model that cannot take its data set; with ``slurm``, a misspelt submitit parameter."""
    from dctps.data import get_info
    from dctps.train.setup import model_shape

    problems: list[str] = []
    pairs: dict[tuple[str, str], list[RunConfig]] = {}
    for c in configs:
        pairs.setdefault((c.model.name, c.data.dataset), []).append(c)
    for (model, dataset), cs in sorted(pairs.items()):
        try:
            model_shape(cs[0], get_info(dataset))
        except DctpsError as e:
            problems.append(f"{e} ({len(cs)} run{'s' * (len(cs) > 1)} of model {model!r} on "
                            f"{dataset!r})")  # fmt: skip
    if executor == "slurm":
        problems += submitit_parameter_problems(slurm or {})
    return problems


def host_problems(configs: Sequence[RunConfig]) -> list[str]:
    """Problems of ``configs`` on this host: a missing data set, a ``cuda`` device without CUDA
    (a cluster's nodes may have the data and GPUs that the submitting host lacks)."""
    import torch

    from dctps.data import check_root

    problems = []
    for name, root in sorted({(c.data.dataset, c.data.root) for c in configs}, key=str):
        try:
            check_root(name, root)
        except DctpsError as e:
            problems.append(f"{e} (the sweep checks every data set before its first run: "
                            f"provide it, or leave data set {name!r} out of the grid)")  # fmt: skip
    cuda = sorted({c.device for c in configs if c.device.startswith("cuda")})
    if cuda and not torch.cuda.is_available():
        problems.append(
            no_cuda(
                f"device {', '.join(map(repr, cuda))}",
                "give device cpu or auto: --device, or the grid's device",
            )
        )
    return problems


def slurm_overrides(
    grid: Mapping[str, Any] | None, items: Iterable[str] = (), executor: str = "slurm"
) -> dict[str, Any]:
    """The grid's ``slurm:`` mapping with ``--slurm KEY=VALUE`` items (YAML values) over it;
    ``--slurm`` with another ``executor`` is refused (it would be ignored, typos and all)."""
    items = as_items(items, "slurm")
    if items and executor != "slurm":
        raise DctpsError(
            f"--slurm sets the SLURM jobs' parameters: it needs --executor slurm, not {executor!r}"
        )
    out = dict(grid or {})
    for item in items:
        key, value = parse_assignment(item, "--slurm", "a submitit parameter KEY=VALUE")
        out[key] = value
    return out


def dry_run_report(
    configs: Sequence[RunConfig], out: str | os.PathLike[str], db: str | os.PathLike[str] | None,
    retry_failed: bool, executor: str, workers: int | None, slurm: Mapping[str, Any],
    echo: Callable[[str], Any] = print, footer: str = "",
) -> None:  # fmt: skip
    """A sweep's ``--dry-run``: print the plan (:func:`describe_plan`), for ``slurm`` the jobs'
    submitit parameters, ``footer``, and what would stop the sweep on this host
    (:func:`host_problems`, as notes: the run may be meant for another host); then raise what
    :func:`run_sweep` would refuse on any host (:func:`grid_problems`, a bad ``workers``) rather
    than report a plan that cannot run."""
    planned = plan(configs, out, db, retry_failed)
    echo(describe_plan(planned, refusals_before_training([p.cfg for p in planned if p.runs])))
    todo = [p.cfg for p in planned if p.runs]
    if executor == "slurm" and todo:
        params = slurm_parameters(todo, slurm)
        echo("SLURM jobs (submitit parameters): "
             + ", ".join(f"{k}={v!r}" for k, v in params.items()))  # fmt: skip
    if footer:
        echo(footer)
    if todo and executor != "slurm":
        for problem in host_problems(todo):
            echo(f"note: on this host the sweep would stop before its first run: {problem}")
    check_workers(workers)
    problems = grid_problems(todo, executor, slurm) if todo else []
    if problems:
        raise DctpsError("the sweep would stop before its first run: " + "; ".join(problems))


def _older_note(n: int) -> str:
    """How a sweep counts its ``n`` runs that re-run an older dctps's record
    (:attr:`PlannedRun.older`)."""
    what = "re-runs a config" if n == 1 else "re-run configs"
    return (f"{n} of them {what} an older dctps recorded under another hash: a computation "
            "changed since (see the CHANGELOG); the old rows stay, marked recorded_by")  # fmt: skip


#: the identity keys each line of :func:`describe_plan` shows anyway
_PLAN_SHOWN = (
    "model.name", "data.dataset", "sparsity.method", "sparsity.density", "sparsity.rigl",
    "sparsity.offset", "sparsity.alpha", "sparsity.alpha_init", "sparsity.charge_alpha",
    "sparsity.allocation", "sparsity.options", "sparsity.train_alpha", "optim.recipe", "seed",
    "optim.epochs", "data.subset",
)  # fmt: skip


def describe_plan(planned: Sequence[PlannedRun], refusals: Mapping[str, str] | None = None) -> str:
    """The dry-run listing: one line per run (hash, action, summary) and a count line. A run in
    ``refusals`` (hash -> reason, :func:`refusals_before_training`) is listed as ``refused``,
    its reason on the next line: the sweep would report it as an error, with that reason."""
    from dctps.results.variants import NOT_A_VARIANT, flatten, named_differences, varying_keys

    refusals = refusals or {}
    lines = []
    # and the settings that tell apart runs whose lines would otherwise read alike but for
    # their seed and density (a variant's lr): grouped as `dctps results` groups its rows
    flats = [flatten(p.cfg.identity()) for p in planned]
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(flats):
        key = json.dumps([f.get(k) for k in _PLAN_SHOWN if k not in NOT_A_VARIANT], default=str)
        groups.setdefault(key, []).append(i)
    varying: dict[int, list[str]] = {}
    for members in groups.values():
        keys = varying_keys([flats[i] for i in members], shown=_PLAN_SHOWN)
        varying.update(dict.fromkeys(members, keys))
    for i, p in enumerate(planned):
        s = p.cfg.sparsity
        extra = f" allocation={s.allocation}" if s.allocation else ""
        extra += f" options={s.options}" if s.options else ""
        extra += "" if s.train_alpha else " fixed-alpha"
        extra += f" subset={p.cfg.data.subset}" if p.cfg.data.subset else ""
        extra += "".join(f" {d}" for d in named_differences(flats[i], varying[i]))
        why = refusals.get(p.hash) if p.runs else None
        action = "refused" if why is not None else p.action
        lines.append(f"{p.hash}  {action:<11} {p.cfg.summary()} epochs={p.cfg.optim.epochs}"
                     + extra)  # fmt: skip
        if why is not None:
            lines.append(f"    {why}")
        elif p.older:
            lines.append(f"    re-runs {p.older}, recorded by an older dctps")
    n = sum(p.runs for p in planned)
    r = sum(1 for p in planned if p.runs and p.hash in refusals)
    count = f"{len(planned)} runs, {n - r} to train, {len(planned) - n} skipped"
    again = sum(1 for p in planned if p.older and p.hash not in refusals)
    if again:
        count += f" ({_older_note(again)})"
    if r:
        how = "them as errors" if r > 1 else "it as an error"
        count += f", {r} refused (the sweep would report {how})"
    lines.append(count)
    return "\n".join(lines)


def refusals_before_training(configs: Sequence[RunConfig]) -> dict[str, str]:
    """The runs among ``configs`` that ``dctps train`` refuses before training, found as it
    finds them: hash -> the refusal.

    - DCTpS runs, on the meta device (:func:`dctps.train.setup.check_budget_on_meta`, once a
      setting for all its seeds): a density whose budget cannot pay for per-channel alphas, an
      ``exclude`` that matches no layer;
    - RigL runs whose schedule would never update the supports (:func:`check_rigl_schedule`),
      with the steps of one process on the data set's official sizes
      (:func:`dctps.train.setup.train_steps`; ``torchrun``'s shards give fewer).

    A model that cannot take its data set is left to :func:`grid_problems` (it stops the whole
    sweep)."""
    from dctps.data import get_info
    from dctps.train import setup as su

    out: dict[str, str] = {}
    seen: dict[str, str | None] = {}  # a refusal never depends on the seed: one build a setting
    for c in configs:
        if c.sparsity.rigl:
            try:
                su.check_rigl_schedule(c, su.train_steps(c))
            except DctpsError as e:
                out[c.config_hash()] = str(e)
                continue
        if c.sparsity.method != "dctps":
            continue
        setting = json.dumps({**c.to_dict(), "seed": None}, sort_keys=True, default=str)
        if setting in seen:
            why = seen[setting]
            if why is not None:
                out[c.config_hash()] = why
            continue
        seen[setting] = None
        try:
            model = su.model_shape(c, get_info(c.data.dataset))
        except Exception:  # left to grid_problems
            continue
        try:
            su.check_budget_on_meta(model, c)
        except DctpsError as e:
            out[c.config_hash()] = seen[setting] = str(e)
    return out


# ----------------------------------------------------------------------------- CLI
def cli_overrides(
    data_root: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
    sets: Iterable[str] = (),
) -> dict[str, Any]:
    """The override dict of the common sweep/figure flags (``--set`` last, so it wins)."""
    o: dict[str, Any] = {}
    if data_root:
        o = _merge(o, {"data": {"root": str(data_root)}})
    if epochs is not None:
        o = _merge(o, {"optim": {"epochs": epochs}})
    if device:
        o = _merge(o, {"device": device})
    return _merge(o, apply_sets(sets))


def sweep_command(
    config: str,
    out: str = "results",
    db: str | None = None,
    workers: int | None = None,
    executor: str = "local",
    retry_failed: bool = False,
    dry_run: bool = False,
    data_root: str | None = None,
    epochs: int | None = None,
    device: str | None = None,
    sets: Sequence[str] = (),
    wait: bool = True,
    quiet: bool = False,
    echo: Callable[[str], Any] = print,
    slurm: Sequence[str] = (),
    threads: int = 0,
) -> SweepReport | None:
    """``dctps sweep``: expand ``config``, then print the plan (dry run) or run it."""
    if executor not in EXECUTORS:  # also on a dry run, which would otherwise accept a typo
        raise unknown_name("executor", executor, EXECUTORS)
    check_workers(workers)  # before a dry run's plan is printed
    check_threads(threads, here=executor != "slurm")
    grid = load_grid(config)
    configs = expand_grid(grid, str(config), cli_overrides(data_root, epochs, device, sets))
    params = slurm_overrides(grid.get("slurm"), slurm, executor)
    if dry_run:
        dry_run_report(configs, out, db, retry_failed, executor, workers, params, echo)
        return None
    report = run_sweep(
        configs, out, db=db, executor=executor, workers=workers, retry_failed=retry_failed,
        progress=not quiet, slurm=params, wait=wait, threads=threads,
    )  # fmt: skip
    from dctps.train.distributed import reporting_rank

    if reporting_rank():  # under torchrun every rank ran the same sweep: one summary
        echo(report.summary())
    return report
