"""Does a pruned network still connect its input to its output? (``docs/BASELINES.md`` §0)

:func:`check_connected` is run by :func:`dctps.pruning.prune` on the final masks of every method,
before they are applied, and raises :class:`~dctps.errors.PruningFailed` when no chain of kept
weights leads from the input to the output ("layer collapse", Tanaka et al. 2020): such a network
computes a constant (its biases), whatever its sparse label says.

It is computed like SynFlow's synaptic flow, once, on a deep copy of the model in float64 and eval
mode, linearised so that every activation is ``>= 0`` and a unit is ``> 0`` exactly when some
chain of kept weights reaches it from the input:

* every prunable weight is ``mask / sqrt(fan_in)`` (a kept weight counts whatever its value, so
  a tiny or zero-initialised weight, e.g. Fixup's ``conv2``, cannot hide a path; the constant
  ``1 / sqrt(fan_in)`` keeps ``R`` inside float64's range on the paper's deepest networks);
  other Linear/Conv weights (e.g. ``Conv1d``, never pruned) are ``1 / sqrt(fan_in)`` everywhere;
* every bias (a parameter whose name contains ``bias``: Linear/Conv biases, BatchNorm's beta,
  Fixup's scalar biases) is 0, so a constant cannot pass for a path;
* BatchNorm: ``running_mean = 0``, ``running_var = 1``, ``weight = 1``; every other parameter
  (e.g. Fixup's scalar ``scale``) is 1: parameters that are never pruned count as present;
* the input is one all-ones sample of the model's input shape.

Then ``R = sum(f(1))`` is ``0`` exactly when the input reaches no output (each path adds a
positive product; no term can cancel another). A non-finite ``R`` proves nothing and is ignored.

The linearisation is valid only for layers that map non-negative inputs to non-negative outputs
and a positive input somewhere to a positive output somewhere, so the check runs only on models
all of whose leaf modules are of the types in :data:`SAFE_LEAVES` (and that contain no
``nn.MultiheadAttention``): all six architectures of :mod:`dctps.models` (LeNet-5, ResNet18/50,
VGG19, MobileNetV2, FixupResNet110) and MLPs/CNNs built from these layers. A model with any other
leaf (``LayerNorm``/``GroupNorm`` subtract a mean, which is 0 on a constant input; attention has a
softmax; an RNN, an embedding, a custom layer) is silently not checked. Functional code in a
custom module's ``forward`` (``torch.relu``, ``torch.cat``, ``+``) is trusted.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from dctps.errors import DctpsError, PruningFailed
from dctps.pruning.common import BatchStream, Target, model_device, targets

__all__ = ["SAFE_LEAVES", "checkable", "input_shape_of", "path_flow", "check_connected"]

#: leaf module types for which the linearised network is ``> 0`` exactly when connected.
SAFE_LEAVES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Mish,
    nn.Tanh,
    nn.Sigmoid,  # sigmoid(0) > 0 would hide a disconnection: path_flow runs it as Identity
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Flatten,
    nn.Unflatten,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Identity,
    # empty containers are leaves too
    nn.Sequential,
    nn.ModuleList,
    nn.ModuleDict,
)

#: how many empty layers a failure names
_NAMED = 6

_BATCH_NORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def checkable(model: nn.Module) -> bool:
    """Whether :func:`path_flow` is valid for ``model`` (module doc): every leaf module is one of
    :data:`SAFE_LEAVES`, no module is an ``nn.MultiheadAttention``, and every BatchNorm tracks
    running statistics (without them eval mode normalises by the batch's own statistics)."""
    for module in model.modules():
        if isinstance(module, nn.MultiheadAttention):
            return False
        if isinstance(module, _BATCH_NORM) and module.running_mean is None:
            return False
        if next(module.children(), None) is None and not isinstance(module, SAFE_LEAVES):
            return False
    return True


def input_shape_of(model: nn.Module, seen: Sequence[int] | None, batches: Any) -> tuple[int, ...]:
    """The shape of one input of ``model``, without the batch dimension, or ``()`` if unknown.

    In order: ``seen`` (the shape the method already drew, or SynFlow's ``input_shape``); the
    ``(in_channels, image_size, image_size)`` that :func:`dctps.models.build` records; the shape
    of the first of ``batches`` (not for a one-pass iterator, which drawing would consume).
    """
    if seen:
        return tuple(int(s) for s in seen)
    arch = getattr(model, "dctps_arch", None)
    if isinstance(arch, dict) and {"in_channels", "image_size"} <= arch.keys():
        size = int(arch["image_size"])
        return (int(arch["in_channels"]), size, size)
    if batches is not None and not isinstance(batches, Iterator):
        # a method that drew no batch (``random`` ignores them): bad ones must not fail it, and
        # drawing one (a shuffling loader seeds itself from torch's RNG) must not change what
        # is drawn after pruning
        with torch.random.fork_rng(devices=[]):
            try:
                x, _ = BatchStream(batches, model_device(model)).next()
            except DctpsError:
                return ()
        return tuple(x.shape[1:])
    return ()


def _fan_in(weight: torch.Tensor) -> int:
    return max(1, weight[0].numel()) if weight.dim() > 1 else max(1, weight.numel())


def path_flow(
    model: nn.Module, masks: Sequence[torch.Tensor], input_shape: Sequence[int]
) -> float | None:
    """``R = sum(f(1))`` of the linearised masked copy of ``model`` (module doc): ``0`` iff no
    path of kept weights connects the input to the output. ``None`` when it cannot be computed
    (the forward fails on the input shape) or is not finite. ``masks``: one per :func:`targets`
    entry. ``model`` is not modified."""
    device = model_device(model)
    dtype = torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64
    with torch.no_grad():
        try:
            net = copy.deepcopy(model).to(dtype).eval()
        except Exception:  # e.g. a model holding a lock: no check rather than no pruning
            return None
        # every activation value here is >= 0, where the safe activations are > 0 exactly
        # where their input is, except sigmoid (0.5 at 0: a layer that kept no weight passed
        # a positive value on, and a network cut off behind it passed the check)
        for parent in list(net.modules()):
            for cname, child in list(parent.named_children()):
                if isinstance(child, nn.Sigmoid):
                    setattr(parent, cname, nn.Identity())
        kept = {id(t.weight): m for t, m in zip(targets(net), masks, strict=True)}
        for module in net.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.is_floating_point():
                    continue
                if id(p) in kept:
                    p.copy_(kept[id(p)].to(device=p.device).view_as(p) / math.sqrt(_fan_in(p)))
                elif isinstance(module, _LINEAR) and name == "weight":
                    p.fill_(1.0 / math.sqrt(_fan_in(p)))
                elif "bias" in name.lower():
                    p.zero_()
                else:  # BatchNorm's gamma, Fixup's scale, ...: never pruned, present
                    p.fill_(1.0)
            if isinstance(module, _BATCH_NORM):
                assert module.running_mean is not None and module.running_var is not None
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        x = torch.ones((1, *input_shape), dtype=dtype, device=device)
        try:
            out = net(x)
        except (RuntimeError, IndexError, ValueError, TypeError):
            return None
        if not torch.is_tensor(out):
            return None
        r = float(out.sum())
    return r if math.isfinite(r) else None


def check_connected(
    model: nn.Module,
    layers: Sequence[Target],
    masks: Sequence[torch.Tensor],
    *,
    method: str,
    density: float,
    input_shape: Sequence[int],
) -> None:
    """Raise :class:`PruningFailed` (``reached = density``) when the masked ``model`` has no path
    from input to output, naming the layers that keep no weight. A model that is not
    :func:`checkable`, or whose input shape is unknown (``input_shape = ()``), is not checked."""
    if not input_shape or not checkable(model):
        return
    r = path_flow(model, masks, input_shape)
    if r is None or r != 0:
        return
    empty = [t.name for t, m in zip(layers, masks, strict=True) if not bool(m.any())]
    if not empty:
        why = "every layer keeps weights, but they form no chain from input to output"
    elif len(empty) == 1:
        why = f"layer collapse: layer {empty[0]} keeps 0 weights"
    else:
        more = f" and {len(empty) - _NAMED} more" if len(empty) > _NAMED else ""
        why = f"layer collapse: layers {', '.join(empty[:_NAMED])}{more} keep 0 weights"
    raise PruningFailed(
        f"{method}: the pruned network has no path from input to output ({why})",
        reached=density,
    )
