"""Fast DCTpS forward/backward: ``y = alpha * D x + S x`` without ever forming ``D`` or ``W``.

A DCTpS weight ``W = alpha * D + S`` (``D`` = truncated orthonormal DCT-II, ``S`` sparse) can be
applied in ``O(N log N + nnz)`` per sample instead of ``O(out * in)``: ``D x`` is a DCT of ``x``
zero-padded to ``N = max(in, out)`` and truncated to ``out`` (one real FFT, as
:func:`dctps.dct.dct`), and ``S x`` is a sparse product on the layer's ``values`` / ``indices``.

Forward modes per layer (``layer.mode``, or :func:`set_mode` for a whole model):

``'dense'``
    Materialise ``W`` and run one ``F.linear`` / ``F.conv2d`` (the default; the only path taken
    inside ``torch.compile``).
``'fast'``
    The transform path, :class:`FastDCTpSFunction`. Linear: on ``x``. Conv2d: on the
    ``F.unfold`` patches, whose rows are gathered into ``(h, w, c)`` patch order (the order of
    :func:`dctps.dct.conv_dct_basis`) and Makhoul's FFT order in one pass. No tensor of
    ``out * in`` elements is built, forward or backward, and ``D`` is never built.
``'factor'`` (convs)
    :func:`factor_conv2d`: ``D`` factorises into a complex 1x1 conv and a depthwise conv (see the
    comment above it); ``S`` runs as :class:`SparseConv2dFunction`. No ``D``, no unfold.
``'auto'``
    Per input signature (weight shape, nnz, stride, padding, dilation, groups, input shape with
    its batch size, or a Linear's row count, rounded up to a power of two (:func:`size_bucket`),
    device, dtype, grad mode) the paths that :func:`candidates` (a cost model) allows are timed
    once on the first call (:func:`choose`) and the fastest is kept. All paths compute the same
    function, so ``auto`` changes speed only (outputs agree to float rounding).

Other offsets (:mod:`dctps.offsets`) reuse the same machinery: ``dct_permuted`` is a different
gather into the FFT buffer (free), ``dct_signflip`` multiplies the input rows (and, for ``S``, the
values) by the seeded signs first (``O(n)``), ``hadamard`` replaces the FFT by a fast
Walsh-Hadamard transform on a buffer of the next power of two (``O(M log M)``); ``gaussian`` has no
fast path, and only ``dct`` has the ``'factor'`` path. A per-channel ``alpha`` (``alpha='channel'``)
scales the transform's output rows; its gradient is ``sum(g * D x)`` per row.

The hand-written backward of :class:`FastDCTpSFunction` uses the DCT-III (the transpose, as
:func:`dctps.dct.dct_t`) for ``dx = alpha * D^T g + S^T g``; ``d alpha = <g, D x> = <D^T g, x>``
reuses the ``D^T g`` computed for ``dx`` (so ``D x`` need not be stored); ``d values[j] =
sum_b g[b, row_j] * x[b, col_j]`` is a sampled product on the support only.

Precision: a half-precision layer's fast paths compute in float32 (the FFT and sparse kernels
need it) and return the layer's dtype; under ``torch.autocast`` they compute in float32 and return
autocast's dtype, as ``F.linear`` / ``F.conv2d`` would (``'auto'`` takes the dense path there). An
input of another dtype, or of the wrong shape, is a :class:`~dctps.errors.DctpsError`, as the dense
path would refuse it. Second derivatives (``create_graph=True``) are exact: the custom backward
then differentiates a recompute of the forward from the saved input.

Sparse products: for Linear layers with ``nnz >= N/4``, ``torch.sparse`` CSR matrices (MKL on
CPU, cuSPARSE on CUDA) built per call from cached index structures (:class:`SparsePlan`); on one
CPU thread, batch 128, 8192x8192 at 0.1%, ``S x`` took 13 ms this way against 76 ms for a
gather + ``index_add_`` (the development machine, 2026-11; a 5x gap, as in every earlier
check). Elsewhere (convs, where ``nnz`` is small against the patch length) a gather of the
needed rows and ``index_add_``.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dctps import _compat
from dctps import offsets as _offsets
from dctps._types import ModuleT
from dctps.errors import DctpsError, InputDtypeError, InputShapeError, check_module, show

#: ``layer.__dict__`` key marking a ``D`` that a layer built ahead of use on an accelerator
#: (:meth:`dctps.layers.DCTpSLayer._prebuild_basis`); :func:`choose` frees it when it picks a
#: path without ``D``, as it frees one built only for its timing
PREBUILT = "_dctps_prebuilt_basis"


__all__ = [
    "MODES",
    "check_mode",
    "set_mode",
    "SparsePlan",
    "FastDCTpSFunction",
    "fast_linear",
    "fast_conv2d",
    "conv_unfold",
    "factor_conv2d",
    "SparseConv2dFunction",
    "choose",
    "candidates",
    "auto_cache",
    "clear_auto_cache",
    "auto_generation",
    "autocast_dtype",
    "check_linear_input",
    "check_conv_input",
]

MODES = ("dense", "fast", "factor", "auto")


def _not_traced(fn: Callable) -> Callable:
    """``torch.compiler.disable(fn)``, applied at the first call made once ``torch._dynamo`` is
    loaded: the decorator imports it (about a second and 64 MB resident), which a process that
    never compiles should not pay. Before that import nothing can be tracing the call. (Under
    ``torch.compile`` the layers take the dense path and never call these.)"""
    disabled: list[Callable] = []

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if not disabled:
            if "torch._dynamo" not in sys.modules:
                return fn(*args, **kwargs)
            disabled.append(torch.compiler.disable(fn))
        return disabled[0](*args, **kwargs)

    return wrapper


def _outside_inference(fn: Callable) -> Callable:
    """Run a cache builder with inference mode off: what it builds is reused by later calls, which
    may train, and a tensor made under ``torch.inference_mode`` can never be saved for backward."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with torch.inference_mode(False):
            return fn(*args, **kwargs)

    return wrapper


#: The ``layer`` argument of the paths below: a :class:`dctps.layers.DCTpSLayer` (Linear or Conv2d).
#: ``Any`` because :mod:`dctps.layers` imports this module, and the paths read subclass attributes.
Layer = Any

# torch's notes on its CSR tensors, for the calls made here only (``module``: the module of the
# Python frame that called torch): unqualified, they silenced the user's own CSR code too
for _note in (
    "Sparse CSR tensor support is in beta state",
    "Sparse invariant checks are implicitly",
):
    warnings.filterwarnings("ignore", message=f".*{_note}.*", module=r"dctps\.")


def version(t: torch.Tensor) -> int:
    """``t``'s in-place version counter, keying caches derived from it; ``-1`` for an inference
    tensor (a layer built or loaded under ``torch.inference_mode``), which has none and which
    nothing outside inference mode can change in place."""
    return -1 if t.is_inference() else t._version


def check_mode(mode: object) -> str:
    """Return ``mode`` if it is one of :data:`MODES`, else raise :class:`DctpsError`."""
    if mode not in MODES:
        raise DctpsError(f"mode must be one of {', '.join(map(repr, MODES))}, got {show(mode)}")
    return str(mode)


def set_mode(model: ModuleT, mode: str) -> ModuleT:
    """Set the forward mode (one of :data:`MODES`) of every DCTpS layer of ``model``.

    Returns ``model``. Switching to ``'fast'`` or ``'factor'`` frees any cached ``D``; an
    attention's projections (``DCTpSMultiheadAttention``) keep running on their materialised
    weight, since ``F.multi_head_attention_forward`` takes weights, not layers: a warning names
    them. A model without DCTpS layers is a :class:`DctpsError` (most likely ``dctps.sparsify``
    was not called; setting nothing would hide that).
    """
    check_mode(mode)
    check_module(model, "set_mode")
    layers = [
        (name, m)
        for name, m in model.named_modules()
        if hasattr(m, "weight_shape") and hasattr(m, "values") and hasattr(m, "mode")
    ]
    for name, m in layers:  # every layer checked before any changes: a refusal changes nothing
        try:
            m._check_path(mode)  # type: ignore[operator]
        except DctpsError as e:
            raise DctpsError(f"layer {name!r}: {e}") from None
    for _, m in layers:
        m.mode = mode  # type: ignore[assignment]  # a DCTpSLayer's mode property
    dense = [n or type(model).__name__ for n, m in model.named_modules()
             if getattr(m, "_dctps_runs_dense", False)]  # fmt: skip
    if dense and mode in ("fast", "factor"):
        shown = ", ".join(map(repr, dense[:3])) + (
            f" and {len(dense) - 3} more" if len(dense) > 3 else ""
        )
        warnings.warn(
            f"set_mode({mode!r}): the projections of {shown} run on their materialised weight "
            "alpha*D + S whatever the mode (F.multi_head_attention_forward takes weights, not "
            "layers), so their D is built and cached at the next forward",
            stacklevel=2,
        )
    if not layers:
        raise DctpsError(
            f"{type(model).__name__} has no DCTpS layers to set to mode {mode!r}: "
            "call dctps.sparsify(model, density) first"
        )
    return model


# ------------------------------------------------------------------------------------------------
# Geometry of the transform: where each input entry sits in the FFT buffer
# ------------------------------------------------------------------------------------------------
#
# Every tensor of the fast path is 3-D, ``(B, rows, L)``, and the transform runs along dim 1: a
# conv's input is ``F.unfold``'s ``(B, C*kh*kw, L)`` (so the output ``(B, out, L)`` is already the
# conv's layout, no transposes), a Linear's ``(M, in)`` input is viewed as ``(M, in, 1)``.


def _makhoul_pos(n: int) -> torch.Tensor:
    """Position of ``x_j`` in Makhoul's reordering ``v = [x_0, x_2, x_4, ..., x_5, x_3, x_1]``."""
    j = torch.arange(n)
    return torch.where(j % 2 == 0, j // 2, n - 1 - (j - 1) // 2)


@dataclass
class TransformSpec:
    """How a layer's input rows reach the FFT buffer ``v`` of shape ``(B, groups * N, L)``.

    ``dest[r]`` is the row of ``v`` that input row ``r`` lands in: the Makhoul position of its
    ``(h, w, c)`` patch index (:func:`dctps.dct.conv_dct_basis`'s order) inside its group's block
    of ``N = max(out, fan)`` rows. ``src`` is the inverse permutation when every row of ``v`` is an
    input row (no zero padding, ``fan >= out``), else ``None``. ``kind``: ``'dct'`` (FFT) or
    ``'hadamard'`` (natural order, ``N`` the next power of two; fast Walsh-Hadamard transform).
    """

    out: int
    n: int
    groups: int
    dest: torch.Tensor
    src: torch.Tensor | None
    kind: str = "dct"

    @property
    def width(self) -> int:
        """Rows of the FFT buffer: ``groups * N``."""
        return self.groups * self.n


def _spec(
    out: int,
    fan: int,
    groups: int,
    hwc: torch.Tensor,
    device: torch.device,
    kind: str = "dct",
    perm: torch.Tensor | None = None,
) -> TransformSpec:
    """``hwc[r]``: the ``(h, w, c)`` patch index (within its group) of input row ``r``.

    ``perm``: a column permutation of the offset (``D[:, j] = C[:, perm[j]]``), so patch index
    ``j`` reads the transform's input ``perm[j]``.
    """
    if perm is not None:
        hwc = perm[hwc]
    group = torch.arange(hwc.numel()) // fan
    if kind == "hadamard":
        n = _offsets.hadamard_size(out, fan)
        dest = group * n + hwc
    else:
        n = max(out, fan)
        dest = group * n + _makhoul_pos(n)[hwc]
    src = torch.argsort(dest).to(device) if fan == n else None
    return TransformSpec(out, n, groups, dest.to(device), src, kind)


def linear_spec(
    out: int, inp: int, device: torch.device, kind: str = "dct", perm: torch.Tensor | None = None
) -> TransformSpec:
    """The :class:`TransformSpec` of a Linear ``in -> out``."""
    return _spec(out, inp, 1, torch.arange(inp), device, kind, perm)


def conv_spec(
    weight_shape: tuple[int, ...],
    groups: int,
    device: torch.device,
    kind: str = "dct",
    perm: torch.Tensor | None = None,
) -> TransformSpec:
    """The :class:`TransformSpec` of a Conv2d; input rows are ``F.unfold``'s ``(c, h, w)`` order."""
    out, cg, kh, kw = weight_shape
    return _spec(out, cg * kh * kw, groups, _conv_hwc(weight_shape, groups), device, kind, perm)


def _conv_hwc(weight_shape: tuple[int, ...], groups: int) -> torch.Tensor:
    """The ``(h, w, c)`` patch index (within its group) of every ``F.unfold`` row."""
    out, cg, kh, kw = weight_shape
    kk = kh * kw
    rem = torch.arange(groups * cg * kk) % (cg * kk)  # unfold row (g*cg + c)*kk + hw
    return (rem % kk) * cg + rem // kk


def _to_v(spec: TransformSpec, x: torch.Tensor) -> torch.Tensor:
    """The FFT buffer ``(B, groups * N, L)`` from the layer input ``(B, rows, L)`` (one gather)."""
    if spec.src is not None:
        return x.index_select(1, spec.src)
    v = x.new_zeros(x.shape[0], spec.width, x.shape[2])
    return v.index_copy_(1, spec.dest, x)


def _from_v(spec: TransformSpec, vbar: torch.Tensor) -> torch.Tensor:
    """The adjoint of :func:`_to_v`: a gradient on ``v`` back to the input rows."""
    return vbar.index_select(1, spec.dest)


# ------------------------------------------------------------------------------------------------
# The DCT on the FFT buffer, output frequencies [k0, k1) of C_N, and its transpose
# ------------------------------------------------------------------------------------------------


@dataclass
class _Band:
    """Coefficients mapping ``U = rfft(v)`` (``h = N//2 + 1`` bins) to DCT frequencies ``[k0, k1)``.

    Makhoul (1980): ``y_k = Re(exp(-i pi k / 2N) U_k)`` for ``k < h`` and
    ``y_k = -Im(exp(-i pi j / 2N) U_j)``, ``j = N - k``, above (times the orthonormal scale).
    Low part ``k in [k0, lo_end)``: ``y_k = a_k Re U_k + b_k Im U_k``. High part
    ``k in [hi_start, k1)`` over ascending bins ``j in [j0, j1)``, then flipped. ``za``/``zb``
    carry the same coefficients times ``N * e_j`` (``e = 1`` at the DC and Nyquist bins, 1/2
    elsewhere): the adjoint of ``rfft`` is ``N * irfft`` of the spectrum weighted by ``e``.
    """

    n: int
    k0: int
    lo_end: int
    a_lo: torch.Tensor
    b_lo: torch.Tensor
    za_lo: torch.Tensor
    zb_lo: torch.Tensor
    j0: int
    j1: int
    a_hi: torch.Tensor
    b_hi: torch.Tensor
    za_hi: torch.Tensor
    zb_hi: torch.Tensor


_BANDS: dict[tuple, _Band] = {}
#: at most this many cached bands (tensors on the layers' devices): a process that builds
#: layers of ever new shapes (a sweep over widths) starts the cache over, as the auto memo does
BANDS_SIZE = 256


def _band(n: int, k0: int, k1: int, device: torch.device, dtype: torch.dtype) -> _Band:
    key = (n, k0, k1, str(device), dtype)
    hit = _BANDS.get(key)
    if hit is not None:
        return hit
    band = _make_band(n, k0, k1, device, dtype)
    if len(_BANDS) >= BANDS_SIZE:
        _BANDS.clear()
    _BANDS[key] = band
    return band


@_outside_inference
def _make_band(n: int, k0: int, k1: int, device: torch.device, dtype: torch.dtype) -> _Band:
    h = n // 2 + 1
    scale = math.sqrt(2.0 / n)
    f64 = torch.float64

    def edge_weight(j: torch.Tensor) -> torch.Tensor:
        e = torch.full(j.shape, 0.5, dtype=f64)
        e[j == 0] = 1.0
        if n % 2 == 0:
            e[j == n // 2] = 1.0
        return e * n

    lo_end = max(k0, min(k1, h))
    k = torch.arange(k0, lo_end, dtype=f64)
    s = torch.full(k.shape, scale, dtype=f64)
    s[k == 0] = scale / math.sqrt(2.0)
    a_lo, b_lo = s * torch.cos(math.pi * k / (2 * n)), s * torch.sin(math.pi * k / (2 * n))
    hi_start = max(k0, h)
    j0, j1 = (n - k1 + 1, n - hi_start + 1) if k1 > hi_start else (0, 0)
    j = torch.arange(j0, j1, dtype=f64)
    a_hi, b_hi = scale * torch.sin(math.pi * j / (2 * n)), -scale * torch.cos(math.pi * j / (2 * n))

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.to(device=device, dtype=dtype).view(-1, 1)

    wl, wh = edge_weight(k), edge_weight(j)
    return _Band(
        n, k0, lo_end, cast(a_lo), cast(b_lo), cast(a_lo * wl), cast(b_lo * wl),
        j0, j1, cast(a_hi), cast(b_hi), cast(a_hi * wh), cast(b_hi * wh),
    )  # fmt: skip


def _dct_band(v: torch.Tensor, band: _Band, y: torch.Tensor, alpha: torch.Tensor) -> None:
    """``y = alpha * C_N[k0:k1] @ v`` along dim 1: ``v (B, N, L)``, ``y (B, k1-k0, L)``."""
    ur = torch.view_as_real(torch.fft.rfft(v, dim=1))  # (B, h, L, 2)
    nlo = band.lo_end - band.k0
    if nlo > 0:
        sl = ur[:, band.k0 : band.lo_end]
        part = y[:, :nlo]
        torch.mul(sl[..., 0], band.a_lo * alpha, out=part)
        part.addcmul_(sl[..., 1], band.b_lo * alpha)
    if band.j1 > band.j0:
        sl = ur[:, band.j0 : band.j1]
        hi = sl[..., 0] * (band.a_hi * alpha)
        hi.addcmul_(sl[..., 1], band.b_hi * alpha)
        y[:, nlo:] = hi.flip(1)


def _dct_band_t(g: torch.Tensor, band: _Band) -> torch.Tensor:
    """``C_N[k0:k1]^T @ g`` along dim 1: ``g (B, k1-k0, L) -> (B, N, L)`` (one inverse rFFT)."""
    n = band.n
    cdtype = torch.complex128 if g.dtype == torch.float64 else torch.complex64
    z = torch.zeros(g.shape[0], n // 2 + 1, g.shape[2], dtype=cdtype, device=g.device)
    zr = torch.view_as_real(z)
    nlo = band.lo_end - band.k0
    if nlo > 0:
        gl = g[:, :nlo]
        torch.mul(gl, band.za_lo, out=zr[:, band.k0 : band.lo_end, :, 0])
        torch.mul(gl, band.zb_lo, out=zr[:, band.k0 : band.lo_end, :, 1])
    if band.j1 > band.j0:
        gh = g[:, nlo:].flip(1)
        zr[:, band.j0 : band.j1, :, 0].addcmul_(gh, band.za_hi)
        zr[:, band.j0 : band.j1, :, 1].addcmul_(gh, band.zb_hi)
    return torch.fft.irfft(z, n=n, dim=1)


def _fwht_rows(v: torch.Tensor) -> torch.Tensor:
    """Unnormalised fast Walsh-Hadamard transform along dim 1 of ``(B, M, L)`` (natural order)."""
    b, m, ln = v.shape
    h = 1
    while h < m:
        t = v.reshape(b, m // (2 * h), 2, h, ln)
        a, c = t[:, :, 0], t[:, :, 1]
        v = torch.stack((a + c, a - c), dim=2)
        h *= 2
    return v.reshape(b, m, ln)


def _hadamard(v: torch.Tensor, spec: TransformSpec, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha * H_M[rows of each group, :] v`` on the buffer ``(B, groups * M, L)``."""
    out, n, groups = spec.out, spec.n, spec.groups
    og = out // groups
    parts = [_fwht_rows(v[:, g * n : (g + 1) * n])[:, g * og : (g + 1) * og] for g in range(groups)]
    y = parts[0] if groups == 1 else torch.cat(parts, dim=1)
    return y * (alpha / math.sqrt(n))


def _hadamard_t(g: torch.Tensor, spec: TransformSpec) -> torch.Tensor:
    """The transpose of :func:`_hadamard` (``alpha = 1``): ``(B, out, L) -> (B, groups * M, L)``."""
    out, n, groups = spec.out, spec.n, spec.groups
    og = out // groups
    parts = []
    for k in range(groups):
        z = g.new_zeros(g.shape[0], n, g.shape[2])
        z[:, k * og : (k + 1) * og] = g[:, k * og : (k + 1) * og]
        parts.append(_fwht_rows(z))
    res = parts[0] if groups == 1 else torch.cat(parts, dim=1)
    return res.mul_(1.0 / math.sqrt(n))


def _transform(v: torch.Tensor, spec: TransformSpec, alpha: torch.Tensor) -> torch.Tensor:
    """``alpha * D v`` on the FFT buffer ``(B, groups * N, L)``: ``(B, out, L)``.

    Group ``g`` produces output rows (= DCT frequencies) ``[g * out_g, (g + 1) * out_g)`` from its
    block of ``v``; a Linear or ungrouped conv is the single band ``[0, out)``.
    """
    if v.numel() == 0:  # an FFT of an empty batch fails on some backends (MKL); nothing to do
        return v.new_zeros(v.shape[0], spec.out, v.shape[2])
    if spec.kind == "hadamard":
        return _hadamard(v, spec, alpha)
    out, n, groups = spec.out, spec.n, spec.groups
    y = v.new_empty(v.shape[0], out, v.shape[2])
    og = out // groups
    for g in range(groups):
        band = _band(n, g * og, (g + 1) * og, v.device, v.dtype)
        _dct_band(v[:, g * n : (g + 1) * n], band, y[:, g * og : (g + 1) * og], alpha)
    return y


def _transform_t(g: torch.Tensor, spec: TransformSpec) -> torch.Tensor:
    """``D^T g`` onto the FFT buffer: ``(B, out, L) -> (B, groups * N, L)``."""
    if g.numel() == 0:  # as in _transform
        return g.new_zeros(g.shape[0], spec.width, g.shape[2])
    if spec.kind == "hadamard":
        return _hadamard_t(g, spec)
    out, n, groups = spec.out, spec.n, spec.groups
    if groups == 1:
        return _dct_band_t(g, _band(n, 0, out, g.device, g.dtype))
    og = out // groups
    parts = [
        _dct_band_t(g[:, k * og : (k + 1) * og], _band(n, k * og, (k + 1) * og, g.device, g.dtype))
        for k in range(groups)
    ]
    return torch.cat(parts, dim=1)


# ------------------------------------------------------------------------------------------------
# Index structures of S on the FFT buffer
# ------------------------------------------------------------------------------------------------


@dataclass
class SparsePlan:
    """``S`` as an ``(out, groups * N)`` matrix acting on the rows of the FFT buffer ``v``.

    ``rows``/``cols`` are COO positions in ``values`` order (``cols`` mapped through the
    :class:`TransformSpec`'s ``dest``). For the CSR products of Linear layers, ``perm`` orders
    ``values`` by (row, col) (``None`` when already in that order) and ``perm_t`` by (col, row)
    for ``S^T``.
    """

    spec: TransformSpec
    shape: tuple[int, int]
    rows: torch.Tensor
    cols: torch.Tensor
    perm: torch.Tensor | None
    crow: torch.Tensor
    col: torch.Tensor
    perm_t: torch.Tensor
    crow_t: torch.Tensor
    col_t: torch.Tensor

    @classmethod
    def build(cls, spec: TransformSpec, rows: torch.Tensor, in_rows: torch.Tensor) -> SparsePlan:
        nrows, ncols = spec.out, spec.width
        rows = rows.long()
        cols = spec.dest[in_rows.long()]
        key = rows * ncols + cols
        perm: torch.Tensor | None = None
        if key.numel() > 1 and bool((key.diff() < 0).any()):
            perm = torch.argsort(key)
        r_s = rows if perm is None else rows[perm]
        c_s = cols if perm is None else cols[perm]
        perm_t = torch.argsort(cols * nrows + rows)
        small = max(nrows, ncols, rows.numel()) < 2**31 - 1
        to_csr = torch.ops.aten._convert_indices_from_coo_to_csr
        return cls(
            spec=spec,
            shape=(nrows, ncols),
            rows=rows,
            cols=cols,
            perm=perm,
            crow=to_csr(r_s, nrows, out_int32=small),
            col=c_s.to(torch.int32 if small else torch.int64),
            perm_t=perm_t,
            crow_t=to_csr(cols[perm_t], ncols, out_int32=small),
            col_t=rows[perm_t].to(torch.int32 if small else torch.int64),
        )

    @property
    def nnz(self) -> int:
        """Number of stored non-zeros."""
        return self.rows.numel()

    def csr(self, values: torch.Tensor) -> torch.Tensor:
        """``S`` (``shape``) as a CSR tensor holding ``values`` (given in ``indices`` order)."""
        v = values if self.perm is None else values[self.perm]
        return torch.sparse_csr_tensor(self.crow, self.col, v, self.shape, check_invariants=False)

    def csr_t(self, values: torch.Tensor) -> torch.Tensor:
        """``S^T`` as a CSR tensor holding ``values`` (given in ``indices`` order)."""
        return torch.sparse_csr_tensor(
            self.crow_t, self.col_t, values[self.perm_t], self.shape[::-1], check_invariants=False
        )


def _offset_key(layer: Layer) -> tuple:
    """What a layer's offset structures depend on: its name and the seed buffer's identity."""
    buf = getattr(layer, "offset_seed", None)
    off = getattr(layer, "offset", "dct")
    return (off,) if buf is None else (off, id(buf), version(buf))


def _offset_parts(layer: Layer) -> tuple[str, torch.Tensor | None, torch.Tensor | None]:
    """``(kind, perm, signs)`` of the layer's offset (CPU tensors), cached per offset key.

    ``kind``: the transform (``'dct'`` or ``'hadamard'``); ``perm``: the column permutation of
    ``dct_permuted``; ``signs``: the float64 column signs of ``dct_signflip``.
    """
    key = _offset_key(layer)
    cached = layer.__dict__.get("_dctps_offset")
    if cached is not None and cached[0] == key:
        return cached[1]
    res = _make_offset_parts(layer, key)
    layer.__dict__["_dctps_offset"] = (key, res)
    return res


@_outside_inference
def _make_offset_parts(
    layer: Layer, key: tuple
) -> tuple[str, torch.Tensor | None, torch.Tensor | None]:
    off = key[0]
    if not _offsets.has_fast_path(off):
        raise DctpsError(
            f"offset {off!r} has no fast path: use mode='dense' (or 'auto', which takes the "
            "dense path for it)"
        )
    fan = math.prod(layer.weight_shape[1:])
    seed = int(layer.offset_seed_value) if key[1:] else 0
    kind = "hadamard" if off == "hadamard" else "dct"
    perm = _offsets.permutation(fan, seed) if off == "dct_permuted" else None
    signs = _offsets.signs(fan, seed) if off == "dct_signflip" else None
    return kind, perm, signs


def _plan(layer: Layer) -> SparsePlan:
    """The layer's cached :class:`SparsePlan`, rebuilt when ``indices`` or the offset changed."""
    idx = layer.indices
    okey = _offset_key(layer)
    cached = layer.__dict__.get("_dctps_plan")
    if cached is not None and cached[0] is idx and cached[1] == version(idx) and cached[3] == okey:
        return cached[2]
    plan = _make_plan(layer, idx)
    layer.__dict__["_dctps_plan"] = (idx, version(idx), plan, okey)
    return plan


@_outside_inference
def _make_plan(layer: Layer, idx: torch.Tensor) -> SparsePlan:
    kind, perm, _ = _offset_parts(layer)
    shape = tuple(layer.weight_shape)
    fan = math.prod(shape[1:])
    rows, within = idx // fan, idx % fan
    if len(shape) == 2:
        spec = linear_spec(shape[0], shape[1], idx.device, kind, perm)
        plan = SparsePlan.build(spec, rows, within)
    else:
        groups = layer.groups
        spec = conv_spec(shape, groups, idx.device, kind, perm)
        # flat (o, c, h, w) -> unfold row (g * cg + c) * kk + hw, g = o's group
        kk = shape[2] * shape[3]
        in_rows = (rows // (shape[0] // groups) * shape[1] + within // kk) * kk + within % kk
        plan = SparsePlan.build(spec, rows, in_rows)
    return plan


def _sign_parts(
    layer: Layer, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """For ``dct_signflip``: the sign of every input row (Linear: feature; conv: ``F.unfold``
    row) and of every non-zero of ``S`` (its column's sign), or ``None`` for other offsets.

    ``W x = alpha D diag(s) x + S x = alpha D (s * x) + (S diag(s)) (s * x)``, so the signs go on
    the input rows and on the values, and the transform path runs unchanged.
    """
    _, _, signs = _offset_parts(layer)
    if signs is None:
        return None
    idx = layer.indices
    key = (_offset_key(layer), id(idx), version(idx), str(device), dtype)
    cached = layer.__dict__.get("_dctps_signs")
    if cached is not None and cached[0] == key and cached[1] is idx:
        return cached[2]
    res = _make_sign_parts(layer, signs, idx, device, dtype)
    layer.__dict__["_dctps_signs"] = (key, idx, res)
    return res


@_outside_inference
def _make_sign_parts(
    layer: Layer, signs: torch.Tensor, idx: torch.Tensor, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    shape = tuple(layer.weight_shape)
    fan = math.prod(shape[1:])
    within = idx.cpu() % fan
    if len(shape) == 2:
        rows_sign, vals_sign = signs, signs[within]
    else:
        out, cg, kh, kw = shape
        kk = kh * kw
        rows_sign = signs[_conv_hwc(shape, layer.groups)]
        vals_sign = signs[(within % kk) * cg + within // kk]  # (c, h, w) flat -> (h, w, c)
    return rows_sign.to(device=device, dtype=dtype), vals_sign.to(device=device, dtype=dtype)


def _apply_signs(
    layer: Layer, x: torch.Tensor, values: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(s * x, values * s[col])`` for ``dct_signflip`` (differentiable); else unchanged."""
    parts = _sign_parts(layer, x.device, x.dtype)
    if parts is None:
        return x, values
    rows_sign, vals_sign = parts
    return x * rows_sign.view(1, -1, 1), values * vals_sign.to(values.dtype)


# ------------------------------------------------------------------------------------------------
# Sparse products on the FFT buffer
# ------------------------------------------------------------------------------------------------

_CHUNK_ELEMS = 1 << 22  # bound on the gathered (B, chunk, L) intermediates of the sparse products
_BACKEND = {"sparse": "auto"}  # 'auto', 'csr' or 'gather'; the tests force each


def _csr_ok(plan: SparsePlan, t: torch.Tensor) -> bool:
    """CSR products (MKL / cuSPARSE) for Linear inputs with ``nnz >= N/4``; gathers otherwise.

    CSR was about 5x faster for 8192^2 at 0.1% (nnz 8N; the module's docstring has the numbers);
    a conv's patch matrix with nnz << N is cheaper to gather than to transpose for CSR.
    """
    b = _BACKEND["sparse"]
    if t.shape[2] != 1 or b == "gather":
        return False
    if b == "csr":
        return True
    return (
        t.device.type in ("cpu", "cuda")
        and t.dtype in (torch.float32, torch.float64)
        and 4 * plan.nnz >= plan.spec.n
    )


def _chunks(plan: SparsePlan, t: torch.Tensor):
    step = max(1, _CHUNK_ELEMS // max(1, t.shape[0] * t.shape[2]))
    for s in range(0, plan.nnz, step):
        yield slice(s, s + step)


def _sparse_add(plan: SparsePlan, values: torch.Tensor, v: torch.Tensor, y: torch.Tensor) -> None:
    """``y += S v`` along dim 1: ``v (B, width, L)``, ``y (B, out, L)``."""
    if _csr_ok(plan, v):  # (S v^T) accumulated straight into the column-major view y^T
        y.squeeze(2).t().addmm_(plan.csr(values), v.squeeze(2).t())
        return
    for sl in _chunks(plan, v):
        y.index_add_(1, plan.rows[sl], v.index_select(1, plan.cols[sl]) * values[sl, None])


def _sparse_add_t(
    plan: SparsePlan, values: torch.Tensor, g: torch.Tensor, vb: torch.Tensor
) -> None:
    """``vb += S^T g`` along dim 1: ``g (B, out, L)``, ``vb (B, width, L)``."""
    if _csr_ok(plan, g):
        vb.squeeze(2).t().addmm_(plan.csr_t(values), g.squeeze(2).t())
        return
    for sl in _chunks(plan, g):
        vb.index_add_(1, plan.cols[sl], g.index_select(1, plan.rows[sl]) * values[sl, None])


def _sampled(plan: SparsePlan, g: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``dvalues[j] = sum_{b,l} g[b, row_j, l] * v[b, col_j, l]``, in ``values`` order."""
    if _csr_ok(plan, g):
        pattern = plan.csr(g.new_zeros(plan.nnz))
        g2, v2 = g.squeeze(2), v.squeeze(2)
        vals = torch.sparse.sampled_addmm(pattern, g2.t(), v2, beta=0.0).values()
        if plan.perm is None:
            return vals
        return torch.empty_like(vals).index_copy_(0, plan.perm, vals)
    res = g.new_empty(plan.nnz)
    for sl in _chunks(plan, g):
        prod = g.index_select(1, plan.rows[sl]) * v.index_select(1, plan.cols[sl])
        res[sl] = prod.sum((0, 2))
    return res


# ------------------------------------------------------------------------------------------------
# The autograd function
# ------------------------------------------------------------------------------------------------


class FastDCTpSFunction(torch.autograd.Function):
    """``y = alpha * D x + S x (+ bias)`` with ``D`` applied by FFT and ``S`` sparse.

    ``x`` is ``(B, rows, L)``: a conv's ``F.unfold`` output ``(B, C*kh*kw, L)`` or a Linear input
    viewed as ``(M, in, 1)``; the result is ``(B, out, L)``. The input is first gathered into the
    FFT buffer ``v`` (:func:`_to_v`: the ``(h, w, c)`` patch order and Makhoul's even/odd
    reordering in one gather of whole rows, zero padded to ``N = max(out, fan)``); the twiddle
    factors carry ``alpha`` and the orthonormal scaling, so ``alpha * D v`` is one real FFT along
    dim 1 and one multiply-add.

    Backward: ``D^T g`` is one inverse real FFT of a weighted spectrum (the DCT-III, i.e.
    :func:`dctps.dct.dct_t`), ``dx = gather(alpha * D^T g + S^T g)``, ``d alpha = <D^T g, v>``
    (``= <g, D x>``, so ``D x`` is not stored), ``d values`` a sampled product of ``g`` and ``v``
    on the support, ``d bias = sum g``. Saved for backward: the input ``x`` (``v`` is gathered
    from it again). Nothing of ``out * fan`` elements is ever allocated.

    Double backward (``create_graph=True``): the backward then recomputes ``y`` from the saved
    input with built-in differentiable ops (:func:`_differentiable_forward`, the same FFT and
    sparse products) and differentiates that, so second derivatives are exact, in ``x`` too.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: torch.Tensor,
        alpha: torch.Tensor,
        values: torch.Tensor,
        bias: torch.Tensor | None,
        plan: SparsePlan,
    ) -> torch.Tensor:
        v = _to_v(plan.spec, x)
        dv = None
        if alpha.dim() == 0:
            y = _transform(v, plan.spec, alpha)
        else:  # one alpha per output row: keep D v for d alpha
            dv = _transform(v, plan.spec, alpha.new_ones(()))
            y = dv * alpha.view(-1, 1)
        if plan.nnz:
            _sparse_add(plan, values, v, y)
        if bias is not None:
            y.add_(bias.view(-1, 1))
        # x too: an input keeps its autograd history when unpacked, which double backward needs
        # (v, made here without grad, would cut x out of the second derivative); v spares the
        # first-order backward a second gather
        ctx.save_for_backward(x, alpha, values, dv, v)
        ctx.plan = plan
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):  # type: ignore[override]
        x, alpha, values, dv, v = ctx.saved_tensors
        plan: SparsePlan = ctx.plan
        need_x, need_a, need_v, need_b = ctx.needs_input_grad[:4]
        dbias = grad.sum((0, 2)) if need_b and ctx.has_bias else None
        if torch.is_grad_enabled():  # create_graph=True: these gradients must be differentiable
            dx, dalpha, dvalues = _recompute_grads(
                lambda t, a, s: _differentiable_forward(t, a, s, plan),
                (x, alpha, values),
                ctx.needs_input_grad[:3],
                grad,
            )
            return dx, dalpha, dvalues, dbias, None
        g = grad.contiguous()
        dx = dalpha = dvalues = None
        if dv is not None:  # per-row alpha
            if need_a:
                dalpha = (g * dv).sum((0, 2))
            if need_x:
                vbar = _transform_t(g * alpha.view(-1, 1), plan.spec)
                if plan.nnz:
                    _sparse_add_t(plan, values, g, vbar)
                dx = _from_v(plan.spec, vbar)
        elif need_x or need_a:
            dtg = _transform_t(g, plan.spec)
            if need_a:
                assert v is not None
                dalpha = torch.dot(dtg.flatten(), v.flatten()).view_as(alpha)
            if need_x:
                vbar = dtg.mul_(alpha)
                if plan.nnz:
                    _sparse_add_t(plan, values, g, vbar)
                dx = _from_v(plan.spec, vbar)
        if need_v:
            assert v is not None
            dvalues = _sampled(plan, g, v) if plan.nnz else torch.zeros_like(values)
        return dx, dalpha, dvalues, dbias, None


def _recompute_grads(
    fn: Callable[..., torch.Tensor],
    inputs: tuple[torch.Tensor, ...],
    needs: tuple[bool, ...],
    grad: torch.Tensor,
) -> list[torch.Tensor | None]:
    """The vector-Jacobian product ``grad^T d fn(*inputs)`` with a graph, for double backward.

    ``fn`` recomputes a custom Function's output from its saved inputs with differentiable ops;
    saved inputs unpack with their autograd history, so the result is differentiable in them
    (and in ``grad``). Returns one gradient per input, ``None`` where ``needs`` is false.
    """
    wanted = [t for t, n in zip(inputs, needs, strict=True) if n]
    if not wanted:  # e.g. only the bias trains: autograd.grad refuses an empty input list
        return [None] * len(inputs)
    with torch.enable_grad():
        y = fn(*inputs)
    got = iter(torch.autograd.grad(y, wanted, grad, create_graph=True, allow_unused=True))
    res = [next(got) if n else None for n in needs]
    # an input the recompute did not reach (e.g. values when nnz=0) has a zero gradient
    return [
        torch.zeros_like(t) if n and r is None else r
        for t, n, r in zip(inputs, needs, res, strict=True)
    ]


def _dct_rows(v: torch.Tensor, spec: TransformSpec) -> torch.Tensor:
    """``D v`` (``alpha = 1``) like :func:`_transform`, with out-of-place differentiable ops."""
    out, n, groups = spec.out, spec.n, spec.groups
    og = out // groups
    parts = []
    for g in range(groups):
        band = _band(n, g * og, (g + 1) * og, v.device, v.dtype)
        ur = torch.view_as_real(torch.fft.rfft(v[:, g * n : (g + 1) * n], dim=1))
        if band.lo_end > band.k0:
            sl = ur[:, band.k0 : band.lo_end]
            parts.append(sl[..., 0] * band.a_lo + sl[..., 1] * band.b_lo)
        if band.j1 > band.j0:
            sl = ur[:, band.j0 : band.j1]
            parts.append((sl[..., 0] * band.a_hi + sl[..., 1] * band.b_hi).flip(1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)


def _differentiable_forward(
    x: torch.Tensor, alpha: torch.Tensor, values: torch.Tensor, plan: SparsePlan
) -> torch.Tensor:
    """:class:`FastDCTpSFunction`'s ``alpha * D x + S x`` (no bias) with built-in differentiable
    ops only: the recompute its double backward differentiates. ``O(N log N + nnz)`` per column,
    like the forward; no ``out * fan`` tensor."""
    spec = plan.spec
    b, _, ln = x.shape
    if spec.src is not None:
        v = x.index_select(1, spec.src)
    else:
        v = x.new_zeros(b, spec.width, ln).index_copy(1, spec.dest, x)
    if v.numel() == 0:  # an FFT of an empty batch fails on some backends; the result is empty
        dv = v.new_zeros(b, spec.out, ln)
    elif spec.kind == "hadamard":
        dv = _hadamard(v, spec, alpha.new_ones(()))
    else:
        dv = _dct_rows(v, spec)
    y = dv * (alpha if alpha.dim() == 0 else alpha.view(-1, 1))
    if plan.nnz:
        y = y.index_add(1, plan.rows, v.index_select(1, plan.cols) * values[:, None])
    return y


# ------------------------------------------------------------------------------------------------
# What the fast paths accept: shapes and dtypes checked as the dense path would, half computed in
# float32, autocast honoured
# ------------------------------------------------------------------------------------------------

_HALF = (torch.float16, torch.bfloat16)


def autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    """The dtype autocast gives a Linear / conv output on ``x``'s device, or ``None`` when autocast
    is off there."""
    dev = x.device.type
    try:
        if not _compat.is_autocast_enabled(dev):
            return None
    except RuntimeError:  # a device type autocast does not know (e.g. 'meta'): no autocast there
        return None
    return _compat.get_autocast_dtype(dev)


@dataclass
class _Precision:
    """How a fast path computes: in ``work`` (float32 for a half layer: the FFTs and sparse
    kernels need it), returning ``out`` (the layer's dtype, or autocast's), with autocast switched
    off inside (``autocast``) so it does not recast the intermediate products."""

    work: torch.dtype
    out: torch.dtype
    autocast: bool

    def scope(self, x: torch.Tensor) -> Any:
        """A context that turns autocast off on ``x``'s device when it was on."""
        if self.autocast:
            return torch.autocast(x.device.type, enabled=False)
        return contextlib.nullcontext()


def _precision(layer: Layer, x: torch.Tensor) -> _Precision:
    """The :class:`_Precision` of a fast path on ``x``, or a :class:`DctpsError` where the dense
    path would fail on the dtypes (it never silently casts an input to another precision)."""
    p = layer.alpha.dtype
    if p.is_complex:  # the transforms are real (rfft); the dense path multiplies any dtype
        raise DctpsError(
            f"mode='fast' and 'factor' compute in real dtypes; this layer is {p}: use "
            "mode='dense' (dctps.set_mode(model, 'dense'))"
        )
    work = torch.float32 if p in _HALF else p
    cast = autocast_dtype(x) if p != torch.float64 else None
    if cast is not None and x.dtype in (torch.float32, *_HALF):
        return _Precision(work, cast, True)
    if x.dtype != p:
        # converting the layer only makes sense to another floating type
        layer_fix = (
            f" or convert the layer (layer.to({x.dtype}))" if x.dtype.is_floating_point else ""
        )
        raise InputDtypeError(
            f"input dtype {x.dtype} differs from the layer's {p} (the dense path refuses it "
            f"too): give a {p} input (x.to({p})){layer_fix}"
        )
    return _Precision(work, p, False)


def _params(
    layer: Layer, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``alpha``, ``values`` and ``bias`` in ``dtype`` (differentiable casts; no copy when they
    already are)."""
    bias = layer.bias
    return (
        layer.alpha.to(dtype),
        layer.values.to(dtype),
        None if bias is None else bias.to(dtype),
    )


def check_linear_input(layer: Layer, x: torch.Tensor) -> None:
    """An :class:`~dctps.errors.InputShapeError` unless ``x`` is ``(..., in_features)`` for the
    Linear ``layer``."""
    out, inp = layer.weight_shape
    if x.dim() == 0 or x.shape[-1] != inp:
        raise InputShapeError(
            f"DCTpSLinear(in_features={inp}, out_features={out}) expects an input of shape "
            f"(..., {inp}), got shape {tuple(x.shape)}"
        )


def check_conv_input(layer: Layer, x: torch.Tensor) -> None:
    """An :class:`~dctps.errors.InputShapeError` naming what is wrong with ``x`` for the conv
    ``layer`` (dimensions, channel count, a kernel larger than the padded input), in the words of
    ``nn.Conv2d``."""
    out, cg, kh, kw = layer.weight_shape
    groups = layer.groups
    cin = cg * groups
    if x.dim() not in (3, 4):
        raise InputShapeError(
            f"DCTpSConv2d expects a 3-D (C, H, W) or 4-D (B, C, H, W) input, got shape "
            f"{tuple(x.shape)}"
        )
    if x.shape[-3] != cin:
        raise InputShapeError(
            f"DCTpSConv2d: given groups={groups}, weight of size {list(layer.weight_shape)}, "
            f"expected input{list(x.shape)} to have {cin} channels, but got {x.shape[-3]} channels"
        )
    left, right, top, bottom = _explicit_padding(layer)
    h, w = x.shape[-2] + top + bottom, x.shape[-1] + left + right
    dh, dw = layer.dilation
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if h < eh or w < ew:
        raise InputShapeError(
            f"DCTpSConv2d: the padded input is {h}x{w} but the (dilated) kernel is {eh}x{ew}: "
            "the kernel can't be larger than the input"
        )


@_not_traced
def fast_linear(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """The fast path of a :class:`~dctps.layers.DCTpSLinear`: ``(..., in) -> (..., out)``.

    A half-precision layer computes in float32 and returns its dtype; under ``torch.autocast`` the
    output has autocast's dtype, as ``F.linear``'s would.
    """
    check_linear_input(layer, x)
    prec = _precision(layer, x)
    out, inp = layer.weight_shape
    lead = x.shape[:-1]
    plan = _plan(layer)
    alpha, values, bias = _params(layer, prec.work)
    with prec.scope(x):
        x3 = x.reshape(-1, inp).to(prec.work).contiguous().unsqueeze(2)
        x3, values = _apply_signs(layer, x3, values)
        y = FastDCTpSFunction.apply(x3, alpha, values, bias, plan)
    return y.to(prec.out).view(*lead, out)


def _explicit_padding(layer: Layer) -> tuple[int, int, int, int]:
    """``(left, right, top, bottom)`` padding of the layer, resolving ``'same'`` / ``'valid'``."""
    pad = layer.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0, 0, 0)
        res = []
        for d, k in zip(layer.dilation[::-1], layer.kernel_size[::-1], strict=True):
            total = d * (k - 1)
            res += [total // 2, total - total // 2]
        return tuple(res)  # type: ignore[return-value]
    return (pad[1], pad[1], pad[0], pad[0])


def conv_unfold(layer: Layer, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """``F.unfold`` of ``x`` with the layer's geometry: ``(B, C*kh*kw, H'*W')``, and ``(H', W')``.

    Handles ``padding='same'``/``'valid'`` (asymmetric 'same' padding is applied with ``F.pad``).
    """
    kh, kw = layer.kernel_size
    left, right, top, bottom = _explicit_padding(layer)
    if (left, top) != (right, bottom):
        x = F.pad(x, (left, right, top, bottom))
        left = top = 0
    h, w = x.shape[-2:]
    dh, dw = layer.dilation
    sh, sw = layer.stride
    ho = (h + 2 * top - dh * (kh - 1) - 1) // sh + 1
    wo = (w + 2 * left - dw * (kw - 1) - 1) // sw + 1
    cols = F.unfold(x, (kh, kw), dilation=(dh, dw), padding=(top, left), stride=(sh, sw))
    return cols, ho, wo


@_not_traced
def fast_conv2d(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """The transform path of a :class:`~dctps.layers.DCTpSConv2d`: ``F.unfold`` the patches and
    apply :class:`FastDCTpSFunction` (which reorders each patch to ``(h, w, c)`` and Makhoul order
    in the same gather); the ``(B, out, L)`` result is the conv output's layout. Dtypes as
    :func:`fast_linear`."""
    check_conv_input(layer, x)
    prec = _precision(layer, x)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    plan = _plan(layer)
    alpha, values, bias = _params(layer, prec.work)
    with prec.scope(x):
        cols, ho, wo = conv_unfold(layer, x.to(prec.work))
        cols, values = _apply_signs(layer, cols, values)
        y = FastDCTpSFunction.apply(cols, alpha, values, bias, plan)
    y = y.view(x.shape[0], layer.weight_shape[0], ho, wo).to(prec.out)
    return y.squeeze(0) if unbatched else _like_conv2d(y, x)


def _like_conv2d(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``y`` in ``x``'s memory format, as ``F.conv2d`` returns it: a channels-last input gives a
    channels-last output, which the next layer then reads without a re-layout."""
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return y.contiguous(memory_format=torch.channels_last)
    return y


# ------------------------------------------------------------------------------------------------
# Conv2d, factorised: a complex 1x1 conv, a depthwise kh x kw conv, and S as a sparse shifted sum
# ------------------------------------------------------------------------------------------------
#
# With j = hw * C_g + c (hw = h * kw + w) and phi = pi * o / (2N),
#     D[o, c, h, w] = s_o cos((2j + 1) phi) = s_o Re[exp(-i (2 hw C_g + 1) phi) * exp(-i 2 c phi)],
# so D x = Re[ sum_hw P[o, hw] * Z_o(p + hw) ] with Z_o = sum_c exp(-2i c phi) x_c, a 1x1 conv with
# 2*out real outputs (real and imaginary parts) applied once per input pixel, followed by a
# depthwise kh x kw conv of those 2*out channels and a pairwise sum. Per output pixel this costs
# about 2 out C_g s^2 + 2 out kh kw multiply-adds against out C_g kh kw for the dense conv: ~4x
# fewer for a 3x3 stride-1 conv, all of it in cuDNN/oneDNN kernels.


def _factor_weights(layer: Layer, device: torch.device, dtype: torch.dtype):
    """The fixed 1x1 weight ``(2 out, C_g, 1, 1)`` and depthwise weight ``(2 out, 1, kh, kw)``."""
    key = (str(device), dtype)
    cached = layer.__dict__.get("_dctps_factors")
    if cached is not None and cached[0] == key:
        return cached[1]
    res = _make_factor_weights(layer, device, dtype)
    layer.__dict__["_dctps_factors"] = (key, res)
    return res


@_outside_inference
def _make_factor_weights(
    layer: Layer, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    out, cg, kh, kw = layer.weight_shape
    groups = layer.groups
    og = out // groups
    n = max(out, cg * kh * kw)
    f64 = torch.float64
    o = torch.arange(out, dtype=f64)
    phi = math.pi * o / (2 * n)
    c = torch.arange(cg, dtype=f64)
    ang = 2 * phi[:, None] * c[None, :]  # (out, cg)
    e = torch.stack([torch.cos(ang), -torch.sin(ang)], 0)  # (2, out, cg): Re, Im of exp(-i ang)
    # output channel order inside group g: [Re for its og filters, Im for its og filters]
    e = e.view(2, groups, og, cg).transpose(0, 1).reshape(2 * out, cg, 1, 1)
    scale = torch.full((out,), math.sqrt(2.0 / n), dtype=f64)
    scale[0] /= math.sqrt(2.0)
    hw = torch.arange(kh * kw, dtype=f64)
    psi = (2 * hw[None, :] * cg + 1) * phi[:, None]  # (out, kk)
    # Re[P Z] = s cos(psi) Re Z + s sin(psi) Im Z  with P = s exp(-i psi)
    k = torch.stack([scale[:, None] * torch.cos(psi), scale[:, None] * torch.sin(psi)], 0)
    k = k.view(2, groups, og, kh * kw).transpose(0, 1).reshape(2 * out, 1, kh, kw)
    return e.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype)


@dataclass
class ConvSparsePlan:
    """The non-zeros of a conv's ``S`` grouped by kernel offset: for offset ``hw``, positions
    ``sel`` (into ``values``), output channels ``rows`` and global input channels ``chans``."""

    offsets: list[tuple[int, int, torch.Tensor, torch.Tensor, torch.Tensor]]


def _conv_sparse_plan(layer: Layer) -> ConvSparsePlan:
    idx = layer.indices
    cached = layer.__dict__.get("_dctps_cplan")
    if cached is not None and cached[0] is idx and cached[1] == version(idx):
        return cached[2]
    plan = _make_conv_sparse_plan(layer, idx)
    layer.__dict__["_dctps_cplan"] = (idx, version(idx), plan)
    return plan


@_outside_inference
def _make_conv_sparse_plan(layer: Layer, idx: torch.Tensor) -> ConvSparsePlan:
    out, cg, kh, kw = layer.weight_shape
    kk = kh * kw
    o = idx // (cg * kk)
    rem = idx % (cg * kk)
    c = rem // kk + (o // (out // layer.groups)) * cg
    hw = rem % kk
    offsets = []
    for k in torch.unique(hw).tolist():
        sel = torch.nonzero(hw == k).flatten()
        offsets.append((k // kw, k % kw, sel, o[sel], c[sel]))
    return ConvSparsePlan(offsets)


def _window(t: torch.Tensor, h: int, w: int, layer: Layer, ho: int, wo: int) -> torch.Tensor:
    """The strided view of a padded ``(B, C, Hp, Wp)`` tensor read by kernel offset ``(h, w)``."""
    dh, dw = layer.dilation
    sh, sw = layer.stride
    return t[
        :, :, h * dh : h * dh + sh * (ho - 1) + 1 : sh, w * dw : w * dw + sw * (wo - 1) + 1 : sw
    ]


def _sparse_conv(
    x: torch.Tensor, values: torch.Tensor, layer: Layer, plan: ConvSparsePlan, ho: int, wo: int
) -> torch.Tensor:
    """``conv2d(x, S)`` by shifted sums (see :class:`SparseConv2dFunction`) with out-of-place,
    differentiable ops: the recompute its double backward differentiates."""
    left, right, top, bottom = _explicit_padding(layer)
    xp = F.pad(x, (left, right, top, bottom))
    y = x.new_zeros(x.shape[0], layer.weight_shape[0], ho, wo)
    for h, w, sel, rows, chans in plan.offsets:
        win = _window(xp.index_select(1, chans), h, w, layer, ho, wo)
        y = y.index_add(1, rows, win * values[sel].view(-1, 1, 1))
    return y


class SparseConv2dFunction(torch.autograd.Function):
    """``y = conv2d(x, S)`` for a sparse ``S`` without unfolding: for each kernel offset, gather
    the input channels its non-zeros read (whole padded planes, contiguous), take the offset's
    strided window, scale by the values and ``index_add`` into the output channels.
    Cost ``O(nnz * B * H * W)``; nothing of the weight's size is formed. Saved for backward: the
    input (padded again there). Double backward differentiates :func:`_sparse_conv`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, values: torch.Tensor, layer: Layer,  # type: ignore[override]
                plan: ConvSparsePlan, ho: int, wo: int) -> torch.Tensor:  # fmt: skip
        xp = _padded(x, layer)
        y = x.new_zeros(x.shape[0], layer.weight_shape[0], ho, wo)
        for h, w, sel, rows, chans in plan.offsets:
            win = _window(xp.index_select(1, chans), h, w, layer, ho, wo)
            y.index_add_(1, rows, win * values[sel].view(-1, 1, 1))
        # x, not xp: an input keeps its autograd history when unpacked, which double backward needs
        ctx.save_for_backward(x, values)
        ctx.layer, ctx.plan, ctx.geom = layer, plan, (ho, wo)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):  # type: ignore[override]
        x, values = ctx.saved_tensors
        layer, plan = ctx.layer, ctx.plan
        ho, wo = ctx.geom
        need_x, need_v = ctx.needs_input_grad[:2]
        if torch.is_grad_enabled():  # create_graph=True: these gradients must be differentiable
            dx, dvalues = _recompute_grads(
                lambda t, s: _sparse_conv(t, s, layer, plan, ho, wo),
                (x, values),
                (need_x, need_v),
                g,
            )
            return dx, dvalues, None, None, None, None
        left, _, top, _ = _explicit_padding(layer)
        xp = _padded(x, layer)
        g = g.contiguous()
        dx = dvalues = None
        dxp = torch.zeros_like(xp) if need_x else None
        if need_v:
            dvalues = torch.empty_like(values)
        for h, w, sel, rows, chans in plan.offsets:
            gs = g.index_select(1, rows)
            if dvalues is not None:  # i.e. need_v
                win = _window(xp.index_select(1, chans), h, w, layer, ho, wo)
                dvalues[sel] = (gs * win).sum((0, 2, 3))
            if dxp is not None:
                buf = xp.new_zeros(xp.shape[0], rows.numel(), *xp.shape[2:])
                torch.mul(gs, values[sel].view(-1, 1, 1), out=_window(buf, h, w, layer, ho, wo))
                dxp.index_add_(1, chans, buf)
        if dxp is not None:
            dx = dxp[:, :, top : top + x.shape[2], left : left + x.shape[3]]
        return dx, dvalues, None, None, None, None


def _padded(x: torch.Tensor, layer: Layer) -> torch.Tensor:
    """``x`` zero padded by the layer's padding, contiguous."""
    left, right, top, bottom = _explicit_padding(layer)
    xp = F.pad(x, (left, right, top, bottom)) if (left or right or top or bottom) else x
    return xp.contiguous()


@_not_traced
def factor_conv2d(layer: Layer, x: torch.Tensor) -> torch.Tensor:
    """The factorised path of a :class:`~dctps.layers.DCTpSConv2d` (see the comment above):
    ``alpha * D x`` as a 1x1 conv to ``2 out`` channels plus a depthwise conv, ``S x`` as
    :class:`SparseConv2dFunction`. ``D`` and ``W`` are never formed. Dtypes as
    :func:`fast_linear`."""
    if getattr(layer, "offset", "dct") != "dct":
        raise DctpsError(
            f"offset {layer.offset!r} has no factor path (only 'dct' factorises): use "
            "mode='fast', 'dense' or 'auto'"
        )
    check_conv_input(layer, x)
    prec = _precision(layer, x)
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    e, k = _factor_weights(layer, x.device, prec.work)
    alpha, values, bias = _params(layer, prec.work)
    out, groups = layer.weight_shape[0], layer.groups
    with prec.scope(x):
        xw = x.to(prec.work)
        z = F.conv2d(xw, e, None, 1, 0, 1, groups)
        if alpha.dim():  # per channel: the depthwise channels are (group, Re/Im, filter in group)
            alpha = alpha.view(groups, 1, -1).expand(groups, 2, out // groups).reshape(-1, 1, 1, 1)
        q = F.conv2d(z, k * alpha, None, layer.stride, layer.padding, layer.dilation, 2 * out)
        b, _, ho, wo = q.shape
        y = q.view(b, groups, 2, out // groups, ho, wo).sum(2).view(b, out, ho, wo)
        if layer.nnz:
            plan = _conv_sparse_plan(layer)
            y = y + SparseConv2dFunction.apply(xw, values, layer, plan, ho, wo)
        elif values.requires_grad:  # an empty S: a zero gradient, as the other paths give
            y = y + values.sum()
        if bias is not None:
            y = y + bias.view(-1, 1, 1)
    y = y.to(prec.out)
    return y.squeeze(0) if unbatched else _like_conv2d(y, x)


# ------------------------------------------------------------------------------------------------
# mode='auto': measure once per signature, among the paths the cost model allows
# ------------------------------------------------------------------------------------------------

_AUTO: dict[tuple, str] = {}
_AUTO_TIMES: dict[tuple, dict[str, float]] = {}
_GENERATION = [0]  # bumped by clear_auto_cache, so the layers' memos of decisions expire


def auto_generation() -> int:
    """A counter that :func:`clear_auto_cache` increments (keys the layers' per-call memos)."""
    return _GENERATION[0]


def auto_cache() -> dict[tuple, tuple[str, dict[str, float]]]:
    """A copy of the ``mode='auto'`` decisions: key -> (path, {path: seconds measured}).

    The times are empty where the cost model left only the dense path (nothing was measured).
    """
    return {k: (v, dict(_AUTO_TIMES.get(k, {}))) for k, v in _AUTO.items()}


def clear_auto_cache() -> None:
    """Forget every ``mode='auto'`` decision (they are re-measured on the next call)."""
    _AUTO.clear()
    _AUTO_TIMES.clear()
    _GENERATION[0] += 1


def candidates(layer: Layer) -> list[str]:
    """The paths ``mode='auto'`` times for ``layer``: ``'dense'`` plus those the cost model allows.

    Per output position the dense product costs ``out * fan`` multiply-adds (``fan`` = in, or
    ``C_g * kh * kw``).

    * ``'fast'`` (FFT) costs about ``5 N log2 N`` flops (a real FFT of length
      ``N = max(out, fan)`` forward, its inverse backward) and moves the ``fan``-long patch a few
      times; it is timed only where that is under half the dense cost, and never for grouped convs
      (one FFT per group).
    * ``'factor'`` (convs with a kernel larger than 1x1) costs ``2 out C_g s_h s_w + 2 out kh kw``;
      it is timed only where that is under 0.6 of the dense cost (so never for depthwise convs).

    On 2 CPU cores (``benchmarks/bench_conv.py``) no path outside these bounds came near dense.
    """
    out = layer.weight_shape[0]
    fan = math.prod(layer.weight_shape[1:])
    dense = out * fan
    res = ["dense"]
    offset = getattr(layer, "offset", "dct")
    if not _offsets.has_fast_path(offset):  # e.g. 'gaussian': dense only
        return res
    groups = getattr(layer, "groups", 1)
    n = _offsets.hadamard_size(out, fan) if offset == "hadamard" else max(out, fan)
    if groups == 1 and 5.0 * n * math.log2(max(n, 2)) < 0.5 * dense:
        res.append("fast")
    kernel = getattr(layer, "kernel_size", None)
    if offset == "dct" and kernel is not None and kernel[0] * kernel[1] > 1:
        cg = layer.weight_shape[1]
        sh, sw = layer.stride
        factor = 2 * out * cg * sh * sw + 2 * out * kernel[0] * kernel[1]
        if factor < 0.6 * dense:
            res.append("factor")
    return res


def size_bucket(n: int) -> int:
    """``n`` rounded up to a power of two (0 stays 0): the batch size (conv) or row count
    (Linear) that ``mode='auto'`` keys its decisions on. Every path's cost grows linearly in it,
    so inputs within a factor of two share one measurement, and a model fed sequences of many
    lengths measures O(log) times, not once per length."""
    return 1 << (n - 1).bit_length() if n > 0 else 0


def _key(layer: Layer, x: torch.Tensor) -> tuple:
    conv = getattr(layer, "kernel_size", None) is not None
    geometry: tuple = (
        (
            layer.stride,
            layer.padding,
            layer.dilation,
            layer.groups,
            (size_bucket(math.prod(x.shape[:-3])), *x.shape[-3:]),
        )
        if conv
        else (size_bucket(math.prod(x.shape[:-1])),)
    )
    return (
        "conv" if conv else "linear",
        tuple(layer.weight_shape),
        layer.nnz,
        getattr(layer, "offset", "dct"),
        layer.alpha.numel(),
        *geometry,
        str(x.device),
        x.dtype,
        torch.is_grad_enabled(),
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _run_once(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad: bool) -> float:
    xi = x.detach().requires_grad_(grad and x.is_floating_point())
    _sync(x.device)
    t0 = time.perf_counter()
    with torch.set_grad_enabled(grad):
        y = fn(xi)
        if grad:
            y.backward(torch.ones_like(y))
    _sync(x.device)
    return time.perf_counter() - t0


#: a transform path must beat dense by this factor to be chosen (ties and noise go to dense)
AUTO_MARGIN = 0.95


def choose(layer: Layer, x: torch.Tensor, paths: dict[str, Callable], reps: int = 3) -> str:
    """The path ``mode='auto'`` takes for ``layer`` on inputs like ``x`` (cached per signature).

    The signature is the layer's weight shape, nnz, stride/padding/dilation/groups, the input shape
    (its batch size, or a Linear's row count, rounded up to a power of two: :func:`size_bucket`),
    device, dtype and grad mode. Each path in :func:`candidates` runs on a detached copy of ``x``
    with detached copies of the layer's parameters (the user's graph, ``.grad`` and RNG are
    untouched), forward plus backward when grad is enabled; after one warm-up run each, ``reps``
    interleaved rounds are timed and each path's best run counts. A non-dense path is chosen only if
    it beats dense by :data:`AUTO_MARGIN` (noise and ties go to the dense path, the one
    ``torch.compile`` uses). When the winner never needs ``D``, a ``D`` built for timing is freed.
    """
    key = _key(layer, x)
    hit = _AUTO.get(key)
    if hit is not None:
        return hit
    names = [p for p in candidates(layer) if p in paths]
    if names == ["dense"]:
        _AUTO[key] = "dense"
        return "dense"
    grad = torch.is_grad_enabled()
    saved = dict(layer.named_parameters(recurse=False))
    times: dict[str, float] = {}
    # a D built ahead of use (dctps.layers.PREBUILT) is freed like one built for the timing
    had_basis = getattr(layer, "basis_built", True) and not layer.__dict__.get(PREBUILT)
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection must not land in one path's timing
    try:
        for n, p in saved.items():  # detached twins: timing must not touch the real .grad
            setattr(layer, n, nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad))
        for name in names:  # warm-up: allocator, FFT plans, lazy D, index plans
            _run_once(paths[name], x, grad)
        for _ in range(reps):  # interleaved, so a burst of load hits every path alike
            for name in names:
                t = _run_once(paths[name], x, grad)
                times[name] = min(times.get(name, math.inf), t)
    finally:
        for n, p in saved.items():
            # straight into the dict: under torch.func.functional_call p is a plain tensor, which
            # nn.Module.__setattr__ refuses for a parameter's name
            layer._parameters[n] = p
        if gc_was_enabled:
            gc.enable()
    path = min(times, key=times.__getitem__)
    if path != "dense" and times[path] > AUTO_MARGIN * times["dense"]:
        path = "dense"
    _AUTO[key] = path
    _AUTO_TIMES[key] = times
    if path != "dense" and not had_basis and hasattr(layer, "_drop_basis"):
        layer._drop_basis()
    elif path == "dense":
        layer.__dict__.pop(PREBUILT, None)  # in use now: no later choice frees it
    return path
