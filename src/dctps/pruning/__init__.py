"""Pruning at initialisation: the DCTpS paper's baselines (``docs/BASELINES.md``, DCTpS Table E.2).

``prune(model, density, method, batches=None, allocation=None, **options)`` scores the prunable
weights (the ``.weight`` of every Conv2d and Linear, first/last layers included; biases and BN are
never pruned) on a deep copy of ``model``, chooses EXACTLY ``k = round(density * N)`` of the ``N``
weights globally (ties broken by index; ``allocation='epl_ref'`` rounds each layer on its own, as
the authors' code did, so its total may differ: :mod:`dctps.allocation`), and applies the mask
to ``model``'s own initial weights in ``torch.nn.utils.prune`` convention (``weight_orig`` +
``weight_mask``; pruned entries of ``weight_orig`` are zeroed and receive no gradient). It
never prints unless asked to: with ``progress=True`` it shows a tqdm bar of the method's
iterations on stderr (a one-line status for the one-shot methods), closed when pruning ends or
fails; ``progress=callback`` gets ``callback(step, steps)`` instead
(:mod:`dctps.pruning.progress`). Time it from the caller.

=============  ====================================================  ==========  =================
method         score (docs/BASELINES.md section)                     data        defaults
=============  ====================================================  ==========  =================
``random``     uniformly random, per-layer counts from ``budgets``   no          uniform (§1)
``snip``       ``|W * g|``, one shot (§2)                            yes         1 batch
``iter_snip``  ``|W * g|`` at ``W0*m``, pruned stay pruned (§3) =    yes         60 steps, exp
               the DCTpS paper's "FORCE"
``force``      ``|W0 * g(W0*m)|``, pruned can return (§4)            yes         60 steps, exp
``synflow``    ``|theta * dR/dtheta|``, all-ones input (§5)          shape only  100 iters, exp,
                                                                                 float64
``grasp``      ``theta * Hg``, signed (§6)                           yes         1 batch, T=200
=============  ====================================================  ==========  =================

Failure: ``prune`` raises :class:`~dctps.errors.PruningFailed` and leaves ``model`` unchanged
(nothing is applied); it never returns a dense or a disconnected network under a sparse label:

* when a method cannot reach the density: all-zero, non-finite, or fewer than ``k_t`` positive
  scores at some step (e.g. FORCE/SynFlow on FixupResNet110, App. D.2), or, for GraSP's signed
  scores, a ``k``-th largest score of exactly 0 with zero scores left out, so that the kept
  weights would be chosen by index among the zeros (GraSP on FixupResNet110); ``reached`` = the
  density reached before the failing step;
* when the final masks of any method (``random`` included) leave no path of kept weights from
  the input to the output (layer collapse: SNIP/GraSP on LeNet-5 at 0.1%; Iter-SNIP/FORCE/SynFlow
  on an MLP with biases, which keep the last layer's scores positive), found by one SynFlow-like
  forward of a linearised copy (:mod:`dctps.pruning.connectivity`); ``reached`` = the density;
  the message names the layers that keep no weight. The check runs on models built only from
  the layer types of :data:`~dctps.pruning.connectivity.SAFE_LEAVES` (all six of
  :mod:`dctps.models`; not a model with a LayerNorm, GroupNorm or attention) whose input shape
  is known (from ``batches``, SynFlow's ``input_shape``, or :func:`dctps.models.build`); other
  models are not checked, nor is any with ``require_path=False``.

To add a method: write one file with ``def my_masks(ctx: Context, *, option=default, ...)``
returning one boolean mask per ``ctx.targets`` entry (reporting its steps with ``ctx.report(t, T)``,
``t = 0..T``, for ``progress``), and add one line to ``_REGISTRY``.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from dctps._compat import OutOfMemoryError
from dctps._types import ModuleT
from dctps.allocation import budgets
from dctps.allocation import names as allocation_names
from dctps.errors import DctpsError, check_density, check_module, check_seed, unknown_name
from dctps.pruning.common import (
    Bound,
    Context,
    SeedOption,
    apply_masks,
    connect_attention,
    prepare_pruned_structure,
    targets,
)
from dctps.pruning.connectivity import check_connected, input_shape_of
from dctps.pruning.force import force_masks, iter_snip_masks
from dctps.pruning.grasp import grasp_masks
from dctps.pruning.progress import ProgressFn, PruneBar
from dctps.pruning.random import random_masks
from dctps.pruning.snip import snip_masks
from dctps.pruning.synflow import synflow_masks
from dctps.sparsify import left_dense_layers, warn_left_dense

__all__ = ["prune", "build", "names", "default_batches", "prepare_pruned_structure", "Context",
           "Method", "Pruner", "PATH_CHECK"]  # fmt: skip

#: Part of a pruned run's identity (:meth:`dctps.train.config.RunConfig.identity`, as
#: ``sparsity.path_check``): :func:`prune` checks its final masks for an input-output path, so
#: a run whose masks have none fails where a run recorded before the check trained a
#: disconnected network to chance accuracy and was recorded ``done``. Such rows are never
#: reused or averaged with today's (a run's hash changed with the check).
PATH_CHECK = 1


@dataclass(frozen=True)
class Method:
    """A registry entry: ``masks(ctx, **options)``; ``needs_data``: ``batches`` is required.

    ``revision``: raise it when a change makes the method choose other masks for the same
    options (a new default, a fixed bug): options equal to their default are left out of a
    run's identity, so without it a sweep would take runs recorded before for today's (above
    1 it enters the identity as ``sparsity.method_revision``; 1 leaves every hash as it was).
    """

    masks: Callable[..., list[torch.Tensor]]
    needs_data: bool
    revision: int = 1


_REGISTRY: dict[str, Method] = {
    "random": Method(random_masks, needs_data=False),
    "snip": Method(snip_masks, needs_data=True),
    "iter_snip": Method(iter_snip_masks, needs_data=True),
    "force": Method(force_masks, needs_data=True),
    "synflow": Method(synflow_masks, needs_data=False),
    "grasp": Method(grasp_masks, needs_data=True),
}

# DCTpS Table E.2: batches (of 128) per FORCE/Iter-SNIP gradient; other data sets take 1.
_DEFAULT_BATCHES = {"cifar10": 1, "cifar100": 10, "tiny_imagenet": 20}


def names() -> list[str]:
    """The pruning methods :func:`prune` accepts, sorted."""
    return sorted(_REGISTRY)


def revision(name: str) -> int:
    """The :attr:`Method.revision` of pruning method ``name``."""
    if name not in _REGISTRY:
        raise unknown_name("pruning method", name, names())
    return _REGISTRY[name].revision


@dataclass(frozen=True)
class Pruner:
    """One pruning method with its options, checked once: ``pruner(model, density, batches)``
    is ``prune(model, density, name, batches, **options)``. Made by :func:`build`."""

    name: str
    options: Mapping[str, Any] = field(hash=False)  # a read-only view, set by build

    def __reduce__(self) -> tuple[Any, ...]:
        # a mappingproxy does not pickle: rebuilt (and re-checked) from a plain dict, so that a
        # pruner goes to a spawned worker or into a deep-copied config
        return (_rebuild_pruner, (self.name, dict(self.options)))

    @property
    def needs_data(self) -> bool:
        """Whether calling it needs ``batches`` (``snip``, ``iter_snip``, ``force``, ``grasp``)."""
        return _REGISTRY[self.name].needs_data

    def __call__(
        self,
        model: ModuleT,
        density: float,
        batches: Iterable[Any] | Callable[[], Iterator[Any]] | None = None,
        **kwargs: Any,
    ) -> ModuleT:
        """Prune ``model`` in place to ``density`` (keyword arguments as :func:`prune`'s:
        ``allocation``, ``progress``, ``require_path``); return it."""
        again = sorted(set(kwargs) & set(self.options))
        if again:
            raise DctpsError(
                f"this {self.name} pruner was built with {', '.join(again)}: build another "
                f"(dctps.pruning.build({self.name!r}, ...)) rather than passing it again"
            )
        return prune(model, density, self.name, batches, **kwargs, **self.options)


def build(name: str, **options: Any) -> Pruner:
    """The pruning method ``name`` (one of :func:`names`) with its keyword ``options``
    (``steps=60``, ``num_batches=10``, ...), both checked now rather than at the first call:
    an unknown name or option is a :class:`DctpsError` with a did-you-mean, a value outside its
    range one naming the range."""
    _checked_entry(name, options)
    return Pruner(name, MappingProxyType(dict(options)))


def _rebuild_pruner(name: str, options: dict[str, Any]) -> Pruner:
    return build(name, **options)


def _checked_entry(method: object, options: Mapping[str, Any]) -> Method:
    """The registry entry of ``method``, its ``options`` checked (names against the method's
    keyword options, values against their ranges), or a :class:`DctpsError`."""
    entry = _REGISTRY.get(method) if isinstance(method, str) else None
    if entry is None:
        raise unknown_name("pruning method", method, names())
    assert isinstance(method, str)
    _check_options(method, entry.masks, options)
    params = _signature(entry.masks).parameters
    for key, value in options.items():
        # the checks a run's config makes, on the values given here (a torch.dtype, a tuple)
        _canonical_value(method, key, value, params[key].annotation)
    return entry


def _raised_in(e: BaseException, masks: Callable[..., Any]) -> bool:
    """Whether ``e`` was raised in dctps's and the method's own code alone: by a torch operator
    they called, with no frame of the model's forward, a loss, autograd or the caller's
    batches (all outside dctps) on its way. Then it is a bug of the method, reported as such
    (an extensibility review: a new method's own failed matmul read as "could not run the
    model on the batches", a bad input); otherwise the model or the batches refused."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
    own = os.path.abspath(getattr(getattr(masks, "__code__", None), "co_filename", package))
    tb = e.__traceback__
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if not path.startswith(package) and path != own:
            return False
        tb = tb.tb_next
    return True


#: phrases of torch's errors for an input of the wrong shape or a label out of range (not a
#: loader's own "list index out of range" or "shared memory size")
_SHAPE_WORDS = (
    "shape", "size mismatch", "sizes of tensors", "must match the size", "input size",
    "dimension", "dim ", "expected input", "channels", "out of bounds", "target",
)  # fmt: skip


def _hint(first: str, dtype: torch.dtype | None) -> str:
    """What to check, in parentheses, for torch's error ``first`` from the model on the batches;
    nothing where no cause is known (a loader's own error: its message says it)."""
    low = first.lower()
    if torch.is_inference_mode_enabled():
        return (" (prune computes gradients, which torch.inference_mode() forbids: call it "
                "outside the inference_mode block)")  # fmt: skip
    if "dtype" in low or "scalar type" in low:
        return f" (batches must have the model's dtype, {dtype})"
    if any(w in low for w in _SHAPE_WORDS):
        return " (check the input shape and that labels lie in 0..classes-1)"
    return ""


def default_batches(dataset_name: str) -> int:
    """Batches per gradient for ``iter_snip``/``force`` (Table E.2): CIFAR-10 1, CIFAR-100 10,
    Tiny ImageNet 20; any other registered data set (``digits``, one a user adds), 1 as CIFAR-10."""
    from dctps.data import names as data_names

    if dataset_name in _DEFAULT_BATCHES:
        return _DEFAULT_BATCHES[dataset_name]
    if dataset_name in data_names():
        return 1
    raise unknown_name("data set", dataset_name, data_names())


def _check_options(method: str, fn: Callable[..., Any], options: Mapping[str, Any]) -> None:
    valid = [p.name for p in _signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY]
    for key in options:
        if key not in valid:
            err = unknown_name(f"option for pruning method {method!r}:", key, valid)
            raise DctpsError(str(err))


# Methods whose gradient is averaged over Table E.2's per-dataset batch counts (their
# ``num_batches`` default, as a run fills it in, is :func:`default_batches` of its data set).
TABLE_E2_BATCHES = ("iter_snip", "force")


def _typed(where: str, value: Any, kind: type) -> Any:
    """``value`` as option type ``kind`` (``bool``, ``int``, ``float``, ``str``) holds it:
    ``60.0`` as an int is ``60``, ``200`` as a float ``200.0``; another type is refused."""
    if kind is bool:
        if not isinstance(value, bool):
            raise DctpsError(f"{where} must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise DctpsError(f"{where} must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DctpsError(f"{where} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise DctpsError(f"{where} must be a string, got {value!r}")
    return value


@functools.cache  # once per annotation: `dctps results` canonicalises every row's options
def _unwrap(kind: Any) -> tuple[Any, tuple[Any, ...], tuple[Any, ...], bool]:
    """An option's annotation as ``(type, choices, checks, optional)``: ``Literal["exp",
    "linear"]`` is ``(str, ("exp", "linear"), (), False)``, ``Annotated[int, Bound(ge=1)]`` is
    ``(int, (), (Bound,), False)``, ``Literal[1, 2] | None`` is ``(int, (1, 2), (), True)``."""
    checks: tuple[Any, ...] = ()
    if typing.get_origin(kind) is typing.Annotated:
        kind, *declared = typing.get_args(kind)
        checks = tuple(declared)
    args = typing.get_args(kind)
    optional = type(None) in args and len(args) == 2
    other = next((a for a in args if a is not type(None)), None)
    if optional and typing.get_origin(other) in (typing.Literal, typing.Annotated):
        # an optional choice or range: its own checks, None allowed
        inner, choices, more, _ = _unwrap(other)
        return inner, choices, checks + more, True
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        return type(choices[0]), choices, checks, False
    return kind, (), checks, optional


def _check_declared(where: str, value: Any, checks: tuple[Any, ...]) -> None:
    """The checks an option's annotation declares (:class:`Bound`, :class:`SeedOption`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return  # None (a seed left to the global generator), or a type refused elsewhere
    for check in checks:
        if isinstance(check, Bound):
            check.check(where, value)
        elif check is SeedOption and isinstance(value, int):
            check_seed(value, where)


def _canonical_value(method: str, name: str, value: Any, annotation: Any) -> Any:
    """``value`` of option ``name`` as the type of its annotation holds it, or a
    :class:`DctpsError` naming the option, the value and what would be valid: the choices of
    a ``Literal``, the range of a :class:`Bound` (checked before any data is loaded: a sweep's
    ``--dry-run`` lists such a run as refused, not as one that fails when it comes)."""
    where = f"option {name} of pruning method {method!r}"
    kind, choices, checks, optional = _unwrap(annotation)
    if value is None and optional:
        return None
    if kind in (bool, int, float, str):
        value = _typed(where, value, kind)
        if choices and value not in choices:
            shown = ", ".join(map(str, choices))
            raise DctpsError(f"{where} must be one of {shown}, got {value!r}")
        _check_declared(where, value, checks)
        return value
    if kind is torch.dtype:
        dtype = value
        if isinstance(value, str):
            dtype = getattr(torch, value.removeprefix("torch."), None)
        if dtype not in (torch.float32, torch.float64):  # half types: see synflow_masks
            raise DctpsError(f"{where} must name float32 or float64, got {value!r}")
        return str(dtype).removeprefix("torch.")  # a config holds names, not torch objects
    _check_declared(where, value, checks)  # random's seed (int | None), as it was given
    return value  # e.g. synflow's input_shape: checked by the method when it runs


@functools.cache
def _signature(fn: Callable[..., Any]) -> inspect.Signature:
    """``fn``'s signature with its annotations evaluated, once per method: ``dctps results``
    canonicalises every row's options (inspect took a third of its time at 12,000 rows)."""
    return inspect.signature(fn, eval_str=True)


def canonical_options(
    method: str, options: Mapping[str, Any], dataset: str | None = None
) -> dict[str, Any]:
    """``options`` of pruning ``method`` as a run's identity holds them: one form per setting.

    Names are checked against the method's keyword options (an unknown one is a
    :class:`DctpsError` with a did-you-mean, before any data is loaded); values take their
    option's type (``steps: 60.0`` -> ``60``, ``temperature: 200`` -> ``200.0``; a wrong type is
    refused); options equal to their default are left out, the default of ``num_batches`` for
    :data:`TABLE_E2_BATCHES` being Table E.2's for ``dataset`` (:func:`default_batches`). So
    ``steps=60``, ``steps=60.0`` and no option at all are one run, with one hash.
    """
    if method not in _REGISTRY:
        raise unknown_name("pruning method", method, names())
    fn = _REGISTRY[method].masks
    _check_options(method, fn, options)
    params = _signature(fn).parameters
    out: dict[str, Any] = {}
    for name, value in options.items():
        p = params[name]
        default = p.default
        if name == "num_batches" and method in TABLE_E2_BATCHES and dataset is not None:
            default = default_batches(dataset)
        if value is None and default is None:
            continue
        value = _canonical_value(method, name, value, p.annotation)
        if isinstance(default, torch.dtype):
            default = str(default).removeprefix("torch.")
        if type(value) is type(default) and value == default:
            continue
        out[name] = value
    return out


def prune(
    model: ModuleT,
    density: float,
    method: str,
    batches: Iterable[Any] | Callable[[], Iterator[Any]] | None = None,
    allocation: str | None = None,
    *,
    progress: bool | ProgressFn | None = None,
    require_path: bool = True,
    **method_options: Any,
) -> ModuleT:
    """Prune ``model`` in place at initialisation to ``density``; return ``model``.

    Args:
        model: a dense model (Linear/Conv2d weights not yet pruned).
        density: fraction of prunable weights kept, in (0, 1]; exactly ``round(density * N)`` are
            (but for ``allocation='epl_ref'``, rounded per layer).
        method: one of :func:`names` (see the module table).
        batches: ``(x, y)`` float batches: an iterable (list, DataLoader, ``dctps.data.Loader``)
            or a zero-argument callable returning an iterator. Iterative methods draw fresh
            batches at every step, restarting the iterable when it ends. Required by ``snip``,
            ``iter_snip``, ``force``, ``grasp``; ``synflow`` only reads the input shape from it
            (or takes ``input_shape=``); ``random`` ignores it.
        allocation: per-layer budgets for ``random`` (``uniform`` default, ``epl``, ``epf``,
            ``erk``, ``epl_ref``); the score-based methods allocate globally and reject it.
        progress: ``None``/``False`` (default): silent. ``True``: a tqdm bar on stderr,
            ``pruning <method> to density <d>: t/T``, one tick per iteration (SynFlow) or step
            (FORCE, Iter-SNIP); a one-line status for ``snip``/``grasp``/``random``. A callable:
            called as ``progress(step, steps)``, once with ``step=0`` when the method starts, then
            after each of its ``steps`` steps.
        require_path: check that the final masks leave a path of kept weights from the input to
            the output (module doc, Failure); ``False`` skips the check, e.g. for a mask that
            dynamic sparse training (RigL) will change, which can grow such a path back.
        **method_options: the keyword options of the method's function, e.g. ``steps``,
            ``num_batches``, ``loss`` (``iter_snip``/``force``), ``iterations``,
            ``synflow_dtype`` (``synflow``), ``seed`` (``random``).

    Raises:
        DctpsError: bad density, method, option or allocation, missing batches, a density that
            keeps no weight, an already pruned model.
        PruningFailed: the method cannot reach the density, or its masks leave no path from
            input to output (``model`` is left unchanged).
    """
    check_module(model, "prune")
    d = check_density(density)
    entry = _checked_entry(method, method_options)
    if not (progress is None or isinstance(progress, bool) or callable(progress)):
        raise DctpsError(
            f"progress must be True, False, None or a callable(step, steps), got {progress!r}"
        )
    if entry.needs_data and batches is None:
        raise DctpsError(f"pruning method {method!r} needs data: pass batches=...")
    if allocation is not None:
        if method != "random":
            raise DctpsError(
                f"allocation={allocation!r} applies only to method 'random'; {method!r} "
                "allocates globally by score"
            )
        if allocation not in allocation_names():
            raise unknown_name("allocation", allocation, allocation_names())
    layers = targets(model)
    if any(t.weight.device.type == "meta" for t in layers):
        raise DctpsError(
            "prune needs the model's weights: it is on the meta device (no values to score). "
            "Materialise it first (model.to_empty(device=...) and initialise or load it)"
        )
    total = sum(t.weight.numel() for t in layers)
    k = round(d * total)
    if k < 1:
        raise DctpsError(f"density {d:g} keeps round({d:g} * {total}) = 0 weights")
    bar = PruneBar(method, d) if progress is True else None
    report = bar if bar is not None else progress if callable(progress) else None
    ctx = Context(model, layers, d, total, k, batches, allocation, report)
    if k == total:
        masks = [torch.ones_like(t.weight, dtype=torch.bool) for t in layers]
    else:
        ok = False
        try:
            with torch.enable_grad():
                masks = entry.masks(ctx, **method_options)
            if require_path:
                shape = input_shape_of(model, ctx.input_shape, batches)
                check_connected(model, layers, masks, method=method, density=d, input_shape=shape)
            ok = True
        except OutOfMemoryError:
            raise  # a resource problem, not bad input: keep torch's own error
        except (RuntimeError, IndexError) as e:
            if _raised_in(e, entry.masks):  # a bug in the method's own code: its traceback
                raise
            # the model cannot run on the given batches (or its loss on their labels)
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
            raise DctpsError(
                f"pruning method {method!r} could not run the model on the batches: {first}"
                + _hint(first, dtype)
            ) from e
        finally:
            if bar is not None:
                stopped = isinstance(sys.exc_info()[1], KeyboardInterrupt)
                bar.close(None if ok else "interrupted" if stopped else "failed")
    expected = k
    if allocation == "epl_ref":
        expected = sum(budgets([tuple(t.weight.shape) for t in layers], d, allocation))
    kept = sum(int(m.sum()) for m in masks)
    if kept != expected:  # an internal invariant: every method selects exactly k
        raise RuntimeError(f"{method} kept {kept} weights, expected {expected}")
    apply_masks(layers, masks)
    connect_attention(model)
    warn_left_dense(left_dense_layers(model), "prune")
    return model
