"""The Triton rebuild of ``W = alpha * D + S`` (:mod:`dctps.triton_rebuild`) against the built-in
operators' :func:`dctps.layers.op_rebuild`, values and gradients.

On CUDA the kernels run compiled; elsewhere in Triton's interpreter (``TRITON_INTERPRET=1``, set
by ``conftest.py``), which runs each program in turn: it checks the arithmetic, the rows' support
ranges and the last-program reduction, not the barrier or the memory ordering between programs,
which only a GPU exercises (``tests/test_cuda.py`` and these tests, run there).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
import os
import pathlib
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from dctps import layers
from dctps import triton_rebuild as tr
from dctps.dct import conv_dct_basis, dct_basis
from dctps.layers import DCTpSConv2d, DCTpSLinear, op_rebuild

pytestmark = pytest.mark.skipif(
    not tr.available(),
    reason="Triton is not installed (CPU builds of torch do not bring it; `pip install -e "
    '".[test]"` does on Linux x86-64)',
)
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")


def _case(rows, fan, nnz, per_row, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    d = torch.randn(rows, fan, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    idx = torch.sort(torch.randperm(rows * fan, generator=g)[:nnz]).values.to(DEVICE)
    vals = torch.randn(nnz, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    shape = (rows, 1) if per_row else ()
    alpha = (torch.rand(shape, generator=g, dtype=torch.float64) + 0.5).to(DEVICE, dtype)
    return d, alpha.requires_grad_(), idx, vals.requires_grad_()


def _both(d, alpha, idx, vals, seed=1):
    """(W, d alpha, d values) of the kernels and of op_rebuild for one random upstream gradient
    ``g``, and ``g``."""
    out = []
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(d.numel(), generator=gen, dtype=torch.float64).to(d)
    for f in (
        lambda: tr.rebuild(d, alpha, idx, vals, tr.workspace()),
        lambda: op_rebuild(d, alpha, idx, vals),
    ):
        w = f()
        da, dv = torch.autograd.grad(w, (alpha, vals), g)
        out.append((w, da, dv))
    return out, g


@pytest.mark.parametrize(
    "rows,fan,nnz",
    [
        (8, 27, 20),  # a 3->8 k3 conv
        (5, 2100, 300),  # rows of 3 tiles (1024 entries each): split in 3 chunks
        (1, 5, 5),  # one row, fully dense S
        (3, 7, 0),  # no support at all
        (1100, 3, 700),  # more rows than one pass of the last program's sum (1024)
        (64, 576, 532),  # ResNet18's 64->64 k3 at its 0.1% budget
    ],
)
@pytest.mark.parametrize("per_row", [False, True])
def test_kernels_equal_the_builtin_operators_in_float64(rows, fan, nnz, per_row):
    d, alpha, idx, vals = _case(rows, fan, nnz, per_row, torch.float64)
    ((w, da, dv), (w0, da0, dv0)), _ = _both(d, alpha, idx, vals)
    assert w.shape == w0.shape == (rows * fan,)
    # the same products and sums (a GPU may fuse a multiply-add: one rounding fewer)
    torch.testing.assert_close(w, w0, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(da, da0, rtol=1e-12, atol=1e-12)
    assert da.shape == alpha.shape
    assert torch.equal(dv, dv0)  # a gather
    if nnz:  # the support positions are alpha*D + value, the others alpha*D
        flat_a = alpha.detach().reshape(-1).repeat_interleave(fan) if per_row else alpha.detach()
        plain = (flat_a * d.reshape(-1)).detach()
        torch.testing.assert_close(
            w.detach()[idx], plain[idx] + vals.detach(), rtol=1e-14, atol=1e-14
        )


@pytest.mark.parametrize("per_row", [False, True])
def test_whole_rows_give_what_rows_split_in_chunks_give(per_row, monkeypatch):
    """One program per row, and each row split in 3 (the default for 5 rows of 3 tiles)."""
    d, alpha, idx, vals = _case(5, 2100, 300, per_row, torch.float64)
    got = []
    for programs, split in ((1, 1), (512, 3)):
        monkeypatch.setattr(tr, "_PROGRAMS", programs)
        assert tr._plan(5, 2100, None)[2] == split
        ((w, da, dv), (w0, da0, dv0)), _ = _both(d, alpha, idx, vals)
        torch.testing.assert_close(w, w0, rtol=1e-14, atol=1e-14)
        torch.testing.assert_close(da, da0, rtol=1e-12, atol=1e-12)
        assert torch.equal(dv, dv0)
        got.append((w, da))
    assert torch.equal(got[0][0], got[1][0])  # the same products, whoever writes them
    torch.testing.assert_close(got[0][1], got[1][1], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("per_row", [False, True])
def test_kernels_in_low_precision_stay_within_rounding(dtype, per_row):
    d, alpha, idx, vals = _case(16, 300, 400, per_row, dtype)
    ((w, da, dv), (w0, da0, dv0)), g = _both(d, alpha, idx, vals)
    assert w.dtype == da.dtype == dv.dtype == dtype
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(w.float(), w0.float(), rtol=2 * eps, atol=2 * eps)
    # d alpha: both sum in float32 (the operators round each product to dtype first); each is
    # within a few roundings of the float64 sum, relative to the sum of the terms' magnitudes
    terms = g.double().view(16, -1) * d.double()
    exact = terms.sum(1) if per_row else terms.sum()
    scale = terms.abs().sum(1) if per_row else terms.abs().sum()
    for got in (da, da0):
        assert ((got.double().reshape(exact.shape) - exact).abs() <= 4 * eps * scale).all()
    assert torch.equal(dv, dv0)


@pytest.mark.parametrize(
    "nnz,rows,fan,programs",
    [(0, 400, 97, 1024), (1, 400, 97, 1024), (127, 400, 97, 1024), (128, 400, 97, 1024),
     (129, 400, 97, 1024), (16385, 400, 97, 1024),
     (5000, 4, 4500, 1024), (5000, 4, 4500, 1)],  # 5 chunks of a row; whole rows
)  # fmt: skip
def test_the_forward_places_each_value_once_at_its_index(nnz, rows, fan, programs, monkeypatch):
    """The forward's K-ary search (128 probes a round) of each chunk's support, with entries
    on row and chunk boundaries and empty rows among the rows: every value lands at its index,
    once, and the counter is zeroed for the backward."""
    monkeypatch.setattr(tr, "_PROGRAMS", programs)
    g = torch.Generator().manual_seed(nnz)
    # row starts, and (long rows) the chunks' starts: blocks of 1024 entries
    bounds = torch.arange(0, rows * fan // 2, fan if fan < 1024 else 1024)
    edges = torch.cat([bounds, bounds + fan - 1])[: nnz // 2]  # rows' first and last entries
    pool = torch.randperm(rows * fan // 2, generator=g)  # the first half: the last rows empty
    rest = pool[~torch.isin(pool, edges)][: nnz - edges.numel()]
    idx = torch.sort(torch.cat([edges, rest])).values.to(DEVICE)
    assert idx.numel() == nnz
    assert tr.chunks(rows, fan, 64, 16) == (1 if programs == 1 else math.ceil(fan / 1024))
    d = torch.zeros(rows, fan, device=DEVICE)
    vals = torch.arange(1, nnz + 1, dtype=torch.float32, device=DEVICE)
    done = tr._forward(d, torch.ones((), device=DEVICE), idx, vals, tr.workspace())
    assert done is not None
    w, count = done
    assert count.item() == 0  # zeroed for the backward
    assert torch.equal(w.nonzero().flatten(), idx)
    assert torch.equal(w[idx], vals)  # each added once, at its own index


def test_scalar_d_alpha_is_the_same_in_every_run():
    d, alpha, idx, vals = _case(1100, 33, 900, False, torch.float32)
    ws = tr.workspace()
    w = tr.rebuild(d, alpha, idx, vals, ws)
    g = torch.randn_like(w)
    first = torch.autograd.grad(w, alpha, g, retain_graph=True)[0]
    for _ in range(3):
        assert torch.equal(torch.autograd.grad(w, alpha, g, retain_graph=True)[0], first)
    # the fixed-order sum of float64 row sums, as an independent reference
    exact = (g.double().view(1100, 33) * d.double()).sum()
    assert abs(first.double().item() - exact.item()) <= 1e-5 * exact.abs().item() + 1e-5


@pytest.mark.parametrize("need", ["alpha", "values"])
def test_only_the_gradients_asked_for(need):
    d, alpha, idx, vals = _case(6, 40, 30, True, torch.float64)
    alpha.requires_grad_(need == "alpha")
    vals.requires_grad_(need == "values")
    w = tr.rebuild(d, alpha, idx, vals, tr.workspace())
    w.backward(torch.ones_like(w))
    if need == "alpha":
        assert vals.grad is None
        torch.testing.assert_close(alpha.grad.reshape(-1), d.sum(1), rtol=1e-12, atol=1e-12)
    else:
        assert alpha.grad is None
        assert torch.equal(vals.grad, torch.ones_like(vals))


def test_a_changed_support_is_seen_in_place_and_as_a_new_tensor():
    d, alpha, idx, vals = _case(10, 50, 60, False, torch.float64)
    ws = tr.workspace()
    tr.rebuild(d, alpha, idx, vals, ws)
    for how in ("in place", "new tensor"):
        g = torch.Generator().manual_seed(7 if how == "in place" else 8)
        new = torch.sort(torch.randperm(500, generator=g)[:60]).values.to(DEVICE)
        if how == "in place":
            idx.copy_(new)  # as RigL does: the same storage, a new version
        else:
            idx = new
        w = tr.rebuild(d, alpha, idx, vals, ws)
        torch.testing.assert_close(w, op_rebuild(d, alpha, idx, vals), rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("per_row", [False, True])
def test_a_second_derivative_through_the_kernels_equals_the_operators(per_row):
    d, alpha, idx, vals = _case(4, 9, 5, per_row, torch.float64)
    got = []
    for f in (tr.rebuild, lambda d, a, i, v, ws: op_rebuild(d, a, i, v)):
        w = f(d, alpha, idx, vals, tr.workspace())
        ga, gv = torch.autograd.grad((w * w).sum(), (alpha, vals), create_graph=True)
        got.append(torch.autograd.grad(ga.sum() + gv.square().sum(), (alpha, vals)))
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert got[0][0].abs().sum() > 0  # d2/dalpha2 = 2 sum(D^2) per row: not silently zero


def test_what_the_kernels_refuse():
    d, alpha, idx, vals = _case(4, 9, 5, False, torch.float64)
    assert not tr.usable(d, alpha, idx, vals.float())  # mixed dtypes
    assert not tr.usable(
        d, torch.ones(3, dtype=d.dtype, device=DEVICE), idx, vals
    )  # 3 alphas, 4 rows
    assert not tr.usable(d[:0], alpha, idx, vals)  # an empty weight
    with pytest.raises(ValueError, match="alpha of 3"):
        tr.rebuild(d, torch.ones(3, dtype=d.dtype, device=DEVICE), idx, vals, tr.workspace())


_EXTENDED = pytest.mark.skipif(
    np.finfo(np.longdouble).eps > 1e-18,
    reason="numpy's long double is float64 on this platform: no extended-precision reference",
)


def _dct_reference(shape):
    """``D`` of a DCTpS weight of ``shape`` in numpy's extended precision (x86's 80-bit long
    double), straight from the definition with the angle reduced in integers: the kernels'
    split angle sum is checked against it, not against itself."""
    out, cin, window = shape[0], shape[1], math.prod(shape[2:])
    fan = cin * window
    n = max(out, fan)
    o = np.arange(out, dtype=np.int64)[:, None]
    j = np.arange(fan, dtype=np.int64)[None, :]  # (h, w, c)-flattened patch, channel fastest
    m = (o * (2 * j + 1)) % (4 * n)
    pi = np.longdouble("3.141592653589793238462643383279502884")
    c = np.sqrt(np.longdouble(2) / n) * np.cos(pi * m.astype(np.longdouble) / (2 * n))
    c[0] = np.sqrt(np.longdouble(1) / n)
    if len(shape) == 4:
        c = c.reshape(out, shape[2], shape[3], cin).transpose(0, 3, 1, 2)
    return c.astype(np.float64), float(np.sqrt(2.0 / n))


def _library_dct(shape, dtype):
    if len(shape) == 4:
        return conv_dct_basis(shape[0], shape[1], shape[2], shape[3], dtype=dtype)
    return dct_basis(shape[0], shape[1], dtype=dtype)


@pytest.mark.parametrize(
    "shape",
    [
        (8, 3, 3, 3),  # a 3->8 k3 conv (fan > out)
        (6, 2, 3, 2),  # a non-square window
        (16, 3, 1, 1),  # a 1x1 conv: a Linear's layout
        (3, 2, 7, 7),  # a 7x7 stem's window
        (70, 4, 3, 3),  # out > fan: truncated the other way
        (5, 40),
        (130, 70),  # rows past one tile's phase steps, out > fan
        (7, 1),
        (1, 1),
        (8, 200, 3, 3),  # 4 blocks of 64 channels a row: chunks that start mid-row
        (5, 3000),  # 3 blocks of 1024 a row
    ],
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@_EXTENDED
def test_the_kernels_compute_the_dct_within_a_few_roundings(shape, dtype, monkeypatch):
    """Where the offset is the DCT the kernels compute ``D`` instead of reading it: ``W`` for
    ``alpha = 1`` and no support is ``D``, within 4 roundings (of the largest entry) of the
    extended-precision one, forward and backward."""
    monkeypatch.setattr(tr, "MIN_DCT_TILES_WINDOW", 0)
    monkeypatch.setattr(tr, "MIN_DCT_TILES", 0)  # these rows are short: computed only so
    layout = tr.dct_layout(shape)
    assert layout is not None and layout.n == max(shape[0], math.prod(shape[1:]))
    ref, top = _dct_reference(shape)
    d = _library_dct(shape, dtype).to(DEVICE)
    alpha = torch.ones((), dtype=dtype, device=DEVICE, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    vals = torch.zeros(0, dtype=dtype, device=DEVICE)
    w = tr.rebuild(d, alpha, empty, vals, tr.workspace(layout)).view(shape)
    # 4 roundings of the largest entry (measured in the interpreter: up to 2.9); bfloat16: one
    # of its own
    tol = (1 if dtype == torch.bfloat16 else 4) * torch.finfo(dtype).eps * top
    err = (w.detach().double().cpu() - torch.from_numpy(ref)).abs().max().item()
    assert err <= tol, f"{shape} {dtype}: |W - D| = {err:.3g} > {tol:.3g}"
    # the cached D is read nowhere: a D of zeros gives the same W
    w0 = tr.rebuild(torch.zeros_like(d), alpha, empty, vals, tr.workspace(layout))
    assert torch.equal(w0, w.reshape(-1))
    # d alpha = <dW, D>, D computed in the backward too
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (da,) = torch.autograd.grad(w, alpha, g.to(DEVICE, dtype))
    exact = (g.to(dtype).double() * torch.from_numpy(ref)).sum().item()
    size = (g.abs() * torch.from_numpy(ref).abs()).sum().item()
    # a few roundings of the float32 (float64) sum; a bfloat16 D and d alpha are rounded too
    eps = torch.finfo(torch.float32 if dtype == torch.bfloat16 else dtype).eps
    bound = 8 * eps * size + (torch.finfo(dtype).eps * size if dtype == torch.bfloat16 else 0)
    assert abs(da.double().item() - exact) <= bound


@_EXTENDED
def test_the_computed_dct_stays_exact_where_the_angle_is_large(monkeypatch):
    """``N = 40000``: a direct ``cos(pi k (2 j + 1) / (2 N))`` in float64 loses ``1e-16`` of an
    argument up to ``pi N``; the kernels reduce it in integers first."""
    shape = (24, 40000)
    monkeypatch.setattr(tr, "_PROGRAMS", 1)  # whole rows of 40 tiles: D computed
    layout = tr.dct_layout(shape)
    assert tr.computes_dct(24, 40000, layout)
    ref, top = _dct_reference(shape)
    alpha = torch.ones((), dtype=torch.float64, device=DEVICE)
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    d = torch.zeros(shape, dtype=torch.float64, device=DEVICE)  # not read
    w = tr.rebuild(d, alpha, empty, empty.double(), tr.workspace(layout)).view(shape)
    eps = torch.finfo(torch.float64).eps
    assert (w.cpu() - torch.from_numpy(ref)).abs().max().item() <= 4 * eps * top


def test_which_layers_compute_the_dct():
    assert tr.dct_layout((64, 32, 3, 3)) == tr.DctLayout(n=288, q=9, sp=1, sq=32)
    assert tr.dct_layout((10, 300)) == tr.DctLayout(n=300, q=64, sp=64, sq=1)
    assert tr.dct_layout((8, 4, 1, 1)) == tr.DctLayout(n=8, q=64, sp=64, sq=1)
    assert tr.dct_layout((8, 1, 33, 33)) is None  # a window too wide for one tile row: read D
    assert tr.dct_layout((8, 4, 3)) is None  # not a Linear or Conv2d weight
    # computed where each program's part of a row spans 8 tiles or more in a Linear's layout,
    # 128 in a conv window's (where its 9 positions pad to 16 lanes, computing rarely pays)
    for shape, computed in (
        ((512, 512, 3, 3), False),
        ((512, 16384, 3, 3), True),
        ((128, 8192, 3, 3), False),  # 128 tiles, split in 4 chunks
        ((512, 256, 1, 1), False),
        ((512, 256, 8, 8), False),  # a window of 64 positions: 16 tiles, read
        ((512, 16384, 1, 1), True),  # a 1x1 conv: a Linear's layout
        ((8192, 8192), True),
        ((600, 8192), True),
        ((600, 7168), False),
        ((64, 65536), True),
        ((64, 32768), False),  # 8 chunks a row
    ):
        fan = math.prod(shape[1:])
        assert tr.computes_dct(shape[0], fan, tr.dct_layout(shape)) == computed, shape
    # per-channel alphas' backward sums whole rows: 32 tiles a program
    assert tr.computes_dct(64, 32768, tr.dct_layout((64, 32768)), split=False)


@pytest.mark.parametrize("programs,computed", [(512, False), (4, True)])
def test_the_kernels_read_d_exactly_where_they_do_not_compute_it(programs, computed,
                                                                 monkeypatch):  # fmt: skip
    """4 rows of 2 tiles: split in two chunks of 1 tile at 512 programs (below the 2 tiles a
    program needs to compute D here), whole at 4."""
    monkeypatch.setattr(tr, "MIN_DCT_TILES", 2)
    monkeypatch.setattr(tr, "_PROGRAMS", programs)
    shape = (4, 2048)
    assert tr._plan(4, 2048, tr.dct_layout(shape))[2] == (2 if programs == 512 else 1)
    alpha = torch.ones((), dtype=torch.float64, device=DEVICE)
    empty = torch.zeros(0, dtype=torch.int64, device=DEVICE)
    zeros = torch.zeros(shape, dtype=torch.float64, device=DEVICE)
    w = tr.rebuild(zeros, alpha, empty, empty.double(), tr.workspace(tr.dct_layout(shape)))
    assert bool(w.abs().max() > 0) == computed
    if computed:
        d = dct_basis(4, 2048, dtype=torch.float64).to(DEVICE)
        torch.testing.assert_close(w.view(shape), d, rtol=0, atol=1e-15)


def _launch_record(monkeypatch):
    """Record every kernel launch's ``(kernel, args, constants)`` (and still launch it)."""
    seen = []
    launch = tr._launch

    def record(kernel, grid, device, *args, **consts):
        seen.append((kernel, args, consts))
        return launch(kernel, grid, device, *args, **consts)

    monkeypatch.setattr(tr, "_launch", record)
    return seen


def _types(args):
    """Triton's signature types of a launch's runtime arguments."""
    names = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32",
             torch.float64: "fp64", torch.int32: "i32", torch.int64: "i64"}  # fmt: skip
    return [
        "*" + names[a.dtype]
        if isinstance(a, torch.Tensor)
        else ("i64" if abs(a) >= 2**31 else "i32")
        for a in args
    ]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_fixed_alpha_launches_the_backward_warm_up_compiled(dtype, monkeypatch):
    """A capture cannot load a kernel: every backward a capture may launch (d alpha asked for
    or not) must have the argument types of the one :func:`warm_up` compiled."""
    monkeypatch.setattr(tr, "MIN_DCT_TILES_WINDOW", 0)
    monkeypatch.setattr(tr, "MIN_DCT_TILES", 0)
    seen = _launch_record(monkeypatch)
    d, alpha, idx, vals = _case(6, 27, 20, False, dtype)
    ws = tr.workspace(tr.dct_layout((6, 3, 3, 3)))
    assert tr.warm_up(d, alpha, idx, vals, ws)
    warm = [(k, _types(a), c) for k, a, c in seen]
    for need_alpha in (True, False):
        seen.clear()
        w = tr.rebuild(d, alpha.detach().requires_grad_(need_alpha), idx, vals, ws)
        w.backward(torch.ones_like(w))
        assert [(k, _types(a), c) for k, a, c in seen] == warm


def test_an_unaligned_gradient_is_copied_for_the_warm_kernel(monkeypatch):
    """Triton compiles a kernel per pointer alignment (16 bytes or not); warm_up compiled the
    backward for an aligned dW, so an unaligned one (a view at an offset) is copied first: a
    capture cannot compile another."""
    seen = _launch_record(monkeypatch)
    d, alpha, idx, vals = _case(6, 27, 20, False, torch.float32)
    w = tr.rebuild(d, alpha, idx, vals, tr.workspace())
    big = torch.randn(w.numel() + 1, device=DEVICE)
    g = big[1:]  # 4 bytes past an aligned start
    assert g.data_ptr() % 16 and g.is_contiguous()
    da, dv = torch.autograd.grad(w, (alpha, vals), g)
    ((_, args, _),) = [r for r in seen if r[0] is tr._backward_kernel]
    assert args[0].data_ptr() % 16 == 0
    da0, dv0 = torch.autograd.grad(op_rebuild(d, alpha, idx, vals), (alpha, vals), g)
    torch.testing.assert_close(da, da0)
    assert torch.equal(dv, dv0)


_PTXAS = (
    pathlib.Path(tr.triton.__file__).parent / "backends/nvidia/bin/ptxas"
    if tr.available()
    else None
)

# Compiles each recorded launch in a fresh interpreter without TRITON_INTERPRET, where
# triton.jit makes compilable kernels (the interpreter's wrappers cannot be compiled).
_COMPILE = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from dctps import triton_rebuild as tr
for name, signature, consts in json.loads(sys.stdin.read()):
    for arch in (80, 90):
        src = ASTSource(fn=getattr(tr, name), signature=signature, constexprs=consts)
        cubin = triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm["cubin"]
        assert cubin[:4] == b"\\x7fELF", (name, arch)
        print(name, arch, len(cubin))
"""


@pytest.mark.skipif(CUDA, reason="on a GPU the other tests compile and run the kernels")
@pytest.mark.skipif(
    _PTXAS is None or not _PTXAS.exists(),
    reason="Triton's NVIDIA backend (its ptxas) is not installed: the kernels cannot be compiled "
    "for a GPU here",
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_the_kernels_compile_for_gpus(dtype, monkeypatch, tmp_path):
    """The interpreter runs the kernels as Python, so it accepts what a GPU compiler refuses
    (a loop-carried value changing type, a layout it cannot convert): every launch a layer of
    these shapes makes, with the computed-DCT and the read-D variants, one alpha or one per row,
    is compiled for an A100 and an H100 (no GPU needed: Triton lowers to PTX and runs its
    bundled ptxas)."""
    monkeypatch.setattr(tr, "MIN_DCT_TILES_WINDOW", 0)
    monkeypatch.setattr(tr, "MIN_DCT_TILES", 0)  # compute D in these short rows too
    seen = _launch_record(monkeypatch)
    for shape in ((64, 32, 3, 3), (10, 300), (3, 24000)):  # the last: int64 phases
        for layout in (tr.dct_layout(shape), None):
            for per_row in (False, True):
                d = _library_dct(shape, dtype).to(DEVICE)
                rows = shape[0]
                g = torch.Generator().manual_seed(0)
                idx = torch.sort(torch.randperm(d.numel(), generator=g)[:50]).values.to(DEVICE)
                vals = torch.randn(50, generator=g).to(DEVICE, dtype)
                alpha = torch.ones((rows, 1) if per_row else (), dtype=dtype, device=DEVICE)
                assert tr.warm_up(d.view(rows, -1), alpha, idx, vals, tr.workspace(layout))
    assert len(seen) == 24
    jobs = []
    for kernel, args, consts in seen:
        fn = getattr(kernel, "fn", kernel)  # the Python function under the interpreter's wrapper
        params = [p for p in inspect.signature(fn).parameters if p not in consts]
        signature = dict(zip(params, _types(args), strict=True))
        signature.update({k: "constexpr" for k in consts})
        jobs.append((fn.__name__, signature, {k: v for k, v in consts.items()}))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", _COMPILE], input=json.dumps(jobs), env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert len(done.stdout.splitlines()) == 2 * len(jobs)


def _kernels_here(monkeypatch, capture=False):
    """Let layers take the kernels on this device (on the CPU only the interpreter runs them);
    ``capture``: as while a CUDA graph is captured, where they take the kernels in every call."""
    if not CUDA:
        monkeypatch.setattr(
            layers,
            "kernel_rebuild_usable",
            lambda d, a, i, v: tr.usable(d, a, i, v) and not layers.builtin_ops_only(),
        )
    if capture:
        monkeypatch.setattr(layers, "capturing", lambda device: True)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DCTpSConv2d(6, 10, 3, padding=1, nnz=40, seed=0, alpha="channel"),
        lambda: DCTpSConv2d(4, 6, (3, 2), stride=2, groups=2, nnz=15, seed=1),
        lambda: DCTpSLinear(30, 7, nnz=25, seed=2),  # truncating the other way
        lambda: DCTpSLinear(5, 40, nnz=25, seed=3, alpha="channel"),
        lambda: DCTpSConv2d(4, 6, 3, padding=1, nnz=20, seed=4, offset="hadamard"),  # D read
    ],
)
@pytest.mark.parametrize("compute", [False, True])
def test_a_layer_on_the_kernels_equals_the_builtin_operators(make, compute, monkeypatch):
    torch.manual_seed(0)
    ref = make().double().to(DEVICE)
    ref.mode = "dense"
    lay = copy.deepcopy(ref)
    if isinstance(ref, DCTpSConv2d):
        size = (ref.weight_shape[1] * ref.groups, 7, 7)
    else:
        size = (ref.weight_shape[1],)
    x = torch.randn(3, *size, dtype=torch.float64, device=DEVICE)
    monkeypatch.setattr(layers, "kernel_rebuild_usable", lambda *a: False)
    y0 = ref(x)
    y0.square().sum().backward()
    monkeypatch.undo()
    _kernels_here(monkeypatch, capture=True)
    if compute:  # these layers' rows are short: their D is read unless forced
        monkeypatch.setattr(tr, "MIN_DCT_TILES_WINDOW", 0)
        monkeypatch.setattr(tr, "MIN_DCT_TILES", 0)
    calls = []
    real = tr.rebuild
    monkeypatch.setattr(tr, "rebuild", lambda *a: calls.append(1) or real(*a))
    y = lay(x)
    assert calls == [1]  # the kernels ran
    y.square().sum().backward()
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    for name in ("alpha", "values"):
        torch.testing.assert_close(getattr(lay, name).grad, getattr(ref, name).grad,
                                   rtol=1e-10, atol=1e-12)  # fmt: skip
    # a copy of the layer carries none of the kernels' state (it caches the support's rows)
    assert layers.KERNEL_STATE not in copy.deepcopy(lay).__dict__
    assert layers.KERNEL_STATE not in pickle.loads(pickle.dumps(lay)).__dict__
    # a load_state_dict of another support keeps it (a captured graph reads its bounds), and
    # the next call uses the new support: the rows' ranges are searched in every call
    state = lay.__dict__[layers.KERNEL_STATE]
    # the kernels compute D where the offset is the DCT, and read it for the others
    assert state.layout == (tr.dct_layout(lay.weight_shape) if lay.offset == "dct" else None)
    assert (state.layout is None) == (lay.offset == "hadamard")
    other = make().double().to(DEVICE)
    lay.load_state_dict(other.state_dict())
    assert lay.__dict__[layers.KERNEL_STATE] is state
    other.mode = "dense"
    torch.testing.assert_close(lay(x), other(x), rtol=1e-12, atol=1e-12)


def test_traced_and_transformed_calls_take_the_builtin_operators(monkeypatch):
    _kernels_here(monkeypatch)
    lay = DCTpSLinear(8, 6, nnz=10, seed=0).double().to(DEVICE)
    lay.mode = "dense"
    x = torch.randn(2, 8, dtype=torch.float64, device=DEVICE)
    params = dict(lay.named_parameters())

    def loss(p):
        return torch.func.functional_call(lay, p, (x,)).square().sum()

    grads = torch.func.grad(loss)(params)  # torch.func has no rule for the kernels' Function
    assert layers.KERNEL_STATE not in lay.__dict__
    # a D built inside the transform is its wrapper: it must not be cached past it (the eager
    # call below could not hand a dead wrapper to Triton)
    assert lay._D is None or not torch._C._functorch.is_functorch_wrapped_tensor(lay._D)
    loss(params).backward()
    assert layers.KERNEL_STATE in lay.__dict__
    for k, g in grads.items():
        torch.testing.assert_close(g, params[k].grad, rtol=1e-12, atol=1e-12)


def test_eager_calls_take_the_operators_after_loading_the_kernels_and_captures_the_kernels(
    monkeypatch,
):
    """The first eager call compiles and loads both kernels on scratch outputs (nothing enters
    autograd, so a checkpoint's recomputation sees the same saved tensors); every eager call
    takes the operators, whose host time is lower; a capture takes the kernels."""
    _kernels_here(monkeypatch)
    calls, launched = [], []
    real, launch = tr.rebuild, tr._launch
    monkeypatch.setattr(tr, "rebuild", lambda *a: calls.append(1) or real(*a))
    monkeypatch.setattr(tr, "_launch", lambda k, *a, **c: launched.append(k) or launch(k, *a, **c))
    lay = DCTpSConv2d(4, 6, 3, nnz=20, seed=0, mode="dense").double().to(DEVICE)
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64, device=DEVICE)
    with torch.no_grad():
        y0 = lay(x)
    assert launched == [tr._forward_kernel, tr._backward_kernel] and not calls
    assert lay.__dict__[layers.KERNEL_STATE].warm
    lay(x).sum().backward()  # warm: no more launches
    assert len(launched) == 2 and not calls
    grads = (lay.alpha.grad.clone(), lay.values.grad.clone())
    lay.zero_grad()
    monkeypatch.setattr(layers, "capturing", lambda device: True)
    y = lay(x)  # while a CUDA graph is captured: the kernels, whose GPU time is the shorter
    y.sum().backward()
    assert len(calls) == 1 and len(launched) == 4
    torch.testing.assert_close(y, y0, rtol=1e-12, atol=1e-12)
    for a, b in zip(grads, (lay.alpha.grad, lay.values.grad), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    lay.to(DEVICE)  # a move to where it is: the state stays (a captured graph reads it)
    assert layers.KERNEL_STATE in lay.__dict__
    lay.float()  # a cast starts over: the kernels' state is per device and dtype
    assert layers.KERNEL_STATE not in lay.__dict__


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_first_calls_recompute_what_they_saved(reentrant, monkeypatch):
    """A review: the first calls took the kernels until both had run, so a non-reentrant
    checkpoint's recomputation (after the backward kernel ran) took the operators and saved
    other tensors: CheckpointError. Eager calls now always take the operators."""
    from torch.utils.checkpoint import checkpoint

    _kernels_here(monkeypatch)
    torch.manual_seed(0)
    ref = DCTpSLinear(8, 8, nnz=20, seed=0, mode="dense").double().to(DEVICE)
    lay = copy.deepcopy(ref)
    x = torch.randn(3, 8, dtype=torch.float64, device=DEVICE, requires_grad=True)

    def two(m, x):  # one layer in two checkpointed regions, as a pipeline's micro-batches
        h = checkpoint(m, x, use_reentrant=reentrant)
        return checkpoint(m, h.tanh(), use_reentrant=reentrant)

    two(lay, x).square().sum().backward()
    monkeypatch.setattr(layers, "kernel_rebuild_usable", lambda *a: False)
    two(ref, x).square().sum().backward()
    for name in ("alpha", "values"):
        torch.testing.assert_close(getattr(lay, name).grad, getattr(ref, name).grad,
                                   rtol=1e-12, atol=1e-12)  # fmt: skip


@pytest.mark.parametrize("which", ["_forward_kernel", "_backward_kernel"])
def test_a_gpu_triton_fails_on_warns_once_and_keeps_the_operators(which, monkeypatch):
    monkeypatch.setattr(tr, "_FAILED", {})

    class Unsupported:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("compute capability 6.0 is not supported\nmore")

            return launch

    monkeypatch.setattr(tr, which, Unsupported())
    d, alpha, idx, vals = _case(8, 27, 20, True, torch.float64)
    with pytest.warns(RuntimeWarning, match="compute capability 6.0.*built-in operators"):
        ((w, da, dv), (w0, da0, dv0)), _ = _both(d, alpha, idx, vals)
    torch.testing.assert_close(w, w0, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(da, da0, rtol=1e-12, atol=1e-12)
    assert torch.equal(dv, dv0)
    assert not tr.usable(d, alpha, idx, vals)  # the device is marked: layers take the operators
    assert "compute capability 6.0" in tr._FAILED[(d.device.type, d.device.index)]


@pytest.mark.skipif(CUDA, reason="checks the gate of a machine without CUDA")
def test_layers_on_the_cpu_never_take_the_kernels():
    lay = DCTpSLinear(8, 6, nnz=10, seed=0)
    lay.mode = "dense"
    lay(torch.randn(2, 8)).sum().backward()
    assert layers.KERNEL_STATE not in lay.__dict__
