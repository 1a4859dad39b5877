"""Sparse checkpoints (dctps.save / load / inspect), export to plain PyTorch (to_dense), and the
errors for damaged or foreign files."""

import copy
import json
import os
import re
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import dctps
from dctps import DctpsError, checkpoint_io
from dctps.cli import app
from dctps.layers import DCTpSConv2d, DCTpSLayer, DCTpSLinear
from dctps.models import build


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1, groups=2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, padding=1, groups=32),  # depthwise
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


def trained(model, x):
    """Random non-zeros and alphas, and BN statistics moved by two training-mode passes."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, DCTpSLayer):
                m.values.copy_(torch.randn(m.nnz, generator=g) * 0.1)
                m.alpha.fill_(0.9)
    model.train()
    model(x)
    model(x * 2)
    return model.eval()


def stored_tensors(path):
    header, _, _ = checkpoint_io._read(path)
    return header


def test_small_cnn_round_trip_into_fresh_dense_model(tmp_path):
    x = torch.randn(4, 3, 8, 8)
    model = trained(dctps.sparsify(small_cnn(), 0.05, seed=3), x)
    dctps.set_mode(model, "auto")
    ref = model(x)
    path = dctps.save(model, tmp_path / "cnn.dctps")
    with pytest.raises(DctpsError, match="no architecture spec"):
        dctps.load(path)
    loaded = dctps.load(path, model=small_cnn()).eval()
    assert torch.equal(loaded(x), ref)
    assert loaded[0].mode == "auto"
    # also into an already sparsified model with another support: the file is the truth
    other = dctps.sparsify(small_cnn(), 0.2, seed=9)
    dctps.load(path, model=other)
    assert torch.equal(other.eval()(x), ref)


def test_file_holds_only_nonzeros_alphas_biases_and_bn(tmp_path):
    model = dctps.sparsify(small_cnn(), 0.05, seed=3)
    path = dctps.save(model, tmp_path / "cnn.dctps")
    header = stored_tensors(path)
    nnz = {n: m.nnz for n, m in model.named_modules() if isinstance(m, DCTpSLayer)}
    small = 0
    for e in header["tensors"]:
        layer, _, leaf = e["key"].rpartition(".")
        numel = torch.Size(e["shape"]).numel()
        if leaf in ("values", "indices"):
            assert numel == nnz[layer], e
            if leaf == "indices":
                assert e["dtype"] == "int32"
        elif leaf == "alpha":
            assert numel == 1
        else:  # biases and BatchNorm: one entry per channel at most
            assert leaf in ("bias", "weight", "running_mean", "running_var", "num_batches_tracked")
            assert numel <= 32, e
            small += numel
    assert "D" not in json.dumps(header["tensors"]).replace('"dtype"', "")
    expected = sum(nnz.values()) * 2 + len(nnz) + small
    assert sum(torch.Size(e["shape"]).numel() for e in header["tensors"]) == expected


def test_resnet18_round_trip_without_the_model_class(tmp_path):
    x = torch.randn(2, 3, 32, 32)
    model = trained(dctps.sparsify(build("resnet18"), 0.001, seed=0), x)
    ref = model(x)
    path = dctps.save(model, tmp_path / "r18.dctps", arch={"name": "resnet18", "num_classes": 10})
    loaded = dctps.load(path).eval()
    assert torch.equal(loaded(x), ref)
    assert dctps.count(loaded) == dctps.count(model)
    info = dctps.inspect(path)
    assert info.arch == {"name": "resnet18", "num_classes": 10}
    assert info.nnz == dctps.count(model).nonzeros and len(info.rows) == 21
    assert info.file_bytes == path.stat().st_size
    # a model carrying its spec needs no arch= argument
    model.dctps_arch = {"name": "resnet18", "num_classes": 10}
    path2 = dctps.save(model, tmp_path / "r18b.dctps")
    assert torch.equal(dctps.load(path2).eval()(x), ref)


@pytest.mark.parametrize(
    ("arch", "why"),
    [
        ({"name": "resnet18", "num_classes": 100}, r"'classifier' has weight shape \[10, 512\] "
         r"in the file but \[100, 512\]"),
        ({"name": "resnet18", "bogus": 1}, r"unexpected keyword argument 'bogus'"),
        ({"name": "vgg19"}, r"DCTpS layer 'features.0.0' that the VGG .* does not have"),
    ],
)  # fmt: skip
def test_save_refuses_an_arch_that_does_not_build_the_model(tmp_path, arch, why):
    """save checked only arch's name: a wrong num_classes or keyword was written, and the
    file failed to load later, far from the slip. Nothing is written."""
    model = dctps.sparsify(build("resnet18"), 0.01, seed=0)
    with pytest.raises(
        DctpsError,
        match=r"^arch=\{\"name\": .* does not describe the model "
        r"being saved, so load could not rebuild it from the file: .*" + why,
    ):
        dctps.save(model, tmp_path / "m.dctps", arch=arch)
    assert list(tmp_path.iterdir()) == []
    # carried by the model, built by dctps.models.build before its head was replaced (a
    # fine-tuning): saved without it, with a warning, for load(path, model) (a diff review:
    # refused, with advice to give no arch where none was given)
    model.dctps_arch = arch
    with pytest.warns(UserWarning, match=r"saving without the model's dctps_arch .* no longer "
                      r"describes it .*dctps\.load\(path, model\)"):  # fmt: skip
        path = dctps.save(model, tmp_path / "m.dctps")
    assert dctps.inspect(path).arch is None
    fresh = dctps.sparsify(build("resnet18"), 0.01, seed=1)
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(dctps.load(path, fresh).eval()(x), model.eval()(x))


def test_to_dense_gives_plain_layers_and_same_outputs():
    x = torch.randn(4, 3, 8, 8)
    model = trained(dctps.sparsify(small_cnn(), 0.05, seed=3), x)
    dense = checkpoint_io.to_dense(model)
    assert not any(isinstance(m, DCTpSLayer) for m in dense.modules())
    assert isinstance(dense[0], nn.Conv2d) and isinstance(dense[9], nn.Linear)
    assert dense[3].groups == 2 and dense[6].groups == 32
    torch.testing.assert_close(dense(x), model(x), atol=1e-6, rtol=1e-6)
    assert isinstance(model[0], DCTpSLayer)  # the original is untouched


def test_to_dense_and_load_leave_the_callers_random_stream_alone(tmp_path):
    """A hygiene review: each `to_dense` (a plain layer's initialisation, then overwritten) and
    each `load` into a dense model (a DCTpS layer's bias draw, then overwritten) advanced torch's
    global generator: a loop that exported a model each epoch changed its own dropout masks."""
    enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    model = nn.Sequential(small_cnn(), nn.Flatten())
    for m in (enc, model):
        dctps.sparsify(m, 0.1, seed=0)
    checkpoint_io.save(model, tmp_path / "m.pt")
    target = nn.Sequential(small_cnn(), nn.Flatten())  # built (and drawn) before the watch
    torch.manual_seed(5)
    rng = torch.get_rng_state()
    dense = dctps.to_dense(model)
    dense_enc = dctps.to_dense(enc)
    loaded = dctps.load(tmp_path / "m.pt", model=target)
    assert torch.equal(torch.get_rng_state(), rng)
    q = torch.randn(2, 5, 16)
    torch.testing.assert_close(dense_enc(q), enc(q), atol=1e-5, rtol=1e-5)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))
    torch.testing.assert_close(dense(x), model(x), atol=1e-5, rtol=1e-5)


def test_to_dense_of_a_model_with_the_old_weight_norm_names_the_layer():
    """torch cannot deepcopy a module under the old torch.nn.utils.weight_norm: to_dense gave
    torch's RuntimeError from deep inside copy.py; it names the layer and the fix."""
    head = nn.Linear(16, 4)
    torch.nn.utils.weight_norm(head)
    model = nn.Sequential(dctps.sparsify(nn.Sequential(nn.Linear(8, 16)), 0.2), nn.ReLU(), head)
    with pytest.raises(DctpsError, match=r"layer '2'.*old torch.nn.utils.weight_norm.*"
                                         r"parametrizations.weight_norm"):  # fmt: skip
        checkpoint_io.to_dense(model)
    torch.nn.utils.remove_weight_norm(head)  # the fix it names works
    x = torch.randn(3, 8)
    torch.testing.assert_close(checkpoint_io.to_dense(model)(x), model(x))


def test_to_dense_multihead_attention():
    torch.manual_seed(0)
    enc = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    dctps.sparsify(enc, 0.1, seed=0)
    for m in enc.modules():
        if isinstance(m, DCTpSLayer):
            with torch.no_grad():
                m.values.normal_()
    enc.eval()
    x = torch.randn(2, 5, 16)
    dense = dctps.to_dense(enc)
    assert type(dense.self_attn) is nn.MultiheadAttention
    torch.testing.assert_close(dense(x), enc(x), atol=1e-5, rtol=1e-5)


def test_to_dense_freezes_what_was_frozen():
    """A dense tensor requires grad as what it was made of does: a fused weight iff its
    ``alpha`` or ``values`` did, a bias as its bias. A frozen model's export came back with
    every parameter trainable."""
    model = dctps.sparsify(small_cnn(), 0.05, seed=3)
    model.requires_grad_(False)
    model[9].values.requires_grad_(True)  # one layer's S trains, its alpha and bias do not
    model[3].bias.requires_grad_(True)  # one bias trains, its weight does not
    dense = dctps.to_dense(model)
    trains = {n for n, p in dense.named_parameters() if p.requires_grad}
    assert trains == {"9.weight", "3.bias"}
    enc = dctps.sparsify(nn.TransformerEncoderLayer(16, 4, 32, batch_first=True), 0.1, seed=0)
    enc.requires_grad_(False)
    enc.self_attn.out_proj.alpha.requires_grad_(True)
    trains = {n for n, p in dctps.to_dense(enc).named_parameters() if p.requires_grad}
    assert trains == {"self_attn.out_proj.weight"}
    assert all(
        p.requires_grad for p in dctps.to_dense(dctps.sparsify(small_cnn(), 0.05)).parameters()
    )


def test_multihead_attention_round_trip(tmp_path):
    def fresh():
        torch.manual_seed(0)
        return nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)

    enc = dctps.sparsify(fresh(), 0.1, seed=0).eval()
    for m in enc.modules():
        if isinstance(m, DCTpSLayer):
            with torch.no_grad():
                m.values.normal_()
    x = torch.randn(2, 5, 16)
    path = dctps.save(enc, tmp_path / "enc.dctps")
    loaded = dctps.load(path, model=fresh()).eval()
    assert torch.equal(loaded(x), enc(x))


@pytest.fixture()
def saved(tmp_path):
    return dctps.save(dctps.sparsify(small_cnn(), 0.05, seed=3), tmp_path / "cnn.dctps")


def test_truncated_file(saved):
    data = saved.read_bytes()
    for cut in (len(data) - 3, len(data) // 2, 12, 3):
        saved.write_bytes(data[:cut])
        with pytest.raises(DctpsError, match=r"cnn\.dctps.*(truncated|magic)"):
            dctps.load(saved, model=small_cnn())


def test_corrupted_file(saved):
    data = bytearray(saved.read_bytes())
    data[len(data) // 2] ^= 0xFF
    saved.write_bytes(bytes(data))
    with pytest.raises(DctpsError, match=r"cnn\.dctps.*checksum"):
        dctps.inspect(saved)


def test_foreign_files(tmp_path):
    sd = tmp_path / "plain.pt"
    torch.save(small_cnn().state_dict(), sd)
    with pytest.raises(
        DctpsError, match=r"plain\.pt is not a dctps checkpoint.*dctps export.*torch\.load"
    ):
        dctps.load(sd, model=small_cnn())
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(DctpsError, match="not a dctps checkpoint"):
        dctps.inspect(txt)
    with pytest.raises(DctpsError, match="does not exist"):
        dctps.load(tmp_path / "missing.dctps")
    # right container, wrong format field
    head = zlib.compress(json.dumps({"format": "other"}).encode())
    body = checkpoint_io._HEAD.pack(checkpoint_io.MAGIC, len(head)) + head
    total = len(body) + checkpoint_io._TRAILER.size
    crc = zlib.crc32(b"", zlib.crc32(head))
    bad = tmp_path / "other.dctps"
    bad.write_bytes(body + checkpoint_io._TRAILER.pack(crc, total, checkpoint_io.END))
    with pytest.raises(DctpsError, match="format field"):
        dctps.inspect(bad)


def test_wrong_model(saved):
    wrong = nn.Sequential(nn.Conv2d(3, 8, 3))
    with pytest.raises(DctpsError, match="weight shape|does not have"):
        dctps.load(saved, model=wrong)


def test_cli_inspect(saved):
    res = CliRunner().invoke(app, ["inspect", str(saved)])
    assert res.exit_code == 0, res.output
    assert "DCTpSConv2d" in res.output and "file size" in res.output
    assert f"{saved.stat().st_size:,}" in res.output


@pytest.mark.parametrize(
    ("saved_kw", "target_kw"),
    [
        ({"offset": "hadamard"}, {}),
        ({}, {"offset": "hadamard"}),
        ({"offset": "gaussian"}, {}),
        ({"alpha": "channel", "charge_alpha": False}, {}),
        ({}, {"alpha": "channel", "charge_alpha": False}),
    ],
)
def test_load_into_a_sparsified_model_takes_the_files_offset_and_alpha(
    tmp_path, saved_kw, target_kw
):
    x = torch.randn(4, 3, 8, 8)
    model = trained(dctps.sparsify(small_cnn(), 0.3, **saved_kw), x)
    path = tmp_path / "m.dctps"
    dctps.save(model, path)
    target = dctps.sparsify(small_cnn(), 0.3, seed=5, **target_kw)
    loaded = dctps.load(path, model=target).eval()
    for name, m in model.named_modules():
        if isinstance(m, DCTpSLayer):
            got = loaded.get_submodule(name)
            assert (got.offset, got.alpha_scope) == (m.offset, m.alpha_scope)
            torch.testing.assert_close(got.dense_weight(), m.dense_weight(), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_a_file_of_another_model_revision_does_not_load_silently(tmp_path, monkeypatch):
    """VGG19 revision 2 changed the network (dctps.models.REVISIONS): a file saved from the old
    network must not load into the new one, with or without a model given."""
    from dctps import models

    model = dctps.sparsify(build("vgg19"), 0.001)
    assert model.dctps_arch["revision"] == 2
    path = tmp_path / "vgg.dctps"
    dctps.save(model, path)
    dctps.load(path)  # today's file loads
    monkeypatch.setitem(models.REVISIONS, "vgg19", 3)  # as if the network changed again
    with pytest.raises(DctpsError, match="vgg19 of revision 2, but this dctps builds revision 3"):
        dctps.load(path)
    with pytest.raises(DctpsError, match="revision 2, but this dctps builds revision 3"):
        dctps.load(path, model=build("vgg19"))
    # inspect says so too (an upgrade review: it printed the table alone)
    shown = checkpoint_io.inspect(path).table()
    assert "note: the file holds a vgg19 of revision 2, but this dctps builds revision 3" in shown
    monkeypatch.setitem(models.REVISIONS, "vgg19", 2)
    assert "note:" not in checkpoint_io.inspect(path).table()
    lenet = tmp_path / "lenet.dctps"
    dctps.save(dctps.sparsify(build("lenet5"), 0.01), lenet)
    assert "revision" not in checkpoint_io._read(lenet)[0]["arch"]
    dctps.load(lenet)  # models without a revision are unaffected


def test_a_layer_shared_under_two_names_round_trips(tmp_path):
    """sparsify replaces a module registered twice under both names; save stores it once (with
    its other names) and load puts one new layer under every name, into a fresh dense model
    too (it replaced only the first name, and the strict load then failed)."""

    def make() -> nn.Module:
        lin = nn.Linear(8, 8)
        return nn.Sequential(lin, nn.ReLU(), lin)

    model = dctps.sparsify(make(), 0.2, seed=0)
    with torch.no_grad():
        model[0].values.normal_()
    path = tmp_path / "shared.dctps"
    dctps.save(model, path)
    info = dctps.inspect(path)
    assert [r.name for r in info.rows] == ["0"] and info.other_tensors == 0
    for fresh in (make(), dctps.sparsify(make(), 0.2, seed=5)):
        loaded = dctps.load(path, model=fresh)
        assert loaded[0] is loaded[2] and isinstance(loaded[2], dctps.DCTpSLinear)
        x = torch.randn(4, 8)
        torch.testing.assert_close(loaded(x), model(x))


def test_reset_parameters_of_a_loaded_random_offset_keeps_its_offset(tmp_path):
    """dctps.load builds a random-offset layer with a placeholder seed and loads the real one:
    reset_parameters must restart from the loaded offset, not the placeholder's."""
    model = dctps.sparsify(nn.Sequential(nn.Linear(16, 8)), 0.5, seed=3, offset="gaussian")
    dctps.save(model, tmp_path / "m.dctps")
    loaded = dctps.load(tmp_path / "m.dctps", model=nn.Sequential(nn.Linear(16, 8)))
    layer = loaded[0]
    with torch.no_grad():
        layer.values.normal_()
    layer.reset_parameters()
    assert torch.equal(layer.offset_seed, model[0].offset_seed)
    torch.testing.assert_close(layer.D, model[0].D)
    assert torch.equal(layer.indices, model[0].indices)  # built from the file's support: kept
    assert not layer.values.any()


def test_fixed_alphas_stay_fixed_through_save_and_load(tmp_path):
    """train_alpha=False is part of the file: loading into an already sparsified model (whose
    alphas train) or rebuilding an attention layer made every alpha trainable again."""

    def make() -> nn.Module:
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.TransformerEncoderLayer(8, 2, 16))

    model = dctps.sparsify(make(), 0.3, seed=0, train_alpha=False)
    fixed = dctps.count(model).fixed_alphas
    assert fixed == dctps.count(model).alphas > 0
    dctps.save(model, tmp_path / "m.dctps")
    for fresh in (make(), dctps.sparsify(make(), 0.3, seed=1)):
        loaded = dctps.load(tmp_path / "m.dctps", model=fresh)
        assert dctps.count(loaded).fixed_alphas == fixed


def test_a_pruned_model_round_trips_through_save_and_load(tmp_path):
    """dctps.save took a dctps.prune'd model but dctps.load could not read it back into a fresh
    one ("missing 0.weight, unexpected 0.weight_orig"); it now gives the fresh model the pruning
    structure first. A plain load_state_dict needs prepare_pruned_structure, now public."""
    from dctps.pruning import prepare_pruned_structure, prune

    def make() -> nn.Module:
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))

    model = prune(make(), 0.2, "random", seed=0)
    dctps.save(model, tmp_path / "pruned.dctps")
    loaded = dctps.load(tmp_path / "pruned.dctps", model=make())
    x = torch.randn(4, 20)
    torch.testing.assert_close(loaded(x), model(x))
    assert torch.equal(loaded[0].weight_mask, model[0].weight_mask)
    assert loaded[0].weight_mask.dtype == torch.float32  # back in prune's float buffer
    assert dctps.count(loaded).nonzeros == dctps.count(model).nonzeros == round(0.2 * 750)
    # stored as bool: 1 byte per weight, not float32's 4
    masks = [r for r in dctps.checkpoint_io._read(tmp_path / "pruned.dctps")[0]["tensors"]
             if r["key"].endswith("_mask")]  # fmt: skip
    assert [(r["dtype"], r["nbytes"]) for r in masks] == [("bool", 600), ("bool", 150)]
    fresh = make()
    prepare_pruned_structure(fresh, model.state_dict())
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))


def test_save_refuses_a_model_materialised_with_to_empty(tmp_path):
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(16, 8))
    model = dctps.sparsify(model, 0.5, seed=0)
    model.to_empty(device="cpu")
    with pytest.raises(DctpsError, match="materialised with to_empty"):
        dctps.save(model, tmp_path / "m.dctps")
    assert not (tmp_path / "m.dctps").exists()


def test_a_compiled_model_saves_and_loads_as_its_plain_model(tmp_path):
    """``dctps.save`` of a ``torch.compile`` wrapper wrote ``_orig_mod.`` names, which the plain
    model refused to load (and the other way round)."""
    plain = dctps.sparsify(small_cnn(), 0.2, seed=0)
    compiled = torch.compile(plain, backend="eager")
    dctps.save(compiled, tmp_path / "c.dctps")
    assert [r.name for r in dctps.inspect(tmp_path / "c.dctps").rows][0] == "0"
    other = dctps.sparsify(small_cnn(), 0.2, seed=1)
    dctps.load(tmp_path / "c.dctps", model=other)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(other(x), plain(x))
    dctps.save(plain, tmp_path / "p.dctps")
    target = torch.compile(dctps.sparsify(small_cnn(), 0.2, seed=2), backend="eager")
    assert dctps.load(tmp_path / "p.dctps", model=target) is target
    torch.testing.assert_close(target(x), plain(x))
    torch._dynamo.reset()  # leave no compiled Sequential.forward to other tests


def test_a_data_parallel_model_saves_and_loads_as_its_plain_model(tmp_path):
    """``dctps.save`` of an ``nn.DataParallel`` wrapper wrote ``module.`` names, which the plain
    model refused ("has a DCTpS layer 'module.0' that the given Sequential does not have")."""
    plain = dctps.sparsify(small_cnn(), 0.2, seed=0)
    dctps.save(nn.DataParallel(plain), tmp_path / "dp.dctps")
    assert [r.name for r in dctps.inspect(tmp_path / "dp.dctps").rows][0] == "0"
    other = dctps.sparsify(small_cnn(), 0.2, seed=1)
    dctps.load(tmp_path / "dp.dctps", model=other)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(other(x), plain(x))
    wrapped = nn.DataParallel(dctps.sparsify(small_cnn(), 0.2, seed=2))
    assert dctps.load(tmp_path / "dp.dctps", model=wrapped) is wrapped
    torch.testing.assert_close(wrapped.module(x), plain(x))


def test_load_into_a_ddp_model_is_refused_with_the_way_out(tmp_path):
    """DDP registered the model's parameters when it wrapped it: a load that replaced or
    resized a layer inside it left those layers unsynchronised across ranks (or failed the first
    backward). Saving a DDP model stores the plain model's names."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        plain = dctps.sparsify(small_cnn(), 0.2, seed=0)
        dctps.save(nn.parallel.DistributedDataParallel(plain), tmp_path / "d.dctps")
        assert [r.name for r in dctps.inspect(tmp_path / "d.dctps").rows][0] == "0"
        target = nn.parallel.DistributedDataParallel(dctps.sparsify(small_cnn(), 0.2, seed=1))
        before = {k: v.clone() for k, v in target.state_dict().items()}
        with pytest.raises(DctpsError, match=r"into a DistributedDataParallel model: load it into "
                           r"the plain model \(model\.module\) first"):  # fmt: skip
            dctps.load(tmp_path / "d.dctps", model=target)
        assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items())
        fresh = dctps.load(tmp_path / "d.dctps", model=small_cnn())
        x = torch.randn(2, 3, 8, 8)
        torch.testing.assert_close(fresh(x), plain(x))
    finally:
        dist.destroy_process_group()


def test_to_dense_and_save_of_a_layer_whose_own_tensors_are_pruned(tmp_path):
    """``torch.nn.utils.prune`` of a DCTpS layer's ``values`` or ``bias``: ``to_dense`` failed on
    the masked tensors (not deep-copyable), then copied prune's hooks onto the plain layer,
    which has no masks to read."""
    torch.manual_seed(0)
    model = nn.Sequential(dctps.DCTpSLinear(8, 8, nnz=20, seed=0), nn.ReLU(),
                          dctps.DCTpSLinear(8, 4, nnz=10, seed=1))  # fmt: skip
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.values.normal_()
            layer.bias.normal_()
    torch.nn.utils.prune.l1_unstructured(model[0], "values", 0.5)
    torch.nn.utils.prune.l1_unstructured(model[2], "bias", 0.5)
    x = torch.randn(3, 8)
    model(x).sum().backward()  # leaves the masked tensors with a graph
    before = model[0].values, model[2].bias
    dense = dctps.to_dense(model)
    # the original is untouched: its masked tensors keep their graph (to_dense used to detach
    # them in place, and a loss on them before the next forward trained nothing)
    assert model[0].values is before[0] and model[2].bias is before[1]
    assert before[0].grad_fn is not None and before[1].grad_fn is not None
    assert type(dense[0]) is nn.Linear and not dense[0]._forward_pre_hooks
    torch.testing.assert_close(dense(x), model(x))
    masked = model[0].values_orig.detach() * model[0].values_mask
    w = model[0].alpha.detach() * model[0].D.flatten()
    w[model[0].indices] += masked
    torch.testing.assert_close(dense[0].weight, w.view(8, 8))
    assert int((dense[2].bias == 0).sum()) >= 2
    fresh = nn.Sequential(dctps.DCTpSLinear(8, 8, nnz=20, seed=2), nn.ReLU(),
                          dctps.DCTpSLinear(8, 4, nnz=10, seed=3))  # fmt: skip
    loaded = dctps.load(dctps.save(model, tmp_path / "p.dctps"), model=fresh)
    torch.testing.assert_close(loaded(x), model(x))


def test_conv_geometry_round_trips(tmp_path):
    """Every conv hyperparameter comes back from the file (a lost dilation changed the output's
    size unnoticed): the loaded layers are rebuilt from the file into a plain model."""

    def make():
        torch.manual_seed(0)
        return nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=2, dilation=2, bias=False),
            nn.Conv2d(8, 8, (3, 1), stride=(2, 1), padding=(1, 0), groups=4),
            nn.Conv2d(8, 4, 2, padding="same"),
        )

    x = torch.randn(2, 3, 11, 11)
    model = dctps.sparsify(make(), 0.3, seed=0)
    ref = model(x)
    loaded = dctps.load(dctps.save(model, tmp_path / "c.dctps"), model=make())
    for a, b in zip(model, loaded, strict=True):
        for attr in ("kernel_size", "stride", "padding", "dilation", "groups", "weight_shape"):
            assert getattr(a, attr) == getattr(b, attr), attr
    assert torch.equal(loaded(x), ref)


def _refused_by_save_and_export(model: nn.Module, path: Path, why: str) -> None:
    """``dctps.save`` and ``dctps.to_dense`` both refuse ``model``, naming its averaged
    support (``why``) and the likely cause; no file is written."""
    for call in (lambda: dctps.save(model, path), lambda: dctps.to_dense(model)):
        with pytest.raises(DctpsError, match=rf"support is {why}.*AveragedModel with "
                           r"use_buffers=True"):  # fmt: skip
            call()
    assert not path.exists()


def test_a_support_averaged_by_ema_is_refused_on_save_and_export(tmp_path):
    """`AveragedModel(use_buffers=True)` averages every buffer, the integer `indices` too
    (truncated: 6 -> 5, duplicates): `dctps.save` wrote the broken support and only `load`
    refused it; `to_dense` exported another network. Both refuse it now, naming the cause."""
    from conftest import train_with_ema

    torch.manual_seed(0)
    m = dctps.sparsify(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 36, 4)),
                       0.2, seed=0)  # fmt: skip
    ema = train_with_ema(m, use_buffers=True)
    assert not torch.equal(ema.module[0].indices, m[0].indices)  # the averaging broke it
    _refused_by_save_and_export(ema.module, tmp_path / "ema.dctps", "not a support any more")
    # and the EMA model's own evaluation, which computed wrong outputs without a word
    x = torch.randn(2, 3, 8, 8)
    ema(x)  # a training-mode forward (update_bn's) is not checked
    ema.eval()
    with pytest.raises(DctpsError, match=r"DCTpSConv2d with weight shape \(8, 3, 3, 3\): its "
                       r"support \(indices\) was written in place and holds positions that are "
                       r"not sorted, distinct ones in \[0, 216\)\. An AveragedModel\("
                       r"use_buffers=True\)"):  # fmt: skip
        ema(x)
    # every time (a notebook cell run again), and after a move or a copy of the model
    for model in (ema, ema.to("cpu"), copy.deepcopy(ema), ema.float()):
        with pytest.raises(DctpsError, match=r"written in place and holds positions"):
            model(x)


def test_an_averaged_support_that_is_still_sorted_is_refused_too(tmp_path):
    """A docs review: the average of two sorted supports of one size is sorted and distinct,
    so an EMA with use_buffers=True of a model whose supports RigL moved passed the check, and
    `dctps.save`/`to_dense` wrote values at positions they never had (114 of 119). The
    support dctps last set is recorded; any other is refused, and `note_support()` accepts a
    support set on purpose. An EMA whose supports never moved is not affected."""
    from torch.optim.swa_utils import AveragedModel

    torch.manual_seed(0)
    m = dctps.sparsify(nn.Sequential(nn.Linear(64, 32)), 0.1, seed=0)
    ema = AveragedModel(m, use_buffers=True)
    dctps.save(ema.module, tmp_path / "same.dctps")  # one support: its average is itself
    moved = dctps.sparsify(nn.Sequential(nn.Linear(64, 32)), 0.1, seed=1)  # RigL's, say
    ema.update_parameters(moved)
    idx = ema.module[0].indices
    assert bool((idx.diff() > 0).all()) and not torch.equal(idx, m[0].indices)  # passes as one
    _refused_by_save_and_export(ema.module, tmp_path / "ema.dctps", "not the one dctps set")
    ema.eval()
    x = torch.randn(2, 64)
    with pytest.warns(
        UserWarning,
        match=r"DCTpSLinear with weight shape \(32, 64\): its "
        r"support \(indices\) was written in place since dctps set it",
    ):
        ema(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ema(x)  # once per write
        dctps.note_supports(ema.module)  # set on purpose
        ema.update_parameters(moved)  # the same support again: nothing to say
        ema(x)
    dctps.save(ema.module, tmp_path / "ema.dctps")
    back = dctps.load(tmp_path / "ema.dctps", model=nn.Sequential(nn.Linear(64, 32)))
    assert torch.equal(back[0].indices, idx)  # a loaded support is one dctps set
    dctps.to_dense(back)


def test_an_attention_checks_a_support_written_in_place_too():
    """A second diff review: an attention reads its projections' weights without their forward,
    where the check was, so an EMA of an attention model evaluated wrong outputs silently (in
    its own forward and in a TransformerEncoderLayer's fast path alike)."""
    torch.manual_seed(0)
    for make in (lambda: nn.MultiheadAttention(16, 2, batch_first=True),
                 lambda: nn.TransformerEncoderLayer(16, 2, 32, batch_first=True)):  # fmt: skip
        m = dctps.sparsify(nn.ModuleDict({"a": make()}), 0.2, seed=0)["a"]
        layer = next(x for x in m.modules() if isinstance(x, DCTpSLinear))
        with torch.no_grad():
            layer.indices[1] = layer.indices[0]  # as an EMA's truncation leaves it
        m.eval()
        x = torch.randn(2, 5, 16)
        with torch.no_grad(), pytest.raises(DctpsError, match=r"written in place and holds"):
            m(x) if isinstance(m, nn.TransformerEncoderLayer) else m(x, x, x)


def test_note_supports_refuses_a_support_that_is_none():
    """A second diff review: `note_supports` recorded a support with repeated positions, after
    which the eval forward ran on it silently (save and to_dense still refused it)."""
    m = dctps.sparsify(nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 4)), 0.2, seed=0)
    with torch.no_grad():
        m[1].indices[1] = m[1].indices[0]
    with pytest.raises(DctpsError, match=r"^note_supports: 1\.indices must be sorted, distinct "
                       r"positions"):  # fmt: skip
        dctps.note_supports(m)
    m.eval()
    with pytest.raises(DctpsError, match=r"written in place and holds positions"):
        m(torch.randn(2, 32))


def test_supports_dctps_sets_pass_and_a_write_in_place_needs_note_supports(tmp_path):
    """A diff review's mutants: a load of another support and an unseeded reset are supports
    dctps set, so save and export take them; a support written in place (here one with the
    same sum, which a sum alone would miss; a DDP broadcast or a `copy_` of a state dict
    writes one too) is refused until `dctps.note_supports`."""
    a = dctps.sparsify(nn.Sequential(nn.Linear(32, 16)), 0.1, seed=0)
    b = dctps.sparsify(nn.Sequential(nn.Linear(32, 16)), 0.1, seed=1)
    assert not torch.equal(a[0].indices, b[0].indices)
    b.load_state_dict(a.state_dict())  # another support, loaded
    dctps.to_dense(b)
    dctps.save(b, tmp_path / "b.dctps")
    c = nn.Sequential(dctps.DCTpSLinear(32, 16, nnz=51))  # unseeded: reset draws anew
    before = c[0].indices.clone()
    c[0].reset_parameters()
    assert not torch.equal(c[0].indices, before)
    dctps.to_dense(c)
    idx = c[0].indices
    with torch.no_grad():  # positions i < j with a gap: i+1, j-1 keep the sum and the order
        gap = int(torch.nonzero(idx.diff() > 2)[0])
        idx[gap] += 1
        idx[gap + 1] -= 1
    _refused_by_save_and_export(c, tmp_path / "c.dctps", "not the one dctps set")
    assert dctps.note_supports(c) is c
    dctps.to_dense(c)
    for k, v in b.state_dict().items():  # a copy_ of a state dict: supports with their values
        v.copy_(c.state_dict()[k])
    with pytest.raises(DctpsError, match=r"not the one dctps set.*call dctps\.note_supports"):
        dctps.to_dense(b)
    dctps.to_dense(dctps.note_supports(b))


def test_to_dense_keeps_a_module_registered_twice_one_module(tmp_path):
    """`to_dense` replaced only the first name of a module used under two names: the second
    stayed a DCTpS layer (the export needed dctps) and the two were untied."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 16)
            self.b = self.a

        def forward(self, x):
            return self.b(self.a(x))

    m = dctps.sparsify(Twice(), 0.2, seed=0)
    plain = dctps.to_dense(m)
    assert plain.a is plain.b and type(plain.a) is nn.Linear
    x = torch.randn(3, 16)
    assert torch.allclose(plain(x), m(x), atol=1e-6)
    assert dctps.count(plain).weights == 256


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, "mixed"])
def test_a_rebuilt_model_takes_the_stored_dtypes(tmp_path, dtype):
    """``dctps.load(path)`` without ``model=`` builds the architecture in float32: it must then
    take the dtypes the file stores (float64 came back rounded to float32, and refused float64
    inputs), module by module (a float32 stem before a bfloat16 body stays so)."""
    import dctps
    from dctps.models import build

    torch.manual_seed(0)
    m = dctps.sparsify(build("lenet5"), 0.1, seed=0)
    if dtype == "mixed":
        m = m.to(torch.bfloat16)
        first = next(mod for mod in m.modules() if isinstance(mod, DCTpSConv2d))
        first.float()
    else:
        m = m.to(dtype)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    dctps.save(m, tmp_path / "m.dctps")
    back = dctps.load(tmp_path / "m.dctps")
    for (name, a), (_, b) in zip(m.state_dict().items(), back.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    if dtype != "mixed":  # (the mixed model takes no single input dtype)
        m.eval(), back.eval()
        x = torch.randn(2, 3, 32, 32, dtype=dtype)
        assert torch.equal(m(x), back(x))


def _rewrite(path, header=None, head=None):
    """``path`` with another header (a dict, or raw compressed bytes), its CRC and sizes made
    valid again: what a crafted or unluckily damaged file looks like to the reader."""
    import struct

    raw = path.read_bytes()
    _, hlen = checkpoint_io._HEAD.unpack(raw[:16])
    old_head = raw[16 : 16 + hlen]
    payload = raw[16 + hlen : -checkpoint_io._TRAILER.size]
    if header is not None:
        head = zlib.compress(json.dumps(header).encode())
    head = old_head if head is None else head
    body = checkpoint_io._HEAD.pack(checkpoint_io.MAGIC, len(head)) + head + payload
    crc = zlib.crc32(body[16:])
    total = len(body) + checkpoint_io._TRAILER.size
    out = path.with_name("x.dctps")
    out.write_bytes(body + struct.pack("<IQ8s", crc, total, checkpoint_io.END))
    return out


def test_crafted_or_shifted_headers_are_refused(tmp_path):
    """A fuzzing review: the CRC covers header and payload as one stream, so a header length off
    by 2 kept it valid and shifted every tensor (a pruned model loaded as NaNs); a 433 KB
    header expanded to 400 MB; malformed entries gave KeyError/TypeError tracebacks or were
    taken as they were (`"aliases": "abc"` attached modules a, b and c)."""
    p = tmp_path / "m.dctps"

    def make():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    torch.manual_seed(0)
    dctps.save(dctps.sparsify(make(), 0.2, seed=0), p)
    header, _, _ = checkpoint_io._read(p)

    def refused(path, match):
        with pytest.raises(DctpsError, match=match):
            dctps.load(path, model=make())
        with pytest.raises(DctpsError, match=match):
            checkpoint_io.inspect(path)

    raw = p.read_bytes()
    _, hlen = checkpoint_io._HEAD.unpack(raw[:16])
    for delta in (1, 2):  # the boundary moved into the payload by a flipped bit
        refused(_rewrite(p, head=raw[16 : 16 + hlen + delta]), "does not end where the header")
    refused(_rewrite(p, head=zlib.compress(b" " * (80 << 20))), "expands beyond")
    bad = copy.deepcopy(header)
    bad["tensors"][0]["offset"] = -8
    refused(_rewrite(p, bad), "malformed tensor entry")
    bad = copy.deepcopy(header)
    bad["tensors"][1]["offset"] += 8
    refused(_rewrite(p, bad), "bad extent for tensor")
    bad = copy.deepcopy(header)
    del bad["tensors"][-1]
    refused(_rewrite(p, bad), r"its tensors take \d+ bytes, its payload has \d+")
    # and what inspect reads or load hashes (a safety review: KeyError, ValueError, TypeError)
    malformed = [("name", None), ("aliases", "abc"), ("train_alpha", "no"), ("nnz", None),
                 ("nnz", "abc"), ("offset", ["x"]), ("alpha", 1)]  # fmt: skip
    for field, value in malformed:
        bad = copy.deepcopy(header)
        if value is None:
            del bad["layers"][0][field]
        else:
            bad["layers"][0][field] = value
        refused(_rewrite(p, bad), "malformed layer entry")
    bad = copy.deepcopy(header)
    bad["layers"][0]["type"] = "DCTpSMultiheadAttention"  # without embed_dim, in_nnz, out_nnz
    refused(_rewrite(p, bad), "malformed layer entry")
    assert dctps.load(_rewrite(p, header), model=make()) is not None  # a faithful rewrite


def test_special_and_foreign_files_are_refused_without_reading_them_whole(tmp_path, monkeypatch):
    """`dctps inspect /dev/zero` ended in a MemoryError, a FIFO waited forever, and a 1 GB file of
    another kind was read whole before its first 8 bytes were checked (a fuzzing review)."""
    from dctps.train.checkpoint import read_run_checkpoint

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    for reader in (checkpoint_io.inspect, dctps.load, read_run_checkpoint):
        for special in ("/dev/zero", fifo):
            with pytest.raises(DctpsError, match="is not a regular file"):
                reader(special)
    big = tmp_path / "big.bin"
    big.write_bytes(b"PK\x03\x04" + b"\0" * 100_000)
    monkeypatch.setattr(Path, "read_bytes", lambda self: pytest.fail("read whole"))
    with pytest.raises(DctpsError, match=r"bad magic bytes \(it looks like a torch.save zip"):
        checkpoint_io.inspect(big)


def test_an_architecture_spec_that_does_not_build_is_named(tmp_path):
    """A crafted spec (`width: 10**9`, an argument build does not take) gave a raw TypeError."""
    from dctps.models import build

    p = tmp_path / "m.dctps"
    dctps.save(dctps.sparsify(build("lenet5"), 0.1, seed=0), p)
    header, _, _ = checkpoint_io._read(p)
    header["arch"]["width"] = 10**9
    with pytest.raises(DctpsError, match=r"architecture spec .* does not build \(TypeError: "
                       r".*unexpected keyword argument 'width'"):  # fmt: skip
        dctps.load(_rewrite(p, header))


def test_a_crafted_architecture_spec_is_refused_before_its_model_is_allocated(
    tmp_path, monkeypatch
):
    """A safety review: `num_classes: 10**7` in a 5 KB file built a 3.4 GB model before its
    layers were found not to fit; a spec that is a list, a string or has no name gave an
    AttributeError or a KeyError. The shapes are built first without allocating (nor
    importing torch._dynamo, which a plain `with torch.device("meta")` does: 2-7 s)."""
    from dctps import _compat
    from dctps.models import build

    p = tmp_path / "m.dctps"
    dctps.save(dctps.sparsify(build("lenet5"), 0.1, seed=0), p)
    header, _, _ = checkpoint_io._read(p)
    allocated = []
    real_build = dctps.models.build

    def spy(name, **kw):
        model = real_build(name, **kw)
        allocated.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(dctps.models, "build", spy)
    for key, value, said in (
        ("num_classes", 10**7, r"layer 'classifier.2' has weight shape \[10, 82\] in the file "
                               r"but \[10000000, 82\] in the LeNet5 its architecture spec builds"),
        ("in_channels", 300_000, r"layer 'features.0' has weight shape \[6, 3, 5, 5\]"),
    ):  # fmt: skip
        bad = copy.deepcopy(header)
        bad["arch"][key] = value
        allocated.clear()
        with pytest.raises(DctpsError, match=said):
            dctps.load(_rewrite(p, bad))
        assert allocated == ["meta"]  # never built for real
    for arch in (["lenet5"], "lenet5", {"num_classes": 10}, {"name": "lenet5", "revision": "x"}):
        for reader in (dctps.load, checkpoint_io.inspect):
            said = "its architecture spec .* is not a mapping with a model name and an integral"
            with pytest.raises(DctpsError, match=said):
                reader(_rewrite(p, {**header, "arch": arch}))
    allocated.clear()
    assert isinstance(dctps.load(_rewrite(p, header)), nn.Module)  # a faithful file loads
    assert allocated == ["meta", "cpu"]
    # the probe: every architecture's shapes, on meta, as the real model has them
    for name in dctps.models.names():
        with _compat.shapes_only():
            probe = real_build(name)
        shapes = {k: (t.device.type, tuple(t.shape)) for k, t in probe.state_dict().items()}
        want = {k: ("meta", tuple(t.shape)) for k, t in real_build(name).state_dict().items()}
        assert shapes == want, name


def test_the_shapes_probe_does_not_import_dynamo():
    import subprocess
    import sys

    code = (
        "import sys, torch, dctps.models as M; from dctps import _compat\n"
        "with _compat.shapes_only(): M.build('fixup_resnet110'); M.build('resnet18')\n"
        "print('torch._dynamo' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_aliases_and_dtypes_a_file_cannot_fit_are_refused(tmp_path):
    """A safety review: a layer's `aliases` (its other names, for a module registered twice)
    were set without a check: `training` replaced the model's flag with a layer, an alias of
    another layer replaced it, new names added modules; int or bool values loaded, cast."""
    p = tmp_path / "m.dctps"

    def make():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    dctps.save(dctps.sparsify(make(), 0.2, seed=0), p)
    header, _, _ = checkpoint_io._read(p)
    for alias, said in (("training", "'training' is a separate bool"),
                        ("2", "'2' is a separate Linear"),
                        ("zzz.a", "'zzz.a' is not a module's attribute"),
                        ("", "'' is not a module's attribute")):  # fmt: skip
        bad = copy.deepcopy(header)
        bad["layers"][0]["aliases"] = [alias]
        model = make()
        with pytest.raises(DctpsError, match=f"layer '0' names {alias!r} as another name of "
                                             f"itself, but in the Sequential {said}"):  # fmt: skip
            dctps.load(_rewrite(p, bad), model=model)
        assert model.training is True and isinstance(model[2], nn.Linear)
    # a name that is free: a tie made on the saved model (model.head = model[0]), made again
    # (a diff review: such a file of a built model no longer loaded)
    bad = copy.deepcopy(header)
    bad["layers"][0]["aliases"] = ["head"]
    loaded = dctps.load(_rewrite(p, bad), model=make())
    assert loaded.head is loaded[0]
    bad = copy.deepcopy(header)
    entry = next(e for e in bad["tensors"] if e["key"] == "0.values")
    entry["dtype"] = "int32"  # same width: the payload's bytes read as integers
    with pytest.raises(DctpsError, match=r"layer '0': its values are torch.int32, not floating"):
        dctps.load(_rewrite(p, bad), model=make())


def test_inspect_counts_the_layers_offsets_alpha_scopes_and_fixed_alphas(tmp_path):
    """A combinations review: `dctps inspect` showed none of a layer's offset, alpha scope or
    fixed alpha, which `dctps.load` restores from the file."""
    m = dctps.sparsify(nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)), 0.1,
                       alpha="channel", train_alpha=False, offset="dct_signflip", seed=0,
                       exclude=[])  # fmt: skip
    m[2].alpha.requires_grad_(True)  # one trained again
    dctps.save(m, tmp_path / "m.dctps")
    info = dctps.inspect(tmp_path / "m.dctps")
    assert info.settings == {"offset": {"dct_signflip": 2}, "alpha": {"channel": 2},
                             "fixed alpha": 1}  # fmt: skip
    assert "DCTpS layers: offset dct_signflip (2); alpha per channel (2); 1 with alpha fixed" in (
        info.table()
    )
    att = nn.ModuleDict({"att": nn.MultiheadAttention(16, 2), "fc": nn.Linear(16, 4)})
    dctps.sparsify(att, 0.2, seed=0)
    dctps.save(att, tmp_path / "a.dctps")
    info = dctps.inspect(tmp_path / "a.dctps")  # an attention holds two DCTpS projections
    assert len(info.rows) == 3 == sum(info.settings["offset"].values())
    plain = dctps.sparsify(nn.Sequential(nn.Linear(16, 8)), 0.5, seed=0)
    dctps.save(plain, tmp_path / "p.dctps")
    assert dctps.inspect(tmp_path / "p.dctps").settings == {
        "offset": {"dct": 1}, "alpha": {"layer": 1}, "fixed alpha": 0}  # fmt: skip


def test_layer_entries_that_disagree_with_their_shape_or_tensors_are_refused_at_load(tmp_path):
    """A crafted `out_features: 2**40` beside the true `shape` loaded, and the layer's first
    forward asked for 32 TiB; a `nnz` other than the stored count loaded into a sparsified
    model unnoticed. The entries are checked against their shape and tensors, naming the layer."""
    p = tmp_path / "m.dctps"

    def make():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4, bias=False))

    torch.manual_seed(0)
    dctps.save(dctps.sparsify(make(), 0.2, seed=0), p)
    header, _, _ = checkpoint_io._read(p)

    def refused(changes, match):
        bad = copy.deepcopy(header)
        bad["layers"][1].update(changes)
        for model in (make(), dctps.sparsify(make(), 0.2, seed=1)):  # rebuilt, or loaded into
            with pytest.raises(DctpsError, match=match):
                dctps.load(_rewrite(p, bad), model=model)

    where = rf"^checkpoint {re.escape(str(tmp_path))}/x\.dctps is corrupt: layer '2' "
    refused({"out_features": 2**40},
            where + r"declares weight shape \[4, 16\], but its constructor fields make "
            r"\[1099511627776, 16\]$")  # fmt: skip
    refused({"in_features": "16"}, where + r".*make none \(a field is not a count\)$")
    n = header["layers"][1]["nnz"]
    refused({"nnz": 5}, where + rf"declares nnz=5 but stores {n} values and {n} indices$")
    # a smaller weight, consistently declared: its stored positions lie outside it
    refused({"in_features": 2, "shape": [4, 2]},
            where + r"stores positions \d+\.\.\d+, outside its declared weight \[4, 2\] "
            r"\(\[0, 8\)\)$")  # fmt: skip

    # a conv of a model rebuilt from its architecture spec
    dctps.save(dctps.sparsify(build("lenet5"), 0.1, seed=0), p)
    header, _, _ = checkpoint_io._read(p)
    conv = next(c for c in header["layers"] if c["type"] == "DCTpSConv2d")
    conv["out_channels"] = 2**40
    match = (rf"layer '{conv['name']}' declares weight shape \[\d+, \d+, 5, 5\], but its "
             r"constructor fields make \[1099511627776, ")  # fmt: skip
    with pytest.raises(DctpsError, match=match):
        dctps.load(_rewrite(p, header))


def test_swapped_arguments_are_named(tmp_path):
    # save takes (model, path) and load (path, model): the swapped call was pathlib's TypeError
    model = nn.Sequential(nn.Linear(4, 8))
    dctps.sparsify(model, 0.5)
    path = dctps.save(model, tmp_path / "m.pt")
    with pytest.raises(DctpsError, match=r"got Sequential: the path comes first, dctps\.load"):
        dctps.load(model, path)  # type: ignore[arg-type]
    with pytest.raises(DctpsError, match="must be a str or os.PathLike, got int"):
        dctps.inspect(3)  # type: ignore[arg-type]
    with pytest.raises(DctpsError, match=r"got PosixPath: the model comes first, dctps\.save"):
        dctps.save(path, model)  # type: ignore[arg-type]


def test_note_supports_refuses_a_non_module():
    # its siblings (save, load, to_dense) name the wrong type; it raised AttributeError
    with pytest.raises(DctpsError, match="note_supports needs an nn.Module, got dict"):
        dctps.note_supports({})  # type: ignore[arg-type]


def test_to_dense_keeps_a_pruned_dctps_tensor_trainable():
    """A DCTpS layer's ``values``/``bias`` pruned with ``torch.nn.utils.prune`` train through
    ``values_orig``/``bias_orig``; ``to_dense`` copies ``values``/``bias`` without grad, and the
    export froze the fused weight and the bias."""
    from torch.nn.utils import prune as torch_prune

    model = dctps.sparsify(nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4)), 0.2,
                           seed=0)  # fmt: skip
    model[0].alpha.requires_grad_(False)  # W of layer 0 trains through its values only
    torch_prune.l1_unstructured(model[0], "values", amount=0.5)
    torch_prune.l1_unstructured(model[2], "bias", amount=0.5)
    model[2].alpha.requires_grad_(False)
    model[2].values.requires_grad_(False)  # layer 2's W is frozen, its pruned bias trains
    model(torch.randn(3, 12))
    trains = {n for n, p in dctps.to_dense(model).named_parameters() if p.requires_grad}
    assert trains == {"0.weight", "0.bias", "2.bias"}


def test_a_folder_given_as_a_checkpoint_names_the_checkpoints_in_it(tmp_path):
    """`dctps inspect OUT` and `OUT/runs` suggested `OUT/best.pt` and `OUT/runs/best.pt`,
    which do not exist: a run's checkpoints are at `runs/<hash>/best.pt`."""
    run = tmp_path / "runs" / "0e1a4e07cc78ba1d"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(b"x")
    for folder in (tmp_path, tmp_path / "runs"):
        with pytest.raises(
            DctpsError, match=f"is a folder, not a checkpoint: give a file, e.g. {run}/best.pt$"
        ):
            dctps.inspect(folder)
    with pytest.raises(DctpsError, match=rf"give a file, e.g. {run}/best.pt$"):
        dctps.inspect(run)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DctpsError, match=r"give a file \(a run's runs/<hash>/best\.pt"):
        dctps.inspect(empty)


# ------------------------------------------------------------------ a mutation audit (session 21)
def _small_saved(tmp_path):
    def make():
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))

    p = tmp_path / "m.dctps"
    torch.manual_seed(0)
    dctps.save(dctps.sparsify(make(), 0.2, seed=0), p)
    return p, checkpoint_io._read(p)[0], make


def _patched_index(p, entry, value):
    """A copy of ``p`` with the first stored index of ``entry`` set to ``value``."""
    import struct

    raw = bytearray(p.read_bytes())
    _, hlen = checkpoint_io._HEAD.unpack(raw[:16])
    fmt = {"int32": "<i", "int64": "<q"}[entry["dtype"]]
    struct.pack_into(fmt, raw, 16 + hlen + entry["offset"], value)
    q = p.with_name("idx.dctps")
    q.write_bytes(bytes(raw))
    return q


def test_entries_whose_sizes_disagree_are_refused(tmp_path):
    """A tensor declaring one element more than its bytes (without the check, an entry of
    nbytes 0 loaded uninitialised memory), a negative layer shape, an alias that is no string,
    and indices outside the weight or more of them than values: each named."""
    p, header, make = _small_saved(tmp_path)
    bad = copy.deepcopy(header)
    e = next(e for e in bad["tensors"] if e["key"] == "0.values")
    e["shape"] = [e["shape"][0] + 1]
    with pytest.raises(DctpsError, match="bad extent for tensor '0.values'"):
        dctps.load(_rewrite(p, bad), model=make())
    bad = copy.deepcopy(header)
    bad["layers"][0]["shape"] = [-16, -8]
    with pytest.raises(DctpsError, match="malformed layer entry"):
        checkpoint_io.inspect(_rewrite(p, bad))
    bad = copy.deepcopy(header)
    bad["layers"][0]["aliases"] = [2]
    with pytest.raises(DctpsError, match="malformed layer entry"):
        dctps.load(_rewrite(p, bad), model=make())
    entry = next(e for e in header["tensors"] if e["key"] == "0.indices")
    for pos in (16 * 8, -1):  # one past the weight's end, and negative
        q = _patched_index(p, entry, pos)
        with pytest.raises(DctpsError, match="outside its declared weight"):
            dctps.load(_rewrite(q, header), model=make())
    bad = copy.deepcopy(header)  # the same bytes read as twice as many int16 indices
    e = next(e for e in bad["tensors"] if e["key"] == "0.indices")
    assert e["dtype"] == "int32"
    e["dtype"], e["shape"] = "int16", [e["shape"][0] * 2]
    with pytest.raises(DctpsError, match=r"declares nnz=\d+ but stores \d+ values and \d+ indices"):
        dctps.load(_rewrite(p, bad), model=make())


def test_an_attentions_in_proj_indices_are_bounded_by_its_own_weight(tmp_path):
    e = 16
    p = tmp_path / "a.dctps"
    dctps.save(dctps.sparsify(nn.ModuleDict({"att": nn.MultiheadAttention(e, 2)}), 0.2, seed=0), p)
    header = checkpoint_io._read(p)[0]
    entry = next(t for t in header["tensors"] if t["key"] == "att.in_proj.indices")
    q = _patched_index(p, entry, 3 * e * e)
    with pytest.raises(DctpsError, match="in_proj stores positions .* outside its declared weight"):
        dctps.load(_rewrite(q, header), model=nn.ModuleDict({"att": nn.MultiheadAttention(e, 2)}))


def test_an_empty_tensor_round_trips(tmp_path):
    model = dctps.sparsify(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), 0.2)
    model.register_buffer("empty", torch.empty(0, 3))
    dctps.save(model, tmp_path / "e.dctps")
    fresh = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    fresh.register_buffer("empty", torch.ones(0, 3))
    assert dctps.load(tmp_path / "e.dctps", model=fresh).empty.shape == (0, 3)


def test_a_pruned_models_tensors_are_checked_against_its_spec_before_it_is_built(tmp_path):
    """A pruned model stores `weight_orig`: the spec's check compared only `weight`, and a
    crafted `num_classes` allocated the model it asked for."""
    from dctps.pruning import prune

    p = tmp_path / "pruned.dctps"
    dctps.save(prune(build("lenet5"), 0.2, "random", seed=0), p, arch={"name": "lenet5"})
    header = checkpoint_io._read(p)[0]
    bad = copy.deepcopy(header)
    bad["arch"]["num_classes"] = 10**6
    with pytest.raises(DctpsError, match=r"weight has shape \[10, \d+\] in the file but "
                                         r"\[1000000, \d+\] in the LeNet5"):  # fmt: skip
        dctps.load(_rewrite(p, bad))
