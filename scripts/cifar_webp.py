"""Pack a seeded, class-balanced subset of CIFAR-10 into lossless WebP, and unpack it again.

Why: a lent GPU machine receives only the repository's working tree (at most 64 MiB), and the
raw CIFAR-10 pickles are 180 MB. Lossless WebP stores a 32x32 RGB image in about 58% of its
3,072 raw bytes, so about 24k training images plus the whole 10k test set fit. Every image is
decoded again while packing and compared with the original, so the pack is exact (pixels and
labels); only the subset and the order differ from the source.

    python scripts/cifar_webp.py pack ../shared/data .devdata/cifar10_24k.npz --train 24000
    python scripts/cifar_webp.py unpack .devdata/cifar10_24k.npz /tmp/data

``unpack`` writes the official pickle layout (``cifar-10-batches-py/data_batch_1..5``,
``test_batch``, ``batches.meta``), which ``dctps`` reads with ``--data-root``.
"""

from __future__ import annotations

import argparse
import io
import pickle
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LABEL_NAMES = "airplane automobile bird cat deer dog frog horse ship truck".split()


def balanced_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` examples: ``n // k`` per class, one more for the first ``n % k``.

    ``k`` is the number of classes; within each class the examples are a uniform draw from
    ``numpy.random.default_rng(seed)``.
    """
    classes = np.unique(y)
    if n > len(y):
        raise SystemExit(f"asked for {n} examples but the split has only {len(y)}")
    rng = np.random.default_rng(seed)
    per = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    picked = []
    for c, k in zip(classes, per, strict=True):
        idx = np.flatnonzero(y == c)
        if k > len(idx):
            raise SystemExit(f"class {c} has {len(idx)} examples, {k} asked for")
        picked.append(rng.choice(idx, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``x`` uint8 ``(N, 3072)`` rows (CIFAR's R, G, B planes) -> (blob, offsets) of lossless WebP.

    Raises if any image does not decode back to the same bytes.
    """
    chunks, offsets = [], [0]
    for row in x:
        hwc = row.reshape(3, 32, 32).transpose(1, 2, 0)
        buf = io.BytesIO()
        Image.fromarray(hwc).save(buf, format="WEBP", lossless=True, quality=100, method=6)
        data = buf.getvalue()
        if not np.array_equal(decode_one(data), row):
            raise SystemExit("lossless WebP did not round-trip an image; is Pillow's WebP lossy?")
        chunks.append(data)
        offsets.append(offsets[-1] + len(data))
    return np.frombuffer(b"".join(chunks), dtype=np.uint8), np.asarray(offsets, dtype=np.int64)


def decode_one(data: bytes) -> np.ndarray:
    """One WebP image -> a CIFAR row, uint8 ``(3072,)`` (R plane, G plane, B plane)."""
    hwc = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)).reshape(3072)


def decode(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode`: uint8 ``(N, 3072)``."""
    raw = blob.tobytes()
    rows = [decode_one(raw[a:b]) for a, b in zip(offsets[:-1], offsets[1:], strict=True)]
    return np.stack(rows) if rows else np.zeros((0, 3072), np.uint8)


def _load_split(root: Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for name in names:
        with open(root / "cifar-10-batches-py" / name, "rb") as f:
            d = pickle.load(f, encoding="latin1")
        xs.append(np.asarray(d["data"], dtype=np.uint8))
        ys.append(np.asarray(d["labels"], dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def pack(src: Path, out: Path, n_train: int, n_test: int | None, seed: int) -> None:
    """Write ``out`` (.npz): WebP blobs, offsets and labels of the train and test subsets."""
    arrays = {}
    splits = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    for split, names in splits.items():
        x, y = _load_split(src, names)
        n = n_train if split == "train" else (n_test if n_test is not None else len(y))
        idx = balanced_subset(y, n, seed + (split == "test"))
        blob, offsets = encode(x[idx])
        arrays |= {f"{split}_blob": blob, f"{split}_offsets": offsets, f"{split}_y": y[idx]}
        print(f"{split}: {len(idx)} images, {blob.nbytes / 2**20:.1f} MiB")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out, **arrays)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")


def unpack(pack_file: Path, dest: Path) -> None:
    """Write the official CIFAR-10 pickle layout under ``dest`` from a pack."""
    z = np.load(pack_file)
    folder = dest / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": LABEL_NAMES, "num_vis": 3072}, f, protocol=2)
    x = decode(z["train_blob"], z["train_offsets"])
    y = z["train_y"]
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        with open(folder / f"data_batch_{i}", "wb") as f:
            pickle.dump({"data": x[part], "labels": [int(v) for v in y[part]]}, f, protocol=2)
    xt = decode(z["test_blob"], z["test_offsets"])
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": xt, "labels": [int(v) for v in z["test_y"]]}, f, protocol=2)
    print(f"unpacked {len(y)} train and {len(xt)} test images to {folder}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="CIFAR-10 root -> .npz of lossless WebP")
    pk.add_argument("src", type=Path, help="folder holding cifar-10-batches-py/")
    pk.add_argument("out", type=Path)
    pk.add_argument("--train", type=int, default=24000, help="training images (class-balanced)")
    pk.add_argument("--test", type=int, default=None, help="test images (default: all)")
    pk.add_argument("--seed", type=int, default=0)
    up = sub.add_parser("unpack", help=".npz -> CIFAR-10 pickle layout")
    up.add_argument("pack", type=Path)
    up.add_argument("dest", type=Path, help="data root to create")
    a = p.parse_args(argv)
    if a.cmd == "pack":
        pack(a.src, a.out, a.train, a.test, a.seed)
    else:
        unpack(a.pack, a.dest)


if __name__ == "__main__":
    main(sys.argv[1:])
