"""Tiny ImageNet (200 classes, 64x64) from the official folder layout, as uint8 tensors.

The official test split has no labels, so the labelled ``val`` split is returned as the test
split here. :func:`dctps.data.build` decides its role: by default (Appendix E.5, no hold-out) it
is the validation set on which the max accuracy is reported, and there is no test set; with a
``val_fraction`` it becomes the test set, and validation is held out of the training images.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from dctps.errors import DctpsError, missing_data_folder, not_a_file

TINY_DIR = "tiny-imagenet-200"
IMAGE_SIZE = 64
LAYOUT = (
    f"<root>/{TINY_DIR}/{{wnids.txt, train/<wnid>/images/*.JPEG, val/images/*.JPEG, "
    "val/val_annotations.txt} (one wnid per line in wnids.txt; val_annotations.txt lines "
    "'<file>\\t<wnid>\\t...'; 64x64 images)"
)


def _decode(path: Path) -> np.ndarray:
    """Decode one JPEG to uint8 ``(64, 64, 3)`` RGB (a few Tiny ImageNet images are grayscale)."""
    from PIL import Image  # imported lazily: only Tiny ImageNet needs Pillow

    try:
        with Image.open(path) as im:
            # the header's size, before decoding: a 1.3 MB JPEG of 9000x9000 took 1 GB (on
            # each of 16 threads) to be refused
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise _WrongSize(im.size)
            arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except _WrongSize as e:
        width, height = e.args[0]
        raise DctpsError(
            f"image {path} has size {width}x{height}, expected {IMAGE_SIZE}x{IMAGE_SIZE}"
        ) from None
    except Exception as e:  # truncated / not an image
        raise DctpsError(
            f"cannot decode image {path} ({type(e).__name__}: {e}); expected layout: {LAYOUT}"
        ) from None
    return arr


class _WrongSize(Exception):
    """An image whose header gives another size than Tiny ImageNet's (its ``(w, h)``)."""


def _decode_all(paths: list[Path]) -> torch.Tensor:
    """Decode ``paths`` into uint8 ``(N, 3, 64, 64)``, on a thread pool (PIL releases the GIL)."""
    out = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode(paths[i])

    workers = min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises the first worker exception (a DctpsError naming the bad file).
        list(pool.map(work, range(len(paths)), chunksize=256))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _read_lines(path: Path) -> list[str]:
    """The lines of a text file of the layout, or a :class:`DctpsError` naming it."""
    if not path.is_file():
        raise DctpsError(f"{not_a_file(path)}; expected layout: {LAYOUT}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DctpsError(
            f"cannot read {path} as text ({type(e).__name__}: {e}); expected layout: {LAYOUT}"
        ) from None


def _read_wnids(folder: Path) -> list[str]:
    path = folder / "wnids.txt"
    wnids = [line.strip() for line in _read_lines(path) if line.strip()]
    if not wnids:
        raise DctpsError(f"{path} lists no class ids; expected layout: {LAYOUT}")
    if len(set(wnids)) != len(wnids):
        raise DctpsError(f"{path} lists a class id twice")
    return wnids


def load_tiny_imagenet(
    root: str | os.PathLike[str],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Load Tiny ImageNet from ``<root>/tiny-imagenet-200``.

    Class ``i`` is the ``i``-th wnid in sorted order (torchvision ``ImageFolder``'s convention).

    Returns:
        ``(train_x, train_y, test_x, test_y, num_classes)``: uint8 ``(100000, 3, 64, 64)``, int64
        ``(100000,)``, and the labelled val split as test: uint8 ``(10000, 3, 64, 64)``, int64
        ``(10000,)``; ``num_classes`` is the number of wnids (200 for the real data set).
    """
    folder = Path(root) / TINY_DIR
    if not folder.is_dir():
        raise missing_data_folder(root, TINY_DIR, LAYOUT)
    wnids = sorted(_read_wnids(folder))
    label_of = {w: i for i, w in enumerate(wnids)}

    train_paths: list[Path] = []
    train_labels: list[int] = []
    for w in wnids:
        img_dir = folder / "train" / w / "images"
        if not img_dir.is_dir():
            raise DctpsError(
                f"missing class folder {img_dir} for wnid {w!r} listed in "
                f"{folder / 'wnids.txt'}; expected layout: {LAYOUT}"
            )
        files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".jpeg", ".jpg"))
        if not files:
            raise DctpsError(f"class folder {img_dir} holds no .JPEG images")
        train_paths += files
        train_labels += [label_of[w]] * len(files)

    ann = folder / "val" / "val_annotations.txt"
    val_paths: list[Path] = []
    val_labels: list[int] = []
    first_line: dict[str, int] = {}
    for lineno, line in enumerate(_read_lines(ann), start=1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) < 2:
            raise DctpsError(f"{ann}:{lineno}: expected '<file>\\t<wnid>\\t...', got {line!r}")
        name, w = fields[0].strip(), fields[1].strip()
        if "/" in name or "\\" in name or name in (".", ".."):  # must name a file in val/images
            raise DctpsError(f"{ann}:{lineno}: {name!r} is not a file name in val/images")
        if w not in label_of:
            raise DctpsError(f"{ann}:{lineno}: wnid {w!r} is not listed in wnids.txt")
        if name in first_line:  # a repeated image would count twice in the reported accuracy
            raise DctpsError(f"{ann}:{lineno}: {name!r} is listed again (first on line "
                             f"{first_line[name]})")  # fmt: skip
        first_line[name] = lineno
        p = folder / "val" / "images" / name
        if not p.is_file():
            raise DctpsError(f"{not_a_file(p)} (named in {ann}:{lineno})")
        val_paths.append(p)
        val_labels.append(label_of[w])
    if not val_paths:
        raise DctpsError(f"{ann} lists no images; expected layout: {LAYOUT}")
    on_disk = sum(
        1 for p in (folder / "val" / "images").iterdir() if p.suffix.lower() in (".jpeg", ".jpg")
    )
    if on_disk != len(val_paths):  # a cut-off annotation file shrank the reported split
        raise DctpsError(
            f"{ann} lists {len(val_paths)} images, but {folder / 'val' / 'images'} holds "
            f"{on_disk}: the annotations are incomplete (a cut-off download?); every validation "
            "image needs its line"
        )

    train_x = _decode_all(train_paths)
    test_x = _decode_all(val_paths)
    return (
        train_x,
        torch.tensor(train_labels, dtype=torch.int64),
        test_x,
        torch.tensor(val_labels, dtype=torch.int64),
        len(wnids),
    )
