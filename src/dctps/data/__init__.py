"""Data sets as in-memory uint8 tensors, the paper's validation protocol, and a fast batch loader.

``build(name, root)`` loads a data set and returns :class:`Splits` (train / validation / test,
uint8 ``(N, C, H, W)`` images and int64 labels); :class:`Loader` turns one split into normalised,
optionally augmented float32 batches on a device.

Validation follows Appendix E.5 of the supplement. CIFAR-10/100 (and digits): a seeded 10% of the
training set is held out, the best-validation model is tested on the test set. Tiny ImageNet has
no test labels: it trains on all 100,000 training images, its official (labelled) val split is
the validation set, evaluated every epoch, and the maximum validation accuracy over training is
the reported result, so the model is selected on the split it is scored on
(:attr:`Splits.val_is_official`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dctps.data import cifar, tiny_imagenet
from dctps.data.augment import (
    default_augment,
    hflip_with_mask,
    normalize,
    random_crop,
    random_hflip,
)
from dctps.data.digits import load_digits
from dctps.data.loader import Loader
from dctps.data.split import holdout
from dctps.errors import DctpsError, check_seed, missing_data_folder, unknown_name, user_path

__all__ = [
    "DatasetInfo",
    "Loader",
    "Source",
    "Splits",
    "build",
    "check_root",
    "default_augment",
    "get_info",
    "hflip_with_mask",
    "holdout",
    "names",
    "normalize",
    "random_crop",
    "random_hflip",
    "root_of",
]

DATA_ENV = "DCTPS_DATA"

#: what a :class:`Source` loader returns: ``(train_x, train_y, test_x, test_y)``, optionally
#: followed by the number of classes actually found (a reduced copy of the data set)
Loaded = tuple


@dataclass(frozen=True)
class Source:
    """How :func:`build` reads a data set.

    Attributes:
        load: ``load(root) -> (train_x, train_y, test_x, test_y[, num_classes])``: uint8
            ``(N, C, H, W)`` images and int64 ``(N,)`` labels of the official train and test
            splits; ``root`` is the data root folder, or ``None`` where ``folder`` is ``None``.
            A fifth value, where the loader returns one, is the class count it found (a reduced
            copy of Tiny ImageNet with fewer classes), and replaces ``num_classes``.
        folder: the sub-folder of the data root that ``load`` reads (``cifar-10-batches-py``);
            ``None`` for data shipped with a package (``digits``: no root needed).
        layout: the expected layout of ``folder``, for error messages.
    """

    load: Callable[..., Loaded]
    folder: str | None = None
    layout: str = ""


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set.

    Attributes:
        name: registry name.
        num_classes: number of classes.
        in_channels: image channels (3 for RGB, 1 for digits).
        image_size: images are ``image_size x image_size``.
        mean, std: per-channel normalisation constants, in [0, 1] pixel units.
        test_is_labelled: the official test split has labels. False for Tiny ImageNet, whose
            labelled held-out split is its official val split: :func:`build` returns that split as
            the validation set (no hold-out, the paper's protocol) or, with a hold-out from the
            training set, as the test set.
        val_fraction: the paper's hold-out fraction for this data set (Appendix E.5), used when
            :func:`build` gets ``val_fraction=None``: 0.1 for CIFAR and digits, 0.0 for Tiny
            ImageNet (all training images are trained on).
        crop_padding: training augmentation: random crop of ``image_size`` after zero padding by
            this many pixels (0: no crop).
        hflip: training augmentation: random horizontal flip with probability 0.5.
        sizes: images in the official (train, test) splits; a ``subset`` of at least the larger
            changes nothing (``RunConfig`` then drops it from the run's identity).
        source: how :func:`build` loads it (:class:`Source`); ``None`` for an info that only
            describes tensors loaded elsewhere (a :class:`Loader`'s normalisation).
    """

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    test_is_labelled: bool
    val_fraction: float = 0.1
    crop_padding: int = 0
    hflip: bool = False
    sizes: tuple[int, int] = (0, 0)
    source: Source | None = field(default=None, compare=False, repr=False)


@dataclass
class Splits:
    """A loaded data set: uint8 ``(N, C, H, W)`` images and int64 ``(N,)`` labels per split.

    ``val_*`` is a seeded hold-out from the original training set (never augmented by convention),
    or, when :attr:`val_is_official`, the data set's official val split. ``test_*`` is the official
    test split; for Tiny ImageNet (unlabelled test split) it is the official val split when a
    hold-out is drawn, and empty otherwise.

    ``val_is_official``: the validation set is the data set's official labelled split and there is
    no test set (Tiny ImageNet without a hold-out, the paper's protocol). The best validation
    accuracy is then the paper's reported number: the maximum over epochs on that split, with the
    model selected on the very split it is scored on, not a held-out test accuracy.
    """

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    val_is_official: bool = False

    def fingerprint(self) -> str:
        """16 hex characters that tell these data from others: SHA-256 over the data set name,
        each split's shapes and labels (all) and pixels (up to 64 images per split, evenly
        spaced), in milliseconds. The data root is not part of a run's identity (one data set
        may live at several paths); a run's checkpoint holds this instead, so that a run is
        not resumed on other data (fake data, another copy, another version)."""
        h = hashlib.sha256(self.info.name.encode())
        for x, y in ((self.train_x, self.train_y), (self.val_x, self.val_y),
                     (self.test_x, self.test_y)):  # fmt: skip
            h.update(repr((tuple(x.shape), tuple(y.shape))).encode())
            h.update(y.contiguous().numpy().tobytes())
            if x.shape[0]:
                n, k = int(x.shape[0]), min(64, int(x.shape[0]))
                # integer positions: not the default float dtype's rounding of a linspace
                pick = torch.arange(k, dtype=torch.int64) * (n - 1) // max(k - 1, 1)
                h.update(x[pick].contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


def _load_digits(root: Path | None) -> Loaded:
    """The embedded digits (no root; a named function, so a DatasetInfo pickles)."""
    return load_digits()


_INFOS: dict[str, DatasetInfo] = {
    # Constants of the reference code (Table E.3 set-up): RandomCrop(32, padding=4) + flip.
    "cifar10": DatasetInfo(
        name="cifar10",
        source=Source(cifar.load_cifar10, cifar.CIFAR10_DIR, cifar.CIFAR10_LAYOUT),
        sizes=(50000, 10000),
        num_classes=10,
        in_channels=3,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        # the mean of the per-image stds, as the authors' code and many CIFAR recipes use: not the
        # pixels' std (0.2470, 0.2435, 0.2616), so training inputs have std about 1.2; kept so
        # that runs normalise as the paper's did
        std=(0.2023, 0.1994, 0.2010),
        test_is_labelled=True,
        crop_padding=4,
        hflip=True,
    ),
    "cifar100": DatasetInfo(
        name="cifar100",
        source=Source(cifar.load_cifar100, cifar.CIFAR100_DIR, cifar.CIFAR100_LAYOUT),
        sizes=(50000, 10000),
        num_classes=100,
        in_channels=3,
        image_size=32,
        mean=(0.5071, 0.4867, 0.4408),
        std=(0.2675, 0.2565, 0.2761),
        test_is_labelled=True,
        crop_padding=4,
        hflip=True,
    ),
    # The reference code uses RandomCrop(64, padding=4) + flip for Tiny ImageNet. The supplement
    # does not give its normalisation constants, so mean and std are those of the authors' code
    # (we reproduce their experiments). val_fraction 0: Appendix E.5 withholds
    # validation data only on CIFAR; on Tiny ImageNet it reports the max official-val accuracy.
    "tiny_imagenet": DatasetInfo(
        name="tiny_imagenet",
        source=Source(
            tiny_imagenet.load_tiny_imagenet, tiny_imagenet.TINY_DIR, tiny_imagenet.LAYOUT
        ),
        sizes=(100000, 10000),
        num_classes=200,
        in_channels=3,
        image_size=64,
        mean=(0.4802, 0.4481, 0.3975),
        std=(0.2770, 0.2691, 0.2821),
        test_is_labelled=False,
        val_fraction=0.0,
        crop_padding=4,
        hflip=True,
    ),
    # Mean/std of all 1438 non-test digits (the fixed seed-0 80%), pixels round(v * 255 / 16) / 255;
    # computed once so the constants do not depend on the run's split seed. No crop or flip: on
    # 8x8 digits a 4-pixel shift destroys the digit and a mirror changes its meaning.
    "digits": DatasetInfo(
        name="digits",
        source=Source(_load_digits),
        sizes=(1438, 359),
        num_classes=10,
        in_channels=1,
        image_size=8,
        mean=(0.3057,),
        std=(0.3759,),
        test_is_labelled=True,
        crop_padding=0,
        hflip=False,
    ),
}


def names() -> list[str]:
    """Registry names of the supported data sets."""
    return list(_INFOS)


def get_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name`` without loading any data."""
    if name not in _INFOS:
        raise unknown_name("dataset", name, names())
    return _INFOS[name]


def _resolve_root(name: str, root: str | os.PathLike[str] | None) -> Path:
    if root is None:
        env = os.environ.get(DATA_ENV)
        if not env:
            raise DctpsError(
                f"no data root for dataset {name!r}: pass root=... (CLI: --data-root) or set "
                f"the environment variable {DATA_ENV}"
            )
        root = env
    path = user_path(root, "the data root (--data-root, data.root, root=)")
    if not path.is_dir():
        raise DctpsError(f"data root {path} does not exist or is not a folder")
    return path


def root_of(name: str, root: str | os.PathLike[str] | None) -> str | None:
    """The absolute folder :func:`build` reads ``name`` from (``root``, else ``DCTPS_DATA``), or
    ``None`` for embedded data (``digits``). A :class:`DctpsError` where there is none."""
    if _source(get_info(name)).folder is None:
        return None
    return str(_resolve_root(name, root).resolve())


def check_root(name: str, root: str | os.PathLike[str] | None) -> None:
    """Raise the :class:`DctpsError` :func:`build` would raise for a missing data root of
    ``name`` (none given and no ``DCTPS_DATA``, or not a folder) or a root without the data
    set's folder (e.g. ``cifar-10-batches-py``), without reading any data; the embedded
    ``digits`` need none. Sweeps call it once before their first run."""
    src = _source(get_info(name))
    if src.folder is None:
        return
    path = _resolve_root(name, root)
    if not (path / src.folder).is_dir():  # the loader's own first check, before any run starts
        raise missing_data_folder(path, src.folder, src.layout)


def _source(info: DatasetInfo) -> Source:
    if info.source is None:
        raise DctpsError(
            f"data set {info.name!r} has no Source (DatasetInfo.source): dctps.data.build "
            "cannot load it"
        )
    return info.source


def _check_subset(subset: object) -> int | None:
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, int) or subset < 1:
        raise DctpsError(f"subset must be a positive integer or None, got {subset!r}")
    return subset


def build(
    name: str,
    root: str | os.PathLike[str] | None = None,
    *,
    val_fraction: float | None = None,
    split_seed: int = 0,
    subset: int | None = None,
) -> Splits:
    """Load data set ``name`` and its validation set: a seeded hold-out from its training set, or
    (Tiny ImageNet, no hold-out) its official val split.

    Args:
        name: one of :func:`names`.
        root: data root folder (``None``: the ``DCTPS_DATA`` environment variable). Ignored for
            ``digits``. Expected layouts: CIFAR-10 ``<root>/cifar-10-batches-py/...``, CIFAR-100
            ``<root>/cifar-100-python/...``, Tiny ImageNet ``<root>/tiny-imagenet-200/...``.
        val_fraction: fraction of the training set held out, in [0, 1); the first
            ``round(val_fraction * N)`` indices of a permutation seeded with ``split_seed``.
            ``None``: the paper's protocol, :attr:`DatasetInfo.val_fraction` (0.1; Tiny ImageNet
            0.0). Tiny ImageNet with 0: its official val split is the validation set and there
            is no test set (:attr:`Splits.val_is_official`); with a hold-out, the official val
            split is the test set.
        split_seed: seed of the hold-out permutation.
        subset: keep only the first ``subset`` training examples after the split (a random subset,
            since training indices are in permutation order) and the first ``min(subset, len)`` of
            validation (hold-out or official) and test; for quick runs.

    Returns:
        :class:`Splits` with uint8 images ``(N, C, H, W)`` and int64 labels ``(N,)``.

    Raises:
        DctpsError: unknown name, missing root/folder/file, or a corrupt file (the message names the
            path and the expected layout).
    """
    info = get_info(name)
    subset = _check_subset(subset)
    check_seed(split_seed, "split_seed")  # -1 seeded a generator that run configs refuse
    if val_fraction is None:
        val_fraction = info.val_fraction
    src = _source(info)
    loaded = src.load(None if src.folder is None else _resolve_root(name, root))
    tr_x, tr_y, te_x, te_y = loaded[:4]
    if len(loaded) > 4 and loaded[4] != info.num_classes:
        # a reduced copy (Tiny ImageNet with fewer wnids): report its true class count
        info = dataclasses.replace(info, num_classes=int(loaded[4]))

    train_idx, val_idx = holdout(int(tr_x.shape[0]), val_fraction, split_seed)
    if subset is not None:
        train_idx, val_idx = train_idx[:subset], val_idx[:subset]
        # clone: a slice would keep the whole test set alive through its storage
        te_x, te_y = te_x[:subset].clone(), te_y[:subset].clone()
    val_x, val_y = tr_x[val_idx], tr_y[val_idx]
    # Without test labels and without a hold-out, the official labelled split (Tiny ImageNet's
    # val) becomes the validation set, as in Appendix E.5; nothing is left to test on.
    official = not info.test_is_labelled and float(val_fraction) == 0.0
    if official:
        val_x, val_y = te_x, te_y
        te_x, te_y = te_x[:0].clone(), te_y[:0].clone()
    return Splits(
        info=info,
        train_x=tr_x[train_idx],
        train_y=tr_y[train_idx],
        val_x=val_x,
        val_y=val_y,
        test_x=te_x,
        test_y=te_y,
        val_is_official=official,
    )
