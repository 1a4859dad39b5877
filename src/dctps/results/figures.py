"""One spec per figure of the paper's supplement (and the main paper's density sweeps).

A training figure is a grid (the same YAML format as ``dctps sweep``, see
:mod:`dctps.results.sweep`; ``configs/<name>.yaml`` holds each one for editing) and a plot that
reads only the results store, restricted to the runs of that grid. ``dctps figure NAME`` runs the
grid (skipping what is done, resuming what crashed) and draws it; ``--quick`` shrinks it so it runs
on a CPU in minutes (densities 1% and 0.1%, one seed, short pruning schedules; LeNet-5 gets 2
epochs on 2,000 training images, the larger networks 1 epoch on 256). ``A.2`` and ``C.10`` train
nothing: they draw per-layer budgets.

``offsets`` goes beyond the paper: the offset variants of :mod:`dctps.offsets` and per-channel /
Kaiming-scaled alphas, at equal trainable parameters (non-zeros + alphas), on LeNet-5 (BN-free)
and ResNet18 (BN) on CIFAR-10; see ``docs/results/offsets.md``.

A figure run with other models or data sets (``--model``, ``--dataset``, an edited ``--config``
grid, ``--set model.name=...``) or with a setting its paper version fixes changed (A.4/A.5's SGD
recipe) is not the paper's figure: its title names what ran plus a line saying what differs, and
its file name gets a suffix naming it (:class:`Setup`).

Labels: the DCTpS paper's "FORCE" is Iter-SNIP (``iter_snip``, see ``docs/BASELINES.md``); the
published FORCE (``force``) is drawn as an extra curve where the grid has it.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from dctps.errors import DctpsError, PruningFailed, check_threads, unknown_name, user_path
from dctps.pruning import canonical_options
from dctps.results.plots import (
    METHOD_LABELS,
    FigureData,
    check_figure_path,
    dctps_setting_parts,
    default_label,
    display_name,
    fixed_alpha_label,
    panel_title,
    plot_allocation_panels,
    plot_runs,
    write_json,
)
from dctps.results.store import older_records
from dctps.results.sweep import (
    EXECUTORS,
    _merge,
    cli_overrides,
    dry_run_report,
    expand_grid,
    load_grid,
    parse_density,
    run_sweep,
    set_dotted,
    slurm_overrides,
)
from dctps.results.variants import flat_value, flatten
from dctps.train.config import ModelConfig, RunConfig

__all__ = [
    "FIGURES",
    "FigureSpec",
    "Setup",
    "draw",
    "figure_configs",
    "figure_grid",
    "figure_setup",
    "get",
    "grid_yaml",
    "list_figures",
    "names",
    "paper_pairs",
    "quick_grid",
    "run_figure",
    "synflow_allocation",
]

SEEDS = [0, 1, 2]
DENSITIES = [0.1, 0.05, 0.01, 0.001, 0.0001]  # 10%, 5%, 1%, 0.1%, 0.01%
# The main paper's methods: PaI baselines, RigL on a masked ERK net, DCTpS(+RigL), and the
# published FORCE as an extra curve.
MAIN_METHODS: list[Any] = [
    "dense", "dctps", "random", "snip", "iter_snip", "synflow",
    {"method": "random", "rigl": True}, {"method": "dctps", "rigl": True}, "force",
]  # fmt: skip
SGD_METHODS: list[Any] = ["dense", "dctps", "random", "snip", "iter_snip"]  # A.4/A.5 (no SynFlow)
CIFAR = ["cifar10", "cifar100"]
# Offsets and alpha scalings (docs/results/offsets.md). Per-channel alphas charged to the budget
# fit only where every layer's budget holds out - 1 extra alphas: at 1% (LeNet-5's 120-channel
# conv has a budget of 123 there, 12 at 0.1%), so that entry runs at 1% only; the uncharged entry
# (out - 1 more trainable scalars per layer) runs everywhere and is labelled "+alphas".
OFFSET_METHODS: list[Any] = [
    "dense", "dctps",
    {"method": "dctps", "offset": "dct_signflip"},
    {"method": "dctps", "offset": "dct_permuted"},
    {"method": "dctps", "offset": "hadamard"},
    {"method": "dctps", "offset": "gaussian"},
    {"method": "dctps", "alpha": "channel", "densities": [0.01]},
    {"method": "dctps", "alpha": "channel", "charge_alpha": False},
    {"method": "dctps", "alpha_init": "kaiming"},
]  # fmt: skip
BIG = ["resnet50", "vgg19"]
SGD_CLAIMS = (("optim.optimizer", "sgd"),)  # A.4/A.5's titles say "SGD with momentum"

# --quick: the run shrinks, the figure's structure stays. Sizes are per model, so that a quick
# figure takes minutes on one CPU core: LeNet-5 (0.65 MFLOPs an image) affords 2 epochs of 2,000
# images in ~10 s a run; the CIFAR ResNets/VGG/MobileNet (90-1,300 MFLOPs) get 1 epoch of 256
# images, ~15-40 s a run (ResNet18: 18 s measured, 1 thread), instead of ~2 minutes at 2,000.
QUICK_EPOCHS = 2
QUICK_SUBSET = 2000
QUICK_SMALL_MODELS = frozenset({"lenet5"})
QUICK_LARGE_EPOCHS = 1
QUICK_LARGE_SUBSET = 256
QUICK_DENSITIES = [0.01, 0.001]
QUICK_SEEDS = [0]
QUICK_OPTIONS: dict[str, dict[str, Any]] = {
    "iter_snip": {"steps": 5, "num_batches": 1},
    "force": {"steps": 5, "num_batches": 1},
    "synflow": {"iterations": 10},
    "snip": {"num_batches": 1},
    "grasp": {"num_batches": 1},
}
QUICK_RIGL_DELTA_T = 4
# A large model's quick run is 2 steps (256 images, batch 128): RigL can update only at step 1,
# and only if it may update until the end (a review: with delta_t 4 every quick RigL run of
# ResNet18/50, VGG19 and MobileNetV2 was refused, "RigL would never update the supports")
QUICK_LARGE_RIGL = {"rigl_delta_t": 1, "rigl_t_end": 1.0}


@dataclass(frozen=True)
class FigureSpec:
    """A figure: its training grid (``None`` when it trains nothing), title, curve labels.

    ``title`` is a template: ``{what}`` (the (model, data set) pairs drawn, e.g. ``ResNet18,
    CIFAR-10``), ``{models}``, ``{datasets}`` and ``{optimizer}`` are filled in from the runs
    actually drawn (:meth:`Setup.title`). ``claims``: resolved run fields (dotted, e.g.
    ``optim.optimizer``) the title names; with the grid's ``base`` they are the settings whose
    change makes the figure not the paper's.

    ``allocation``: for figures without training, ``fn(pairs, densities, quick) -> panels``
    with ``pairs`` the (model, data set) pairs and panels ``(title, {label: counts per layer})``.
    """

    name: str
    description: str
    title: str
    grid: Mapping[str, Any] | None = None
    label: Callable[[Mapping[str, Any]], str] = default_label
    allocation: Callable[..., list[tuple[str, dict[str, list[int]]]]] | None = None
    pairs: tuple[tuple[str, str], ...] = ()  # allocation figures: default (model, data set) pairs
    densities: tuple[float, ...] = ()  # allocation figures: default densities
    claims: tuple[tuple[str, Any], ...] = ()  # (dotted run field, the paper's value)


# ----------------------------------------------------------------------------- labels
def _alloc_label(cfg: Mapping[str, Any]) -> str:
    s = cfg.get("sparsity", {})
    if s.get("method") != "dctps":
        return default_label(cfg)
    a = s.get("allocation") or "epl"
    return f"DCTpS ({a.upper() if a != 'uniform' else 'uniform'})"


def _alpha_label(cfg: Mapping[str, Any]) -> str:
    s = cfg.get("sparsity", {})
    if s.get("method") != "dctps":
        return default_label(cfg)
    if s.get("train_alpha", True):
        return "DCTpS, trainable α"
    return "DCTpS, " + fixed_alpha_label(s.get("alpha_init", 1.0))


def _offset_label(cfg: Mapping[str, Any]) -> str:
    s = cfg.get("sparsity", {})
    if s.get("method") != "dctps":
        return default_label(cfg)
    parts = dctps_setting_parts(s)
    if s.get("train_alpha") is False:
        parts.append("fixed α")
    return "DCTpS, " + ", ".join(parts) if parts else "DCTpS (dct, paper)"


# ----------------------------------------------------------------------------- allocation figures
def _info(dataset: str) -> Any:
    from dctps import data

    return data.get_info(dataset)


def _a2_panels(pairs: Sequence[tuple[str, str]], densities: Sequence[float], quick: bool
               ) -> list[tuple[str, dict[str, list[int]]]]:  # fmt: skip
    from dctps.budgets_report import budget_rows

    out = []
    for model, dataset in pairs:
        k = _info(dataset).num_classes
        for d in densities:
            series = {a.upper(): [r.nonzeros for r in budget_rows(model, d, a, k)]
                      for a in ("epl", "epf")}  # fmt: skip
            out.append((f"{panel_title(model, dataset)} ({k} classes), density {100 * d:g}%",
                        series))  # fmt: skip
    return out


def synflow_allocation(
    model: str, dataset: str, density: float, iterations: int = 100, seed: int = 0
) -> dict[str, Any]:
    """Prune a freshly initialised ``model`` (for ``dataset``'s classes and image size) with
    SynFlow and count the non-zeros per prunable layer, beside EPL's budgets (Figure C.10).

    Returns ``{"layers": names, "SynFlow": counts or None, "EPL": counts, "reason": None or why
    SynFlow failed}``.
    """
    import torch

    from dctps import models, pruning
    from dctps.allocation import budgets
    from dctps.sparsify import prunable_layers

    info = _info(dataset)
    with torch.random.fork_rng(devices=[]):  # seeded, and the caller's stream left alone
        torch.random.default_generator.manual_seed(seed)
        net = models.build(model, num_classes=info.num_classes, in_channels=info.in_channels,
                           image_size=info.image_size)  # fmt: skip
    layers = list(prunable_layers(net))
    epl = budgets([s for _, _, s in layers], density, "epl")
    out: dict[str, Any] = {"layers": [n for n, _, _ in layers], "EPL": [int(c) for c in epl],
                           "SynFlow": None, "reason": None}  # fmt: skip
    try:
        pruning.prune(net, density, "synflow", iterations=iterations,
                      input_shape=(info.in_channels, info.image_size, info.image_size))  # fmt: skip
    except PruningFailed as e:
        out["reason"] = str(e)
        return out
    mods = dict(net.named_modules())
    out["SynFlow"] = [int(mods[n].weight_mask.sum()) for n in out["layers"]]
    return out


def _c10_panels(pairs: Sequence[tuple[str, str]], densities: Sequence[float], quick: bool
                ) -> list[tuple[str, dict[str, list[int]]]]:  # fmt: skip
    out = []
    for model, dataset in pairs:
        for d in densities:
            r = synflow_allocation(model, dataset, d, iterations=10 if quick else 100)
            title = (f"{panel_title(model, dataset)} ({_info(dataset).num_classes} classes), "
                     f"density {100 * d:g}%")  # fmt: skip
            series = {"EPL": r["EPL"]}
            if r["SynFlow"] is None:
                title += f"\nSynFlow failed: {r['reason'][:60]}"
            else:
                series = {"SynFlow": r["SynFlow"], "EPL": r["EPL"]}
            out.append((title, series))
    return out


# ----------------------------------------------------------------------------- the figures
def _grid(
    models: list[str],
    datasets: list[str],
    methods: list[Any],
    base: dict[str, Any] | None = None,
    densities: list[float] | None = None,
    description: str = "",
) -> dict[str, Any]:
    return {
        "description": description,
        "base": base or {},
        "models": models,
        "datasets": datasets,
        "methods": methods,
        "densities": list(densities or DENSITIES),
        "seeds": list(SEEDS),
    }


def _specs() -> dict[str, FigureSpec]:
    specs = [
        FigureSpec(
            "A.1", "Tiny ImageNet, ResNet18: DCTpS vs SynFlow, FORCE (paper's = Iter-SNIP) and "
            "the published FORCE (validation accuracy)",
            "Figure A.1: DCTpS vs SynFlow and FORCE, {datasets}",
            _grid(["resnet18"], ["tiny_imagenet"], ["dense", "dctps", "synflow", "iter_snip",
                                                    "force"],
                  densities=[0.05, 0.01, 0.005, 0.001, 0.0005, 0.0001]),
        ),
        FigureSpec(
            "A.2", "EPL vs EPF: trainable weights per layer, ResNet50 and VGG19, 10 classes "
            "(no training)",
            "Figure A.2: EPL vs EPF per-layer budgets",
            allocation=_a2_panels, pairs=(("resnet50", "cifar10"), ("vgg19", "cifar10")),
            densities=(0.01,),
        ),
        FigureSpec(
            "A.3", "EPL vs EPF accuracy of DCTpS networks, ResNet50/VGG19 on CIFAR-10/100",
            "Figure A.3: EPL vs EPF (DCTpS)",
            _grid(BIG, CIFAR, ["dense", {"method": "dctps", "allocation": "epl"},
                               {"method": "dctps", "allocation": "epf"}]),
            label=_alloc_label,
        ),
        FigureSpec(
            "A.4", "SGD recipe: ResNet50/VGG19 on CIFAR-10/100 (dense, DCTpS, random, SNIP, "
            "FORCE = Iter-SNIP)",
            "Figure A.4: {optimizer}, {models}",
            _grid(BIG, CIFAR, SGD_METHODS, base={"optim": {"recipe": "sgd"}}),
            claims=SGD_CLAIMS,
        ),
        FigureSpec(
            "A.5", "SGD recipe: MobileNetV2 and FixupResNet110 on CIFAR-10 (FORCE cannot prune "
            "Fixup: drawn at chance)",
            "Figure A.5: {optimizer}, {models}",
            _grid(["mobilenetv2", "fixup_resnet110"], ["cifar10"], SGD_METHODS,
                  base={"optim": {"recipe": "sgd"}}),
            claims=SGD_CLAIMS,
        ),
        FigureSpec(
            "A.6", "Trainable vs fixed alpha (--fixed-alpha), ResNet50/VGG19 on CIFAR-10/100",
            "Figure A.6: trainable vs fixed α",
            _grid(BIG, CIFAR, ["dense", "dctps", {"method": "dctps", "train_alpha": False}]),
            label=_alpha_label,
        ),
        FigureSpec(
            "A.7", "Layer-wise budgets uniform/EPL/EPF/ERK for DCTpS, ResNet50/VGG19 on "
            "CIFAR-10/100",
            "Figure A.7: uniform vs EPL vs EPF vs ERK (DCTpS)",
            _grid(BIG, CIFAR, ["dense"] + [{"method": "dctps", "allocation": a}
                                           for a in ("uniform", "epl", "epf", "erk")]),
            label=_alloc_label,
        ),
        FigureSpec(
            "C.10", "SynFlow's per-layer non-zeros beside EPL's budgets (ResNet50, VGG19, "
            "ResNet18, MobileNetV2; no training)",
            "Figure C.10: SynFlow's allocation vs EPL",
            allocation=_c10_panels,
            pairs=(("resnet50", "cifar10"), ("vgg19", "cifar100"), ("resnet18", "tiny_imagenet"),
                   ("mobilenetv2", "cifar10")),
            densities=(0.01, 0.001),
        ),
    ]  # fmt: skip
    for model, dataset in DENSITY_SWEEPS:
        specs.append(
            FigureSpec(
                f"density-{model}-{dataset}",
                f"Main paper: accuracy vs density, {panel_title(model, dataset)} (all methods)",
                "Accuracy vs density: {what}",
                _grid([model], [dataset], MAIN_METHODS),
            )
        )
    specs.append(
        FigureSpec(
            "offsets",
            "Beyond the paper: offsets (dct, sign flips, permuted, Hadamard, Gaussian) and α "
            "per channel / Kaiming init at equal trainable parameters, LeNet-5 and ResNet18 on "
            "CIFAR-10",
            "Offsets and α scalings at equal trainable parameters (non-zeros + alphas)",
            _grid(["lenet5", "resnet18"], ["cifar10"], OFFSET_METHODS,
                  densities=[0.01, 0.001, 0.0001],
                  description="offset variants and alpha scalings"),
            label=_offset_label,
        )
    )  # fmt: skip
    return {s.name: s for s in specs}


DENSITY_SWEEPS = (
    ("lenet5", "cifar10"), ("resnet18", "cifar10"), ("resnet18", "cifar100"),
    ("resnet50", "cifar10"), ("resnet50", "cifar100"), ("vgg19", "cifar10"), ("vgg19", "cifar100"),
    ("mobilenetv2", "cifar10"), ("mobilenetv2", "cifar100"), ("fixup_resnet110", "cifar10"),
)  # fmt: skip
FIGURES: dict[str, FigureSpec] = _specs()


def names() -> list[str]:
    """Figure names in display order."""
    return list(FIGURES)


def get(name: str) -> FigureSpec:
    """The :class:`FigureSpec` called ``name``; :class:`DctpsError` if there is none."""
    if name not in FIGURES:
        raise unknown_name("figure", name, FIGURES)
    return FIGURES[name]


def list_figures() -> str:
    """One line per figure: name and description."""
    w = max(len(n) for n in FIGURES)
    return "\n".join(f"{n:<{w}}  {s.description}" for n, s in FIGURES.items())


# ----------------------------------------------------------------------------- grids
def quick_size(model: str) -> tuple[int, int]:
    """``(epochs, training subset)`` of a ``--quick`` run of ``model`` (see ``QUICK_*``)."""
    if model in QUICK_SMALL_MODELS:
        return QUICK_EPOCHS, QUICK_SUBSET
    return QUICK_LARGE_EPOCHS, QUICK_LARGE_SUBSET


def quick_grid(grid: Mapping[str, Any]) -> dict[str, Any]:
    """The ``--quick`` version of a grid (module doc): same models, data sets and methods.

    Epochs and data subset depend on the model (:func:`quick_size`): they go into ``base`` when
    every model of the grid has the same quick size; otherwise :func:`figure_configs` splits the
    grid by size, so expand a quick grid of mixed models with that function.
    """
    g = copy.deepcopy(dict(grid))
    sizes = _models_by_quick_size(g)
    g["densities"] = list(QUICK_DENSITIES)
    g["seeds"] = list(QUICK_SEEDS)
    methods = []
    for m in g.get("methods", []):
        entry: dict[str, Any] = {"method": m} if isinstance(m, str) else dict(m)
        own = entry.pop("densities", None)
        if own is not None:  # a method restricted to some densities keeps those of the quick run
            keep = [d for d in own if parse_density(d) in QUICK_DENSITIES]
            if keep:
                entry["densities"] = keep
        opts = QUICK_OPTIONS.get(entry["method"])
        if opts:
            entry["options"] = {**dict(entry.get("options") or {}), **opts}
        if entry.get("rigl"):
            entry["rigl_delta_t"] = QUICK_RIGL_DELTA_T
        methods.append(entry if len(entry) > 1 else entry["method"])
    g["methods"] = methods
    g["description"] = (g.get("description") or "") + " (quick)"
    if len(sizes) == 1:
        ((epochs, subset),) = sizes
        g = _sized(g, epochs, subset)
    return g


def _sized(grid: Mapping[str, Any], epochs: int, subset: int) -> dict[str, Any]:
    """A quick ``grid`` at one quick size: its epochs and subset in ``base``, and for a large
    model's size the RigL schedule its two steps allow (``QUICK_LARGE_RIGL``)."""
    g = dict(grid)
    g["base"] = _merge(g.get("base") or {}, _size_override(epochs, subset))
    if (epochs, subset) == (QUICK_LARGE_EPOCHS, QUICK_LARGE_SUBSET):
        g["methods"] = [
            {**m, **QUICK_LARGE_RIGL} if isinstance(m, Mapping) and m.get("rigl") else m
            for m in g.get("methods", [])
        ]
    return g


def figure_grid(
    name: str,
    quick: bool = False,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    densities: Sequence[float] | None = None,
    seeds: int | Sequence[int] | None = None,
    grid: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The grid of figure ``name`` (quick or full), with the lists replaced where given.

    ``grid``: use this grid (e.g. an edited ``configs/<name>.yaml``) instead of the built-in one.
    """
    spec = get(name)
    if spec.grid is None:
        raise DctpsError(f"figure {name} trains nothing (it draws per-layer budgets)")
    g: dict[str, Any] = {"name": name, "description": spec.description}
    g.update({k: copy.deepcopy(v) for k, v in (grid or spec.grid).items() if k not in g})
    # one name given as a string is a list of one: list("lenet5") asked for model 'l'
    models, datasets = _one_is_a_list(models), _one_is_a_list(datasets)
    densities = _one_is_a_list(densities)
    if models:
        g["models"] = list(models)
    if datasets:
        g["datasets"] = list(datasets)
    if quick:
        g = quick_grid(g)
    if densities:
        g["densities"] = list(densities)
        g["methods"] = [({k: v for k, v in m.items() if k != "densities"} if isinstance(m, dict)
                         else m) for m in g["methods"]]  # fmt: skip
    if seeds is not None:
        g["seeds"] = seeds if isinstance(seeds, int) else list(seeds)
    return g


def _one_is_a_list(value: Any) -> Any:
    """``[value]`` for a single string or number, else ``value`` as it is."""
    one = isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return [value] if one else value


def figure_configs(name: str, overrides: Mapping[str, Any] | None = None, **kw: Any
                   ) -> list[RunConfig]:  # fmt: skip
    """The resolved run configs of figure ``name`` (:func:`figure_grid` options in ``kw``).

    A quick grid whose models have different quick sizes is expanded one size group at a time
    (models in grid order within each group); ``overrides`` still win over the quick sizes.
    """
    g = figure_grid(name, **kw)
    if not kw.get("quick"):
        return expand_grid(g, f"figure {name}", overrides)
    configs: list[RunConfig] = []
    for (epochs, subset), group in _models_by_quick_size(g).items():
        configs += expand_grid(_sized(dict(g, models=group), epochs, subset), f"figure {name}",
                               overrides)  # fmt: skip
    return configs


def _models_by_quick_size(grid: Mapping[str, Any]) -> dict[tuple[int, int], list[str]]:
    """The grid's models (default: ``ModelConfig``'s) grouped by :func:`quick_size`, in order."""
    models = grid.get("models") or [ModelConfig().name]
    groups: dict[tuple[int, int], list[str]] = {}
    for m in models if isinstance(models, (list, tuple)) else [models]:
        groups.setdefault(quick_size(m), []).append(m)
    return groups


def _size_override(epochs: int, subset: int) -> dict[str, Any]:
    return {"optim": {"epochs": epochs}, "data": {"subset": subset}}


def grid_yaml(
    name: str,
    quick: bool = False,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    densities: Sequence[float] | None = None,
    seeds: int | None = None,
    config: str | Path | None = None,
    run_flags: Sequence[str] = (),
) -> str:
    """The grid of figure ``name`` as sweep YAML: the full one (what ``configs/<name>.yaml``
    holds), or with the same ``quick`` / list replacements / ``config`` grid as
    :func:`run_figure` takes, so that it prints what ``dctps figure`` with those flags runs.

    ``run_flags`` (e.g. ``["--epochs", "2", "--set", "optim.lr=0.01"]``) apply on top of every
    run of the grid, in ``dctps sweep`` as in ``dctps figure``; the YAML does not hold them, so
    the comment lines that say how to run and draw the grid repeat them.

    A grid that is not the paper's figure (other models or data sets, see :class:`Setup`) gets a
    description naming what it runs, and the comment lines say how to run and draw this grid, not
    ``configs/<name>.yaml``."""
    grid = load_grid(config) if config else None
    g = figure_grid(name, quick, models, datasets, densities, seeds, grid=grid)
    sizes = _models_by_quick_size(g) if quick else {}
    if len(sizes) > 1:  # quick sizes differ by model: one YAML base cannot hold them
        listed = "; ".join(
            f"{', '.join(ms)}: {e} epochs, {n} images" for (e, n), ms in sizes.items()
        )
        raise DctpsError(
            f"the quick grid of figure {name} mixes models of different quick sizes ({listed}), "
            "which one sweep YAML cannot hold (its runs would train at full size): run `dctps "
            f"figure {name} --quick` itself, or print one size group with --model"
        )
    configs = figure_configs(name, quick=quick, models=models, datasets=datasets,
                             densities=densities, seeds=seeds, grid=grid)  # fmt: skip
    setup = figure_setup(name, configs, quick=quick)
    if not setup.is_paper:
        title, changed = setup.title().split("\n", 1)
        g["description"] = f"{title}{' (quick)' if quick else ''} — {changed}"
    if quick or models or datasets or densities or seeds is not None or config:
        flags = "".join(
            [" --quick"] * quick + [f" --model {m}" for m in models or ()]
            + [f" --dataset {d}" for d in datasets or ()]
            + [f" --density {d:g}" for d in densities or ()]
            + ([f" --seeds {seeds}"] if seeds is not None else [])
        )  # fmt: skip
        src, save = "grid.yaml", "save this as grid.yaml, then: "
    else:
        src, flags, save = f"configs/{name}.yaml", "", ""
    extra = "".join(f" {shlex.quote(str(f))}" for f in run_flags)
    root = "" if "--data-root" in run_flags else " --data-root DIR"
    head = (f"# Figure {name}: {g['description']}\n"
            f"# Run: {save}dctps sweep {src}{root}{extra} [--workers N] [--executor slurm]\n"
            f"# Draw: dctps figure {name} --config {src}{flags}{extra} --plot-only\n")  # fmt: skip
    return head + yaml.safe_dump(g, sort_keys=False, allow_unicode=True, width=100)


# ----------------------------------------------------------------------------- what a figure shows
Pair = tuple[str, str]
OPTIMIZER_NAMES = {"sgd": "SGD", "adam": "Adam"}


def paper_pairs(name: str) -> list[Pair]:
    """The (model, data set) pairs of the paper's figure ``name``, in grid order."""
    spec = get(name)
    if spec.grid is None:
        return list(spec.pairs)
    return [(m, d) for m in spec.grid["models"] for d in spec.grid["datasets"]]


def _unique(items: Any) -> list[Any]:
    return list(dict.fromkeys(items))


def _and(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _split(pairs: Sequence[Pair]) -> tuple[list[str], list[str], bool]:
    """The pairs' models and data sets (in order), and whether the pairs are all their products."""
    ms, ds = _unique(m for m, _ in pairs), _unique(d for _, d in pairs)
    return ms, ds, len(set(pairs)) == len(ms) * len(ds)


def _field(cfg: RunConfig, dotted: str) -> Any:
    value: Any = cfg.to_dict()
    for key in dotted.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _field_default(dotted: str) -> Any:
    """The dataclass default of ``RunConfig`` field ``dotted`` (``None`` where it has none)."""
    cls: Any = RunConfig
    value: Any = None
    for part in dotted.split("."):
        fields = (
            {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
        )
        if part not in fields:
            return None
        f = fields[part]
        if f.default is not dataclasses.MISSING:
            value = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
        cls = type(value)
    return value


#: ``(setting, what follows from it)``: a changed recipe brings its own optimizer settings, Adam
#: has no momentum, milestones are fractions of the epochs; the title names the cause only
_EXPLAINS = (
    ("optim.recipe", "optim."),
    ("optim.optimizer", "optim.momentum"),
    ("optim.epochs", "optim.milestones"),
)


@dataclass
class Setup:
    """What a figure shows: the (model, data set) ``pairs`` drawn and the runs behind them
    (none for the figures that train nothing), set against the paper's figure ``name``.

    Use :func:`figure_setup` to build one.
    """

    name: str
    pairs: list[Pair]
    configs: list[RunConfig] = field(default_factory=list)
    quick: bool = False

    @cached_property
    def _grid_lists(self) -> list[tuple[str, list[Any], list[Any]]]:
        """``(what, the paper's figure's values, the runs' values)`` for the sparse densities
        and the seeds (of the quick figure when :attr:`quick`): lists the grid sets, which
        ``--density`` and ``--seeds`` replace."""
        if not self.configs or get(self.name).grid is None:
            return []
        ref = figure_configs(self.name, quick=self.quick)

        def densities(cs: Sequence[RunConfig]) -> list[Any]:
            return sorted({c.sparsity.density for c in cs if c.sparsity.method != "dense"},
                          key=lambda d: -float(d or 0))  # fmt: skip

        def seeds(cs: Sequence[RunConfig]) -> list[Any]:
            return sorted({c.seed for c in cs})

        return [(what, f(ref), f(self.configs))
                for what, f in (("density", densities), ("seeds", seeds))]  # fmt: skip

    def _fixed(self) -> list[tuple[str, Any, list[Any]]]:
        """``(field, the paper's value, the values of the runs)`` of each setting the paper's
        figure fixes (its grid's ``base`` and the title's ``claims``)."""
        spec = get(self.name)
        fixed = flatten((spec.grid or {}).get("base") or {}, atomic=())
        fixed.update(dict(spec.claims))
        if not self.configs:
            return []
        return [
            (k, v, _unique(flat_value(_field(c, k)) for c in self.configs))
            for k, v in fixed.items()
        ]

    def changes(self) -> list[str]:
        """What differs from the paper's figure, e.g. ``['data set cifar10 -> digits']``; empty
        for the paper's figure itself."""
        ref = paper_pairs(self.name)
        out = []
        if set(self.pairs) != set(ref):
            rm, rd, _ = _split(ref)
            am, ad, _ = _split(self.pairs)
            if set(am) != set(rm):
                out.append(f"model {', '.join(rm)} → {', '.join(am)}")
            if set(ad) != set(rd):
                out.append(f"data set {', '.join(rd)} → {', '.join(ad)}")
            if set(am) == set(rm) and set(ad) == set(rd):
                out.append("(model, data set) " + ", ".join("/".join(p) for p in ref) + " → "
                           + ", ".join("/".join(p) for p in self.pairs))  # fmt: skip
        for key, want, got, is_list in self._changed():
            out.append(f"{key} {_listed(want, is_list)} → {_listed(got, is_list)}")
        return out

    def _changed(self) -> list[tuple[str, list[Any], list[Any], bool]]:
        """``(setting, the paper's values, the runs' values, is a grid list)`` of every fixed
        setting (:meth:`_fixed`), grid list (:attr:`_grid_lists`) and other run setting
        (:meth:`_overridden`) that the runs change."""
        fixed = [(k, [want], got, False) for k, want, got in self._fixed() if got != [want]]
        lists = [(k, want, got, True) for k, want, got in self._grid_lists if got != want]
        return fixed + lists + [(k, want, got, False) for k, want, got in self._overridden]

    @cached_property
    def _overridden(self) -> list[tuple[str, list[Any], list[Any]]]:
        """``(setting, the figure's values, the runs' values)`` of each setting of the runs'
        identity (:meth:`RunConfig.identity`) whose values differ from those of the runs that
        the figure itself trains for the same models, data sets, densities and seeds: what
        ``--set``, ``--epochs`` or a ``--config`` grid changed (``--set optim.lr=0.01`` made a
        figure titled and filed as the paper's). Settings that :meth:`_fixed` and the grid lists
        cover are left to them, and settings that follow another changed one (:data:`_EXPLAINS`)."""
        if not self.configs or get(self.name).grid is None:
            return []
        ms, ds, _ = _split(self.pairs)
        lists = {k: got for k, want, got in self._grid_lists if got != want}

        def trained(override: Mapping[str, Any] | None = None) -> list[RunConfig]:
            """What the figure trains for the runs' models, data sets, densities and seeds."""
            return figure_configs(
                self.name, override, quick=self.quick, models=ms, datasets=ds,
                densities=[float(d) for d in lists["density"]] if "density" in lists else None,
                seeds=lists.get("seeds"),
            )  # fmt: skip

        try:
            ref = trained()
        except DctpsError:  # e.g. a --config grid's model the built-in grid cannot take
            return []
        skip = {"model.name", "data.dataset", "sparsity.density", "seed"}
        skip |= {k for k, _, _ in self._fixed()}

        def values(cs: Sequence[RunConfig]) -> dict[str, list[str]]:
            # a field left out of the identity at its default (`fused`) counts as that default,
            # so that None only ever means "does not apply" (snip's allocation)
            flats = [flatten(c.identity()) for c in cs]
            keys = set().union(*flats)
            return {k: sorted({json.dumps(f[k] if k in f else _field_default(k), sort_keys=True)
                               for f in flats}) for k in keys}  # fmt: skip

        got, want = values(self.configs), values(ref)

        def shown(vals: dict[str, list[str]], k: str) -> list[Any]:
            # a None beside values is a method the setting does not apply to
            vs = [json.loads(v) for v in vals.get(k, [])] or [_field_default(k)]
            return [v for v in vs if v is not None] or vs

        out = [
            (k, shown(want, k), shown(got, k))
            for k in sorted(set(got) | set(want))
            if k not in skip
        ]
        out = [o for o in out if o[1] != o[2]]  # as shown: not "X → X" from a None alone
        changed = {k for k, _, _ in out} | {k for k, want, got in self._fixed() if got != [want]}
        # a setting that only follows a changed one (a recipe's lr, epochs' milestones) is not
        # named: it is what the figure trains with that cause alone; a hand-set value is
        for cause, prefix in _EXPLAINS:
            if cause not in changed or len(got.get(cause, [])) != 1:
                continue
            # the cause with the other changes (Adam needs its own lr), none it could explain
            given = [
                k
                for k in changed
                if k == cause or (not k.startswith(prefix) and len(got.get(k, [])) == 1)
            ]
            override: dict[str, Any] = {}
            for key in given:
                set_dotted(override, key, json.loads(got[key][0]))
            try:
                follows = values(trained(override))
            except DctpsError:  # the cause alone is refused (Adam with SGD's lr): name all
                continue
            out = [o for o in out if o[0] == cause or not o[0].startswith(prefix)
                   or got.get(o[0]) != follows.get(o[0])]  # fmt: skip
        return out

    @property
    def is_paper(self) -> bool:
        """Whether this is the paper's figure (nothing defining overridden)."""
        return not self.changes()

    def title(self) -> str:
        """The figure's title, naming what was run; a second line says what differs from the
        paper's figure, if anything."""
        ms, ds, product = _split(self.pairs)
        if len(self.pairs) == 1:
            what = panel_title(*self.pairs[0])
        elif product:
            what = f"{_and([display_name(m) for m in ms])} on {_and([display_name(d) for d in ds])}"
        else:
            what = "; ".join(panel_title(m, d) for m, d in self.pairs)
        opts = _unique((c.optim.optimizer, bool(c.optim.momentum)) for c in self.configs)
        optimizer = _and([
            OPTIMIZER_NAMES.get(o, o) + (" with momentum" if o == "sgd" and mom else "")
            for o, mom in opts
        ]) if opts else "?"  # fmt: skip
        title = get(self.name).title.format(
            what=what, models=_and([display_name(m) for m in ms]),
            datasets=_and([display_name(d) for d in ds]), optimizer=optimizer,
        )  # fmt: skip
        changes = self.changes()
        return title + ("\nnot the paper's setting: " + "; ".join(changes) if changes else "")

    def one_line(self) -> str:
        """:meth:`title` on one line."""
        return self.title().replace("\n", " — ")

    def stem(self, quick: bool = False) -> str:
        """The figure's file name without suffix: ``NAME[-quick]`` for the paper's figure;
        otherwise a suffix names what differs, e.g. ``density-resnet18-cifar10-quick-resnet18-
        digits`` (models ``+``-joined, ``-``, data sets ``+``-joined; or ``model-dataset`` pairs
        ``+``-joined where they are not all combinations) and ``field=value`` for a changed
        setting, so that different overrides never share a file."""
        parts = [self.name + ("-quick" if quick else "")]
        if set(self.pairs) != set(paper_pairs(self.name)):
            ms, ds, product = _split(self.pairs)
            parts.append(f"{'+'.join(ms)}-{'+'.join(ds)}" if product
                         else "+".join(f"{m}-{d}" for m, d in self.pairs))  # fmt: skip
        for key, _, got, is_list in self._changed():
            shown = _int_ranges(got) if is_list else [str(v) for v in got]
            parts.append(f"{key.rsplit('.', 1)[-1]}={'+'.join(shown)}")
        stem = re.sub(r"[^\w+=.-]", "_", "-".join(parts))
        if len(stem) > MAX_STEM:  # file systems refuse names over 255 bytes
            digest = hashlib.sha256(stem.encode()).hexdigest()[:10]
            stem = f"{stem[: MAX_STEM - 11]}-{digest}"
        return stem


#: the longest figure file stem; a longer one ends in a hash of the whole (the figure's title
#: and JSON say in full what differs)
MAX_STEM = 200


def _int_ranges(values: Sequence[Any]) -> list[str]:
    """Grid values as they appear in a file name: numbers as ``%g``, and three or more
    consecutive integers as one range (seeds ``0..79``, not 80 numbers joined)."""
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return [f"{v:g}" for v in values]
    out: list[str] = []
    ints = sorted(set(values))
    i = 0
    while i < len(ints):
        j = i
        while j + 1 < len(ints) and ints[j + 1] == ints[j] + 1:
            j += 1
        out += [f"{ints[i]}..{ints[j]}"] if j - i >= 2 else [str(v) for v in ints[i : j + 1]]
        i = j + 1
    return out


def figure_setup(
    name: str,
    configs: Sequence[RunConfig] | None = None,
    pairs: Sequence[Pair] | None = None,
    quick: bool = False,
) -> Setup:
    """The :class:`Setup` of figure ``name`` drawn from ``configs`` (a training figure; default:
    the paper's grid, quick or not) or of ``pairs`` (a figure that trains nothing; default: the
    paper's). ``quick``: compare with the quick figure's densities and seeds."""
    spec = get(name)
    if spec.grid is None:
        return Setup(name, list(pairs) if pairs is not None else paper_pairs(name), quick=quick)
    cfgs = list(configs) if configs is not None else figure_configs(name, quick=quick)
    return Setup(name, _unique((c.model.name, c.data.dataset) for c in cfgs), cfgs, quick)


def _listed(values: Sequence[Any], is_list: bool) -> str:
    """A setting's values in a title: densities as percentages, runs of integers as ranges
    (``seeds 0..79``)."""
    if is_list and values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return ", ".join(_int_ranges(values))
    return ", ".join(map(_fmt if is_list else str, values))


def _fmt(v: Any) -> str:
    """A density as a percentage (``0.001`` -> ``0.1%``); anything else as is."""
    return f"{100 * v:g}%" if isinstance(v, float) else str(v)


def _quick_note(configs: Sequence[RunConfig]) -> str:
    """What a quick figure's runs did, e.g. ``quick run: LeNet-5 2 epochs on the first 2000
    images of each split; 1 seed`` (its accuracies are not the paper's)."""
    sizes = _unique((c.model.name, c.optim.epochs, c.data.subset) for c in configs)
    per = "; ".join(
        f"{display_name(m)} {e} epoch{'s' * (e != 1)}"
        + (f" on the first {n} images of each split" if n else "")
        for m, e, n in sizes
    )
    k = len({c.seed for c in configs})
    # the labels leave these out: named per run, Iter-SNIP's num_batches=1 stayed only where it
    # is not the data set's Table E.2 default, and one method read as two curves. Named here:
    # the quick options that differ from the paper's for some data set of the figure
    changed: dict[str, dict[str, Any]] = {}
    for c in configs:
        m = c.sparsity.method
        if m in QUICK_OPTIONS:
            own = canonical_options(m, QUICK_OPTIONS[m], c.data.dataset)
            changed.setdefault(m, {}).update(own)
    short = "; ".join(
        f"{METHOD_LABELS.get(m, m)} " + ", ".join(f"{opt}={v}" for opt, v in sorted(opts.items()))
        for m, opts in sorted(changed.items())
        if opts
    )
    shortened = f"; pruning shortened: {short}" if short else ""
    return f"quick run, not the paper's schedule: {per}; {k} seed{'s' * (k != 1)}{shortened}"


# ----------------------------------------------------------------------------- drawing
def _store_rows(store: Any, hashes: Sequence[str]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for i in range(0, len(hashes), 500):
        rows += store.query({"hash": list(hashes[i : i + 500])})
    return rows


def draw(
    name: str,
    store: Any,
    configs: Sequence[RunConfig],
    path: str | Path,
    quick: bool = False,
    setup: Setup | None = None,
    errors: Sequence[Mapping[str, Any]] = (),
    plot_only: bool = True,
) -> FigureData:
    """Draw training figure ``name`` from the rows of ``store`` whose hash is one of ``configs``'
    (nothing else is read). Returns the data drawn; also writes ``path`` as PNG, PDF and JSON.
    ``plot_only``: whether the caller trained nothing before (what a figure with no point to
    draw advises).
    ``quick``: the runs are the quick figure's (compared with its settings, and noted).
    ``setup``: ``figure_setup(name, configs, quick=quick)``, where the caller has it.
    ``errors``: the sweep's runs that raised (:attr:`SweepReport.errors`), named in the note
    and the JSON. A point or curve some of whose runs have no result yet says how many."""
    spec = get(name)
    hashes = [c.config_hash() for c in configs]
    rank = {h: i for i, h in enumerate(hashes)}
    rows = sorted(_store_rows(store, hashes), key=lambda r: rank[r["hash"]])  # grid order
    finished = {r["hash"] for r in rows if r["status"] in ("done", "failed")}
    stored = {r["hash"] for r in rows}
    order = list(dict.fromkeys((c.model.name, c.data.dataset) for c in configs))
    missing = [c.summary() for c, h in zip(configs, hashes, strict=True) if h not in finished]
    # a curve or point without its runs must not look complete: runs not started yet take
    # their place in it as rows without a result
    planned = [_planned_row(c, h) for c, h in zip(configs, hashes, strict=True) if h not in stored]
    notes = [_quick_note(configs)] if quick else []
    raised = {e.get("hash") for e in errors} & {h for h in hashes if h not in finished}
    unstored = [(c, h) for c, h in zip(configs, hashes, strict=True) if h not in stored]
    older = older_records(store, [c for c, _ in unstored], [h for _, h in unstored])
    if missing:
        why = f" ({len(raised)} raised an error: see the sweep's errors/ folder)" if raised else ""
        if older:
            why += (f" ({len(older)} recorded by an older dctps only, not drawn: a computation "
                    "of theirs changed since)")  # fmt: skip
        notes.append(f"incomplete: {len(missing)} of {len(configs)} runs have no result yet{why}")
    if not finished and not raised:
        raise DctpsError(_why_nothing_drawn(store, configs, len(older), plot_only))
    note = "\n".join(notes) or None
    title = (setup or figure_setup(name, configs, quick=quick)).title()
    data = plot_runs(
        sorted(rows + planned, key=lambda r: rank[r["hash"]]),  # grid order: curves, colours
        path,
        title=title,
        label=spec.label,
        panel_order=order,
        note=note,
        name_options=not quick,  # the quick note names the shortened schedules
        keep_order=True,  # the grid's order: uniform, EPL, EPF, ERK; trainable before fixed
    )
    data.runs = len(rows)
    data.missing, data.missing_runs, data.older = len(missing), missing, len(older)
    data.errors = [{k: e.get(k) for k in ("hash", "reason", "traceback_file")} for e in errors]
    write_json(data.to_dict(), Path(path).with_suffix(".json"))
    return data


def _why_nothing_drawn(
    store: Any, configs: Sequence[RunConfig], older: int, plot_only: bool = True
) -> str:
    """Why a figure has no point to draw (``--plot-only`` on another store, or on runs trained
    with other settings), naming the settings in which the store's nearest run differs from
    the figure's nearest: "no finished or failed runs match" left the reader to guess. The
    differences come first: a long message is cut in its middle, and a path can be long."""
    from dctps.results.store import flat_identities
    from dctps.train.config import omitted_defaults

    text = f"nothing to plot: none of the figure's {len(configs)} runs has a result"
    models = sorted({c.model.name for c in configs})
    rows = store.query({"model": models, "status": ["done", "failed"]})[-2000:]
    if rows:
        # a key an identity leaves out holds its default (offset dct): compared as such
        defaults = omitted_defaults()
        have = [{**defaults, **f} for f in flat_identities(rows)]
        want = [{**defaults, **flatten(c.identity())} for c in configs]
        for f in have:
            f.pop("recorded_by", None)  # a mark of the row, not a setting
        i, j, keys = nearest_difference(have, want)
        theirs = ", ".join(
            f"{k.rsplit('.', 1)[-1]}={_setting_text(k, have[i].get(k))} (the figure's: "
            f"{_setting_text(k, want[j].get(k))})"
            for k in keys
        )
        text += (f". The store's nearest run, {rows[i]['hash']}, differs from them in "
                 f"{theirs}: give the figure those settings (--epochs, --set, --model, "
                 "--dataset, --density, --quick), or")  # fmt: skip
    else:
        text += f". The store holds no finished run of {', '.join(models)}:"
    if plot_only:
        text += " run the figure without --plot-only to train them"
    else:  # all of them busy (another process trains them), or raised: said above
        text += " see the sweep's summary above: rerun the figure once its runs are done"
    if older:
        text += f" ({older} recorded by an older dctps, which `dctps plot --db` draws)"
    return text + f" (store: {getattr(store, 'path', 'the store')})"


def _setting_text(key: str, value: Any) -> str:
    """A flattened setting as a message shows it: ``all`` for an unset subset, ``none`` for
    another unset value, else as it is."""
    if value is None:
        return "all" if key == "data.subset" else "none"
    return str(value)


def nearest_difference(
    have: Sequence[Mapping[str, Any]], want: Sequence[Mapping[str, Any]], shown: int = 4
) -> tuple[int, int, list[str]]:
    """``(i, j, keys)``: the pair of flattened identities ``have[i]``, ``want[j]`` that differ
    in the fewest keys, and those keys (at most ``shown``; the data set, model and method
    first, then sorted). Both sequences must be non-empty."""
    first = ("data.dataset", "model.name", "sparsity.method")
    best: tuple[int, int, list[str]] | None = None
    for i, h in enumerate(have):
        for j, w in enumerate(want):
            diff = [k for k in {*h, *w} if h.get(k) != w.get(k)]
            if best is None or len(diff) < len(best[2]):
                best = (i, j, diff)
    assert best is not None
    i, j, diff = best
    diff.sort(key=lambda k: (k not in first, first.index(k) if k in first else 0, k))
    return i, j, diff[:shown]


def _planned_row(cfg: RunConfig, h: str) -> dict[str, Any]:
    """A store-like row for a run of the grid that has none yet (status ``not started``)."""
    return {
        "hash": h, "status": "not started", "model": cfg.model.name,
        "dataset": cfg.data.dataset, "method": cfg.sparsity.method,
        "density": cfg.sparsity.density, "recipe": cfg.optim.recipe, "seed": cfg.seed,
        "config_json": json.dumps(cfg.to_dict(), sort_keys=True),
    }  # fmt: skip


def allocation_pairs(
    name: str, models: Sequence[str] | None = None, datasets: Sequence[str] | None = None
) -> list[Pair]:
    """The (model, data set) pairs a figure without training draws: ``models`` x ``datasets``
    (default CIFAR-10), the paper's models x ``datasets``, or the paper's pairs."""
    spec = get(name)
    if models:
        dss = list(datasets) if datasets else ["cifar10"]
        return [(m, d) for m in models for d in dss]
    if datasets:
        return _unique((m, d) for m, _ in spec.pairs for d in datasets)
    return list(spec.pairs)


def allocation_densities(name: str, quick: bool = False) -> list[float]:
    """The densities an allocation figure draws by default (the quick figure: the first)."""
    spec = get(name)
    return list(spec.densities[:1] if quick else spec.densities)


def draw_allocation(
    name: str,
    path: str | Path,
    quick: bool = False,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    densities: Sequence[float] | None = None,
) -> dict[str, dict[str, list[int]]]:
    """Draw a figure without training (A.2, C.10); returns ``{panel title: {label: counts}}``."""
    spec = get(name)
    assert spec.allocation is not None
    pairs = allocation_pairs(name, models, datasets)
    dens = list(densities) if densities else allocation_densities(name, quick)
    panels = spec.allocation(pairs, dens, quick)
    title = figure_setup(name, pairs=pairs).title()
    data = plot_allocation_panels(panels, path, suptitle=title)
    write_json(data, Path(path).with_suffix(".json"))
    return data


def run_figure(
    name: str,
    out: str | Path = "results",
    *,
    quick: bool = False,
    executor: str = "local",
    workers: int | None = None,
    db: str | Path | None = None,
    data_root: str | None = None,
    models: Sequence[str] | None = None,
    datasets: Sequence[str] | None = None,
    densities: Sequence[float] | None = None,
    seeds: int | None = None,
    epochs: int | None = None,
    device: str | None = None,
    sets: Sequence[str] = (),
    config: str | Path | None = None,
    retry_failed: bool = False,
    plot_only: bool = False,
    dry_run: bool = False,
    progress: bool = True,
    path: str | Path | None = None,
    echo: Callable[[str], Any] = print,
    slurm: Sequence[str] = (),
    threads: int | None = 0,
) -> Any:
    """``dctps figure NAME``: run (or resume) the figure's sweep, then draw it from the store.

    Returns the :class:`~dctps.results.plots.FigureData` drawn (a dict of per-layer counts for
    A.2/C.10; ``None`` for a dry run). The figure goes to ``out/figures/NAME[-quick].png`` (+ PDF
    and the plotted numbers as JSON) unless ``path`` is given; a figure whose models, data sets
    or fixed settings were overridden gets a suffix naming them (:meth:`Setup.stem`). ``config``:
    a sweep YAML to use instead of the figure's built-in grid (an edited ``configs/NAME.yaml``).
    ``threads``: torch threads of each run (0: as :func:`~dctps.results.sweep.run_sweep`).
    """
    from dctps.results.store import Store, existing_db, out_db_path

    spec = get(name)
    out = user_path(out, "the output folder (out, --out)")
    if spec.grid is None:
        unused = [flag for flag, value, default in (
            ("--executor", executor, "local"), ("--workers", workers, None),
            ("--db", db, None), ("--data-root", data_root, None), ("--seeds", seeds, None),
            ("--epochs", epochs, None), ("--device", device, None), ("--set", tuple(sets), ()),
            ("--config", config, None), ("--retry-failed", retry_failed, False),
            ("--slurm", tuple(slurm), ()),
            ("--threads", threads or 0, 0),
        ) if value != default]  # fmt: skip
        if unused:  # a review: they were taken and ignored
            raise DctpsError(
                f"figure {name} trains nothing (it draws layer budgets): {', '.join(unused)} "
                "would have no effect; its options are --model, --dataset, --density, --quick "
                "and --out"
            )
        setup = figure_setup(name, pairs=allocation_pairs(name, models, datasets))
        stem = setup.stem(quick)
        if densities and list(densities) != allocation_densities(name, quick):
            stem += "-density=" + "+".join(_int_ranges(densities))  # as training figures do
        fig_path = user_path(path) if path else out / "figures" / f"{stem}.png"
        check_figure_path(fig_path)
        if dry_run:
            echo(f"figure {name} trains nothing; it would draw {fig_path}: {setup.one_line()}")
            return None
        budgets = draw_allocation(name, fig_path, quick, models, datasets, densities)
        for title, series in budgets.items():
            totals = ", ".join(f"{k} {sum(v):,}" for k, v in series.items())
            echo(f"{title.splitlines()[0]}: {len(next(iter(series.values())))} layers, {totals}")
        echo(f"wrote {fig_path} (+ .pdf, .json)")
        return budgets
    if executor not in EXECUTORS:  # also on a dry run, which would otherwise accept a typo
        raise unknown_name("executor", executor, EXECUTORS)
    check_threads(threads or 0, here=executor != "slurm")
    grid = load_grid(config) if config else None
    configs = figure_configs(
        name, cli_overrides(data_root, epochs, device, sets), quick=quick, models=models,
        datasets=datasets, densities=densities, seeds=seeds, grid=grid,
    )  # fmt: skip
    setup = figure_setup(name, configs, quick=quick)
    fig_path = user_path(path) if path else out / "figures" / f"{setup.stem(quick)}.png"
    check_figure_path(fig_path)  # before the sweep: not after its training
    db_path = out_db_path(out, db)
    params = slurm_overrides((grid or {}).get("slurm"), slurm, executor)
    if dry_run and plot_only:
        echo(f"--plot-only trains nothing; it would draw {fig_path} from the {len(configs)} runs' "
             f"results in {db_path}: {setup.one_line()}")  # fmt: skip
        return None
    if dry_run:
        dry_run_report(configs, out, db_path, retry_failed, executor, workers, params, echo,
                       footer=f"it would draw {fig_path}: {setup.one_line()}")  # fmt: skip
        return None
    errors: list[dict[str, Any]] = []
    if not plot_only:
        report = run_sweep(
            configs,
            out,
            db=db_path,
            executor=executor,
            workers=workers,
            retry_failed=retry_failed,
            progress=progress,
            slurm=params,
            threads=threads,
        )
        echo(report.summary())
        errors = report.errors
    db_path = existing_db(db_path, "run the figure without --plot-only")
    data = draw(name, Store(db_path), configs, fig_path, quick=quick, setup=setup, errors=errors,
                plot_only=plot_only)  # fmt: skip
    echo(data.table())
    if data.missing:
        echo(f"{data.missing} of {len(configs)} runs have no result yet (noted on the figure):")
        if data.older:
            echo(f"  ({data.older} of them have a result an older dctps recorded, not drawn: a "
                 "computation of theirs changed since (see the CHANGELOG). `dctps plot --db "
                 f"{db_path}` draws those rows; `dctps figure {name}{' --quick' * quick}` "
                 "without --plot-only "
                 "trains them anew)")  # fmt: skip
        for summary in data.missing_runs[:10]:
            echo(f"  {summary}")
        if data.missing > 10:
            echo(f"  ... and {data.missing - 10} more (`--dry-run` lists every run)")
    echo(f"wrote {fig_path} (+ .pdf, .json)")
    return data
