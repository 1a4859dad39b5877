"""Shared machinery of the pruning-at-initialisation methods (see ``docs/BASELINES.md`` §0).

* :func:`targets` lists the prunable weights: the ``.weight`` of every ``nn.Conv2d`` and
  ``nn.Linear`` (first and last layers, 1x1 shortcuts and depthwise convs included) and the packed
  ``in_proj_weight`` of ``nn.MultiheadAttention``. Biases and BatchNorm are never pruned.
* :func:`top_k_mask` keeps EXACTLY ``k`` entries: the ``k`` largest scores, ties broken by the
  smaller flat index (the order of a stable sort on ``(score desc, index asc)``). The references
  keep every score ``>= tau`` (FORCE, density can overshoot) or ``> tau`` (SynFlow, undershoot).
* :func:`schedule` is the density schedule of the iterative methods: exponential
  ``d_t = d^(t/T)`` or linear ``d_t = 1 - t(1 - d)/T`` for ``t = 1..T`` (§0), with
  ``k_t = round(N d_t)`` weights kept at step ``t`` and ``d_T = d`` exactly.
* :func:`check_scores` turns the references' silent failures into :class:`PruningFailed`: a step
  whose scores are not all finite, or that has fewer than ``k_t`` strictly positive scores (the
  FORCE code's ``tau = 0`` case, which keeps every weight and trains a dense network, §3); for
  signed scores (GraSP), all-zero scores or a ``k``-th largest score of exactly 0 with zero
  scores left out (the kept set would be chosen by index among the zeros).
* :func:`average_gradients` is ``g = (1/B) sum_b dL_b/dW`` over ``B`` fresh batches (§3 step 1).
* :func:`apply_masks` applies the final masks in ``torch.nn.utils.prune``'s convention (the
  module gets ``weight_orig`` and a ``weight_mask`` buffer, ``weight = weight_orig * weight_mask``,
  so the gradient of ``weight_orig`` is masked by the product rule) and zeroes the pruned entries
  of ``weight_orig``, so they stay exactly 0 under SGD/Adam/weight decay. Its pruning method,
  :class:`Mask`, is torch's ``CustomFromMask`` whose model ``copy.deepcopy`` can copy after a
  forward.
"""

from __future__ import annotations

import copy
import math
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from dctps.errors import DctpsError, PruningFailed, check_module, unknown_name
from dctps.sparsify import prunable_layers, reparametrisation, tied_weight

__all__ = [
    "Context",
    "Target",
    "BatchStream",
    "targets",
    "weights_of",
    "kth_largest",
    "read_ints",
    "top_k_mask",
    "global_masks",
    "schedule",
    "step_counts",
    "check_scores",
    "any_positive",
    "average_gradients",
    "loss_fn",
    "Mask",
    "apply_masks",
    "connect_attention",
    "density_of",
    "model_device",
    "LOSSES",
    "SCHEDULES",
    "Bound",
    "Count",
    "Loss",
    "Positive",
    "Schedule",
    "Seed",
    "SeedOption",
]

#: an option naming one of a few choices is a ``Literal`` (checked, with its choices, when a
#: run's config resolves); one that counts or must be positive is ``Annotated`` with its
#: :class:`Bound`: a method declares its own, and no other method's option of the same name
#: is held to them
Schedule = Literal["exp", "linear"]
Loss = Literal["cross_entropy", "nll_raw"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
LOSSES: tuple[str, ...] = get_args(Loss)


@dataclass(frozen=True)
class Bound:
    """The range of a numeric method option, in its annotation (``Annotated[int, Bound(ge=1)]``):
    checked with the option's name when the options are (by :func:`dctps.pruning.build`,
    ``prune`` and a run's config, before any data is loaded)."""

    ge: float | None = None
    gt: float | None = None

    def check(self, where: str, value: float) -> None:
        """A :class:`DctpsError` naming ``where`` if ``value`` is outside the range."""
        if self.ge is not None and not value >= self.ge:
            kind = "an integer" if isinstance(value, int) else "a number"
            raise DctpsError(f"{where} must be {kind} >= {self.ge:g}, got {value!r}")
        if self.gt is not None and not value > self.gt:
            raise DctpsError(f"{where} must be > {self.gt:g}, got {value!r}")


class SeedOption:
    """An option that seeds a generator (``Annotated[int | None, SeedOption]``): checked to lie
    in ``[0, 2**63)``, as every seed of a run."""


#: steps, iterations, batches per gradient: at least 1
Count = Annotated[int, Bound(ge=1)]
#: a temperature, a scale: above 0
Positive = Annotated[float, Bound(gt=0)]
Seed = Annotated[int | None, SeedOption]


@dataclass(frozen=True)
class Target:
    """One prunable weight ``getattr(module, attr)`` (``weight`` or ``in_proj_weight``)."""

    name: str
    module: nn.Module
    attr: str

    @property
    def weight(self) -> torch.Tensor:
        """The target's current weight tensor (``module.<attr>``)."""
        return getattr(self.module, self.attr)


def targets(model: nn.Module) -> list[Target]:
    """The prunable weights of ``model`` in module order (see module doc).

    Raises :class:`DctpsError` when there is none, or when one is already pruned or has a
    weight computed by a reparametrisation (``weight_norm``, ``spectral_norm``):
    :func:`~dctps.sparsify.reparametrisation` names the call that removes it.
    """
    from dctps.layers import DCTpSLayer

    out: list[Target] = []
    layers = list(prunable_layers(model))
    for name, module, _ in layers:
        attr = "in_proj_weight" if isinstance(module, nn.MultiheadAttention) else "weight"
        found = reparametrisation(module, attr)
        if found is not None and found[0] == "torch.nn.utils.prune":
            raise DctpsError(
                f"layer {name!r} is already pruned ({attr}_orig and {attr}_mask exist); call "
                f"{found[1]} first"
            )
        if found is not None:  # the mask would go on a computed weight, or fail in torch
            raise DctpsError(
                f"layer {name!r} has its {attr} computed by {found[0]}; pruning masks a plain "
                f"weight Parameter. Call {found[1]} first, and apply it again after pruning "
                "if you need it"
            )
        out.append(Target(name, module, attr))
    if not out:
        raise DctpsError(
            "the model has no dense Linear/Conv2d weights to prune (DCTpS layers cannot be pruned)"
        )
    dctps_layers = [n for n, m in model.named_modules() if isinstance(m, DCTpSLayer)]
    if dctps_layers:
        raise DctpsError(
            f"the model mixes DCTpS layers ({dctps_layers[0]!r}, ...) with dense ones "
            f"({out[0].name!r}, ...); pruning would prune only the dense ones, to a density "
            "counted over them alone. Prune the dense model, or sparsify it entirely"
        )
    tied = tied_weight(model, layers)
    if tied is not None:
        layer, other = tied
        raise DctpsError(
            f"the weight of {layer!r} is also {other!r} (tied weights); pruning layer by layer "
            "would mask the shared tensor once per layer and the tied modules would no longer "
            "share their weights. Untie them before pruning"
        )
    return out


def weights_of(model: nn.Module) -> list[torch.Tensor]:
    """The prunable weight Parameters of ``model`` (same order as :func:`targets`)."""
    return [t.weight for t in targets(model)]


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# --------------------------------------------------------------------------- top-k and schedule


def kth_largest(values: torch.Tensor, k: int, *, select: bool | None = None) -> torch.Tensor:
    """The ``k``-th largest entry of the 1-D ``values`` (``1 <= k <= N``; duplicates counted), a
    0-d tensor on its device.

    ``select`` (default: on the CPU only): ``kthvalue``, a quickselect on the CPU; otherwise the
    smallest of ``topk(k)`` (for ``k > N / 2`` the largest of the ``N - k + 1`` smallest: half
    the memory at most), the same value. CUDA's ``kthvalue`` gives one slice one thread
    block: on a ResNet18's 11.2 M float64 SynFlow scores it took 85-105 ms on an H200, 90% of a
    SynFlow iteration's GPU time, where ``topk`` took 0.6 ms (a sort 1.3 ms); on the CPU,
    ``kthvalue`` takes 210 ms and ``topk`` 250 ms at ``k = N / 2``
    (``benchmarks/threshold_time.py``; ``benchmarks/RESULTS.md``, session 17).
    """
    if select is None:
        select = values.device.type == "cpu"
    n = values.numel()
    if select:
        return torch.kthvalue(values, n - k + 1).values
    if k > n // 2:  # the same entry from the shorter side: the largest of the n - k + 1 smallest
        return torch.topk(values, n - k + 1, largest=False, sorted=False).values.max()
    return torch.topk(values, k, sorted=False).values.min()


def top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest entries of the 1-D ``scores``, exactly ``k`` of them.

    Ties at the threshold are broken by the smaller index, i.e. the result equals taking the first
    ``k`` of a stable sort by descending score. The threshold ``tau`` is the ``k``-th largest
    value (:func:`kth_largest`), every score ``> tau`` is kept, and the remaining slots go to the
    first entries equal to ``tau``. ``scores`` must be free of NaN (see :func:`check_scores`).
    """
    n = scores.numel()
    if k <= 0:
        return torch.zeros(n, dtype=torch.bool, device=scores.device)
    if k >= n:
        return torch.ones(n, dtype=torch.bool, device=scores.device)
    tau = kth_largest(scores.flatten(), k)
    mask = scores.flatten() > tau
    need = k - int(mask.sum())
    if need > 0:
        ties = torch.nonzero(scores.flatten() == tau).flatten()[:need]
        mask[ties] = True
    return mask


def global_masks(scores: Sequence[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Per-layer boolean masks keeping the ``k`` globally largest scores (see :func:`top_k_mask`).

    Layers are concatenated in order, so ties are broken by (layer index, flat index in layer).
    """
    dtype = torch.promote_types(scores[0].dtype, torch.float32)
    flat = torch.cat([s.detach().flatten().to(dtype) for s in scores])
    keep = top_k_mask(flat, k)
    return [
        m.view_as(s) for m, s in zip(keep.split([s.numel() for s in scores]), scores, strict=True)
    ]


def schedule(density: float, steps: int, mode: str = "exp") -> list[float]:
    """Densities ``d_1..d_T`` of an iterative pruning run (``docs/BASELINES.md`` §0).

    ``exp``: ``d_t = d^(t/T)`` (each step keeps the same fraction ``d^(1/T)`` of what remains);
    ``linear``: ``d_t = 1 - t(1 - d)/T``. The last entry is exactly ``density``.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise DctpsError(f"steps must be an integer >= 1, got {steps!r}")
    if mode == "exp":
        out = [density ** (t / steps) for t in range(1, steps + 1)]
    elif mode == "linear":
        out = [1.0 - t * (1.0 - density) / steps for t in range(1, steps + 1)]
    else:
        raise unknown_name("pruning schedule", mode, SCHEDULES)
    out[-1] = density
    return out


def step_counts(density: float, steps: int, mode: str, total: int, k: int) -> list[int]:
    """``k_t = round(N d_t)`` for each step of :func:`schedule`, non-increasing, ending at ``k``."""
    counts = [min(total, max(k, round(total * d))) for d in schedule(density, steps, mode)]
    counts[-1] = k
    return counts


def check_scores(
    scores: Sequence[torch.Tensor],
    k: int,
    *,
    method: str,
    step: int,
    steps: int,
    reached: float,
    require_positive: bool = True,
    final: bool = True,
) -> bool:
    """Check the scores of one step; raise :class:`PruningFailed` when they cannot choose ``k``.

    * any NaN/inf score (e.g. SynFlow's float32 overflow on deep nets, §5): raise;
    * ``require_positive`` and fewer than ``k`` scores ``> 0`` (a "shortfall": the FORCE code then
      has ``tau = 0`` and keeps every weight, §3; SynFlow's code keeps fewer than ``k``, §5):
      raise if ``final`` (the reference would return a dense network, App. D), else return
      ``False`` and let the method continue as its reference does;
    * signed scores (``require_positive=False``, GraSP): raise if every score is zero, or if the
      ``k``-th largest score is exactly 0 while some zero scores are left out (fewer than ``k``
      positive, more than ``k`` non-negative): which weights are kept would then be decided by
      index order among the zeros (e.g. GraSP on FixupResNet110, whose zero-initialised layers
      give almost every weight a zero score), not by saliency.

    Returns ``True`` when the scores can choose ``k`` weights. ``reached`` (recorded in the error)
    is the density reached before this step (1.0 before the first).
    """
    where = f"{method}: step {step}/{steps}"
    n = len(scores)
    # every count the checks below may need, read to the host at once: one read per layer and
    # per count waited for the queued GPU work each time (2-4 per layer per step, see read_ints)
    parts = [torch.isfinite(s).all() for s in scores] + [(s > 0).sum() for s in scores]
    if not require_positive:
        parts += [(s != 0).any() for s in scores] + [(s >= 0).sum() for s in scores]
    got = read_ints(parts)
    finite = all(got[:n])
    if not finite:
        raise PruningFailed(f"{where}: non-finite saliency scores (NaN/inf)", reached=reached)
    positive = sum(got[n : 2 * n])
    if not require_positive:
        if not any(got[2 * n : 3 * n]):
            raise PruningFailed(f"{where}: all saliency scores are zero", reached=reached)
        nonnegative = sum(got[3 * n :])
        if positive < k < nonnegative:  # the k-th largest score is 0, and so are excluded ones
            nonzero = sum(read_ints([(s != 0).sum() for s in scores]))
            total = sum(s.numel() for s in scores)
            raise PruningFailed(
                f"{where}: only {nonzero} of {total} saliency scores are nonzero ({positive} > 0) "
                f"but {k} weights must be kept: the other {k - positive} would be chosen among "
                f"the {nonnegative - positive} zero scores by index order, not by saliency",
                reached=reached,
            )
        return True
    if positive >= k:
        return True
    if final:
        total = sum(s.numel() for s in scores)
        raise PruningFailed(
            f"{where}: only {positive} of {total} saliency scores are > 0 but {k} weights must "
            "be kept (all-zero saliency / throughput collapse; the reference would return a "
            "dense network)",
            reached=reached,
        )
    return False


def read_ints(parts: Sequence[torch.Tensor]) -> list[int]:
    """0-d bool or integer tensors (flags, counts) as Python ints, read with ONE host transfer.

    Each ``int(t)`` / ``bool(t)`` of a CUDA tensor is a device-to-host copy that waits for all
    queued work (a synchronisation); read one by one, the checks of a step cost 2-4 of them per
    layer (a ResNet18's 21 layers: ~62 per SynFlow iteration, 6,200 per 100-iteration run).
    Stacked (on the first part's device), they cost one. The sums are exact in int64."""
    if not parts:
        return []
    dev = parts[0].device
    return torch.stack([p.to(device=dev, dtype=torch.int64) for p in parts]).tolist()


def any_positive(scores: Sequence[torch.Tensor]) -> bool:
    """Whether any score in any layer is strictly positive."""
    return any(bool((s > 0).any()) for s in scores)


# --------------------------------------------------------------------------- data and gradients


class BatchStream:
    """Draws ``(x, y)`` batches one at a time from ``batches``, moved to ``device``.

    ``batches`` is an iterable (list, ``DataLoader``, :class:`dctps.data.Loader`) or a zero-argument
    callable returning an iterator. Each :meth:`next` returns the next batch of the current pass and
    starts a new pass (``iter(batches)`` / ``batches()``) when one ends, so successive steps see
    fresh batches; with a shuffling loader this draws what the reference's ``next(iter(loader))``
    draws, without restarting the loader for every batch. ``on_input`` (optional) is called with
    the shape of each batch's inputs without the batch dimension.
    """

    def __init__(
        self,
        batches: Iterable[Any] | Callable[[], Iterator[Any]],
        device: torch.device,
        on_input: Callable[[tuple[int, ...]], None] | None = None,
        dtype: torch.dtype | None = None,
    ):
        self._source = batches
        self._device = device
        self._on_input = on_input
        self._dtype = dtype  # inputs cast to the scored copy's dtype (see Context.working_copy)
        self._it: Iterator[Any] | None = None
        self.drawn = 0

    def _fresh(self) -> Iterator[Any]:
        src = self._source
        return iter(src() if callable(src) and not hasattr(src, "__iter__") else src)  # type: ignore[operator,arg-type]

    def next(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The next ``(x, y)`` batch, restarting the source once when it is exhausted."""
        for _ in range(2):
            if self._it is None:
                self._it = self._fresh()
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                continue
            self.drawn += 1
            return self._unpack(batch)
        raise DctpsError(
            f"batches ran out after {self.drawn} batch(es) and yielded nothing when restarted; "
            "pass a re-iterable (list, DataLoader) or a zero-argument callable returning an "
            "iterator"
        )

    def _unpack(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise DctpsError(f"each batch must be an (x, y) pair, got {type(batch).__name__}")
        x, y = batch[0], batch[1]
        if not (torch.is_tensor(x) and torch.is_tensor(y)):
            raise DctpsError("each batch must be a pair of tensors (x, y)")
        if not x.is_floating_point():
            raise DctpsError(f"batch inputs must be floating point, got {x.dtype}")
        if self._on_input is not None:
            self._on_input(tuple(x.shape[1:]))
        return x.to(self._device, self._dtype), y.to(self._device)


def loss_fn(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``cross_entropy`` (the papers' intent) or ``nll_raw``: the reference code's
    ``F.nll_loss(logits, y) = -mean_i z_{i, y_i}`` on RAW logits (no log-softmax, §3)."""
    if name == "cross_entropy":
        return F.cross_entropy
    if name == "nll_raw":
        return F.nll_loss
    raise unknown_name("loss", name, LOSSES)


def logits(net: nn.Module, x: torch.Tensor, classes: bool = True) -> torch.Tensor:
    """``net(x)``, refused with a :class:`DctpsError` unless it is one tensor (the methods score
    the model's output, not a tuple or dict of outputs) and, with ``classes``, logits over at
    least 2 classes (the scoring losses are cross-entropies: over one class the loss is
    constant, every score 0)."""
    out = net(x)
    if not isinstance(out, torch.Tensor):
        raise DctpsError(
            f"pruning needs a model whose forward returns its logits as one tensor; this one "
            f"returned a {type(out).__name__}: wrap it in a module that returns the logits "
            "(e.g. out[0] or out['logits'])"
        )
    if classes and (out.dim() < 2 or out.shape[-1] < 2):
        raise DctpsError(
            f"pruning scores a model by the cross-entropy of its logits, shape (batch, classes "
            f">= 2); this model returns shape {tuple(out.shape)} (one output, as a binary or "
            "regression head, makes the loss constant and every score 0): give it 2 logits "
            "for pruning, or use method 'random' or 'synflow', which use no labels"
        )
    return out


def average_gradients(
    model: nn.Module,
    weights: Sequence[torch.Tensor],
    stream: BatchStream,
    num_batches: int,
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[torch.Tensor]:
    """``g = (1/B) sum_{b=1..B} dL(f(x_b), y_b)/dW`` for each tensor of ``weights``, over ``B``
    fresh batches of ``stream`` (``docs/BASELINES.md`` §3 step 1). Unused weights get zero
    gradient."""
    if isinstance(num_batches, bool) or not isinstance(num_batches, int) or num_batches < 1:
        raise DctpsError(f"num_batches must be an integer >= 1, got {num_batches!r}")
    total: list[torch.Tensor] = [torch.zeros_like(w) for w in weights]
    for _ in range(num_batches):
        x, y = stream.next()
        out = logits(model, x)
        grads = torch.autograd.grad(loss(out, y), list(weights), allow_unused=True)
        for acc, g in zip(total, grads, strict=True):
            if g is not None:
                acc.add_(g)
    return [g.div_(num_batches) for g in total]


# --------------------------------------------------------------------------- masks


#: marks a module whose pruned tensors are recomputed after each load_state_dict
_REFRESHES = "_dctps_refreshes_pruned"


def _refresh_pruned(module: nn.Module, incompatible_keys: Any) -> None:
    """``load_state_dict`` post-hook: recompute each pruned ``module.<name>`` from the loaded
    ``<name>_orig`` and ``<name>_mask``. torch's pruning recomputes it only at the next forward,
    so reading ``module.weight`` right after a load (``dctps.load``, a resume, a plain
    ``load_state_dict`` after :func:`prepare_pruned_structure`) gave the weights from before it."""
    for hook in module._forward_pre_hooks.values():
        name = getattr(hook, "_tensor_name", None)
        if (
            isinstance(hook, torch_prune.BasePruningMethod)
            and name is not None
            and name + "_orig" in module._parameters
            and name + "_mask" in module._buffers
        ):
            setattr(module, name, hook.apply_mask(module))


class Mask(torch_prune.CustomFromMask):
    """``torch.nn.utils.prune.custom_from_mask``'s pruning method, plus ``copy.deepcopy``.

    After a forward, a pruned module's ``weight`` is ``weight_orig * weight_mask`` with its
    autograd history (so a loss on ``module.weight`` trains ``weight_orig``), and
    ``copy.deepcopy`` refuses such a tensor ("Only Tensors created explicitly by the user"): a
    model pruned by torch alone cannot be deep-copied after a forward, which EMA copies,
    ``torch.optim.swa_utils.AveragedModel`` and best-model snapshots do. The method knows its
    module (a weak reference, set when applied and at every forward), and a model's copy
    reaches its ``_forward_pre_hooks`` before the ``weight`` attribute, which is set after
    ``nn.Module.__init__``: this method then gives the copy ``weight_orig' * weight_mask'`` of
    the copied tensors (with autograd history where grad mode is on), as its next forward would.
    The state dict, hooks and ``prune.remove``/``prune.is_pruned`` are torch's.
    """

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        self._owner = weakref.ref(module)
        super().__call__(module, inputs)

    @classmethod
    def apply(cls, module: nn.Module, name: str, mask: torch.Tensor) -> Mask:  # type: ignore[override]
        method = super().apply(module, name, mask=mask)
        # torch combines it with an earlier pruning of the same tensor in a PruningContainer
        methods = getattr(method, "_pruning_methods", (method,))
        if not getattr(module, _REFRESHES, False):
            module.register_load_state_dict_post_hook(_refresh_pruned)
            setattr(module, _REFRESHES, True)
        for m in methods:
            if isinstance(m, Mask) and m.__dict__.get("mask") is not None:
                m._owner = weakref.ref(module)
                # the mask is applied (module.<name>_mask holds it) and never read again (a
                # later pruning of the tensor computes with its own method only): a copy of it
                # kept in the hook doubled the memory of every pruned weight, and a loaded
                # model's all-ones masks were not moved by .to(device)
                m.mask = None
        return method  # type: ignore[return-value]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_owner", None)  # a weak reference cannot be pickled; the next forward sets it
        return state

    def __deepcopy__(self, memo: dict[int, Any]) -> Mask:
        new = type(self).__new__(type(self))
        memo[id(self)] = new
        owner = self.__dict__.get("_owner")
        module = owner() if owner is not None else None
        if module is not None:
            name = self._tensor_name
            w = module.__dict__.get(name)
            orig = module._parameters.get(name + "_orig")
            mask = module._buffers.get(name + "_mask")
            if (
                isinstance(w, torch.Tensor)
                and not w.is_leaf
                and id(w) not in memo
                and orig is not None
                and mask is not None
                and id(orig) in memo
                and id(mask) in memo
            ):
                memo[id(w)] = memo[id(orig)] * memo[id(mask)]
            copied = memo.get(id(module))
            if isinstance(copied, nn.Module):
                new._owner = weakref.ref(copied)
        for key, value in self.__dict__.items():
            if key != "_owner":
                setattr(new, key, copy.deepcopy(value, memo))
        return new


def apply_masks(targets_: Sequence[Target], masks: Sequence[torch.Tensor]) -> None:
    """Prune each target in ``torch.nn.utils.prune`` convention with its boolean ``mask``.

    After this, ``module.weight_orig`` is the Parameter (pruned entries set to exactly 0),
    ``module.weight_mask`` the float buffer and ``module.weight = weight_orig * weight_mask``.

    All or nothing: an error or a Ctrl-C part way through removes the masks applied so far and
    gives their weights back their values, so that the model is as it was.
    """
    ms = [
        mask.to(device=t.weight.device, dtype=t.weight.dtype).view_as(t.weight)
        for t, mask in zip(targets_, masks, strict=True)
    ]
    done: list[tuple[Target, torch.Tensor]] = []
    try:
        for t, m in zip(targets_, ms, strict=True):
            w = t.weight
            done.append((t, w.detach().to("cpu", copy=True)))  # on the host: no GPU memory
            with torch.no_grad():
                # +0.0, not the -0.0 that multiplying a negative weight by 0 leaves: the pruned
                # entries then stay +0.0 through training, and a checkpoint stores them as zeros
                # (zeroed before the mask is applied, so weight = weight_orig * mask sees them)
                w.masked_fill_(m == 0, 0.0)
            Mask.apply(t.module, t.attr, m)
    except BaseException:
        for t, saved in reversed(done):
            _unmask(t.module, t.attr)
            with torch.no_grad():
                t.module._parameters[t.attr].copy_(saved)  # type: ignore[union-attr]
        raise


def _unmask(module: nn.Module, attr: str) -> None:
    """Undo :meth:`Mask.apply` on ``module.<attr>`` from whatever step it reached: torch's
    ``prune`` undoes its own steps on an ``Exception`` only, so a Ctrl-C inside it left a
    ``weight_orig`` without a ``weight``, or a mask without its hook."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, torch_prune.BasePruningMethod) and hook._tensor_name == attr:
            del module._forward_pre_hooks[key]
    module._buffers.pop(attr + "_mask", None)
    orig = module._parameters.pop(attr + "_orig", None)
    if orig is not None:
        module.__dict__.pop(attr, None)  # weight_orig * mask, which torch sets as a plain value
        module._parameters[attr] = orig  # the same Parameter back under its name


#: marks an attention module whose forward runs its out_proj's weight hooks
_RUNS_HOOKS = "_dctps_runs_out_proj_hooks"


def connect_attention(model: nn.Module) -> None:
    """Make every ``nn.MultiheadAttention`` of ``model`` whose ``out_proj`` is pruned run that
    ``out_proj``'s weight hooks at the start of its own forward (once per module; idempotent).

    ``F.multi_head_attention_forward`` reads ``out_proj.weight`` without calling ``out_proj``, so
    ``out_proj``'s forward pre-hooks never run: the masked weight would be computed once, never
    again, and never train (nor would RigL see its gradient). Called by
    :func:`dctps.pruning.prune`, when a pruned structure is rebuilt for loading
    (:func:`prepare_pruned_structure`) and by :class:`dctps.dst.RigL`.
    """
    for module in model.modules():
        if (
            isinstance(module, nn.MultiheadAttention)
            and hasattr(module.out_proj, "weight_orig")
            and not hasattr(module, _RUNS_HOOKS)
        ):
            module.register_forward_pre_hook(_run_out_proj_hooks)
            setattr(module, _RUNS_HOOKS, True)


def _is_weight_hook(hook: Any) -> bool:
    """A hook that recomputes or watches a layer's weight: torch.prune's mask application, or a
    hook whose owner sets ``_dctps_weight_hook`` (RigL's gradient capture). Other user hooks
    expect the module's real inputs and are not run on the attention's behalf."""
    return isinstance(hook, torch_prune.BasePruningMethod) or getattr(
        getattr(hook, "__self__", None), "_dctps_weight_hook", False
    )


def _run_out_proj_hooks(attn: nn.Module, args: Any) -> None:
    """Forward pre-hook of an ``nn.MultiheadAttention`` (see :func:`connect_attention`)."""
    out_proj = attn.out_proj
    assert isinstance(out_proj, nn.Module)
    for hook in list(out_proj._forward_pre_hooks.values()):
        if _is_weight_hook(hook):
            hook(out_proj, ())


def density_of(masks: Sequence[torch.Tensor]) -> float:
    """Fraction of ``True`` entries over all ``masks``."""
    total = sum(m.numel() for m in masks)
    return sum(read_ints([m.sum() for m in masks])) / total if total else 0.0


def numel(shapes: Iterable[torch.Size | tuple[int, ...]]) -> int:
    """Total number of entries of tensors of the given ``shapes``."""
    return sum(math.prod(s) for s in shapes)


# --------------------------------------------------------------------------- context


@dataclass
class Context:
    """What a pruning method gets from :func:`dctps.pruning.prune`.

    Attributes:
        model: the caller's model (never modified by a method: methods score a copy).
        targets: its prunable weights (:func:`targets`).
        density: the requested density ``d`` in (0, 1].
        total: ``N``, the number of prunable weights.
        k: ``round(d N)``, the number of weights to keep.
        batches: the caller's ``batches`` (``None`` for data-free calls).
        allocation: the caller's ``allocation`` (only ``random`` uses it).
        progress: ``progress(step, steps)`` callback, or ``None`` (see :meth:`report`).
        input_shape: the shape of one input without the batch dimension, once known: set by
            :meth:`stream` when a batch is drawn, or by a method told it (SynFlow's
            ``input_shape``); ``prune`` checks the final masks' connectivity on it.
        score_dtype: the dtype :meth:`working_copy` cast the scored copy to (``None``: the
            model's own); :meth:`stream` casts the batches' inputs to it.
    """

    model: nn.Module
    targets: list[Target]
    density: float
    total: int
    k: int
    batches: Any = None
    allocation: str | None = None
    progress: Callable[[int, int], None] | None = None
    input_shape: tuple[int, ...] | None = None
    score_dtype: torch.dtype | None = None

    def report(self, step: int, steps: int) -> None:
        """Report progress to ``progress`` (a no-op without one): a method calls
        ``report(0, T)`` when its loop of ``T`` steps starts and ``report(t, T)`` after step
        ``t`` (``T = 1`` for a one-shot method); see :mod:`dctps.pruning.progress`."""
        if self.progress is not None:
            self.progress(step, steps)

    @property
    def device(self) -> torch.device:
        """The device of the model being pruned."""
        return model_device(self.model)

    def stream(self) -> BatchStream:
        """A :class:`BatchStream` over ``batches`` (:class:`DctpsError` if the method got none)."""
        if self.batches is None:
            raise DctpsError("this pruning method needs data: pass batches=...")
        return BatchStream(
            self.batches, self.device, on_input=self._see_input, dtype=self.score_dtype
        )

    def _see_input(self, shape: tuple[int, ...]) -> None:
        if self.input_shape is None:
            self.input_shape = shape

    def working_copy(
        self, *, train: bool, dtype: torch.dtype | None = None
    ) -> tuple[nn.Module, list[torch.Tensor]]:
        """A deep copy of the model for the scoring iterations, in train or eval mode, cast to
        ``dtype`` if given; only its prunable weights require grad. Returns ``(copy, weights)``.

        Without ``dtype`` a model with float16 or bfloat16 parameters is scored in a float32
        copy (and :meth:`stream` casts the inputs to match): in half precision GraSP's
        Hessian-gradient product underflowed to all-zero scores, FORCE cut every path at 0.5%,
        and Iter-SNIP picked a thousand kept weights by index among scores tied at an fp16
        subnormal. The masks then equal those of the same (half-rounded) weights in float32."""
        try:
            net = copy.deepcopy(self.model)
        except Exception as e:  # e.g. a module holding a lock or an open file
            raise DctpsError(
                f"pruning scores a deep copy of the model, and copy.deepcopy failed: "
                f"{type(e).__name__}: {e}. Make the model copyable (keep locks, files and "
                "handles outside it)"
            ) from e
        if dtype is None and any(
            p.dtype in (torch.float16, torch.bfloat16) for p in self.model.parameters()
        ):
            dtype = torch.float32
        if dtype is not None:
            net = net.to(dtype)
        self.score_dtype = dtype
        net.train(train)
        for p in net.parameters():
            p.requires_grad_(False)
        weights = weights_of(net)
        for w in weights:
            w.requires_grad_(True)
        return net, weights


def compact_masks(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``state_dict`` with each ``torch.nn.utils.prune`` mask (a ``<attr>_mask`` beside its
    ``<attr>_orig``) of only 0s and 1s stored as ``bool``: a quarter of its float32 bytes (a
    pruned ResNet18's masks are 45 MB as float, 11 MB as bool). ``load_state_dict`` copies a
    ``bool`` mask back into the model's float buffer as 0.0 / 1.0, so loading is unchanged."""
    out = dict(state_dict)
    for key, t in state_dict.items():
        if (key.endswith("_mask") and key[: -len("_mask")] + "_orig" in state_dict
                and t.is_floating_point() and bool(((t == 0) | (t == 1)).all())):  # fmt: skip
            out[key] = t.to(torch.bool)
    return out


def prepare_pruned_structure(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """Give ``model`` the ``torch.nn.utils.prune`` structure that ``state_dict`` was saved with.

    For every ``<module>.<attr>_orig`` key with a matching ``<module>.<attr>_mask`` key, applies
    an all-ones mask (as ``prune.identity(module, attr)`` does, with :class:`Mask`) unless the
    module is already pruned, so that
    ``model.load_state_dict(state_dict)`` then restores the real masks. Returns the pruned names.
    """
    check_module(model, "prepare_pruned_structure")
    if not isinstance(state_dict, Mapping):
        # a checkpoint path would be iterated character by character and prepare nothing
        raise DctpsError(
            f"prepare_pruned_structure needs a state dict (a mapping of names to tensors, e.g. "
            f"torch.load(path)), got {type(state_dict).__name__}"
        )
    done = []
    for key in state_dict:
        if not key.endswith("_orig"):
            continue
        stem = key[: -len("_orig")]
        if stem + "_mask" not in state_dict:
            continue
        mod_name, _, attr = stem.rpartition(".")
        try:
            module = model.get_submodule(mod_name) if mod_name else model
        except AttributeError:
            raise DctpsError(
                f"checkpoint has pruned weight {key!r} but the model has no module {mod_name!r}"
            ) from None
        if not hasattr(module, attr + "_orig"):
            if not isinstance(getattr(module, attr, None), nn.Parameter):
                # a state dict of another architecture: prune.identity's AttributeError would
                # not name the checkpoint's key
                raise DctpsError(
                    f"checkpoint has pruned weight {key!r} but the model's {mod_name or 'model'!r} "
                    f"({type(module).__name__}) has no parameter {attr!r}: the state dict is of "
                    "another architecture"
                )
            # an all-ones mask, as prune.identity's, with Mask's deepcopy
            Mask.apply(module, attr, torch.ones_like(getattr(module, attr)))
        done.append(stem)
    if done:
        connect_attention(model)  # a pruned attention out_proj must follow weight_orig
    return done
