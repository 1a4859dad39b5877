"""sparsify() on arbitrary models and on the paper's architectures."""

import copy
import functools
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dctps
from dctps import DCTpSConv2d, DctpsError, DCTpSLinear
from dctps.models import build, names
from dctps.sparsify import DCTpSMultiheadAttention


def mlp():
    return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))  # fmt: skip


def cnn():
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


def test_mlp_exact_count_and_trains():
    torch.manual_seed(0)
    model = mlp()
    weights = sum(m.weight.numel() for m in model if isinstance(m, nn.Linear))
    biases = [m.bias.detach().clone() for m in model if isinstance(m, nn.Linear)]
    dctps.sparsify(model, 0.05)
    c = dctps.count(model)
    assert c.weights == weights and c.nonzeros == round(0.05 * weights) and c.alphas == 3
    assert c.other == 128 + 128 + 10
    assert all(isinstance(m, DCTpSLinear) for m in model if not isinstance(m, nn.ReLU))
    # biases kept with their values
    for b, m in zip(biases, [m for m in model if isinstance(m, DCTpSLinear)], strict=True):
        assert torch.equal(b, m.bias.detach())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == c.trainable
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    x, y = torch.randn(64, 64), torch.randint(0, 10, (64,))
    first = nn.functional.cross_entropy(model(x), y).item()
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.8


def test_cnn_with_depthwise_and_bn():
    model = dctps.sparsify(cnn(), 0.2, allocation="epf")
    assert isinstance(model[3], DCTpSConv2d) and model[3].groups == 16
    assert isinstance(model[1], nn.BatchNorm2d)
    assert model(torch.randn(2, 3, 8, 8)).shape == (2, 10)


def test_exclude_by_pattern():
    model = dctps.sparsify(mlp(), 0.1, exclude=["4"])
    assert isinstance(model[4], nn.Linear) and not isinstance(model[4], DCTpSLinear)
    assert dctps.count(model).nonzeros == round(0.1 * (64 * 128 + 128 * 128)) + 128 * 10


def test_transformer_encoder_packed_attention():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
    total = sum(
        p.numel() for n, p in enc.named_parameters() if n.endswith("weight") and p.dim() == 2
    )
    dctps.sparsify(enc, 0.1)
    attn = enc.layers[0].self_attn
    assert isinstance(attn, DCTpSMultiheadAttention)
    assert attn.in_proj.weight_shape == (96, 32)
    c = dctps.count(enc)
    assert c.weights == total and c.nonzeros == round(0.1 * total)
    assert not any(p.dim() == 2 for p in enc.parameters())  # no dense weight matrix is left
    x = torch.randn(3, 5, 32)
    out = enc(x)
    out.sum().backward()
    assert attn.in_proj.values.grad is not None
    # The replacement computes what nn.MultiheadAttention computes with the materialised weights.
    ref = nn.MultiheadAttention(32, 4, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(attn.in_proj_weight)
        ref.in_proj_bias.copy_(attn.in_proj_bias)
        ref.out_proj.weight.copy_(attn.out_proj.dense_weight())
        ref.out_proj.bias.copy_(attn.out_proj.bias)
    torch.testing.assert_close(attn(x, x, x)[0], ref(x, x, x)[0])
    enc.eval()  # inference fast path of TransformerEncoderLayer
    with torch.no_grad():
        torch.testing.assert_close(enc(x), out.detach(), atol=1e-5, rtol=1e-5)


def test_set_mode_warns_that_attention_projections_run_dense():
    """``F.multi_head_attention_forward`` takes the projections' weights: under ``'fast'`` they
    still build ``D`` (a fuzzing review found it silent); the feed-forward Linears do not."""
    enc = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0)
    dctps.sparsify(enc, 0.2)
    with pytest.warns(UserWarning, match=r"projections of 'self_attn' run on their materialised"):
        dctps.set_mode(enc, "fast")
    enc(torch.randn(3, 2, 16))
    assert enc.self_attn.in_proj.basis_built and not enc.linear1.basis_built
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dctps.set_mode(enc, "auto")
        dctps.set_mode(dctps.sparsify(mlp(), 0.1), "fast")


def test_seed_controls_supports():
    a = dctps.sparsify(mlp(), 0.1, seed=1)
    b = dctps.sparsify(mlp(), 0.1, seed=1)
    c = dctps.sparsify(mlp(), 0.1, seed=2)
    assert torch.equal(a[0].indices, b[0].indices)
    assert not torch.equal(a[0].indices, c[0].indices)


def test_consecutive_seeds_share_no_support():
    """Each layer's support seed is derived from (seed, layer) with numpy's SeedSequence. With
    ``seed + i`` (before), seed 1's layer i had seed 0's layer i+1 support: 8 of ResNet18's 21
    layers at 1% (same shape and size) repeated across seeds 0 and 1."""
    from dctps.sparsify import layer_seed

    def supports(seed: int) -> set[bytes]:
        torch.manual_seed(0)
        m = dctps.sparsify(build("resnet18"), 0.01, seed=seed)
        layers = [l for l in m.modules() if isinstance(l, (DCTpSLinear, DCTpSConv2d))]
        # EPL fills the first conv (1,728 weights) completely: every seed's support is all of it
        return {l.indices.numpy().tobytes() for l in layers if l.density < 1}

    assert supports(0).isdisjoint(supports(1))
    seeds = {layer_seed(s, i) for s in range(50) for i in range(60)}
    assert len(seeds) == 50 * 60  # no two (seed, layer) pairs share a stream


def test_a_seeded_sparsify_leaves_the_global_rng_alone():
    """With an explicit seed nothing is drawn from torch's global RNG (each new layer drew a
    bias, then overwritten by the dense one's): a dense and a DCTpS run started from the same
    torch.manual_seed see the same data order and later initialisations."""
    from dctps.sparsify import _dctps_names, _plain_names

    # as in a fresh process (a hygiene review: this test held only after another had filled
    # these caches; their first call built real layers, which drew from the global RNG)
    _plain_names.cache_clear()
    _dctps_names.cache_clear()
    torch.manual_seed(0)
    model = mlp()  # has biases
    model[0].is_input = True  # a plain attribute: sparsify's first call fills both caches
    dense_biases = [m.bias.detach().clone() for m in model if isinstance(m, nn.Linear)]
    state = torch.get_rng_state()
    sparse = dctps.sparsify(model, 0.1, seed=3)
    assert _plain_names.cache_info().currsize and _dctps_names.cache_info().currsize
    assert dctps.to_dense(sparse)[0].is_input  # and to_dense's reads _dctps_names
    assert torch.equal(torch.get_rng_state(), state)
    new = [m.bias for m in sparse if isinstance(m, DCTpSLinear)]
    assert len(new) == 3 and all(map(torch.equal, new, dense_biases))
    a = DCTpSLinear(8, 4, nnz=3, seed=5)
    b = DCTpSLinear(8, 4, nnz=3, seed=5)
    assert torch.equal(a.bias, b.bias) and a.bias.abs().max() <= 8**-0.5  # PyTorch's bound
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(DCTpSLinear(8, 4, nnz=3, seed=6).bias, a.bias)


@pytest.mark.parametrize("bad", [0, -1, 1.01, float("nan"), "x"])
def test_bad_density(bad):
    with pytest.raises(DctpsError, match="density"):
        dctps.sparsify(mlp(), bad)


def test_unknown_allocation():
    with pytest.raises(DctpsError, match="allocation"):
        dctps.sparsify(mlp(), 0.1, allocation="nope")


def test_model_without_layers():
    with pytest.raises(DctpsError, match="no nn.Linear"):
        dctps.sparsify(nn.Sequential(nn.ReLU()), 0.1)


def _weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


@pytest.mark.parametrize("name", names())
@pytest.mark.parametrize("density", [0.01, 0.001, 0.0001])
def test_paper_models_exact_nonzeros(name, density):
    torch.manual_seed(0)
    model = build(name, num_classes=10)
    weights = _weights(model)
    dctps.sparsify(model, density)
    c = dctps.count(model)
    assert c.weights == weights and c.nonzeros == round(density * weights)
    if density == 0.01:
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fixup_branches_zero_after_sparsify():
    model = dctps.sparsify(build("fixup_resnet110"), 0.01)
    zero_alpha = [m for m in model.modules() if isinstance(m, (DCTpSConv2d, DCTpSLinear))
                  and m.alpha.item() == 0.0]  # fmt: skip
    assert len(zero_alpha) == 54 + 1  # every block's conv2 and the classifier
    blocks = [m for m in model.modules() if hasattr(m, "branch") and hasattr(m, "shortcut")]
    assert len(blocks) == 54
    x = torch.randn(2, 16, 32, 32)
    assert torch.count_nonzero(blocks[0].branch(x)) == 0
    torch.testing.assert_close(blocks[0](x), torch.relu(blocks[0].shortcut(x)))
    assert torch.count_nonzero(model(torch.randn(2, 3, 32, 32))) == 0


def test_budgets_total_equals_count():
    model = build("vgg19")
    shapes = [
        tuple(m.weight.shape) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))
    ]
    for alloc in ["epl", "epf", "erk", "uniform"]:
        m = dctps.sparsify(build("vgg19"), 0.001, allocation=alloc)
        assert dctps.count(m).nonzeros == sum(dctps.budgets(shapes, 0.001, alloc))
        per_layer = [x.nnz for x in m.modules() if isinstance(x, (DCTpSConv2d, DCTpSLinear))]
        assert per_layer == dctps.budgets(shapes, 0.001, alloc)
    assert math.isclose(sum(dctps.budgets(shapes, 0.01, "epl_ref")) / _weights(model), 0.0092,
                        abs_tol=5e-4)  # fmt: skip


def test_a_density_that_keeps_no_weight_is_refused():
    model = nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))  # 5,500 weights
    with pytest.raises(DctpsError, match=r"density 1e-05 gives 0 of the 5,500 weights.*0.00018"):
        dctps.sparsify(model, 1e-5)
    assert dctps.count(dctps.sparsify(model, 0.00018)).nonzeros == 1


def test_per_channel_alphas_that_use_up_every_budget_are_refused():
    model = nn.Sequential(nn.Linear(20, 10), nn.Linear(10, 10), nn.Linear(10, 10))  # 400 weights
    # EPL at 27/400 gives 9 per layer: exactly the 9 extra alphas of each 10-channel layer
    with pytest.raises(DctpsError, match="per-channel alphas use up every layer's budget"):
        dctps.sparsify(model, 27 / 400, alpha="channel")
    assert dctps.count(dctps.sparsify(model, 27 / 400)).nonzeros == 27  # per-layer alphas: fine


def test_a_layer_registered_twice_is_replaced_under_both_names_and_counted_once():
    shared = nn.Linear(32, 32)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    dctps.sparsify(model, 0.01)
    assert isinstance(model[0], DCTpSLinear) and model[2] is model[0]
    c = dctps.count(model)
    assert (c.weights, c.nonzeros) == (32 * 32, round(0.01 * 32 * 32))
    x = torch.randn(4, 32)
    w = model[0].dense_weight()
    expected = F.linear(F.relu(F.linear(x, w, model[0].bias)), w, model[0].bias)
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("hook", ["register_hook", "register_post_accumulate_grad_hook"])
@pytest.mark.parametrize("where", ["2.weight", "2.bias", "0.in_proj_weight", "0.in_proj_bias"])
def test_a_tensor_hook_on_a_weight_or_bias_is_refused_before_anything_changes(hook, where):
    """A hygiene review: a gradient-clipping hook on a layer's weight or bias never ran again
    after sparsify (new Parameters), without a word; module hooks are carried over."""
    model = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Flatten(), nn.Linear(8, 4))
    owner, _, attr = where.rpartition(".")
    getattr(getattr(model.get_submodule(owner), attr), hook)(lambda t: None)
    leave = "0" if owner == "0" else "2"
    expect = (rf"^{re.escape(where)} has a tensor hook .*Remove the hook and register it after "
              rf"sparsify .*exclude=\['{leave}'\]$")  # fmt: skip
    with pytest.raises(DctpsError, match=expect):
        dctps.sparsify(model, 0.3)
    assert type(model[0]) is nn.MultiheadAttention and type(model[2]) is nn.Linear
    out = dctps.sparsify(model, 0.3, exclude=[leave])  # the hooked layer left dense
    plain = (nn.MultiheadAttention, nn.Linear)
    assert type(out[int(leave)]) in plain and type(out[2 - int(leave)]) not in plain


def test_tied_weights_are_refused_before_anything_changes():
    a, b = nn.Linear(8, 8), nn.Linear(8, 8)
    b.weight = a.weight
    model = nn.Sequential(a, nn.ReLU(), b, nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(DctpsError, match=r"tied weights.*exclude=\['0', '2'\]"):
        dctps.sparsify(model, 0.5)
    assert [type(model[i]) for i in (0, 2, 4)] == [nn.Linear] * 3
    dctps.sparsify(model, 0.5, exclude=["0", "2"])  # the suggested way out works
    assert model[2].weight is model[0].weight and isinstance(model[4], DCTpSLinear)
    emb = nn.Embedding(10, 8)
    head = nn.Linear(8, 10, bias=False)
    head.weight = emb.weight  # language-model style tying with a non-prunable module
    lm = nn.ModuleDict({"emb": emb, "head": head, "mid": nn.Linear(8, 8)})
    with pytest.raises(DctpsError, match="'head' is also 'emb.weight'"):
        dctps.sparsify(lm, 0.5)
    assert type(lm["head"]) is nn.Linear and type(lm["mid"]) is nn.Linear
    c, d = nn.Linear(8, 8), nn.Linear(8, 8)
    d.bias = c.bias  # a shared bias would be copied apart too
    with pytest.raises(DctpsError, match="'0' is also '1.bias' \\(tied weights\\)"):
        dctps.sparsify(nn.Sequential(c, d, nn.Linear(8, 2)), 0.5)


def test_an_unsupported_layer_leaves_the_whole_model_unchanged():
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 2),
    )
    before = [type(m) for m in model]
    with pytest.raises(DctpsError, match=r"layer '1' has padding_mode='reflect'.*exclude=\['1'\]"):
        dctps.sparsify(model, 0.1)
    assert [type(m) for m in model] == before
    dctps.sparsify(model, 0.1, exclude=["1"])
    assert [type(m) for m in model] == [DCTpSConv2d, nn.Conv2d, nn.Flatten, DCTpSLinear]


def test_exclude_covers_everything_inside_a_module_and_a_typo_is_an_error():
    model = nn.ModuleDict(
        {"body": nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8)), "fc": nn.Linear(8, 2)}
    )
    dctps.sparsify(model, 0.5, exclude=["body"])
    assert [type(m) for m in model["body"]] == [nn.Linear, nn.Linear]
    assert isinstance(model["fc"], DCTpSLinear)
    with pytest.raises(DctpsError, match="'fcc' matches no module.*body, fc"):
        dctps.sparsify(nn.ModuleDict({"body": nn.Linear(8, 8), "fc": nn.Linear(8, 2)}), 0.5,
                       exclude=["fcc"])  # fmt: skip


def test_excluding_an_attention_module_excludes_both_projections():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2), "fc": nn.Linear(16, 4)})
    dctps.sparsify(model, 0.1, exclude=["attn"])
    assert type(model["attn"]) is nn.MultiheadAttention
    assert type(model["attn"].out_proj) is not DCTpSLinear
    assert isinstance(model["fc"], DCTpSLinear)


def test_attention_with_other_key_and_value_sizes_is_refused():
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2, kdim=8, vdim=8)})
    model["fc"] = nn.Linear(16, 4)
    with pytest.raises(DctpsError, match=r"'attn' has kdim=8, vdim=8 != embed_dim=16.*exclude"):
        dctps.sparsify(model, 0.1)
    dctps.sparsify(model, 0.1, exclude=["attn"])
    assert isinstance(model["fc"], DCTpSLinear)


def test_attention_projections_follow_dtype_train_alpha_and_epf():
    layer = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.0).double()
    dctps.sparsify(layer, 0.3, allocation="epf", train_alpha=False)
    attn = layer.self_attn
    assert attn.in_proj.values.dtype == torch.float64
    assert not attn.in_proj.alpha.requires_grad and not attn.out_proj.alpha.requires_grad
    per_row = torch.bincount(attn.in_proj.indices // 16, minlength=48)
    assert int(per_row.max() - per_row.min()) <= 1  # EPF: equal per filter (row)
    x = torch.randn(5, 3, 16, dtype=torch.float64)
    assert layer(x).dtype == torch.float64


@pytest.mark.parametrize("flag", ["train_alpha", "charge_alpha"])
def test_boolean_flags_must_be_booleans(flag):
    with pytest.raises(DctpsError, match=f"{flag} must be True or False, got 'no'"):
        dctps.sparsify(mlp(), 0.1, **{flag: "no"})


def test_excluding_one_name_of_a_shared_module_is_refused():
    shared = nn.Linear(8, 8)
    model = nn.ModuleDict({"a": shared, "b": shared, "head": nn.Linear(8, 2)})
    with pytest.raises(DctpsError, match="exclude all its names or none"):
        dctps.sparsify(model, 0.5, exclude=["b"])
    assert type(model["a"]) is nn.Linear
    dctps.sparsify(model, 0.5, exclude=["a", "b"])
    assert type(model["b"]) is nn.Linear and isinstance(model["head"], DCTpSLinear)


def test_count_with_fixed_alphas_counts_only_what_trains():
    """A new user read '(+ 21 alphas)' after 'trainable' for a --fixed-alpha run: fixed alphas
    stay in the budget (alphas) but not in what an optimizer updates (trainable)."""
    from dctps.train.loop import describe

    model = dctps.sparsify(mlp(), 0.05, train_alpha=False)
    c = dctps.count(model)
    assert c.alphas == 3 and c.fixed_alphas == 3
    assert c.trainable == sum(p.numel() for p in model.parameters() if p.requires_grad)
    line = describe(
        {"hash": "h", "val_acc": 0.5, "test_acc": 0.5, "best_epoch": 1, "weights": c.weights,
         "nonzeros": c.nonzeros, "alphas": c.alphas, "fixed_alphas": c.fixed_alphas}
    )  # fmt: skip
    assert "(+ 3 alphas, fixed)" in line
    trained = dctps.count(dctps.sparsify(mlp(), 0.05))
    assert trained.fixed_alphas == 0 and trained.trainable == c.trainable + 3


@pytest.mark.parametrize("offset", ["dct", "gaussian"])
def test_a_meta_model_materialised_with_to_empty(offset):
    """``sparsify`` of a model on the meta device, then ``to_empty``: the layers refuse to run on
    their uninitialised support (the fast path read out of bounds and crashed the process)
    until ``reset_parameters()``, which draws what an eager ``sparsify`` with the same seed
    drew, or a ``load_state_dict``. The batched rebuild refuses too."""
    from dctps.batched import batch_rebuild

    eager = dctps.sparsify(mlp(), 0.1, seed=4, offset=offset, alpha_init="kaiming")
    with torch.device("meta"):
        meta = mlp()
    meta = dctps.sparsify(meta, 0.1, seed=4, offset=offset, alpha_init="kaiming")
    meta.to_empty(device="cpu")
    x = torch.randn(3, 64)
    for mode in ("dense", "fast") if offset == "dct" else ("dense",):
        dctps.set_mode(meta, mode)
        with pytest.raises(DctpsError, match=r"materialised with to_empty\(\).*reset_parameters"):
            meta(x)
    handle = batch_rebuild(meta)
    with pytest.raises(DctpsError, match="materialised with to_empty"):
        meta(x)
    handle.remove()
    loaded = copy.deepcopy(meta)
    loaded.load_state_dict(eager.state_dict())  # a state dict gives it a support too
    torch.testing.assert_close(loaded(x), eager(x))
    for m in meta.modules():
        if isinstance(m, DCTpSLinear):
            m.reset_parameters()
    for a, b in zip(eager, meta, strict=True):
        if isinstance(a, DCTpSLinear):
            assert torch.equal(a.indices, b.indices) and torch.equal(a.alpha, b.alpha)
            assert torch.equal(b.values, torch.zeros_like(b.values))
            if offset == "gaussian":
                assert torch.equal(a.offset_seed, b.offset_seed)
            torch.testing.assert_close(a.D, b.D)
    y = meta(x)  # runs now (biases are fresh draws, as after nn.Linear.reset_parameters)
    assert torch.isfinite(y).all()


def test_to_empty_from_a_real_device_is_detected_and_a_move_is_not():
    """``to_empty`` from a materialised layer (not only from ``meta``) hands back garbage
    indices too: refused until ``reset_parameters()``. Moves and casts keep the support."""
    model = dctps.sparsify(mlp(), 0.1, seed=3)
    x = torch.randn(2, 64)
    ref = model(x)
    model.to("cpu").double().float().half().float().share_memory()
    torch.testing.assert_close(model(x), ref, rtol=1e-2, atol=1e-2)  # via fp16: rounded
    model.to_empty(device="cpu")
    with pytest.raises(DctpsError, match=r"materialised with to_empty\(\)"):
        model(x)
    for m in model.modules():
        if isinstance(m, DCTpSLinear):
            m.reset_parameters()
    assert torch.isfinite(model(x)).all()


def test_reset_parameters_restarts_a_trained_layer():
    layer = DCTpSConv2d(4, 6, 3, nnz=20, seed=2, alpha_init=0.5)
    fresh = DCTpSConv2d(4, 6, 3, nnz=20, seed=2, alpha_init=0.5)
    with torch.no_grad():
        layer.values.normal_()
        layer.alpha.fill_(3.0)
        layer.bias.zero_()
    values = layer.values
    layer.reset_parameters()
    assert layer.values is values  # in place: optimizers keep their parameters
    for name, t in fresh.state_dict().items():
        assert torch.equal(layer.state_dict()[name], t), name


def test_convolutions_without_a_dctps_version_are_named_and_counted_dense():
    """Conv1d/Conv3d/ConvTranspose2d have no DCTpS layer: sparsify leaves them dense with a
    warning naming them (silenced by exclude), and count() counts their weights as dense
    trainable weights (it filed them under 'other', reporting 0.9% density for a model that
    trained 89% of its weights)."""
    model = nn.Sequential(nn.Conv1d(8, 16, 5), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4, 10))
    with pytest.warns(UserWarning, match=r"0 \(Conv1d, 640 weights\).*exclude=\['0'\]"):
        dctps.sparsify(model, 0.1, seed=0)
    c = dctps.count(model)
    assert c.weights == 640 + 640 and c.nonzeros == 640 + 64
    assert c.other == 16 + 10  # the biases
    quiet = nn.Sequential(nn.ConvTranspose2d(3, 4, 3), nn.Flatten(), nn.Linear(4 * 25, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dctps.sparsify(quiet, 0.1, seed=0, exclude=["0"])
    assert dctps.count(quiet).weights == 3 * 4 * 9 + 1000


def test_lazy_modules_are_refused_or_named():
    """A LazyLinear has no shape to sparsify yet: a clear error, model untouched (a bare
    RuntimeError before); a LazyConv1d, left dense anyway, is named in the warning."""
    model = nn.Sequential(nn.Linear(16, 16), nn.LazyLinear(10))
    with pytest.raises(DctpsError, match="LazyLinear '1' has not created its weights yet"):
        dctps.sparsify(model, 0.2, seed=0)
    assert type(model[0]) is nn.Linear
    with pytest.raises(DctpsError, match="LazyLinear '1' has not created .*, then count"):
        dctps.count(model)
    with pytest.warns(UserWarning, match=r"0 \(LazyConv1d, weights not created yet\)"):
        dctps.sparsify(nn.Sequential(nn.LazyConv1d(4, 3), nn.Flatten(), nn.Linear(24, 3)), 0.2)


class _LoRALinear(nn.Linear):
    """A Linear with an adapter: its own forward and parameters."""

    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o)
        self.A = nn.Parameter(torch.randn(2, i))
        self.B = nn.Parameter(torch.randn(o, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + x @ self.A.T @ self.B.T


class _InitOnlyConv(nn.Conv2d):
    """A Conv2d subclass that only changes its initialisation: nothing is lost, it converts."""

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)
        if self.bias is not None:  # left to torch.empty, it could hold a NaN (NaN != NaN)
            nn.init.constant_(self.bias, 0.25)


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (
            lambda: _LoRALinear(8, 4),
            r"'1' is a test_sparsify\._LoRALinear, a subclass of Linear with its own forward "
            r"and A, B",
        ),
        (
            lambda: nn.utils.parametrizations.weight_norm(nn.Linear(8, 4)),
            r"'1' has a parametrized weight \(e\.g\. weight_norm\)",
        ),
        (lambda: nn.Linear(8, 4).requires_grad_(False), r"'1' has a frozen weight"),
    ],
    ids=["subclass", "weight_norm", "frozen"],
)
def test_layers_sparsify_would_silently_change_are_refused(make, needle):
    model = nn.Sequential(nn.Linear(6, 8), make(), nn.ReLU(), nn.Linear(4, 2))
    before = [type(m) for m in model]
    with pytest.raises(DctpsError, match=needle + r".*exclude=\['1'\]"):
        dctps.sparsify(model, 0.5, seed=0)
    assert [type(m) for m in model] == before  # nothing was swapped
    dctps.sparsify(model, 0.5, seed=0, exclude=["1"])  # the advertised way out
    assert isinstance(model[0], DCTpSLinear) and type(model[1]) is before[1]


def test_attention_projections_patched_forwards_and_spectral_norm_are_refused_too():
    """The plain-layer check skipped attention (a frozen in_proj became trainable; a subclass's
    forward was lost; the advised exclude of one projection was itself refused), a forward
    patched on the instance went unseen, and spectral_norm was called "pruned"."""
    frozen = nn.Sequential(nn.MultiheadAttention(8, 2), nn.Linear(8, 8))
    frozen[0].in_proj_weight.requires_grad_(False)
    with pytest.raises(DctpsError, match=r"'0\.in_proj' has a frozen weight.*exclude=\['0'\]"):
        dctps.sparsify(frozen, 0.5, seed=0)
    dctps.sparsify(frozen, 0.5, seed=0, exclude=["0"])  # the advice works
    head = nn.Sequential(nn.MultiheadAttention(8, 2))
    head[0].out_proj.weight.requires_grad_(False)
    with pytest.raises(DctpsError, match=r"'0\.out_proj' has a frozen weight.*exclude=\['0'\]"):
        dctps.sparsify(head, 0.5, seed=0)

    class MyAttention(nn.MultiheadAttention):
        def forward(self, *a, **k):  # type: ignore[override]
            return super().forward(*a, **k)

    with pytest.raises(DctpsError, match=r"MyAttention, a subclass of MultiheadAttention with its"):
        dctps.sparsify(nn.Sequential(MyAttention(8, 2)), 0.5, seed=0)
    patched = mlp()
    patched[0].forward = lambda x: x  # as adapters patched onto an instance do
    with pytest.raises(DctpsError, match=r"'0' has its own forward"):
        dctps.sparsify(patched, 0.1, seed=0)
    sn = nn.Sequential(nn.utils.spectral_norm(nn.Linear(8, 4)))
    with pytest.raises(DctpsError, match=r"reparametrised weight \(weight_orig: spectral_norm"):
        dctps.sparsify(sn, 0.5, seed=0)
    # a frozen bias stays frozen; hooks on an attention's out_proj follow it (attention itself
    # never calls out_proj as a module, so they fire only where the user calls it)
    model = nn.Sequential(nn.Linear(8, 8), nn.MultiheadAttention(8, 2))
    model[0].bias.requires_grad_(False)
    seen = []
    model[1].out_proj.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    dctps.sparsify(model, 0.5, seed=0)
    assert not model[0].bias.requires_grad and model[0].values.requires_grad
    model[1].out_proj(torch.randn(3, 8))
    assert seen == [(3, 8)]


def test_a_subclass_changing_only_its_init_converts():
    model = nn.Sequential(_InitOnlyConv(3, 4, 3), nn.Flatten(), nn.LazyLinear(2))
    model(torch.randn(1, 3, 6, 6))
    biases = [model[0].bias.detach().clone(), model[2].bias.detach().clone()]
    dctps.sparsify(model, 0.5, seed=0)
    assert isinstance(model[0], DCTpSConv2d) and isinstance(model[2], DCTpSLinear)
    # the same conv and linear ops on W = alpha D + S, with the dense layers' biases
    assert torch.equal(model[0].bias, biases[0]) and torch.equal(model[2].bias, biases[1])
    x = torch.randn(2, 3, 6, 6)
    h = F.conv2d(x, model[0].dense_weight(), biases[0])
    expected = F.linear(h.flatten(1), model[2].dense_weight(), biases[1])
    torch.testing.assert_close(model(x), expected)


def test_hooks_follow_the_layer_sparsify_replaces():
    model = mlp()
    seen: list[str] = []
    pre = model[0].register_forward_pre_hook(lambda m, args: seen.append("pre"))
    model[0].register_forward_hook(lambda m, args, out: seen.append(f"post {tuple(out.shape)}"))
    model[2].register_full_backward_hook(lambda m, gi, go: seen.append("backward"))
    dctps.sparsify(model, 0.1, seed=0)
    model(torch.randn(3, 64)).sum().backward()
    assert seen == ["pre", "post (3, 128)", "backward"]
    pre.remove()  # a handle taken before sparsify still removes its hook
    seen.clear()
    model(torch.randn(3, 64))
    assert seen == ["post (3, 128)"]


# ----------------------------------------------------------------- a review of unusual models


def test_unbatched_input_to_a_batch_first_attention():
    """An unbatched (L, E) input was transposed as if it had a batch dimension: a crash for
    L != E, a wrong output for L == E."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.MultiheadAttention(16, 4, batch_first=True))
    dense = copy.deepcopy(model)
    dctps.sparsify(model, 0.3, seed=0)
    twin = dctps.to_dense(model)
    for length in (16, 5):
        x = torch.randn(length, 16)
        out = model[0](x, x, x)[0]
        assert out.shape == (length, 16)
        torch.testing.assert_close(out, twin[0](x, x, x)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out, model[0](x[None], x[None], x[None])[0][0])
        assert dense[0](x, x, x)[0].shape == out.shape


def test_an_eval_model_stays_in_eval_after_sparsify_and_load(tmp_path):
    """New layers were created in train mode: an eval model's attention ran its dropout."""
    torch.manual_seed(0)

    def make():
        return nn.Sequential(nn.MultiheadAttention(16, 4, dropout=0.5), nn.Linear(16, 4)).eval()

    model = dctps.sparsify(make(), 0.3, seed=0)
    assert not any(m.training for m in model.modules())
    x = torch.randn(3, 2, 16)
    first = model[0](x, x, x)[0]
    torch.testing.assert_close(model[0](x, x, x)[0], first)  # no dropout
    dctps.save(model, tmp_path / "m.dctps")
    loaded = dctps.load(tmp_path / "m.dctps", model=make())
    assert not any(m.training for m in loaded.modules())
    torch.testing.assert_close(loaded[0](x, x, x)[0], first)
    model.train()
    assert all(m.training for m in model.modules())


def test_to_empty_guard_covers_attention_weight_and_to_dense():
    """Only DCTpSLayer.forward checked for a support left uninitialised by to_empty(): an
    attention (through in_proj_weight), .weight and to_dense ran on garbage indices."""
    with torch.device("meta"):
        model = nn.Sequential(nn.MultiheadAttention(32, 4), nn.Linear(32, 4))
    dctps.sparsify(model, 0.3, seed=0)
    model.to_empty(device="cpu")
    x = torch.randn(3, 2, 32)
    for call in (
        lambda: model[0](x, x, x),
        lambda: model[1].weight,
        lambda: dctps.to_dense(model),
    ):
        with pytest.raises(DctpsError, match="materialised with to_empty"):
            call()
    for m in model.modules():
        if isinstance(m, dctps.DCTpSLinear):
            m.reset_parameters()
    model[0](x, x, x)  # runs again


def test_to_dense_and_load_keep_the_models_hooks(tmp_path):
    """to_dense promised the same outputs but dropped forward hooks; dctps.load into a fresh
    model dropped the hooks registered on the layers it replaced."""
    torch.manual_seed(0)

    def make():
        m = mlp()
        m[2].register_forward_hook(lambda mod, inp, out: out * 0)
        return m

    model = dctps.sparsify(make(), 0.1, seed=0)
    x = torch.randn(5, 64)
    out = model(x)
    assert torch.equal(model[2](torch.randn(2, 128)), torch.zeros(2, 128))
    twin = dctps.to_dense(model)
    assert len(twin[2]._forward_hooks) == 1
    torch.testing.assert_close(twin(x), out, atol=1e-5, rtol=1e-5)
    assert len(model[2]._forward_hooks) == 1  # the original keeps its hook
    dctps.save(model, tmp_path / "m.dctps")
    loaded = dctps.load(tmp_path / "m.dctps", model=make())
    torch.testing.assert_close(loaded(x), out)


@pytest.mark.parametrize(
    ("mode", "offset"),
    [("fast", "dct"), ("factor", "dct"), ("auto", "dct"), ("fast", "dct_signflip")],
)
def test_a_model_loaded_under_inference_mode_runs_every_path(tmp_path, mode, offset):
    """Layers built or loaded under torch.inference_mode have inference-tensor indices (and
    offset seeds), which keep no version counter: the fast paths' caches raised RuntimeError."""
    torch.manual_seed(0)
    model = dctps.sparsify(cnn(), 0.1, seed=0, offset=offset).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        ref = model(x)
    dctps.save(model, tmp_path / "m.dctps")
    with torch.inference_mode():
        served = dctps.load(tmp_path / "m.dctps", model=cnn()).eval()
        dctps.set_mode(served, mode)
        torch.testing.assert_close(served(x), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(served(x), ref, atol=1e-5, rtol=1e-5)  # cached plans


def test_recurrent_embedding_and_bilinear_weights_are_named_and_counted_dense():
    """An LSTM, an Embedding and a Bilinear stay dense without a word, and count() filed their
    weights under 'other': a 1% model training 28,297 parameters reported 0.94% density."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(100, 32)
            self.rnn = nn.LSTM(32, 64)
            self.bil = nn.Bilinear(64, 64, 8)
            self.fc = nn.Linear(8, 5)

        def forward(self, tokens):
            h = self.rnn(self.emb(tokens))[0][-1]
            return self.fc(self.bil(h, h))

    model = Net()
    rnn_w = sum(p.numel() for p in model.rnn.parameters() if p.dim() == 2)
    dense = 3200 + rnn_w + model.bil.weight.numel()
    with pytest.warns(UserWarning, match=r"3 layer\(s\) stay dense.*emb \(Embedding, 3,200 "
                      r"weights\).*rnn \(LSTM, .*bil \(Bilinear, 32,768 weights\).*exclude="
                      r"\['emb', 'rnn', 'bil'\]"):  # fmt: skip
        dctps.sparsify(model, 0.1, seed=0)
    c = dctps.count(model)
    assert c.weights == dense + 40 and c.nonzeros == dense + 4
    assert c.other == sum(p.numel() for p in model.rnn.parameters() if p.dim() == 1) + 8 + 5
    assert c.trainable == sum(p.numel() for p in model.parameters())
    model(torch.randint(0, 100, (7, 3))).sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dctps.sparsify(Net(), 0.1, seed=0, exclude=["emb", "rnn", "bil"])


def test_free_standing_parameters_stay_other_and_recurrent_cells_are_warned():
    """count() took every parameter of two or more dimensions for a dense weight: a ViT's
    positional embedding and an attention's bias_k made a 1% model report 21%; an LSTMCell
    stayed dense without a warning."""

    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.pos = nn.Parameter(torch.zeros(1, 64, 32))
            self.attn = nn.MultiheadAttention(32, 4, add_bias_kv=True)
            self.fc = nn.Linear(32, 10)

    model = dctps.sparsify(Tiny(), 0.01, seed=0)
    c = dctps.count(model)
    assert c.weights == 4 * 32 * 32 + 320 and c.density == pytest.approx(0.01, abs=5e-4)
    assert c.other == 64 * 32 + 2 * 32 + 3 * 32 + 32 + 10  # pos, bias_k/v, biases
    cell = nn.Sequential(nn.LSTMCell(16, 32), nn.Linear(32, 4))
    with pytest.warns(UserWarning, match=r"0 \(LSTMCell, 6,144 weights\)"):
        dctps.sparsify(cell, 0.1, seed=0)
    assert dctps.count(cell).weights == 4 * 32 * (16 + 32) + 128


def test_sparsifying_in_two_calls_draws_new_supports():
    """A second sparsify (the first excluded some layers) numbered its layers from 0 again and
    gave them the supports of the first call's layers."""
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64))
    dctps.sparsify(model, 0.1, seed=0, exclude=["2"])
    dctps.sparsify(model, 0.1, seed=0)
    assert not torch.equal(model[0].indices, model[2].indices)
    once = dctps.sparsify(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64)), 0.1,
                          seed=0)  # fmt: skip
    assert torch.equal(once[0].indices, model[0].indices)  # the first call is unchanged


def test_a_parametrized_bias_is_named_as_such():
    layer = nn.Linear(8, 4)
    torch.nn.utils.parametrize.register_parametrization(layer, "bias", nn.Identity())
    with pytest.raises(DctpsError, match=r"'0' has a parametrized bias \(e\.g\. weight_norm\)"):
        dctps.sparsify(nn.Sequential(layer), 0.5)


def test_batched_rebuild_of_a_model_built_under_inference_mode():
    from dctps.batched import batch_rebuild

    torch.manual_seed(0)
    ref = dctps.sparsify(cnn(), 0.1, seed=0).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = ref(x)
    with torch.inference_mode():
        model = dctps.sparsify(cnn(), 0.1, seed=0).eval()
        model.load_state_dict(ref.state_dict())
        batch_rebuild(model)
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_density_as_a_percent_string_as_the_cli_takes_it():
    """`sparsify(m, "0.1")` was accepted but `"10%"` refused, though the CLI takes both."""
    import dctps

    def net():
        return nn.Sequential(nn.Linear(40, 80))

    assert dctps.sparsify(net(), "10%", seed=0)[0].nnz == 320 == round(0.1 * 40 * 80)
    assert dctps.sparsify(net(), " 0.5% ", seed=0)[0].nnz == 16
    with pytest.raises(DctpsError, match=r"density must be in \(0, 1\] .*got '150%'"):
        dctps.sparsify(net(), "150%")


def test_count_of_a_layer_whose_values_are_pruned():
    """``torch.nn.utils.prune`` of a DCTpS layer's ``values``: the pruned entries are no longer
    non-zeros, and ``values_orig`` is not an "other" parameter (it was counted as both)."""
    model = nn.Sequential(DCTpSLinear(8, 8, nnz=20, seed=0), nn.ReLU(), DCTpSLinear(8, 4, nnz=10))
    before = dctps.count(model)
    torch.nn.utils.prune.random_unstructured(model[0], "values", 0.5)
    torch.nn.utils.prune.random_unstructured(model[0], "alpha", 0.0)
    after = dctps.count(model)
    assert (before.nonzeros, after.nonzeros) == (30, 20)
    assert after.other == before.other == 12
    assert after.alphas == before.alphas == 2


def test_separate_qkv_attention_weights_are_counted_and_named_by_prune():
    """count() filed an attention's separate q/k/v weights (kdim/vdim != embed_dim) under
    'other', and prune() left them dense without a word: a "5%" pruned model trained 56%."""

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(6, 8)
            self.att = nn.MultiheadAttention(8, 2, kdim=4, vdim=4)
            self.fc = nn.Linear(8, 3)

        def forward(self, x):
            q = self.inp(x)
            return self.fc(self.att(q, x[..., :4], x[..., :4])[0]).mean(0)

    model = Net()
    qkv = 8 * 8 + 8 * 4 + 8 * 4
    weights = 8 * 6 + qkv + 8 * 8 + 3 * 8
    c = dctps.count(model)
    assert (c.weights, c.nonzeros) == (weights, weights)
    assert c.trainable == sum(p.numel() for p in model.parameters())
    said = r"prune: 1 layer\(s\) stay dense.*att \(MultiheadAttention with separate q/k/v weights"
    with pytest.warns(UserWarning, match=said + r", 128 weights\)"):
        dctps.prune(model, 0.05, "random", seed=0)
    kept = sum(int(m.sum()) for n, m in model.named_buffers() if n.endswith("_mask"))
    assert kept == round(0.05 * (weights - qkv))
    c = dctps.count(model)
    assert (c.weights, c.nonzeros) == (weights, kept + qkv)


def test_prune_names_layers_it_leaves_dense():
    """prune() left a Conv1d dense silently (sparsify warns about it): a 1% audio CNN was 97%."""
    model = nn.Sequential(
        nn.Conv1d(1, 16, 9), nn.ReLU(), nn.AdaptiveAvgPool1d(4), nn.Flatten(), nn.Linear(64, 5)
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"prune: 1 layer\(s\) stay dense.*0 \(Conv1d, 144 "
                      r"weights\).*not counted in the pruned density"):  # fmt: skip
        dctps.prune(model, 0.1, "random", seed=0)
    c = dctps.count(model)
    assert (c.weights, c.nonzeros) == (144 + 320, 144 + 32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dctps.prune(mlp(), 0.1, "random", seed=0)  # nothing left dense: no warning


@pytest.mark.parametrize("api", ["new", "old"])
def test_count_of_a_weight_normed_layer_counts_its_weights_once(api):
    """count() took a weight_norm'ed layer's computed weight as its weights and its direction
    v again as 'other': 21,210 trainable reported for 11,210 parameters."""
    model = nn.Sequential(nn.Linear(100, 100), nn.ReLU(), nn.Linear(100, 10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old API is deprecated
        if api == "new":
            nn.utils.parametrizations.weight_norm(model[0])
        else:
            nn.utils.weight_norm(model[0])
    real = sum(p.numel() for p in model.parameters())
    c = dctps.count(model)
    assert (c.weights, c.nonzeros, c.other) == (11000, 11000, 100 + 100 + 10)  # g, biases
    assert c.trainable == real == 11210
    dctps.sparsify(model, 0.1, seed=0, exclude=["0"])
    c = dctps.count(model)
    assert c.weights == 11000 and c.trainable == sum(p.numel() for p in model.parameters())


def test_torchscript_layers_are_named_and_counted_dense():
    """A scripted submodule stayed dense without a word and count() filed it under 'other'; a
    wholly scripted model was said to have no Linear layers."""
    model = nn.Sequential(torch.jit.script(nn.Linear(64, 64)), nn.ReLU(), nn.Linear(64, 2))
    with pytest.warns(UserWarning, match=r"0 \(TorchScript Linear, 4,096 weights\).*exclude="
                      r"\['0'\].*sparsify the eager model, then script it"):  # fmt: skip
        dctps.sparsify(model, 0.01, seed=0)
    c = dctps.count(model)
    assert (c.weights, c.nonzeros) == (4096 + 128, 4096 + 1)
    assert c.trainable == sum(p.numel() for p in model.parameters())
    with pytest.raises(DctpsError, match="TorchScript module .*sparsify the eager model"):
        dctps.sparsify(torch.jit.script(mlp()), 0.1)


class _HeadWithMethod(nn.Linear):
    def logits_scale(self) -> float:
        return 2.0


class _CachedFan(nn.Linear):
    @functools.cached_property
    def fan(self) -> int:  # a descriptor: copied, it read as the descriptor object itself
        return self.in_features


class _ScaledInit(nn.Linear):
    tag = "head"  # a class attribute
    act = nn.ReLU  # a class held as a value (callable, yet no method)

    def __init__(self, i: int, o: int) -> None:
        super().__init__(i, o)
        self.scale = 2.0

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.weight)


def test_a_layers_own_attributes_come_along_and_its_own_methods_are_refused():
    """An API review: a Linear subclass's extra method passed the plain-layer check (only
    forward was compared), and the model's next call failed with an AttributeError; a flag
    set on a layer (`m.is_residual = True`) vanished, and code reading it took its default."""
    model = nn.Sequential(nn.Linear(6, 8), _HeadWithMethod(8, 4))
    with pytest.raises(
        DctpsError,
        match=r"'1' is a test_sparsify\._HeadWithMethod, a subclass "
        r"of Linear with its own logits_scale, which the DCTpS layer would drop",
    ):
        dctps.sparsify(model, 0.3)
    assert type(model[1]) is _HeadWithMethod  # left as it was
    with pytest.raises(DctpsError, match=r"_CachedFan, a subclass of Linear with its own fan"):
        dctps.sparsify(nn.Sequential(nn.Linear(6, 8), _CachedFan(8, 4)), 0.3)
    model = nn.Sequential(nn.Linear(6, 8), _ScaledInit(8, 4))
    model[0].is_residual = True
    dctps.sparsify(model, 0.3)
    assert isinstance(model[0], DCTpSLinear) and isinstance(model[1], DCTpSLinear)
    assert (model[0].is_residual, model[1].scale, model[1].tag) == (True, 2.0, "head")
    assert model[1].act is nn.ReLU
    assert not hasattr(model[1], "is_residual")  # each layer its own
    plain = dctps.to_dense(model)  # and back
    assert type(plain[0]) is nn.Linear and (plain[0].is_residual, plain[1].scale) == (True, 2.0)
    # a name the DCTpS layer uses itself would be shadowed or lost: refused, nothing replaced
    model = nn.Sequential(nn.Linear(6, 8), nn.Linear(8, 4))
    model[1].nnz = 3
    with pytest.raises(
        DctpsError,
        match=r"'1' has attribute\(s\) nnz, which a DCTpS layer has "
        r"too .*exclude=\['1'\]",
    ):
        dctps.sparsify(model, 0.3)
    assert type(model[0]) is nn.Linear
