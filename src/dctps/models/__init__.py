"""The paper's six architectures, built by name.

``build(name, num_classes, in_channels, image_size)`` returns a dense, initialised ``nn.Module``;
``names()`` lists the valid names. To add an architecture, write one file with a constructor of the
same signature and add one line to ``_REGISTRY``.

Parameter counts with 10 classes (Table E.1 of the supplement; "weights" are the ``.weight`` of
every Conv2d and Linear, "other" is every other parameter, i.e. biases, BN and Fixup scalars):

=================  ===========  ======
name               weights      other
=================  ===========  ======
lenet5                  61,510       0
resnet18            11,164,352   9,610
resnet50            23,467,712  53,130
vgg19               20,024,000  11,018
mobilenetv2          2,261,824  35,098
fixup_resnet110      1,719,856     282
=================  ===========  ======
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from dctps.errors import DctpsError, ImageTooSmall, unknown_name
from dctps.models.fixup_resnet import LR_FACTORS as FIXUP_LR_FACTORS
from dctps.models.fixup_resnet import ZERO_INIT_ATTR, fixup_resnet110
from dctps.models.lenet import lenet5
from dctps.models.mobilenetv2 import mobilenetv2
from dctps.models.resnet import kaiming_init_, resnet18, resnet50
from dctps.models.vgg import vgg19

__all__ = [
    "REVISIONS",
    "ZERO_INIT_ATTR",
    "build",
    "check_revision",
    "kaiming_init_",
    "lr_factors",
    "names",
]

Constructor = Callable[[int, int, int], nn.Module]

_REGISTRY: dict[str, Constructor] = {
    "lenet5": lenet5,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "vgg19": vgg19,
    "mobilenetv2": mobilenetv2,
    "fixup_resnet110": fixup_resnet110,
}


#: Architectures whose computed function changed after runs of them were recorded: the revision
#: enters a training run's config hash (``RunConfig.identity``), so results of the old function
#: are never reused for the new one. Absent means revision 1 (hashes unchanged).
#: vgg19 2: four max-pools then the average, as FORCE's VGG (revision 1 had a fifth max-pool).
REVISIONS: dict[str, int] = {"vgg19": 2}


#: Per-architecture learning-rate factors of its training recipe: parameter-name substring ->
#: factor of the run's learning rate (the first matching substring applies). Part of a run's
#: identity (:meth:`dctps.train.config.RunConfig.identity`).
_LR_FACTORS: dict[str, dict[str, float]] = {"fixup_resnet110": FIXUP_LR_FACTORS}


def lr_factors(name: str) -> dict[str, float]:
    """The learning-rate factors of architecture ``name``'s recipe (empty: one learning rate)."""
    return dict(_LR_FACTORS.get(name, {}))


def names() -> list[str]:
    """The valid model names, sorted."""
    return sorted(_REGISTRY)


def _check_int(value: object, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DctpsError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def build(
    name: str, num_classes: int = 10, in_channels: int = 3, image_size: int = 32
) -> nn.Module:
    """Build the dense model ``name`` for ``num_classes`` outputs on square inputs of
    ``in_channels`` x ``image_size`` x ``image_size``.

    Raises :class:`DctpsError` for an unknown name (with a did-you-mean), for a non-integer or
    too-small ``num_classes`` (< 2), ``in_channels`` (< 1) or ``image_size`` (< 1), and for an
    ``image_size`` the architecture cannot take (LeNet-5 needs at least 32, VGG19 16).
    """
    constructor = _REGISTRY.get(name) if isinstance(name, str) else None
    if constructor is None:
        raise unknown_name("model", name, names())
    num_classes = _check_int(num_classes, "num_classes", 2)
    in_channels = _check_int(in_channels, "in_channels", 1)
    image_size = _check_int(image_size, "image_size", 1)
    try:
        model = constructor(num_classes, in_channels, image_size)
    except ImageTooSmall as e:
        fits = [n for n in names() if n != name and _takes(n, in_channels, image_size)]
        raise ImageTooSmall(
            f"{e}; models that take {image_size}x{image_size} inputs: {', '.join(fits) or 'none'}"
        ) from None
    # Lets dctps.save record the architecture, so dctps.load can rebuild it without the class.
    arch: dict[str, object] = {
        "name": name, "num_classes": num_classes, "in_channels": in_channels,
        "image_size": image_size,
    }  # fmt: skip
    if REVISIONS.get(name, 1) > 1:  # a file of another revision must not load silently
        arch["revision"] = REVISIONS[name]
    model.dctps_arch = arch  # type: ignore[assignment]
    return model


def _takes(name: str, in_channels: int, image_size: int) -> bool:
    """Whether model ``name`` builds for ``image_size`` inputs (on the meta device: no memory,
    no initialisation's time)."""
    import torch

    try:
        with torch.device("meta"):
            _REGISTRY[name](10, in_channels, image_size)
    except ImageTooSmall:
        return False
    return True


def check_revision(arch: dict, source: str) -> None:
    """A :class:`DctpsError` when ``arch`` (a saved architecture spec, ``revision`` absent = 1)
    names another revision of its model than this version builds (:data:`REVISIONS`): its
    weights would load into a network that computes another function."""
    name = arch.get("name")
    saved, now = int(arch.get("revision", 1)), REVISIONS.get(str(name), 1)
    if saved != now:
        raise DctpsError(
            f"{source} holds a {name} of revision {saved}, but this dctps builds revision {now} "
            "(the network changed; see dctps.models.REVISIONS and the CHANGELOG): its weights "
            "would compute another function. Use the dctps version that wrote it"
        )
