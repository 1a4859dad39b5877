"""Tests of dctps.data: loaders on tiny fake data sets in the real on-disk formats, split, augment,
Loader; plus one test on the real CIFAR-10 when it is available locally."""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

import dctps.data as D
from dctps.data import augment as A
from dctps.errors import DctpsError

# ---------------------------------------------------------------------------------------------
# Fake data sets in the official formats


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes str and bytes as Python-2 ``str`` (BINSTRING opcodes), like the official CIFAR files,
    so the fakes exercise the same decoding path (``encoding='latin1'``) as the real data."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2str(self, obj):
        b = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(b) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(b)]) + b)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(b)) + b)
        self.memoize(obj)

    dispatch[str] = _save_py2str
    dispatch[bytes] = _save_py2str


def _dump(obj, path: Path, py2: bool = True) -> None:
    with open(path, "wb") as f:
        if py2:
            _Py2Pickler(f, protocol=2).dump(obj)
        else:
            pickle.dump(obj, f, protocol=2)


def _cifar_rows(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def make_fake_cifar10(root: Path, n_per_batch: int = 6, n_test: int = 5) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-10 (5 train batches + test) under ``root``; return the raw arrays."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = "airplane automobile bird cat deer dog frog horse ship truck".split()
    _dump(
        {"label_names": names, "num_cases_per_batch": n_per_batch, "num_vis": 3072},
        folder / "batches.meta",
    )
    rows, labels = [], []
    for i in range(1, 6):
        data = _cifar_rows(rng, n_per_batch)
        lab = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        rows.append(data)
        labels += lab
        _dump(
            {
                "batch_label": f"training batch {i} of 5",
                "labels": lab,
                "data": data,
                "filenames": [f"img_{i}_{j}.png" for j in range(n_per_batch)],
            },
            folder / f"data_batch_{i}",
        )
    test = _cifar_rows(rng, n_test)
    test_labels = [int(v) for v in rng.integers(0, 10, n_test)]
    _dump(
        {
            "batch_label": "testing batch 1 of 1",
            "labels": test_labels,
            "data": test,
            "filenames": [f"t_{j}.png" for j in range(n_test)],
        },
        folder / "test_batch",
    )
    return {
        "train": np.concatenate(rows),
        "train_y": np.array(labels),
        "test": test,
        "test_y": np.array(test_labels),
    }


def make_fake_cifar100(root: Path, n_train: int = 20, n_test: int = 4) -> dict[str, np.ndarray]:
    """Write a tiny CIFAR-100 with Python-3 bytes keys (the other spelling the loader accepts)."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    _dump(
        {
            b"fine_label_names": [f"c{i}" for i in range(100)],
            b"coarse_label_names": [f"s{i}" for i in range(20)],
        },
        folder / "meta",
        py2=False,
    )
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        data = _cifar_rows(rng, n)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        _dump(
            {
                b"data": data,
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"filenames": [b"x.png"] * n,
                b"batch_label": split.encode(),
            },
            folder / split,
            py2=False,
        )
        out[split], out[split + "_y"] = data, np.array(fine)
    return out


TINY_WNIDS = ["n02000000", "n01000000"]  # deliberately unsorted: labels follow sorted order
TINY_COLOURS = {"n01000000": (220, 30, 30), "n02000000": (30, 30, 220)}


def make_fake_tiny(root: Path, n_train: int = 3) -> Path:
    """Write a 2-class Tiny ImageNet: solid-colour JPEGs (one grayscale), val annotations."""
    from PIL import Image

    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY_WNIDS) + "\n")
    for w in TINY_WNIDS:
        d = folder / "train" / w / "images"
        d.mkdir(parents=True)
        for j in range(n_train):
            Image.new("RGB", (64, 64), TINY_COLOURS[w]).save(d / f"{w}_{j}.JPEG", quality=95)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
    Image.new("L", (64, 64), 128).save(folder / "train" / TINY_WNIDS[0] / "images" / "gray.JPEG")
    ann = []
    for j, w in enumerate(["n01000000", "n02000000", "n02000000", "n01000000"]):
        Image.new("RGB", (64, 64), TINY_COLOURS[w]).save(
            folder / "val" / "images" / f"val_{j}.JPEG"
        )
        ann.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    return folder


# ---------------------------------------------------------------------------------------------
# Registry and loaders


def test_names_and_info():
    assert D.names() == ["cifar10", "cifar100", "tiny_imagenet", "digits"]
    c10, c100, ti = D.get_info("cifar10"), D.get_info("cifar100"), D.get_info("tiny_imagenet")
    assert c10.mean == (0.4914, 0.4822, 0.4465) and c10.std == (0.2023, 0.1994, 0.2010)
    assert c100.mean == (0.5071, 0.4867, 0.4408) and c100.std == (0.2675, 0.2565, 0.2761)
    # Tiny ImageNet: the constants of the authors' code (the supplement does not give them)
    assert ti.mean == (0.4802, 0.4481, 0.3975) and ti.std == (0.2770, 0.2691, 0.2821)
    assert (c10.num_classes, c100.num_classes, ti.num_classes) == (10, 100, 200)
    # Appendix E.5: 10% withheld on CIFAR; none on Tiny ImageNet, whose test labels are not public
    assert c10.val_fraction == c100.val_fraction == 0.1 and ti.val_fraction == 0.0
    assert c10.test_is_labelled and c100.test_is_labelled and not ti.test_is_labelled
    assert ti.image_size == 64 and c10.image_size == 32
    assert D.default_augment(c10) and D.default_augment(ti)
    assert not D.default_augment(D.get_info("digits"))
    with pytest.raises(DctpsError, match="Did you mean 'cifar10'"):
        D.build("cifar-10")


def test_cifar10_fake_layout(tmp_path):
    raw = make_fake_cifar10(tmp_path)
    s = D.build("cifar10", tmp_path, val_fraction=0.2, split_seed=3)
    n = raw["train"].shape[0]
    assert s.train_x.dtype == torch.uint8 and s.train_y.dtype == torch.int64
    assert s.train_x.shape == (n - round(0.2 * n), 3, 32, 32)
    assert s.val_x.shape == (round(0.2 * n), 3, 32, 32)
    assert s.test_x.shape == (5, 3, 32, 32) and s.test_y.dtype == torch.int64
    # Pixel layout: row = 1024 R, 1024 G, 1024 B, each row-major 32x32.
    c, h, w = 2, 5, 17
    assert s.test_x[3, c, h, w].item() == raw["test"][3, c * 1024 + h * 32 + w]
    assert s.test_y.tolist() == raw["test_y"].tolist()
    # Train + val are the training batches (in order 1..5), permuted by the seeded hold-out.
    tr, va = D.holdout(n, 0.2, 3)
    assert torch.equal(s.train_x[0, 1, 31, 0], torch.tensor(raw["train"][tr[0], 1024 + 31 * 32]))
    assert s.train_y.tolist() == raw["train_y"][tr.numpy()].tolist()
    assert s.val_y.tolist() == raw["train_y"][va.numpy()].tolist()


def test_cifar100_fake_and_env_root(tmp_path, monkeypatch):
    raw = make_fake_cifar100(tmp_path)
    monkeypatch.setenv("DCTPS_DATA", str(tmp_path))
    s = D.build("cifar100", val_fraction=0.25, subset=3)
    assert s.info.num_classes == 100
    assert s.train_x.shape == (3, 3, 32, 32) and s.val_x.shape == (3, 3, 32, 32)
    assert s.test_x.shape == (3, 3, 32, 32)
    assert s.test_y.tolist() == raw["test_y"][:3].tolist()
    assert s.test_x[1, 1, 0, 2].item() == raw["test"][1, 1024 + 2]


def test_tiny_imagenet_fake(tmp_path):
    make_fake_tiny(tmp_path)
    s = D.build("tiny_imagenet", tmp_path)
    assert s.info.num_classes == 2
    assert s.train_x.shape == (7, 3, 64, 64) and s.train_x.dtype == torch.uint8
    assert s.test_x.shape == (0, 3, 64, 64) and s.test_y.shape == (0,)
    # Val = official val split, labels from val_annotations.txt; class i = i-th sorted wnid.
    assert s.val_is_official and s.val_y.tolist() == [0, 1, 1, 0]
    colours = [TINY_COLOURS[w] for w in sorted(TINY_WNIDS)]
    for x, y in zip(s.val_x, s.val_y, strict=True):
        centre = x[:, 32, 32].float()
        assert torch.allclose(centre, torch.tensor(colours[y], dtype=torch.float32), atol=8)
    for x, y in zip(s.train_x, s.train_y, strict=True):
        centre = x[:, 32, 32].float()
        gray = torch.allclose(centre, torch.full((3,), 128.0), atol=4)
        assert gray or torch.allclose(centre, torch.tensor(colours[y], dtype=torch.float32), atol=8)
    assert int((s.train_y == 1).sum()) == 4  # n02000000: 3 colour + 1 grayscale image


def test_a_tiny_imagenet_image_of_another_size_is_refused_before_it_is_decoded(
    tmp_path, monkeypatch
):
    """A safety review: a 1.3 MB JPEG of 9000x9000 was decoded (1 GB, on each of up to 16
    threads) before its size was checked; the header's size is checked first."""
    from PIL import Image

    folder = make_fake_tiny(tmp_path)
    bad = folder / "val" / "images" / "val_2.JPEG"
    Image.new("RGB", (3000, 2000), (1, 2, 3)).save(bad)
    decoded = []
    real = Image.Image.convert

    def convert(self, *a, **kw):
        decoded.append(self.size)
        return real(self, *a, **kw)

    monkeypatch.setattr(Image.Image, "convert", convert)
    with pytest.raises(DctpsError, match=r"val_2\.JPEG has size 3000x2000, expected 64x64"):
        D.build("tiny_imagenet", tmp_path)
    assert (3000, 2000) not in decoded and decoded  # the others were decoded


def test_tiny_imagenet_protocol(tmp_path):
    """Appendix E.5: Tiny ImageNet trains on every training image and validates on its official
    val split (no test set); an explicit hold-out makes that split the test set instead. CIFAR
    keeps its 10% hold-out by default."""
    make_fake_tiny(tmp_path)
    paper = D.build("tiny_imagenet", tmp_path, split_seed=1)
    assert paper.val_is_official and len(paper.train_y) == 7 and len(paper.test_y) == 0
    assert torch.equal(D.build("tiny_imagenet", tmp_path, val_fraction=0.0, split_seed=1).train_x,
                       paper.train_x)  # fmt: skip
    held = D.build("tiny_imagenet", tmp_path, val_fraction=0.3, split_seed=1)
    assert not held.val_is_official
    # the same seeded permutation of the 7 training images: its first round(0.3 * 7) = 2 held out
    assert torch.equal(held.val_x, paper.train_x[:2]) and torch.equal(held.val_y, paper.train_y[:2])
    assert torch.equal(held.train_x, paper.train_x[2:])
    assert torch.equal(held.test_x, paper.val_x) and held.test_y.tolist() == [0, 1, 1, 0]
    # subset cuts the official val split like any validation set
    small = D.build("tiny_imagenet", tmp_path, subset=3)
    assert small.val_is_official and small.val_y.tolist() == [0, 1, 1]
    assert len(small.train_y) == 3 and len(small.test_y) == 0
    make_fake_cifar10(tmp_path)
    c10 = D.build("cifar10", tmp_path)
    n = len(c10.train_y) + len(c10.val_y)
    assert not c10.val_is_official and len(c10.val_y) == round(0.1 * n) and len(c10.test_y) == 5


def test_digits():
    s = D.build("digits", "/nonexistent/ignored")
    assert s.info.in_channels == 1 and s.info.image_size == 8 and s.info.num_classes == 10
    assert s.test_x.shape == (359, 1, 8, 8)
    assert s.train_x.shape == (1438 - 144, 1, 8, 8) and s.val_x.shape == (144, 1, 8, 8)
    assert s.train_x.dtype == torch.uint8 and int(s.train_x.max()) == 255
    # The hard-coded constants are the statistics of the non-test part (train + val).
    allx = torch.cat([s.train_x, s.val_x]).double() / 255
    assert abs(allx.mean().item() - s.info.mean[0]) < 1e-3
    assert abs(allx.std().item() - s.info.std[0]) < 1e-3
    # The test set does not depend on the split seed; train/val do.
    s2 = D.build("digits", split_seed=1)
    assert torch.equal(s.test_x, s2.test_x) and not torch.equal(s.val_y, s2.val_y)


def test_digits_are_read_from_sklearns_file_without_importing_it(monkeypatch):
    """The digits come from the CSV scikit-learn ships, not through its 0.9 s import: the same
    images and labels as ``sklearn.datasets.load_digits``, and the loader itself where the file
    is not where it was (another scikit-learn layout)."""
    import subprocess
    import sys

    from sklearn.datasets import load_digits

    from dctps.data import digits

    ref = load_digits()
    images, target = digits._shipped_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)
    code = ("import sys; from dctps.data.digits import _shipped_digits; _shipped_digits(); "
            "print('sklearn' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    images, target = digits._shipped_digits()
    assert np.array_equal(images, ref.images) and np.array_equal(target, ref.target)


# ---------------------------------------------------------------------------------------------
# Errors


def test_missing_root_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    with pytest.raises(DctpsError, match="nope"):
        D.build("cifar10", missing)
    monkeypatch.delenv("DCTPS_DATA", raising=False)
    with pytest.raises(DctpsError, match="DCTPS_DATA"):
        D.build("cifar10")
    with pytest.raises(DctpsError, match="cifar-10-batches-py"):
        D.build("cifar10", tmp_path)  # root exists, dataset folder does not
    with pytest.raises(DctpsError, match="tiny-imagenet-200"):
        D.build("tiny_imagenet", tmp_path)


@pytest.mark.parametrize("name,sub", [("cifar10", "cifar-10-batches-py"),
                                      ("tiny_imagenet", "tiny-imagenet-200")])  # fmt: skip
def test_a_root_one_level_too_deep_names_its_parent(name, sub, tmp_path):
    """`--data-root .../cifar-10-batches-py` said `.../cifar-10-batches-py/cifar-10-batches-py`
    was missing (a newcomer review); the refusal now names the folder to give."""
    make_fake_cifar10(tmp_path) if name == "cifar10" else make_fake_tiny(tmp_path)
    deep = tmp_path / sub
    hint = f"; {deep} is that folder itself: give the folder that holds it, {tmp_path}"
    for check in (D.check_root, D.build):
        with pytest.raises(DctpsError) as e:
            check(name, deep)
        assert str(e.value).endswith(hint), str(e.value)
    with pytest.raises(DctpsError) as e:  # another missing folder: no hint
        D.check_root(name, tmp_path / "elsewhere" / sub)
    assert "is that folder itself" not in str(e.value)
    assert len(D.build(name, tmp_path).train_y) > 0  # the parent is the root


def test_corrupt_cifar_files(tmp_path):
    make_fake_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    good = batch.read_bytes()
    batch.write_bytes(good[: len(good) // 2])
    with pytest.raises(DctpsError, match="data_batch_3.*truncated or corrupt"):
        D.build("cifar10", tmp_path)
    _dump({"data": np.zeros((2, 3072), np.uint8)}, batch)
    with pytest.raises(DctpsError, match="data_batch_3.*lacks key"):
        D.build("cifar10", tmp_path)
    _dump({"data": np.zeros((2, 1024), np.uint8), "labels": [0, 1]}, batch)
    with pytest.raises(DctpsError, match=r"data_batch_3.*\(2, 1024\)"):
        D.build("cifar10", tmp_path)
    _dump({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}, batch)
    with pytest.raises(DctpsError, match="data_batch_3.*'labels'"):
        D.build("cifar10", tmp_path)
    for labels, kind in (([0.7, 1.9], "float64"), ([True, False], "bool")):
        # a cast truncated 1.9 to class 1 without a word
        _dump({"data": np.zeros((2, 3072), np.uint8), "labels": labels}, batch)
        needle = f"data_batch_3.*'labels' is not a list of integers.*{kind}"
        with pytest.raises(DctpsError, match=needle):
            D.build("cifar10", tmp_path)
    batch.unlink()
    with pytest.raises(DctpsError, match="missing file .*data_batch_3"):
        D.build("cifar10", tmp_path)
    batch.mkdir()  # not "missing" (a fuzzing review): it is there, as a folder
    with pytest.raises(DctpsError, match="data_batch_3 is a folder, not a file; expected"):
        D.build("cifar10", tmp_path)
    batch.rmdir()
    os.mkfifo(batch)  # opened, it would wait for a writer forever
    with pytest.raises(DctpsError, match="data_batch_3 is not a regular file; expected"):
        D.build("cifar10", tmp_path)


def test_tiny_imagenet_errors(tmp_path):
    folder = make_fake_tiny(tmp_path)
    img = folder / "val" / "images" / "val_2.JPEG"
    good = img.read_bytes()
    img.write_bytes(b"not a jpeg")
    with pytest.raises(DctpsError, match="val_2.JPEG"):
        D.build("tiny_imagenet", tmp_path)
    img.write_bytes(good)
    ann = folder / "val" / "val_annotations.txt"
    good_ann = ann.read_bytes()
    first = good_ann.decode().splitlines()[0]
    ann.write_text(good_ann.decode() + first + "\n")  # an image twice: counted twice
    with pytest.raises(DctpsError, match=r"annotations\.txt:\d+: 'val_0\.JPEG' is listed again"):
        D.build("tiny_imagenet", tmp_path)
    lines = good_ann.decode().splitlines(keepends=True)
    ann.write_text("".join(lines[:-1]))  # cut off at a line: the split shrank without a word
    with pytest.raises(DctpsError, match=r"annotations\.txt lists 3 images, but .*images holds 4"):
        D.build("tiny_imagenet", tmp_path)
    escape = (
        "../../train/n01000000/images/"
        + next((folder / "train" / "n01000000" / "images").iterdir()).name
    )
    ann.write_text("".join(lines) + f"{escape}\tn01000000\n")  # a training image as validation
    with pytest.raises(
        DctpsError, match=r"annotations\.txt:5: '\.\./\.\./train/.* is not a file name"
    ):
        D.build("tiny_imagenet", tmp_path)
    ann.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(DctpsError, match=r"cannot read .*val_annotations\.txt as text"):
        D.build("tiny_imagenet", tmp_path)
    ann.write_bytes(good_ann)
    wnids = folder / "wnids.txt"
    good_wnids = wnids.read_bytes()
    wnids.write_bytes(b"\xff" + good_wnids)
    with pytest.raises(DctpsError, match=r"cannot read .*wnids\.txt as text.*expected layout"):
        D.build("tiny_imagenet", tmp_path)
    wnids.write_bytes(good_wnids)
    cls = folder / "train" / "n01000000"
    cls.rename(folder / "train" / "moved")
    with pytest.raises(DctpsError, match=r"missing class folder .*n01000000.*wnids\.txt"):
        D.build("tiny_imagenet", tmp_path)
    with pytest.raises(DctpsError) as missing:  # no data at all: the layout is spelled out
        (tmp_path / "empty").mkdir()
        D.build("tiny_imagenet", tmp_path / "empty")
    layout = str(missing.value)
    assert "{wnids.txt, train/" in layout and "val_annotations.txt} (one wnid" in layout
    assert layout.count("{") == layout.count("}")


# ---------------------------------------------------------------------------------------------
# Split


def test_loader_refuses_labels_that_are_not_classes():
    """The Loader cast float labels to int64 (1.9 became class 1) and took labels out of range
    (10 and -3 for 10 classes), which cross-entropy then failed on or read as other classes."""
    info = D.get_info("cifar10")
    x = torch.zeros(4, 3, 32, 32, dtype=torch.uint8)
    for y, match in (
        (
            torch.tensor([0.2, 1.9, 2.5, 3.7]),
            r"y must hold integer class labels, got torch\.float32",
        ),
        (torch.tensor([True, False, True, True]), r"integer class labels, got torch\.bool"),
        (torch.tensor([0, 1, 10, 2]), r"labels must be in \[0, 10\) for cifar10 .*got 10"),
        (torch.tensor([0, 1, -3, 2]), r"labels must be in \[0, 10\) .*got -3"),
    ):
        with pytest.raises(DctpsError, match=match):
            D.Loader(x, y, 2, shuffle=False, augment=False, info=info)
    ok = D.Loader(x, torch.tensor([0, 9, 3, 1], dtype=torch.uint8), 2, shuffle=False,
                  augment=False, info=info)  # fmt: skip
    assert ok.y.dtype == torch.int64 and ok.y.tolist() == [0, 9, 3, 1]


def test_holdout():
    tr, va = D.holdout(1000, 0.1, 0)
    assert tr.dtype == torch.int64 and len(va) == 100 and len(tr) == 900
    assert sorted(torch.cat([tr, va]).tolist()) == list(range(1000))  # disjoint and covering
    tr2, va2 = D.holdout(1000, 0.1, 0)
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    _, va3 = D.holdout(1000, 0.1, 1)
    assert not torch.equal(va, va3)
    g = torch.Generator().manual_seed(5)
    assert torch.equal(D.holdout(50, 0.3, 5)[1], torch.randperm(50, generator=g)[:15])
    assert len(D.holdout(7, 0.0, 0)[1]) == 0
    for bad in (1.0, -0.1, float("nan")):
        with pytest.raises(DctpsError, match="val_fraction"):
            D.holdout(10, bad, 0)


# ---------------------------------------------------------------------------------------------
# Augmentation


def _crop_reference(x, size, padding, offsets):
    """Slow per-image loop: zero-pad, then slice the window at each offset."""
    n, c, h, w = x.shape
    padded = torch.zeros(n, c, h + 2 * padding, w + 2 * padding, dtype=x.dtype)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    return torch.stack(
        [padded[i, :, t : t + size, l : l + size] for i, (t, l) in enumerate(offsets.tolist())]
    )


def test_random_crop_is_a_shifted_window():
    n, c, h, w, p = 300, 2, 6, 6, 2
    # Pixel values are unique and non-zero, so each crop identifies its window uniquely.
    x = (torch.arange(c * h * w, dtype=torch.int32) + 1).view(1, c, h, w).repeat(n, 1, 1, 1)
    out = A.random_crop(x, h, p, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    windows = {}
    for t in range(2 * p + 1):
        for l in range(2 * p + 1):
            ref = _crop_reference(x[:1], h, p, torch.tensor([[t, l]]))[0]
            windows[(t, l)] = ref
    seen = set()
    for img in out:
        match = [k for k, ref in windows.items() if torch.equal(img, ref)]
        assert len(match) == 1, "output is not a window of the padded input"
        seen.add(match[0])
    assert len(seen) == (2 * p + 1) ** 2  # every offset in [0, 2p]^2 occurs
    # Explicit offsets against the slow loop, on a random uint8 batch and a smaller crop size.
    xr = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    offs = torch.randint(0, 8 + 2 * 3 - 5 + 1, (20, 2))
    assert torch.equal(A.crop_with_offsets(xr, 5, 3, offs), _crop_reference(xr, 5, 3, offs))
    # a size beyond the padded image, or a negative padding: torch's "random_ expects 'from'
    # to be less than 'to'" before
    with pytest.raises(DctpsError, match=r"crop size \(48, 48\) with padding 4 "):
        A.random_crop(xr, 48, 4)
    with pytest.raises(DctpsError, match=r"padding must be a non-negative integer, got -1"):
        A.random_crop(xr, 8, -1)
    # numpy integers, as before these checks (a diff review)
    np_off = A.crop_with_offsets(xr, np.array([5, 5]), np.int64(3), offs.to(torch.int32))
    assert torch.equal(np_off, _crop_reference(xr, 5, 3, offs))


def test_random_hflip():
    x = torch.randint(0, 256, (2000, 3, 4, 5), dtype=torch.uint8)
    out = A.random_hflip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped ^ same).all())  # each image is either flipped or untouched
    assert 900 < int(flipped.sum()) < 1100  # ~half (binomial sd ~22)


def test_normalize():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.1, 0.5, 0.9), (0.2, 0.3, 0.4)
    out = A.normalize(x, mean, std)
    assert out.dtype == torch.float32
    for ch in range(3):
        ref = (x[:, ch].double() / 255 - mean[ch]) / std[ch]
        assert torch.allclose(out[:, ch].double(), ref, atol=1e-5)
    assert torch.allclose(A.normalize(x[0], mean, std), out[0])
    with pytest.raises(DctpsError, match="expected uint8 pixels in 0..255, got torch.float32"):
        A.normalize(x.float() / 255, mean, std)  # would be divided by 255 twice


def test_normalize_builds_its_constants_once_per_device(monkeypatch):
    """On a GPU each ``torch.tensor(mean, device=cuda)`` is a host-to-device copy that waits for
    the queued step: a loader's batches must reuse one pair of constants."""
    A._channel_constants.cache_clear()
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    outs = [A.normalize(x, [0.1, 0.5, 0.9], (0.2, 0.3, 0.4)) for _ in range(5)]
    assert len(made) == 2  # mean and std, once (a list or a tuple: the same constants)
    assert all(torch.equal(o, outs[0]) for o in outs)
    # per device: the constants live where the batch does ('meta' stands in for a GPU)
    out = A.normalize(x.to("meta"), [0.1, 0.5, 0.9], (0.2, 0.3, 0.4))
    assert out.device.type == "meta" and len(made) == 4


# ---------------------------------------------------------------------------------------------
# Loader


def _loader_data(n=37):
    x = torch.randint(
        0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)
    )
    y = torch.arange(n)  # labels = sample ids, to track coverage
    info = D.DatasetInfo(
        "fake", n, 3, 8, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), True, crop_padding=2, hflip=True
    )
    return x, y, info


def _epoch(loader):
    return [(xb.clone(), yb.clone()) for xb, yb in loader]


def test_loader_covers_each_sample_once():
    x, y, info = _loader_data()
    L = D.Loader(
        x, y, 8, shuffle=True, augment=False, info=info, generator=torch.Generator().manual_seed(0)
    )
    batches = _epoch(L)
    assert len(L) == len(batches) == 5 and batches[-1][1].shape == (5,)
    ids = torch.cat([b[1] for b in batches])
    assert sorted(ids.tolist()) == list(range(37)) and ids.tolist() != list(range(37))
    for xb, yb in batches:  # without augmentation a batch is just the normalised images
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64
        assert torch.allclose(xb, A.normalize(x[yb], info.mean, info.std))
    L2 = D.Loader(
        x,
        y,
        8,
        shuffle=True,
        augment=False,
        info=info,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(L2) == 4 and all(b[1].shape == (8,) for b in _epoch(L2))
    plain = D.Loader(x, y, 10, shuffle=False, augment=True, info=info)
    assert torch.cat([b[1] for b in _epoch(plain)]).tolist() == list(range(37))


def test_loader_reproducible_and_resumable():
    x, y, info = _loader_data()

    def make(seed):
        return D.Loader(
            x,
            y,
            8,
            shuffle=True,
            augment=True,
            info=info,
            generator=torch.Generator().manual_seed(seed),
        )

    a, b = make(0), make(0)
    e1a, e1b = _epoch(a), _epoch(b)
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e1a, e1b, strict=True)
    )
    assert not all(torch.equal(p[1], q[1]) for p, q in zip(e1a, _epoch(make(1)), strict=True))
    # Augmentation is on: the batch differs from the plain normalised images.
    assert not torch.allclose(e1a[0][0], A.normalize(x[e1a[0][1]], info.mean, info.std))
    state = a.state_dict()
    assert state["epoch"] == 1
    e2 = _epoch(a)
    assert not torch.equal(e2[0][1], e1a[0][1])
    c = make(123)
    c.load_state_dict(state)
    e2c = _epoch(c)
    assert all(
        torch.equal(p[0], q[0]) and torch.equal(p[1], q[1]) for p, q in zip(e2, e2c, strict=True)
    )
    assert c.epoch == 2
    # A state taken mid-epoch replays that epoch from its first batch.
    d = make(0)
    it = iter(d)
    next(it)
    mid = d.state_dict()
    assert mid["epoch"] == 0
    e = make(7)
    e.load_state_dict(mid)
    assert all(torch.equal(p[0], q[0]) for p, q in zip(e1a, _epoch(e), strict=True))


def test_loader_shards():
    x, y, info = _loader_data()
    full = _epoch(
        D.Loader(
            x,
            y,
            4,
            shuffle=True,
            augment=True,
            info=info,
            generator=torch.Generator().manual_seed(0),
        )
    )
    full_x = {int(i): xi for xb, yb in full for xi, i in zip(xb, yb, strict=True)}
    ws, shards = 3, []
    for r in range(ws):
        L = D.Loader(
            x,
            y,
            4,
            shuffle=True,
            augment=True,
            info=info,
            rank=r,
            world_size=ws,
            generator=torch.Generator().manual_seed(0),
        )
        shards.append(_epoch(L))
    ids = [torch.cat([b[1] for b in s]).tolist() for s in shards]
    assert sorted(sum(ids, [])) == list(range(37))  # disjoint and covering
    # Same permutation on every rank: rank r holds positions r, r+ws, ... of the full order.
    order = torch.cat([b[1] for b in full]).tolist()
    for r in range(ws):
        assert ids[r] == order[r::ws]
    # A sample's augmentation depends only on its epoch position, not on the sharding.
    for s in shards:
        for xb, yb in s:
            for xi, i in zip(xb, yb, strict=True):
                assert torch.equal(xi, full_x[int(i)])
    # drop_last: equal batch counts on every rank (needed for DDP gradient all-reduce).
    lens = [
        len(
            D.Loader(
                x,
                y,
                4,
                shuffle=True,
                augment=False,
                info=info,
                rank=r,
                world_size=ws,
                drop_last=True,
            )
        )
        for r in range(ws)
    ]
    assert lens == [3, 3, 3]
    with pytest.raises(DctpsError, match="rank"):
        D.Loader(x, y, 4, shuffle=True, augment=False, info=info, rank=3, world_size=3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loader_on_cuda_matches_cpu():
    x, y, info = _loader_data()
    out = {}
    for dev in ("cpu", "cuda"):
        L = D.Loader(
            x,
            y,
            8,
            shuffle=True,
            augment=True,
            info=info,
            device=dev,
            generator=torch.Generator().manual_seed(0),
        )
        out[dev] = _epoch(L)
    for (xc, yc), (xg, yg) in zip(out["cpu"], out["cuda"], strict=True):
        assert xg.is_cuda and yg.is_cuda
        assert torch.equal(yc, yg.cpu()) and torch.allclose(xc, xg.cpu(), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Real CIFAR-10 (only where it is available locally)


def _real_data_root() -> Path | None:
    candidates = []
    if os.environ.get("DCTPS_DATA"):
        candidates.append(Path(os.environ["DCTPS_DATA"]))
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for c in candidates:
        if (c / "cifar-10-batches-py" / "data_batch_1").is_file():
            return c
    return None


def test_real_cifar10():
    root = _real_data_root()
    if root is None:
        pytest.skip(
            "real CIFAR-10 not found in $DCTPS_DATA or ../shared/data (cifar-10-batches-py)"
        )
    s = D.build("cifar10", root)
    assert len(s.train_y) == 45_000 and len(s.val_y) == 5_000 and len(s.test_y) == 10_000
    assert s.train_x.shape[1:] == (3, 32, 32)
    mean = (s.train_x.float() / 255).mean(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.tensor(s.info.mean), atol=0.01)
    assert torch.bincount(s.test_y, minlength=10).tolist() == [1000] * 10


def test_a_new_data_set_is_one_registry_entry(tmp_path, monkeypatch):
    """Adding a data set needed a branch in build() and an entry in check_root's own table; one
    without a branch was loaded as Tiny ImageNet, and check_root raised a bare KeyError."""
    x = torch.randint(0, 256, (20, 1, 4, 4), dtype=torch.uint8)
    y = torch.arange(20) % 3
    seen = []

    def load(root):
        seen.append(root)
        if not (root / "toy").is_dir():
            raise D.DctpsError("unreachable: check_root/build check the folder first")
        return x, y, x[:5], y[:5]

    toy = D.DatasetInfo(
        "toy", 3, 1, 4, (0.5,), (0.25,), True, source=D.Source(load, "toy", "<root>/toy/...")
    )
    monkeypatch.setitem(D._INFOS, "toy", toy)
    with pytest.raises(D.DctpsError, match=r"missing folder .*toy; expected layout: <root>/toy"):
        D.check_root("toy", tmp_path)
    (tmp_path / "toy").mkdir()
    D.check_root("toy", tmp_path)
    splits = D.build("toy", tmp_path, val_fraction=0.25)
    assert seen == [tmp_path] and splits.info is toy
    assert splits.train_x.shape[0] == 15 and splits.val_x.shape[0] == 5
    assert torch.equal(splits.test_x, x[:5])

    monkeypatch.setitem(D._INFOS, "bare", D.DatasetInfo("bare", 3, 1, 4, (0.5,), (0.25,), True))
    for call in (lambda: D.build("bare", tmp_path), lambda: D.check_root("bare", tmp_path)):
        with pytest.raises(D.DctpsError, match="data set 'bare' has no Source"):
            call()


def test_data_set_infos_and_splits_pickle():
    """DatasetInfo holds its Source: a lambda there made digits (and its Splits) unpicklable."""
    import pickle as pkl

    for name in D.names():
        info = D.get_info(name)
        assert pkl.loads(pkl.dumps(info)) == info
    splits = D.build("digits", subset=8)
    again = pkl.loads(pkl.dumps(splits))
    assert again.info == splits.info and torch.equal(again.train_x, splits.train_x)


def test_fingerprint_tells_data_apart_and_not_copies():
    """`Splits.fingerprint` (checked when a run resumes): equal for the same data loaded twice,
    different for another hold-out, another subset, or one changed label or pixel."""
    import dataclasses

    a, b = D.build("digits"), D.build("digits")
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    assert D.build("digits", split_seed=1).fingerprint() != a.fingerprint()
    assert D.build("digits", subset=500).fingerprint() != a.fingerprint()
    y = a.train_y.clone()
    y[7] = (y[7] + 1) % 10
    assert dataclasses.replace(a, train_y=y).fingerprint() != a.fingerprint()
    x = a.val_x.clone()
    x[0, 0, 0, 0] ^= 1  # the first validation image is among the sampled ones
    assert dataclasses.replace(a, val_x=x).fingerprint() != a.fingerprint()
    before = torch.get_default_dtype()
    try:  # positions picked with integers: not by the default float dtype's rounding
        torch.set_default_dtype(torch.float64)
        assert a.fingerprint() == b.fingerprint()
        shade = (torch.arange(10000) % 251).to(torch.uint8)  # each image tells its index
        big = dataclasses.replace(a, test_x=shade.view(-1, 1, 1, 1).expand(-1, 1, 8, 8),
                                  test_y=torch.zeros(10000, dtype=torch.int64))  # fmt: skip
        f64 = big.fingerprint()
        torch.set_default_dtype(torch.float32)
        assert big.fingerprint() == f64
    finally:
        torch.set_default_dtype(before)


def test_fingerprint_samples_images_across_each_split_and_hashes_name_and_shapes():
    """A mutation audit: only the first validation image was checked, so sampling one image
    per split (or missing the last) passed. The fingerprint samples evenly to the last image,
    and hashes the data set's name and the arrays' shapes."""
    import dataclasses

    a = D.build("digits")
    n = a.train_x.shape[0]
    for i in (n - 1, (n - 1) * 32 // 63):  # the last image, one in the middle of the sample
        x = a.train_x.clone()
        x[i] ^= 1
        assert dataclasses.replace(a, train_x=x).fingerprint() != a.fingerprint(), i
    renamed = dataclasses.replace(a, info=dataclasses.replace(a.info, name="other"))
    assert renamed.fingerprint() != a.fingerprint()
    flat = dataclasses.replace(a, train_x=a.train_x.reshape(n, -1, 1, 1))
    assert flat.fingerprint() != a.fingerprint()


def test_a_cifar_pickle_that_encodes_with_another_codec_is_refused(tmp_path):
    """A safety review: `_codecs.encode` was allowed with any codec, and `hex` doubles its
    input: 30 nested calls in a 395-byte batches.meta asked for 1.8 GB. Only latin-1 (what a
    protocol-2 pickle writes bytes with) is taken; the official layout still loads."""
    import struct

    def text(t: str) -> bytes:
        return b"X" + struct.pack("<I", len(t)) + t.encode()

    inner = b"C\x01A"
    for _ in range(16):  # encode(inner, 'hex'), nested: 64 KB if a regression ran it
        inner = b"h\x00" + inner + text("hex") + b"\x86R"
    bomb = b"\x80\x02c_codecs\nencode\nq\x00}" + text("data") + inner + b"s."
    assert len(bomb) < 500
    make_fake_cifar10(tmp_path)
    meta = tmp_path / "cifar-10-batches-py" / "batches.meta"
    with open(meta, "rb") as f:
        obj = pickle.load(f, encoding="latin1")
    meta.write_bytes(bomb)
    with pytest.raises(DctpsError, match=r"batches\.meta \(UnpicklingError: it encodes with "
                                         r"'hex'"):  # fmt: skip
        D.build("cifar10", tmp_path)
    # Python 3 writes bytes into a protocol-2 pickle as _codecs.encode(text, 'latin1')
    blob = pickle.dumps({**obj, "raw": b"\xff\x00"}, protocol=2)
    assert b"_codecs" in blob and b"latin1" in blob
    meta.write_bytes(blob)
    assert D.build("cifar10", tmp_path, val_fraction=0).train_x.shape[0] == 30


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    """CIFAR's pickles were read with `pickle.load`, which calls whatever function a file
    names: a data folder from elsewhere could run code when loaded. Only numpy arrays and
    plain values are built; the official layout written by Python 2 and 3 (protocols 2-5)
    still loads."""
    raw = make_fake_cifar10(tmp_path / "ok")
    assert D.build("cifar10", tmp_path / "ok", val_fraction=0).train_x.shape[0] == 30
    for proto in (3, 4, 5):  # the same arrays written by other protocols
        p = tmp_path / "ok" / "cifar-10-batches-py" / "test_batch"
        with open(p, "rb") as f:
            obj = pickle.load(f, encoding="latin1")
        with open(p, "wb") as f:
            pickle.dump(obj, f, protocol=proto)
        got = D.build("cifar10", tmp_path / "ok", val_fraction=0).test_x
        assert torch.equal(got.reshape(got.shape[0], -1), torch.from_numpy(raw["test"])), proto

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    make_fake_cifar10(tmp_path / "bad")
    with open(tmp_path / "bad" / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f, protocol=2)
    with pytest.raises(DctpsError, match=r"data_batch_3 \(UnpicklingError: it asks for "
                       r"(posix|os|nt)\.system; a CIFAR file holds only numpy arrays"):  # fmt: skip
        D.build("cifar10", tmp_path / "bad")
    assert not (tmp_path / "pwned").exists()

    # numpy's own globals, called as numpy never does: an array of any shape from a few bytes
    # (a fuzzing review: a 60 KB folder loaded as 200,000 images of garbage)
    from numpy import ndarray

    reconstruct = pickle.loads(pickle.dumps(np.zeros(1))).__reduce__()[0]

    class Hollow:
        def __reduce__(self):
            return (reconstruct, (ndarray, (4000, 3072), "u1"))

    class Direct:
        def __reduce__(self):
            return (ndarray, ((4000, 3072),))

    for evil, said in ((Hollow(), r"builds an array of shape \(4000, 3072\) without its data"),
                       (Direct(), r"object is not callable|builds an array")):  # fmt: skip
        with open(tmp_path / "bad" / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
            pickle.dump({"data": evil, "labels": [0] * 4000}, f, protocol=2)
        with pytest.raises(DctpsError, match=said):
            D.build("cifar10", tmp_path / "bad")
