"""The Triton rebuild of ``W = alpha * D + S`` (:mod:`dctps.triton_rebuild`) against the built-in
operators' :func:`dctps.layers.op_rebuild`, values and gradients.

On CUDA the kernels run compiled; elsewhere in Triton's interpreter (``TRITON_INTERPRET=1``, set
by ``conftest.py``), which runs each program in turn: it checks the arithmetic, the rows' support
ranges and the last-program reduction, not the barrier or the memory ordering between programs,
which only a GPU exercises (``tests/test_cuda.py`` and these tests, run there).
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

from dctps import layers
from dctps import triton_rebuild as tr
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
        (5, 2100, 300),  # rows longer than a block (1024)
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
    ],
)
def test_a_layer_on_the_kernels_equals_the_builtin_operators(make, monkeypatch):
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
