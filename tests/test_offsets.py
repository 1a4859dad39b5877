"""Offsets and alpha scalings beyond the paper (dctps.offsets, issue 10): every offset matrix
against one built independently here (scipy's DCT with sign flips / permutations, scipy's
Hadamard), orthonormal rows where claimed, fast paths equal to the materialised W in float64
(outputs and every gradient), budgets at equal trainable parameters, save/load, errors."""

import math

import numpy as np
import pytest
import scipy.fft
import scipy.linalg
import torch
import torch.nn.functional as F
from torch import nn

import dctps
from dctps import DCTpSConv2d, DctpsError, DCTpSLinear, offsets
from dctps import fast as fastmod
from dctps.layers import DCTpSLayer, kaiming_alpha
from dctps.train.config import RunConfig, config_from_cli

pytestmark = pytest.mark.filterwarnings("ignore:Sparse CSR tensor support is in beta")

F64 = torch.float64
TOL = {"atol": 1e-10, "rtol": 1e-10}
FAST = ["dct", "dct_signflip", "dct_permuted", "hadamard"]
SHAPES = [(5, 12), (12, 5), (8, 8), (6, 75), (16, 150), (120, 400), (10, 82), (1, 1), (33, 16)]


def scipy_dct(out, fan):
    n = max(out, fan)
    return torch.from_numpy(scipy.fft.dct(np.eye(n), norm="ortho", axis=0))[:out, :fan]


def reference(name, out, fan, seed):
    """The offset matrix built here, from scipy, with the library's seeded signs/permutation."""
    if name == "dct":
        return scipy_dct(out, fan)
    if name == "dct_signflip":
        s = offsets.signs(fan, seed)
        assert set(s.tolist()) <= {-1.0, 1.0}
        return scipy_dct(out, fan) * s[None, :]
    if name == "dct_permuted":
        p = offsets.permutation(fan, seed)
        assert sorted(p.tolist()) == list(range(fan))
        return scipy_dct(out, fan)[:, p]
    if name == "hadamard":
        m = 1 << (max(out, fan) - 1).bit_length()
        assert m >= max(out, fan) and m < 2 * max(out, fan)
        return torch.from_numpy(scipy.linalg.hadamard(m) / math.sqrt(m))[:out, :fan]
    raise AssertionError(name)


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("out,fan", SHAPES)
def test_offset_matrix_equals_independent_construction(name, out, fan):
    got = offsets.matrix(name, out, fan, seed=11)
    assert got.dtype == F64 and got.shape == (out, fan)
    torch.testing.assert_close(got, reference(name, out, fan, 11), atol=1e-12, rtol=0)


@pytest.mark.parametrize("out,fan", SHAPES)
def test_gaussian_is_seeded_and_orthonormal(out, fan):
    a = offsets.matrix("gaussian", out, fan, seed=3)
    torch.testing.assert_close(a, offsets.matrix("gaussian", out, fan, seed=3), atol=0, rtol=0)
    if out * fan > 1:
        assert not torch.allclose(a, offsets.matrix("gaussian", out, fan, seed=4))
    gram = a @ a.T if out <= fan else a.T @ a
    torch.testing.assert_close(gram, torch.eye(min(out, fan), dtype=F64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("name", offsets.names())
def test_rows_orthonormal_where_claimed(name):
    # DCT variants and gaussian: orthonormal rows whenever out <= fan_in
    for out, fan in [(5, 12), (16, 150), (8, 8), (82, 120)]:
        a = offsets.matrix(name, out, fan, seed=1)
        if name == "hadamard":
            # rows have squared norm fan / M; orthonormal only when fan_in is a power of two
            torch.testing.assert_close(
                a.norm(dim=1), offsets.row_norms(name, out, fan), atol=1e-12, rtol=0
            )
            continue
        torch.testing.assert_close(a @ a.T, torch.eye(out, dtype=F64), atol=1e-12, rtol=0)
    h = offsets.matrix("hadamard", 12, 16)
    torch.testing.assert_close(h @ h.T, torch.eye(12, dtype=F64), atol=1e-12, rtol=0)


def test_row_norms_closed_forms_match_matrices():
    for name in offsets.names():
        for out, fan in [(5, 12), (12, 5), (33, 16)]:
            torch.testing.assert_close(
                offsets.row_norms(name, out, fan, 2),
                offsets.matrix(name, out, fan, 2).norm(dim=1), atol=1e-12, rtol=0,
            )  # fmt: skip


def test_fwht_is_hadamard_times_sqrt_m():
    x = torch.randn(3, 16, 2, dtype=F64)
    h = torch.from_numpy(scipy.linalg.hadamard(16)).to(F64)
    torch.testing.assert_close(offsets.fwht(x, dim=1), torch.einsum("ij,bjl->bil", h, x), **TOL)
    torch.testing.assert_close(offsets.fwht(offsets.fwht(x, 1), 1), 16 * x, **TOL)


def test_rows_of_dct_signflip_lose_the_constant_row():
    # the motivation: with x >= 0 the DC row of the DCT gives a large positive mean output
    x = torch.rand(4096, 75, dtype=F64)
    dc = x @ offsets.matrix("dct", 6, 75).T
    flip = x @ offsets.matrix("dct_signflip", 6, 75, seed=0).T
    assert dc[:, 0].mean() > 3 and flip[:, 0].abs().mean() < dc[:, 0].mean() / 2


# ----------------------------------------------------------------------------- layers
def test_layer_bases_follow_the_hwc_patch_layout():
    for name in offsets.names():
        conv = DCTpSConv2d(3, 6, 5, nnz=4, seed=7, offset=name, dtype=F64)
        m = offsets.matrix(name, 6, 75, seed=7)  # layer seed -> offset seed
        want = m.reshape(6, 5, 5, 3).permute(0, 3, 1, 2)
        torch.testing.assert_close(conv.D, want, atol=0, rtol=0)
        lin = DCTpSLinear(120, 82, 5, seed=5, offset=name, dtype=F64)
        torch.testing.assert_close(lin.D, offsets.matrix(name, 82, 120, 5), atol=0, rtol=0)
        assert ("offset_seed" in dict(lin.named_buffers())) == offsets.needs_seed(name)


def test_conv_offset_equals_hwc_patch_matmul():
    # an independent lowering: unfold, reorder to (h, w, c), multiply by the reference matrix
    for name in FAST:
        layer = DCTpSConv2d(4, 6, 3, padding=1, nnz=5, seed=2, offset=name, dtype=F64)
        with torch.no_grad():
            layer.values.normal_()
            layer.alpha.fill_(1.3)
        x = torch.randn(2, 4, 7, 8, dtype=F64)
        mat = 1.3 * reference(name, 6, 36, 2)
        mat = mat + layer.sparse_weight().detach().permute(0, 2, 3, 1).reshape(6, 36)
        cols = F.unfold(x, 3, padding=1)  # (B, c*kk, L), c slowest
        cols = cols.view(2, 4, 9, -1).transpose(1, 2).reshape(2, 36, -1)
        ref = (mat @ cols).view(2, 6, 7, 8) + layer.bias.detach().view(1, -1, 1, 1)
        torch.testing.assert_close(layer(x), ref, **TOL)


def _randomise(layer, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.values.copy_(torch.randn(layer.nnz, generator=g, dtype=F64))
        layer.alpha.copy_(0.5 + torch.rand(layer.alpha.shape, generator=g, dtype=F64))
        if layer.bias is not None:
            layer.bias.copy_(torch.randn(layer.bias.shape, generator=g, dtype=F64))
    return layer


def _run(layer, x, path):
    layer.zero_grad(set_to_none=True)
    xi = x.detach().clone().requires_grad_(True)
    y = getattr(layer, layer._PATHS[path])(xi)
    gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(7), dtype=y.dtype)
    (y * gy).sum().backward()
    dv = layer.values.grad if layer.values.grad is not None else torch.zeros_like(layer.values)
    out = [y.detach(), xi.grad, layer.alpha.grad, dv]
    if layer.bias is not None:
        out.append(layer.bias.grad)
    return [t.clone() for t in out]


def _assert_paths_equal(layer, x, paths):
    ref = _run(layer, x, "dense")
    for path in paths:
        for name, a, b in zip(["y", "dx", "dalpha", "dvalues", "dbias"], _run(layer, x, path),
                              ref, strict=False):  # fmt: skip
            torch.testing.assert_close(a, b, **TOL, msg=lambda m, p=path, n=name: f"{p} {n}: {m}")


@pytest.fixture(params=["csr", "gather"])
def sparse_backend(request):
    old = fastmod._BACKEND["sparse"]
    fastmod._BACKEND["sparse"] = request.param
    yield
    fastmod._BACKEND["sparse"] = old


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("alpha", ["layer", "channel"])
@pytest.mark.parametrize("inp,out,nnz", [(16, 16, 20), (7, 12, 30), (33, 5, 40), (64, 9, 0),
                                         (9, 64, 200)])  # fmt: skip
def test_fast_linear_equals_materialised(name, alpha, inp, out, nnz, sparse_backend):
    layer = _randomise(DCTpSLinear(inp, out, nnz, seed=3, offset=name, alpha=alpha, dtype=F64))
    _assert_paths_equal(layer, torch.randn(5, inp, dtype=F64), ["fast"])


CONVS = [
    # cin, cout, k, stride, padding, dilation, groups, H, W
    (3, 8, 3, 1, 1, 1, 1, 9, 10),
    (3, 6, 5, 1, 0, 1, 1, 12, 12),  # LeNet's first conv: fan 75 -> Hadamard M = 128
    (2, 40, 3, 1, 0, 1, 1, 8, 8),  # out > fan
    (6, 9, 3, 2, 1, 2, 3, 9, 10),  # grouped, strided, dilated
    (8, 16, 3, 1, 1, 1, 8, 6, 6),  # depthwise multiplier 2
]


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("alpha", ["layer", "channel"])
@pytest.mark.parametrize("cfg", CONVS, ids=[str(i) for i in range(len(CONVS))])
def test_fast_conv_equals_materialised(name, alpha, cfg):
    cin, cout, k, s, p, d, g, h, w = cfg
    layer = DCTpSConv2d(cin, cout, k, s, p, d, g, True, nnz=17, seed=2, offset=name, alpha=alpha,
                        dtype=F64)  # fmt: skip
    _randomise(layer)
    paths = ["fast", "factor"] if name == "dct" else ["fast"]
    _assert_paths_equal(layer, torch.randn(2, cin, h, w, dtype=F64), paths)


def test_fast_paths_never_build_d():
    for name in FAST:
        layer = DCTpSLinear(64, 32, 10, seed=0, offset=name, mode="fast")
        layer(torch.randn(3, 64)).sum().backward()
        assert not layer.basis_built


def test_gaussian_has_no_fast_path_and_auto_uses_dense():
    with pytest.raises(DctpsError, match="'gaussian' has no fast path"):
        DCTpSLinear(64, 64, 10, seed=0, offset="gaussian", mode="fast")
    layer = DCTpSLinear(256, 256, 10, seed=0, offset="gaussian")
    with pytest.raises(DctpsError, match="no fast path"):
        layer.mode = "fast"
    with pytest.raises(DctpsError, match="no fast path"):
        dctps.set_mode(nn.Sequential(layer), "factor")
    # set_mode checks every layer first, and names the one that refuses
    model = nn.Sequential(DCTpSLinear(256, 256, 10, seed=1), layer)
    with pytest.raises(DctpsError, match="layer '1': offset 'gaussian' has no fast path"):
        dctps.set_mode(model, "fast")
    assert [m.mode for m in model] == ["dense", "dense"]
    assert fastmod.candidates(layer) == ["dense"]
    layer.mode = "auto"
    x = torch.randn(8, 256)
    torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias))
    assert layer._path(x) == "dense"
    conv = DCTpSConv2d(16, 16, 3, padding=1, nnz=5, seed=0, offset="hadamard")
    with pytest.raises(DctpsError, match="no factor path"):
        conv.mode = "factor"
    assert "factor" not in fastmod.candidates(conv)


def test_auto_decisions_are_kept_per_offset():
    fastmod.clear_auto_cache()
    x = torch.randn(4, 512)
    for name in offsets.names():
        layer = DCTpSLinear(512, 512, 100, seed=0, offset=name, mode="auto")
        torch.testing.assert_close(layer(x), F.linear(x, layer.dense_weight(), layer.bias),
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
    keys = {k[3] for k in fastmod.auto_cache()}
    assert keys == set(offsets.names())


# ----------------------------------------------------------------------------- scalings
def test_channel_alpha_shape_and_weight():
    layer = DCTpSConv2d(3, 6, 5, nnz=10, seed=0, alpha="channel", dtype=F64)
    assert layer.alpha.shape == (6,) and layer.n_alphas == 6
    with torch.no_grad():
        layer.alpha.copy_(torch.arange(1, 7, dtype=F64))
    want = torch.arange(1, 7, dtype=F64).view(6, 1, 1, 1) * layer.D + layer.sparse_weight()
    torch.testing.assert_close(layer.dense_weight(), want, atol=0, rtol=0)


@pytest.mark.parametrize("name", offsets.names())
@pytest.mark.parametrize("scope", ["layer", "channel"])
def test_kaiming_alpha_matches_kaiming_row_scale(name, scope):
    for out, fan in [(6, 75), (120, 400), (82, 120), (10, 82), (40, 27)]:
        layer = DCTpSLinear(fan, out, 0, seed=1, offset=name, alpha=scope, alpha_init="kaiming",
                            dtype=F64)  # fmt: skip
        rows = (layer.dense_weight().detach() ** 2).sum(1)  # ||W_o||^2; Kaiming: E = 2
        if scope == "channel":
            torch.testing.assert_close(rows, torch.full_like(rows, 2.0), atol=1e-10, rtol=0)
        else:
            assert rows.mean().item() == pytest.approx(2.0, abs=1e-10)
    assert float(kaiming_alpha(torch.ones(5, dtype=F64), "layer")) == pytest.approx(math.sqrt(2))


def test_alpha_arguments():
    assert float(DCTpSLinear(4, 4, 1, alpha=0.5).alpha.detach()) == 0.5  # the older signature
    assert float(DCTpSLinear(4, 4, 1, alpha_init=0.25).alpha.detach()) == 0.25
    with pytest.raises(DctpsError, match="alpha scope"):
        DCTpSLinear(4, 4, 1, alpha="chanel")
    with pytest.raises(DctpsError, match="alpha_init"):
        DCTpSLinear(4, 4, 1, alpha_init="xavier")


def lenet():
    from dctps.models import build

    torch.manual_seed(0)
    return build("lenet5", num_classes=10)


@pytest.mark.parametrize("density", [0.01, 0.05])
@pytest.mark.parametrize(
    "kw",
    [{}, {"alpha": "channel"}, {"alpha_init": "kaiming"}, {"alpha": "channel", "alpha_init": 2.0},
     {"offset": "hadamard", "alpha": "channel", "alpha_init": "kaiming"}],
)  # fmt: skip
def test_budget_non_zeros_plus_alphas_equal_the_layer_configuration(density, kw):
    model = dctps.sparsify(lenet(), density, **kw)
    c = dctps.count(model)
    n_layers = sum(isinstance(m, DCTpSLayer) for m in model.modules())
    budget = round(density * c.weights)
    assert c.nonzeros + c.alphas == budget + n_layers  # trainable = non-zeros + alphas
    if kw.get("alpha") == "channel":
        assert c.alphas == 6 + 16 + 120 + 82 + 10
    else:
        assert c.alphas == n_layers


def test_uncharged_channel_alphas_are_counted_on_top():
    c = dctps.count(dctps.sparsify(lenet(), 0.001, alpha="channel", charge_alpha=False))
    assert c.nonzeros == round(0.001 * c.weights) and c.alphas == 234


def test_fixed_channel_alphas_are_not_charged():
    """A combinations review: `alpha='channel'` with fixed alphas still took `out - 1` entries
    per layer from S (LeNet-5 at 5%: 2,847 trainable against 3,076 for fixed layer alphas),
    and at 0.1% it was refused for alphas that train nothing. Fixed alphas cost no budget, and
    such runs get a hash of their own (charge_alpha resolves to False), apart from the rows
    recorded when they were charged."""
    from dctps.train.config import RunConfig, identity_hash

    for d in (0.05, 0.001):
        layer = dctps.count(dctps.sparsify(lenet(), d, train_alpha=False))
        chan = dctps.count(dctps.sparsify(lenet(), d, alpha="channel", train_alpha=False))
        assert chan.nonzeros == layer.nonzeros == round(d * layer.weights)
        assert chan.fixed_alphas == 234 and layer.fixed_alphas == 5

    def channel(**sp):
        sp = {"method": "dctps", "density": 0.05, "alpha": "channel", **sp}
        return RunConfig.from_dict({"model": {"name": "lenet5"}, "sparsity": sp})

    cfg = channel(train_alpha=False)
    s = cfg.resolve().sparsity
    assert s.charge_alpha is False
    ident = cfg.identity()
    assert ident["sparsity"]["charge_alpha"] is False
    del ident["sparsity"]["charge_alpha"]  # as the charged runs were identified
    assert identity_hash(ident) != cfg.config_hash()
    assert channel(train_alpha=False, charge_alpha=False).config_hash() == cfg.config_hash()
    # labels: nothing trains "on top", and charge_alpha is not a choice shown for them
    from dctps.results import figures

    label = figures._offset_label(cfg.resolve().to_dict())
    assert label == "DCTpS, α per channel, fixed α"
    assert "charge_alpha" not in cfg.resolve().summary()
    trained = channel(charge_alpha=False)
    assert figures._offset_label(trained.resolve().to_dict()) == "DCTpS, α per channel (+alphas)"
    assert "charge_alpha=False" in trained.resolve().summary()


def test_charge_that_a_layer_cannot_absorb_raises():
    with pytest.raises(DctpsError, match="extra per-channel alphas.*charge_alpha=False"):
        dctps.sparsify(lenet(), 0.001, alpha="channel")


# ----------------------------------------------------------------------------- save / load
def test_state_dict_rebuilds_the_same_random_offset():
    a = _randomise(DCTpSConv2d(3, 6, 5, nnz=9, seed=4, offset="dct_signflip", dtype=F64))
    b = DCTpSConv2d(3, 6, 5, nnz=9, seed=99, offset="dct_signflip", dtype=F64)
    assert b.D.shape == (6, 3, 5, 5)  # built for the other seed: must be rebuilt by the load
    assert int(b.offset_seed) == 99
    b.load_state_dict(a.state_dict())
    assert int(b.offset_seed) == 4
    torch.testing.assert_close(b.D, a.D, atol=0, rtol=0)
    x = torch.randn(2, 3, 9, 9, dtype=F64)
    torch.testing.assert_close(b(x), a(x), atol=0, rtol=0)
    b.mode = "fast"
    torch.testing.assert_close(b(x), a(x), **TOL)


@pytest.mark.parametrize("kw", [{"offset": "dct_permuted", "alpha": "channel"},
                                {"offset": "gaussian"}, {"offset": "hadamard"}])  # fmt: skip
def test_checkpoint_round_trip_with_offsets(tmp_path, kw):
    model = dctps.sparsify(lenet(), 0.05, seed=5, **kw)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DCTpSLayer):
                m.values.normal_()
                m.alpha.mul_(0.9)
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    path = dctps.save(model, tmp_path / "m.dctps")
    for loaded in (dctps.load(path), dctps.load(path, model=lenet())):
        lay = [m for m in loaded.modules() if isinstance(m, DCTpSLayer)]
        assert {m.offset for m in lay} == {kw["offset"]}
        assert {m.alpha_scope for m in lay} == {kw.get("alpha", "layer")}
        torch.testing.assert_close(loaded(x), ref, atol=1e-6, rtol=1e-6)
    # into a model sparsified with the same offset but another seed: the stored seed wins
    other = dctps.sparsify(lenet(), 0.05, seed=6, **kw)
    torch.testing.assert_close(dctps.load(path, model=other)(x), ref, atol=1e-6, rtol=1e-6)


# ----------------------------------------------------------------------------- names, config
def test_bad_offset_names_say_did_you_mean():
    with pytest.raises(DctpsError, match="unknown offset 'hadamrd'. Did you mean 'hadamard'"):
        DCTpSLinear(4, 4, 1, offset="hadamrd")
    with pytest.raises(DctpsError, match="Did you mean 'dct_signflip'"):
        dctps.sparsify(lenet(), 0.01, offset="dct_signflp")
    with pytest.raises(DctpsError, match="Did you mean 'gaussian'"):
        RunConfig.from_dict({"sparsity": {"density": 0.01, "offset": "gausian"}}).resolve()
    assert offsets.names() == ["dct", "dct_signflip", "dct_permuted", "hadamard", "gaussian"]


def test_config_fields_keep_old_hashes_and_reach_sparsify():
    base = RunConfig.from_dict({"model": {"name": "lenet5"}, "sparsity": {"density": 0.01}})
    ident = base.identity()["sparsity"]
    assert not {"offset", "alpha", "alpha_init", "charge_alpha"} & set(ident)
    explicit = RunConfig.from_dict({"model": {"name": "lenet5"}, "sparsity": {
        "density": 0.01, "offset": "dct", "alpha": "layer", "alpha_init": 1, "charge_alpha": False,
    }})  # fmt: skip
    assert explicit.config_hash() == base.config_hash()  # charge_alpha is moot for 'layer'
    hashes = {base.config_hash()}
    for extra in ({"offset": "hadamard"}, {"alpha": "channel"}, {"alpha_init": "kaiming"},
                  {"alpha": "channel", "charge_alpha": False}):  # fmt: skip
        cfg = RunConfig.from_dict({"model": {"name": "lenet5"},
                                   "sparsity": {"density": 0.01, **extra}})  # fmt: skip
        hashes.add(cfg.config_hash())
    assert len(hashes) == 5
    cli = config_from_cli({"model": "lenet5", "density": 0.01, "offset": "dct_signflip",
                           "alpha_init": "kaiming", "alpha": "channel"}).resolve()  # fmt: skip
    s = cli.sparsity
    assert (s.offset, s.alpha, s.alpha_init, s.charge_alpha) == ("dct_signflip", "channel",
                                                                 "kaiming", True)  # fmt: skip
    assert (
        config_from_cli({"density": 0.01, "alpha_init": "0.5"}).resolve().sparsity.alpha_init == 0.5
    )
    with pytest.raises(
        DctpsError,
        match=r"^sparsity\.offset='hadamard' \(--offset hadamard\) "
        "applies only to method dctps$",
    ):
        RunConfig.from_dict({"sparsity": {"method": "random", "density": 0.01,
                                          "offset": "hadamard"}}).resolve()  # fmt: skip
    from dctps.train.setup import apply_sparsity

    model = lenet()
    apply_sparsity(model, cli)
    lay = [m for m in model.modules() if isinstance(m, DCTpSLayer)]
    assert {m.offset for m in lay} == {"dct_signflip"} and lay[0].alpha.shape == (6,)


def test_offsets_figure_grid():
    from dctps.results import figures

    cfgs = figures.figure_configs("offsets")
    dctps_runs = [c for c in cfgs if c.sparsity.method == "dctps"]
    assert {c.sparsity.offset for c in dctps_runs} == set(offsets.names())
    assert {c.model.name for c in cfgs} == {"lenet5", "resnet18"}
    assert {c.seed for c in cfgs} == {0, 1, 2}
    assert {c.sparsity.density for c in dctps_runs} == {0.01, 0.001, 0.0001}
    charged = [c for c in dctps_runs if c.sparsity.alpha == "channel" and c.sparsity.charge_alpha]
    assert {c.sparsity.density for c in charged} == {0.01}
    quick = figures.figure_configs("offsets", quick=True)
    assert {c.sparsity.density for c in quick if c.sparsity.alpha == "channel"
            and c.sparsity.charge_alpha} == {0.01}  # fmt: skip
    labels = {figures._offset_label(c.to_dict()) for c in dctps_runs}
    assert len(labels) == 8
