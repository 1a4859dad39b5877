"""scripts/cifar_webp.py: the packed subset is exact, class-balanced and loads with dctps."""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import pytest
from conftest import write_fake_cifar10

from dctps.data.cifar import load_cifar10

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "cifar_webp.py"


@pytest.fixture(scope="module")
def cw():
    spec = importlib.util.spec_from_file_location("cifar_webp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_balanced_subset_counts_and_determinism(cw):
    y = np.repeat(np.arange(10), 50)
    idx = cw.balanced_subset(y, 123, seed=3)
    counts = np.bincount(y[idx], minlength=10)
    assert counts.sum() == 123 and counts.max() - counts.min() == 1
    assert np.array_equal(idx, np.unique(idx))  # sorted, no repeats
    assert np.array_equal(idx, cw.balanced_subset(y, 123, seed=3))
    assert not np.array_equal(idx, cw.balanced_subset(y, 123, seed=4))


def test_pack_unpack_is_exact(cw, tmp_path):
    src = write_fake_cifar10(tmp_path / "src", n_per_batch=60, n_test=60, seed=5)
    cw.pack(src, tmp_path / "p.npz", n_train=50, n_test=20, seed=0)
    cw.unpack(tmp_path / "p.npz", tmp_path / "dst")

    def rows(names):
        xs, ys = [], []
        for n in names:
            with open(src / "cifar-10-batches-py" / n, "rb") as f:
                d = pickle.load(f, encoding="latin1")
            xs.append(d["data"])
            ys += d["labels"]
        return np.concatenate(xs), np.asarray(ys)

    x, y = rows([f"data_batch_{i}" for i in range(1, 6)])
    xt, yt = rows(["test_batch"])
    tx, ty, ex, ey = load_cifar10(tmp_path / "dst")
    idx = cw.balanced_subset(y, 50, 0)
    tidx = cw.balanced_subset(yt, 20, 1)
    assert np.array_equal(tx.reshape(50, -1).numpy(), x[idx])
    assert np.array_equal(ty.numpy(), y[idx])
    assert np.array_equal(ex.reshape(20, -1).numpy(), xt[tidx])
    assert np.array_equal(ey.numpy(), yt[tidx])
