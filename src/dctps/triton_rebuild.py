"""One-launch rebuilds of a DCTpS weight on CUDA, written in Triton (issue 11 (b) on a GPU).

The dense path of a DCTpS layer materialises ``W = alpha * D + S`` before its ``F.conv2d`` or
``F.linear``. With built-in operators (:func:`dctps.layers.op_rebuild`) that costs 3 kernels
forward (``mul``, the copy inside ``index_add``, ``index_add``) and 3 backward (``mul`` and ``sum``
for ``d alpha``, ``index_select`` for ``d values``), each 2-3 us of an H100's time however small
the weight: 6-16% of a small conv's GPU time. Here each direction is one kernel:

- forward, one program per row ``r`` of ``W`` viewed as ``(rows, fan)`` (``rows`` the output
  channels, ``fan`` the rest of ``weight_shape``): ``W[r, :] = a_r * D[r, :]``, then, after a block
  barrier, ``W[i] = a_r * D[i] + values[j]`` for the support entries ``i = indices[j]`` in that row
  (the barrier orders the second store after the first; ``indices`` are distinct, so each is
  written once). The rows' first entries, ``starts = searchsorted(indices, r * fan)``, are one
  small kernel before it;
- backward, one program per row: ``d values[j] = dW[indices[j]]`` for the row's entries, and the
  row's ``sum(dW[r, :] * D[r, :])``. With per-channel alphas that is ``d a_r``; with one alpha,
  the rows' partial sums are added by the last program to finish (a counter zeroed for each
  launch, counted up atomically), in row order, so ``d alpha`` is the same in every run (no
  float atomics).

Measured on an H100 (``benchmarks/RESULTS.md``, session 13), the kernels take less GPU time than
the operators (a lone conv as CUDA graphs: 1.02-1.12x ``nn.Conv2d``, against 1.04-1.26x), but
more host time: a Python autograd Function and two Triton launches cost more than six built-in
operators. So layers use them where host time is not spent per call: while a CUDA graph is
captured (:meth:`dctps.layers.DCTpSLayer.dense_weight`). Eager calls take the operators; the
first of a layer compiles and loads the kernels by launching them once on scratch outputs
(:func:`warm_up`: a capture can launch kernels but not load them), outside autograd, so what an
eager call saves for backward never depends on the kernels (a checkpoint's recomputation saves
what its forward saved).

Triton is optional: without it (a CPU-only torch) :func:`available` is ``False`` and layers keep
the built-in operators. ``TRITON_INTERPRET=1`` runs these kernels on the CPU, which is how the
tests check them without a GPU.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from typing import Any

import torch

try:  # optional: CUDA builds of torch bring Triton, CPU builds do not
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installed torch
    triton = None
    tl = None

__all__ = ["available", "rebuild", "usable"]

#: elements of a row handled per loop step, and support entries per loop step
_BLOCK = 1024
_SBLOCK = 128
#: dtypes the kernels are compiled for (float16/bfloat16 accumulate in float32)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def available() -> bool:
    """Whether Triton can be imported (it can launch on CUDA, or anywhere when interpreting)."""
    return triton is not None


def usable(
    d: torch.Tensor, alpha: torch.Tensor, indices: torch.Tensor, values: torch.Tensor
) -> bool:
    """Whether :func:`rebuild` takes these tensors: Triton present, all on one CUDA device (or
    the CPU under ``TRITON_INTERPRET=1``), floating dtypes it is compiled for, all equal."""
    if triton is None:
        return False
    dev = d.device
    if dev.type != "cuda" and not (dev.type == "cpu" and _interpreting()):
        return False
    if d.dtype not in _DTYPES or values.dtype != d.dtype or alpha.dtype != d.dtype:
        return False
    if d.dim() == 0 or d.numel() == 0 or alpha.numel() not in (1, d.shape[0]):
        return False
    if (dev.type, dev.index) in _FAILED:
        return False
    return indices.device == dev and values.device == dev and alpha.device == dev


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


#: devices where a kernel failed to compile or launch (a GPU Triton does not support): the
#: error, warned once; layers there keep the built-in operators
_FAILED: dict[tuple[str, int | None], str] = {}


def _launch(kernel: Any, grid: int, device: torch.device, *args: Any, **consts: Any) -> bool:
    """Launch ``kernel`` over ``grid`` programs; ``False``, with a warning, where Triton fails
    on ``device`` (then the caller computes the same with built-in operators)."""
    try:
        kernel[(grid,)](*args, **consts)
    except Exception as e:  # Triton's compile and launch errors have no common base class
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise  # a capture cannot go on; its warm-up ran the kernels, so this is no GPU's
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        _FAILED[(device.type, device.index)] = f"{type(e).__name__}: {first}"
        warnings.warn(
            f"dctps: the Triton rebuild kernels failed on {device} ({type(e).__name__}: "
            f"{first[:200]}); DCTpS layers there use torch's built-in operators instead (the "
            "same results up to float rounding; more GPU time under CUDA graphs)",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    return True


if triton is not None:

    @triton.jit
    def _entries(idx_ptr, k, s1, SBLOCK: tl.constexpr):
        """Support entries ``j = k .. k + SBLOCK - 1`` of a row whose entries end before ``s1``:
        ``(j, mask, indices[j])``."""
        j = k + tl.arange(0, SBLOCK)
        m = j < s1
        return j, m, tl.load(idx_ptr + j, mask=m, other=0)

    @triton.jit
    def _forward_kernel(
        d_ptr,
        alpha_ptr,
        idx_ptr,
        val_ptr,
        starts_ptr,
        w_ptr,
        fan,
        PER_ROW: tl.constexpr,
        WIDE: tl.constexpr,
        BLOCK: tl.constexpr,
        SBLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        if PER_ROW:
            a = tl.load(alpha_ptr + row)
        else:
            a = tl.load(alpha_ptr)
        if not WIDE:  # half types: the products in float32, rounded once
            a = a.to(tl.float32)
        base = row.to(tl.int64) * fan
        for k in range(0, fan, BLOCK):
            offs = k + tl.arange(0, BLOCK)
            m = offs < fan
            d = tl.load(d_ptr + base + offs, mask=m, other=0.0)
            if not WIDE:
                d = d.to(tl.float32)
            tl.store(w_ptr + base + offs, (a * d).to(w_ptr.dtype.element_ty), mask=m)
        tl.debug_barrier()  # the support's stores below must land after this row's plain ones
        s0 = tl.load(starts_ptr + row)
        s1 = tl.load(starts_ptr + row + 1)
        for k in range(s0, s1, SBLOCK):
            j, m, i = _entries(idx_ptr, k, s1, SBLOCK)
            v = tl.load(val_ptr + j, mask=m, other=0.0)
            d = tl.load(d_ptr + i, mask=m, other=0.0)
            if not WIDE:
                prod = (a * d.to(tl.float32)).to(w_ptr.dtype.element_ty).to(tl.float32)
                out = prod + v.to(tl.float32)
            else:
                out = a * d + v
            tl.store(w_ptr + i, out.to(w_ptr.dtype.element_ty), mask=m)

    @triton.jit(do_not_specialize=["need_alpha", "need_values"])
    def _backward_kernel(
        g_ptr,
        d_ptr,
        idx_ptr,
        starts_ptr,
        dval_ptr,
        part_ptr,
        count_ptr,
        dalpha_ptr,
        fan,
        rows,
        need_alpha,
        need_values,
        PER_ROW: tl.constexpr,
        BLOCK: tl.constexpr,
        SBLOCK: tl.constexpr,
        RBLOCK: tl.constexpr,
        ACC64: tl.constexpr,
    ):
        row = tl.program_id(0)
        if need_values != 0:  # runtime flags: one compiled kernel serves every combination
            s0 = tl.load(starts_ptr + row)
            s1 = tl.load(starts_ptr + row + 1)
            for k in range(s0, s1, SBLOCK):
                j, m, i = _entries(idx_ptr, k, s1, SBLOCK)
                tl.store(dval_ptr + j, tl.load(g_ptr + i, mask=m, other=0.0), mask=m)
        if need_alpha != 0:
            base = row.to(tl.int64) * fan
            if ACC64:
                acc = tl.zeros([BLOCK], dtype=tl.float64)
            else:
                acc = tl.zeros([BLOCK], dtype=tl.float32)
            for k in range(0, fan, BLOCK):
                offs = k + tl.arange(0, BLOCK)
                m = offs < fan
                g = tl.load(g_ptr + base + offs, mask=m, other=0.0)
                d = tl.load(d_ptr + base + offs, mask=m, other=0.0)
                acc += g.to(acc.dtype) * d.to(acc.dtype)
            s = tl.sum(acc, axis=0)
            if PER_ROW:
                tl.store(dalpha_ptr + row, s.to(dalpha_ptr.dtype.element_ty))
            else:
                # publish the partial, then count (the barrier puts every thread's store before
                # the counting thread's release); the last program to count adds the partials,
                # read through L2 by atomics, in row order: the same order whichever is last
                tl.store(part_ptr + row, s)
                tl.debug_barrier()
                done = tl.atomic_add(count_ptr, 1, sem="acq_rel")
                if done == rows - 1:
                    total = tl.zeros([RBLOCK], dtype=acc.dtype)
                    for k in range(0, rows, RBLOCK):
                        r = k + tl.arange(0, RBLOCK)
                        got = tl.atomic_add(part_ptr + r, 0.0, mask=r < rows)
                        total += tl.where(r < rows, got, 0.0)  # masked lanes return garbage
                    tl.store(dalpha_ptr, tl.sum(total, axis=0).to(dalpha_ptr.dtype.element_ty))


class _Workspace:
    """Per-layer state of the kernels, made by an eager call so that a CUDA graph's capture
    finds it: the rows' bounds ``r * fan`` (a capture that made them would replay their
    ``arange``) and whether :func:`warm_up` compiled and loaded the kernels (``warm``).

    The layer keeps it until its device or dtype changes: a captured graph reads ``bounds``."""

    __slots__ = ("bounds", "key", "warm")

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.bounds: torch.Tensor | None = None
        self.warm = False

    def row_starts(self, indices: torch.Tensor, rows: int, fan: int) -> torch.Tensor:
        """``starts[r]`` = the first ``j`` with ``indices[j] >= r * fan``, ``r = 0..rows``.

        Searched at every call (one small kernel), not cached: a captured graph then follows a
        support changed in place between replays (RigL's ``indices.copy_``), as the built-in
        operators' ``index_add`` does."""
        key = (rows, fan, indices.device, indices.dtype)
        if self.bounds is None or self.key != key:
            bounds = torch.arange(rows + 1, device=indices.device, dtype=indices.dtype) * fan
            self.bounds, self.key = bounds, key
        return torch.searchsorted(indices, self.bounds)


def on_device(device: torch.device) -> Any:
    """``torch.cuda.device(device)`` where ``device`` is a CUDA device other than the current
    one, else nothing: Triton launches, and ``torch.cuda.is_current_stream_capturing`` looks,
    on the current device and its stream."""
    if device.type == "cuda" and device.index is not None:
        if device.index != torch.cuda.current_device():
            return torch.cuda.device(device)
    return contextlib.nullcontext()


def _forward(
    d: torch.Tensor, alpha: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
    ws: _Workspace,
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """``(W flat, starts)`` by the forward kernel; ``None`` where Triton failed (warned)."""
    rows = d.shape[0]
    fan = d.numel() // rows
    with on_device(d.device):
        starts = ws.row_starts(indices, rows, fan)
        w = torch.empty(d.numel(), dtype=d.dtype, device=d.device)
        ok = _launch(
            _forward_kernel, rows, d.device, d, alpha, indices, values, starts, w, fan,
            PER_ROW=alpha.numel() != 1, WIDE=d.dtype in (torch.float32, torch.float64),
            BLOCK=_BLOCK, SBLOCK=_SBLOCK,
        )  # fmt: skip
    return (w, starts) if ok else None


def _backward(
    g: torch.Tensor, d: torch.Tensor, indices: torch.Tensor, starts: torch.Tensor,
    alpha_shape: torch.Size, need_alpha: bool, need_values: bool,
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """``(d alpha, d values)`` by the backward kernel (each valid where asked for); ``None``
    where Triton failed (warned)."""
    rows = d.shape[0]
    fan = d.numel() // rows
    per_row = math.prod(alpha_shape) != 1
    acc = torch.float64 if d.dtype == torch.float64 else torch.float32
    with on_device(d.device):
        dvalues = torch.empty(indices.numel(), dtype=d.dtype, device=d.device)
        dalpha = torch.empty(alpha_shape, dtype=d.dtype, device=d.device)
        if per_row or not need_alpha:
            part = count = dalpha  # not read
        else:  # the rows' partial sums and the last-program counter, fresh each call (two
            # launches, or two graphs replayed at once, never share them)
            part = torch.empty(rows, dtype=acc, device=d.device)
            count = torch.zeros(1, dtype=torch.int32, device=d.device)
        ok = _launch(
            _backward_kernel, rows, d.device,
            g, d, indices, starts, dvalues, part, count, dalpha, fan, rows,
            int(need_alpha), int(need_values),
            PER_ROW=per_row, BLOCK=_BLOCK, SBLOCK=_SBLOCK,
            RBLOCK=min(1024, triton.next_power_of_2(rows)), ACC64=acc == torch.float64,
        )  # fmt: skip
    return (dalpha, dvalues) if ok else None


def _backward_ops(
    ctx: Any,
    grad: torch.Tensor,
    d: torch.Tensor,
    indices: torch.Tensor,
    need_alpha: bool,
    need_values: bool,
) -> tuple[Any, ...]:
    """The backward with differentiable operators, linear in ``grad``: for a backward with
    ``create_graph=True`` (a gradient penalty, a Hessian-vector product) and where the kernels
    failed."""
    g = grad.reshape(d.shape[0], -1)
    dalpha = None
    if need_alpha:
        rows = (g * d.reshape(d.shape[0], -1)).sum(1)
        dalpha = (rows if ctx.per_row else rows.sum()).view(ctx.alpha_shape)
    dvalues = grad.reshape(-1)[indices] if need_values else None
    return dalpha, dvalues, None, None, None


class _TritonWeight(torch.autograd.Function):
    """Flat ``W = alpha * D + S`` with one Triton kernel each way (module docstring)."""

    @staticmethod
    def forward(ctx, alpha, values, d, indices, ws):  # type: ignore[override]
        d = d.contiguous()
        done = _forward(d, alpha, indices, values, ws)
        if done is None:
            w = torch.mul(d, alpha.view(-1, *[1] * (d.dim() - 1))).reshape(-1)
            w.index_add_(0, indices, values)
            starts = indices[:0]
        else:
            w, starts = done
        ctx.fallback = done is None
        ctx.save_for_backward(d, indices, starts)
        ctx.alpha_shape = alpha.shape
        ctx.per_row = alpha.numel() != 1
        return w

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        d, indices, starts = ctx.saved_tensors
        need_alpha, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_alpha or need_values):
            return None, None, None, None, None
        if torch.is_grad_enabled() or ctx.fallback:
            return _backward_ops(ctx, grad, d, indices, need_alpha, need_values)
        done = _backward(
            grad.contiguous(), d, indices, starts, ctx.alpha_shape, need_alpha, need_values
        )
        if done is None:
            return _backward_ops(ctx, grad, d, indices, need_alpha, need_values)
        dalpha, dvalues = done
        return (
            dalpha if need_alpha else None,
            dvalues if need_values else None,
            None,
            None,
            None,
        )


def warm_up(
    d: torch.Tensor,
    alpha: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    ws: _Workspace,
) -> bool:
    """Compile and load both kernels for this layer by launching each once on scratch outputs
    (a CUDA graph's capture can launch kernels but not load them), and make ``ws``'s state;
    nothing enters autograd. ``False`` where Triton failed on this device (warned; the layers
    there keep the built-in operators)."""
    with torch.no_grad():
        d = d.contiguous()
        done = _forward(d, alpha.detach(), indices, values.detach(), ws)
        if done is not None:
            w, starts = done
            ok = _backward(w, d, indices, starts, alpha.shape, True, True) is not None
            ws.warm = ok
            return ok
    return False


def rebuild(
    d: torch.Tensor,
    alpha: torch.Tensor,
    indices: torch.Tensor,
    values: torch.Tensor,
    ws: _Workspace,
) -> torch.Tensor:
    """Flat ``alpha * D + S`` (``D`` of shape ``(rows, ...)``; ``alpha`` one element or
    ``rows``; ``indices`` sorted, distinct flat positions), differentiable in ``alpha`` and
    ``values``, one kernel each way. ``ws`` is the calling layer's :class:`_Workspace`."""
    if not usable(d, alpha, indices, values):
        raise ValueError(
            f"triton_rebuild.rebuild: D {tuple(d.shape)} {d.dtype} on {d.device}, alpha of "
            f"{alpha.numel()} {alpha.dtype}, values {values.dtype}: see usable() for what it takes"
        )
    return _TritonWeight.apply(alpha, values.contiguous(), d, indices.contiguous(), ws)


def workspace() -> _Workspace:
    """A fresh :class:`_Workspace` (one per layer and device)."""
    return _Workspace()
