"""VGG19 with batch normalisation, in the CIFAR form of FORCE (naver/force) and the DCTpS paper.

Architecture (Simonyan & Zisserman, 2015, configuration E): sixteen 3x3 bias-free convs, each
followed by BN and ReLU, widths 64x2, 128x2, 256x4, 512x4, 512x4, with a 2x2 max-pool between the
groups (four pools; none after the last group), then an average pool over the whole map and a
single ``Linear(512, num_classes)`` with bias. This is FORCE's ``VGG`` (``defaultcfg[19]``, then
``AvgPool2d(2)`` for CIFAR's 2x2 map and ``AvgPool2d(4)`` for Tiny ImageNet's 4x4 map), which
the paper uses (Appendix E.2). The classifier bias is what makes the "bias & BN" count exact
(11,008 BN parameters + 10 biases).

Four 2x2 max-pools need inputs of at least 16x16; smaller sizes raise
:class:`~dctps.errors.ImageTooSmall`. The adaptive average pool makes the classifier input 512
at any input size, so the weights do not depend on it.

Table E.1 (10 classes), weights / other parameters: 20,024,000 / 11,018.
"""

from __future__ import annotations

import torch
from torch import nn

from dctps.errors import ImageTooSmall, warn_at_caller
from dctps.models.resnet import kaiming_init_

_CFG_19: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512,
)  # fmt: skip


class VGG(nn.Module):
    """VGG with BN from a layer configuration (ints are conv widths, ``"M"`` a 2x2 max-pool)."""

    #: the state-dict version (torch's ``_version``): 2 since the fifth max-pool was dropped
    #: (``dctps.models.REVISIONS``); the weights' shapes did not change, so a state dict of
    #: version 1 loads, and is warned of
    _version = 2

    def __init__(
        self,
        cfg: tuple[int | str, ...] = _CFG_19,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        pools = sum(1 for c in cfg if c == "M")
        if image_size < 2**pools:
            raise ImageTooSmall(
                f"VGG with {pools} max-pools needs inputs of at least {2**pools}x{2**pools}, "
                f"got image_size={image_size}"
            )
        layers: list[nn.Module] = []
        cin = in_channels
        for c in cfg:
            if c == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                assert isinstance(c, int)
                layers += [
                    nn.Conv2d(cin, c, 3, padding=1, bias=False),
                    nn.BatchNorm2d(c),
                    nn.ReLU(inplace=True),
                ]
                cin = c
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)
        kaiming_init_(self)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):  # type: ignore[no-untyped-def]
        if local_metadata.get("version") == 1:
            warn_at_caller(
                f"this state dict of a VGG{' at ' + prefix.rstrip('.') if prefix else ''} is of "
                "version 1: saved by dctps 0.1, whose VGG has a fifth max-pool, or by a "
                "development version before 0.2 marked it. Its weights load, but if they are "
                "dctps 0.1's they compute another function here (four max-pools, as FORCE's "
                "VGG: dctps.models.REVISIONS). Read such weights with dctps 0.1, or train anew",
                RuntimeWarning,
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``(B, C, H, W)`` (``H, W >= 16``) -> logits ``(B, num_classes)``."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def vgg19(num_classes: int = 10, in_channels: int = 3, image_size: int = 32) -> VGG:
    """VGG19 with BN; ``image_size`` must be at least 16 (four max-pools)."""
    return VGG(_CFG_19, num_classes, in_channels, image_size)
