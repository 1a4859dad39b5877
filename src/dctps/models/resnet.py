"""CIFAR-form ResNet18 and ResNet50, and the dense initialisation shared by the non-Fixup families.

Architecture (He et al., 2016, in the CIFAR form of kuangliu/pytorch-cifar, which the FORCE code
(naver/force, de Jorge et al., 2021) and the DCTpS paper use): a 3x3 stride-1 stem conv with BN and
no max-pool, four stages of widths 64/128/256/512 (strides 1/2/2/2) of basic blocks (ResNet18:
2-2-2-2) or bottleneck blocks with expansion 4 (ResNet50: 3-4-6-3), bias-free convs followed by BN,
a 1x1 conv + BN shortcut wherever the shape changes, adaptive average pooling to 1x1 and one
``Linear(features, num_classes)`` with bias. Because of the adaptive pooling, conv weights do not
depend on the input size (32x32 CIFAR, 64x64 Tiny ImageNet).

Table E.1 (10 classes), weights (Conv2d + Linear ``.weight``) / other parameters (BN + bias):
ResNet18 11,164,352 / 9,610; ResNet50 23,467,712 / 53,130.
"""

from __future__ import annotations

import torch
from torch import nn

from dctps._types import ModuleT
from dctps.errors import DctpsError


def kaiming_init_(model: ModuleT) -> ModuleT:
    """The paper's dense-baseline init: Kaiming-normal (fan_in, relu) weights, zero biases, BN 1/0.

    Applied in place to every Conv2d / Linear / BatchNorm2d of ``model``; returns ``model``.
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with a ReLU between; identity or 1x1 conv+BN shortcut."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.branch = nn.Sequential(
            _conv_bn(cin, planes, 3, stride), nn.ReLU(inplace=True), _conv_bn(planes, planes, 3)
        )
        out = planes * self.expansion
        self.shortcut = (
            _conv_bn(cin, out, 1, stride) if stride != 1 or cin != out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, cin, H, W) -> (B, planes, H/stride, W/stride)``: ``relu(branch + shortcut)``."""
        return torch.relu(self.branch(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4, each with BN; conv+BN shortcut."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.branch = nn.Sequential(
            _conv_bn(cin, planes, 1),
            nn.ReLU(inplace=True),
            _conv_bn(planes, planes, 3, stride),
            nn.ReLU(inplace=True),
            _conv_bn(planes, out, 1),
        )
        self.shortcut = (
            _conv_bn(cin, out, 1, stride) if stride != 1 or cin != out else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, cin, H, W) -> (B, 4*planes, H/stride, W/stride)``: ``relu(branch + shortcut)``."""
        return torch.relu(self.branch(x) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-form ResNet: ``block`` repeated ``num_blocks[i]`` times in four stages.

    ``width`` is the first stage's width (64 in the paper; the stages are ``width * (1, 2, 4, 8)``);
    a small width keeps the layer structure with almost no arithmetic, which is what the
    ``overhead`` benchmark needs.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 64,
    ):
        super().__init__()
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise DctpsError(
                f"width must be a positive integer (64 for the paper's ResNets), got {width!r}"
            )
        layers: list[nn.Module] = [_conv_bn(in_channels, width, 3), nn.ReLU(inplace=True)]
        cin = width
        stages = (width, 2 * width, 4 * width, 8 * width)
        for i, (planes, n) in enumerate(zip(stages, num_blocks, strict=True)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(block(cin, planes, stride))
                cin = planes * block.expansion
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def resnet18(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """CIFAR ResNet18 (basic blocks 2-2-2-2); ``image_size`` is accepted for the registry."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes, in_channels)


def resnet50(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> ResNet:
    """CIFAR ResNet50 (bottleneck blocks 3-4-6-3); ``image_size`` is accepted for the registry."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes, in_channels)
