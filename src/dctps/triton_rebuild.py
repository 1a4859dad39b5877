"""One-launch rebuilds of a DCTpS weight on CUDA, written in Triton (issue 11 (b) on a GPU).

The dense path of a DCTpS layer materialises ``W = alpha * D + S`` before its ``F.conv2d`` or
``F.linear``. With built-in operators (:func:`dctps.layers.op_rebuild`) that costs 3 kernels
forward (``mul``, the copy inside ``index_add``, ``index_add``) and 3 backward (``mul`` and ``sum``
for ``d alpha``, ``index_select`` for ``d values``), each 2-3 us of an H100's time however small
the weight: 6-16% of a small conv's GPU time. Here each direction is one kernel:

- forward: ``W`` viewed as ``(rows, fan)`` (``rows`` the output channels, ``fan`` the rest of
  ``weight_shape``), one program per row, or per chunk of a row where the weight has fewer rows
  than a GPU wants programs (:func:`chunks`). A program finds its part's range of the sorted
  support (a ``K``-ary search of ``indices``), writes ``W[r, f0:f1] = a_r * D[r, f0:f1]``, then,
  after a block barrier, adds ``values[j]`` at its support entries ``i = indices[j]``
  (``W[i] += values[j]``, as ``index_add`` does; ``indices`` are distinct, so each is written
  once). Program ``(0, 0)`` also zeroes the backward's counter;
- backward, the same programs: ``d values[j] = dW[indices[j]]`` for an even share of the
  support, and the part's ``sum(dW[r, f0:f1] * D[r, f0:f1])``. With per-channel alphas (rows not
  split) that is ``d a_r``; with one alpha, the partial sums are added by the last program to
  finish (the forward's counter, counted up atomically, then set back to zero), in program
  order, so ``d alpha`` is the same in every run (no float atomics).

Where the offset is the paper's DCT (a :class:`DctLayout`), the kernels can compute ``D``'s
entries ``sqrt(2/N) cos(pi o (2 j + 1) / (2 N))`` in the tiles instead of reading them (the angle
split into a tile's column part and a per-row part, summed by ``cos(A + B) = cos A cos B - sin A
sin B``, each part reduced in integers to ``[0, pi/4]`` before any float work), so the forward
only writes the weight and the backward only reads ``dW``: half the bytes, at a few roundings of
``D``'s float type from the cached ``D`` (the tests bound it). Each program pays a setup for it,
so only parts long enough to repay it compute ``D`` (:func:`computes_dct`: measured, long rows
of a Linear's layout; a 3x3 conv's almost never); the others, and other offsets, read ``D``.

Measured as CUDA graphs (``benchmarks/RESULTS.md``, sessions 13 and 16), the kernels take less GPU
time than the operators (every conv shape of ResNet18 and VGG19: 1.02-1.09x ``nn.Conv2d`` in
``dctps bench conv``, where the operators took up to 1.26x; the rebuild alone, forward and
backward, 8-13 us against 13-35 us on those convs), but more host time: a Python autograd Function
and two Triton launches cost more than six built-in operators. So layers use them where host time
is not spent per call: while a CUDA graph is captured
(:meth:`dctps.layers.DCTpSLayer.dense_weight`). Eager calls take the operators; the first of a
layer compiles and loads the kernels by launching them once on scratch outputs (:func:`warm_up`: a
capture can launch kernels but not load them), outside autograd, so what an eager call saves for
backward never depends on the kernels (a checkpoint's recomputation saves what its forward saved).

Triton is optional: without it (a CPU-only torch) :func:`available` is ``False`` and layers keep
the built-in operators. ``TRITON_INTERPRET=1`` runs these kernels on the CPU, which is how the
tests check them without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
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

__all__ = ["available", "DctLayout", "dct_layout", "rebuild", "usable", "workspace"]

#: elements of a row per tile, support entries per loop step, and probes per round of the
#: rows' support search
_TILE = 1024
_SBLOCK = 128
_PROBES = 128
#: programs a launch aims at: a weight of fewer rows has them split into chunks until about
#: this many run (:func:`chunks`). Measured on an H200 (``benchmarks/rebuild_kernels.py``,
#: ``benchmarks/RESULTS.md`` session 16): a 3x3 conv of 128 rows of 73728 entries 113 us
#: forward+backward unsplit, 62 us at 512; 64 rows of 65536 (1x1) 31.6 us, 21.4 us; a weight of
#: 512 rows (not split at 512) 18.7 us unsplit, 23.4 us split in two at 1024
_PROGRAMS = 512
#: warps per program
_NUM_WARPS = 4
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


def _launch(
    kernel: Any, grid: tuple[int, int], device: torch.device, *args: Any, **consts: Any
) -> bool:
    """Launch ``kernel`` over ``grid`` programs; ``False``, with a warning, where Triton fails
    on ``device`` (then the caller computes the same with built-in operators)."""
    try:
        kernel[grid](*args, num_warps=_NUM_WARPS, **consts)
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
    def _row_range(idx_ptr, nnz, start, fan, K: tl.constexpr):
        """``(s0, s1)``: the first ``j`` in ``[0, nnz]`` with ``indices[j] >= start`` and the
        first with ``indices[j] >= start + fan`` (``indices`` sorted): a row's support.

        A ``K``-ary search of both at once: each round loads ``K`` evenly spaced probes of each
        gap ``[lo, hi)`` and keeps the part where its target falls (``s`` candidates leave at
        most ``ceil(s / K) - 1``), until both gaps are empty: about ``log_K(nnz)`` dependent
        loads (3 for 236k entries at ``K = 128``), not ``2 log_2(nnz)``."""
        which = tl.arange(0, 2).to(tl.int64)
        t = start + which * fan
        lo = which * 0
        hi = lo + nnz
        ks = tl.arange(0, K).to(tl.int64)
        while tl.max(hi - lo, axis=0) > 0:
            step = (hi - lo + (K - 1)) // K  # 0 for a search already done: it stays put
            p = lo[:, None] + ks[None, :] * step[:, None]
            m = p < hi[:, None]
            v = tl.load(idx_ptr + p, mask=m, other=0)
            below = tl.sum((m & (v < t[:, None])).to(tl.int64), axis=1)  # probes below: a prefix
            new_lo = tl.where(below > 0, lo + (below - 1) * step + 1, lo)
            hi = tl.minimum(lo + below * step, hi)
            lo = new_lo
        return tl.sum(tl.where(which == 0, lo, 0), axis=0), tl.sum(
            tl.where(which == 1, lo, 0), axis=0
        )

    @triton.jit
    def _cos_sin(m, n, step, F64: tl.constexpr):
        """``cos`` and ``sin`` of ``pi * m / (2 n)`` for integers ``0 <= m < 4 n``, in float64 if
        ``F64`` else float32; ``step`` is ``pi / (2 n)`` in float64.

        The angle is reduced in integers (quadrant, then the octant's complement), so the
        float work is on ``x = pi * r / (2 n)`` in ``[0, pi/4]`` only, by Taylor series (to
        ``x**19`` in float64, remainder under ``1e-19`` there; to ``x**11`` in float32, under
        ``1e-10``), with ``pi / (2 n)`` rounded once: a rounding or two from exact for any
        ``n``, where ``cos(pi * k * (2 j + 1) / (2 N))`` evaluated directly loses ``1e-16`` of
        its argument, which grows to ``pi * N``."""
        quad = (m >= n).to(tl.int32) + (m >= 2 * n).to(tl.int32) + (m >= 3 * n).to(tl.int32)
        rem = m - quad * n  # comparisons, not a division: this runs once per tile
        flip = 2 * rem > n
        r = tl.where(flip, n - rem, rem)
        if F64:
            x = r.to(tl.float64) * step
        else:
            x = r.to(tl.float32) * step.to(tl.float32)
        x2 = x * x
        # Horner's rule; the literals become x's dtype (float64 ones exactly)
        if F64:
            s = 1.0 - x2 * (1.0 / 342.0)
            s = 1.0 - x2 * (1.0 / 272.0) * s
            s = 1.0 - x2 * (1.0 / 210.0) * s
            s = 1.0 - x2 * (1.0 / 156.0) * s
            s = 1.0 - x2 * (1.0 / 110.0) * s
            c = 1.0 - x2 * (1.0 / 306.0)
            c = 1.0 - x2 * (1.0 / 240.0) * c
            c = 1.0 - x2 * (1.0 / 182.0) * c
            c = 1.0 - x2 * (1.0 / 132.0) * c
            c = 1.0 - x2 * (1.0 / 90.0) * c
        else:
            s = 1.0 - x2 * (1.0 / 110.0)
            c = 1.0 - x2 * (1.0 / 90.0)
        s = 1.0 - x2 * (1.0 / 72.0) * s
        s = 1.0 - x2 * (1.0 / 42.0) * s
        s = 1.0 - x2 * (1.0 / 20.0) * s
        s = 1.0 - x2 * (1.0 / 6.0) * s
        s = x * s
        c = 1.0 - x2 * (1.0 / 56.0) * c
        c = 1.0 - x2 * (1.0 / 30.0) * c
        c = 1.0 - x2 * (1.0 / 12.0) * c
        c = 1.0 - x2 * (1.0 / 2.0) * c
        c, s = tl.where(flip, s, c), tl.where(flip, c, s)
        cq = tl.where(quad == 0, c, tl.where(quad == 1, -s, tl.where(quad == 2, -c, s)))
        sq = tl.where(quad == 0, s, tl.where(quad == 1, c, tl.where(quad == 2, -s, -c)))
        return cq, sq

    @triton.jit
    def _dct_row(
        row, n, sp, sq, BP: tl.constexpr, QP: tl.constexpr, F64: tl.constexpr,
        PH64: tl.constexpr,
    ):  # fmt: skip
        """What a row's tiles of the truncated DCT share (:class:`DctLayout`), for row ``row``:
        ``scale * cos`` and ``scale * sin`` of the angle at each position of the first tile
        (``p = i < BP``, phase ``o * (2 i sp + 2 q sq)``, the odd ``+1`` left to the tiles'
        own part), the integer phase from one tile to the next and the first tile's
        (``pi / (2 N)`` each), ``N`` in the phases' integer type (int32 where ``4 N**2`` fits:
        ``PH64`` off), and ``pi / (2 N)`` in float64.

        Tiles of the tile's shape, not a row and a column of it: their products then stay in
        the tile's register layout (broadcasts of 1-D parts were converted through shared
        memory, with three barriers, in every tile)."""
        if PH64:
            o = row.to(tl.int64)
            nn = n.to(tl.int64)
        else:
            o = row
            nn = n
        step = 3.141592653589793 / (2.0 * n.to(tl.float64))
        n4 = 4 * nn
        scale = _scale(o, nn, F64)
        # the angle sum once more, here of a column and a row: BP + QP sines, not BP * QP
        ci, si = _cos_sin((o * (2 * tl.arange(0, BP)[:, None] * sp)) % n4, nn, step, F64)
        cq, sq_ = _cos_sin((o * (2 * tl.arange(0, QP)[None, :] * sq)) % n4, nn, step, F64)
        tcos = scale * (ci * cq - si * sq_)
        tsin = scale * (si * cq + ci * sq_)
        # the first tile's phase is o * (2 * 0 + 1) = o, below 4 N
        return tcos, tsin, (2 * BP * sp * o) % n4, o, nn, step

    @triton.jit
    def _dct_tile(phase, tile_step, n, step, tcos, tsin, F64: tl.constexpr):
        """``D[o, f]`` over a tile whose first position's phase ``o * (2 p sp + 1) mod 4 N`` is
        ``phase``: ``scale * cos(A + B) = cos A * (scale cos B) - sin A * (scale sin B)`` with
        ``A`` the tile's angle and ``(tcos, tsin)`` from :func:`_dct_row`, a few roundings
        from exact; and the next tile's phase."""
        c0, s0 = _cos_sin(phase, n, step, F64)
        after = phase + tile_step
        return c0 * tcos - s0 * tsin, tl.where(after >= 4 * n, after - 4 * n, after)

    @triton.jit
    def _scale(o, n, F64: tl.constexpr):
        """``C_N``'s row scale: ``sqrt(1 / N)`` for row 0, ``sqrt(2 / N)`` for the others."""
        nf = n.to(tl.float64)
        s = tl.where(o == 0, tl.sqrt(1.0 / nf), tl.sqrt(2.0 / nf))
        if F64:
            return s
        else:
            return s.to(tl.float32)

    @triton.jit
    def _chunk(fan, Q: tl.constexpr, BP: tl.constexpr):
        """Program ``(row, c)``'s tile rows ``[p0, p1)`` and row offsets ``[f0, f1)``: a row's
        ``cdiv(fan, Q)`` tile rows split into ``num_programs(1)`` chunks of whole ``BP``-blocks
        (a chunk past the row's end is empty: ``p0 >= p1``, ``f0 == f1 == fan``)."""
        tiles = tl.cdiv(fan, Q)
        per = tl.cdiv(tl.cdiv(tiles, BP), tl.num_programs(1)) * BP
        p0 = tl.program_id(1) * per
        p1 = tl.minimum(p0 + per, tiles)
        return p0, p1, tl.minimum(p0 * Q, fan), tl.minimum(p1 * Q, fan)

    @triton.jit(do_not_specialize=["nnz", "n", "sp", "sq"])
    def _forward_kernel(
        d_ptr,
        alpha_ptr,
        idx_ptr,
        val_ptr,
        count_ptr,
        w_ptr,
        fan,
        rows,
        nnz,
        n,
        sp,
        sq,
        PER_ROW: tl.constexpr,
        WIDE: tl.constexpr,
        F64: tl.constexpr,
        COMPUTED: tl.constexpr,
        PH64: tl.constexpr,
        Q: tl.constexpr,
        QP: tl.constexpr,
        BP: tl.constexpr,
        K: tl.constexpr,
        SBLOCK: tl.constexpr,
    ):
        row = tl.program_id(0)
        o = row.to(tl.int64)
        if PER_ROW:
            a = tl.load(alpha_ptr + row)
        else:
            a = tl.load(alpha_ptr)
        if not WIDE:  # half types: the products in float32, rounded once
            a = a.to(tl.float32)
        base = o * fan
        p0, p1, f0, f1 = _chunk(fan, Q, BP)
        # the chunk's support range; the d alpha counter zeroed for the backward
        s0, s1 = _row_range(idx_ptr, nnz, base + f0, f1 - f0, K)
        if row == 0:
            if tl.program_id(1) == 0:
                tl.store(count_ptr, 0)
        q = tl.arange(0, QP)
        if COMPUTED:
            tcos, tsin, tile_step, phase, nn, step = _dct_row(row, n, sp, sq, BP, QP, F64, PH64)
            phase = (phase * (2 * p0 * sp) + phase) % (4 * nn)  # o (2 p0 sp + 1) mod 4 N
        for k in range(p0, p1, BP):
            p = k + tl.arange(0, BP)
            f = p[:, None] * Q + q[None, :]
            m = (q[None, :] < Q) & (f < fan)
            if COMPUTED:  # D from its formula: the weight's bytes are written, none read
                d, phase = _dct_tile(phase, tile_step, nn, step, tcos, tsin, F64)
                d = d.to(w_ptr.dtype.element_ty)
            else:
                d = tl.load(d_ptr + base + f, mask=m, other=0.0)
            if not WIDE:
                d = d.to(tl.float32)
            tl.store(w_ptr + base + f, (a * d).to(w_ptr.dtype.element_ty), mask=m)
        # the support's entries: W[i] += values[j], as index_add does, after this chunk's plain
        # stores (the barrier makes a block's global stores visible to all its threads)
        tl.debug_barrier()
        for k in range(s0, s1, SBLOCK):
            j, m, i = _entries(idx_ptr, k, s1, SBLOCK)
            v = tl.load(val_ptr + j, mask=m, other=0.0)
            prod = tl.load(w_ptr + i, mask=m, other=0.0)
            if WIDE:
                out = prod + v
            else:
                out = prod.to(tl.float32) + v.to(tl.float32)
            tl.store(w_ptr + i, out.to(w_ptr.dtype.element_ty), mask=m)

    @triton.jit(do_not_specialize=["nnz", "need_alpha", "need_values", "n", "sp", "sq"])
    def _backward_kernel(
        g_ptr,
        d_ptr,
        idx_ptr,
        dval_ptr,
        part_ptr,
        count_ptr,
        dalpha_ptr,
        fan,
        rows,
        nnz,
        n,
        sp,
        sq,
        need_alpha,
        need_values,
        PER_ROW: tl.constexpr,
        COMPUTED: tl.constexpr,
        PH64: tl.constexpr,
        Q: tl.constexpr,
        QP: tl.constexpr,
        BP: tl.constexpr,
        SBLOCK: tl.constexpr,
        RBLOCK: tl.constexpr,
        ACC64: tl.constexpr,
    ):
        row = tl.program_id(0)
        o = row.to(tl.int64)
        progs = rows * tl.num_programs(1)
        pid = row * tl.num_programs(1) + tl.program_id(1)
        if need_values != 0:  # runtime flags: one compiled kernel serves every combination
            # d values[j] = dW[indices[j]]: the support split evenly over all programs
            e = tl.cdiv(nnz, progs).to(tl.int64)
            j0 = pid.to(tl.int64) * e
            j1 = tl.minimum(j0 + e, nnz)
            for k in range(j0, j1, SBLOCK):
                j, m, i = _entries(idx_ptr, k, j1, SBLOCK)
                tl.store(dval_ptr + j, tl.load(g_ptr + i, mask=m, other=0.0), mask=m)
        if need_alpha != 0:
            base = o * fan
            p0, p1, f0, f1 = _chunk(fan, Q, BP)
            if ACC64:
                acc = tl.zeros([BP, QP], dtype=tl.float64)
            else:
                acc = tl.zeros([BP, QP], dtype=tl.float32)
            q = tl.arange(0, QP)
            if COMPUTED:
                tcos, tsin, tile_step, phase, nn, step = _dct_row(
                    row, n, sp, sq, BP, QP, ACC64, PH64
                )
                phase = (phase * (2 * p0 * sp) + phase) % (4 * nn)
            for k in range(p0, p1, BP):
                p = k + tl.arange(0, BP)
                f = p[:, None] * Q + q[None, :]
                m = (q[None, :] < Q) & (f < fan)
                g = tl.load(g_ptr + base + f, mask=m, other=0.0)
                if COMPUTED:  # D from its formula: only dW is read
                    d, phase = _dct_tile(phase, tile_step, nn, step, tcos, tsin, ACC64)
                    d = tl.where(m, d.to(g_ptr.dtype.element_ty), 0.0)
                else:
                    d = tl.load(d_ptr + base + f, mask=m, other=0.0)
                acc += g.to(acc.dtype) * d.to(acc.dtype)
            s = tl.sum(tl.sum(acc, axis=1), axis=0)
            if PER_ROW:  # one chunk per row (_backward)
                tl.store(dalpha_ptr + row, s.to(dalpha_ptr.dtype.element_ty))
            else:
                # publish the partial, then count (the barrier puts every thread's store before
                # the counting thread's release); the last program to count adds the partials,
                # read through L2 by atomics, in program order: the same order whichever is
                # last, and sets the counter back to zero for a second backward (retain_graph)
                tl.store(part_ptr + pid, s)
                tl.debug_barrier()
                done = tl.atomic_add(count_ptr, 1, sem="acq_rel")
                if done == progs - 1:
                    total = tl.zeros([RBLOCK], dtype=acc.dtype)
                    for k in range(0, progs, RBLOCK):
                        r = k + tl.arange(0, RBLOCK)
                        got = tl.atomic_add(part_ptr + r, 0.0, mask=r < progs)
                        total += tl.where(r < progs, got, 0.0)  # masked lanes return garbage
                    tl.store(dalpha_ptr, tl.sum(total, axis=0).to(dalpha_ptr.dtype.element_ty))
                    tl.atomic_xchg(count_ptr, 0)


@dataclasses.dataclass(frozen=True)
class DctLayout:
    """Where the truncated DCT's entries lie in a weight's rows, for kernels that compute ``D``
    instead of reading it.

    Row ``o`` of ``D = C_N[:out, :fan]`` (:func:`dctps.dct.dct_basis`, ``N = max(out, fan)``),
    stored as the weight's row, is walked in tiles: row offset ``f = p * Q + q`` holds column
    ``j = p * sp + q * sq``, so its angle ``pi * o * (2 j + 1) / (2 N)`` splits into a part in
    ``p`` and a part in ``q``, and ``cos(A + B) = cos A cos B - sin A sin B`` costs two products
    per entry once a tile's ``p`` and ``q`` parts are known:

    - a ``kh x kw`` conv (``kh * kw > 1``; :func:`dctps.dct.conv_dct_basis` flattens a patch
      channel fastest) stores ``D[o, c, h, w]`` at ``f = c * Q + (h * kw + w)`` with column
      ``j = (h * kw + w) * cin + c``: ``Q = kh * kw``, ``sp = 1``, ``sq = cin``;
    - a Linear or a ``1 x 1`` conv stores column ``j`` at ``f = j``: ``Q = 64``, ``sp = 64``,
      ``sq = 1``.
    """

    n: int
    q: int
    sp: int
    sq: int


#: the span of a Linear's tiles (any power of two: ``f = p * 64 + q``)
_LINEAR_Q = 64
#: beyond this many positions in a conv's kernel window a tile is too wide: ``D`` is read
_MAX_WINDOW = 1024


def dct_layout(weight_shape: tuple[int, ...]) -> DctLayout | None:
    """The :class:`DctLayout` of a DCTpS Linear (``(out, in)``) or Conv2d (``(out, in/groups,
    kh, kw)``) weight whose offset is the paper's DCT; ``None`` for another shape or a conv
    window over ``1024`` positions (the kernels then read ``D``)."""
    if len(weight_shape) not in (2, 4) or 0 in weight_shape:
        return None
    out, cin = weight_shape[0], weight_shape[1]
    window = math.prod(weight_shape[2:])
    n = max(out, cin * window)
    if n >= 2**28:  # 4 N, the phases' modulus, would not fit the int32 a kernel argument is
        return None
    if window == 1:
        return DctLayout(n=n, q=_LINEAR_Q, sp=_LINEAR_Q, sq=1)
    if window > _MAX_WINDOW:
        return None
    return DctLayout(n=n, q=window, sp=1, sq=cin)


class _Workspace:
    """Per-layer state of the kernels: the layer's :class:`DctLayout` (``None``: the kernels
    read ``D``) and whether :func:`warm_up` compiled and loaded the kernels (``warm``) on this
    device and dtype, which a CUDA graph's capture needs (it can launch kernels, not load
    them). The layer drops it when its device or dtype changes."""

    __slots__ = ("layout", "warm")

    def __init__(self, layout: DctLayout | None = None) -> None:
        self.layout = layout
        self.warm = False


def on_device(device: torch.device) -> Any:
    """``torch.cuda.device(device)`` where ``device`` is a CUDA device other than the current
    one, else nothing: Triton launches, and ``torch.cuda.is_current_stream_capturing`` looks,
    on the current device and its stream."""
    if device.type == "cuda" and device.index is not None:
        if device.index != torch.cuda.current_device():
            return torch.cuda.device(device)
    return contextlib.nullcontext()


def computes_dct(rows: int, fan: int, layout: DctLayout | None, split: bool = True) -> bool:
    """Whether the kernels compute ``D`` for ``rows`` rows of ``fan`` entries in ``layout``
    rather than read it: where each program's part of a row (:func:`chunks`; the whole row
    where ``split`` is off) spans at least
    :data:`MIN_DCT_TILES` tiles of a Linear's (or 1x1 conv's) layout, or
    :data:`MIN_DCT_TILES_WINDOW` of a wider conv window's.

    Computing costs each program a setup (its tile's angles: about 800 instructions per thread
    compiled for sm_90, against 36 to read) and some instructions per tile, against half the
    bytes; measured on an H200 (``benchmarks/rebuild_kernels.py``, ``benchmarks/RESULTS.md``
    session 16), forward+backward, computed against read: Linear layout, 8 tiles a program
    17.9 against 21.4 us, 16 tiles 36.6 against 52.3 us; a 3x3 window, whose tiles pad its 9
    positions to 16, 8 tiles 18.9 against 13.1 us and 32 tiles 62.4 against 57.2 us, winning
    only at 128 tiles (113.0 against 121.4 us)."""
    if layout is None:
        return False
    bp = _tile_rows(layout.q)
    blocks = _blocks(fan, layout.q, bp)
    per_program = math.ceil(blocks / (chunks(rows, fan, layout.q, bp) if split else 1))
    # a Linear's layout walks a row 64 columns a tile row (sp = 64); a conv window, one channel
    # (sp = 1), an 8x8 window too, whose q is 64 as well: not measured, so read as windows are
    least = MIN_DCT_TILES if layout.sp == _LINEAR_Q else MIN_DCT_TILES_WINDOW
    return per_program >= least


def _pow2(q: int) -> int:
    """The smallest power of two ``>= q`` (Triton's tiles are powers of two)."""
    return 1 << (q - 1).bit_length()


def _tile_rows(q: int) -> int:
    """``BP``: the tile rows of ``q`` positions (padded to a power of two) in one tile."""
    return max(1, _TILE // _pow2(q))


def _blocks(fan: int, q: int, bp: int) -> int:
    """The tiles a row of ``fan`` entries spans: ``ceil(fan / q)`` tile rows, ``bp`` a tile."""
    return math.ceil(math.ceil(fan / q) / bp)


#: the fewest tiles per program for which the kernels compute the DCT in a Linear's layout, and
#: in a conv window's (:func:`computes_dct`)
MIN_DCT_TILES = 8
MIN_DCT_TILES_WINDOW = 128


def _plan(
    rows: int, fan: int, layout: DctLayout | None, split: bool = True
) -> tuple[tuple[int, int, int], dict[str, Any], int]:
    """``((n, sp, sq), constants, programs per row)`` of a kernel launch: the layout's runtime
    numbers; ``Q`` positions of a row per tile row (padded to ``QP``, a power of two), ``BP``
    tile rows per tile (a layout where computing ``D`` would not pay is read as no layout); and
    the chunks each row is split into (1 where ``split`` is off)."""
    if not computes_dct(rows, fan, layout, split):
        layout = None
    if layout is None:
        q, n, sp, sq = _LINEAR_Q, 1, 1, 1
    else:
        q, n, sp, sq = layout.q, layout.n, layout.sp, layout.sq
    bp = _tile_rows(q)
    return (n, sp, sq), {
        "COMPUTED": layout is not None, "Q": q, "QP": _pow2(q), "BP": bp,
        # a phase o * (2 j + 1) < 2 N**2 (and a tile's steps, 2048 o at most) in int32 when
        # 4 N**2 fits: int64 products and remainders cost many instructions on a GPU
        "PH64": 4 * n * n >= 2**31,
    }, chunks(rows, fan, q, bp) if split else 1  # fmt: skip


def chunks(rows: int, fan: int, q: int, bp: int) -> int:
    """Programs per row: a row of ``fan`` entries is ``ceil(fan / q)`` tile rows, in tiles of
    ``bp``; a weight of fewer than :data:`_PROGRAMS` rows has its rows split into chunks of
    whole tiles until about that many programs run (a weight of few long rows, the output
    channels of a deep conv, would otherwise leave most of a GPU idle), with no chunk empty."""
    blocks = _blocks(fan, q, bp)
    want = max(1, min(blocks, math.ceil(_PROGRAMS / max(rows, 1))))
    return math.ceil(blocks / math.ceil(blocks / want))


def _forward(
    d: torch.Tensor, alpha: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
    ws: _Workspace,
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """``(W flat, counter)`` by the forward kernel, which also zeroes the backward's counter;
    ``None`` where Triton failed (warned)."""
    rows = d.shape[0]
    fan = d.numel() // rows
    nnz = indices.numel()
    (n, sp, sq), tiles, per = _plan(rows, fan, ws.layout)
    with on_device(d.device):
        w = torch.empty(d.numel(), dtype=d.dtype, device=d.device)
        count = torch.empty(1, dtype=torch.int32, device=d.device)
        ok = _launch(
            _forward_kernel, (rows, per), d.device,
            d, alpha, indices, values, count, w,
            fan, rows, nnz, n, sp, sq,
            PER_ROW=alpha.numel() != 1, WIDE=d.dtype in (torch.float32, torch.float64),
            F64=d.dtype == torch.float64, K=_PROBES, SBLOCK=_SBLOCK, **tiles,
        )  # fmt: skip
    return (w, count) if ok else None


def _backward(
    g: torch.Tensor, d: torch.Tensor, indices: torch.Tensor, count: torch.Tensor,
    alpha_shape: torch.Size, need_alpha: bool, need_values: bool, layout: DctLayout | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """``(d alpha, d values)`` by the backward kernel (each valid where asked for); ``None``
    where Triton failed (warned). ``count`` is the forward's zeroed counter."""
    rows = d.shape[0]
    fan = d.numel() // rows
    per_row = math.prod(alpha_shape) != 1
    acc = torch.float64 if d.dtype == torch.float64 else torch.float32
    if g.data_ptr() % 16:  # warm_up compiled for an aligned dW (a fresh tensor, as autograd's
        g = g.clone()  # are): another alignment is another kernel, which a capture cannot load
    # per-channel alphas sum each row in one program; one alpha adds the chunks' partials
    (n, sp, sq), tiles, per = _plan(rows, fan, layout, split=not per_row)
    with on_device(d.device):
        dvalues = torch.empty(indices.numel(), dtype=d.dtype, device=d.device)
        dalpha = torch.empty(alpha_shape, dtype=d.dtype, device=d.device)
        # the rows' partial sums: fresh each call, so two launches, or two graphs replayed at
        # once, never share them; made even where d alpha is not asked for (a fixed alpha), so
        # a capture launches the kernel warm_up compiled, for the same argument types
        part = dalpha if per_row else torch.empty(rows * per, dtype=acc, device=d.device)
        ok = _launch(
            _backward_kernel, (rows, per), d.device,
            g, d, indices, dvalues, part, count, dalpha, fan, rows, indices.numel(), n, sp, sq,
            int(need_alpha), int(need_values),
            PER_ROW=per_row, SBLOCK=_SBLOCK,
            RBLOCK=min(1024, triton.next_power_of_2(rows * per)), ACC64=acc == torch.float64,
            **tiles,
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
            count = indices[:0]
        else:
            w, count = done
        ctx.fallback = done is None
        ctx.save_for_backward(d, indices, count)
        ctx.alpha_shape = alpha.shape
        ctx.per_row = alpha.numel() != 1
        ctx.layout = ws.layout
        return w

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        d, indices, count = ctx.saved_tensors
        need_alpha, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if not (need_alpha or need_values):
            return None, None, None, None, None
        if torch.is_grad_enabled() or ctx.fallback:
            return _backward_ops(ctx, grad, d, indices, need_alpha, need_values)
        done = _backward(
            grad.contiguous(), d, indices, count, ctx.alpha_shape, need_alpha, need_values,
            ctx.layout,
        )  # fmt: skip
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
    (a CUDA graph's capture can launch kernels but not load them) and mark ``ws`` warm;
    nothing enters autograd. ``False`` where Triton failed on this device (warned; the layers
    there keep the built-in operators)."""
    with torch.no_grad():
        d = d.contiguous()
        done = _forward(d, alpha.detach(), indices, values.detach(), ws)
        if done is not None:
            w, count = done
            ok = _backward(w, d, indices, count, alpha.shape, True, True, ws.layout)
            ws.warm = ok is not None
            return ws.warm
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
    ``values``, one kernel each way. ``ws`` is the calling layer's :class:`_Workspace`; where
    its layout is set, ``D`` must be the truncated DCT of that layout (the kernels compute its
    entries and read ``d`` only where they fail)."""
    if not usable(d, alpha, indices, values):
        raise ValueError(
            f"triton_rebuild.rebuild: D {tuple(d.shape)} {d.dtype} on {d.device}, alpha of "
            f"{alpha.numel()} {alpha.dtype}, values {values.dtype}: see usable() for what it takes"
        )
    return _TritonWeight.apply(alpha, values.contiguous(), d, indices.contiguous(), ws)


def workspace(layout: DctLayout | None = None) -> _Workspace:
    """A fresh :class:`_Workspace` (one per layer and device); ``layout``: the layer's
    :func:`dct_layout` where its offset is the DCT, so the kernels compute ``D``."""
    return _Workspace(layout)
