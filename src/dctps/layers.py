"""DCTpS layers: ``W = alpha * D + S`` (Price & Tanner, ICML 2021, Section 4).

``D`` is the fixed truncated DCT of :mod:`dctps.dct` (never trained, never saved: it is a function
of the layer's shape); ``S`` is sparse and trainable, stored as ``values`` (a Parameter of length
``nnz``, initialised to 0) at the flat positions ``indices`` (a sorted buffer of distinct positions
in the weight tensor, drawn uniformly at random); ``alpha`` is one trainable scalar (init 1.0), or
with ``alpha='channel'`` one per output channel.

``offset=`` picks the fixed matrix (:mod:`dctps.offsets`): ``'dct'`` (the paper's, default),
``'dct_signflip'``, ``'dct_permuted'``, ``'hadamard'`` or ``'gaussian'``. A random offset's seed is
a persistent int64 buffer ``offset_seed``, so a saved and loaded layer rebuilds the same ``D``.

The default forward pass (``mode='dense'``) materialises ``W`` and runs ONE ``F.linear`` /
``F.conv2d`` (the authors' code runs two dense convolutions per layer, one for ``alpha*D`` and one
for ``S``: twice the cost). ``mode='fast'`` applies ``D`` with an O(n log n) DCT and ``S`` as a
sparse product, never forming ``D`` or ``W``; convs also have ``mode='factor'`` (a complex 1x1 conv
plus a depthwise conv); ``mode='auto'`` times the candidates once per input signature and keeps the
fastest (:mod:`dctps.fast`). ``D`` is built lazily, only when a dense path or
:meth:`DCTpSLayer.dense_weight` needs it, and is then cached as a non-persistent buffer (so it
follows ``.to()``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, NoReturn

import torch
import torch.nn.functional as F
from torch import nn

from dctps import _compat
from dctps import offsets as _offsets
from dctps import triton_rebuild as _triton
from dctps.allocation import filter_counts
from dctps.errors import (
    DctpsError,
    as_int,
    check_flag,
    check_seed,
    show,
    unknown_name,
    user_device,
    warn_at_caller,
)
from dctps.fast import (
    PREBUILT,
    auto_generation,
    autocast_dtype,
    check_conv_input,
    check_linear_input,
    check_mode,
    choose,
    factor_conv2d,
    fast_conv2d,
    fast_linear,
)

__all__ = [
    "ALPHA_SCOPES",
    "DCTpSLinear",
    "DCTpSConv2d",
    "DCTpSLayer",
    "draw_indices",
    "kaiming_alpha",
    "make_generator",
]

#: ``alpha='layer'``: one scalar per layer (the paper); ``'channel'``: one per output channel.
ALPHA_SCOPES = ("layer", "channel")

#: key of a layer's ``__dict__`` where :mod:`dctps.batched` puts the weight it built for the
#: current forward (absent outside a batched model's forward)
BATCHED_WEIGHT = "_dctps_w"
#: key of a layer's ``__dict__`` holding its Triton rebuild kernels' state (per device and dtype)
KERNEL_STATE = "_dctps_kernel"

#: entries of a layer's memo of ``mode='auto'`` decisions (one per exact input shape) before it
#: is emptied; the decisions themselves stay in :func:`dctps.fast.auto_cache`
AUTO_MEMO_SIZE = 256
#: smallest ``D`` (elements) that the CPU rebuilds with :class:`_FusedWeight`: below it the
#: built-in operators of :func:`op_rebuild` cost less, since a Python autograd Function's
#: per-call host time (about 16 us) outweighs the passes over ``D`` it saves; at 64k elements
#: they are about even (forward+backward: operators 0.93x the Function's time on 1 thread, 1.19x
#: on 2; 0.75x at 8k, 1.8x at 1M; ``benchmarks/host_overhead.py``, RESULTS.md session 18)
FUSED_REBUILD_MIN = 1 << 16


def kaiming_alpha(row_norms: torch.Tensor, scope: str) -> torch.Tensor:
    """``alpha`` such that ``alpha * D`` has the row scale of a Kaiming-normal (fan_in, ReLU) init.

    Kaiming-normal draws ``W_ij ~ N(0, 2 / fan_in)``, so every row has expected squared norm
    ``fan_in * 2 / fan_in = 2``, whatever the shape. ``alpha * D`` matches that when
    ``||alpha_o D_o||^2 = 2``: per channel ``alpha_o = sqrt(2) / ||D_o||``; for one scalar per layer
    the mean squared row norm is matched, ``alpha = sqrt(2 * out / ||D||_F^2)``. With orthonormal
    rows (the DCT variants and ``gaussian`` when ``out <= fan_in``) both give ``sqrt(2)``; when
    ``out > fan_in`` the DCT's columns are orthonormal, ``||D||_F^2 = fan_in`` and the scalar is
    ``sqrt(2 out / fan_in)``; the truncated Hadamard matrix has row norms ``sqrt(fan_in / M)``.
    A zero row (none of the built-in offsets has one) gets ``sqrt(2)``.
    """
    r = row_norms.to(torch.float64)
    if scope == "layer":
        total = float((r * r).sum())
        a = math.sqrt(2.0 * r.numel() / total) if total > 0 else math.sqrt(2.0)
        return torch.tensor(a, dtype=torch.float64)
    safe = torch.where(r > 0, r, torch.ones_like(r))
    return torch.where(r > 0, math.sqrt(2.0) / safe, torch.full_like(r, math.sqrt(2.0)))


def _alpha_settings(alpha: object, alpha_init: object) -> tuple[str, float | str]:
    """``(scope, init)`` from a layer's ``alpha`` / ``alpha_init`` arguments.

    ``alpha`` is the scope (``'layer'`` / ``'channel'``), or, as before, a number: the initial value
    of a per-layer alpha (then ``alpha_init`` must not also be given).
    """
    if isinstance(alpha, str):
        if alpha not in ALPHA_SCOPES:
            raise unknown_name("alpha scope", alpha, ALPHA_SCOPES)
        scope, init = alpha, 1.0 if alpha_init is None else alpha_init
    elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
        if alpha_init is not None and float(alpha) != 1.0:
            raise DctpsError("give the initial alpha once: alpha=<number> or alpha_init=...")
        scope, init = "layer", float(alpha) if alpha_init is None else alpha_init
    else:
        raise DctpsError(f"alpha must be 'layer', 'channel' or a number, got {alpha!r}")
    if isinstance(init, str):
        if init != "kaiming":
            raise DctpsError(f"alpha_init must be a number or 'kaiming', got {init!r}")
    elif isinstance(init, bool) or not isinstance(init, (int, float)) or not math.isfinite(init):
        raise DctpsError(f"alpha_init must be a finite number or 'kaiming', got {init!r}")
    else:
        init = float(init)
    return scope, init


#: a layer's ``__dict__`` key set while ``to_empty()`` has left its support uninitialised
UNINITIALISED = "_dctps_uninitialised"
#: a layer's attribute: :func:`support_fingerprint` of its support where dctps last set it
SUPPORT_FINGERPRINT = "_dctps_support_fingerprint"
#: ``(id, version)`` of the ``indices`` tensor when its support was last known to be one dctps
#: set (:meth:`DCTpSLayer.note_support`, a move, a copy): an eval forward after an in-place
#: write checks the written support against :data:`SUPPORT_FINGERPRINT`
SUPPORT_SEEN = "_dctps_support_seen"
#: whether grad mode was on when the cached ``D`` was built: a compiled graph cannot ask whether
#: its ``D`` is an inference tensor, only whether it was built without grad mode
BASIS_GRAD_MODE = "_dctps_basis_grad"
# key of a layer's weight shape in its state dict's per-module metadata
SHAPE_METADATA = "dctps_weight_shape"
#: the per-module state-dict metadata key that holds a layer's offset (``'dct'``, ...)
OFFSET_METADATA = "dctps_offset"


@dataclass(frozen=True)
class _InitSpec:
    """How a layer was initialised, for :meth:`DCTpSLayer.reset_parameters`: the support's
    ``seed`` (``None``: torch's global RNG) and ``per_filter``, the initial ``alpha`` (a number
    or ``'kaiming'``), a random offset's seed, and whether the support was given explicitly."""

    seed: int | None
    per_filter: bool
    alpha: float | str
    offset_seed: int | None
    given_indices: bool


#: offset of a seeded layer's bias stream from its support's (any constant that keeps them apart)
_BIAS_STREAM = 0x5EED_B1A5


def make_generator(seed: int | None) -> torch.Generator | None:
    """A CPU generator seeded with ``seed``, or ``None`` (use torch's global RNG) for ``None``."""
    seed = check_seed(seed)
    if seed is None:
        return None
    return torch.Generator().manual_seed(seed)


def _distinct(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """``k`` distinct integers drawn uniformly from ``[0, n)``, in random order.

    For ``k << n`` it draws with replacement and de-duplicates (memory ``O(k)``, not ``O(n)``, so an
    8192x8192 layer needs no 67M-entry permutation); a uniform ``k``-subset of a uniform random set
    is a uniform ``k``-subset.
    """
    # on the CPU whatever torch's default device (set_default_device("cuda")): the same draws
    # from the CPU generator everywhere
    cpu = torch.device("cpu")
    if k * 4 >= n:
        return torch.randperm(n, generator=generator, device=cpu)[:k]
    picked = torch.empty(0, dtype=torch.int64, device=cpu)
    while picked.numel() < k:
        draw = torch.randint(0, n, (int(k * 1.2) + 16,), generator=generator, device=cpu)
        picked = torch.unique(torch.cat([picked, draw]))
    return picked[torch.randperm(picked.numel(), generator=generator, device=cpu)[:k]]


def support_fingerprint(indices: torch.Tensor) -> tuple[int, int, int] | None:
    """``(n, sum_i idx_i, sum_i (idx_i mod p)(i mod p + 1))`` with ``p = 65521`` of a support
    (``None`` on the meta device, which holds no values): what tells a support that dctps set
    from one averaged or overwritten since. Each term of the weighted sum is below 2^32, so
    the sum fits int64 for up to 2^31 entries; it depends on the order of the positions."""
    if indices.device.type == "meta":
        return None
    idx = indices.detach().reshape(-1).to(torch.int64)
    pos = torch.arange(idx.numel(), device=idx.device) % 65521 + 1
    return (idx.numel(), int(idx.sum()), int(((idx % 65521) * pos).sum()))


def draw_indices(
    shape: tuple[int, ...],
    nnz: int,
    generator: torch.Generator | None = None,
    per_filter: bool = False,
) -> torch.Tensor:
    """Sorted, distinct flat positions (int64) of ``nnz`` entries in a weight of ``shape``.

    Uniform over all ``prod(shape)`` positions, or with ``per_filter=True`` (EPF, Appendix A.2) an
    equal count per output filter (rows of the ``(out, fan_in)`` view), uniform within each filter.
    """
    numel = math.prod(shape)
    if not 0 <= nnz <= numel:
        raise DctpsError(f"nnz must be in [0, {numel}] for a weight of shape {shape}, got {nnz}")
    if not per_filter:
        return torch.sort(_distinct(numel, nnz, generator)).values
    fan = numel // shape[0]
    parts = [
        row * fan + _distinct(fan, int(c), generator)
        for row, c in enumerate(filter_counts(shape, nnz, generator).tolist())
        if c
    ]
    flat = torch.cat(parts) if parts else torch.empty(0, dtype=torch.int64, device="cpu")
    return torch.sort(flat).values


class _FusedWeight(torch.autograd.Function):
    """``W = alpha * D + S`` (flat) with a lean backward: no temporaries of ``D``'s size.

    ``alpha`` is a scalar or a per-output-channel tensor already viewed to broadcast over ``D``.
    """

    @staticmethod
    def forward(ctx, alpha, values, d, indices):  # type: ignore[override]
        w = torch.mul(d, alpha).reshape(-1)
        w.index_add_(0, indices, values)  # distinct indices: one plain add each
        ctx.save_for_backward(d, indices)
        ctx.alpha_shape = alpha.shape
        return w

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        d, indices = ctx.saved_tensors
        g = grad.reshape(-1)
        dalpha = None
        if ctx.needs_input_grad[0]:
            if math.prod(ctx.alpha_shape) == 1:
                dalpha = torch.dot(g, d.reshape(-1)).view(ctx.alpha_shape)
            else:
                rows = d.shape[0]
                dalpha = (g.view(rows, -1) * d.reshape(rows, -1)).sum(1).view(ctx.alpha_shape)
        dvalues = g[indices] if ctx.needs_input_grad[1] else None
        return dalpha, dvalues, None, None


def cpu_rebuild(
    d: torch.Tensor, alpha: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Flat ``alpha * D + S`` through :class:`_FusedWeight` (one pass over ``D`` each way)."""
    return _FusedWeight.apply(alpha, values, d, indices)


def op_rebuild(
    d: torch.Tensor, alpha: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
) -> torch.Tensor:
    """Flat ``alpha * D + S`` with built-in differentiable ops (accelerators: no Python backward).

    Per call: forward ``mul`` and ``index_add``; backward ``mul`` and ``sum`` (for ``alpha``) and
    ``index_select`` (for ``values``): the 5 operators per layer that :mod:`dctps.batched` removes.
    (An in-place ``index_add_`` would save the copy inside ``index_add``, but the flat product is
    a view, and autograd's in-place-on-view handling costs 6 more operators.)
    """
    return torch.mul(d, alpha).reshape(-1).index_add(0, indices, values)


def kernel_rebuild_usable(
    d: torch.Tensor, alpha: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
) -> bool:
    """Whether :meth:`DCTpSLayer.dense_weight` may rebuild ``W`` with one Triton kernel each way
    (:mod:`dctps.triton_rebuild`): on CUDA, with Triton installed, in eager autograd only. A
    ``torch.compile``/``torch.export``/``torch.jit`` trace and the ``torch.func`` transforms
    see the built-in operators of :func:`op_rebuild`, which they can trace and transform."""
    return (
        d.device.type == "cuda"
        and _triton.usable(d, alpha, indices, values)
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not _exporting()
        and not builtin_ops_only()
    )


def capturing(device: torch.device) -> bool:
    """Whether a CUDA graph is being captured on ``device``'s current stream."""
    if device.type != "cuda":
        return False
    with _triton.on_device(device):
        return torch.cuda.is_current_stream_capturing()


def _check_loaded_support(
    layer: DCTpSLayer, indices: Any, values: Any, prefix: str, who: str = "load_state_dict"
) -> None:
    """A :class:`DctpsError` for a state dict whose support cannot belong to ``layer``: indices
    that are not sorted, distinct flat positions in ``[0, prod(weight_shape))`` (a checkpoint of
    a larger layer, or a hand-made one), or a ``values`` of another length. Checked before
    anything is copied, so a refused load leaves the layer as it was; the fast path would read
    out of bounds with such indices. ``who``: the caller the message names."""
    numel = math.prod(layer.weight_shape)
    where = f"{who}: {prefix}indices"
    if (
        not isinstance(indices, torch.Tensor)
        or indices.dtype.is_floating_point
        or (indices.dtype.is_complex or indices.dtype == torch.bool)
    ):
        kind = indices.dtype if isinstance(indices, torch.Tensor) else type(indices).__name__
        raise DctpsError(f"{where} must be an integer tensor, got {kind}")
    if indices.dim() != 1:
        raise DctpsError(f"{where} must be 1-D, got shape {tuple(indices.shape)}")
    if isinstance(values, torch.Tensor) and values.numel() != indices.numel():
        raise DctpsError(
            f"{where} has {indices.numel()} entries but {prefix}values has {values.numel()}"
        )
    if indices.numel() == 0 or indices.device.type == "meta":
        return
    lo, hi = int(indices.min()), int(indices.max())
    if lo < 0 or hi >= numel:
        raise DctpsError(
            f"{where} holds positions {lo}..{hi}, outside this layer's weight of shape "
            f"{layer.weight_shape} ([0, {numel})): a checkpoint of a layer of another shape?"
        )
    if indices.numel() > 1 and not bool((indices.diff() > 0).all()):
        raise DctpsError(
            f"{where} must be sorted, distinct positions (as every dctps layer keeps them); "
            "sort them and their values together, without duplicates"
        )


def _build_basis(layer: DCTpSLayer, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``layer``'s basis ``D`` in float64, rounded once to ``dtype`` on ``device``."""
    # a D first needed under inference_mode must still serve later training
    with torch.inference_mode(False):
        return layer._basis().to(device=device, dtype=dtype)


def _exporting() -> bool:
    """Whether ``torch.export`` is tracing (``False`` where this torch cannot tell)."""
    probe = getattr(torch.compiler, "is_exporting", None)
    return bool(probe()) if probe is not None else False


def _allocates_garbage(fn: Any, device: torch.device) -> bool:
    """Whether ``fn``, a function that ``nn.Module._apply`` maps over tensors, returns
    uninitialised memory (``to_empty()``'s ``empty_like``) rather than the tensor's values
    (``.to()``, ``.cuda()``, ``.half()``: the same or a copy). Probed on a one-element integer
    tensor holding a fresh random value (a caching allocator may hand back an earlier probe's
    block, values and all). A :class:`DctpsError` for a ``fn`` that casts integer tensors
    (``Module.type(dtype)``): the support's indices would become floats."""
    value = int.from_bytes(os.urandom(7), "little")
    probe = torch.full((1,), value, dtype=torch.int64, device=device)
    out = fn(probe)
    if out is probe or not isinstance(out, torch.Tensor) or out.device.type == "meta":
        return False
    if out.dtype != torch.int64:
        raise DctpsError(
            f"this conversion casts integer tensors to {out.dtype} (Module.type does): a DCTpS "
            "layer's support indices must stay integers. Use .to(dtype), .half(), .float() or "
            ".double(), which convert only floating-point tensors"
        )
    return out.numel() != 1 or int(out.reshape(()).item()) != value


def builtin_ops_only() -> bool:
    """Whether a ``torch.func`` transform (``grad``, ``vmap``, ``jacrev``, ...), forward-mode AD
    or a ``torch.jit.trace`` is running: dctps's autograd Functions have no vmap or jvp rules,
    and a trace that records one cannot be saved (``torch.jit.save``: "Could not export Python
    function call"), so every DCTpS weight is then built with built-in differentiable ops (the
    dense path), which have them."""
    if _functorch_active() or torch.jit.is_tracing():
        return True
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform is running (tensors made now are its wrappers)."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _is_accelerator(device: torch.device) -> bool:
    """Where ``D`` is built ahead of use and never inside a compiled graph: any device but the
    CPU (and ``meta``). On an H100 with torch 2.11, Inductor fused the traced float64 CPU
    construction of ``D`` into a CUDA kernel and failed ("Pointer argument cannot be accessed
    from Triton"); on the CPU the traced construction is correct, and a compiled model
    recompiles once, without it, after its first call has cached ``D``."""
    return device.type not in ("cpu", "meta")


#: the fast paths' caches derived from the support (:mod:`dctps.fast`): the Linear/transform
#: path's plan and the conv factor path's
_SUPPORT_PLANS = ("_dctps_plan", "_dctps_cplan")
#: other caches a layer derives from its shape, offset and device (:meth:`__getstate__`)
_DERIVED = ("_dctps_offset", "_dctps_signs", "_dctps_factors", "_dctps_auto")


class DCTpSLayer(nn.Module):
    """Shared state and math of the DCTpS layers; subclasses set the weight shape and the op."""

    weight_shape: tuple[int, ...]
    indices: torch.Tensor
    _D: torch.Tensor | None
    _mode: str = "dense"
    offset: str = "dct"
    alpha_scope: str = "layer"

    def _init_sparse(
        self,
        nnz: int,
        alpha: float | str,
        seed: int | None,
        indices: torch.Tensor | None,
        per_filter: bool,
        train_alpha: bool,
        dtype: torch.dtype | None,
        device: Any,
        alpha_init: float | str | None = None,
        offset: str = "dct",
        offset_seed: int | None = None,
    ) -> None:
        if device is None:  # torch's default device (set_default_device, `with torch.device`)
            # for every tensor of the layer: given indices elsewhere are moved, not left apart
            device = torch.empty(0).device
        device = user_device(device, "device")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise DctpsError(
                f"dtype must be a floating torch.dtype (torch.float32, torch.float64, ...), got "
                f"{show(dtype)}"
            )
        for name, flag in (("train_alpha", train_alpha), ("per_filter", per_filter)):
            check_flag(flag, name)
        self.offset = _offsets.check_offset(offset)
        self.alpha_scope, init = _alpha_settings(alpha, alpha_init)
        offset_seed = check_seed(offset_seed, "offset_seed")
        if _offsets.needs_seed(self.offset):
            if offset_seed is None:
                seed = check_seed(seed)
                offset_seed = (
                    seed
                    if seed is not None
                    else int(torch.randint(0, 2**31 - 1, (), device="cpu").item())
                )
            buf = torch.tensor(int(offset_seed), dtype=torch.int64, device=device)
            self.register_buffer("offset_seed", buf)
        elif offset_seed is not None:
            raise DctpsError(f"offset {self.offset!r} is not random: it takes no offset_seed")
        numel = math.prod(self.weight_shape)
        n = as_int(nnz)
        if n is None or not 0 <= n <= numel:
            raise DctpsError(
                f"nnz must be an integer in [0, {numel}] for a weight of shape "
                f"{self.weight_shape}, got {nnz!r}"
            )
        nnz = n
        given = indices is not None
        if indices is None:
            indices = draw_indices(self.weight_shape, nnz, make_generator(seed), per_filter)
        else:
            indices = torch.as_tensor(indices, dtype=torch.int64).flatten()
            if indices.numel() != nnz:
                raise DctpsError(f"got {indices.numel()} indices for nnz={nnz}")
            indices = torch.sort(indices).values
            if nnz and (indices[0] < 0 or indices[-1] >= numel or (indices.diff() == 0).any()):
                raise DctpsError(f"indices must be distinct positions in [0, {numel})")
        factory = {"dtype": dtype or torch.get_default_dtype(), "device": device}
        # what reset_parameters() draws again (after to_empty(), as PyTorch's layers do)
        self._init_spec = _InitSpec(
            seed=seed,
            per_filter=per_filter,
            alpha=init,
            offset_seed=None if offset_seed is None else int(offset_seed),
            given_indices=given,
        )
        self.alpha = nn.Parameter(self._initial_alpha().to(**factory), requires_grad=train_alpha)
        self.values = nn.Parameter(torch.zeros(nnz, **factory))
        self.register_buffer("indices", indices.to(device))
        self.note_support()
        # a cache, not a buffer: a buffer that appears at the first forward changed the set of
        # buffers() under EMA tools that pair two copies' buffers (AveragedModel crashed), and
        # DDP would broadcast it at every forward
        self._D = None

    def note_support(self) -> None:
        """Record the current support (``indices``) as one dctps set: after a change of the
        support made outside dctps's own constructors, ``load_state_dict`` and RigL, call this,
        or ``dctps.save``/``dctps.to_dense`` refuse the layer as one whose ``indices`` were
        averaged (``AveragedModel(use_buffers=True)``) or overwritten. After a write through
        ``.data`` (``layer.indices.data.copy_(new)``) it is required: such a write bypasses the
        version counter that the ``fast``/``factor`` paths' cached plans are keyed on, and they
        would go on computing with the old support."""
        self.__dict__[SUPPORT_FINGERPRINT] = support_fingerprint(self.indices)
        self._see_support()
        # the fast paths' plans are keyed on the support's version counter, which an inference
        # tensor lacks (a layer built under inference_mode and changed in place there)
        for key in _SUPPORT_PLANS:
            self.__dict__.pop(key, None)

    def _initial_alpha(self) -> torch.Tensor:
        """The alpha this layer starts from (float64 CPU): the ``alpha_init`` number, or the
        Kaiming row scale (:func:`kaiming_alpha`), one entry per output row for ``'channel'``."""
        init, out = self._init_spec.alpha, self.weight_shape[0]
        # on the CPU whatever the ambient device: a model built under torch.device("meta")
        # (dctps train's budget check) read a meta row norm as a number and failed
        with torch.device("cpu"):
            if init == "kaiming":
                fan = math.prod(self.weight_shape) // out
                norms = _offsets.row_norms(self.offset, out, fan, self._init_spec.offset_seed)
                return kaiming_alpha(norms, self.alpha_scope)
            return torch.full((out,) if self.alpha_scope == "channel" else (), float(init))

    def _draw_bias(self) -> torch.Tensor:
        """A bias as PyTorch's Linear/Conv2d draw it, ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
        with ``values``' dtype and device. With a ``seed``, from a generator of its own (``seed``
        offset by a constant, apart from the support's stream), so a seeded layer leaves torch's
        global RNG where it was (:func:`dctps.sparsify`, which overwrites the bias with the
        dense layer's, must not change the data order and initialisations that follow it)."""
        bound = 1 / math.sqrt(math.prod(self.weight_shape[1:]))
        out, seed, ref = self.weight_shape[0], self._init_spec.seed, self.values
        if seed is None:  # from torch's global CPU generator on every device, as the support
            # (drawn on the device's own generator, a GPU layer left the CPU one where it was,
            # and the next layer's support differed from the same layer built on the CPU)
            b = torch.empty(out, dtype=ref.dtype, device="cpu").uniform_(-bound, bound)
            return b.to(ref.device)
        gen = torch.Generator().manual_seed((int(seed) + _BIAS_STREAM) % 2**63)
        b = torch.empty(out, dtype=torch.float64, device="cpu").uniform_(
            -bound, bound, generator=gen
        )
        return b.to(dtype=ref.dtype, device=ref.device)

    def _init_bias(self, bias: bool) -> None:
        if bias:
            self.bias: nn.Parameter | None = nn.Parameter(self._draw_bias())
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        """Initialise the layer again as its constructor did, in place: the same support (drawn
        again from the layer's ``seed``; a random draw without one), ``S = 0``, the initial
        alpha, a fresh bias, and a random offset's seed. As PyTorch's ``reset_parameters``, for a
        model materialised with ``to_empty()`` (e.g. ``dctps.sparsify`` of a model on the
        ``meta`` device), whose layers refuse to run until this or ``load_state_dict``."""
        spec = self.__dict__.get("_init_spec")
        if spec is None:
            raise DctpsError(
                "reset_parameters: this layer was pickled by an older dctps, which did not keep "
                "how it was initialised: build a new layer (or sparsify the dense model again)"
            )
        dev = self.values.device
        if spec.given_indices and self.__dict__.get(UNINITIALISED):
            raise DctpsError(
                "reset_parameters: this layer was built from explicit indices, which to_empty() "
                "did not keep: load a state dict instead (load_state_dict)"
            )
        with torch.no_grad():
            if not spec.given_indices:
                idx = draw_indices(
                    self.weight_shape, self.nnz, make_generator(spec.seed), spec.per_filter
                )
                self.indices = idx.to(dev)
                self.note_support()
            buf = self._buffers.get("offset_seed")
            if spec.offset_seed is not None and buf is not None:
                buf.fill_(spec.offset_seed)
            self.values.zero_()
            self.alpha.copy_(self._initial_alpha())
            if self.bias is not None:
                self.bias.copy_(self._draw_bias())
        self.__dict__.pop(UNINITIALISED, None)
        self._forget_derived()
        self._prebuild_basis()

    def __getstate__(self) -> dict[str, Any]:
        # a copy (deepcopy, pickle) is a layer of its own: not RigL's armed capture of this
        # layer's weight and forward (closures over this layer: the copy computed with the
        # original's weights) nor a batched weight of a forward in progress
        state = dict(super().__getstate__())  # nn.Module's drops a compiled call, for one
        for key in ("dense_weight", "forward", BATCHED_WEIGHT, KERNEL_STATE):
            state.pop(key, None)
        # nor what is rebuilt from the shape and the support where it is needed: the dense D,
        # the fast paths' plans and offsets, auto's timings (of this machine). A whole-module
        # torch.save(model) of a ResNet18 at 0.1% held 45 MB after one step, as much as the
        # dense network's, against 0.28 MB before it
        for key in (*_DERIVED, *_SUPPORT_PLANS, PREBUILT, BASIS_GRAD_MODE):
            state.pop(key, None)
        state["_D"] = None
        state[SUPPORT_SEEN] = self._support_dirty()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        dirty = state.get(SUPPORT_SEEN) is True
        super().__setstate__(state)
        self._see_support(dirty)  # the copy's own indices tensor, with the original's support
        self._prebuild_basis()  # on an accelerator, before a torch.compile traces the copy

    def _see_support(self, dirty: bool = False) -> None:
        """Record the ``indices`` tensor and its version counter now (:data:`SUPPORT_SEEN`);
        ``dirty``: a version that forces the next eval forward to check it."""
        idx = self._buffers.get("indices")
        if idx is None or idx.is_inference():  # an inference tensor has no version counter
            self.__dict__.pop(SUPPORT_SEEN, None)
        else:
            self.__dict__[SUPPORT_SEEN] = (id(idx), -1 if dirty else idx._version)

    def _support_dirty(self) -> bool:
        seen, idx = self.__dict__.get(SUPPORT_SEEN), self._buffers.get("indices")
        return (
            seen is not None
            and idx is not None
            and (
                seen[1] == -1
                or (seen[0] == id(idx) and not idx.is_inference() and idx._version != seen[1])
            )
        )

    def _check_support_seen(self) -> None:
        """Check ``indices`` after a write in place since :meth:`_see_support`: a
        :class:`DctpsError` where they are no support (unsorted, repeated or out-of-range
        positions), a warning where they are another support than the one dctps set. An
        ``AveragedModel(use_buffers=True)`` (torchvision's EMA recipe) averages the int64
        positions in floating point and truncates them: even a support that never moved came
        back with a third of its positions one lower, and the EMA model evaluated wrong
        accuracies without a word. Another valid support may be one set on purpose (a DDP
        broadcast of rank 0's model, values and all), hence a warning, once. Eager eval
        forwards only: one integer compare per call, and reads of the device only after a
        write."""
        if torch.compiler.is_compiling():  # a traced graph reads no version counter
            return
        idx: torch.Tensor = self._buffers["indices"]  # type: ignore[assignment]
        ident, version = self.__dict__[SUPPORT_SEEN]
        # the recorded tensor is no inference tensor (_see_support): it has a version counter
        if ident != id(idx) or idx._version == version:
            return  # another tensor in its place (functional_call) is the caller's to vouch for
        if _functorch_active() or torch.jit.is_tracing():
            return
        recorded = self.__dict__.get(SUPPORT_FINGERPRINT)
        if recorded is None or support_fingerprint(idx) == recorded:
            self._see_support()
            return
        layer = f"{type(self).__name__} with weight shape {tuple(self.weight_shape)}"
        cause = (
            "An AveragedModel(use_buffers=True) averages indices so: average with "
            "use_buffers=False (and torch.optim.swa_utils.update_bn for BatchNorm)"
        )
        numel = math.prod(self.weight_shape)
        if idx.numel() and (
            bool(idx.min() < 0)
            or bool(idx.max() >= numel)
            or (idx.numel() > 1 and not bool((idx.diff() > 0).all()))
        ):
            raise DctpsError(
                f"{layer}: its support (indices) was written in place and holds positions "
                f"that are not sorted, distinct ones in [0, {numel}). {cause}"
            )
        self._see_support()  # one warning per write
        warn_at_caller(
            f"{layer}: its support (indices) was written in place since dctps set it, and its "
            f"values may belong to other positions. {cause}; after a change of your own (a DDP "
            "broadcast of rank 0's model), call dctps.note_supports(model)"
        )

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this first; TorchScript cannot compile the layer's Python (its
        # own message is an unrelated "Unknown type annotation")
        raise DctpsError(
            f"torch.jit.script cannot compile a {type(self).__name__}: script "
            "dctps.to_dense(model) for inference, or use torch.jit.trace, torch.export or "
            "torch.compile, which take the layer as it is"
        )

    def _check_initialised(self) -> None:
        """A :class:`DctpsError` for a layer that ``to_empty()`` left without a support."""
        if UNINITIALISED in self.__dict__:
            raise DctpsError(
                f"{type(self).__name__} with weight shape {tuple(self.weight_shape)} was "
                "materialised with to_empty(): its support (indices) is uninitialised memory. Call "
                "reset_parameters() on it (or on the model's DCTpS layers) or load a state dict "
                "first"
            )

    @property
    def offset_seed_value(self) -> int | None:
        """The seed of a random offset (``None`` for ``dct`` and ``hadamard``)."""
        buf = getattr(self, "offset_seed", None)
        return None if buf is None else int(buf)

    @property
    def n_alphas(self) -> int:
        """Number of offset scales: 1 (``alpha='layer'``) or the output channels (``'channel'``)."""
        return self.alpha.numel()

    def alpha_view(self) -> torch.Tensor:
        """``alpha`` shaped to broadcast over ``weight_shape`` (a 0-d tensor for one scalar)."""
        a = self.alpha
        if a.dim() == 0:
            return a
        return a.view(-1, *([1] * (len(self.weight_shape) - 1)))

    def offset_matrix(self) -> torch.Tensor:
        """The ``(out, fan_in)`` float64 offset matrix (:func:`dctps.offsets.matrix`)."""
        out = self.weight_shape[0]
        fan = math.prod(self.weight_shape) // out
        return _offsets.matrix(self.offset, out, fan, self.offset_seed_value)

    def _basis(self) -> torch.Tensor:
        """The fixed offset matrix in ``weight_shape``, computed in float64 (cast by the caller)."""
        raise NotImplementedError

    def _path_available(self, path: str) -> bool:
        """Whether this layer's offset has the forward ``path``."""
        if path == "dense":
            return True
        if path == "factor" and len(self.weight_shape) == 4:
            return self.offset == "dct"
        return _offsets.has_fast_path(self.offset)

    def _check_path(self, mode: str) -> str:
        if mode in ("fast", "factor") and not self._path_available(mode):
            if not _offsets.has_fast_path(self.offset):
                raise DctpsError(
                    f"offset {self.offset!r} has no fast path: use mode='dense' (or 'auto', "
                    "which takes the dense path for it)"
                )
            raise DctpsError(
                f"offset {self.offset!r} has no factor path (only 'dct' factorises): use "
                "mode='fast', 'dense' or 'auto'"
            )
        return mode

    @property
    def D(self) -> torch.Tensor:
        """The fixed basis ``D`` (``weight_shape``), built on first use and cached (an attribute,
        not a buffer: no ``state_dict`` entry, no change in ``buffers()``).

        Never built by ``mode='fast'``; rebuilt if the cached copy's device/dtype differ from
        ``alpha``'s, and dropped by a ``.to()`` / ``.double()`` / ``.half()`` that changes its
        dtype (see :meth:`_apply`), so it is always computed in float64 and rounded once to the
        layer's current dtype. On an accelerator a ``'dense'`` or ``'auto'`` layer builds it when
        created or moved there (see :meth:`_prebuild_basis`), so a ``torch.compile`` finds it
        cached; a ``D`` still missing under ``torch.compile`` is built eagerly there, outside the
        graph (a graph break, which ``fullgraph=True`` refuses).
        """
        d = self._D
        a = self.alpha
        if isinstance(a, torch.fx.Proxy):
            raise DctpsError(
                "torch.fx.symbolic_trace cannot trace into a DCTpS layer (its forward branches "
                "on its mode and input); trace dctps.to_dense(model), a plain model with the "
                "same weights, or keep DCTpS layers as leaf modules (a Tracer whose "
                "is_leaf_module returns True for dctps.layers.DCTpSLayer)"
            )
        if (
            d is None
            or d.device != a.device
            or d.dtype != a.dtype
            # a D that a compiled graph built under inference_mode (the graph does not honour
            # _build_basis's inference_mode(False)) cannot serve training; checked eagerly (a
            # graph cannot ask) and by train()
            or (
                not torch.compiler.is_compiling()
                and d.is_inference()
                and not torch.is_inference_mode_enabled()
            )
            # a D a compiled graph built without grad mode (inference_mode among them) may be an
            # inference tensor: a graph with grad mode on builds its own (an eval model
            # validated under inference_mode, then fine-tuned in eval mode, has no train() call
            # to drop it)
            or (
                torch.compiler.is_compiling()
                and torch.is_grad_enabled()
                and self.__dict__.get(BASIS_GRAD_MODE) is False
            )
        ):
            build = _build_basis
            if torch.compiler.is_compiling() and (
                _is_accelerator(a.device)
                or not _compat.COMPILE_BUILDS_BASIS
                # a random offset draws from a torch.Generator and Hadamard's size is data
                # dependent: neither traces (a combinations review: fullgraph failed with
                # torch's own error, and without it D's frame recompiled to dynamo's limit)
                or self.offset != "dct"
            ):
                # eager, outside the graph (a graph break); wrapped here, not at import, since
                # decorating imports torch._dynamo (a second of start-up for every command)
                build = torch.compiler.disable(_build_basis)
            d = build(self, a.device, a.dtype)
            # torch.export traces with fake tensors, and a torch.func transform wraps what it
            # makes (a cached wrapper outlived its transform: Triton then could not read it);
            # a FakeTensorMode (a memory estimator's pass) makes a FakeTensor, which every
            # later eager call would have returned as its output
            if not _exporting() and (
                torch.compiler.is_compiling()
                or (not _functorch_active() and type(d) is torch.Tensor)
            ):
                self._D = d
                # only a graph's own build can be an inference tensor (an eager build leaves
                # inference_mode): an eager no_grad build rebuilt in the next compiled graph
                # broke it (fullgraph failed for offsets built outside graphs)
                self.__dict__[BASIS_GRAD_MODE] = (
                    torch.is_grad_enabled() or not torch.compiler.is_compiling()
                )
        return d

    def train(self, mode: bool = True) -> DCTpSLayer:
        d = self._D
        if mode and d is not None and d.is_inference():  # see D: a compiled inference call's
            self._drop_basis()
            self._prebuild_basis()  # on an accelerator, at once, as after a move there
        return super().train(mode)

    def _drop_basis(self) -> None:
        """Free the cached ``D`` (it is rebuilt from the shape when needed)."""
        self._D = None
        self.__dict__.pop(PREBUILT, None)

    def _forget_derived(self) -> None:
        """Drop what was derived from the support and the offset (``D``, the fast path's plans),
        after either changed (a state-dict load, :meth:`reset_parameters`)."""
        self._drop_basis()
        for key in (*_SUPPORT_PLANS, "_dctps_offset", "_dctps_signs"):
            self.__dict__.pop(key, None)

    def _prebuild_basis(self) -> None:
        """Build ``D`` now if this layer is on an accelerator in a mode that uses it.

        Its first forward would build it anyway; built here, at creation and after every
        ``.to()``, it is cached before a ``torch.compile`` traces the model, which then needs no
        graph break. Random offsets (``offset_seed``) wait for their first use: ``to_empty``
        leaves their seed uninitialised until a state dict is loaded. ``mode='auto'`` frees a
        prebuilt ``D`` when it picks a path without it (:func:`dctps.fast.choose`).
        """
        a = self._parameters.get("alpha")
        if (
            self._D is None
            and self._mode in ("dense", "auto")
            and a is not None
            and _is_accelerator(a.device)
            and not _offsets.needs_seed(self.offset)
        ):
            self._D = _build_basis(self, a.device, a.dtype)
            self.__dict__[PREBUILT] = True

    def _apply(self, fn: Any, recurse: bool = True) -> Any:  # type: ignore[override]
        dirty = self._support_dirty()
        was_meta = self.indices.device.type == "meta"
        # probed first: a cast of integer tensors is refused before it touches the indices
        garbage = not was_meta and _allocates_garbage(fn, self.indices.device)
        before = self._parameters.get("alpha")
        where = None if before is None else (before.device, before.dtype)
        res = super()._apply(fn, recurse)
        after = self._parameters.get("alpha")
        if after is None or where != (after.device, after.dtype):
            # the kernels' state is per device and dtype; kept otherwise, since a captured
            # CUDA graph reads its bounds (a no-op .to() must not free them)
            self.__dict__.pop(KERNEL_STATE, None)
        if (was_meta and self.indices.device.type != "meta") or garbage:
            # only to_empty() leaves meta (a .to() refuses) or hands back uninitialised
            # memory: the support is garbage now, and so is a cached D
            self.__dict__[UNINITIALISED] = True
            self._drop_basis()
        d, a = self._D, self._parameters.get("alpha")
        if d is not None and (a is None or d.device != a.device or d.dtype != a.dtype):
            # moved or cast: rebuilt from the shape where it is next needed (a converted D
            # would carry the old dtype's rounding: .half().float() keeps fp16's)
            self._D = None
        if SUPPORT_SEEN in self.__dict__:
            self._see_support(dirty)  # a moved support is a new tensor, with the same positions
        self._prebuild_basis()
        return res

    @property
    def basis_built(self) -> bool:
        """Whether ``D`` is currently materialised (stays ``False`` under ``mode='fast'``)."""
        return self._D is not None

    @property
    def mode(self) -> str:
        """Forward path: ``'dense'`` (one op on the materialised ``W``, default), ``'fast'``
        (O(n log n) DCT + sparse product, no ``D``), ``'factor'`` (convs: a complex 1x1 conv, a
        depthwise conv and a sparse shifted sum, no ``D``; Linear layers treat it as ``'fast'``),
        or ``'auto'`` (the fastest, measured once per input signature); see :mod:`dctps.fast`.
        All compute the same function. Inside ``torch.compile``, a ``torch.func`` transform
        (``grad``, ``vmap``, ``jacrev``) or forward-mode AD every mode takes the dense path.

        ``'auto'`` measures with timed forward (and backward) passes inside the first call of a
        signature, so some calls take the dense path without measuring (and without caching
        that): under ``torch.autocast`` on the input's device (the paths would differ in output
        precision), on an empty input (the fast path if it needs no ``D``), and while
        saved-tensor hooks are active (non-reentrant ``torch.utils.checkpoint``,
        ``save_on_cpu``: the measuring passes would run under the user's hooks, and checkpoint's
        recompute must see the same saved tensors). Under autocast, and for a complex layer (the
        transforms are real), the dense path is always taken; in the other two cases a
        signature measured before is reused. A torch that does not expose its saved-tensor
        hooks (2.3 to 2.5 do not) cannot tell: there run one call
        outside the checkpoint first, or use ``'dense'`` / ``'fast'`` inside it.
        """
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = self._check_path(check_mode(value))
        if self._mode in ("fast", "factor"):
            self._drop_basis()
        else:
            self._prebuild_basis()

    #: forward paths of this layer type: name -> method (see :mod:`dctps.fast`)
    _PATHS: dict[str, str] = {"dense": "_dense_forward", "fast": "_fast_forward"}

    def _path(self, x: torch.Tensor) -> str:
        """The path this call takes: ``'dense'`` inside ``torch.compile``, else by ``mode``
        (``'auto'`` asks :func:`dctps.fast.choose`, which measures once per input signature;
        see :attr:`mode` for the calls it does not measure)."""
        mode = self._mode
        if (
            mode == "dense"
            or torch.compiler.is_compiling()
            or torch.jit.is_tracing()  # a trace would keep the fast path's support as constants
            or builtin_ops_only()
        ):
            return "dense"
        if mode == "auto":
            # complex layers: the transforms are real; under autocast the paths differ in precision
            if autocast_dtype(x) is not None or self.alpha.dtype.is_complex:
                return "dense"
            # per-layer memo of the global decision (dctps.fast.choose): one dict lookup per call;
            # nnz is in it because a load_state_dict may resize the support (the last entry must
            # stay the generation: dctps.batched reads it)
            key = (x.shape, x.dtype, x.device, torch.is_grad_enabled(), self.nnz, auto_generation())
            memo = self.__dict__.setdefault("_dctps_auto", {})
            path = memo.get(key)
            if path is None:
                if x.numel() == 0:  # nothing to time; the fast path needs no D
                    fast = self._path_available("fast") and not self.basis_built
                    return "fast" if fast else "dense"
                if _saved_tensor_hooks_active():
                    return "dense"
                self._check_input(x)
                paths = {
                    k: getattr(self, v) for k, v in self._PATHS.items() if self._path_available(k)
                }
                if len(memo) >= AUTO_MEMO_SIZE:  # inputs of ever new shapes (sequence lengths)
                    memo.clear()
                path = memo[key] = choose(self, x, paths)
            return path
        return mode if mode in self._PATHS else "fast"

    def _check_input(self, x: torch.Tensor) -> None:
        """A :class:`DctpsError` for an input of the wrong shape (before ``'auto'`` times it)."""
        raise NotImplementedError

    def _with_weight(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The layer's op (``F.linear`` / ``F.conv2d``) with the materialised weight ``w``."""
        raise NotImplementedError

    def _dense_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._with_weight(x, self.dense_weight())

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if UNINITIALISED in self.__dict__:
            self._check_initialised()
        if not self.training and SUPPORT_SEEN in self.__dict__:
            self._check_support_seen()
        if BATCHED_WEIGHT in self.__dict__:
            # dctps.batched built this forward's weight (only dense-path layers get one);
            # dense_weight() returns it, through RigL's capture when that is armed
            return self._with_weight(x, self.dense_weight())
        return getattr(self, self._PATHS[self._path(x)])(x)

    @property
    def nnz(self) -> int:
        """Number of trainable non-zeros of ``S``."""
        return self.values.numel()

    @property
    def density(self) -> float:
        """``nnz / prod(weight_shape)``."""
        return self.nnz / math.prod(self.weight_shape)

    def sparse_weight(self) -> torch.Tensor:
        """``S`` as a dense tensor of ``weight_shape`` (differentiable in ``values``)."""
        flat = self.values.new_zeros(math.prod(self.weight_shape))
        return flat.index_put((self.indices,), self.values).view(self.weight_shape)

    def dense_weight(self) -> torch.Tensor:
        """``W = alpha * D + S`` as a dense tensor of ``weight_shape`` (differentiable).

        On CPU one pass over ``D`` forward (multiply, then add the non-zeros in place) and one
        backward (``d alpha = <dW, D>``, ``d values = dW[indices]``), via :class:`_FusedWeight`
        (for a ``D`` of :data:`FUSED_REBUILD_MIN` elements or more); on accelerators and for
        smaller CPU layers, where the passes are cheap and kernel launches and Python are not, the
        same with built-in differentiable ops. On CUDA with Triton, one kernel each way
        (:mod:`dctps.triton_rebuild`) while a CUDA graph is captured; the first eager call
        compiles them. Inside the forward of a model under
        :func:`dctps.batched.batch_rebuild`, the weight that hook computed for this layer.
        """
        w = self.__dict__.get(BATCHED_WEIGHT)
        if w is not None:
            return w
        if UNINITIALISED in self.__dict__:  # also for readers of .weight (attention, to_dense)
            self._check_initialised()
        if not self.training and SUPPORT_SEEN in self.__dict__:
            # an attention (and a TransformerEncoderLayer's fast path) reads it, no forward
            self._check_support_seen()
        d = self.D
        alpha = self.alpha_view()
        if kernel_rebuild_usable(d, alpha, self.indices, self.values):
            # while a CUDA graph is captured, the Triton kernels (replays spend no host time per
            # operator, and the kernels take less GPU time than the operators); eager calls
            # take the operators, which cost less host time, the first after compiling and
            # loading the kernels on scratch outputs, which a capture could not
            state = self.__dict__.get(KERNEL_STATE)
            if state is None:
                layout = _triton.dct_layout(self.weight_shape) if self.offset == "dct" else None
                state = self.__dict__[KERNEL_STATE] = _triton.workspace(layout)
            if capturing(d.device):
                w = _triton.rebuild(d, alpha, self.indices, self.values, state)
                return w.view(self.weight_shape)
            if not state.warm:
                _triton.warm_up(d, alpha, self.indices, self.values, state)
        # the same ops under CUDA-graph capture: a capture must run what its warm-up ran (the
        # fused backward's cuBLAS dot, first called inside a capture, failed it on an H100)
        # the size from weight_shape (Python ints): a jit trace records d.numel()
        fused = d.device.type == "cpu" and math.prod(self.weight_shape) >= FUSED_REBUILD_MIN
        rebuild = cpu_rebuild if fused and not builtin_ops_only() else op_rebuild
        return rebuild(d, alpha, self.indices, self.values).view(self.weight_shape)

    @property
    def weight(self) -> torch.Tensor:
        """The materialised ``W``, so code that reads ``module.weight`` (e.g. attention) works."""
        return self.dense_weight()

    @weight.setter
    def weight(self, value: Any) -> None:
        _refuse_weight(self, "weight")

    def register_parameter(self, name: str, param: nn.Parameter | None) -> None:
        # tying (`a.weight = b.weight`), fusing a BatchNorm, torch.nn.utils.prune and
        # parametrizations of `weight` all register a Parameter under these names
        if name in ("weight", "weight_orig"):
            _refuse_weight(self, name)
        super().register_parameter(name, param)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[override]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # The shape rides in the state dict's per-module metadata (beside torch's "version"),
        # not as a tensor: no new key for strict loads, safetensors or old checkpoints, and
        # torch.save/torch.load(weights_only=True) keep it. A load then refuses the support of
        # a layer of another shape, whose flat positions may all fit this one.
        meta = getattr(destination, "_metadata", None)
        if meta is not None and prefix[:-1] in meta:
            meta[prefix[:-1]][SHAPE_METADATA] = list(self.weight_shape)
            # the values of S were trained beside this offset: beside another they are wrong
            meta[prefix[:-1]][OFFSET_METADATA] = self.offset

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):  # type: ignore[override]
        # values/indices may have another length than this layer's freshly drawn support
        # (a checkpoint is the truth): resize before the default loader copies into them.
        key_v, key_i = prefix + "values", prefix + "indices"
        saved_shape = (local_metadata or {}).get(SHAPE_METADATA)
        if key_i in state_dict and saved_shape is not None:
            if tuple(saved_shape) != tuple(self.weight_shape):
                name = repr(prefix[:-1]) if prefix else "the layer"
                raise DctpsError(
                    f"load_state_dict: {name} was saved from a layer with weight shape "
                    f"{tuple(saved_shape)}, but this layer's is {tuple(self.weight_shape)}; "
                    "load it into a layer of the saved shape"
                )
        saved_offset = (local_metadata or {}).get(OFFSET_METADATA)
        if key_i in state_dict and saved_offset is not None and saved_offset != self.offset:
            name = repr(prefix[:-1]) if prefix else "the layer"
            raise DctpsError(
                f"load_state_dict: {name} was saved from a layer with offset {saved_offset!r}, "
                f"but this layer's is {self.offset!r}; its values were trained beside the saved "
                f"offset: build the layer with offset={saved_offset!r}"
            )
        if key_i in state_dict:
            _check_loaded_support(self, state_dict[key_i], state_dict.get(key_v), prefix)
        if key_v in state_dict and key_i in state_dict:
            n = state_dict[key_v].numel()
            if n != self.values.numel():
                # resized in place: an optimizer built before the load keeps this Parameter,
                # and its old per-parameter state fails at the next step with torch's bare
                # size mismatch. A gradient says this model trained here: say so now.
                if self.values.grad is not None:
                    warn_at_caller(
                        "load_state_dict resized the values of "
                        f"{'layer ' + repr(prefix[:-1]) if prefix else 'a layer'} from "
                        f"{self.values.numel()} to {n} non-zeros (the loaded "
                        "support): an optimizer built on this model before holds state of the "
                        "old size, and its next step fails with a size mismatch; load the "
                        "optimizer's state dict saved with these weights, or build a new one"
                    )
                with torch.no_grad():
                    self.values.data = self.values.new_zeros(n)
                self.values.grad = None  # of the old size: the next backward would fail
                self.indices = torch.zeros(n, dtype=torch.int64, device=self.indices.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)
        if key_i in state_dict:
            self.__dict__.pop(UNINITIALISED, None)
            self.note_support()
        buf = self._buffers.get("offset_seed")
        spec = self.__dict__.get("_init_spec")  # absent in a layer pickled by an older dctps
        if (
            spec is not None
            and prefix + "offset_seed" in state_dict
            and buf is not None
            and buf.device.type != "meta"
        ):
            # the loaded offset is this layer's now (dctps.load builds with a placeholder seed)
            self._init_spec = dataclasses.replace(spec, offset_seed=int(buf))
        # a loaded offset_seed may differ from the one D and the fast-path plans were built for
        self._forget_derived()


def _refuse_weight(layer: DCTpSLayer, name: str) -> NoReturn:
    raise DctpsError(
        f"cannot set {type(layer).__name__}.{name}: its weight is computed (W = alpha*D + S) "
        "from its offset, values and alpha, so it cannot be assigned, tied, fused, "
        "reparametrised or pruned as a weight. Tie, fuse or prune before dctps.sparsify (and "
        "exclude tied layers), prune its 'values', or make it plain with dctps.to_dense(model)"
    )


class DCTpSLinear(DCTpSLayer):
    """A Linear layer with ``W = alpha * D + S``, ``D = C_N[:out, :in]``, ``N = max(in, out)``.

    Args:
        in_features, out_features: as ``nn.Linear``; the weight has shape ``(out, in)``.
        nnz: number of trainable entries of ``S`` (distinct, uniform at random).
        bias: add a trainable bias (initialised as ``nn.Linear`` does).
        alpha: ``'layer'`` (one trainable scalar, the paper) or ``'channel'`` (one per output
            channel, shape ``(out,)``); a number is accepted as the initial value of a per-layer
            alpha (the older signature).
        seed: seed for the support (and of a random offset); ``None`` uses torch's global RNG.
        indices: explicit flat support positions (overrides ``seed``).
        per_filter: draw the same count per output neuron (EPF).
        train_alpha: ``False`` fixes ``alpha`` (Appendix A.4).
        mode: ``'dense'`` (default), ``'fast'`` or ``'auto'``; see :attr:`DCTpSLayer.mode`.
        alpha_init: initial alpha, a number (default 1.0) or ``'kaiming'`` (see
            :func:`kaiming_alpha`).
        offset: the fixed matrix ``D`` (:mod:`dctps.offsets`), default ``'dct'``.
        offset_seed: seed of a random offset (default: ``seed``, or drawn from torch's RNG).

    Shapes: ``x (..., in) -> (..., out)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        nnz: int,
        bias: bool = True,
        alpha: float | str = "layer",
        seed: int | None = None,
        *,
        indices: torch.Tensor | None = None,
        per_filter: bool = False,
        train_alpha: bool = True,
        mode: str = "dense",
        alpha_init: float | str | None = None,
        offset: str = "dct",
        offset_seed: int | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        mode = check_mode(mode)
        in_features = _positive_int(in_features, "in_features")
        out_features = _positive_int(out_features, "out_features")
        self.in_features, self.out_features = in_features, out_features
        self.weight_shape = (out_features, in_features)
        self._init_sparse(
            nnz, alpha, seed, indices, per_filter, train_alpha, dtype, device,
            alpha_init, offset, offset_seed,
        )  # fmt: skip
        self._mode = self._check_path(mode)
        self._prebuild_basis()
        self._init_bias(bias)

    def _basis(self) -> torch.Tensor:
        return self.offset_matrix()

    def _with_weight(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w, self.bias)

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_linear(self, x)

    def _check_input(self, x: torch.Tensor) -> None:
        check_linear_input(self, x)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"nnz={self.nnz}, density={self.density:.4g}, bias={self.bias is not None}, "
            f"mode={self._mode!r}{_extra(self)}"
        )


def _saved_tensor_hooks_active() -> bool:
    """Whether saved-tensor hooks (non-reentrant ``torch.utils.checkpoint``, ``save_on_cpu``) are
    active on this thread; ``False`` where this torch cannot tell."""
    top = getattr(torch._C._autograd, "_top_saved_tensors_default_hooks", None)
    if top is None:
        return False
    try:
        return top(False) is not None
    except (RuntimeError, TypeError):
        return False


def _extra(layer: DCTpSLayer) -> str:
    out = ""
    if layer.offset != "dct":
        out += f", offset={layer.offset!r}"
    if layer.alpha_scope != "layer":
        out += f", alpha={layer.alpha_scope!r}"
    return out


def _positive_int(v: object, name: str) -> int:
    """``v`` as an int if it is an integer >= 1 (Python, numpy or 0-d torch), else a
    :class:`DctpsError` naming it."""
    n = as_int(v)
    if n is None or n < 1:
        raise DctpsError(f"{name} must be a positive integer, got {show(v)}")
    return n


def _pair(v: object, name: str, low: int) -> tuple[int, int]:
    """``v`` (an int or a pair of ints, each ``>= low``) as a pair, as ``nn.Conv2d`` takes it, or a
    :class:`DctpsError` naming the bad value (a longer tuple is not silently cut to two)."""
    if isinstance(v, (tuple, list, torch.Size)):
        h, w = (as_int(v[0]), as_int(v[1])) if len(v) == 2 else (None, None)
    else:
        h = w = as_int(v)
    if h is None or w is None or h < low or w < low:
        raise DctpsError(
            f"{name} must be an integer >= {low} or a pair of them (height, width), got {v!r}"
        )
    return h, w


#: the padding strings ``nn.Conv2d`` accepts
_PADDING_STRINGS = ("same", "valid")


class DCTpSConv2d(DCTpSLayer):
    """A Conv2d with ``W = alpha * D + S``, ``D`` from :func:`dctps.dct.conv_dct_basis`.

    ``D[o, c, h, w] = C_N[o, (h*kw + w)*C + c]`` with ``C = in/groups``, ``N = max(out, kh*kw*C)``:
    each output channel computes one DCT frequency of the ``(h, w, c)``-flattened input patch
    (Appendix B). Grouped and depthwise convs use the same rule on the weight's ``(out, fan_in)``
    matrix, so a depthwise filter ``o`` gets the first ``kh*kw`` entries of DCT frequency ``o``
    (the authors' choice); see :func:`dctps.dct.conv_dct_basis`.

    Args are those of ``nn.Conv2d`` (``padding_mode='zeros'`` only) plus ``nnz``, ``alpha``,
    ``seed``, ``indices``, ``per_filter``, ``train_alpha``, ``mode``, ``alpha_init``, ``offset``
    and ``offset_seed`` as in :class:`DCTpSLinear`; an offset is laid out over the
    ``(h, w, c)``-flattened patch exactly as the DCT.
    Shapes: ``x (B, in, H, W) -> (B, out, H', W')`` as ``nn.Conv2d``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        *,
        nnz: int,
        alpha: float | str = "layer",
        seed: int | None = None,
        indices: torch.Tensor | None = None,
        per_filter: bool = False,
        train_alpha: bool = True,
        mode: str = "dense",
        alpha_init: float | str | None = None,
        offset: str = "dct",
        offset_seed: int | None = None,
        device: Any = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        mode = check_mode(mode)
        in_channels = _positive_int(in_channels, "in_channels")
        out_channels = _positive_int(out_channels, "out_channels")
        groups = _positive_int(groups, "groups")
        if padding_mode != "zeros":
            raise DctpsError(
                f"padding_mode={padding_mode!r}: DCTpS convs support only 'zeros' (pad the input "
                "with F.pad first for another mode)"
            )
        if in_channels % groups or out_channels % groups:
            raise DctpsError(
                f"in_channels={in_channels} and out_channels={out_channels} must be divisible "
                f"by groups={groups}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.dilation = _pair(dilation, "dilation", 1)
        self.padding: tuple[int, int] | str
        if isinstance(padding, str):
            if padding not in _PADDING_STRINGS:
                raise unknown_name("padding", padding, _PADDING_STRINGS)
            if padding == "same" and self.stride != (1, 1):
                raise DctpsError(
                    f"padding='same' needs stride 1 (as in nn.Conv2d), got stride={stride!r}: "
                    "give an explicit padding or padding='valid'"
                )
            self.padding = padding
        else:
            self.padding = _pair(padding, "padding", 0)
        self.groups = groups
        # nn.Conv2d's other attributes, for code that reads them off any conv (a review)
        self.padding_mode, self.transposed, self.output_padding = "zeros", False, (0, 0)
        self.weight_shape = (out_channels, in_channels // groups, *self.kernel_size)
        self._init_sparse(
            nnz, alpha, seed, indices, per_filter, train_alpha, dtype, device,
            alpha_init, offset, offset_seed,
        )  # fmt: skip
        self._mode = self._check_path(mode)
        self._prebuild_basis()
        self._init_bias(bias)

    def _basis(self) -> torch.Tensor:
        # (out, fan) over the (h, w, c) patch -> PyTorch's (out, c, h, w), as conv_dct_basis
        out, cg, kh, kw = self.weight_shape
        m = self.offset_matrix()
        return m.reshape(out, kh, kw, cg).permute(0, 3, 1, 2).contiguous()

    def _with_weight(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)

    _PATHS = {"dense": "_dense_forward", "fast": "_fast_forward", "factor": "_factor_forward"}

    def _fast_forward(self, x: torch.Tensor) -> torch.Tensor:
        return fast_conv2d(self, x)

    def _check_input(self, x: torch.Tensor) -> None:
        check_conv_input(self, x)

    def _factor_forward(self, x: torch.Tensor) -> torch.Tensor:
        return factor_conv2d(self, x)

    def extra_repr(self) -> str:
        dilation = f"dilation={self.dilation}, " if self.dilation != (1, 1) else ""
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, {dilation}groups={self.groups}, "
            f"nnz={self.nnz}, density={self.density:.4g}, bias={self.bias is not None}, "
            f"mode={self._mode!r}{_extra(self)}"
        )
