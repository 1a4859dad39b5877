"""Batched rebuild: every DCTpS weight ``W = alpha * D + S`` of a model in one pass per forward.

Why: an eager GPU training step is bound by kernel launches and Python, not by arithmetic. Before
this batching, a ResNet18 DCTpS step on an H200 took 1.42x the dense step eagerly and 1.06x
replayed as a CUDA graph; with it, 1.022–1.025x as a CUDA graph on H100s (``benchmarks/RESULTS.md``,
status table, (c)). In ``mode='dense'`` each DCTpS layer adds its
own kernels and autograd nodes to every step: the forward ``alpha * D`` and the scatter of ``S``,
and the backward ``<dW, D>`` and ``dW[indices]``. :func:`batch_rebuild` does the same arithmetic
for all such layers of a model at once: 9 operators and one autograd node per (device, dtype)
and step, where the per-layer rebuild dispatches 5 operators and about 4 autograd nodes per layer
(with the segmented reduction below, the default on CUDA; elsewhere ``d alpha`` is one ``sum``
per layer, see :func:`alpha_grads`):

    forward   W = copy of D_cat;  W_l = W[o_l : o_l + n_l].view(shape_l)
              W_l *= alpha_l  (one foreach call);  W[g] += cat_l values_l
    backward  G = cat_l dW_l
              d values = G[g]
              r = row sums of G * D_cat            (one sum per output row of every layer)
              d alpha  = sums of r over each alpha's rows

``D_cat`` is the concatenation of the layers' flattened bases. Each layer's cached ``D`` becomes a
view of it, so ``D`` is not held twice. ``g`` holds every layer's ``indices`` shifted by the layer's
offset ``o_l``. An alpha is one scalar per layer, or with ``alpha='channel'`` one per output row.
No alpha is read back to the host, so nothing waits for the GPU. In the foreach call each alpha
broadcasts over its weight (the shapes within a pair differ), so PyTorch runs its per-tensor
loop: one small kernel per layer, but launched from C++, with no Python and no autograd node per
layer. (``repeat_interleave`` would expand the alphas in one kernel, but its CUDA kernel gives
each repeated entry one warp: one warp for a layer's 2.4M weights.)

A forward pre-hook on the model computes the weights. Each layer's
:meth:`~dctps.layers.DCTpSLayer.dense_weight` returns its batched ``W`` for the rest of that
forward, and a forward hook, run even when the forward raises, removes them. (On a
``KeyboardInterrupt`` PyTorch skips that hook; the next forward of the model clears what the
interrupted one left.) A layer called outside the model's forward rebuilds its own weight as
before, and so does every layer under ``torch.compile``, ``torch.jit.trace``, ``torch.func``
transforms, forward-mode AD and ``nn.DataParallel`` replicas. Layers without a trainable
parameter are rebuilt under ``no_grad``, so a frozen part of a model records no graph.
``torch.utils.checkpoint`` around parts of the model needs ``use_reentrant=True``: the
non-reentrant form recomputes after the forward, without the batched weights, and PyTorch then
refuses the different saved tensors (checkpointing the whole model works either way).
Members are the layers that take the dense path: ``mode='dense'``, or ``'auto'`` once every
signature it has measured chose ``'dense'`` (such a layer then keeps the dense path for new input
shapes too, without measuring them: every path computes the same function).
"""

from __future__ import annotations

import itertools
import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.utils.hooks import RemovableHandle

from dctps.errors import DctpsError, check_module
from dctps.fast import auto_generation
from dctps.fast import version as fast_version
from dctps.layers import BATCHED_WEIGHT, DCTpSLayer, builtin_ops_only

__all__ = ["BatchedRebuild", "batch_rebuild", "strip", "takes_dense_path"]

#: attribute of a layer's ``__dict__`` holding its batched ``W`` during a forward
WEIGHT_KEY = BATCHED_WEIGHT


def takes_dense_path(layer: DCTpSLayer) -> bool:
    """Whether ``layer``'s forward reads ``dense_weight()``: ``mode='dense'``, or ``'auto'`` once
    every input signature it has measured (since the last :func:`dctps.fast.clear_auto_cache`)
    chose the dense path."""
    mode = layer.mode
    if mode == "dense":
        return True
    if mode == "auto":
        memo = layer.__dict__.get("_dctps_auto") or {}
        gen = auto_generation()
        paths = [p for key, p in memo.items() if key[-1] == gen]  # the memo key ends with it
        return bool(paths) and all(p == "dense" for p in paths)
    return False


@dataclass(eq=False)
class _Plan:
    """The fixed structure of one (device, dtype, trainable) group of layers.

    - ``d``: ``D_cat`` (total,); ``gidx``: global flat positions of all non-zeros (nnz_total,).
    - ``alpha_bcast``: per layer, the shape that broadcasts its alpha over its weight (``None``
      for a scalar); ``scalar_alphas``: every layer has one alpha.
    - ``row_offsets``: start of each output row in ``D_cat``, plus the end (rows + 1,);
      ``alpha_row_offsets``: first row of each alpha entry, plus the row count (n_alpha + 1,).
    - per layer: ``sizes`` (numel), ``nnzs``, ``n_alphas``, ``shapes``, ``alpha_shapes``.
    - ``trainable``: whether the layers have a parameter that requires grad (a plan holds
      trainable layers only, or frozen ones only).
    - ``views`` (each layer's ``D``, a view of ``d``) and ``supports`` (each layer's ``indices``
      tensor and its version counter when the plan was built) tell whether the plan still holds
      (:func:`_valid`).
    """

    layers: tuple[DCTpSLayer, ...]
    trainable: bool
    views: tuple[torch.Tensor, ...]
    supports: tuple[tuple[torch.Tensor, int], ...]
    d: torch.Tensor
    gidx: torch.Tensor
    alpha_bcast: tuple[tuple[int, ...] | None, ...]
    scalar_alphas: bool
    row_offsets: torch.Tensor
    alpha_row_offsets: torch.Tensor
    sizes: tuple[int, ...]
    nnzs: tuple[int, ...]
    n_alphas: tuple[int, ...]
    shapes: tuple[tuple[int, ...], ...]
    alpha_shapes: tuple[torch.Size, ...]


def _alpha_values(m: DCTpSLayer) -> tuple[torch.Tensor, torch.Tensor]:
    # the Parameter dict directly: nn.Module.__getattr__ costs a microsecond per layer and step
    p = m._parameters
    return p["alpha"], p["values"]  # type: ignore[return-value]


def _trainable(m: DCTpSLayer) -> bool:
    a, v = _alpha_values(m)
    return a.requires_grad or v.requires_grad


def _valid(plan: _Plan) -> bool:
    """Whether ``plan`` still describes its layers.

    A new support (``load_state_dict`` replaces ``indices``, RigL rewrites it in place) or a new
    ``D`` (``.to()``, ``load_state_dict`` and a mode switch drop or replace the cached basis), a
    moved, re-typed or re-shaped ``alpha``, or a layer frozen or unfrozen each need a new plan.
    """
    d = plan.d
    rows = zip(plan.layers, plan.views, plan.supports, plan.alpha_shapes, strict=True)
    for m, v, (idx, version), shape in rows:
        if (
            m.__dict__.get("_D") is not v
            or m._buffers["indices"] is not idx
            or (fast_version(idx) != version)
        ):
            return False
        a = m._parameters["alpha"]
        if a is None or a.dtype is not d.dtype or a.device != d.device or a.shape != shape:
            return False
        if _trainable(m) != plan.trainable:
            return False
    return True


def _build_plans(layers: list[DCTpSLayer]) -> list[_Plan]:
    """One :class:`_Plan` per (device, dtype, trainable) of the layers."""
    groups: dict[tuple, list[DCTpSLayer]] = {}
    for m in layers:
        m._check_initialised()  # to_empty() without reset_parameters(): no support to gather
        groups.setdefault((m.alpha.device, m.alpha.dtype, _trainable(m)), []).append(m)
    with torch.inference_mode(False):  # D_cat becomes the layers' D: never an inference tensor
        return [_build_plan(g, trainable) for (_, _, trainable), g in groups.items()]


def _release(plans: list[_Plan], keep: set[int]) -> None:
    """Give every layer of ``plans`` not in ``keep`` (ids) a ``D`` of its own, so the plans'
    ``D_cat`` can be freed."""
    with torch.inference_mode(False):
        for plan in plans:
            for m, v in zip(plan.layers, plan.views, strict=True):
                if id(m) not in keep and m.__dict__.get("_D") is v:
                    m._D = v.clone()


def _build_plan(layers: list[DCTpSLayer], trainable: bool) -> _Plan:
    """Concatenate the layers' bases and supports (once per structure, not per step)."""
    device = layers[0].alpha.device
    basis = [m.D.reshape(-1) for m in layers]
    d = torch.cat(basis)
    sizes = tuple(b.numel() for b in basis)
    del basis
    starts = list(itertools.accumulate(sizes[:-1], initial=0))
    views = []
    for m, o, n in zip(layers, starts, sizes, strict=True):
        v = d[o : o + n].view(m.weight_shape)
        m._D = v  # the layer's cached D now shares D_cat's memory
        views.append(v)
    gidx = torch.cat([m.indices + o for m, o in zip(layers, starts, strict=True)])
    row_starts: list[int] = []
    alpha_rows: list[int] = []
    rows_so_far = 0
    for m, o, n in zip(layers, starts, sizes, strict=True):
        out = m.weight_shape[0]
        fan = n // out
        row_starts.extend(range(o, o + n, fan))
        if m.alpha.numel() == 1:
            alpha_rows.append(rows_so_far)
        else:
            alpha_rows.extend(range(rows_so_far, rows_so_far + out))
        rows_so_far += out
    row_starts.append(d.numel())
    alpha_rows.append(rows_so_far)

    def ints(v: list[int]) -> torch.Tensor:
        return torch.tensor(v, dtype=torch.int64, device=device)

    return _Plan(
        layers=tuple(layers),
        trainable=trainable,
        views=tuple(views),
        supports=tuple((m.indices, fast_version(m.indices)) for m in layers),
        d=d,
        gidx=gidx,
        alpha_bcast=tuple(
            None if m.alpha.dim() == 0 else (-1,) + (1,) * (len(m.weight_shape) - 1) for m in layers
        ),
        scalar_alphas=all(m.alpha.dim() == 0 for m in layers),
        row_offsets=ints(row_starts),
        alpha_row_offsets=ints(alpha_rows),
        sizes=sizes,
        nnzs=tuple(m.values.numel() for m in layers),
        n_alphas=tuple(m.alpha.numel() for m in layers),
        shapes=tuple(m.weight_shape for m in layers),
        alpha_shapes=tuple(m.alpha.shape for m in layers),
    )


def alpha_grads(g: torch.Tensor, plan: _Plan, segmented: bool) -> torch.Tensor:
    """``d alpha`` for every alpha entry from ``g = G * D_cat`` (total,) -> (n_alpha,).

    ``segmented=True`` (CUDA): two segmented sums, over each output row and then over each
    alpha's rows (a fixed number of kernels; each row sum is short, so float error stays at the
    level of a row). ``False`` (the CPU, where launches are cheap and ``segment_reduce`` runs each
    segment sequentially, and other devices): one pairwise ``sum`` per layer.
    """
    if segmented:
        rows = torch.segment_reduce(g, "sum", offsets=plan.row_offsets, unsafe=True)
        return torch.segment_reduce(rows, "sum", offsets=plan.alpha_row_offsets, unsafe=True)
    parts = []
    for seg, shape, k in zip(g.split(plan.sizes), plan.shapes, plan.n_alphas, strict=True):
        parts.append(seg.sum().reshape(1) if k == 1 else seg.view(shape[0], -1).sum(1))
    return torch.cat(parts)


class _BatchedWeights(torch.autograd.Function):
    """``(alpha_1, values_1, ..., alpha_L, values_L) -> (W_1, ..., W_L)`` for one :class:`_Plan`."""

    @staticmethod
    def forward(ctx, plan: _Plan, segmented: bool, *params: torch.Tensor):  # type: ignore[override]
        alphas, values = params[0::2], params[1::2]
        w = plan.d.clone()
        # views of w shaped like each layer's D, made in one C++ loop (as DDP's buckets are)
        outs = _unflatten_dense_tensors(w, plan.views)
        scales = [
            a if shape is None else a.view(shape)
            for a, shape in zip(alphas, plan.alpha_bcast, strict=True)
        ]
        # one C++ loop over the layers (no per-layer Python); alpha never leaves the device
        torch._foreach_mul_(outs, scales)
        w.index_add_(0, plan.gidx, torch.cat(values))  # distinct positions: one plain add each
        ctx.plan, ctx.segmented = plan, segmented
        # a layer the forward did not use gets no gradient (None, as without batching), not zeros
        ctx.set_materialize_grads(False)
        return tuple(outs)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor | None):  # type: ignore[override]
        plan: _Plan = ctx.plan
        if len(grads) == 1:  # no cat: g is the caller's gradient, so it must not be changed
            (gr,) = grads
            g = plan.d.new_zeros(plan.d.shape) if gr is None else gr.reshape(-1)
            gd = g * plan.d
        else:
            if all(gr is not None for gr in grads):
                g = _flatten_dense_tensors(grads)  # one cat, in C++
            else:
                g = torch.cat(
                    [
                        plan.d.new_zeros(n) if gr is None else gr.reshape(-1)
                        for gr, n in zip(grads, plan.sizes, strict=True)
                    ]
                )
            gd = None
        dv = g.index_select(0, plan.gidx).split(plan.nnzs)
        da = alpha_grads(g.mul_(plan.d) if gd is None else gd, plan, ctx.segmented)
        if plan.scalar_alphas:
            das: Any = da.unbind(0)
        else:
            das = [
                t.view(s) for t, s in zip(da.split(plan.n_alphas), plan.alpha_shapes, strict=True)
            ]
        need = ctx.needs_input_grad[2:]
        out: list[torch.Tensor | None] = [None, None]
        for i, (ga, gv, gr) in enumerate(zip(das, dv, grads, strict=True)):
            out.append(ga if need[2 * i] and gr is not None else None)
            out.append(gv if need[2 * i + 1] and gr is not None else None)
        return tuple(out)


def _skip(module: nn.Module) -> bool:
    """Whether this forward must rebuild per layer: under ``torch.compile`` (it fuses the rebuild
    itself), ``torch.jit.trace``, a ``torch.func`` transform or forward-mode AD (the batched
    Function has no tracing, vmap or jvp rules), or in an ``nn.DataParallel`` replica (whose
    threads would share this hook's state)."""
    if torch.compiler.is_compiling() or torch.jit.is_tracing():
        return True
    if getattr(module, "_is_replica", False):
        return True
    return builtin_ops_only()


class BatchedRebuild:
    """The hooks :func:`batch_rebuild` put on a model; :meth:`remove` takes them off.

    The DCTpS layers are found at the first forward (and again whenever the hooks see another
    module); call :meth:`refresh` after adding or replacing layers (until then a new layer
    rebuilds its own weight, and a removed one is still rebuilt, uselessly). The plans (see
    :class:`_Plan`) are rebuilt whenever a layer's support, basis, device, dtype, alpha shape or
    trainability changes. A ``copy.deepcopy`` or pickle of the model carries the hooks without
    their caches. ``segmented``: how ``d alpha`` is reduced (see :func:`alpha_grads`); ``None``
    picks by device (segmented on CUDA, where ``segment_reduce`` is one CUB call; a per-layer
    ``sum`` elsewhere, e.g. on MPS, which lacks ``segment_reduce``).
    """

    def __init__(self, model: nn.Module, segmented: bool | None = None):
        self.segmented = segmented
        # the model, weakly: its hooks hold this object, and a strong reference back made a
        # cycle that kept a discarded model (and its D_cat, GPU memory too) alive until the
        # garbage collector ran
        self._root: weakref.ref[nn.Module] | None = None
        self._layers: list[DCTpSLayer] = []
        # one set of plans at a time: building a plan points its layers' D at the new D_cat,
        # which invalidates any other plan holding those layers
        self._plans: list[_Plan] = []
        self._key: tuple[int, ...] = ()
        self._active: list[list[DCTpSLayer]] = []
        self._handles: list[RemovableHandle] = [
            model.register_forward_pre_hook(self._before),
            model.register_forward_hook(self._after, always_call=True),
        ]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state.update(_root=None, _layers=[], _plans=[], _key=(), _active=[])
        return state

    def refresh(self) -> None:
        """Find the model's DCTpS layers again at the next forward, and drop the cached plans."""
        self._clear_active()
        self._root, self._layers = None, []
        self._plans, self._key = [], ()

    def remove(self) -> None:
        """Take the hooks off; the layers rebuild their own weights again."""
        for h in self._handles:
            h.remove()
        self.refresh()

    def _pop_active(self) -> None:
        """Take the weights of the innermost running forward off its layers."""
        for m in self._active.pop():
            m.__dict__.pop(WEIGHT_KEY, None)

    def _clear_active(self) -> None:
        while self._active:
            self._pop_active()

    def _plans_for(self, members: list[DCTpSLayer]) -> list[_Plan]:
        key = tuple(map(id, members))
        if key != self._key or not all(map(_valid, self._plans)):
            old, self._plans, self._key = self._plans, [], ()
            _release(old, set(key))  # layers leaving the batch keep a D of their own
            del old  # free the old D_cat before building the new one
            self._plans, self._key = _build_plans(members), key
        return self._plans

    def _before(self, module: nn.Module, args: Any) -> None:
        if _skip(module):
            return
        if self._active:  # the last forward never reached _after (a KeyboardInterrupt)
            self._clear_active()
        done: list[DCTpSLayer] = []
        self._active.append(done)  # first: _after pops it even if what follows raises
        if self._root is None or self._root() is not module:
            self._root = weakref.ref(module)
            self._layers = [m for m in module.modules() if isinstance(m, DCTpSLayer)]
        # a layer already holding a weight belongs to an enclosing batched model's forward
        members = [m for m in self._layers if WEIGHT_KEY not in m.__dict__ and takes_dense_path(m)]
        if not members:
            _release(self._plans, set())
            self._plans, self._key = [], ()
            return
        for plan in self._plans_for(members):
            seg = self.segmented if self.segmented is not None else plan.d.device.type == "cuda"
            params = [t for m in plan.layers for t in _alpha_values(m)]
            # a frozen plan's inputs need no grad, so its weights record no graph
            weights = _BatchedWeights.apply(plan, seg, *params)
            for m, w in zip(plan.layers, weights, strict=True):
                m.__dict__[WEIGHT_KEY] = w
                done.append(m)

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        if _skip(module) or not self._active:
            return
        self._pop_active()


def _owners(module: nn.Module) -> list[BatchedRebuild]:
    """The :class:`BatchedRebuild` objects whose hooks are on ``module`` itself."""
    owners = (getattr(h, "__self__", None) for h in module._forward_pre_hooks.values())
    return [o for o in owners if isinstance(o, BatchedRebuild)]


def strip(model: nn.Module) -> None:
    """Take every :func:`batch_rebuild` hook off ``model`` and its submodules."""
    for m in model.modules():
        for owner in _owners(m):
            owner.remove()


def batch_rebuild(model: nn.Module, segmented: bool | None = None) -> BatchedRebuild:
    """Rebuild all DCTpS weights of ``model`` in one batched pass per forward (see module doc).

    The same outputs as the per-layer rebuild, and the same gradients up to float rounding
    (``d alpha`` is summed in another order), with a fixed number of operators per step instead of
    5 per layer: for eager GPU training, where those launches dominate. On the CPU
    it is correct but not faster (the rebuild there is bound by memory bandwidth, not launches).
    Returns the :class:`BatchedRebuild`; call its ``remove()`` to undo. Calling it again on the
    same model returns the existing one.
    """
    check_module(model, "batch_rebuild")
    existing = _owners(model)
    if existing:
        return existing[0]
    if not any(isinstance(m, DCTpSLayer) for m in model.modules()):
        raise DctpsError(
            "batch_rebuild: the model has no DCTpS layers (call dctps.sparsify(model, density) "
            "first)"
        )
    return BatchedRebuild(model, segmented)
