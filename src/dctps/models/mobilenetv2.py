"""MobileNetV2 (Sandler et al., 2018) in the common CIFAR form (kuangliu/pytorch-cifar).

Architecture: a 3x3 stride-1 stem conv 3->32 with BN; seventeen inverted-residual blocks given by
(expansion, out channels, repeats, first stride) = (1,16,1,1), (6,24,2,1), (6,32,3,2), (6,64,4,2),
(6,96,3,1), (6,160,3,2), (6,320,1,1) -- the second stage's stride is 1 instead of ImageNet's 2, as
for CIFAR. Each block is 1x1 expand + BN + ReLU, 3x3 depthwise (groups = channels, carries the
stride) + BN + ReLU, 1x1 project + BN (linear bottleneck). Stride-1 blocks add a shortcut: identity
when the widths match, otherwise 1x1 conv + BN (the kuangliu form; these projection shortcuts are
part of the Table E.1 count). Then a 1x1 conv 320->1280 + BN + ReLU, adaptive average pooling and
``Linear(1280, num_classes)`` with bias. All convs are bias-free.

Table E.1 (10 classes), weights / other parameters: 2,261,824 / 35,098.
"""

from __future__ import annotations

import torch
from torch import nn

from dctps.models.resnet import kaiming_init_

# (expansion, out_channels, repeats, stride of the first block)
_CFG: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    conv = nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False)
    return [conv, nn.BatchNorm2d(cout)]


class InvertedResidual(nn.Module):
    """Expand (1x1), depthwise (3x3), project (1x1); shortcut only for stride-1 blocks."""

    def __init__(self, cin: int, cout: int, expansion: int, stride: int):
        super().__init__()
        hidden = expansion * cin
        self.branch = nn.Sequential(
            *_conv_bn(cin, hidden, 1),
            nn.ReLU(inplace=True),
            *_conv_bn(hidden, hidden, 3, stride, groups=hidden),
            nn.ReLU(inplace=True),
            *_conv_bn(hidden, cout, 1),
        )
        self.shortcut: nn.Module | None = None
        if stride == 1:
            self.shortcut = nn.Identity() if cin == cout else nn.Sequential(*_conv_bn(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``branch(x)``, plus ``shortcut(x)`` when the block has one (stride 1)."""
        out = self.branch(x)
        return out if self.shortcut is None else out + self.shortcut(x)


class MobileNetV2(nn.Module):
    """CIFAR-form MobileNetV2."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        layers: list[nn.Module] = [*_conv_bn(in_channels, 32, 3), nn.ReLU(inplace=True)]
        cin = 32
        for expansion, cout, repeats, stride in _CFG:
            for j in range(repeats):
                layers.append(InvertedResidual(cin, cout, expansion, stride if j == 0 else 1))
                cin = cout
        layers += [*_conv_bn(cin, 1280, 1), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(1280, num_classes)
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def mobilenetv2(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> MobileNetV2:
    """CIFAR MobileNetV2. ``image_size`` is accepted for the registry only."""
    return MobileNetV2(num_classes, in_channels)
