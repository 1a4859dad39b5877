"""The fast paths at their edges, each against an independent computation: second derivatives
(create_graph=True), inputs of the wrong shape or dtype, empty batches, half precision and
autocast, caches first built under inference_mode, and mode='auto' under torch.func,
torch.utils.checkpoint and a support that changes size.

The reference is ``W = alpha * D + S`` materialised with ``D`` from scipy's DCT matrix and run
through ``F.linear`` / ``F.conv2d`` in float64."""

import copy
import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

import dctps
import dctps.layers as layers_mod
from dctps import DCTpSConv2d, DctpsError, DCTpSLinear, set_mode
from dctps import fast as fastmod
from dctps._compat import TORCH_VERSION

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

F64 = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-10}


def scipy_d(m: int, n: int) -> torch.Tensor:
    """``C_N[:m, :n]``, ``N = max(m, n)``, from scipy (independent of dctps)."""
    c = scipy.fft.dct(np.eye(max(m, n)), norm="ortho", axis=0)[:m, :n]
    return torch.from_numpy(np.ascontiguousarray(c))


def ref_weight(layer, alpha, values):
    """``alpha * D + S`` in float64 from scipy's D, differentiable in ``alpha`` and ``values``."""
    shp = layer.weight_shape
    d = scipy_d(shp[0], math.prod(shp[1:]))
    if len(shp) == 4:  # the patch is flattened in (h, w, c) order
        o, cg, kh, kw = shp
        d = d.reshape(o, kh, kw, cg).permute(0, 3, 1, 2)
    a = alpha.to(F64)
    a = a if a.dim() == 0 else a.view(-1, *([1] * (len(shp) - 1)))
    v = values.to(F64)
    s = v.new_zeros(math.prod(shp)).index_put((layer.indices,), v).view(shp)
    return a * d + s


def ref_forward(layer, x, alpha, values, bias):
    w = ref_weight(layer, alpha, values)
    b = None if bias is None else bias.to(F64)
    if len(layer.weight_shape) == 2:
        return F.linear(x.to(F64), w, b)
    return F.conv2d(x.to(F64), w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


def randomise(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.values.copy_(torch.randn(layer.nnz, generator=g).to(layer.values.dtype))
        layer.alpha.copy_((torch.rand(layer.alpha.shape, generator=g) + 0.5).to(layer.alpha.dtype))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g).to(layer.bias.dtype))
    return layer


def params(layer):
    return [p for p in (layer.alpha, layer.values, layer.bias) if p is not None]


def path_fn(layer, path):
    return getattr(layer, layer._PATHS[path])


@pytest.fixture(params=["csr", "gather"])
def sparse_backend(request):
    old = fastmod._BACKEND["sparse"]
    fastmod._BACKEND["sparse"] = request.param
    yield request.param
    fastmod._BACKEND["sparse"] = old


# ------------------------------------------------------------------------------------------------
# second derivatives
# ------------------------------------------------------------------------------------------------


def second_order(forward, x, ps):
    """``d/d(x, params)`` of ``sum ||dL/dt||^2`` over ``t in (x, params)``, with ``L`` quadratic in
    the output (so the incoming gradient of the first backward itself has a graph)."""
    x = x.detach().clone().requires_grad_(True)
    y = forward(x)
    c = torch.linspace(-1, 1, y.numel(), dtype=F64).view(y.shape)
    loss = (c * y * y).sum() + (c.flip(0) * y).sum()
    grads = torch.autograd.grad(loss, [x, *ps], create_graph=True)
    z = sum((g * g).sum() for g in grads)
    return torch.autograd.grad(z, [x, *ps])


LINEARS = [  # inp, out, nnz, alpha, bias
    (16, 6, 20, "layer", True),
    (5, 12, 30, "channel", True),  # out > in: zero-padded transform
    (24, 24, 0, "layer", False),
]


@pytest.mark.parametrize("cfg", LINEARS, ids=[str(c) for c in LINEARS])
def test_fast_linear_second_derivatives_equal_materialised(cfg, sparse_backend):
    inp, out, nnz, alpha, bias = cfg
    layer = randomise(DCTpSLinear(inp, out, nnz, bias=bias, alpha=alpha, seed=1, dtype=F64))
    ps = params(layer)
    x = torch.randn(3, 2, inp, dtype=F64)
    ref = second_order(
        lambda t: ref_forward(layer, t, layer.alpha, layer.values, layer.bias), x, ps
    )
    got = second_order(path_fn(layer, "fast"), x, ps)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


CONVS = [  # cin, cout, k, stride, padding, groups, alpha, nnz
    (4, 6, 3, 1, 1, 1, "layer", 20),
    (4, 6, 3, 2, 0, 2, "channel", 15),
    (3, 40, 3, 1, "same", 1, "layer", 9),  # out > fan
]


@pytest.mark.parametrize("path", ["fast", "factor"])
@pytest.mark.parametrize("cfg", CONVS, ids=[str(c) for c in CONVS])
def test_conv_second_derivatives_equal_materialised(cfg, path):
    cin, cout, k, s, p, g, alpha, nnz = cfg
    layer = DCTpSConv2d(cin, cout, k, s, p, 1, g, nnz=nnz, alpha=alpha, seed=2, dtype=F64)
    randomise(layer)
    ps = params(layer)
    x = torch.randn(2, cin, 6, 7, dtype=F64)
    ref = second_order(
        lambda t: ref_forward(layer, t, layer.alpha, layer.values, layer.bias), x, ps
    )
    got = second_order(path_fn(layer, path), x, ps)
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


def test_hessian_vector_product_through_an_upstream_layer():
    """GraSP's Hessian-gradient product: before the fix, the fast path dropped the dependence of
    d alpha / d values on the upstream weight (a silently wrong second derivative)."""
    torch.manual_seed(0)
    up = torch.nn.Linear(10, 16).double()
    layer = randomise(DCTpSLinear(16, 6, 20, seed=2, dtype=F64))
    x = torch.randn(5, 10, dtype=F64)
    c = torch.randn(5, 6, dtype=F64)
    weights = [up.weight, layer.alpha, layer.values]
    s = [torch.randn_like(w) for w in weights]

    def hg(forward):
        loss = (forward(torch.tanh(up(x))) * c).sum()
        grads = torch.autograd.grad(loss, weights, create_graph=True)
        return torch.autograd.grad(
            sum((g * v).sum() for g, v in zip(grads, s, strict=True)), weights
        )

    ref = hg(lambda t: ref_forward(layer, t, layer.alpha, layer.values, layer.bias))
    got = hg(path_fn(layer, "fast"))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("offset", ["hadamard", "dct_signflip", "dct_permuted"])
def test_second_derivatives_of_other_offsets(offset):
    """No scipy reference for these offsets: gradgradcheck against finite differences."""
    lin = randomise(DCTpSLinear(9, 7, 12, seed=0, offset=offset, mode="fast", dtype=F64))
    conv = DCTpSConv2d(2, 5, 3, padding=1, nnz=8, seed=0, offset=offset, mode="fast", dtype=F64)
    randomise(conv)
    for layer, x in (
        (lin, torch.randn(3, 9, dtype=F64)),
        (conv, torch.randn(1, 2, 4, 4, dtype=F64)),
    ):
        a = layer.alpha.detach().clone().requires_grad_(True)
        v = layer.values.detach().clone().requires_grad_(True)

        def f(t, a, v, layer=layer):
            return functional_call(layer, {"alpha": a, "values": v}, (t,))

        assert torch.autograd.gradgradcheck(f, (x.requires_grad_(True), a, v))


# ------------------------------------------------------------------------------------------------
# bad inputs
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "factor", "auto"])
@pytest.mark.parametrize(
    "cin,cout,groups,xc", [(4, 3, 1, 6), (4, 3, 1, 3), (4, 64, 1, 6), (4, 4, 2, 6), (4, 4, 4, 8)]
)
def test_conv_wrong_channel_count_is_an_error(cin, cout, groups, xc, mode):
    conv = DCTpSConv2d(cin, cout, 3, groups=groups, nnz=5, seed=0, mode=mode)
    with pytest.raises(
        DctpsError, match=rf"expected input\[.*to have {cin} channels, but got {xc}"
    ):
        conv(torch.randn(1, xc, 8, 8))


@pytest.mark.parametrize("mode", ["fast", "auto"])
@pytest.mark.parametrize("shape", [(4, 4), (2, 16), (16,), (3, 12)])
def test_linear_wrong_feature_count_is_an_error(shape, mode):
    lin = DCTpSLinear(8, 5, 4, seed=0, mode=mode)
    with pytest.raises(DctpsError, match=r"expects an input of shape \(\.\.\., 8\)"):
        lin(torch.randn(*shape))


@pytest.mark.parametrize("path", ["fast", "factor"])
def test_conv_kernel_larger_than_input_is_an_error(path):
    conv = DCTpSConv2d(2, 4, 5, nnz=3, seed=0, mode=path)
    with pytest.raises(DctpsError, match="kernel can't be larger"):
        conv(torch.randn(1, 2, 3, 8))


@pytest.mark.parametrize("mode", ["dense", "fast", "factor", "auto"])
def test_a_wrong_input_shape_is_a_runtime_error_in_every_mode(mode):
    """``nn.Conv2d`` and the dense path refuse a wrong shape with a ``RuntimeError``; the transform
    paths refused it with a ``DctpsError`` (a ``ValueError``) only, so ``except RuntimeError``
    broke when the mode changed (a fuzzing review)."""
    conv = DCTpSConv2d(3, 4, 3, nnz=5, seed=0, mode=mode)
    bad = [torch.randn(1, 2, 5, 5), torch.randn(1, 3, 2, 5), torch.randn(3, 5)]
    for x in bad:
        with pytest.raises(RuntimeError):
            conv(x)
    if mode != "factor":
        lin = DCTpSLinear(5, 4, 3, seed=0, mode=mode)
        for x in (torch.randn(2, 6), torch.tensor(1.0)):
            with pytest.raises(RuntimeError):
                lin(x)


@pytest.mark.parametrize("mode", ["dense", "fast", "factor"])
def test_an_empty_support_gets_a_zero_gradient_in_every_mode(mode):
    """A layer with ``nnz = 0`` (built or loaded so): ``values.grad`` is an empty tensor, not
    ``None``, whichever path runs; the factor path had left it ``None``, so under ``auto`` its
    existence depended on the timer's pick."""
    conv = DCTpSConv2d(2, 3, 3, padding=1, nnz=0, seed=0, mode=mode)
    conv(torch.randn(1, 2, 4, 4)).sum().backward()
    assert conv.values.grad is not None and conv.values.grad.shape == (0,)
    assert conv.alpha.grad is not None and conv.alpha.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["dense", "fast", "factor"])
def test_a_channels_last_input_gives_a_channels_last_output_as_conv2d_does(mode):
    conv = DCTpSConv2d(4, 6, 3, padding=1, nnz=10, seed=0, mode=mode).double()
    x = torch.randn(2, 4, 5, 5, dtype=F64).contiguous(memory_format=torch.channels_last)
    ref = F.conv2d(x, conv.weight.detach(), conv.bias.detach(), padding=1)
    assert ref.is_contiguous(memory_format=torch.channels_last)
    y = conv(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, ref, **TOL)
    y = conv(x.contiguous())
    assert y.is_contiguous()
    torch.testing.assert_close(y, ref, **TOL)


@pytest.mark.parametrize("backend", ["csr", "gather"])
@pytest.mark.parametrize("kind,path", [("linear", "fast"), ("conv", "fast"), ("conv", "factor")])
def test_float32_layer_refuses_other_input_dtypes(kind, path, backend, monkeypatch):
    monkeypatch.setitem(fastmod._BACKEND, "sparse", backend)
    if kind == "linear":
        layer, x = DCTpSLinear(40, 30, 50, seed=0, mode=path), torch.randn(3, 40)
    else:
        layer, x = DCTpSConv2d(4, 6, 3, nnz=20, seed=0, mode=path), torch.randn(1, 4, 6, 6)
    for dtype in (torch.float64, torch.bfloat16):
        with pytest.raises(DctpsError, match=rf"input dtype {dtype} differs from the layer's.*"
                           rf"convert the layer \(layer.to\({dtype}\)\)"):  # fmt: skip
            layer(x.to(dtype))
    # an integer input: cast the input; converting the layer to int64 is no advice
    with pytest.raises(DctpsError, match=r"torch.int64 differs .*x.to\(torch.float32\)\)$"):
        layer(x.long())
    # a RuntimeError too, as the dense path's refusal is: one except clause catches every mode
    for mode in ("dense", path):
        layer.mode = mode
        with pytest.raises(RuntimeError):
            layer(x.double())


def test_set_mode_needs_a_module():
    with pytest.raises(DctpsError, match="set_mode needs an nn.Module, got NoneType"):
        set_mode(None, "fast")


# ------------------------------------------------------------------------------------------------
# empty batches
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dense", "fast", "factor", "auto"])
@pytest.mark.parametrize(
    "kind,shape",
    [
        ("linear", (0, 512)),
        ("linear", (4, 0, 512)),
        ("conv", (0, 16, 8, 8)),
        ("conv", (0, 16, 3, 5)),
    ],
)
def test_empty_input_in_every_mode(kind, shape, mode):
    fastmod.clear_auto_cache()
    if kind == "linear":
        layer = DCTpSLinear(512, 256, 300, seed=0, mode=mode, dtype=F64)
    else:
        layer = DCTpSConv2d(16, 32, 3, padding=1, nnz=100, seed=0, mode=mode, dtype=F64)
    randomise(layer)
    x = torch.randn(*shape, dtype=F64, requires_grad=True)
    y = layer(x)
    ref = ref_forward(layer, x.detach(), layer.alpha, layer.values, layer.bias)
    assert y.shape == ref.shape
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape
    for p in params(layer):  # an empty batch contributes nothing
        assert p.grad is None or not p.grad.any()
    assert fastmod.auto_cache() == {}  # nothing measured on an empty input


# ------------------------------------------------------------------------------------------------
# half precision and autocast
# ------------------------------------------------------------------------------------------------

HALF_TOL = {torch.bfloat16: 2**-7, torch.float16: 2**-10}


def _half_case(kind, dtype):
    if kind == "linear":
        layer, x = DCTpSLinear(64, 64, 400, seed=0), torch.randn(8, 64)
    else:
        layer, x = DCTpSConv2d(8, 16, 3, padding=1, nnz=60, seed=0), torch.randn(2, 8, 6, 6)
    return randomise(layer).to(dtype), x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,mode", [("linear", "fast"), ("conv", "fast"), ("conv", "factor")])
def test_half_layers_compute_in_float32(kind, mode, dtype, sparse_backend):
    layer, x = _half_case(kind, dtype)
    layer.mode = mode
    xi = x.clone().requires_grad_(True)
    y = layer(xi)
    assert y.dtype == dtype
    y.float().square().sum().backward()
    for p in (xi, *params(layer)):
        assert p.grad is not None and p.grad.dtype == dtype
    # computed in float32 from the half values, rounded once to the half output
    ref = ref_forward(layer, x, layer.alpha, layer.values, layer.bias).detach()
    tol = HALF_TOL[dtype] * float(ref.abs().max())
    torch.testing.assert_close(y.to(F64), ref, atol=tol, rtol=HALF_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_half_layers_in_auto_mode(kind, dtype):
    fastmod.clear_auto_cache()
    layer, x = _half_case(kind, dtype)
    layer.mode = "auto"
    assert len(fastmod.candidates(layer)) > 1  # the fast paths are timed (that crashed)
    y = layer(x.clone().requires_grad_(True))
    y.float().sum().backward()
    assert y.dtype == dtype and layer.values.grad.dtype == dtype
    ref = ref_forward(layer, x, layer.alpha, layer.values, layer.bias).detach()
    # the dense path may win, which rounds W to half as well
    torch.testing.assert_close(y.to(F64), ref, atol=0.05 * float(ref.abs().max()), rtol=0.05)


@pytest.mark.parametrize("kind,mode", [("linear", "fast"), ("conv", "fast"), ("conv", "factor")])
def test_autocast_output_dtype_of_explicit_fast_paths(kind, mode):
    if kind == "linear":
        layer, x = DCTpSLinear(70, 30, 40, seed=0, mode=mode), torch.randn(8, 70)
    else:
        layer, x = (
            DCTpSConv2d(8, 16, 3, padding=1, nnz=30, seed=0, mode=mode),
            torch.randn(2, 8, 5, 5),
        )
    randomise(layer)
    for xin in (x, x.to(torch.bfloat16)):  # autocast feeds layers float32 and bfloat16 inputs
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(xin)
        assert y.dtype == torch.bfloat16  # as nn.Linear / nn.Conv2d under autocast
        ref = ref_forward(layer, xin, layer.alpha, layer.values, layer.bias).detach()
        tol = HALF_TOL[torch.bfloat16] * float(ref.abs().max())
        torch.testing.assert_close(y.to(F64), ref, atol=tol, rtol=HALF_TOL[torch.bfloat16])
        y.float().sum().backward()
        assert layer.alpha.grad is not None and layer.alpha.grad.dtype == torch.float32


def test_auto_takes_the_dense_path_under_autocast_without_measuring():
    fastmod.clear_auto_cache()
    layer = randomise(DCTpSLinear(700, 300, 400, seed=0, mode="auto"))
    assert len(fastmod.candidates(layer)) > 1
    x = torch.randn(8, 700)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        ref = F.linear(x, layer.dense_weight(), layer.bias)
    assert y.dtype == torch.bfloat16 and torch.equal(y, ref)
    assert fastmod.auto_cache() == {}


# ------------------------------------------------------------------------------------------------
# caches first built under inference_mode
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind,mode,offset",
    [("conv", "factor", "dct"), ("conv", "fast", "dct_signflip"),
     ("linear", "fast", "dct_signflip"), ("linear", "fast", "dct")],
)  # fmt: skip
def test_caches_first_built_in_inference_mode_still_train(kind, mode, offset):
    # sizes no other test uses, so the module-level transform cache is built here, in inference
    if kind == "linear":
        layer, x = DCTpSLinear(37, 53, 40, seed=0, offset=offset, dtype=F64), torch.randn(4, 37)
    else:
        layer = DCTpSConv2d(3, 47, 3, padding=1, nnz=30, seed=0, offset=offset, dtype=F64)
        x = torch.randn(2, 3, 5, 5)
    randomise(layer)
    layer.mode = mode
    x = x.to(F64)
    with torch.inference_mode():
        expected = layer(x)
    # a training step, and a second-order one (which saves the cached coefficients), against the
    # materialised W (the dense path: W = alpha * D + S with the offset's D)
    got = second_order(layer, x, params(layer))
    layer.mode = "dense"
    ref = second_order(layer, x, params(layer))
    for a, b in zip(got, ref, strict=True):
        torch.testing.assert_close(a, b, **TOL)
    torch.testing.assert_close(expected, layer(x).detach(), **TOL)


# ------------------------------------------------------------------------------------------------
# mode='auto' under torch.func, checkpoint, and a resized support
# ------------------------------------------------------------------------------------------------


def test_auto_under_functional_call():
    fastmod.clear_auto_cache()
    layer = DCTpSLinear(600, 300, 500, seed=0, mode="auto", dtype=F64)
    assert len(fastmod.candidates(layer)) > 1
    before = dict(layer.named_parameters())
    new = {k: torch.randn_like(v) for k, v in before.items()}
    x = torch.randn(4, 600, dtype=F64)
    y = functional_call(layer, new, (x,))
    torch.testing.assert_close(
        y, ref_forward(layer, x, new["alpha"], new["values"], new["bias"]), **TOL
    )
    for k, p in layer.named_parameters():  # the layer's own parameters are back, untouched
        assert p is before[k] and isinstance(p, torch.nn.Parameter)
    assert len(fastmod.auto_cache()) == 1


@pytest.mark.parametrize("mode", ["dense", "fast", "factor", "auto"])
def test_torch_func_transforms_and_forward_ad(mode):
    """Per-sample gradients (``vmap(grad(...))``), ``jacrev`` and forward-mode AD through DCTpS
    layers in every mode, against a loop of ordinary backward passes / the materialised weight.
    dctps's autograd Functions have no functorch rules, so under a transform the layers build
    ``W`` with built-in ops (they raised "must override the setup_context staticmethod")."""
    from torch.func import grad, jacrev, vmap

    fastmod.clear_auto_cache()
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        randomise(DCTpSConv2d(3, 4, 3, padding=1, nnz=30, seed=0, dtype=F64)),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        randomise(DCTpSLinear(4 * 5 * 5, 3, 40, seed=1, dtype=F64)),
    )
    dctps.set_mode(model, mode)
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = dict(model.named_buffers())
    x, y = torch.randn(4, 3, 5, 5, dtype=F64), torch.tensor([0, 2, 1, 2])

    def loss(p, xb, yb):
        out = functional_call(model, (p, buffers), (xb[None],))
        return torch.nn.functional.cross_entropy(out, yb[None])

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(4):
        model.zero_grad()
        loss(dict(model.named_parameters()), x[i], y[i]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad, **TOL, msg=k)
    lin = model[3]
    h = torch.randn(2, 100, dtype=F64)
    jac = jacrev(lin)(h)  # (2, 3, 2, 100): d out[b, o] / d h[c, i] = W[o, i] when b == c
    w = lin.dense_weight().detach()
    torch.testing.assert_close(jac[0, :, 0], w, **TOL)
    assert jac[0, :, 1].abs().max() == 0
    tangent = torch.randn_like(h)
    with fwAD.dual_level():
        out = lin(fwAD.make_dual(h, tangent))
        torch.testing.assert_close(fwAD.unpack_dual(out).tangent, tangent @ w.T, **TOL)


@pytest.mark.skipif(
    not hasattr(torch._C._autograd, "_top_saved_tensors_default_hooks"),
    reason="needs a torch that exposes its saved-tensor hook stack "
    "(_top_saved_tensors_default_hooks; not torch 2.3-2.5): without it mode='auto' measures inside "
    "a non-reentrant checkpoint and the recomputation raises CheckpointError",
)
def test_auto_inside_non_reentrant_checkpoint():
    fastmod.clear_auto_cache()
    layer = randomise(DCTpSLinear(700, 300, 400, seed=0, mode="auto", dtype=F64))
    assert len(fastmod.candidates(layer)) > 1
    x = torch.randn(8, 700, dtype=F64, requires_grad=True)
    y = checkpoint(layer, x, use_reentrant=False)
    y.square().sum().backward()
    got = [x.grad, *(p.grad for p in params(layer))]
    xr = x.detach().clone().requires_grad_(True)
    ps = [p.detach().clone().requires_grad_(True) for p in params(layer)]
    yr = ref_forward(layer, xr, *ps)
    yr.square().sum().backward()
    torch.testing.assert_close(y.detach(), yr.detach(), **TOL)
    for a, b in zip(got, [xr.grad, *(p.grad for p in ps)], strict=True):
        torch.testing.assert_close(a, b, **TOL)
    assert fastmod.auto_cache() == {}  # not measured under the checkpoint's hooks
    # outside them it measures as usual
    with torch.no_grad():
        layer(x)
    assert len(fastmod.auto_cache()) == 1


def test_auto_memo_remeasures_when_nnz_changes(monkeypatch):
    calls = []
    real = layers_mod.choose

    def counting(layer, x, paths):
        calls.append(layer.nnz)
        return real(layer, x, paths)

    monkeypatch.setattr(layers_mod, "choose", counting)
    fastmod.clear_auto_cache()
    layer = DCTpSLinear(64, 64, 10, seed=0, mode="auto")
    x = torch.randn(4, 64)
    with torch.no_grad():
        layer(x)
        layer(x)
        layer.load_state_dict(DCTpSLinear(64, 64, 40, seed=1).state_dict())
        layer(x)
    assert calls == [10, 40]


def test_auto_measures_once_per_power_of_two_of_rows_not_per_sequence_length(monkeypatch):
    """A model fed sequences of many lengths re-measured every path (four timed passes each) at
    every new length, and the decision cache grew with each one."""
    timed = []
    real = fastmod._run_once

    def counting(fn, x, grad):
        timed.append(tuple(x.shape))
        return real(fn, x, grad)

    monkeypatch.setattr(fastmod, "_run_once", counting)
    monkeypatch.setattr(layers_mod, "AUTO_MEMO_SIZE", 4)
    fastmod.clear_auto_cache()
    layer = DCTpSLinear(512, 512, 200, seed=0, mode="auto")
    assert "fast" in fastmod.candidates(layer)  # so there is something to measure
    ref = DCTpSLinear(512, 512, 200, seed=0, mode="dense")
    for t in (33, 40, 64, 50, 65, 100, 128, 37, 90):  # rows 2*t: buckets 128 and 256
        x = torch.randn(2, t, 512)
        torch.testing.assert_close(layer(x), ref(x), atol=1e-4, rtol=1e-4)
    shapes = {s[1] for s in timed}
    assert shapes == {33, 65}  # the first input of each bucket was timed, nothing else
    assert len(fastmod.auto_cache()) == 2
    assert len(layer.__dict__["_dctps_auto"]) <= 4  # the per-layer memo is bounded
    assert [fastmod.size_bucket(n) for n in (0, 1, 2, 3, 64, 65)] == [0, 1, 2, 4, 64, 128]


def test_the_fast_path_does_not_load_the_compiler():
    """Guarding the fast path against tracing imported ``torch._dynamo`` at its first call
    (about a second and 64 MB resident, a third of the fast Linear 8192 step's memory in
    ``dctps bench memory``); nothing can trace before that import, so it waits for it."""
    import subprocess
    import sys

    code = (
        "import sys, torch\n"
        "from dctps import DCTpSConv2d, DCTpSLinear\n"
        "lin = DCTpSLinear(64, 32, 40, seed=0, mode='fast')\n"
        "conv = DCTpSConv2d(3, 8, 3, padding=1, nnz=30, seed=0, mode='factor')\n"
        "lin(torch.randn(4, 64)).sum().backward()\n"
        "conv(torch.randn(2, 3, 6, 6)).sum().backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
    # once the compiler is loaded the guard applies, and a compiled model still computes right
    layer = randomise(DCTpSLinear(40, 24, 30, seed=0, mode="fast", dtype=F64))
    x = torch.randn(3, 40, dtype=F64)
    compiled = torch.compile(torch.nn.Sequential(layer), backend="eager")
    torch.testing.assert_close(
        compiled(x), ref_forward(layer, x, layer.alpha, layer.values, layer.bias), **TOL
    )
    torch.testing.assert_close(layer(x), compiled(x), **TOL)
    torch._dynamo.reset()  # leave no compiled Sequential.forward to other tests


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason="needs torch >= 2.6: torch.export of a DCTpS layer fails on torch 2.3 (strict: dynamo "
    "cannot trace its forward in one graph; non-strict: FunctionalTensor error)",
)
def test_export_jit_trace_and_a_compiled_inference_call_leave_the_model_trainable(tmp_path):
    """Three ways a traced D or support stayed behind: ``torch.export`` (non-strict) cached a fake
    D, after which the eager model returned fake tensors and never trained; a compiled first call
    under ``inference_mode`` cached an inference D that training then refused; ``jit.trace`` of a
    fast layer kept its support as constants (a later load changed nothing in the trace)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(DCTpSLinear(12, 16, 40, seed=0), torch.nn.ReLU(),
                                DCTpSLinear(16, 4, 20, seed=1))  # fmt: skip
    x = torch.randn(3, 12)
    exported = torch.export.export(model, (x,))
    assert not model[0].basis_built  # nothing traced is kept
    y = model(x)
    assert type(y) is torch.Tensor
    torch.testing.assert_close(exported.module()(x), y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    y.square().sum().backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))

    fresh = torch.nn.Sequential(DCTpSLinear(12, 4, 20, seed=2))
    compiled = torch.compile(fresh, backend="aot_eager")
    with torch.inference_mode():
        compiled.eval()(x)
    compiled.train()  # drops the inference D the graph cached (a graph cannot check for one)
    compiled(x).sum().backward()  # "Inference tensors cannot be saved for backward" before
    assert fresh[0].values.grad is not None
    with torch.inference_mode():
        compiled.eval()(x)
    fresh(x).sum().backward()  # an eager call rebuilds it by itself
    torch._dynamo.reset()  # leave no compiled Sequential.forward to other tests

    fast = DCTpSLinear(12, 4, 20, seed=3, mode="fast")
    traced = torch.jit.trace(fast, (x,), check_trace=False)
    other = DCTpSLinear(12, 4, 20, seed=4)
    with torch.no_grad():
        other.values.normal_()
    fast.load_state_dict(other.state_dict())
    torch.testing.assert_close(traced(x), fast(x))  # the trace took the dense path: no constants
    # ... of built-in operators only: a recorded Python autograd Function cannot be saved
    torch.jit.save(traced, tmp_path / "trace.pt")
    loaded = torch.jit.load(tmp_path / "trace.pt")
    xg = x.clone().requires_grad_()
    loaded(xg).sum().backward()
    expected = torch.ones(3, 4) @ fast.dense_weight().detach()
    torch.testing.assert_close(xg.grad, expected)
    with pytest.raises(DctpsError, match=r"casts integer tensors to torch\.float64.*\.double\(\)"):
        fast.type(torch.float64)
    assert fast.indices.dtype == torch.int64 and fast.alpha.dtype == torch.float32  # untouched


@pytest.mark.skipif(TORCH_VERSION < (2, 6), reason="as the test above")
def test_a_compiled_eval_model_validated_under_inference_mode_then_fine_tunes():
    """Fine-tuning in eval mode (frozen BatchNorm) after a validation under inference_mode: the
    compiled graph had cached an inference D, and with no train() call to drop it the next
    compiled training step failed with torch's "Inference tensors cannot be saved for
    backward"."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(DCTpSLinear(12, 16, 40, seed=0), torch.nn.ReLU(),
                                DCTpSLinear(16, 4, 20, seed=1)).eval()  # fmt: skip
    reference = copy.deepcopy(model)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(3, 12)
    with torch.inference_mode():
        compiled(x)
    compiled(x).square().sum().backward()
    reference(x).square().sum().backward()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    torch._dynamo.reset()


@pytest.mark.skipif(TORCH_VERSION < (2, 6), reason="as the test above")
def test_a_basis_built_eagerly_without_grad_serves_a_fullgraph_compiled_step():
    """A review of the fix above: a D cached by an eager no_grad forward (a sanity eval) was
    rebuilt in the next compiled training step, outside the graph for a Hadamard or sign-flip
    offset: fullgraph=True failed ("Attempted to call function marked as skipped")."""
    torch.manual_seed(0)
    layer = DCTpSLinear(16, 8, 20, seed=0, offset="dct_signflip")
    x = torch.randn(4, 16)
    with torch.no_grad():
        layer(x)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    compiled(x).sum().backward()
    assert layer.alpha.grad is not None
    torch._dynamo.reset()


def test_the_band_cache_is_bounded(monkeypatch):
    """The transform's bands (tensors on the layers' devices) were cached per shape forever: a
    process building layers of ever new sizes grew it without bound."""
    monkeypatch.setattr(fastmod, "_BANDS", {})
    monkeypatch.setattr(fastmod, "BANDS_SIZE", 4)
    for n in range(8, 20):
        fastmod._band(n, 0, n // 2, torch.device("cpu"), torch.float32)
        assert 1 <= len(fastmod._BANDS) <= 4
    again = fastmod._band(19, 0, 9, torch.device("cpu"), torch.float32)
    assert again is fastmod._band(19, 0, 9, torch.device("cpu"), torch.float32)  # still cached


@pytest.mark.parametrize("mode", ["factor", "fast"])
def test_a_checkpoint_swapped_in_under_inference_mode_is_served(mode):
    """The fast paths' plans are keyed on the support's version counter, which inference
    tensors lack: a layer built under inference_mode that loaded a second checkpoint there kept
    serving the first one's support on the factor path (error 7.5)."""
    dt = torch.float64
    with torch.inference_mode():
        if mode == "factor":
            a = DCTpSConv2d(4, 6, 3, padding=1, nnz=20, seed=0, dtype=dt, mode=mode)
            b = DCTpSConv2d(4, 6, 3, padding=1, nnz=20, seed=1, dtype=dt)
            x = torch.randn(2, 4, 5, 5, dtype=dt)
        else:
            a = DCTpSLinear(16, 8, 10, seed=0, dtype=dt, mode=mode)
            b = DCTpSLinear(16, 8, 10, seed=1, dtype=dt)
            x = torch.randn(3, 16, dtype=dt)
        a.values.normal_()
        b.values.normal_()
        a(x)  # plans the first support
        a.load_state_dict(b.state_dict())
        assert torch.equal(a.indices, b.indices)
        torch.testing.assert_close(a(x), b._with_weight(x, b.dense_weight()), rtol=0, atol=1e-12)
        # the documented way after an in-place support change: note_support()
        a.indices.copy_(
            torch.sort(torch.randperm(a.indices.numel() * 3)[: a.indices.numel()]).values
        )
        a.note_support()
        torch.testing.assert_close(a(x), a._with_weight(x, a.dense_weight()), rtol=0, atol=1e-12)


def test_a_complex_layer_runs_dense_in_auto_and_is_refused_by_the_transform_paths():
    """After ``layer.to(torch.complex64)`` the fast path failed in rfft with torch's raw
    "rfft expects a real input tensor", and 'auto' with it where it would pick that path."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="Complex modules"):  # torch's own, on .to(complex)
        linear = DCTpSLinear(512, 512, 300, seed=0).to(torch.complex128)
        conv = DCTpSConv2d(16, 16, 3, nnz=40, padding=1, seed=0).to(torch.complex128)
    layers = [linear, conv]
    inputs = [torch.randn(64, 512, dtype=torch.complex128),
              torch.randn(4, 16, 8, 8, dtype=torch.complex128)]  # fmt: skip
    for layer, x in zip(layers, inputs, strict=True):
        w = layer.dense_weight().detach()
        is_conv = layer is conv
        ref = F.conv2d(x, w, layer.bias, padding=1) if is_conv else F.linear(x, w, layer.bias)
        set_mode(layer, "auto")
        torch.testing.assert_close(layer(x), ref)
        for mode in ("fast", "factor") if is_conv else ("fast",):
            set_mode(layer, mode)
            with pytest.raises(DctpsError, match=r"real dtypes; this layer is torch\.complex128"):
                layer(x)


@pytest.mark.parametrize("mode", ["fast", "factor"])
def test_a_support_written_through_data_is_served_after_note_support(mode):
    """A write through ``.data`` does not bump the version counter the transform paths' plans
    are keyed on (they went on with the old support); ``note_support()`` is the documented way
    to tell them."""
    torch.manual_seed(0)
    layer = DCTpSConv2d(8, 8, 3, nnz=30, padding=1, seed=0, mode=mode)
    x = torch.randn(2, 8, 6, 6)
    layer(x)  # builds and caches the plan
    new = torch.randperm(8 * 8 * 9)[:30].sort().values
    layer.indices.data.copy_(new)
    layer.note_support()
    expected = F.conv2d(x, layer.dense_weight().detach(), layer.bias, padding=1)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=1e-5)
