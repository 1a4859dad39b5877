"""Tests for dctps.models: Table E.1 counts, shapes, initialisation and the registry's errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dctps.errors import DctpsError
from dctps.models import ZERO_INIT_ATTR, build, names
from dctps.models.fixup_resnet import FixupBasicBlock

# Table E.1 of the supplement (10 classes): (weights, bias & BN).
TABLE_E1 = {
    "resnet50": (23_467_712, 53_130),
    "vgg19": (20_024_000, 11_018),
    "mobilenetv2": (2_261_824, 35_098),
    "fixup_resnet110": (1_719_856, 282),
    "resnet18": (11_164_352, 9_610),
    "lenet5": (61_510, 0),
}


def _weight_layers(model: nn.Module) -> list[nn.Conv2d | nn.Linear]:
    return [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def _counts(model: nn.Module) -> tuple[int, int]:
    weights = sum(m.weight.numel() for m in _weight_layers(model))
    return weights, sum(p.numel() for p in model.parameters()) - weights


def test_registry_lists_the_six_architectures():
    """The paper's six, at least: another architecture needs no entry in Table E.1's dict."""
    assert set(TABLE_E1) <= set(names())


@pytest.mark.parametrize("name", sorted(TABLE_E1))
def test_parameter_counts_match_table_e1(name):
    torch.manual_seed(0)
    assert _counts(build(name, num_classes=10)) == TABLE_E1[name]


@pytest.mark.parametrize("name", sorted(TABLE_E1))
def test_forward_shapes_at_32_and_64(name):
    torch.manual_seed(0)
    small = build(name, num_classes=10, image_size=32).eval()
    large = build(name, num_classes=200, image_size=64).eval()
    with torch.no_grad():
        assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
        out = large(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 200)
    assert torch.isfinite(out).all()

    def conv_shapes(m):
        return [tuple(c.weight.shape) for c in _weight_layers(m) if isinstance(c, nn.Conv2d)]

    assert conv_shapes(small) == conv_shapes(large)
    assert _weight_layers(large)[-1].in_features == _weight_layers(small)[-1].in_features


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv2", "fixup_resnet110", "lenet5"])
def test_single_channel_input(name):
    model = build(name, num_classes=10, in_channels=1, image_size=32).eval()
    assert _weight_layers(model)[0].in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_resnet_takes_small_images():
    model = build("resnet18", in_channels=1, image_size=8).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize(
    ("name", "size", "fits"),
    [("lenet5", 28, "fixup_resnet110, mobilenetv2, resnet18, resnet50, vgg19"),
     ("vgg19", 12, "fixup_resnet110, mobilenetv2, resnet18, resnet50")],
)  # fmt: skip
def test_small_images_rejected_where_the_architecture_needs_them(name, size, fits):
    """The refusal names the models that take the size (the digits' 8x8: a newcomer tried
    LeNet-5 and had to guess)."""
    with pytest.raises(DctpsError, match=f"image_size={size}; models that take {size}x{size} "
                       r"inputs: ([a-z0-9_, ]+)$") as e:  # fmt: skip
        build(name, image_size=size)
    listed = e.value.args[0].rsplit("inputs: ", 1)[1].split(", ")
    assert listed == sorted(listed)
    # the paper's models among them exactly (one added later may take the size too)
    assert [m for m in listed if m in TABLE_E1] == fits.split(", ")


@pytest.mark.parametrize("size", [32, 64])
def test_vgg19_is_forces_four_pools_then_an_average(size):
    """FORCE's VGG19 (the paper's, E.2): max-pools between the five conv groups only, then the
    average of the final map (2x2 on CIFAR, 4x4 on Tiny ImageNet), then the classifier."""
    torch.manual_seed(0)
    model = build("vgg19", image_size=size).eval()
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 4
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        h = x
        for m in model.features:  # independent forward: convs, BN, ReLU and the pools in order
            h = m(h)
        assert h.shape[-2:] == (size // 16, size // 16)
        expected = F.linear(h.mean(dim=(2, 3)), model.classifier.weight, model.classifier.bias)
        torch.testing.assert_close(model(x), expected)
        assert not isinstance(model.features[-1], nn.MaxPool2d)


def test_a_vgg_state_dict_of_dctps_0_1_loads_with_a_warning():
    """An upgrade review: a 0.1.0 VGG19's state dict (five max-pools) loaded into today's
    without a word, and the model computed another function. Its shapes are the same; torch's
    state-dict version tells the two apart."""
    import warnings

    import dctps

    sd = dctps.sparsify(build("vgg19"), 0.01, seed=0).state_dict()
    assert sd._metadata[""]["version"] == 2  # type: ignore[attr-defined]
    model = dctps.sparsify(build("vgg19"), 0.01, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.load_state_dict(sd)  # today's: no warning
    sd._metadata[""]["version"] = 1  # type: ignore[attr-defined]  # as 0.1.0 saved it
    with pytest.warns(RuntimeWarning, match=r"this state dict of a VGG is of version 1: saved by "
                      r"dctps 0.1, whose VGG has a fifth max-pool") as seen:  # fmt: skip
        model.load_state_dict(sd)
    assert seen[0].filename == __file__
    wrapped = nn.Sequential(build("vgg19"))
    wrapped_sd = wrapped.state_dict()
    wrapped_sd._metadata["0"]["version"] = 1  # type: ignore[attr-defined]
    with pytest.warns(RuntimeWarning, match=r"a VGG at 0 is of version 1"):
        wrapped.load_state_dict(wrapped_sd)


def test_dense_init_is_kaiming_fan_in():
    torch.manual_seed(0)
    model = build("resnet18")
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 512)
    fan_in = conv.weight[0].numel()
    expected = math.sqrt(2.0 / fan_in)
    assert abs(conv.weight.std().item() / expected - 1) < 0.05
    assert abs(conv.weight.mean().item()) < 0.05 * expected
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))
    assert torch.equal(model.classifier.bias, torch.zeros_like(model.classifier.bias))


def test_dense_init_applies_to_every_family():
    torch.manual_seed(0)
    for name in ["lenet5", "vgg19", "mobilenetv2", "resnet50"]:
        model = build(name)
        layer = max(_weight_layers(model), key=lambda m: m.weight.numel())
        expected = math.sqrt(2.0 / layer.weight[0].numel())
        assert abs(layer.weight.std().item() / expected - 1) < 0.05, name


def test_fixup_zero_init_layers_are_zero_and_marked():
    torch.manual_seed(0)
    model = build("fixup_resnet110")
    blocks = [m for m in model.modules() if isinstance(m, FixupBasicBlock)]
    assert len(blocks) == 54
    zero_layers = [b.conv2 for b in blocks] + [model.fc]
    for layer in zero_layers:
        assert getattr(layer, ZERO_INIT_ATTR, False) is True
        assert not layer.weight.any()
        assert layer.bias is None or not layer.bias.any()
    marked = [m for m in model.modules() if getattr(m, ZERO_INIT_ATTR, False)]
    assert marked == zero_layers
    # The first branch conv follows Fixup's scaled He rule, and is not zero.
    w = blocks[-1].conv1.weight
    expected = math.sqrt(2.0 / (w.shape[0] * 9)) * 54**-0.5
    assert abs(w.std().item() / expected - 1) < 0.05
    with torch.no_grad():
        assert not model(torch.randn(2, 3, 32, 32)).any()


@pytest.mark.parametrize("index", [0, 18, 36, 53])
def test_fixup_residual_branch_is_zero_at_init(index):
    torch.manual_seed(0)
    block = [m for m in build("fixup_resnet110").modules() if isinstance(m, FixupBasicBlock)][index]
    # Blocks see post-ReLU activations, so the input is non-negative.
    x = torch.rand(2, block.conv1.in_channels, 16, 16)
    with torch.no_grad():
        assert not block.branch(x).any()
        shortcut = block.shortcut(x)
        assert torch.equal(block(x), shortcut)
    if block.downsample is None:
        assert torch.equal(shortcut, x)
    else:
        assert shortcut.shape == (2, 2 * x.shape[1], 8, 8)


def test_unknown_name_suggests_the_closest():
    with pytest.raises(DctpsError, match="Did you mean 'resnet18'"):
        build("resnet81")
    with pytest.raises(DctpsError, match="unknown model"):
        build(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "bad"),
    [
        ({"num_classes": 1}, "1"),
        ({"num_classes": 10.0}, "10.0"),
        ({"num_classes": True}, "True"),
        ({"num_classes": "10"}, "'10'"),
        ({"in_channels": 0}, "0"),
        ({"image_size": -32}, "-32"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, bad):
    (what,) = kwargs
    with pytest.raises(DctpsError, match=f"{what} .*got {bad}"):
        build("resnet18", **kwargs)


def test_resnet_width_scales_every_layer_and_keeps_the_structure():
    from dctps.models.resnet import BasicBlock, ResNet

    def weights(m: nn.Module) -> list[tuple[int, ...]]:
        return [tuple(x.weight.shape) for x in m.modules() if isinstance(x, (nn.Conv2d, nn.Linear))]

    paper, narrow = weights(build("resnet18")), weights(ResNet(BasicBlock, (2, 2, 2, 2), width=4))
    assert len(narrow) == len(paper) == 21
    for p, n in zip(paper, narrow, strict=True):
        # every channel count divides by 16; the image channels, kernels and classes do not
        want = (p[0] // 16 if len(p) == 4 else p[0], p[1] if p[1] == 3 else p[1] // 16, *p[2:])
        assert n == want
    with pytest.raises(DctpsError, match="width must be a positive integer.*got 0"):
        ResNet(BasicBlock, (2, 2, 2, 2), width=0)
