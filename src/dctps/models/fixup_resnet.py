"""FixupResNet110 (Zhang, Dauphin & Ma, ICLR 2019), following the Fixup authors' CIFAR code
(hongyi-zhang/Fixup, ``fixup_resnet_cifar.py``), which the DCTpS paper uses.

Architecture: a 3x3 stem conv 3->16, then 3 stages of 18 basic blocks (widths 16/32/64, strides
1/2/2), no normalisation, adaptive average pooling and ``Linear(64, num_classes)``. Each block
computes ``relu(branch(x) + shortcut(x))`` with
``branch(x) = conv2(relu(conv1(x + bias1a) + bias1b) + bias2a) * scale + bias2b``: four scalar
biases and one scalar scale per block. The network adds two more scalars: ``bias1`` after the stem
and ``bias2`` before the classifier. Where a block downsamples, the shortcut is
``AvgPool2d(1, stride)`` of ``x + bias1a`` followed by zero channel padding, exactly as in the
authors' code: it has no parameters. That choice, and the full set of Fixup scalars, make the
Table E.1 counts exact (10 classes): 1,719,856 weights / 282 other parameters
(54 blocks x 5 scalars + ``bias1`` + ``bias2`` + 10 classifier biases).

Initialisation (Fixup's rule with L = 54 residual branches of m = 2 layers): each branch's
``conv1`` is normal(0, sqrt(2 / (out_channels * kh * kw))) * L^(-1/(2m-2)) = ... * L^(-1/2);
each branch's ``conv2`` and the classifier (weight and bias) are zero; scalar biases are 0 and
scales 1. The stem conv is not inside a residual branch; the Fixup paper says to initialise it with
a standard method, and we use the same Kaiming-normal (fan_in) as the other families (the authors'
code leaves it at PyTorch's default).

Contract with :func:`dctps.sparsify`: every ``nn.Conv2d`` / ``nn.Linear`` that Fixup initialises to
zero (each block's ``conv2`` and the classifier) carries the attribute ``_dctps_zero_init = True``.
The sparsifier reads it and starts those DCTpS layers with ``alpha = 0`` so that the layer begins
at exactly zero, as Fixup requires.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ZERO_INIT_ATTR = "_dctps_zero_init"

#: Fixup's training recipe (Zhang et al. 2019, their CIFAR code; the DCTpS authors' optimiser
#: for ``fixup_resnet*``): every parameter whose name contains ``bias`` (the scalar biases and the
#: classifier's bias) or ``scale`` (the scalar multipliers) trains at a tenth of the learning rate.
LR_FACTORS: dict[str, float] = {"bias": 0.1, "scale": 0.1}


def _scalar(value: float) -> nn.Parameter:
    return nn.Parameter(torch.full((1,), value))


def _mark_zero_init(layer: nn.Conv2d | nn.Linear) -> None:
    nn.init.zeros_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    setattr(layer, ZERO_INIT_ATTR, True)


class FixupBasicBlock(nn.Module):
    """Two 3x3 bias-free convs with Fixup scalar biases and scale; parameter-free shortcut."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bias1a, self.bias1b = _scalar(0.0), _scalar(0.0)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bias2a = _scalar(0.0)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.scale, self.bias2b = _scalar(1.0), _scalar(0.0)
        self.downsample = nn.AvgPool2d(1, stride) if stride != 1 or cin != cout else None
        self.pad_channels = cout - cin

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        """Residual branch ``conv2(relu(conv1(x + b1a) + b1b) + b2a) * scale + b2b``."""
        out = torch.relu(self.conv1(x + self.bias1a) + self.bias1b)
        return self.conv2(out + self.bias2a) * self.scale + self.bias2b

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        """Identity, or (stride/width change) average-pool subsampling plus zero-padded channels."""
        if self.downsample is None:
            return x
        # The authors' option-A shortcut: subsample, then zero-pad the new channels.
        out = self.downsample(x + self.bias1a)
        pad = out.new_zeros(out.shape[0], self.pad_channels, *out.shape[2:])
        return torch.cat((out, pad), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, cin, H, W) -> (B, cout, H/stride, W/stride)``: ``relu(branch + shortcut)``."""
        return torch.relu(self.branch(x) + self.shortcut(x))


class FixupResNet(nn.Module):
    """CIFAR Fixup ResNet with ``blocks_per_stage`` basic blocks in each of three stages."""

    def __init__(self, blocks_per_stage: int = 18, num_classes: int = 10, in_channels: int = 3):
        super().__init__()
        self.num_layers = 3 * blocks_per_stage
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bias1 = _scalar(0.0)
        blocks: list[FixupBasicBlock] = []
        cin = 16
        for i, width in enumerate((16, 32, 64)):
            for j in range(blocks_per_stage):
                blocks.append(FixupBasicBlock(cin, width, 2 if i > 0 and j == 0 else 1))
                cin = width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.bias2 = _scalar(0.0)
        self.fc = nn.Linear(cin, num_classes)
        self._fixup_init()

    def _fixup_init(self) -> None:
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_in", nonlinearity="relu")
        # m = 2 layers per branch: scale by L^(-1/(2m-2)) = L^(-1/2).
        depth_scale = self.num_layers**-0.5
        for block in self.blocks:
            assert isinstance(block, FixupBasicBlock)
            w = block.conv1.weight
            fan_out = w.shape[0] * w.shape[2] * w.shape[3]
            nn.init.normal_(w, 0.0, math.sqrt(2.0 / fan_out) * depth_scale)
            _mark_zero_init(block.conv2)
        _mark_zero_init(self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` -> logits ``(B, num_classes)``."""
        x = self.blocks(torch.relu(self.conv1(x) + self.bias1))
        return self.fc(torch.flatten(self.pool(x), 1) + self.bias2)


def fixup_resnet110(
    num_classes: int = 10, in_channels: int = 3, image_size: int = 32
) -> FixupResNet:
    """FixupResNet110 (3 x 18 blocks). ``image_size`` is accepted for the registry only."""
    return FixupResNet(18, num_classes, in_channels)
