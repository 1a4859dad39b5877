"""Typed run configuration: one schema for YAML files, CLI flags and the config hash.

A :class:`RunConfig` has four sections (``model``, ``data``, ``sparsity``, ``optim``) and a few
top-level fields. Every field carries its help text and CLI flag in ``field(metadata=...)``:

* ``help``: the text shown by ``dctps train --help``;
* ``flag``: the CLI flag name (default: the field name with ``-`` for ``_``);
* ``identity``: ``False`` for fields that do not change the experiment (data root, device, eval
  batch size); they are left out of :meth:`RunConfig.config_hash`;
* ``invert``: the flag sets the negated field (``--fixed-alpha`` sets ``train_alpha=False``);
* ``omit_default``: the field is left out of the hash while it holds its default, so fields added
  later (e.g. ``sparsity.offset``) do not change the hash of configs that existed before them.

Fields left at ``None`` are filled by :meth:`RunConfig.resolve` from the named recipe (Table E.3 of
the supplement) and the sparsity method; any field given explicitly overrides the recipe.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import hashlib
import inspect
import json
import math
import numbers
import os
import re
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from dctps.atomic import atomic_write
from dctps.errors import (
    DctpsError,
    check_density,
    check_seed,
    parse_density,
    show,
    unknown_name,
    user_path,
    yaml_problem,
)

__all__ = [
    "DataConfig",
    "identity_hash",
    "ModelConfig",
    "OptimConfig",
    "RECIPES",
    "recipe_defaults",
    "Recipe",
    "RunConfig",
    "SparsityConfig",
    "CliField",
    "cli_fields",
    "cli_parameters",
    "config_from_cli",
    "load_config",
    "save_config",
]


def _f(default: Any = None, help: str = "", **meta: Any) -> Any:
    """A dataclass field with help text and CLI metadata."""
    meta["help"] = help
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """Which architecture to build (``dctps.models.names()``)."""

    name: str = _f(
        "resnet18",
        "Architecture: {models} (one too small for the data set's images, as lenet5 for 8x8 "
        "digits, is refused before anything runs).",
        flag="model",
    )


@dataclass
class DataConfig:
    """Which data set, where it lives, and how the validation hold-out is drawn."""

    dataset: str = _f("cifar10", "Data set: {datasets}.")
    root: str | None = _f(
        None,
        "Data root folder (default: env DCTPS_DATA; digits is embedded and needs none). Not "
        "part of the run's identity (one data set may live at several paths); a resume checks "
        "that the data are the same.",
        flag="data-root",
        identity=False,
        coerce=lambda v, where: _path_text(v, where),
    )
    val_fraction: float | None = _f(
        None,
        "Fraction of the training set held out for validation (default: the paper's protocol, "
        "0.1; 0 for tiny_imagenet, which validates on its official val split and reports the "
        "max over epochs).",
    )
    subset: int | None = _f(
        None,
        "Use only this many training (and val/test) examples: quick runs. A value at least "
        "the data set's size uses all of it (the same run, and hash, as without).",
    )
    split_seed: int = _f(0, "Seed of the validation hold-out permutation.")


@dataclass
class SparsityConfig:
    """How the network is made sparse."""

    method: str = _f(
        "dctps",
        "dense | dctps | a pruning-at-init method ({pruning}).",
    )
    density: float | None = _f(
        None,
        "Fraction of weights that are trainable, in (0, 1] (e.g. 0.001, or 0.1%); needed by "
        "every method but dense.",
        coerce=parse_density,
    )
    allocation: str | None = _f(
        None,
        "Per-layer budget: {allocations} (default: epl for dctps, uniform for random, erk for "
        "random+RigL; refused for score-based pruning methods, which allocate globally).",
    )
    rigl: bool = _f(False, "Dynamic sparse training of the support with RigL.")
    rigl_delta_t: int | None = _f(None, "RigL: steps between support updates (default: 100).")
    rigl_alpha: float | None = _f(None, "RigL: initial fraction dropped/grown (default: 0.3).")
    rigl_t_end: float | None = _f(
        None, "RigL: fraction of training after which the support is fixed (default: 0.75)."
    )
    train_alpha: bool = _f(
        True,
        "DCTpS: do not train alpha; it keeps its --alpha-init value (Appendix A.4).",
        flag="fixed-alpha",
        invert=True,
    )
    options: dict[str, Any] = _f(
        {},
        "Extra options of the method as key=value (repeatable), e.g. steps=30 (the keyword "
        "options listed in docs/BASELINES.md per method; options at their default are left out "
        "of the run's identity), or exclude=classifier for dctps (module-name globs to leave "
        "dense).",
        flag="option",
    )
    offset: str = _f(
        "dct",
        "DCTpS: the fixed matrix D: {offsets} (dct: the paper's; the others are compared in "
        "docs/results/offsets.md).",
        omit_default=True,
    )
    alpha: str = _f(
        "layer",
        "DCTpS: offset scale per layer (paper) or per output channel: layer | channel.",
        omit_default=True,
    )
    alpha_init: str | float = _f(
        1.0,
        "DCTpS: initial alpha, a number or 'kaiming' (Kaiming-normal row scale).",
        omit_default=True,
    )
    charge_alpha: bool = _f(
        True,
        "DCTpS with --alpha channel: take the out-1 extra alphas per layer from the sparse budget "
        "(equal trainable parameters); --no-charge-alpha trains them on top. Fixed alphas "
        "(--fixed-alpha) train nothing and are never charged.",
        omit_default=True,
    )


@dataclass
class OptimConfig:
    """Optimiser and schedule; ``None`` fields come from the recipe."""

    recipe: str | None = _f(
        None,
        "Named preset from Table E.3: {recipes} (default: lenet for lenet5, else adam).",
    )
    optimizer: str | None = _f(
        None,
        "{optimizers} (default: the recipe's). Another optimizer than the recipe's needs --lr; "
        "the recipe's schedule (milestones, gamma), weight decay, batch size and epochs stay.",
    )
    lr: float | None = _f(
        None,
        "Base learning rate (default: the recipe's; adam, lenet: 1e-3; sgd: 0.1, 0.03 for dctps).",
    )
    momentum: float | None = _f(None, "SGD momentum (default: the sgd recipe's 0.9).")
    weight_decay: float | None = _f(None, "L2 weight decay (default: every recipe's 5e-4).")
    batch_size: int | None = _f(None, "Global batch size (default: 128; lenet recipe: 64).")
    epochs: int | None = _f(None, "Training epochs (default: 200; lenet recipe: 160).")
    milestones: list[int] | None = _f(
        None,
        "Epochs at which the LR is multiplied by gamma, e.g. 120,160 (sgd recipe: at 60% and "
        "80% of the epochs; adam and lenet: none).",
    )
    gamma: float | None = _f(None, "LR decay factor at each milestone (default: 0.1).")
    decay_all: bool = _f(
        False,
        "Apply weight decay to every parameter, including alpha, biases and BN (the reference "
        "code's behaviour); by default alphas, biases, BN and Fixup scalars are not decayed "
        "(S's values are).",
    )
    fused: bool = _f(
        False,
        "Use torch's fused optimizer (one kernel over all parameters: an Adam step on a pruned "
        "ResNet18 took about 6 ms instead of 23-55 ms on one CPU thread). Its rounding differs, "
        "so a fused run is another run (its own hash).",
        omit_default=True,
    )


@dataclass(frozen=True)
class Recipe:
    """A training preset (Table E.3). Milestones are fractions of the epochs."""

    optimizer: str
    lr: float
    momentum: float | None
    weight_decay: float
    batch_size: int
    epochs: int
    milestone_fractions: tuple[float, ...] = ()
    gamma: float = 0.1
    dctps_lr: float | None = None  # base LR used instead of ``lr`` for DCTpS networks


RECIPES: dict[str, Recipe] = {
    "adam": Recipe("adam", 1e-3, None, 5e-4, 128, 200),
    "sgd": Recipe("sgd", 0.1, 0.9, 5e-4, 128, 200, (0.6, 0.8), 0.1, dctps_lr=0.03),
    "lenet": Recipe("adam", 1e-3, None, 5e-4, 64, 160),
}

SCORE_FREE_METHODS = ("dense", "dctps")
BATCHED_REBUILD = ("auto", "on", "off")
OPTIMIZERS = ("adam", "sgd")


@dataclass
class RunConfig:
    """Everything that defines one training run; see the module docstring."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    sparsity: SparsityConfig = field(default_factory=SparsityConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = _f(0, "Seed of initialisation, sparse supports, pruning batches and shuffling.")
    device: str = _f(
        "auto", "auto | cpu | cuda | cuda:N. Not part of the run's identity.", identity=False
    )
    eval_batch_size: int | None = _f(
        None,
        "Batch size for validation/test evaluation (default: 1000 on CUDA, 256 on the CPU, "
        "where 1000 evaluated 40% slower). Not part of the identity, though it changes the "
        "validation losses' rounding (a resume with another value warns).",
        identity=False,
    )
    batched_rebuild: str = _f(
        "auto",
        "auto | on | off: rebuild all dense-path DCTpS weights in one batched pass per step "
        "(a fixed number of GPU kernels per step instead of 5 per layer). auto: on for CUDA, "
        "off on the CPU. Not part of the identity, though it changes the rounding of the "
        "alphas' gradients (a resume with another value warns).",
        identity=False,
    )

    # -------------------------------------------------------------- conversion
    def to_dict(self) -> dict[str, Any]:
        """A nested plain dict (YAML/JSON-ready)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None, source: str = "config") -> RunConfig:
        """Build from a nested dict, rejecting unknown keys and ill-typed values."""
        return _from_dict(cls, d or {}, source, "")

    # -------------------------------------------------------------- resolution
    def resolve(self) -> RunConfig:
        """A copy with the recipe and method defaults applied and every value validated.

        Order: explicit fields win; ``None`` fields take the recipe's value; fields that do not
        apply to the method (allocation of score methods, RigL settings without RigL) become
        ``None`` so they do not split the config hash.
        """
        # a config built in Python is checked as a YAML one is: its bools and sections were
        # not (rigl="false" trained with RigL, model="lenet5" an AttributeError)
        c = RunConfig.from_dict(_as_plain(self), source="RunConfig")
        _resolve_model_data(c)
        _resolve_sparsity(c.sparsity, c.data.dataset)
        _resolve_optim(c)
        if isinstance(c.seed, bool) or not isinstance(c.seed, int):
            raise DctpsError(f"{_named('seed')} must be an integer, got {c.seed!r}")
        check_seed(c.seed)  # the range
        if c.eval_batch_size is not None:
            _positive_int(c.eval_batch_size, "eval_batch_size")
        if c.batched_rebuild not in BATCHED_REBUILD:
            raise DctpsError(
                f"{_named('batched_rebuild')} must be one of {', '.join(BATCHED_REBUILD)}, "
                f"got {c.batched_rebuild!r}"
            )
        if not isinstance(c.device, str) or not (
            c.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", c.device)
        ):  # cuda:abc and cuda:-1 passed, and failed when the run started
            raise DctpsError(
                f"{_named('device')} must be auto, cpu, cuda or cuda:N, got {c.device!r}"
            )
        return c

    def identity(self) -> dict[str, Any]:
        """The resolved config as a dict without the non-identity fields, plus the model's
        revision where it is above 1 (:data:`dctps.models.REVISIONS`), for DCTpS runs how their
        supports are seeded (:data:`dctps.sparsify.SUPPORT_REVISION`), for runs pruned at
        initialisation that their masks are checked for a path
        (:data:`dctps.pruning.PATH_CHECK`) and their method's revision where it is above 1
        (:attr:`dctps.pruning.Method.revision`), the architecture's learning-rate factors where
        it has any (:func:`dctps.models.lr_factors`), and for ``epl_ref`` runs the revision of
        its counts (:data:`dctps.allocation.EPL_REF_REVISION`)."""
        from dctps.models import REVISIONS, lr_factors

        out = _strip_non_identity(self.resolve())
        revision = REVISIONS.get(self.model.name, 1)
        if revision > 1:
            out["model"]["revision"] = revision
        s = self.sparsity
        if s.method == "dctps" or (s.method == "random" and out["sparsity"]["allocation"] == "epf"):
            from dctps.sparsify import SUPPORT_REVISION

            out["sparsity"]["support_revision"] = SUPPORT_REVISION
        if s.method not in SCORE_FREE_METHODS and not s.rigl:  # RigL's prune skips the check
            from dctps.pruning import PATH_CHECK

            out["sparsity"]["path_check"] = PATH_CHECK
        if s.method not in SCORE_FREE_METHODS:
            from dctps.pruning import revision as method_revision

            if method_revision(s.method) > 1:  # the method changed its masks since
                out["sparsity"]["method_revision"] = method_revision(s.method)
        if out["sparsity"].get("allocation") == "epl_ref":  # its counts changed: other runs
            from dctps.allocation import EPL_REF_REVISION

            out["sparsity"]["epl_ref_revision"] = EPL_REF_REVISION
        factors = lr_factors(self.model.name)
        if factors:  # runs trained before the recipe's factors were applied are other runs
            out["optim"]["lr_factors"] = factors
        return out

    def config_hash(self) -> str:
        """First 16 hex chars of sha256 of the canonical JSON of :meth:`identity`."""
        return identity_hash(self.identity())

    def summary(self) -> str:
        """One line: model/dataset/method@density, the sparsity settings other than the
        method's defaults, recipe, seed; of the resolved config where this one leaves the
        recipe to its model (a sweep built in Python showed ``recipe=None``)."""
        if self.optim.recipe is None:
            resolved = None
            with contextlib.suppress(DctpsError):  # a config that cannot resolve: as it is
                resolved = self.resolve()
            if resolved is not None and resolved.optim.recipe is not None:
                return resolved.summary()
        s, o = self.sparsity, self.optim
        dens = "" if s.density is None else f"@{s.density:g}"
        extra = " +rigl" if s.rigl else ""
        # a budget or fixed alpha other than the method's own (figures A.6, A.7): a sweep's
        # lines named such runs alike
        own = {"dctps": "epl", "random": "erk" if s.rigl else "uniform"}.get(s.method)
        if s.allocation is not None and s.allocation != own:
            extra += f" allocation={s.allocation}"
        if not s.train_alpha and s.method == "dctps":
            extra += " train_alpha=False"
        for name in ("offset", "alpha", "alpha_init", "charge_alpha"):  # non-default only
            v = getattr(s, name)
            if name == "charge_alpha" and not s.train_alpha:
                continue  # fixed alphas are never charged: not a choice to show
            if v != SparsityConfig.__dataclass_fields__[name].default:
                extra += f" {name}={v}"
        return (
            f"{self.model.name}/{self.data.dataset} {s.method}{dens}{extra} "
            f"recipe={o.recipe} seed={self.seed}"
        )


def identity_hash(identity: dict[str, Any]) -> str:
    """The run hash of an :meth:`RunConfig.identity` dict (for a caller that has the identity
    already: resolving a config again costs more than hashing it)."""
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- typed parsing
@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # once per class: uncached, it was half the time of `dctps results` over 19,000 runs
    return typing.get_type_hints(cls)


#: what :func:`coerce_key` returns for a value that does not convert
NOT_CONVERTED = object()


def coerce_key(key: str, value: Any) -> Any:
    """``value`` as the run config field at dotted ``key`` (``optim.lr``) holds it, converted
    as ``--set`` converts it (``"1e-3"``, which YAML 1.1 reads as a string, is the float 0.001;
    ``"0"`` is ``False`` for a bool field); ``value`` unchanged where ``key`` names no field,
    and :data:`NOT_CONVERTED` where the value does not convert."""
    cls: Any = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        tp = _hints(cls).get(part)
        if tp is None:
            return value
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(tp):
                return value
            cls = tp
    try:
        return _coerce(value, tp, key)
    except DctpsError:
        return NOT_CONVERTED


def _path_text(value: Any, where: str) -> str:
    """A path setting (``data.root``) as text: a ``pathlib.Path`` given in Python too."""
    if isinstance(value, (str, os.PathLike)):
        return os.fspath(value)  # type: ignore[return-value]
    raise DctpsError(f"{where}: expected a path (a str or os.PathLike), got {show(value)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check/convert ``value`` to type ``tp`` or raise a DctpsError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", ())):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        first: str | None = None
        for alt in inner:  # e.g. str | float: the first member that accepts the value
            try:
                return _coerce(value, alt, key)
            except DctpsError as e:
                # its text, not the exception: one kept here holds this frame through its
                # traceback, a cycle left to the garbage collector at every resolve (600
                # rows of `dctps results --json` held 2 MB more at their peak)
                first = first or str(e)
        assert first is not None
        raise DctpsError(first)
    bad = DctpsError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise bad
    if tp is int:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, numbers.Integral):  # numpy's integers too
            return int(value)
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is float:
        if isinstance(value, bool):
            raise bad
        if isinstance(value, numbers.Real):  # numpy's numbers too
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                raise bad from None
        raise bad
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is list:
        if isinstance(value, str):  # "120,160" from a flag or --set
            parts = [v.strip() for v in value.split(",")]
            if "" in parts:  # an unset variable, or a typo: "1,,2" would drop an entry
                what = "is empty" if parts == [""] else "has an empty entry"
                raise DctpsError(
                    f"{key} {what} ({value!r}): give comma-separated values, e.g. 120,160"
                    + (" (a YAML [] for none)" if parts == [""] else "")
                )
            value = parts
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise bad
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if tp is Any:
        return value
    raise bad  # pragma: no cover - schema error


def _from_dict(cls: type, d: Any, source: str, prefix: str) -> Any:
    if not isinstance(d, dict):
        where = prefix.rstrip(".") or "top level"
        raise DctpsError(f"{source}: {where} must be a mapping, got {type(d).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in fields]
    if unknown:
        key = str(unknown[0])
        # a section's setting given at this level (`epochs: 1`, `--set epochs=3`), as the
        # results' variant column and --where name it
        owners = [n for n in fields if isinstance(hints[n], type)
                  and dataclasses.is_dataclass(hints[n])
                  and key in {f.name for f in dataclasses.fields(hints[n])}]  # fmt: skip
        if owners:
            full = " or ".join(f"{prefix}{n}.{key}" for n in owners)
            raise DctpsError(
                f"{source}: unknown key {prefix + key!r}: it is a setting of "
                f"{' or '.join(prefix + n for n in owners)}, written {full} (in YAML: "
                f"{owners[0]}: {{{key}: ...}})"
            )
        err = unknown_name("key", prefix + key, [prefix + k for k in fields])
        raise DctpsError(f"{source}: {err}")
    kwargs: dict[str, Any] = {}
    for name, value in d.items():
        tp = hints[name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            if value is None:  # `model:` with its name commented out trained ResNet18
                raise DctpsError(
                    f"{source}: {prefix}{name} is an empty section: give its settings "
                    f"({prefix}{name}: {{{next(iter(dataclasses.fields(tp))).name}: ...}}), or "
                    "leave the key out for the defaults"
                )
            kwargs[name] = _from_dict(tp, value, source, f"{prefix}{name}.")
        elif value is not None and "coerce" in fields[name].metadata:  # e.g. density "0.1%"
            kwargs[name] = fields[name].metadata["coerce"](value, f"{source}: {prefix}{name}")
        else:
            kwargs[name] = _coerce(value, tp, f"{source}: {prefix}{name}")
    return cls(**kwargs)


def _as_plain(cfg: Any) -> Any:
    """A config as :meth:`RunConfig.from_dict` takes it: its dataclasses as dicts, whatever
    else as it is (a section given as a string, to be refused by name). A deep copy."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: _as_plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    return copy.deepcopy(cfg)


def omitted_defaults(cls: Any = None, prefix: str = "") -> dict[str, Any]:
    """``{"sparsity.offset": "dct", ...}``: the dotted keys of the fields an identity leaves
    out while they hold their default (``omit_default``), with that default, as
    :func:`dctps.results.variants.flatten` writes it. A run identity without such a key holds
    its default."""
    from dctps.results.variants import flat_value

    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls or RunConfig):
        tp = _hints(cls or RunConfig)[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out.update(omitted_defaults(tp, f"{prefix}{f.name}."))
        elif f.metadata.get("omit_default") and f.metadata.get("identity", True):
            out[prefix + f.name] = flat_value(f.default)
    return out


def _strip_non_identity(cfg: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        if f.metadata.get("identity", True) is False:
            continue
        v = getattr(cfg, f.name)
        if f.metadata.get("omit_default") and v == f.default:
            continue
        out[f.name] = _strip_non_identity(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v)
    return out


# ----------------------------------------------------------------------------- resolution
def _canonical_exclude(options: dict[str, Any]) -> dict[str, Any]:
    """A DCTpS run's ``exclude`` option in one form per setting: the names (or patterns) sorted,
    each once, and left out when there are none, as ``sparsify`` reads them in any order and a
    string as a list of one (``None`` and ``""`` as none); so ``exclude=fc`` and ``exclude=[fc]``
    are one run, with one hash."""
    if "exclude" not in options:
        return options
    ex = options["exclude"]
    names = [] if ex is None else [ex] if isinstance(ex, str) else ex
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise DctpsError(
            f"option exclude of method dctps takes layer names or patterns (a string or a list "
            f"of strings), got {ex!r}"
        )
    names = sorted({n for n in names if n})  # "" names no layer
    out = {k: v for k, v in options.items() if k != "exclude"}
    return {**out, "exclude": names} if names else out


def _named(field: str) -> str:
    """``field`` as its config key with its ``dctps train`` flag, ``optim.batch_size
    (--batch-size)``: a resolved config cannot tell whether a bad value came from a YAML key,
    a sweep's ``--set`` or a flag, so its errors name the key and the flag."""
    found = next((f for f in cli_fields() if f.path[-1] == field), None)
    return f"{'.'.join(found.path)} (--{found.flag})" if found else field


def _setting(field: str, value: Any) -> str:
    """``field=value`` as its config key and the flag that sets it, for errors that a Python
    caller reads as well as a command-line one: ``sparsity.train_alpha=False (--fixed-alpha)``
    (a notebook review met ``--fixed-alpha`` for ``train_alpha=False``, a name its Python API
    has nowhere)."""
    found = next((f for f in cli_fields() if f.path[-1] == field), None)
    if found is None:
        return f"{field}={value!r}"
    return f"{'.'.join(found.path)}={value!r} ({found.flag_for(value)})"


def _positive_int(v: Any, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise DctpsError(f"{_named(name)} must be a positive integer, got {show(v)}")
    return v


def _resolve_model_data(c: RunConfig) -> None:
    from dctps import data as _data
    from dctps import models as _models
    from dctps.data.split import holdout_size

    if c.model.name not in _models.names():
        raise unknown_name("model", c.model.name, _models.names())
    if c.data.dataset not in _data.names():
        raise unknown_name("dataset", c.data.dataset, _data.names())
    if isinstance(c.data.root, str) and not c.data.root.strip():
        raise DctpsError(  # an unset shell variable: the current folder, without a word
            f"{_named('root')} is empty ({c.data.root!r}); give a folder, or leave it out for "
            "the environment variable DCTPS_DATA"
        )
    vf = c.data.val_fraction
    if vf is None:  # the paper's protocol for this data set (Appendix E.5); enters the hash
        vf = _data.get_info(c.data.dataset).val_fraction
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0.0 <= vf < 1.0:
        raise DctpsError(f"{_named('val_fraction')} must be in [0, 1), got {vf!r}")
    c.data.val_fraction = float(vf)
    if c.data.subset is not None:
        _positive_int(c.data.subset, "subset")
        n, n_test = _data.get_info(c.data.dataset).sizes
        n_val = holdout_size(n, c.data.val_fraction)
        if c.data.subset >= max(n - n_val, n_val, n_test):
            c.data.subset = None  # all of every split: the same run as without a subset
    if isinstance(c.data.split_seed, bool) or not isinstance(c.data.split_seed, int):
        raise DctpsError(f"{_named('split_seed')} must be an integer, got {c.data.split_seed!r}")
    check_seed(c.data.split_seed, "split_seed")  # the range, as the run's seed


def pruning_methods() -> list[str]:
    """Names of the pruning-at-initialisation methods (empty if ``dctps.pruning`` is missing)."""
    try:
        from dctps import pruning
    except ImportError:
        return []
    return list(pruning.names())


def _resolve_sparsity(s: SparsityConfig, dataset: str) -> None:
    from dctps.allocation import names as allocation_names

    allocations = allocation_names()
    valid = list(SCORE_FREE_METHODS) + pruning_methods()
    if s.method not in valid:
        if isinstance(s.method, str) and s.method.lower() == "rigl":
            # RigL moves a support that another method set: it is a switch, not a method
            raise DctpsError(
                f"{s.method!r} is not a method but a switch on one: RigL moves the support another "
                "method set. Use method random with rigl=True (--method random --rigl: the "
                "paper's RigL; ERK by default), or method dctps with rigl=True (YAML: rigl: true)"
            )
        raise unknown_name("sparsity method", s.method, valid)
    if s.method == "dense":
        if s.density is not None and float(s.density) != 1.0:
            raise DctpsError(
                f"method dense trains every weight: density must be 1, got {s.density}"
            )
        if s.rigl:
            raise DctpsError(
                "RigL needs a sparse network: use method (--method) dctps, random or another "
                "pruning method"
            )
        if not s.train_alpha:
            raise DctpsError(f"{_setting('train_alpha', False)} applies only to method dctps")
        if s.options:
            raise DctpsError(f"method dense takes no options, got {sorted(s.options)}")
        _dctps_only(s)
        _check_allocation_name(s.allocation, allocations)
        s.density, s.allocation = 1.0, None
    else:
        if s.density is None:
            raise DctpsError(f"method {s.method} needs a density: {_named('density')}, e.g. 0.001")
        if isinstance(s.density, str):  # "0.1%", as in a sweep grid
            s.density = parse_density(s.density)
        s.density = check_density(s.density)
        if s.method == "dctps":
            s.allocation = s.allocation or "epl"
            bad = set(s.options) - {"exclude"}
            if bad:
                raise DctpsError(
                    f"unknown option(s) {sorted(bad)} for method dctps; valid: exclude"
                )
            s.options = _canonical_exclude(s.options)
        else:
            from dctps.pruning import canonical_options

            # one form per setting (defaults left out, types fixed), so that `steps=60`,
            # `steps=60.0` and no option are one run; unknown names fail here, not after loading
            s.options = canonical_options(s.method, s.options, dataset)
            if s.method == "random":
                s.allocation = s.allocation or ("erk" if s.rigl else "uniform")
            else:
                # score-based methods choose their own allocation (a grid's base may set one
                # for its dctps runs); a misspelt name is still refused
                _check_allocation_name(s.allocation, allocations)
                s.allocation = None
        _check_allocation_name(s.allocation, allocations)
        if s.method != "dctps" and not s.train_alpha:
            raise DctpsError(f"{_setting('train_alpha', False)} applies only to method dctps")
        if s.method == "dctps":
            _resolve_offset(s)
        else:
            _dctps_only(s)
    if s.rigl:
        s.rigl_delta_t = _positive_int(
            100 if s.rigl_delta_t is None else s.rigl_delta_t, "rigl_delta_t"
        )
        s.rigl_alpha = float(0.3 if s.rigl_alpha is None else s.rigl_alpha)
        s.rigl_t_end = float(0.75 if s.rigl_t_end is None else s.rigl_t_end)
        for name in ("rigl_alpha", "rigl_t_end"):
            v = getattr(s, name)
            if not 0.0 < v <= 1.0:  # also NaN
                what = (
                    "the fraction of a layer's non-zeros moved at the first update"
                    if name == "rigl_alpha"
                    else "the fraction of training after which the supports stay fixed"
                )
                raise DctpsError(f"{_named(name)} ({what}) must be in (0, 1], got {v}")
    else:
        given = [
            n for n in ("rigl_delta_t", "rigl_alpha", "rigl_t_end") if getattr(s, n) is not None
        ]
        if given:
            flags = ", ".join(_named(n) for n in given)
            verb = "applies" if len(given) == 1 else "apply"
            raise DctpsError(
                f"{flags} {verb} only with {_setting('rigl', True)} (got "
                f"{given[0]}={getattr(s, given[0])!r})"
            )


def _check_allocation_name(name: str | None, allocations: Sequence[str]) -> None:
    if name is not None and name not in allocations:
        raise unknown_name("allocation", name, allocations)


def _dctps_only(s: SparsityConfig) -> None:
    """Offset / alpha settings away from their defaults apply only to method dctps."""
    for name in ("offset", "alpha", "alpha_init", "charge_alpha"):
        f = SparsityConfig.__dataclass_fields__[name]
        if getattr(s, name) != f.default:
            raise DctpsError(f"{_setting(name, getattr(s, name))} applies only to method dctps")


def _resolve_offset(s: SparsityConfig) -> None:
    from dctps.layers import ALPHA_SCOPES
    from dctps.offsets import check_offset

    s.offset = check_offset(s.offset)
    if s.alpha not in ALPHA_SCOPES:
        raise unknown_name("alpha scope", s.alpha, ALPHA_SCOPES)
    init = s.alpha_init
    if isinstance(init, str):
        if init.strip().lower() == "kaiming":
            init = "kaiming"
        else:
            try:
                init = float(init)
            except ValueError:
                raise DctpsError(
                    f"{_named('alpha_init')} must be a number or 'kaiming', got {init!r}"
                ) from None
    if not isinstance(init, str):
        if isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
            raise DctpsError(
                f"{_named('alpha_init')} must be a finite number or 'kaiming', got {init!r}"
            )
        init = float(init)
        _not_huge(abs(init), "alpha_init")
    s.alpha_init = init
    if s.alpha == "layer":
        s.charge_alpha = True  # nothing to charge: keep one hash for the same experiment
    elif not s.train_alpha:
        # fixed alphas train nothing, so they cost no budget (dctps.sparsify charges only
        # trainable ones); False also gives these runs another hash than those recorded when
        # fixed per-channel alphas were charged, whose S had out-1 fewer entries per layer
        s.charge_alpha = False


#: the largest learning rate, weight decay or alpha a run takes: float32 arithmetic overflows a
#: little above (an Adam step of 10 x lr fails from about 3.4e37 with "value cannot be converted
#: to type float without overflow", and every resume failed the same way)
HUGE = 1e30


def _not_huge(v: float, name: str) -> None:
    if v > HUGE:
        raise DctpsError(
            f"{_named(name)} must be at most {HUGE:g} (float32 training overflows above), got {v:g}"
        )


@functools.cache  # per row of `dctps results` and `dctps plot`: read only
def recipe_defaults(recipe: str, method: str, epochs: int | None = None) -> dict[str, Any]:
    """The ``optim`` settings that recipe ``recipe`` gives a run of ``method`` (Table E.3;
    under SGD, DCTpS's own learning rate), as a resolved config holds them; the milestones
    those of ``epochs`` (default: the recipe's), ``round(f * epochs)`` for each of the recipe's
    fractions ``f``, once each. :func:`_resolve_optim` fills fields left unset from here, so
    what `dctps results` calls a recipe default is what a run was given. Read only: cached."""
    r = RECIPES[recipe]
    e = r.epochs if epochs is None else epochs
    return {
        "optimizer": r.optimizer,
        "lr": float(r.dctps_lr if r.dctps_lr is not None and method == "dctps" else r.lr),
        "momentum": _sgd_momentum(r) if r.optimizer == "sgd" else None,
        "weight_decay": float(r.weight_decay),
        "batch_size": r.batch_size,
        "epochs": r.epochs,
        # with few epochs two fractions may round to one epoch: one decay there
        "milestones": tuple(sorted({round(f * e) for f in r.milestone_fractions})),
        "gamma": float(r.gamma),
    }


def _sgd_momentum(r: Recipe) -> float:
    """The momentum SGD takes under recipe ``r``: the recipe's, else 0.9 (an Adam recipe run
    with ``--optimizer sgd`` and its own ``--lr``)."""
    return r.momentum if r.momentum is not None else 0.9


def _resolve_optim(c: RunConfig) -> None:
    o = c.optim
    if o.recipe is None:
        o.recipe = "lenet" if c.model.name == "lenet5" else "adam"
    if o.recipe not in RECIPES:
        raise unknown_name("recipe", o.recipe, RECIPES)
    r = RECIPES[o.recipe]
    o.optimizer = o.optimizer or r.optimizer
    if o.optimizer not in OPTIMIZERS:
        raise unknown_name("optimizer", o.optimizer, OPTIMIZERS)
    if o.optimizer != r.optimizer and o.lr is None:
        # the recipe's learning rate (and schedule) are tuned for its own optimizer
        mine = next((n for n, x in RECIPES.items() if x.optimizer == o.optimizer), None)
        raise DctpsError(
            f"optimizer {o.optimizer!r} with recipe {o.recipe!r} (whose optimizer is "
            f"{r.optimizer}) would train {o.optimizer} at that recipe's learning rate: use a "
            f"recipe of {o.optimizer}"
            + (f" (--recipe {mine})" if mine else "")
            + f", or give {_named('lr')}"
        )
    o.epochs = _positive_int(r.epochs if o.epochs is None else o.epochs, "epochs")
    defaults = recipe_defaults(o.recipe, c.sparsity.method, o.epochs)
    o.lr = defaults["lr"] if o.lr is None else o.lr
    o.weight_decay = defaults["weight_decay"] if o.weight_decay is None else o.weight_decay
    o.gamma = defaults["gamma"] if o.gamma is None else o.gamma
    o.batch_size = _positive_int(
        defaults["batch_size"] if o.batch_size is None else o.batch_size, "batch_size"
    )
    if o.milestones is None:
        o.milestones = list(defaults["milestones"])
    elif len(set(o.milestones)) != len(o.milestones):
        raise DctpsError(
            f"milestones {o.milestones!r} repeat an epoch (its decay would apply gamma twice): "
            "give distinct epochs"
        )
    if o.optimizer == "sgd":
        o.momentum = _sgd_momentum(r) if o.momentum is None else o.momentum
    elif o.momentum is not None:
        raise DctpsError(
            f"{_named('momentum')} applies only to optimizer sgd (--optimizer sgd; Adam uses "
            "its betas)"
        )
    for name in ("lr", "weight_decay", "gamma") + (("momentum",) if o.momentum is not None else ()):
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise DctpsError(f"{_named(name)} must be a finite number, got {v!r}")
        setattr(o, name, float(v))
    for name in ("lr", "weight_decay"):
        _not_huge(getattr(o, name), name)
    if o.lr <= 0:
        raise DctpsError(f"{_named('lr')} must be > 0, got {o.lr}")
    if o.weight_decay < 0:
        raise DctpsError(f"{_named('weight_decay')} must be >= 0, got {o.weight_decay}")
    if o.momentum is not None and not 0 <= o.momentum < 1:
        raise DctpsError(
            f"{_named('momentum')} must be in [0, 1) (at 1 and above the velocity never decays and "
            f"training diverges), got {o.momentum}"
        )
    if o.gamma <= 0:
        raise DctpsError(
            f"{_named('gamma')} must be > 0 (the LR is multiplied by it at each milestone), "
            f"got {o.gamma}"
        )
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 1 for m in o.milestones):
        raise DctpsError(
            f"{_named('milestones')} must be positive epoch numbers, got {o.milestones!r}"
        )
    o.milestones = sorted(o.milestones)
    try:
        last = o.lr * o.gamma ** len(o.milestones) if o.gamma > 1 else o.lr
    except OverflowError:  # Python's float power raises where a product would give inf
        last = math.inf
    if not last <= HUGE:
        raise DctpsError(
            f"{_named('gamma')} {o.gamma} at {len(o.milestones)} milestone(s) takes the LR "
            f"{o.lr} to {last:.3g}, above {HUGE:g}: float32 training overflows there"
        )


# ----------------------------------------------------------------------------- YAML
def load_config(path: str | os.PathLike[str]) -> RunConfig:
    """Read a YAML run config; unknown keys or ill-typed values raise :class:`DctpsError`."""
    p = user_path(path, "the config path")
    raw = read_yaml(p, "config")
    run_keys = {f.name for f in dataclasses.fields(RunConfig)}
    if (
        isinstance(raw, dict)
        and len(set(raw) & set(GRID_KEYS)) >= 2  # one key may be a typo (models: for model:)
        and not set(raw) & run_keys
        and set(raw) <= set(GRID_KEYS)
    ):
        # a sweep grid given to `dctps train --config` failed on "unknown key 'name'"
        raise DctpsError(
            f"{p} is a sweep grid (keys {', '.join(map(str, raw))}), not a run config: run it "
            f"with `dctps sweep {p}`"
        )
    return RunConfig.from_dict(raw, source=str(p))


#: the top-level keys of a sweep grid (:mod:`dctps.results.sweep`), none of which a run config
#: has
GRID_KEYS = (
    "name", "description", "base", "models", "datasets", "methods", "densities", "seeds",
    "variants", "slurm",
)  # fmt: skip


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error: the plain loader
    keeps the last value without a word (``model: {name: lenet5}`` then ``model: {name: vgg19}``
    trained a VGG19), where every other slip in a config is refused. Keys a merge (``<<: *base``)
    brings in may be overridden, as YAML allows."""

    def flatten_mapping(self, node: Any) -> None:
        # checked once per node, before its merges are flattened into it: a node merged again
        # later (an anchor used twice) already holds the merged keys, which are no repeats
        checked = self.__dict__.setdefault("_dctps_checked", set())
        if id(node) not in checked:
            checked.add(id(node))
            seen: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:  # an unhashable key: the base class says so
                    break
                if first is not key_node:
                    raise yaml.constructor.ConstructorError(
                        None, None,
                        f"key {key!r} is given twice (first on line "
                        f"{first.start_mark.line + 1}); keep one",
                        key_node.start_mark,
                    )  # fmt: skip
        super().flatten_mapping(node)


def read_yaml(path: str | os.PathLike[str], what: str) -> Any:
    """The parsed YAML file ``path``; an unreadable file or a syntax error is one-line DctpsError
    naming ``what`` (e.g. ``config``, ``sweep config``), the path and the line/column."""
    p = user_path(path, f"the {what} path")
    try:
        text = p.read_text(encoding="utf-8")  # as dctps writes them, whatever the locale
    except OSError as e:
        raise DctpsError(f"cannot read {what} {p}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise DctpsError(
            f"cannot read {what} {p}: not UTF-8 text (byte {e.start}: {e.reason}); save it as UTF-8"
        ) from None
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise DctpsError(f"{p} is not valid YAML: {yaml_problem(e)}") from None
    n = expanded_size(value)
    if n > MAX_YAML_VALUES:
        raise DctpsError(
            f"{what} {p} expands to more than {MAX_YAML_VALUES:,} values through its aliases "
            "(*name repeats what &name marks): a config or sweep grid needs far fewer; write "
            "it without nested aliases"
        )
    return value


#: the most values a YAML file may expand to through its aliases: PyYAML shares an alias's
#: value, but every reader walks it whole, and 354 bytes of nested aliases made an error
#: message of 2.3 billion characters (4.7 GB, 114 s)
MAX_YAML_VALUES = 1_000_000


def expanded_size(value: Any, limit: int = MAX_YAML_VALUES) -> int:
    """How many values ``value`` holds, counting a shared list or mapping once per place it
    appears (as a reader walking it sees it): each object's count computed once, so the walk
    is linear in the distinct objects. Stops counting above ``limit``."""
    sizes: dict[int, int] = {}

    def size(v: Any) -> int:
        if not isinstance(v, (list, dict)):
            return 1
        known = sizes.get(id(v))
        if known is not None:
            return known
        sizes[id(v)] = limit + 1  # a cycle (a list holding itself) is too big, not endless
        items = list(v.values()) + list(v.keys()) if isinstance(v, dict) else v
        total = 1
        for item in items:
            total += size(item)
            if total > limit:
                break
        sizes[id(v)] = total
        return total

    return size(value)


def save_config(cfg: RunConfig, path: str | os.PathLike[str]) -> None:
    """Write ``cfg`` as YAML (the format :func:`load_config` reads), atomically: a temporary file
    beside ``path`` replaces it, so a failure (a full disk) leaves the old file whole."""
    if not isinstance(cfg, RunConfig):  # a dict had no to_dict, after the file was opened
        raise DctpsError(
            f"save_config takes a RunConfig (RunConfig.from_dict(d) builds one from a dict), got "
            f"{show(cfg)}"
        )
    path = user_path(path, "the config path")
    with atomic_write(path, "run config") as f:
        f.write(yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True))


# ----------------------------------------------------------------------------- CLI schema
@dataclass(frozen=True)
class CliField:
    """One config field exposed as a CLI flag."""

    flag: str  # without the leading --
    path: tuple[str, ...]  # e.g. ("sparsity", "density")
    type: Any
    help: str
    invert: bool = False
    default: Any = None  # the dataclass default (None: none, or a factory's)
    coerce: bool = False  # the flag takes a string the field's own parser reads ("0.1%")

    @property
    def negative(self) -> str:
        """A boolean flag's other name: ``no-FLAG``, or the field's own for an inverted one
        (``--fixed-alpha/--train-alpha``)."""
        return self.path[-1].replace("_", "-") if self.invert else f"no-{self.flag}"

    def flag_for(self, value: Any) -> str:
        """The flag that gives the field ``value``: ``--fixed-alpha`` for ``train_alpha=False``,
        ``--no-charge-alpha`` for ``charge_alpha=False``, ``--lr 0.1`` for ``lr=0.1``."""
        if isinstance(value, bool):
            return f"--{self.flag if value != self.invert else self.negative}"
        return f"--{self.flag} {value}"

    @property
    def param(self) -> str:
        """Python identifier of the flag (``--data-root`` -> ``data_root``)."""
        return self.flag.replace("-", "_")


def fill_names(text: str) -> str:
    """``text`` with ``{models}``, ``{datasets}``, ``{pruning}``, ``{allocations}``, ``{offsets}``,
    ``{recipes}`` and ``{optimizers}`` replaced by the registries' names, so the help lists what a
    newly registered entry adds."""
    if "{" not in text:
        return text
    from dctps import allocation, data, models, offsets, pruning

    lists = {"models": models, "datasets": data, "pruning": pruning, "allocations": allocation,
             "offsets": offsets}  # fmt: skip
    names = {k: list(m.names()) for k, m in lists.items()}
    names |= {"recipes": list(RECIPES), "optimizers": list(OPTIMIZERS)}
    return text.format(**{k: " | ".join(v) for k, v in names.items()})


def cli_fields() -> list[CliField]:
    """Every leaf field of :class:`RunConfig` with its flag, dotted path, type and help."""
    out: list[CliField] = []

    def walk(cls: type, prefix: tuple[str, ...]) -> None:
        hints = _hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            if isinstance(tp, type) and dataclasses.is_dataclass(tp):
                walk(tp, prefix + (f.name,))
                continue
            flag = f.metadata.get("flag", f.name.replace("_", "-"))
            out.append(
                CliField(
                    flag,
                    prefix + (f.name,),
                    tp,
                    fill_names(f.metadata.get("help", "")),
                    bool(f.metadata.get("invert", False)),
                    None if f.default is dataclasses.MISSING else f.default,
                    "coerce" in f.metadata,
                )
            )

    walk(RunConfig, ())
    return out


def parse_assignment(
    item: str, flag: str = "--option", expect: str = "key=value"
) -> tuple[str, Any]:
    """``'key=value'`` -> ``(key, value)`` with ``value`` read as YAML (``3`` an int, ``a`` a str);
    a missing ``=`` or key is a DctpsError naming ``flag`` and the ``expect``-ed form."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise DctpsError(f"{flag} expects {expect}, got {item!r}")
    if not raw.strip():  # an unset shell variable ($EPOCHS): it fell back to the default
        raise DctpsError(
            f"{flag} {key}= has no value: give one ({key}=VALUE), or {key}=null for the default"
        )
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        value = raw
    if expanded_size(value) > MAX_YAML_VALUES:
        raise DctpsError(
            f"{flag} {key}= expands to more than {MAX_YAML_VALUES:,} values through YAML aliases"
        )
    return key, value


def _derivable_paths() -> list[tuple[str, ...]]:
    """Paths of the fields that :meth:`RunConfig.resolve` fills in when they are ``None`` (their
    default): the recipe's, the method's and the model's derived settings."""
    paths: list[tuple[str, ...]] = [
        (f.name,) for f in dataclasses.fields(RunConfig) if f.default is None
    ]
    for name, section in (("model", ModelConfig), ("data", DataConfig),
                          ("sparsity", SparsityConfig), ("optim", OptimConfig)):  # fmt: skip
        paths += [(name, f.name) for f in dataclasses.fields(section) if f.default is None]
    return paths


def _as_given(base: RunConfig) -> dict[str, Any]:
    """``base`` as a dict, with the values its own resolution derives reset to ``None`` where
    ``base`` is a resolved config (a run's saved ``config.yaml``), so that flags laid over it
    derive them afresh: ``--recipe sgd`` over an Adam run's config trains SGD at SGD's learning
    rate, ``--epochs 10`` moves the milestones (a review: they kept the base's, and the run was
    recorded under the new recipe). A value that resolution would not derive from the rest is
    the base's own choice and stays. A config that is not resolved (a hand-written file) is
    taken as written."""
    d = base.to_dict()
    try:
        if base.resolve() != base:
            return d
    except DctpsError:
        return d
    for path in _derivable_paths():  # one at a time: kept cleared where base still results
        node = d
        for part in path[:-1]:
            node = node[part]
        value, node[path[-1]] = node[path[-1]], None
        try:
            same = RunConfig.from_dict(d).resolve() == base
        except DctpsError:
            same = False
        if not same:
            node[path[-1]] = value
    return d


def _flag_given(cf: CliField, value: Any) -> bool:
    """Whether a flag was typed: ``None`` is not, nor an empty ``--option`` list."""
    return value is not None and not (
        isinstance(value, (list, tuple)) and not value and cf.flag == "option"
    )


def config_from_cli(values: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """Apply CLI flag values (keyed by :attr:`CliField.param`; ``None`` = not given) to ``base``
    (a run's resolved config is first taken back to what was chosen: :func:`_as_given`)."""
    given = any(_flag_given(cf, values.get(cf.param)) for cf in cli_fields())
    d = _as_given(base) if base is not None and given else (base or RunConfig()).to_dict()
    for cf in cli_fields():
        v: Any = values.get(cf.param)
        if not _flag_given(cf, v):
            continue
        if cf.invert:
            v = not v
        if cf.flag == "option":
            opts = dict(d["sparsity"]["options"])
            typed: dict[str, Any] = {}
            for item in v:
                key, value = parse_assignment(str(item))
                if key in typed:
                    raise DctpsError(
                        f"--option {key} given twice ({typed[key]!r} and {value!r}): give it once"
                    )
                typed[key] = value
            opts.update(typed)
            v = opts
        target = d
        for part in cf.path[:-1]:
            target = target[part]
        target[cf.path[-1]] = v
    cfg = RunConfig.from_dict(d, source="command line")
    _check_cli_flags(values, cfg)
    return cfg


def _check_cli_flags(values: dict[str, Any], cfg: RunConfig) -> None:
    """Refuse flags typed on the command line that would have no effect (a config file or
    sweep may carry them for other runs; the resolved config then ignores them quietly)."""
    typed = [f for f in UNUSED_CHECKED if values.get(f) is not None]
    unused = unused_settings(cfg, typed)
    if unused:
        raise DctpsError(unused[0])
    given = values.get("milestones")
    if given:
        epochs = cfg.resolve().optim.epochs
        late = [m for m in cfg.optim.milestones or [] if m >= epochs]  # type: ignore[operator]
        if late:
            raise DctpsError(
                f"--milestones {late[0]} is not below the run's epochs ({epochs}): the learning "
                "rate would never decay there. Give milestones in 1..epochs-1"
            )


#: the settings :func:`unused_settings` checks: each has effect only beside another setting
UNUSED_CHECKED = ("charge_alpha", "batched_rebuild", "gamma", "allocation")


def _non_default(cfg: RunConfig, names: Iterable[str]) -> list[str]:
    """Those of ``names`` (fields of any section, by their last name) that ``cfg`` sets away
    from their defaults: what a Python caller gave, as a flag is what a command line gave."""
    out = []
    for cf in cli_fields():
        if cf.path[-1] in names:
            section: Any = cfg
            for part in cf.path[:-1]:
                section = getattr(section, part)
            field = type(section).__dataclass_fields__[cf.path[-1]]
            if getattr(section, cf.path[-1]) != field.default:
                out.append(cf.path[-1])
    return out


def unused_settings(cfg: RunConfig, given: Iterable[str]) -> list[str]:
    """Why each setting named in ``given`` (of :data:`UNUSED_CHECKED`) has no effect on the run
    ``cfg``, one sentence each; empty where all take effect. ``dctps train`` refuses such flags
    and :func:`dctps.fit` warns of them, while a sweep's base or a config file may carry them
    for some of its runs, where :meth:`RunConfig.resolve` drops them quietly."""
    s, out = cfg.sparsity, []
    given = set(given)
    # resolved once, where a check needs it: the milestones and allocation a run ends up with
    resolved = cfg.resolve() if given & {"gamma", "allocation"} else cfg
    if "charge_alpha" in given and s.charge_alpha is False and s.alpha != "channel":
        out.append(
            f"{_setting('charge_alpha', False)} applies only with {_setting('alpha', 'channel')}"
            f" (with one alpha per layer there are no extra alphas to charge; got alpha "
            f"{s.alpha!r})"
        )
    if "batched_rebuild" in given and cfg.batched_rebuild == "on" and s.method != "dctps":
        out.append(
            f"{_setting('batched_rebuild', 'on')} applies only to method dctps (it batches the "
            f"rebuild of each layer's W = alpha*D + S; got method {s.method!r})"
        )
    if "gamma" in given and cfg.optim.gamma is not None and not resolved.optim.milestones:
        out.append(
            f"{_setting('gamma', cfg.optim.gamma)} applies at milestones, and this run has none "
            f"(the adam and lenet recipes keep a constant learning rate): give "
            f"{_named('milestones')} too, or leave gamma out"
        )
    if "allocation" in given and s.allocation is not None and resolved.sparsity.allocation is None:
        why = ("keeps every weight" if s.method == "dense"
               else "chooses its own per-layer budgets (from its scores)")  # fmt: skip
        out.append(
            f"{_setting('allocation', s.allocation)} applies only to methods dctps and random: "
            f"{s.method} {why}, so leave the allocation out"
        )
    return out


def cli_parameters() -> list[inspect.Parameter]:
    """Typer options for every :func:`cli_fields` entry (all default to ``None`` = not given)."""
    import typer

    params = []
    for cf in cli_fields():
        inner = [a for a in typing.get_args(cf.type) if a is not type(None)] or [cf.type]
        base = inner[0]
        # The options default to None (= not given, so a --config file's value stands): name the
        # config's own default in the help instead, as typer would for a plain default.
        shown = cf.help
        if cf.default is not None and "default" not in cf.help:
            value = cf.default
            if base is bool:
                value = cf.flag_for(bool(cf.default))
            shown = f"{cf.help} (default: {value})"
        if base is bool:
            opt = typer.Option(None, f"--{cf.flag}/--{cf.negative}", help=shown)
            ann: Any = bool | None
        elif cf.flag == "option":
            opt = typer.Option(None, "--option", help=shown)
            ann = list[str] | None
        elif typing.get_origin(base) is list or cf.coerce:  # parsed by config_from_cli
            opt = typer.Option(None, f"--{cf.flag}", help=shown)
            ann = str | None
        else:
            opt = typer.Option(None, f"--{cf.flag}", help=shown)
            ann = base | None
        params.append(
            inspect.Parameter(cf.param, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
        )
    return params
