"""Shared test fixtures."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

# Tests run as 2 xdist workers on 2 cores, and many spawn subprocesses: one torch thread each.
# Oversubscribed OpenMP threads spin against each other and made steps ~30x slower (measured
# 0.28 s vs 0.009 s of CPU per LeNet step). Set before torch starts, inherited by subprocesses.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

#: torch.compile's C++ build does not quote its paths: under a TMPDIR with a space (a flakiness
#: review), g++ read "/tmp/dir" and "with" as two files. The compile tests skip there.
COMPILE_NEEDS_PLAIN_TMPDIR = pytest.mark.skipif(
    " " in __import__("tempfile").gettempdir(),
    reason="torch.compile's C++ build fails where the temporary folder's path has a space",
)

import torch  # noqa: E402

torch.set_num_threads(1)

# dctps's Triton kernels (dctps.triton_rebuild) run where Triton is installed: compiled on CUDA,
# and on a machine without one in Triton's interpreter, which reads this variable when the
# kernels are defined, so before any test imports dctps
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def write_fake_cifar10(root: Path, n_per_batch: int = 64, n_test: int = 64, seed: int = 0) -> Path:
    """A tiny, learnable CIFAR-10 in the official pickle layout under ``root``; returns ``root``.

    Each class has its own mean colour plus noise, so a small net learns it in a few epochs.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(40, 216, size=(10, 3))

    def batch(n: int) -> tuple[np.ndarray, list[int]]:
        y = rng.integers(0, 10, n)
        x = colours[y][:, :, None] + rng.normal(0, 30, size=(n, 3, 1024))
        return np.clip(x, 0, 255).astype(np.uint8).reshape(n, 3072), [int(v) for v in y]

    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f, protocol=2)
    for i in range(1, 6):
        x, y = batch(n_per_batch)
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x, "labels": y}, f, protocol=2)
    x, y = batch(n_test)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": x, "labels": y}, f, protocol=2)
    return Path(root)


@pytest.fixture(scope="session")
def fake_cifar10(tmp_path_factory) -> Path:
    """Data root holding a tiny learnable fake CIFAR-10 (320 train, 64 test images)."""
    return write_fake_cifar10(tmp_path_factory.mktemp("fake_cifar10"))


@pytest.fixture
def host_reads(monkeypatch):
    """``start()``: from then on, count the reads of tensor data to the host (``bool``, ``int``,
    ``float``, ``index``, ``.item()``, ``.tolist()``) in the one-element list it returns. Each is
    a synchronisation on CUDA, which tests on the CPU can count this way."""

    def start() -> list[int]:
        n = [0]
        for name in ("__bool__", "__int__", "__float__", "__index__", "item", "tolist"):
            orig = getattr(torch.Tensor, name)

            def counted(self, *a, _orig=orig, **kw):
                n[0] += 1
                return _orig(self, *a, **kw)

            monkeypatch.setattr(torch.Tensor, name, counted)
        return n

    return start


@pytest.fixture
def disk_full_after(monkeypatch):
    """``disk_full_after(n)``: from now on, files that :mod:`dctps.atomic` writes (through
    ``os.fdopen``) take ``n`` bytes or characters, then fail with ENOSPC as a full disk would.
    Call ``monkeypatch.undo()`` (or leave the test) to end it."""
    import errno

    real_fdopen = os.fdopen

    class Full:
        def __init__(self, limit, *a, **kw):
            self.f, self.limit = real_fdopen(*a, **kw), limit

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def __getattr__(self, name):  # flush, fileno, tell, ...
            return getattr(self.f, name)

        def write(self, data):
            room = self.limit - self.f.tell()
            if len(data) > room:
                self.f.write(data[: max(room, 0)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self.f.write(data)

    def start(limit: int) -> None:
        monkeypatch.setattr(os, "fdopen", lambda *a, **kw: Full(limit, *a, **kw))

    return start


def interrupted_fit(cfg, out, monkeypatch, epoch: int, progress: bool = False) -> BaseException:
    """``fit`` interrupted by Ctrl-C at the start of ``epoch`` (the previous one checkpointed),
    the real epoch function back in place afterwards; returns the ``KeyboardInterrupt``."""
    from dctps.train import fit, loop

    real = loop.train_one_epoch

    def interrupt(*a, **kw):
        if kw["epoch"] == epoch:
            raise KeyboardInterrupt
        return real(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(loop, "train_one_epoch", interrupt)
        with pytest.raises(KeyboardInterrupt) as stopped:
            fit(cfg, out, progress=progress)
    return stopped.value


def train_with_ema(model, use_buffers: bool, steps: int = 3):
    """``steps`` SGD steps of ``model`` on random 3x8x8 images, each followed by an update of
    an EMA (``AveragedModel``, decay 0.9) made before the first step; returns the EMA."""
    import torch
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=use_buffers)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(2, 3, 8, 8)).sum().backward()
        opt.step()
        ema.update_parameters(model)
    return ema
