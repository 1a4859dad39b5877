"""scikit-learn's 8x8 digits (ships with scikit-learn, no download), as uint8 tensors.

A tiny, fast stand-in data set for tests and quick runs: 1797 grayscale 8x8 images, 10 classes.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from dctps.data.split import holdout

TEST_FRACTION = 0.2
TEST_SEED = 0  # fixed, so the test set never depends on the run's split seed


def load_digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load the digits and split a fixed (seed 0) 20% off as the test set.

    Pixel values 0..16 are mapped to uint8 by ``round(x * 255 / 16)``.

    Returns:
        ``(train_x, train_y, test_x, test_y)``: uint8 ``(1438, 1, 8, 8)``, int64 ``(1438,)``,
        uint8 ``(359, 1, 8, 8)``, int64 ``(359,)``.
    """
    images, target = _shipped_digits()
    x = torch.from_numpy(np.rint(images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(np.asarray(target, dtype=np.int64))
    rest, test = holdout(len(y), TEST_FRACTION, TEST_SEED)
    return x[rest], y[rest], x[test], y[test]


def _shipped_digits() -> tuple[np.ndarray, np.ndarray]:
    """``(images (1797, 8, 8) float, target (1797,))`` as ``sklearn.datasets.load_digits`` gives
    them, read from the file scikit-learn ships (``datasets/data/digits.csv.gz``: 64 pixel
    columns, then the label) without importing scikit-learn, which took 0.9 s of every demo and
    of each process that builds the digits. Where that file is not found (another layout), the
    loader itself."""
    spec = importlib.util.find_spec("sklearn")
    roots = (spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            data = np.loadtxt(path, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as _sk_load_digits  # slow import, only when used

    d = _sk_load_digits()
    return d.images, d.target
