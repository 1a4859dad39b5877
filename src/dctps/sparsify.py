"""Public entry points: turn any model into a DCTpS network, and count what it trains.

``sparsify`` finds every ``nn.Linear`` and ``nn.Conv2d`` (and the packed input projection of
``nn.MultiheadAttention``), computes per-layer budgets with :func:`dctps.allocation.budgets`, and
replaces each layer in place by a :class:`~dctps.layers.DCTpSLinear` /
:class:`~dctps.layers.DCTpSConv2d` with ``W = alpha * D + S`` (Section 4 of the paper).
"""

from __future__ import annotations

import fnmatch
import functools
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.linear import NonDynamicallyQuantizableLinear
from torch.nn.parameter import is_lazy
from torch.nn.utils import parametrize

from dctps._types import ModuleT
from dctps.allocation import budgets
from dctps.errors import DctpsError, check_density, check_flag, check_module, check_seed
from dctps.layers import ALPHA_SCOPES, DCTpSConv2d, DCTpSLayer, DCTpSLinear, _alpha_settings
from dctps.offsets import check_offset

__all__ = [
    "sparsify",
    "count",
    "Counts",
    "DCTpSMultiheadAttention",
    "prunable_layers",
    "tied_weight",
]


#: How :func:`sparsify` seeds each layer's support; part of a DCTpS run's identity
#: (:meth:`dctps.train.config.RunConfig.identity`), so runs recorded under another scheme are never
#: reused or averaged with today's. 1: layer ``i`` used ``seed + i``, so the models of seeds ``s``
#: and ``s + 1`` shared every support of equal shape and size, shifted by one layer (7 of
#: ResNet18's 20 sparse layers at 1%), and EPF gave the ``nnz mod out`` extra weights to the first
#: filters. 2: :func:`layer_seed`, and EPF's extra weights on random filters
#: (:func:`dctps.allocation.filter_counts`; random pruning with EPF is marked too).
SUPPORT_REVISION = 2


def layer_seed(seed: int, i: int) -> int:
    """The seed of layer ``i``'s support under model seed ``seed``: numpy's ``SeedSequence(seed,
    spawn_key=(i,))``, the standard derivation of independent child streams, as a 32-bit int.

    Distinct ``(seed, i)`` pairs give unrelated supports (``seed + i`` gave seed ``s + 1``'s layer
    ``i`` the support of seed ``s``'s layer ``i + 1``)."""
    seq = np.random.SeedSequence(check_seed(seed), spawn_key=(i,))
    return int(seq.generate_state(1, dtype=np.uint32)[0])


class DCTpSMultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` whose packed ``in_proj`` (``3E x E``) and ``out_proj`` are DCTpS.

    PyTorch packs the query/key/value projections into one ``in_proj_weight`` Parameter, not a
    Linear; this module holds it as ``in_proj`` (a :class:`DCTpSLinear` ``E -> 3E``) and exposes
    ``in_proj_weight`` / ``in_proj_bias`` / ``out_proj`` as the materialised tensors, so it is a
    drop-in for ``nn.MultiheadAttention`` (also inside ``nn.TransformerEncoderLayer``).
    Only ``kdim == vdim == embed_dim`` is supported; ``bias_k``/``bias_v`` stay dense (biases).
    """

    def __init__(self, mha: nn.MultiheadAttention, in_nnz: int, out_nnz: int, seed: int | None,
                 **kw: Any):  # fmt: skip
        super().__init__()
        if not mha._qkv_same_embed_dim:
            raise DctpsError("DCTpSMultiheadAttention needs kdim == vdim == embed_dim")
        e = mha.embed_dim
        self.embed_dim, self.num_heads, self.dropout = e, mha.num_heads, mha.dropout
        self.batch_first, self.head_dim = mha.batch_first, mha.head_dim
        self._qkv_same_embed_dim = True
        self.kdim = self.vdim = e
        w = mha.in_proj_weight
        self.in_proj = DCTpSLinear(
            e, 3 * e, in_nnz, bias=mha.in_proj_bias is not None, seed=seed,
            dtype=w.dtype, device=w.device, **kw,
        )  # fmt: skip
        _take_bias(self.in_proj, mha.in_proj_bias)
        out_seed = None if seed is None else layer_seed(seed, 1)
        self.out_proj = _replace(mha.out_proj, out_nnz, out_seed, **kw)
        move_hooks(mha.out_proj, self.out_proj)
        self.bias_k, self.bias_v = mha.bias_k, mha.bias_v
        self.add_zero_attn = mha.add_zero_attn
        self.q_proj_weight = self.k_proj_weight = self.v_proj_weight = None

    #: F.multi_head_attention_forward takes the projections' weights, so they run dense in any
    #: mode (dctps.set_mode warns of it)
    _dctps_runs_dense = True

    # TransformerEncoderLayer's inference fast path calls this; it only reads shapes and heads.
    merge_masks = nn.MultiheadAttention.merge_masks

    @property
    def in_proj_weight(self) -> torch.Tensor:
        """The packed ``(3E, E)`` query/key/value weight ``alpha * D + S``, materialised."""
        return self.in_proj.dense_weight()

    @property
    def in_proj_bias(self) -> torch.Tensor | None:
        """The packed ``(3E,)`` query/key/value bias, or ``None``."""
        return self.in_proj.bias

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):  # fmt: skip
        # as nn.MultiheadAttention: an unbatched (L, E) input has no batch dimension to move
        batched = query.dim() == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads,
            self.in_proj_weight, self.in_proj_bias, self.bias_k, self.bias_v,
            self.add_zero_attn, self.dropout, self.out_proj.dense_weight(), self.out_proj.bias,
            training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask,
            average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        return out, weights


def _matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether ``name`` or one of its ancestors (``a`` and ``a.b`` for ``a.b.c``) matches a glob:
    excluding a module excludes everything inside it."""
    parts = name.split(".")
    prefixes = [".".join(parts[: i + 1]) for i in range(len(parts))] if name else [name]
    return any(fnmatch.fnmatchcase(p, pat) for p in prefixes for pat in patterns)


def prunable_layers(
    model: nn.Module, exclude: Iterable[str] = ()
) -> Iterator[tuple[str, nn.Module, tuple[int, ...]]]:
    """``(name, module, weight_shape)`` of every dense Linear/Conv2d/MHA-in-projection, in order.

    A ``MultiheadAttention`` yields two entries: ``name + '.in_proj'`` with the packed
    ``(3E, E)`` shape, and its ``out_proj`` Linear. Modules matching an ``exclude`` glob, and
    everything inside them, are skipped. A module registered under several names is yielded once,
    under its first name.
    """
    exclude = list(exclude)
    for name, module in model.named_modules():
        if _matches(name, exclude):
            continue
        if isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
            yield f"{name}.in_proj", module, tuple(module.in_proj_weight.shape)
        elif isinstance(module, (nn.Linear, nn.Conv2d)):
            _check_not_lazy(module, name, "then sparsify or prune")
            yield name, module, tuple(module.weight.shape)


def _check_not_lazy(module: nn.Module, name: str, then: str) -> None:
    """A :class:`DctpsError` for a lazy module (``nn.LazyLinear``, ...) that has not created its
    weight yet: it has no shape to count, sparsify or prune."""
    if is_lazy(module.weight):  # type: ignore[arg-type]
        raise DctpsError(
            f"{type(module).__name__} {name!r} has not created its weights yet (a lazy module): "
            f"run one forward first, {then}"
        )


def _replace(module: nn.Module, nnz: int, seed: int | None, **kw) -> DCTpSLayer:
    """A DCTpS twin of a dense Linear/Conv2d with the same hyperparameters and bias values."""
    factory: dict[str, Any] = {"dtype": module.weight.dtype, "device": module.weight.device}
    if getattr(module, "_dctps_zero_init", False):
        kw["alpha_init"] = 0.0  # Fixup zero-initialises this layer: W must start at zero.
        if kw.get("train_alpha") is False:
            raise DctpsError(
                "this model zero-initialises some layers (Fixup): their alpha must start at 0, "
                "and a fixed alpha would stay 0, so those layers would never use the offset "
                "(plain random sparse layers under a DCTpS label). Train alpha with this model"
            )
    new: DCTpSLayer
    if isinstance(module, nn.Linear):
        new = DCTpSLinear(
            module.in_features, module.out_features, nnz, module.bias is not None,
            seed=seed, **kw, **factory,
        )  # fmt: skip
    elif isinstance(module, nn.Conv2d):
        new = DCTpSConv2d(
            module.in_channels, module.out_channels, module.kernel_size, module.stride,
            module.padding, module.dilation, module.groups, module.bias is not None,
            nnz=nnz, seed=seed, **kw, **factory,
        )  # fmt: skip
    else:
        raise DctpsError(f"cannot make a DCTpS layer from {type(module).__name__}")
    _take_bias(new, module.bias)
    for k, v in extra_attributes(module).items():  # checked not to clash by _check_plain
        setattr(new, k, v)
    return new


def _take_bias(layer: DCTpSLayer, bias: torch.Tensor | None) -> None:
    """``layer``'s bias takes ``bias``'s values, and its ``requires_grad`` (frozen stays frozen)."""
    if bias is not None:
        layer.bias.data.copy_(bias.data)  # type: ignore[union-attr]
        layer.bias.requires_grad_(bias.requires_grad)  # type: ignore[union-attr]


# the module hooks a user registers (forward, backward, and their pre- and kwargs variants)
_HOOK_DICTS = (
    "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_forward_hooks",
    "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_backward_pre_hooks",
    "_backward_hooks",
)  # fmt: skip


def move_hooks(old: nn.Module, new: nn.Module, copy: bool = False) -> None:
    """Give ``new`` the hooks registered on the module it replaces, as the same dicts (a handle
    the caller holds, ``handle.remove()``, then still removes its hook), or, with ``copy``, as
    copies of them (a new model beside the old one: :func:`dctps.to_dense` of a layer)."""
    for attr in _HOOK_DICTS:
        hooks = getattr(old, attr, None)
        if hooks and hasattr(new, attr):
            setattr(new, attr, type(hooks)(hooks) if copy else hooks)
    if getattr(old, "_is_full_backward_hook", None) is not None:
        new._is_full_backward_hook = old._is_full_backward_hook


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` at the dotted ``name`` of ``model``."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def _check_convertible(
    model: nn.Module,
    layers: list[tuple[str, nn.Module, tuple[int, ...]]],
    exclude: list[str],
    aliases: dict[int, list[str]],
) -> None:
    """Refuse, before anything is changed, what sparsify cannot convert faithfully.

    ``padding_mode`` other than ``'zeros'``; a ``MultiheadAttention`` with ``kdim``/``vdim`` other
    than ``embed_dim`` (separate q/k/v weights, which would stay dense yet look sparse in
    :func:`count`); half of an attention's projections excluded; a weight Parameter shared with
    another module (tied weights: DCTpS gives each layer its own offset and support, which would
    silently untie them).
    """
    for name, module, _ in layers:
        if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
            raise DctpsError(
                f"layer {name!r} has padding_mode={module.padding_mode!r}; DCTpS convs support "
                f"only 'zeros'. Leave it dense with exclude=[{name!r}]"
            )
    # an attention whose in_proj is converted but not its out_proj, or the other way round
    in_owners = {n.rpartition(".")[0] for n, m, _ in layers if isinstance(m, nn.MultiheadAttention)}
    out_owners = set()
    for name, _, _ in layers:
        owner, _, leaf = name.rpartition(".")
        if leaf == "out_proj":
            parent = model.get_submodule(owner)
            if isinstance(parent, nn.MultiheadAttention) and parent._qkv_same_embed_dim:
                out_owners.add(owner)
    half = sorted(in_owners ^ out_owners)
    if half:
        raise DctpsError(f"exclude both or neither of {half[0]}'s projections (in_proj, out_proj)")
    for name, module in model.named_modules():
        if (
            isinstance(module, nn.MultiheadAttention)
            and not module._qkv_same_embed_dim
            and not _matches(name, exclude)
        ):
            raise DctpsError(
                f"attention {name!r} has kdim={module.kdim}, vdim={module.vdim} != "
                f"embed_dim={module.embed_dim} (separate q/k/v weights), which DCTpS does not "
                f"support. Leave it dense with exclude=[{name!r}]"
            )
    for name, module, _ in layers:
        if any(hasattr(module, a + "_mask") for a in ("weight", "in_proj_weight")):
            raise DctpsError(
                f"layer {name!r} is pruned (torch.nn.utils.prune: weight_orig and weight_mask); "
                "sparsify would drop its mask. Call torch.nn.utils.prune.remove on it first, or "
                "sparsify the unpruned model"
            )
        owner, _, leaf = name.rpartition(".")
        parent = model.get_submodule(owner) if owner else model
        in_attention = leaf in ("in_proj", "out_proj") and isinstance(parent, nn.MultiheadAttention)
        _check_plain(name, module, owner if in_attention else name)
        _check_no_tensor_hooks(name, module, owner if in_attention else name)
    tied = tied_weight(model, layers, aliases)
    if tied is not None:
        layer, other = tied
        raise DctpsError(
            f"the weight of {layer!r} is also {other!r} (tied weights); DCTpS would give "
            f"the two their own offsets and supports and silently untie them. Untie them, or "
            f"leave them dense with exclude=[{layer!r}, {other.rsplit('.', 1)[0]!r}]"
        )


def _check_no_tensor_hooks(name: str, module: nn.Module, leave: str) -> None:
    """Refuse a hook registered on a layer's weight or bias tensor (``register_hook``,
    ``register_post_accumulate_grad_hook``): the DCTpS layer holds new Parameters (``values``,
    ``alpha``, a bias copy), so the hook would never run again (a gradient clip or mask lost
    without a word). Module hooks are carried over (:func:`move_hooks`). ``leave``: what
    ``exclude`` would name to leave the layer dense (an attention for its ``in_proj``)."""
    # an attention's in_proj entry is the attention itself, whose tensors are in_proj_*
    where = name.rpartition(".")[0] if isinstance(module, nn.MultiheadAttention) else name
    for attr in ("weight", "bias", "in_proj_weight", "in_proj_bias"):
        p = getattr(module, attr, None)
        if isinstance(p, torch.Tensor) and (
            p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None)
        ):
            tensor = f"{where}.{attr}" if where else attr
            raise DctpsError(
                f"{tensor} has a tensor hook (register_hook or "
                "register_post_accumulate_grad_hook), which sparsify cannot carry: the DCTpS "
                f"layer trains new parameters (values, alpha, a copy of the bias). Remove the "
                f"hook and register it after sparsify (on {name}.values or {name}.bias), or "
                f"leave the layer dense with exclude=[{leave!r}]"
            )


def _subclass_methods(cls: type, base: type) -> list[str]:
    """The methods and properties ``cls`` (a subclass of ``base``) defines beyond it, but for
    its constructor, ``reset_parameters`` and ``extra_repr``, which describe how the dense
    layer was made and shown, not what it computes."""
    out: list[str] = []
    for klass in _subclasses_of(cls, base):
        for k, v in vars(klass).items():
            if k.startswith("__") or k in ("reset_parameters", "extra_repr") or k in out:
                continue
            if _binds(v):
                out.append(k)
    return out


def _subclasses_of(cls: type, base: type) -> Iterator[type]:
    """The classes of ``cls``'s MRO before ``base``: what a subclass adds to it."""
    for klass in cls.__mro__:
        if klass is base or not issubclass(klass, base):
            return
        yield klass


def _binds(v: Any) -> bool:
    """Whether class attribute ``v`` computes on the instance: a function, ``property``,
    ``functools.cached_property``, any descriptor (a class, such as ``Act = nn.ReLU``, is a
    value: it is carried over)."""
    return not isinstance(v, type) and hasattr(type(v), "__get__")


def extra_attributes(module: nn.Module) -> dict[str, Any]:
    """The public attributes of a dense layer that a plain one of its base class does not
    have (``m.is_residual = True``, a subclass's ``self.scale = 2.0``, a class attribute
    ``tag = "head"``): :func:`sparsify` gives them to its DCTpS layer, which had dropped them
    silently (code reading them later took their default)."""
    base = next(b for b in type(module).__mro__ if b in _PLAIN)
    plain = _plain_names(base)
    out: dict[str, Any] = {}
    for klass in _subclasses_of(type(module), base):
        for k, v in vars(klass).items():
            if not k.startswith("_") and not _binds(v):
                out.setdefault(k, v)
    out.update({
        k: v for k, v in vars(module).items()
        if not k.startswith("_") and k not in plain and not isinstance(v, torch.Tensor)
    })  # fmt: skip
    return out


@functools.cache
def _plain_names(base: type) -> frozenset[str]:
    """The attribute names of a plain ``base`` layer (``in_features``, ``training``, ...)."""
    make: Any = base
    # on meta: a real layer's initialisation advanced the caller's global RNG on the first call
    tiny = (
        make(1, 1, 1, device="meta") if issubclass(base, nn.Conv2d) else make(1, 1, device="meta")
    )
    return frozenset(vars(tiny)) | frozenset(dir(base))


def own_attributes(layer: DCTpSLayer) -> dict[str, Any]:
    """The public attributes a DCTpS layer holds beyond its own (those :func:`sparsify` gave it
    from its dense layer, or a user set): :func:`dctps.to_dense` gives them back."""
    names = _dctps_names()
    return {
        k: v
        for k, v in vars(layer).items()
        # a tensor held as a plain attribute is torch.nn.utils.prune's recomputed `bias`
        if not k.startswith("_") and k not in names and not isinstance(v, torch.Tensor)
    }


@functools.cache
def _dctps_names() -> frozenset[str]:
    """The names a DCTpS layer uses itself, which a dense layer's own attribute would shadow."""
    names: set[str] = set()
    # seeded: an unseeded layer draws its bias from the caller's global RNG
    for layer in (DCTpSLinear(1, 1, 1, seed=0), DCTpSConv2d(1, 1, 1, nnz=1, seed=0)):
        names |= set(vars(layer)) | set(dir(type(layer)))
        names |= {n for n, _ in layer.named_parameters()} | {n for n, _ in layer.named_buffers()}
    return frozenset(names)


# the classes sparsify replaces, with the methods that define what they compute
_PLAIN: dict[type, tuple[str, ...]] = {
    nn.Linear: ("forward",),
    NonDynamicallyQuantizableLinear: ("forward",),  # MultiheadAttention's out_proj
    nn.Conv2d: ("forward", "_conv_forward"),
}


def reparametrisation(module: nn.Module, attr: str = "weight") -> tuple[str, str] | None:
    """``(what, how to remove it)`` where ``module.<attr>`` is computed from other tensors,
    ``None`` where it is a plain Parameter: a parametrization (``weight_norm``,
    ``spectral_norm``, ``orthogonal``, ...), the old ``torch.nn.utils.weight_norm``
    (``<attr>_g``, ``<attr>_v``), the old ``spectral_norm`` (``<attr>_orig`` without a mask) or
    ``torch.nn.utils.prune`` (``<attr>_orig`` and ``<attr>_mask``)."""
    if parametrize.is_parametrized(module, attr):
        lists: Any = module.parametrizations  # a ModuleDict; typed Tensor | Module
        plist = lists[attr]
        kinds = ", ".join(type(p).__name__.lstrip("_") for p in plist)
        how = f"torch.nn.utils.parametrize.remove_parametrizations(module, {attr!r})"
        return f"a parametrization ({kinds})", how
    if hasattr(module, attr + "_g") and hasattr(module, attr + "_v"):
        return "torch.nn.utils.weight_norm", "torch.nn.utils.remove_weight_norm(module)"
    if hasattr(module, attr + "_orig"):
        if hasattr(module, attr + "_mask"):
            return "torch.nn.utils.prune", f"torch.nn.utils.prune.remove(module, {attr!r})"
        return "torch.nn.utils.spectral_norm", "torch.nn.utils.remove_spectral_norm(module)"
    return None


def weight_sources(module: nn.Module, attr: str = "weight") -> list[torch.Tensor]:
    """The Parameters that hold the entries of ``module.<attr>``: the weight itself, or, under
    a :func:`reparametrisation`, the original it is computed from (a parametrization's
    ``original``, or its last original of the weight's shape: ``weight_norm``'s direction
    ``v``; ``<attr>_v`` of the old ``weight_norm``; ``<attr>_orig``). Scales beside it
    (``weight_norm``'s ``g``) are not weights."""
    if parametrize.is_parametrized(module, attr):
        lists: Any = module.parametrizations  # a ModuleDict; typed Tensor | Module
        plist = lists[attr]
        if hasattr(plist, "original"):
            return [plist.original]
        shape = getattr(module, attr).shape
        same = [p for n, p in plist.named_parameters(recurse=False) if p.shape == shape]
        return same[-1:]
    for suffix in ("_v", "_orig"):
        t = getattr(module, attr + suffix, None)
        if isinstance(t, nn.Parameter):
            return [t]
    return [getattr(module, attr)]


def _check_plain(name: str, module: nn.Module, leave_dense: str) -> None:
    """A :class:`DctpsError` for a layer whose replacement would silently compute something
    else: a subclass with its own forward (or one patched on the instance) or with parameters,
    buffers or submodules beyond ``weight``/``bias`` (an adapter), a parametrized weight
    (``weight_norm``), or a frozen weight (the new layer's freshly drawn ``W = alpha D + S``
    would train or stay ``D``). ``leave_dense``: the name to exclude (an attention's, for its
    projections)."""
    mha = isinstance(module, nn.MultiheadAttention)
    base = nn.MultiheadAttention if mha else next(b for b in type(module).__mro__ if b in _PLAIN)
    methods = ("forward",) if mha else _PLAIN[base]
    own = [m for m in methods if getattr(type(module), m) is not getattr(base, m)]
    own += [m for m in methods if m in module.__dict__ and m not in own]  # patched on the object
    if not mha:
        # other methods of a subclass (`def logits_scale(self)`): the DCTpS layer has none of
        # them, and the model's next call failed with an AttributeError (an API review)
        own += [m for m in _subclass_methods(type(module), base) if m not in own]
    clash = [] if mha else sorted(set(extra_attributes(module)) & _dctps_names())
    extra: list[str] = []
    if not mha:  # an attention's own tensors and out_proj are what DCTpSMultiheadAttention takes
        extra += [
            n for n, _ in module.named_parameters(recurse=False) if n not in ("weight", "bias")
        ]
        extra += [n for n, _ in module.named_buffers(recurse=False)]
        extra += [n for n, _ in module.named_children()]
    weight = module.in_proj_weight if mha else module.weight
    cls = type(module)
    why = None
    if parametrize.is_parametrized(module):
        what = ", ".join(getattr(module, "parametrizations", {}))
        why = f"has a parametrized {what} (e.g. weight_norm), which the DCTpS layer would drop"
    elif any(hasattr(module, a + "_orig") for a in ("weight", "in_proj_weight")):
        why = (
            "has a reparametrised weight (weight_orig: spectral_norm or the old weight_norm), "
            "which the DCTpS layer would drop (torch.nn.utils.remove_spectral_norm removes it)"
        )
    elif own or extra:
        what = f"its own {', '.join(own)}" if own else ""
        what += (" and " if own and extra else "") + (f"{', '.join(extra)}" if extra else "")
        kind = (
            f"is a {cls.__module__}.{cls.__qualname__}, a subclass of {base.__name__} with"
            if cls is not base
            else "has"
        )
        why = f"{kind} {what}, which the DCTpS layer would drop"
    elif clash:
        raise DctpsError(
            f"layer {name!r} has attribute(s) {', '.join(clash)}, which a DCTpS layer has too "
            f"(as its own): they would be lost. Rename them, or leave it dense with "
            f"exclude=[{leave_dense!r}]"
        )
    elif weight is not None and not weight.requires_grad:
        why = (
            "has a frozen weight (requires_grad=False); its DCTpS layer would draw a new "
            "W = alpha * D + S (nothing of the dense weight is kept)"
        )
    if why is not None:
        raise DctpsError(
            f"layer {name!r} {why}. Leave it dense with exclude=[{leave_dense!r}], or sparsify a "
            "model of plain nn.Linear / nn.Conv2d layers"
        )


def tied_weight(
    model: nn.Module,
    layers: list[tuple[str, nn.Module, tuple[int, ...]]],
    aliases: dict[int, list[str]] | None = None,
) -> tuple[str, str] | None:
    """The first ``(layer name, other parameter name)`` where a layer's weight (or bias) Parameter
    is also reachable under another module's name (tied weights), or ``None``.

    A module registered under several names is not tied to itself. Converting or masking such a
    weight layer by layer would silently untie it (or mask the shared tensor twice). ``aliases``:
    :func:`_aliases` of ``model`` when the caller has it already."""
    where: dict[int, list[str]] = {}
    for pname, p in model.named_parameters(remove_duplicate=False):
        where.setdefault(id(p), []).append(pname)
    owners = aliases if aliases is not None else _aliases(model)
    for name, module, _ in layers:
        mha = isinstance(module, nn.MultiheadAttention)
        # the bias too: the new layer gets a copy of it, which would untie a shared bias
        for attr in ("in_proj_weight", "in_proj_bias") if mha else ("weight", "bias"):
            param = getattr(module, attr, None)
            if param is None:
                continue
            own = {f"{a}.{attr}" if a else attr for a in owners[id(module)]}
            others = [n for n in where.get(id(param), []) if n not in own]
            if others:
                return name.removesuffix(".in_proj"), others[0]
    return None


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each submodule (one module may be registered under several names)."""
    out: dict[int, list[str]] = {}
    for name, module in model.named_modules(remove_duplicate=False):
        out.setdefault(id(module), []).append(name)
    return out


def sparsify(
    model: ModuleT,
    density: float,
    allocation: str = "epl",
    seed: int | None = 0,
    exclude: Iterable[str] | str | None = None,
    train_alpha: bool = True,
    *,
    offset: str = "dct",
    alpha: str = "layer",
    alpha_init: float | str = 1.0,
    charge_alpha: bool = True,
) -> ModuleT:
    """Replace every Linear/Conv2d of ``model`` in place by a DCTpS layer; return ``model``.

    ``W = alpha * D + S`` with ``alpha = 1`` (0 for layers marked ``_dctps_zero_init``, e.g. Fixup's
    zero-initialised convs), ``S = 0`` on a uniformly random support whose size per layer comes from
    ``budgets(shapes, density, allocation)``: the total trainable non-zeros are exactly
    ``round(density * total_weights)`` (but for ``allocation='epl_ref'``, which rounds each layer
    on its own as the authors' code did). Biases are kept (with their values); BN is untouched.
    A layer registered under several names (used twice in a forward) is replaced under all of
    them and counted once. On any error the model is left unchanged.

    With ``alpha='channel'`` and ``charge_alpha=True`` (default) each layer's ``S`` gets
    ``out - 1`` fewer non-zeros, so that alphas + non-zeros equal those of the ``'layer'``
    configuration (``1 + budget`` per layer): the comparison is at equal trainable parameters. A
    layer whose budget is smaller than ``out - 1`` raises :class:`DctpsError`. Fixed alphas
    (``train_alpha=False``) train nothing and are not charged.

    Args:
        model: any ``nn.Module``; the packed attention projection of ``nn.MultiheadAttention``
            (``kdim == vdim == embed_dim``) is handled too.
        density: fraction of weights that are trainable, in (0, 1].
        allocation: ``epl`` (paper default), ``epf``, ``erk``, ``uniform`` or ``epl_ref``.
        seed: seed of the random supports (layer ``i`` uses :func:`layer_seed` ``(seed, i)``,
            ``i`` counted after the DCTpS layers the model holds already: a second call, or
            hand-built layers); ``None`` = global RNG.
        exclude: module-name globs (``fnmatch``) to leave dense, with everything inside them, e.g.
            ``["fc", "*.downsample"]``. A glob that matches no module is an error (a typo).
        train_alpha: ``False`` fixes ``alpha`` (Appendix A.4).
        offset: the fixed matrix ``D`` (:func:`dctps.offsets.names`): ``'dct'`` (paper),
            ``'dct_signflip'``, ``'dct_permuted'``, ``'hadamard'``, ``'gaussian'``. Random offsets
            take the layer's seed (:func:`layer_seed`) and store it in the layer's ``offset_seed``
            buffer.
        alpha: ``'layer'`` (one scalar per layer, paper) or ``'channel'`` (one per output channel).
        alpha_init: the initial alpha, a number or ``'kaiming'`` (Kaiming-normal row scale, see
            :func:`dctps.layers.kaiming_alpha`).
        charge_alpha: charge the extra alphas of ``alpha='channel'`` to the budget (see above).
    """
    d = check_density(density)
    offset = check_offset(offset)
    if alpha not in ALPHA_SCOPES:
        _alpha_settings(alpha, None)  # raises the error naming the valid scopes
        raise DctpsError(f"alpha must be 'layer' or 'channel' in sparsify, got {alpha!r}")
    _alpha_settings(alpha, alpha_init)
    for flag, value in (("train_alpha", train_alpha), ("charge_alpha", charge_alpha)):
        check_flag(value, flag)
    kw: dict[str, Any] = {"offset": offset, "alpha": alpha, "alpha_init": alpha_init}
    check_module(model, "sparsify")
    seed = check_seed(seed)
    if isinstance(exclude, str):
        exclude = [exclude]
    if exclude is not None:
        try:
            exclude = list(exclude)
        except TypeError:
            exclude = [exclude]  # type: ignore[list-item]  # reported as not a string below
        bad = [e for e in exclude if not isinstance(e, str)]
        if bad:
            raise DctpsError(
                f"exclude must be module-name globs (strings), got {bad[0]!r}; e.g. exclude=['fc']"
            )
    exclude = exclude or []
    aliases = _aliases(model)  # every name of every module; the model is unchanged until the swap
    all_names = [n for n, _ in model.named_modules(remove_duplicate=False) if n]
    for pattern in exclude:
        if not any(_matches(n, [pattern]) for n in all_names):
            near = [n for n in all_names if "." not in n][:6]
            layer_names = [n for n, _, _ in prunable_layers(model)]
            nested = f", e.g. {layer_names[-1]!r}" if layer_names else ""
            raise DctpsError(
                f"exclude pattern {pattern!r} matches no module of {type(model).__name__} "
                f"(top-level modules: {', '.join(near) or 'none'}; nested names are "
                f"dotted{nested})"
            )
    for module in model.modules():
        names_ = [n for n in aliases[id(module)] if n]
        hit = [n for n in names_ if _matches(n, exclude)]
        if hit and len(hit) < len(names_):
            raise DctpsError(
                f"module {names_[0]!r} is also registered as "
                f"{', '.join(repr(n) for n in names_[1:])}; exclude matches {hit[0]!r} but not "
                f"{[n for n in names_ if n not in hit][0]!r}. One module is either dense or "
                "DCTpS: exclude all its names or none"
            )
    if isinstance(model, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
        # sparsify swaps submodules in place; the object the caller holds cannot be swapped
        raise DctpsError(
            f"the model is itself a {type(model).__name__}, which sparsify cannot replace in "
            "place: wrap it (model = nn.Sequential(model)) or build a dctps.DCTpSLinear / "
            "DCTpSConv2d directly"
        )
    layers = list(prunable_layers(model, exclude))
    if not layers and any(isinstance(m, DCTpSLayer) for m in model.modules()):
        raise DctpsError(
            f"{type(model).__name__} is already sparsified (its Linear/Conv2d layers are DCTpS "
            "layers): to change its density, sparsify the original dense model"
        )
    if not layers and isinstance(model, torch.jit.ScriptModule):
        raise DctpsError(
            f"the model is a TorchScript module ({type(model).__name__} of "
            f"{model.original_name}), whose layers are not nn.Linear / nn.Conv2d: sparsify the "
            "eager model, then torch.jit.script or trace it"
        )
    if not layers:
        raise DctpsError(
            f"{type(model).__name__} has no nn.Linear / nn.Conv2d layers to sparsify "
            "(after exclusions); DCTpS replaces exactly those"
        )
    _check_convertible(model, layers, exclude, aliases)
    counts = budgets([shape for _, _, shape in layers], d, allocation)
    charged = alpha == "channel" and charge_alpha and train_alpha  # fixed alphas cost nothing
    if sum(counts) == 0:
        total = sum(math.prod(shape) for _, _, shape in layers)
        raise DctpsError(
            f"density {d:g} gives 0 of the {total:,} weights (round(density * weights) = 0): "
            "nothing would train but the offset scales. "
            + ("Use a higher density" if charged else f"Density {1 / total:.2g} keeps one weight")
        )
    if charged:
        counts = list(counts)
        for j, (name, _, shape) in enumerate(layers):
            extra = shape[0] - 1
            if counts[j] < extra:
                raise DctpsError(
                    f"layer {name!r} {tuple(shape)} has a budget of {counts[j]} non-zeros at "
                    f"density {d:g}: too few to pay for its {extra} extra per-channel alphas. "
                    "Use a higher density, alpha='layer', or charge_alpha=False (then the model "
                    "trains more parameters than the 'layer' configuration)"
                )
            counts[j] -= extra
        if sum(counts) == 0:
            raise DctpsError(
                f"at density {d:g} the per-channel alphas use up every layer's budget: no "
                "weight would train. Use a higher density, alpha='layer', or charge_alpha=False"
            )
    kw.update(per_filter=allocation == "epf", train_alpha=train_alpha)
    # Build every new layer first, then swap them in: an error leaves the model untouched.
    swaps: list[tuple[nn.Module, nn.Module]] = []
    # layers sparsified by an earlier call (with exclude) took the first layer seeds: go on after
    # them, or this call would draw their supports again (0 on a dense model, as always)
    first = sum(isinstance(m, DCTpSLayer) for m in model.modules())
    i = 0
    while i < len(layers):
        name, module, _ = layers[i]
        lseed = None if seed is None else layer_seed(seed, first + i)
        if isinstance(module, nn.MultiheadAttention):
            # The next entry is this attention's out_proj (checked above); both go into one module.
            new: nn.Module = DCTpSMultiheadAttention(module, counts[i], counts[i + 1], lseed, **kw)
            i += 2
        else:
            new = _replace(module, counts[i], lseed, **kw)
            i += 1
        move_hooks(module, new)
        new.train(module.training)  # an eval model's attention must not run its dropout
        swaps.append((module, new))
    left_dense = left_dense_layers(model, exclude)
    for old, new in swaps:
        for alias in aliases[id(old)]:
            set_submodule(model, alias, new)
    warn_left_dense(left_dense, "sparsify")
    return model


#: layers with weight matrices that sparsify has no DCTpS version of (Conv2d excepted): they stay
#: dense, and :func:`warn_left_dense` says so
_LEFT_DENSE = (_ConvNd, nn.RNNBase, nn.RNNCellBase, nn.Bilinear, nn.Embedding, nn.EmbeddingBag)


def _stays_dense(m: nn.Module) -> bool:
    """Whether ``m`` holds weight matrices that neither sparsify nor prune converts: a
    :data:`_LEFT_DENSE` layer other than Conv2d, an attention with separate q/k/v projections
    (``kdim``/``vdim`` other than ``embed_dim``), or a TorchScript module (``torch.jit.script``
    or ``trace``), whose layers are not ``nn.Linear`` / ``nn.Conv2d`` any more."""
    if isinstance(m, _LEFT_DENSE):
        return not isinstance(m, nn.Conv2d)
    if isinstance(m, nn.MultiheadAttention):
        return not m._qkv_same_embed_dim
    return isinstance(m, torch.jit.ScriptModule) and bool(_weight_matrices(m))


def left_dense_layers(model: nn.Module, exclude: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of each layer of ``model`` that stays dense (:func:`_stays_dense`),
    outside the ``exclude`` globs."""
    exclude = list(exclude)
    return [
        (n, m) for n, m in model.named_modules() if _stays_dense(m) and not _matches(n, exclude)
    ]


def _weight_matrices(m: nn.Module) -> list[torch.Tensor]:
    """``m``'s own materialised parameters of two or more dimensions: the weights of a layer
    sparsify leaves dense (what its warning reports and :func:`count` counts as weights)."""
    return [p for p in m.parameters(recurse=False) if not is_lazy(p) and p.dim() >= 2]


def warn_left_dense(dense: Sequence[tuple[str, nn.Module]], caller: str) -> None:
    """Warn about layers ``caller`` (``sparsify`` or ``prune``) has no sparse version of
    (:func:`_stays_dense`: Conv1d, Conv3d, transposed convs, recurrent layers, Bilinear,
    embeddings, separate-q/k/v attention, TorchScript modules): they stay dense and train every
    weight, which the user may not expect of a "sparse" model (:func:`count` counts them as
    dense weights). sparsify's ``exclude`` silences it."""
    if not dense:
        return

    def size(m: nn.Module) -> str:
        if any(is_lazy(p) for p in m.parameters(recurse=False)):
            return "weights not created yet"
        return f"{sum(p.numel() for p in _weight_matrices(m)):,} weights"

    def kind(m: nn.Module) -> str:
        if isinstance(m, torch.jit.ScriptModule):
            return f"TorchScript {m.original_name}"
        if isinstance(m, nn.MultiheadAttention):
            return "MultiheadAttention with separate q/k/v weights"
        return type(m).__name__

    listed = ", ".join(f"{n or '(the model)'} ({kind(m)}, {size(m)})" for n, m in dense)
    names = [n for n, _ in dense]
    how = (
        f"Pass exclude={names!r} to keep them dense without this warning"
        if caller == "sparsify"
        else "They are not counted in the pruned density"
    )
    scripted = any(isinstance(m, torch.jit.ScriptModule) for _, m in dense)
    warnings.warn(
        f"{caller}: {len(dense)} layer(s) stay dense (dctps converts nn.Linear, nn.Conv2d and "
        f"attention with one packed q/k/v projection only): {listed}. They train every "
        f"weight, and dctps.count counts them as dense weights. {how}"
        + (f"; {caller} the eager model, then script it" if scripted else ""),
        UserWarning,
        stacklevel=3,
    )


@dataclass(frozen=True)
class Counts:
    """What a model trains.

    Attributes:
        weights: entries of all Linear and convolution (Conv1d/2d/3d, transposed) weights and
            attention projections, dense or not, and the weight matrices of recurrent,
            embedding and bilinear layers (dense: sparsify leaves them so, with a warning).
        nonzeros: trainable weight entries: ``nnz`` of DCTpS layers, unmasked entries of pruned
            layers, all entries of dense layers.
        alphas: DCTpS offset scales (trainable or fixed): one per layer, or one per output
            channel with ``alpha='channel'``.
        other: every other parameter (biases, normalisation scales, Fixup scalars, an
            attention's ``bias_k``/``bias_v``, free-standing parameters such as a positional
            embedding).
        fixed_alphas: the alphas that are not trained (``train_alpha=False``).

    The sparse budget of a DCTpS model is ``nonzeros + alphas``, fixed alphas included: this
    project's convention (an alpha is a trained or stored number like a non-zero); Table E.1
    gives only the dense weight totals these are fractions of.
    """

    weights: int
    nonzeros: int
    alphas: int
    other: int
    fixed_alphas: int = 0

    @property
    def density(self) -> float:
        """``nonzeros / weights`` (0 for a model without weights)."""
        return self.nonzeros / self.weights if self.weights else 0.0

    @property
    def trainable(self) -> int:
        """Non-zeros + trained alphas + other: the parameters an optimizer updates."""
        return self.nonzeros + self.alphas - self.fixed_alphas + self.other


def count(model: nn.Module) -> Counts:
    """Count weights, trainable non-zeros, alphas and other parameters of ``model`` (see Counts)."""
    check_module(model, "count")
    weights = nonzeros = alphas = fixed = 0
    seen: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, DCTpSLayer):
            weights += math.prod(module.weight_shape)
            nonzeros += _unmasked(module, "values")  # torch.nn.utils.prune may mask S too
            alphas += module.alpha.numel()
            fixed += 0 if module.alpha.requires_grad else module.alpha.numel()
            seen.update(
                id(getattr(module, f"{p}_orig", getattr(module, p))) for p in ("alpha", "values")
            )
        elif isinstance(module, nn.MultiheadAttention) and module._qkv_same_embed_dim:
            w = module.in_proj_weight
            weights += w.numel()
            nonzeros += _unmasked(module, "in_proj_weight")
            seen.update(id(p) for p in weight_sources(module, "in_proj_weight"))
        elif isinstance(module, (nn.Linear, _ConvNd)):  # convolutions of any kind
            _check_not_lazy(module, name, "then count")
            weights += module.weight.numel()
            nonzeros += _unmasked(module, "weight")
            # a weight_norm'ed layer's weight is computed: its direction v is what it holds
            seen.update(id(p) for p in weight_sources(module))
    # weight matrices of the layers sparsify leaves dense with a warning (LSTM, Embedding,
    # Bilinear, separate q/k/v, TorchScript): dense weights, so that a "1%" model with a large
    # dense LSTM does not report 1%
    matrices = 0
    for module in model.modules():
        if _stays_dense(module) and not isinstance(module, _ConvNd):
            for p in _weight_matrices(module):
                if id(p) not in seen:
                    matrices += p.numel()
                    seen.add(id(p))
    other = sum(p.numel() for p in model.parameters() if id(p) not in seen)
    return Counts(weights + matrices, nonzeros + matrices, alphas, other, fixed)


def _unmasked(module: nn.Module, name: str) -> int:
    mask = getattr(module, name + "_mask", None)
    return int(mask.count_nonzero()) if mask is not None else getattr(module, name).numel()
