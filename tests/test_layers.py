"""DCTpS layers: the materialised weight, the conv against an independent patch matmul, training
state, and bad input."""

import io
import math

import numpy as np
import pytest
import scipy.fft
import torch
import torch.nn.functional as F
from conftest import COMPILE_NEEDS_PLAIN_TMPDIR
from torch import nn

from dctps import DCTpSConv2d, DctpsError, DCTpSLinear
from dctps._compat import TORCH_VERSION
from dctps.layers import DCTpSLayer, draw_indices


def scipy_c(n):
    return torch.from_numpy(scipy.fft.dct(np.eye(n), norm="ortho", axis=0))


def test_linear_weight_is_alpha_d_plus_s():
    layer = DCTpSLinear(7, 12, nnz=20, seed=0, dtype=torch.float64)
    with torch.no_grad():
        layer.alpha.fill_(0.7)
        layer.values.copy_(torch.randn(20, dtype=torch.float64))
    s = torch.zeros(12 * 7, dtype=torch.float64)
    s[layer.indices] = layer.values.detach()
    expected = 0.7 * scipy_c(12)[:12, :7] + s.view(12, 7)
    torch.testing.assert_close(layer.dense_weight().detach(), expected)
    torch.testing.assert_close(layer.sparse_weight().detach(), s.view(12, 7))
    x = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(layer(x), x @ expected.T + layer.bias.detach())


@pytest.mark.parametrize("shape", [(16, 16), (256, 128)])  # below and above the size threshold
def test_cpu_rebuild_is_chosen_by_size_and_both_give_the_same_weight_and_gradients(
    shape, monkeypatch
):
    """A CPU layer rebuilds ``W`` with built-in operators below ``FUSED_REBUILD_MIN`` weights and
    with the fused autograd Function from it on; lowering or raising the threshold switches the
    path and changes neither ``W`` nor any gradient (float64)."""
    from dctps import layers

    out, fan = shape
    big = out * fan >= layers.FUSED_REBUILD_MIN
    layer = DCTpSLinear(fan, out, nnz=out * fan // 20, seed=0, dtype=torch.float64)
    with torch.no_grad():
        layer.alpha.fill_(0.7)
        layer.values.normal_()
    x = torch.randn(3, fan, dtype=torch.float64)
    g = torch.randn(3, out, dtype=torch.float64)
    results = []
    for threshold in (layers.FUSED_REBUILD_MIN, 1 if not big else 10**12):
        monkeypatch.setattr(layers, "FUSED_REBUILD_MIN", threshold)
        layer.zero_grad(set_to_none=True)
        w = layer.dense_weight()
        kind = type(w.grad_fn.next_functions[0][0]).__name__  # under the final .view
        (layer(x) * g).sum().backward()
        results.append((kind, w.detach(), layer.alpha.grad, layer.values.grad, layer.bias.grad))
    fused_kind = "_FusedWeightBackward"
    assert (results[0][0] == fused_kind) == big, results[0][0]
    assert (results[1][0] == fused_kind) != big, results[1][0]
    for a, b in zip(results[0][1:], results[1][1:], strict=True):
        torch.testing.assert_close(b, a, rtol=1e-12, atol=1e-12)
    expected = 0.7 * layer.D + layer.sparse_weight().detach()
    torch.testing.assert_close(results[0][1], expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "cin,cout,k,stride,pad,dil,groups",
    [(3, 8, 3, 1, 1, 1, 1), (4, 6, 5, 2, 2, 1, 1), (16, 4, 1, 1, 0, 1, 1), (6, 9, 3, 1, 1, 2, 3),
     (12, 12, 3, 1, 1, 1, 12), (2, 40, 3, 1, 0, 1, 1)],
)  # fmt: skip
def test_conv_equals_hwc_patch_matmul(cin, cout, k, stride, pad, dil, groups):
    layer = DCTpSConv2d(cin, cout, k, stride, pad, dil, groups, nnz=5, seed=1, dtype=torch.float64)
    with torch.no_grad():
        layer.values.normal_()
        layer.alpha.fill_(1.3)
    x = torch.randn(2, cin, 9, 10, dtype=torch.float64)
    y = layer(x)
    # 1) the same conv on the materialised weight
    w = layer.dense_weight().detach()
    torch.testing.assert_close(y, F.conv2d(x, w, layer.bias, stride, pad, dil, groups))
    # 2) an independent lowering: unfold, reorder each group's patch to (h, w, c), multiply by
    #    the scipy DCT matrix (plus S in the same order)
    cg, og = cin // groups, cout // groups
    fan = k * k * cg
    m = 1.3 * scipy_c(max(cout, fan))[:cout, :fan]
    s_hwc = layer.sparse_weight().detach().permute(0, 2, 3, 1).reshape(cout, fan)
    mat = m + s_hwc
    cols = F.unfold(x, k, dilation=dil, padding=pad, stride=stride)  # (B, cin*k*k, L), c slowest
    b, _, L = cols.shape
    cols = cols.view(b, groups, cg, k * k, L).transpose(2, 3).reshape(b, groups, fan, L)
    outs = [mat[g * og : (g + 1) * og] @ cols[:, g] for g in range(groups)]
    ref = torch.cat(outs, dim=1) + layer.bias.detach().view(1, -1, 1)
    torch.testing.assert_close(y.flatten(2), ref)


def test_only_alpha_values_bias_trainable_and_receive_grads():
    layer = DCTpSConv2d(3, 8, 3, padding=1, nnz=10, seed=0)
    names = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert names == {"alpha", "values", "bias"}
    layer(torch.randn(2, 3, 6, 6)).square().sum().backward()
    for n in names:
        assert getattr(layer, n).grad is not None and getattr(layer, n).grad.abs().sum() > 0
    assert not layer.D.requires_grad and layer.D.grad is None


def test_state_dict_has_no_d_and_round_trips():
    a = DCTpSLinear(30, 20, nnz=15, seed=3)
    with torch.no_grad():
        a.values.normal_()
        a.alpha.fill_(0.5)
    sd = a.state_dict()
    assert set(sd) == {"alpha", "values", "indices", "bias"}
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    b = DCTpSLinear(30, 20, nnz=15, seed=99)  # different support, replaced on load
    b.load_state_dict(torch.load(buf))
    x = torch.randn(4, 30)
    assert torch.equal(a(x), b(x))
    assert torch.equal(a.indices, b.indices)


def test_load_resizes_support():
    a = DCTpSLinear(10, 10, nnz=7, seed=0)
    b = DCTpSLinear(10, 10, nnz=3, seed=0)
    values = b.values
    opt = torch.optim.SGD(b.parameters(), lr=0.1)
    b(torch.randn(2, 10)).sum().backward()  # a gradient of the old size: dropped by the resize
    # a model that trained here may have an optimizer whose state has the old size: said now,
    # not as torch's bare size mismatch at its next step (an interop review)
    with pytest.warns(UserWarning, match=r"resized the values of a layer from 3 to 7 non-zeros.*"
                                         r"optimizer") as got:  # fmt: skip
        b.load_state_dict(a.state_dict())
    assert [w.filename for w in got] == [__file__]  # the caller's line
    assert b.values.grad is None
    assert b.nnz == 7 and torch.equal(a.indices, b.indices)
    # resized in place, as PyTorch's loader copies in place: an optimizer made before still trains
    assert b.values is values and b.values.requires_grad
    b(torch.randn(2, 10)).sum().backward()
    opt.step()
    assert not torch.equal(b.values.detach(), a.values.detach())


def test_a_fresh_model_loads_another_density_without_a_warning():
    """A model with no gradient (built to evaluate a checkpoint, or a resume before its first
    step) has no optimizer state to warn of."""
    import warnings

    a = nn.Sequential(DCTpSLinear(10, 10, nnz=7, seed=0))
    b = nn.Sequential(DCTpSLinear(10, 10, nnz=3, seed=0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        b.load_state_dict(a.state_dict())
    assert b[0].nnz == 7
    b(torch.randn(2, 10)).sum().backward()
    with pytest.warns(UserWarning, match=r"resized the values of layer '0' from 7 to 3"):
        b.load_state_dict(nn.Sequential(DCTpSLinear(10, 10, nnz=3, seed=1)).state_dict())


@pytest.mark.parametrize("mode", ["dense", "fast", "auto"])
def test_load_refuses_a_support_of_another_layer(mode):
    """Indices out of the weight's range (a bigger layer's checkpoint), unsorted or repeated
    ones, or a values/indices length mismatch are refused before anything is copied: the fast
    path would read out of bounds (an abort, in review), the dense one scatter wrongly."""
    # a plain dict: without the saved shape (metadata), the range check is what catches it
    big = dict(DCTpSLinear(64, 64, nnz=410, seed=0, bias=False).state_dict())
    small = DCTpSLinear(16, 16, nnz=20, seed=1, bias=False, mode=mode)
    before = {k: v.clone() for k, v in small.state_dict().items()}
    ok = small.state_dict()
    bad = {
        r"holds positions \d+\.\.4\d{3}, outside this layer's weight of shape \(16, 16\)": big,
        "must be sorted, distinct": {**ok, "indices": ok["indices"].flip(0)},
        "must be sorted, distinct ": {
            **ok,
            "indices": torch.cat([ok["indices"][:1], ok["indices"][:-1]]),
        },
        "has 20 entries but values has 19": {**ok, "values": ok["values"][:-1]},
        "must be an integer tensor": {**ok, "indices": ok["indices"].float()},
        "must be 1-D": {**ok, "indices": ok["indices"].view(4, 5)},
    }
    for needle, sd in bad.items():
        with pytest.raises(DctpsError, match=needle.strip()):
            small.load_state_dict(sd)
        after = small.state_dict()
        assert all(torch.equal(after[k], v) for k, v in before.items()), needle
    x = torch.randn(3, 16)
    torch.testing.assert_close(small(x), x @ small.dense_weight().T)  # still works


@pytest.mark.parametrize(
    ("saved", "target"),
    [
        (lambda: DCTpSLinear(16, 8, nnz=5, seed=0), lambda: DCTpSLinear(8, 16, nnz=5, seed=1)),
        (lambda: DCTpSLinear(8, 8, nnz=5, seed=0), lambda: DCTpSLinear(16, 16, nnz=5, seed=1)),
        (
            lambda: DCTpSConv2d(3, 4, 3, nnz=9, seed=0),
            lambda: DCTpSConv2d(4, 3, 3, nnz=9, seed=1),
        ),
        (  # same out channels and numel: only the trailing dimensions differ
            lambda: DCTpSConv2d(4, 8, 3, nnz=9, seed=0),
            lambda: DCTpSConv2d(36, 8, 1, nnz=9, seed=1),
        ),
    ],
    ids=["transposed", "smaller", "conv-transposed", "conv-kernel"],
)
def test_load_refuses_a_state_dict_saved_from_another_shape(saved, target, tmp_path):
    """A smaller or transposed layer's positions all fit: only the shape saved in the state
    dict's metadata (kept through torch.save/torch.load) tells them apart."""
    src, dst = saved(), target()
    torch.save(torch.nn.Sequential(src).state_dict(), tmp_path / "sd.pt")
    sd = torch.load(tmp_path / "sd.pt", weights_only=True)
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    model = torch.nn.Sequential(dst)
    with pytest.raises(DctpsError, match=r"'0' was saved from a layer with weight shape"):
        model.load_state_dict(sd)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in before.items())
    # the same shape loads, metadata and all
    same = saved()
    torch.nn.Sequential(same).load_state_dict(sd)
    assert torch.equal(same.indices, src.indices)


@pytest.mark.parametrize(
    ("saved", "target"),
    [("hadamard", "dct"), ("dct", "hadamard"), ("dct_permuted", "gaussian")],
)
def test_load_refuses_a_state_dict_saved_beside_another_offset(saved, target, tmp_path):
    """S's values were trained beside one offset: loaded beside another the layer computes
    another W (every key matches, so only the offset in the metadata tells them apart)."""
    src = DCTpSLinear(8, 8, nnz=5, seed=0, offset=saved)
    dst = DCTpSLinear(8, 8, nnz=5, seed=0, offset=target)
    torch.save(torch.nn.Sequential(src).state_dict(), tmp_path / "sd.pt")
    sd = torch.load(tmp_path / "sd.pt", weights_only=True)
    if "offset_seed" in str(list(sd)) and "offset_seed" not in str(list(dst.state_dict())):
        sd = {k: v for k, v in sd.items() if "offset_seed" not in k}
    before = {k: v.clone() for k, v in dst.state_dict().items()}
    with pytest.raises(DctpsError, match=rf"'0' was saved from a layer with offset '{saved}'"):
        torch.nn.Sequential(dst).load_state_dict(sd, strict=False)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in before.items())
    same = DCTpSLinear(8, 8, nnz=5, seed=1, offset=saved)
    torch.nn.Sequential(same).load_state_dict(sd)
    assert torch.equal(same.indices, src.indices)
    assert torch.equal(same.dense_weight(), src.dense_weight())


def test_indices_distinct_sorted_and_seeded():
    a = DCTpSLinear(100, 50, nnz=400, seed=5)
    assert a.nnz == 400 and a.indices.unique().numel() == 400
    assert torch.equal(a.indices, a.indices.sort().values)
    assert torch.equal(a.indices, DCTpSLinear(100, 50, nnz=400, seed=5).indices)
    assert not torch.equal(a.indices, DCTpSLinear(100, 50, nnz=400, seed=6).indices)
    assert a.values.abs().sum() == 0 and a.alpha.item() == 1.0


def test_per_filter_indices():
    idx = draw_indices((8, 3, 3, 3), 20, torch.Generator().manual_seed(0), per_filter=True)
    rows = torch.bincount(idx // 27, minlength=8)
    assert sorted(rows.tolist()) == [2, 2, 2, 2, 3, 3, 3, 3]  # which rows get 3: random


def test_large_sparse_draw_is_uniformish():
    idx = draw_indices((1000, 1000), 5000, torch.Generator().manual_seed(0))
    assert idx.unique().numel() == 5000
    # Rows hit roughly uniformly: a chi-square-ish sanity bound on 10 row blocks.
    counts = torch.bincount(idx // 100_000, minlength=10).float()
    assert (counts - 500).abs().max() < 100


def test_fixed_alpha():
    layer = DCTpSLinear(4, 4, nnz=2, train_alpha=False)
    assert not layer.alpha.requires_grad


def test_extra_repr_shows_density():
    r = repr(DCTpSLinear(10, 10, nnz=5))
    assert "nnz=5" in r and "density=0.05" in r


@pytest.mark.parametrize("nnz", [-1, 101, 2.5, "3"])
def test_bad_nnz(nnz):
    with pytest.raises(DctpsError, match="nnz"):
        DCTpSLinear(10, 10, nnz=nnz)


def test_bad_groups():
    with pytest.raises(DctpsError, match="groups"):
        DCTpSConv2d(3, 8, 3, groups=2, nnz=1)


@COMPILE_NEEDS_PLAIN_TMPDIR
def test_torch_compile_matches_eager():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        DCTpSConv2d(3, 8, 3, padding=1, nnz=30, seed=0),
        torch.nn.ReLU(),
        DCTpSConv2d(8, 8, 3, padding=1, groups=8, nnz=20, seed=1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        DCTpSLinear(8, 5, nnz=10, seed=2),
    )
    with torch.no_grad():
        for m in model:
            if hasattr(m, "values"):
                m.values.normal_()
    x = torch.randn(2, 3, 8, 8)
    compiled = torch.compile(model)
    torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)


def _graph_recorder():
    # a fresh compiler state: other tests in this process may have compiled Sequential.forward
    # up to dynamo's recompile limit, after which it runs eagerly and records no graph
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    return graphs, backend


def _small_dctps_model():
    return torch.nn.Sequential(
        DCTpSConv2d(3, 8, 3, padding=1, nnz=30, seed=0),
        torch.nn.Flatten(),
        DCTpSLinear(8 * 36, 5, nnz=10, seed=2),
    )


def _float64_nodes(gm):
    return [
        n.target
        for n in gm.graph.nodes
        if getattr(n.meta.get("example_value"), "dtype", None) == torch.float64
    ]


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason="needs torch >= 2.6: dynamo of torch 2.3-2.5 cannot trace a DCTpS layer's forward in "
    "one graph (fullgraph=True fails; without it, graph breaks)",
)
def test_torch_compile_fullgraph_of_a_fresh_model_on_cpu_caches_the_basis():
    """On the CPU the first compiled call traces the construction of D (float64) and caches it;
    the model then recompiles once, to a graph that reads the cached D. fullgraph=True works."""
    model = _small_dctps_model()
    x = torch.randn(2, 3, 6, 6)
    graphs, backend = _graph_recorder()
    compiled = torch.compile(model, backend=backend, fullgraph=True)
    for _ in range(3):
        y = compiled(x)
    assert model[0].basis_built and model[2].basis_built
    assert len(graphs) == 2 and _float64_nodes(graphs[0]) and not _float64_nodes(graphs[1])
    torch.testing.assert_close(y, model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason="needs torch >= 2.6: dynamo of torch 2.3-2.5 cannot trace a DCTpS layer's forward in "
    "one graph (fullgraph=True fails; without it, graph breaks)",
)
@pytest.mark.parametrize("offset", ["dct_signflip", "dct_permuted", "hadamard"])
def test_torch_compile_fullgraph_of_a_fast_layer_with_another_offset(offset):
    """A combinations review: under torch.compile every layer takes the dense path, and a
    'fast' layer had never built D; built in the trace, a random offset's torch.Generator
    and Hadamard's data-dependent size failed with torch's own errors, or recompiled D's
    frame to dynamo's limit. Such a D is built eagerly, outside the graph (one graph break);
    with fullgraph=True it must exist first (`layer.D`), as the README says."""
    import dctps

    torch.manual_seed(0)
    model = dctps.sparsify(torch.nn.Sequential(torch.nn.Linear(64, 32)), 0.1, offset=offset,
                           seed=0)  # fmt: skip
    dctps.set_mode(model, "fast")
    x = torch.randn(4, 64)
    eager = model(x)
    assert not model[0].basis_built
    graphs, backend = _graph_recorder()
    compiled = torch.compile(model, backend=backend)
    for _ in range(3):
        out = compiled(x)
    assert model[0].basis_built and len(graphs) <= 3
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    out.sum().backward()
    assert model[0].values.grad is not None
    fresh = dctps.sparsify(torch.nn.Sequential(torch.nn.Linear(64, 32)), 0.1, offset=offset,
                           seed=0)  # fmt: skip
    dctps.set_mode(fresh, "fast")
    assert fresh[0].D.shape == (32, 64)  # cached first: then one graph
    out = torch.compile(fresh, backend="eager", fullgraph=True)(x)
    torch.testing.assert_close(out, fresh(x), atol=1e-5, rtol=1e-5)


@pytest.fixture
def cpu_as_accelerator(monkeypatch):
    """Let the CPU stand in for a GPU in dctps.layers' device test (CI has no GPU)."""
    from dctps import layers as layers_mod

    monkeypatch.setattr(layers_mod, "_is_accelerator", lambda device: device.type == "cpu")


def test_on_an_accelerator_the_basis_is_built_ahead_of_use(cpu_as_accelerator):
    """Built at creation, after a .to() that drops it, and on a switch back from 'fast', so a
    torch.compile finds it cached; never for 'fast', nor for a random offset (to_empty leaves
    its seed uninitialised)."""
    assert DCTpSConv2d(3, 8, 3, nnz=10, seed=0).basis_built
    assert DCTpSLinear(16, 8, nnz=10, seed=0, mode="auto").basis_built
    fast = DCTpSLinear(16, 8, nnz=10, seed=0, mode="fast")
    assert not fast.basis_built
    fast.mode = "dense"
    assert fast.basis_built
    assert not DCTpSLinear(16, 8, nnz=10, seed=0, offset="gaussian").basis_built
    layer = DCTpSLinear(16, 8, nnz=10, seed=0).double()
    assert layer.basis_built and layer.D.dtype == torch.float64
    ref = DCTpSLinear(16, 8, nnz=10, seed=0, dtype=torch.float64)
    torch.testing.assert_close(layer.D, ref.D, rtol=0, atol=0)  # rebuilt, not converted


def test_auto_frees_a_prebuilt_basis_when_it_picks_a_path_without_it(cpu_as_accelerator):
    from dctps import fast as fastmod

    fastmod.clear_auto_cache()
    layer = DCTpSLinear(2048, 2048, nnz=100, seed=0, mode="auto")
    assert layer.basis_built
    layer(torch.randn(8, 2048))
    path = next(iter(fastmod.auto_cache().values()))[0]
    assert path == "fast"  # about 0.05x the dense product at this size
    assert not layer.basis_built


def test_torch_compile_on_an_accelerator_builds_a_missing_basis_outside_the_graph(
    cpu_as_accelerator,
):
    """Traced there, Inductor fused the CPU construction of D into a CUDA kernel and crashed (an
    H100, torch 2.11); a D still missing under compile is built eagerly instead."""
    model = _small_dctps_model()
    for m in (model[0], model[2]):
        m._drop_basis()
    x = torch.randn(2, 3, 6, 6)
    graphs, backend = _graph_recorder()
    y = torch.compile(model, backend=backend)(x)
    assert graphs and not any(_float64_nodes(g) for g in graphs)
    assert model[0].basis_built and model[2].basis_built
    torch.testing.assert_close(y, model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(
    TORCH_VERSION < (2, 6),
    reason="needs torch >= 2.6: dynamo of torch 2.3-2.5 cannot trace a DCTpS layer's forward in "
    "one graph (fullgraph=True fails; without it, graph breaks)",
)
def test_torch_compile_after_the_basis_exists_is_one_graph():
    model = _small_dctps_model()
    x = torch.randn(2, 3, 6, 6)
    eager = model(x)  # builds D, as moving the model to an accelerator does
    graphs, backend = _graph_recorder()
    compiled = torch.compile(model, backend=backend)
    out = compiled(x)
    out.sum().backward()
    assert len(graphs) == 1
    torch.testing.assert_close(out, eager, atol=1e-5, rtol=1e-5)
    assert model[0].values.grad is not None and model[0].alpha.grad is not None


def test_a_basis_first_built_in_inference_mode_still_trains():
    """D is built lazily and cached; built under torch.inference_mode it must not become an
    inference tensor, or every later training step would fail."""
    layer = DCTpSConv2d(3, 8, 3, padding=1, nnz=30, seed=0)
    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        expected = layer(x)
    assert not layer.D.is_inference()
    out = layer(x)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected)
    assert layer.values.grad is not None


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"kernel_size": 0}, r"kernel_size must be an integer >= 1 .* got 0"),
        ({"kernel_size": (3, 3, 3)}, r"kernel_size must be .* a pair .* got \(3, 3, 3\)"),
        ({"kernel_size": 2.5}, r"kernel_size must be an integer"),
        ({"padding": (1, 2, 3, 4)}, r"padding must be an integer >= 0 .* got \(1, 2, 3, 4\)"),
        ({"padding": -1}, r"padding must be an integer >= 0"),
        ({"padding": "full"}, r"unknown padding 'full'\. Valid: same, valid"),
        ({"padding": "SAME"}, r"unknown padding 'SAME'\. Did you mean 'same'\?"),
        ({"padding": "same", "stride": 2}, r"padding='same' needs stride 1"),
        ({"stride": 0}, r"stride must be an integer >= 1"),
        ({"stride": (1, 0)}, r"stride must be an integer >= 1"),
        ({"dilation": 0}, r"dilation must be an integer >= 1"),
        ({"groups": 0}, r"groups must be a positive integer, got 0"),
        ({"in_channels": 0}, r"in_channels must be a positive integer, got 0"),
        ({"out_channels": -2}, r"out_channels must be a positive integer, got -2"),
        ({"in_channels": True}, r"in_channels must be a positive integer, got True"),
    ],
)
def test_bad_conv_arguments(kwargs, match):
    args = {"in_channels": 4, "out_channels": 8, "kernel_size": 3, **kwargs}
    with pytest.raises(DctpsError, match=match):
        DCTpSConv2d(**args, nnz=0)


def test_conv_arguments_as_nn_conv2d_takes_them():
    layer = DCTpSConv2d(4, 6, [3, 2], stride=(2, 1), padding=[1, 0], dilation=np.int64(1), nnz=3)
    assert layer.kernel_size == (3, 2) and layer.stride == (2, 1) and layer.padding == (1, 0)
    assert layer.dilation == (1, 1) and layer.weight_shape == (6, 4, 3, 2)
    assert DCTpSConv2d(4, 6, 3, stride=2, padding="valid", nnz=1).padding == "valid"
    assert DCTpSConv2d(4, 6, 3, padding="same", nnz=1).padding == "same"
    # nn.Conv2d's positional order, padding_mode included (only 'zeros' is supported)
    same = DCTpSConv2d(4, 6, 3, 1, 1, 2, 2, False, "zeros", nnz=np.int64(3))
    ref = torch.nn.Conv2d(4, 6, 3, 1, 1, 2, 2, False, "zeros")
    assert (same.padding, same.dilation, same.groups, same.bias) == (
        ref.padding,
        ref.dilation,
        2,
        None,
    )
    assert "dilation=(2, 2)" in repr(same) and "dilation" not in repr(layer)
    # and its other attributes, for code that reads them off any conv
    for name in ("padding_mode", "transposed", "output_padding"):
        assert getattr(same, name) == getattr(ref, name), name
    with pytest.raises(
        DctpsError, match="padding_mode='reflect': DCTpS convs support only 'zeros'"
    ):
        DCTpSConv2d(4, 6, 3, padding_mode="reflect", nnz=1)
    # numpy integers, as nn.Linear takes them
    lin = DCTpSLinear(np.int64(3), np.int64(4), np.int64(2))
    assert (lin.in_features, lin.out_features, lin.nnz) == (3, 4, 2)
    assert type(lin.in_features) is int


def test_basis_is_rebuilt_in_the_new_dtype_after_to():
    """A cached D converted by .double() kept float32 accuracy, and .half() then .float() kept
    fp16 rounding: D must always be the float64 DCT rounded once to the current dtype."""
    ref = scipy_c(48)
    layer = DCTpSLinear(48, 48, nnz=5, seed=0)
    layer(torch.randn(2, 48))  # builds D in float32
    layer.double()
    torch.testing.assert_close(layer.D, ref, atol=1e-13, rtol=0)  # float32 would be ~1e-8 off
    y = layer(torch.eye(48, dtype=torch.float64))
    torch.testing.assert_close(y, ref.T + layer.bias.detach(), atol=1e-13, rtol=0)
    for forward_in_half in (False, True):
        layer.float()
        layer.D  # noqa: B018  (built in float32)
        layer.half()
        if forward_in_half:
            layer(torch.randn(2, 48, dtype=torch.half))
        layer.float()
        # one float32 rounding (<= 1.5e-8 here), not fp16's (~1e-4)
        torch.testing.assert_close(layer.D, ref.float(), atol=3e-8, rtol=0)
    layer.to("cpu")  # a move that keeps the dtype keeps the cached D
    d = layer.D
    layer.to("cpu")
    assert layer.D is d


def test_copies_of_a_compiled_or_old_pickled_layer():
    """A layer.compile()'d layer pickles and deep-copies as nn.Module's do (the copy does not
    call the original); a layer pickled by an older dctps (no init record) still loads a state
    dict, and only reset_parameters, which needs the record, refuses with a clear error."""
    import copy
    import pickle

    layer = DCTpSLinear(12, 6, nnz=10, seed=0, offset="gaussian")
    layer.compile()
    pickle.loads(pickle.dumps(layer))
    twin = copy.deepcopy(layer)
    assert "_compiled_call_impl" not in twin.__dict__ or twin._compiled_call_impl is None
    old = DCTpSLinear(12, 6, nnz=10, seed=0, offset="gaussian")
    del old.__dict__["_init_spec"]  # what unpickling a layer of the previous version gives
    old.load_state_dict(DCTpSLinear(12, 6, nnz=10, seed=1, offset="gaussian").state_dict())
    with pytest.raises(DctpsError, match="pickled by an older dctps"):
        old.reset_parameters()


@pytest.mark.parametrize("mode", ["dense", "fast", "factor", "auto"])
def test_a_whole_module_save_holds_no_basis_or_plans(mode):
    """An interop review: torch.save(model) of a ResNet18 at 0.1% held the dense D (and the
    fast paths' plans) after one step, 45 MB where the fresh model took 0.28 MB. A copy
    rebuilds them where needed and computes the same, with gradients."""
    import copy
    import io
    import pickle

    offset = "gaussian" if mode in ("dense", "auto") else "dct"  # no fast path for gaussian
    conv = DCTpSConv2d(16, 32, 3, padding=1, nnz=300, seed=0, offset=offset, mode=mode)
    linear = DCTpSLinear(256, 256, nnz=500, seed=0, mode="fast" if mode == "factor" else mode)
    for layer, x in ((conv, torch.randn(2, 16, 8, 8)), (linear, torch.randn(4, 256))):

        def saved(m: torch.nn.Module) -> int:
            buf = io.BytesIO()
            torch.save(m, buf)
            return len(buf.getvalue())

        fresh = saved(layer)
        y = layer(x)
        y.square().sum().backward()
        assert saved(layer) <= fresh + 256  # D alone: 4608 or 65536 float32s
        for twin in (copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))):
            assert torch.equal(twin(x), y)
            twin.zero_grad()
            twin(x).square().sum().backward()
            assert torch.equal(twin.values.grad, layer.values.grad)


@pytest.mark.parametrize(
    "make",
    [
        lambda: DCTpSLinear(50, 2000, nnz=10, seed=0),
        lambda: DCTpSConv2d(6, 2000, 3, nnz=10, seed=0),
    ],  # fmt: skip
    ids=["linear", "conv"],
)
def test_a_constructed_layers_bias_is_drawn_as_pytorchs(make):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) as nn.Linear / nn.Conv2d: a bound from the whole
    weight's size went unnoticed (sparsify overwrites the bias with the dense layer's)."""
    layer = make()
    bound = 1 / math.sqrt(math.prod(layer.weight_shape[1:]))
    b = layer.bias.detach()
    assert b.abs().max() <= bound and b.abs().max() > 0.95 * bound  # 2000 draws fill it
    assert abs(float(b.mean())) < 0.1 * bound


def test_the_cached_basis_is_not_a_buffer_so_ema_tools_work():
    """`D` was a non-persistent buffer that appeared at the first forward: `buffers()` changed
    under tools that pair two copies' buffers, and `AveragedModel` (EMA) made before the first
    forward crashed with a size mismatch. It is a cached attribute: the buffers stay put."""
    from conftest import train_with_ema
    from torch import nn

    import dctps

    torch.manual_seed(0)
    m = dctps.sparsify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Flatten(),
                                     nn.Linear(8 * 36, 4)), 0.2, seed=0)  # fmt: skip
    names = [n for n, _ in m.named_buffers()]
    ema = train_with_ema(m, use_buffers=False)  # made before the first forward
    assert m[0].basis_built and [n for n, _ in m.named_buffers()] == names
    assert torch.equal(ema.module[0].indices, m[0].indices)
    x = torch.randn(2, 3, 8, 8)
    ema.eval(), m.eval()
    assert not torch.equal(ema(x), m(x))  # an average, computed on the same support


def test_unseeded_layers_draw_the_same_supports_on_every_device():
    """Without ``seed`` the support and the bias come from torch's global CPU generator whatever
    the device ('meta' stands in for a GPU): after each layer the generator is where it is on
    the CPU, so the next layer draws the same support. The bias was drawn on the device's
    generator, so on a GPU the CPU one did not advance and every later layer's support
    differed."""

    def states(device, expect=None):
        torch.manual_seed(0)
        out = []
        for make in (
            lambda: DCTpSConv2d(8, 16, 3, nnz=40, bias=True, device=device),
            lambda: DCTpSLinear(30, 20, nnz=50, bias=True, device=device),
        ):
            lay = make()
            kinds = {t.device.type for t in (*lay.parameters(), *lay.buffers())}
            assert kinds == {expect or device}
            out.append(torch.get_rng_state())
        return out

    for a, b in zip(states("cpu"), states("meta"), strict=True):
        assert torch.equal(a, b)
    # torch's default device set elsewhere (`set_default_device("cuda")`; meta stands in): the
    # draws stay on the CPU generator, and the layer on the default device
    cpu = states("cpu")
    with torch.device("meta"):
        for a, b in zip(cpu, states(None, expect="meta"), strict=True):
            assert torch.equal(a, b)


def test_an_fx_trace_or_a_fake_tensor_pass_leaves_the_layers_as_they_were():
    """A review: ``torch.fx.symbolic_trace`` failed inside a layer and left a Proxy cached as
    its ``D``, and a pass under ``FakeTensorMode`` (a memory estimator's) a FakeTensor: every
    later eager call then failed, or returned fake tensors. The trace is now refused by name,
    with what works instead, and neither caches anything."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    import dctps

    def model():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
        return dctps.sparsify(m, 0.5, seed=0)

    x = torch.randn(2, 8)
    m = model()
    with pytest.raises(
        DctpsError, match=r"symbolic_trace cannot trace into a DCTpS layer.*to_dense"
    ):
        torch.fx.symbolic_trace(m)
    assert m[0]._D is None
    torch.testing.assert_close(m(x), model()(x))

    class Leaves(torch.fx.Tracer):  # what the message suggests
        def is_leaf_module(self, module, name):
            return isinstance(module, DCTpSLayer) or super().is_leaf_module(module, name)

    traced = torch.fx.GraphModule(m, Leaves().trace(m))
    torch.testing.assert_close(traced(x), m(x))
    torch.testing.assert_close(torch.fx.symbolic_trace(dctps.to_dense(m))(x), m(x))

    m = model()
    with FakeTensorMode(allow_non_fake_inputs=True):
        fake = m(torch.randn(2, 8))
    assert type(fake) is not torch.Tensor and m[0]._D is None
    y = m(x)
    assert type(y) is torch.Tensor
    torch.testing.assert_close(y, model()(x))


def test_a_computed_weight_cannot_be_assigned_tied_fused_or_pruned():
    """``W`` is computed: assigning, tying (``a.weight = b.weight``), fusing a BatchNorm and
    ``torch.nn.utils.prune`` of ``weight`` failed with PyTorch's "attribute 'weight' already
    exists" or "cannot assign 'torch.FloatTensor' object to parameter 'weight_orig'"."""
    layer = DCTpSLinear(4, 4, nnz=3, seed=0)
    w = layer.dense_weight().detach().clone()
    attempts = {
        "weight": [
            lambda: setattr(layer, "weight", nn.Parameter(torch.ones(4, 4))),
            lambda: setattr(layer, "weight", torch.ones(4, 4)),
        ],
        "weight_orig": [lambda: torch.nn.utils.prune.l1_unstructured(layer, "weight", 0.5)],
    }
    for name, calls in attempts.items():
        for call in calls:
            with pytest.raises(DctpsError, match=rf"cannot set DCTpSLinear\.{name}: .*to_dense"):
                call()
    assert torch.equal(layer.dense_weight(), w) and "weight" not in layer._parameters
    conv = DCTpSConv2d(3, 4, 3, nnz=5, seed=0).eval()
    bn = nn.BatchNorm2d(4).eval()
    with pytest.raises(DctpsError, match=r"cannot set DCTpSConv2d\.weight"):
        torch.nn.utils.fusion.fuse_conv_bn_eval(conv, bn)


def test_jit_script_is_refused_with_the_way_out():
    model = nn.Sequential(DCTpSLinear(4, 4, nnz=3, seed=0), nn.ReLU())
    with pytest.raises(
        DctpsError, match=r"torch\.jit\.script cannot compile a DCTpSLinear.*to_dense"
    ):
        torch.jit.script(model)
    import dctps

    scripted = torch.jit.script(dctps.to_dense(model))
    x = torch.randn(2, 4)
    torch.testing.assert_close(scripted(x), model(x))
