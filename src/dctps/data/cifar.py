"""CIFAR-10 / CIFAR-100 from the original python-pickle layout, as uint8 tensors."""

from __future__ import annotations

import functools
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dctps.errors import DctpsError, missing_data_folder, not_a_file

CIFAR10_DIR = "cifar-10-batches-py"
CIFAR100_DIR = "cifar-100-python"

CIFAR10_LAYOUT = (
    f"<root>/{CIFAR10_DIR}/{{data_batch_1 .. data_batch_5, test_batch, batches.meta}}, each a "
    "pickle of a dict with 'data' (uint8 N x 3072) and 'labels' (N ints in 0..9)"
)
CIFAR100_LAYOUT = (
    f"<root>/{CIFAR100_DIR}/{{train, test, meta}}, each a pickle of a dict with 'data' "
    "(uint8 N x 3072) and 'fine_labels' (N ints in 0..99)"
)


#: the only globals a CIFAR pickle needs: numpy arrays, dtypes and scalars (numpy 1 and 2
#: module names; protocols 2 to 5), and ``_codecs.encode`` (bytes in a protocol-2 pickle
#: written by Python 3)
_SAFE_GLOBALS = {
    (m, n)
    for m in ("numpy.core.multiarray", "numpy._core.multiarray")
    for n in ("_reconstruct", "scalar")
} | {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _DataUnpickler(pickle.Unpickler):
    """A pickle reader that builds only numpy arrays and plain values: a pickle can name any
    function to call while loading, so a data folder from elsewhere could run code on load."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(
                f"it asks for {module}.{name}; a CIFAR file holds only numpy arrays, lists and "
                "strings, so it is not loaded"
            )
        found = super().find_class(module, name)
        if (module, name) == ("numpy", "ndarray"):
            # only as _reconstruct's first argument: called itself, ndarray(shape) would
            # allocate any shape a few bytes ask for
            return _NDARRAY
        if name == "_reconstruct":
            return functools.partial(_empty_reconstruct, found)
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        return found


def _latin1_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as a protocol-2 pickle calls it for ``bytes``: a ``str`` into latin-1.
    Any other codec is refused: ``hex`` doubles its input, and a chain of 30 such calls in a
    395-byte file asked for 1.8 GB (40 for a terabyte)."""
    if not isinstance(text, str) or encoding.replace("_", "-").lower() not in _LATIN1:
        raise pickle.UnpicklingError(
            f"it encodes with {encoding!r}; a CIFAR file's bytes come as latin-1, so it is not "
            "loaded"
        )
    return text.encode("latin-1", errors)


_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")


#: stands for ``numpy.ndarray`` in a CIFAR pickle (see :meth:`_DataUnpickler.find_class`)
_NDARRAY = object()


def _empty_reconstruct(reconstruct: Any, subtype: object, shape: Any, dtype: Any) -> object:
    """numpy's ``_reconstruct`` as numpy's own pickles call it: an empty ``ndarray`` whose data
    ``__setstate__`` then copies from the file. Any other call is refused: a shape of
    ``(200000, 3072)`` with no data behind it gave a 600 MB array of garbage from a 60 KB file."""
    if subtype is not _NDARRAY or tuple(shape) != (0,):
        raise pickle.UnpicklingError(
            f"it builds an array of shape {shape!r} without its data (numpy's own pickles start "
            "from an empty array and then load the data), so it is not loaded"
        )
    return reconstruct(np.ndarray, shape, dtype)


def _unpickle(path: Path, layout: str) -> dict[str, object]:
    """Load one CIFAR pickle and return it with ``str`` keys, or raise naming the path."""
    if not path.is_file():
        raise DctpsError(f"{not_a_file(path)}; expected layout: {layout}")
    try:
        with open(path, "rb") as f:
            # latin1 decodes the Python-2 str keys of the official files to str and leaves the
            # numpy payload intact (the torchvision convention).
            obj = _DataUnpickler(f, encoding="latin1").load()
    except Exception as e:  # truncated / not a pickle / unknown globals: all mean "corrupt"
        raise DctpsError(
            f"cannot read {path} ({type(e).__name__}: {e}); is it truncated or corrupt? "
            f"expected layout: {layout}"
        ) from None
    if not isinstance(obj, dict):
        raise DctpsError(
            f"{path} holds a {type(obj).__name__}, not a dict; expected layout: {layout}"
        )
    # Pickles written by Python 3 with bytes keys come back as bytes: accept both spellings.
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _read_batch(
    path: Path, label_key: str, num_classes: int, layout: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one batch file into ``x`` uint8 ``(N, 3, 32, 32)`` and ``y`` int64 ``(N,)``.

    Each row of ``data`` is 1024 red, then 1024 green, then 1024 blue values, each plane row-major
    32x32, so a plain reshape to ``(N, 3, 32, 32)`` gives ``[c, h, w]`` indexing.
    """
    d = _unpickle(path, layout)
    missing = [k for k in ("data", label_key) if k not in d]
    if missing:
        raise DctpsError(
            f"{path} lacks key(s) {missing} (has {sorted(d)}); expected layout: {layout}"
        )
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        desc = (
            f"{data.dtype} array of shape {data.shape}"
            if isinstance(data, np.ndarray)
            else type(data).__name__
        )
        raise DctpsError(f"{path}: 'data' is a {desc}, expected uint8 N x 3072; layout: {layout}")
    if data.shape[1] != 3 * 32 * 32:
        raise DctpsError(
            f"{path}: 'data' has shape {data.shape}, expected (N, 3072); layout: {layout}"
        )
    try:
        raw = np.asarray(d[label_key])
    except (TypeError, ValueError) as e:
        raise DctpsError(f"{path}: '{label_key}' is not a list of integers ({e})") from None
    if raw.size and (raw.dtype == np.bool_ or not np.issubdtype(raw.dtype, np.integer)):
        # a cast would truncate 1.9 to class 1 without a word
        raise DctpsError(
            f"{path}: '{label_key}' is not a list of integers (its values are {raw.dtype}, "
            f"e.g. {raw.reshape(-1)[0]!r}); layout: {layout}"
        )
    labels = raw.astype(np.int64)
    if labels.shape != (data.shape[0],):
        raise DctpsError(
            f"{path}: '{label_key}' has shape {labels.shape}, expected ({data.shape[0]},) "
            f"to match 'data'; layout: {layout}"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DctpsError(
            f"{path}: '{label_key}' has values in [{labels.min()}, {labels.max()}], "
            f"expected 0..{num_classes - 1}"
        )
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32).copy())
    return x, torch.from_numpy(labels.copy())


def _check_meta(path: Path, names_key: str, num_classes: int, layout: str) -> None:
    """Check the meta file lists ``num_classes`` class names (catches a swapped CIFAR folder)."""
    meta = _unpickle(path, layout)
    names = meta.get(names_key)
    if not isinstance(names, (list, tuple)) or len(names) != num_classes:
        got = len(names) if isinstance(names, (list, tuple)) else None
        raise DctpsError(
            f"{path}: '{names_key}' should list {num_classes} class names, got "
            f"{got if got is not None else 'no such key'}; expected layout: {layout}"
        )


def _folder(root: str | os.PathLike[str], sub: str, layout: str) -> Path:
    folder = Path(root) / sub
    if not folder.is_dir():
        raise missing_data_folder(root, sub, layout)
    return folder


def load_cifar10(
    root: str | os.PathLike[str],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load CIFAR-10 from ``<root>/cifar-10-batches-py``.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: uint8 ``(50000, 3, 32, 32)``, int64 ``(50000,)``,
        uint8 ``(10000, 3, 32, 32)``, int64 ``(10000,)`` for the real data set (any N is accepted,
        so small fakes load too). Train batches are concatenated in order 1..5.
    """
    folder = _folder(root, CIFAR10_DIR, CIFAR10_LAYOUT)
    _check_meta(folder / "batches.meta", "label_names", 10, CIFAR10_LAYOUT)
    parts = [
        _read_batch(folder / f"data_batch_{i}", "labels", 10, CIFAR10_LAYOUT) for i in range(1, 6)
    ]
    test_x, test_y = _read_batch(folder / "test_batch", "labels", 10, CIFAR10_LAYOUT)
    train_x = torch.cat([p[0] for p in parts])
    train_y = torch.cat([p[1] for p in parts])
    return train_x, train_y, test_x, test_y


def load_cifar100(
    root: str | os.PathLike[str],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load CIFAR-100 (fine labels) from ``<root>/cifar-100-python``.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: uint8 ``(50000, 3, 32, 32)``, int64 ``(50000,)``,
        uint8 ``(10000, 3, 32, 32)``, int64 ``(10000,)`` for the real data set.
    """
    folder = _folder(root, CIFAR100_DIR, CIFAR100_LAYOUT)
    _check_meta(folder / "meta", "fine_label_names", 100, CIFAR100_LAYOUT)
    train_x, train_y = _read_batch(folder / "train", "fine_labels", 100, CIFAR100_LAYOUT)
    test_x, test_y = _read_batch(folder / "test", "fine_labels", 100, CIFAR100_LAYOUT)
    return train_x, train_y, test_x, test_y
