"""LeNet-5 (LeCun et al., 1998) as used in the DCTpS paper's CIFAR-10 experiments.

Architecture: conv 3->6 k5, ReLU, avg-pool 2, conv 6->16 k5, ReLU, avg-pool 2, conv 16->120 k5,
ReLU, Linear 120->82, ReLU, Linear 82->num_classes. No biases anywhere, so with 10 classes the
network has 61,510 weights and no other parameters (450 + 2,400 + 48,000 + 9,840 + 820).

On 32x32 inputs the last conv's output is already 1x1. Larger inputs (e.g. 64x64 Tiny ImageNet,
where the map is 9x9) are averaged to 1x1 by an adaptive average pool after the last conv, so the
classifier input stays 120 and the weights are identical for every input size. Inputs smaller than
32x32 would leave nothing for the last 5x5 conv, so they raise :class:`~dctps.errors.ImageTooSmall`.
"""

from __future__ import annotations

import torch
from torch import nn

from dctps.errors import ImageTooSmall
from dctps.models.resnet import kaiming_init_


class LeNet5(nn.Module):
    """Bias-free LeNet-5 with ReLU activations and average pooling."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, image_size: int = 32):
        super().__init__()
        if image_size < 32:
            raise ImageTooSmall(
                f"LeNet-5 needs 32x32 inputs or larger, got image_size={image_size}"
            )
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, bias=False),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
            nn.Conv2d(6, 16, 5, bias=False),
            nn.ReLU(inplace=True),
            nn.AvgPool2d(2),
            nn.Conv2d(16, 120, 5, bias=False),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(
            nn.Linear(120, 82, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(82, num_classes, bias=False),
        )
        kaiming_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` (``H, W >= 32``) -> logits ``(B, num_classes)``."""
        return self.classifier(torch.flatten(self.features(x), 1))


def lenet5(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> LeNet5:
    """LeNet-5; ``image_size`` must be at least 32."""
    return LeNet5(num_classes, in_channels, image_size)
