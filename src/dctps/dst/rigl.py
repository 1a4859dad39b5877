"""RigL dynamic sparse training (Evci et al., ICML 2020) as an optimizer-step hook.

``docs/BASELINES.md`` §7 (rigl-torch 0.5.2 as adapted in DCTpS), with the fixes listed there.
Usage::

    rigl = RigL(model, optimizer, total_steps=epochs * len(loader))
    for x, y in loader:
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        if rigl.step():          # False on update iterations: their optimizer step is skipped,
            optimizer.step()     # as in the TF reference

One ``step`` per optimizer step: with gradient accumulation, after the last micro-batch's
``backward`` (the dense gradients captured on an update iteration add up over the micro-batches).
With mixed precision, pass the loss scaler::

        scaler.scale(loss).backward()
        if rigl.step(scaler):
            scaler.step(optimizer)
            scaler.update()

An update iteration whose scaled dense gradients overflowed then leaves the supports as they
are (recorded in ``skipped``), lowers the scaler's scale by its backoff factor, and returns
``False``: the iteration is skipped, as the scaler skips any overflowing one. Without a scaler a
non-finite gradient on an update iteration is an error (a diverged run), and no layer is changed.

Schedule: ``t`` counts :meth:`RigL.step` calls from 1. An update happens when ``t % delta_t == 0``
and ``t < T_end = int(t_end * total_steps)``. Each update, for every sparse layer with ``n`` active
weights, drops ``n_d = floor(n f(t))`` of them, with the cosine drop fraction

    ``f(t) = alpha / 2 * (1 + cos(pi t / T_end))``   (``f(0) = alpha``, ``f(T_end) = 0``)

1. **drop**: keep the ``n - n_d`` active weights of largest ``|W|`` (ties: smaller flat index);
2. **grow**: activate the ``n_d`` positions of largest ``|dL/dW|`` (the DENSE gradient of the
   layer's effective weight on this iteration's batch, captured by a tensor hook) among the
   positions not kept in 1. (ties: smaller flat index);
3. newly activated weights start at exactly 0 and their optimizer state (any state tensor of the
   parameter's shape: SGD ``momentum_buffer``, Adam ``exp_avg``/``exp_avg_sq``/``max_exp_avg_sq``,
   ...) is reset to 0 at those positions (the TF reference's ``initial_acc_scale=0``; rigl-torch
   does not reset Adam's moments, which DCTpS inherited). A position dropped in 1. and regrown in
   2. keeps its value and state (TF ``reinit_when_same=False``).

So every layer keeps exactly its number of non-zeros. Under ``torch.distributed`` (DDP) the
captured gradients are averaged over the ranks before planning, so every rank moves the same
support, as one process on the global batch would. DCTpS layers must run the dense path
(``mode='dense'``, the default): the fast paths never form ``dL/dW`` and are refused.

Sparse layers are

* masked layers in ``torch.nn.utils.prune`` convention (``weight_orig`` + ``weight_mask``, e.g.
  from ``dctps.pruning.prune(model, d, 'random', allocation='erk')``, the paper's RigL set-up):
  ``|W| = |weight_orig * weight_mask|``; dropped and new entries of ``weight_orig`` are zeroed and
  ``weight_mask`` is rewritten in place;
* DCTpS layers (``W = alpha D + S``): RigL moves the support of ``S``: drop smallest ``|values|``,
  grow at the largest ``|dL/dW|`` outside ``indices``; ``indices`` (kept sorted) and ``values`` (new
  entries 0) are rewritten in place (the optimizer holds the ``values`` Parameter) and the
  optimizer state is permuted to follow the entries. ``alpha`` and ``D`` are untouched.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dctps.errors import DctpsError, check_module
from dctps.layers import DCTpSLayer
from dctps.pruning.common import connect_attention, read_ints, top_k_mask

if TYPE_CHECKING:
    from torch.distributed import ProcessGroup

__all__ = ["RigL"]


class _Sparse:
    """One sparse layer: captures its dense gradient while armed and rewrites its support."""

    def __init__(self, name: str, module: nn.Module):
        self.name = name
        # weakly: the module's hook (or, armed, its dense_weight) holds this object, and a
        # strong reference back made a cycle that kept a discarded model (and its memory, GPU
        # memory too) alive until the garbage collector ran; RigL holds the model itself
        self._module = weakref.ref(module)
        self.grad: torch.Tensor | None = None
        self.armed = False

    @property
    def module(self) -> nn.Module:
        m = self._module()
        if m is None:
            raise DctpsError(f"RigL: layer {self.name!r} no longer exists (its model was deleted)")
        return m

    def _accumulate(self, g: torch.Tensor) -> None:
        g = g.detach()
        self.grad = g.clone() if self.grad is None else self.grad + g

    def capture(self, w: torch.Tensor) -> None:
        if self.armed and w.requires_grad:
            w.register_hook(self._accumulate)

    def arm(self) -> None:
        self.armed, self.grad = True, None

    def disarm(self) -> None:
        self.armed, self.grad = False, None

    @property
    def params(self) -> list[nn.Parameter]:
        raise NotImplementedError

    def nnz(self) -> int:
        raise NotImplementedError

    def update(self, fraction: float, state: Callable[[nn.Parameter], dict[str, Any]]) -> int:
        raise NotImplementedError


def _plan(
    active: torch.Tensor, magnitude: torch.Tensor, grad: torch.Tensor, n: int, n_drop: int
) -> torch.Tensor:
    """New flat support: keep the ``n - n_drop`` of the ``n`` active entries of largest
    ``magnitude``, add the ``n_drop`` entries of largest ``|grad|`` among the rest (exact counts,
    ties by index). ``n`` comes from the caller, which has it: counting ``active`` again, and a
    ``-inf`` made with ``torch.tensor(..., device=...)`` (a host-to-device copy that waits for the
    queued work), were two CUDA synchronisations per layer and update."""
    keep = top_k_mask(torch.where(active, magnitude, -math.inf), n - n_drop)
    g = grad.abs().to(magnitude.dtype)
    grow = top_k_mask(torch.where(keep, -math.inf, g), n_drop)
    return keep | grow


class _Masked(_Sparse):
    """A layer pruned with ``torch.nn.utils.prune`` (``<attr>_orig`` and ``<attr>_mask``)."""

    #: its pre-hook watches the weight: an attention runs it for its out_proj
    #: (:func:`dctps.pruning.common.connect_attention`)
    _dctps_weight_hook = True

    def __init__(self, name: str, module: nn.Module, attr: str):
        super().__init__(name, module)
        self.attr = attr
        # a RigL built before on this model and never remove()d (a notebook cell run again):
        # its hook goes, and the newest RigL captures, as on a DCTpS layer. Each stale hook had
        # stayed, and one armed kept a dense gradient per layer alive at every backward.
        for key, hook in list(module._forward_pre_hooks.items()):
            owner = getattr(hook, "__self__", None)
            if isinstance(owner, _Masked) and owner.attr == attr:
                del module._forward_pre_hooks[key]
        # Runs after torch.prune's pre-hook (registered earlier), which recomputes the weight.
        self.handle = module.register_forward_pre_hook(self._pre_hook)

    def _pre_hook(self, module: nn.Module, args: Any) -> None:
        if self.armed and torch.is_grad_enabled():
            self.capture(getattr(module, self.attr))

    @property
    def orig(self) -> nn.Parameter:
        return getattr(self.module, self.attr + "_orig")

    @property
    def mask(self) -> torch.Tensor:
        return getattr(self.module, self.attr + "_mask")

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.orig]

    def nnz(self) -> int:
        return int(self.mask.count_nonzero())

    def update(self, fraction: float, state: Callable[[nn.Parameter], dict[str, Any]]) -> int:
        assert self.grad is not None
        orig, mask = self.orig, self.mask
        old = mask.detach().flatten() != 0
        n = int(old.sum())
        n_drop = math.floor(n * fraction)
        if n_drop == 0:
            return 0
        with torch.no_grad():
            magnitude = (orig * mask).abs().flatten()
            new = _plan(old, magnitude, self.grad.flatten(), n, n_drop)
            gone = ~(new & old).view_as(orig)
            orig.masked_fill_(gone, 0.0)  # dropped and newly grown entries are exactly +0.0
            mask.copy_(new.view_as(mask).to(mask.dtype))
            for value in state(orig).values():
                if torch.is_tensor(value) and value.shape == orig.shape:
                    value.masked_fill_(gone, 0.0)
            setattr(self.module, self.attr, orig * mask)  # refreshed with grad at next forward
        orig.grad = None
        return int((new & ~old).sum())


class _DCT(_Sparse):
    """The sparse part ``S`` of a DCTpS layer (``values`` at flat positions ``indices``)."""

    @property
    def layer(self) -> DCTpSLayer:
        return self.module  # type: ignore[return-value]

    #: whether the layer ran a forward with gradients while armed: one that did not is unused
    #: on this batch and keeps its support, whatever its mode
    ran = False

    def arm(self) -> None:
        super().arm()
        self.ran = False
        forward = type(self.layer).forward

        def watched_forward(x: torch.Tensor) -> torch.Tensor:
            if torch.is_grad_enabled():
                self.ran = True
            return forward(self.layer, x)

        bound = type(self.layer).dense_weight

        def dense_weight() -> torch.Tensor:
            w = bound(self.layer)
            # a frozen S keeps its support, as a masked layer's frozen weight does (its W may
            # still need a gradient, for a trained alpha)
            if torch.is_grad_enabled() and self.layer.values.requires_grad:
                self.capture(w)
            return w

        # An instance attribute shadows the method while armed (the forward and the attention
        # wrapper both call it), so the gradient of the materialised W is captured.
        object.__setattr__(self.layer, "dense_weight", dense_weight)
        # not a forward hook: a hook would be pickled and copied with the model
        object.__setattr__(self.layer, "forward", watched_forward)

    def disarm(self) -> None:
        super().disarm()
        self.layer.__dict__.pop("dense_weight", None)
        self.layer.__dict__.pop("forward", None)

    @property
    def params(self) -> list[nn.Parameter]:
        return [self.layer.values]

    def nnz(self) -> int:
        return self.layer.nnz

    def update(self, fraction: float, state: Callable[[nn.Parameter], dict[str, Any]]) -> int:
        assert self.grad is not None
        layer = self.layer
        values, indices = layer.values, layer.indices
        n = values.numel()
        n_drop = math.floor(n * fraction)
        if n_drop == 0:
            return 0
        numel = math.prod(layer.weight_shape)
        dev = indices.device
        with torch.no_grad():
            old = torch.zeros(numel, dtype=torch.bool, device=dev)
            old[indices] = True
            magnitude = torch.full((numel,), -math.inf, dtype=values.dtype, device=dev)
            magnitude[indices] = values.detach().abs()
            new = _plan(old, magnitude, self.grad.flatten(), n, n_drop)  # indices are distinct
            new_idx = torch.nonzero(new).flatten()  # sorted
            slot = torch.full((numel,), -1, dtype=torch.int64, device=dev)
            slot[indices] = torch.arange(n, device=dev)
            src = slot[new_idx]
            has = src >= 0
            at = src.clamp(min=0)  # a slot for every entry; where() zeroes the new ones

            def moved(t: torch.Tensor) -> torch.Tensor:
                # a gather and a where: boolean-mask indexing (t[src[has]], out[has] = ...)
                # counts the mask on the host, a CUDA synchronisation per indexing, two per
                # tensor moved (values and each optimizer state)
                return torch.where(has, t[at], 0)

            for value in state(values).values():
                if torch.is_tensor(value) and value.shape == values.shape:
                    value.copy_(moved(value))
            values.data.copy_(moved(values.data))
            indices.copy_(new_idx)
        layer.note_support()
        values.grad = None
        return int((~has).sum())


def _check_group(process_group: object, distributed: bool | None) -> None:
    """A :class:`DctpsError` for a ``process_group`` RigL cannot average over: not a
    ``torch.distributed`` group, or given with ``distributed=False`` (which averages nothing,
    so one of the two is a mistake)."""
    if process_group is None:
        return
    import torch.distributed as dist

    if not (dist.is_available() and isinstance(process_group, dist.ProcessGroup)):
        raise DctpsError(
            "process_group must be a torch.distributed process group (e.g. from "
            f"torch.distributed.new_group) or None, got {type(process_group).__name__}"
        )
    if distributed is False:
        raise DctpsError(
            "RigL(distributed=False) averages over no group, but a process_group was given: "
            "leave distributed out (or True) to average over it, or drop process_group"
        )


class RigL:
    """RigL on every sparse layer of ``model`` (module doc, ``docs/BASELINES.md`` §7).

    Args:
        model: a model with masked layers (``torch.nn.utils.prune``) and/or DCTpS layers. Dense
            layers are left alone.
        optimizer: the optimizer that trains ``model``, built after ``sparsify``/``prune`` (it
            must hold every sparse parameter: the ``values`` of DCTpS layers, the
            ``weight_orig`` of pruned ones); its per-entry state is reset at regrown weights and
            moved with a DCTpS layer's values when the support is re-sorted. ``None`` only for
            an optimizer without per-parameter state (plain SGD): RigL cannot move state it
            does not see, so Adam's or momentum's would stay on the old slots.
        total_steps: number of training iterations (``step`` calls) planned.
        delta_t: update every ``delta_t`` iterations (100).
        alpha: initial drop fraction (0.3).
        t_end: stop updating after this fraction of ``total_steps`` (0.75).
        distributed: average the captured gradients over the ranks of ``torch.distributed``
            before each update, as DDP training needs (module doc). ``None`` (default): when a
            process group of more than one rank is initialised (``process_group``'s, where
            given). ``True``: always (an error without an initialised one). Pass ``False`` when
            the ranks train independent models (a group shared for something else).
        process_group: the ``torch.distributed`` group whose ranks train this model (the one
            its DDP wrapper was given), which every collective of RigL then uses. ``None``
            (default): the default group (``WORLD``); a model replicated over a subgroup needs
            its group here, or the averaging would mix in (or wait for) other models' ranks.

    Attributes:
        t: number of :meth:`step` calls so far.
        T_end: ``int(t_end * total_steps)``.
        history: ``(t, f(t), weights regrown)`` of every update.
        skipped: the update iterations skipped because the loss scaler's gradients overflowed.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        total_steps: int,
        delta_t: int = 100,
        alpha: float = 0.3,
        t_end: float = 0.75,
        distributed: bool | None = None,
        process_group: ProcessGroup | None = None,
    ) -> None:
        for name, v in (("total_steps", total_steps), ("delta_t", delta_t)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise DctpsError(f"{name} must be an integer >= 1, got {v!r}")
        for name, f in (("alpha", alpha), ("t_end", t_end)):  # True was taken as 1.0
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f <= 1.0:
                raise DctpsError(f"{name} must be a number in [0, 1], got {f!r}")
        if distributed is not None and not isinstance(distributed, bool):
            raise DctpsError(f"distributed must be True, False or None, got {distributed!r}")
        check_module(model, "RigL")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise DctpsError(
                f"optimizer must be a torch.optim.Optimizer (or None), got "
                f"{type(optimizer).__name__}"
            )
        _check_group(process_group, distributed)
        self.distributed, self.process_group = distributed, process_group
        self.model, self.optimizer = model, optimizer
        self.total_steps, self.delta_t, self.alpha = total_steps, delta_t, float(alpha)
        self.T_end = int(t_end * total_steps)
        self.t = 0
        self.history: list[tuple[int, float, int]] = []
        self.skipped: list[int] = []
        self.layers: list[_Sparse] = []
        for name, module in model.named_modules():
            if isinstance(module, DCTpSLayer):
                self.layers.append(_DCT(name, module))
                continue
            for attr in ("weight", "in_proj_weight"):
                if hasattr(module, attr + "_orig") and hasattr(module, attr + "_mask"):
                    self.layers.append(_Masked(name, module, attr))
        if not self.layers:
            raise DctpsError(
                "RigL found no sparse layer: prune the model first (e.g. dctps.pruning.prune(model,"
                " d, 'random', allocation='erk')) or use DCTpS layers (dctps.sparsify)"
            )
        if optimizer is not None:
            held = {id(p) for g in optimizer.param_groups for p in g["params"]}
            missing = [
                lay.name or "(model)"
                for lay in self.layers
                if any(p.requires_grad and id(p) not in held for p in lay.params)
            ]
            if missing:
                raise DctpsError(
                    f"the optimizer does not hold the sparse parameters of {', '.join(missing[:5])}"
                    f"{' ...' if len(missing) > 5 else ''}: build it after sparsify/prune, "
                    "from model.parameters()"
                )
        connect_attention(model)  # a pruned attention out_proj: its gradient is captured too
        self._rearm()

    def drop_fraction(self, t: int) -> float:
        """``f(t) = alpha / 2 * (1 + cos(pi t / T_end))`` (0 when ``T_end = 0``)."""
        if self.T_end <= 0:
            return 0.0
        return self.alpha / 2 * (1 + math.cos(math.pi * t / self.T_end))

    def is_update(self, t: int) -> bool:
        """Whether the ``t``-th :meth:`step` call (1-based) updates the supports."""
        return t % self.delta_t == 0 and t < self.T_end

    def nonzeros(self) -> dict[str, int]:
        """Active weights per sparse layer (constant during training)."""
        return {layer.name: layer.nnz() for layer in self.layers}

    def _rearm(self) -> None:
        armed = self.is_update(self.t + 1)
        for layer in self.layers:
            layer.arm() if armed else layer.disarm()

    def step(self, scaler: torch.amp.GradScaler | None = None) -> bool:
        """Call after ``loss.backward()``; returns whether to call ``optimizer.step()`` now.

        On an update iteration it moves the supports (module doc) and returns ``False``.
        Raises :class:`DctpsError` if no dense gradient was captured on an update iteration
        (``step`` called without a forward/backward in between), or if one is not finite and
        no enabled ``scaler`` (``torch.amp.GradScaler``) says that overflow is expected: with
        one, the update and the optimizer step are skipped and the scale lowered (module doc).
        """
        if scaler is not None and not (hasattr(scaler, "is_enabled") and hasattr(scaler, "update")):
            raise DctpsError(
                f"scaler must be a torch.amp.GradScaler (or None), got {type(scaler).__name__}"
            )
        self.t += 1
        if not self.is_update(self.t):
            self._rearm()
            return True
        self._check_dense_paths()
        self._average_across_ranks()
        if all(layer.grad is None for layer in self.layers):
            raise DctpsError(
                f"RigL update at step {self.t}: no gradient was captured; call step() once per "
                "iteration, after loss.backward()"
            )
        # every layer checked before any moves: a refused update changes nothing; the flags
        # read at once (one CUDA synchronisation, not one per layer)
        used = [(layer.name, layer.grad) for layer in self.layers if layer.grad is not None]
        finite = read_ints([torch.isfinite(g).all() for _, g in used])
        bad = [name or "(model)" for (name, _), ok in zip(used, finite, strict=True) if not ok]
        if bad:
            if scaler is not None and scaler.is_enabled():
                # the scaler cannot see this overflow (it checks the optimizer's gradients, and
                # those of the support may be finite): lower its scale here, and skip the step
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                self.skipped.append(self.t)
                self._rearm()
                return False
            raise DctpsError(
                f"RigL update at step {self.t}: non-finite gradient in layer(s) "
                f"{', '.join(repr(b) for b in bad[:5])}{' ...' if len(bad) > 5 else ''}; no "
                "support was changed. With mixed precision, pass the loss scaler: "
                "rigl.step(scaler)"
            )
        fraction = self.drop_fraction(self.t)
        grown = 0
        for layer in self.layers:
            if layer.grad is not None:  # a layer unused on this batch keeps its support
                grown += layer.update(fraction, self._state)
        self.history.append((self.t, fraction, grown))
        self._rearm()
        return False

    def _check_dense_paths(self) -> None:
        """Refuse DCTpS layers whose forward does not materialise ``W``: RigL grows by the dense
        gradient ``dL/dW``, which the ``'fast'``/``'factor'`` paths never form, so such a layer
        would silently keep its support (static DCTpS reported as DCTpS+RigL)."""
        for layer in self.layers:
            # a layer that did not run on this batch keeps its support, in any mode
            if (
                isinstance(layer, _DCT)
                and layer.grad is None
                and layer.ran
                and layer.layer.values.requires_grad
                and (layer.layer.mode != "dense")
            ):
                raise DctpsError(
                    f"RigL needs the dense gradient of each DCTpS layer's weight, but layer "
                    f"{layer.name!r} runs mode={layer.layer.mode!r}, which never forms it; use "
                    "dctps.set_mode(model, 'dense') with RigL"
                )

    def _average_across_ranks(self) -> None:
        """Under ``torch.distributed`` (DDP), average the captured gradients over the ranks.

        The hooks see each rank's local gradient, before DDP's all-reduce; planning on those
        would grow different positions on each rank (and DDP then broadcasts rank 0's masks and
        indices over the other ranks' differently rewritten weights). The averaged gradient is
        the one DDP trains with, so every rank plans the same support, as one process would.
        """
        import torch.distributed as dist

        if self.distributed is False:
            return
        group = self.process_group  # None: the default group, as torch.distributed takes it
        if not (dist.is_available() and dist.is_initialized()):
            if self.distributed:
                raise DctpsError(
                    "RigL(distributed=True) needs an initialised torch.distributed process group"
                )
            return
        world = dist.get_world_size(group)
        if world < 2 and not self.distributed:  # one rank: its own gradient is the average
            return
        layers = self.layers
        ref = next((layer.params[0] for layer in layers), None)
        assert ref is not None
        has = torch.tensor(
            [int(layer.grad is not None) for layer in layers], dtype=torch.int32, device=ref.device
        )
        # a layer unused on one rank: zeros there
        dist.all_reduce(has, op=dist.ReduceOp.MAX, group=group)
        for layer, used in zip(layers, has.tolist(), strict=True):
            if not used:
                continue
            if layer.grad is None:
                shape = (
                    layer.layer.weight_shape if isinstance(layer, _DCT) else layer.params[0].shape
                )
                layer.grad = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
            dist.all_reduce(layer.grad, group=group)
            layer.grad.div_(world)

    def _state(self, p: nn.Parameter) -> dict[str, Any]:
        return {} if self.optimizer is None else self.optimizer.state.get(p, {})

    def remove(self) -> None:
        """Detach the hooks (the model keeps its current supports)."""
        for layer in self.layers:
            layer.disarm()
            if isinstance(layer, _Masked):
                layer.handle.remove()

    def state_dict(self) -> dict[str, int]:
        """The schedule position ``{'t': calls so far}`` (masks are in the model, moments in the
        optimizer). Save and load it with the model's and the optimizer's state dicts: a DCTpS
        layer's moments follow its ``values`` slot by slot, so a model loaded without the
        optimizer state of the same step pairs them with other weight positions."""
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the schedule at ``state['t']`` (from :meth:`state_dict`)."""
        t = state.get("t") if isinstance(state, dict) else None
        if isinstance(t, bool) or not isinstance(t, int) or t < 0:
            raise DctpsError(
                f"RigL.load_state_dict needs {{'t': steps so far}} (from RigL.state_dict()), got "
                f"{state!r}"
            )
        self.t = t
        self._rearm()
