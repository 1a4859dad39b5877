"""Training throughput: images/s of one epoch, dense vs DCTpS at 0.1%, and the data-handling share.

Random uint8 images of CIFAR-10 shape go through the real pipeline (``dctps.data.Loader`` with the
CIFAR crop+flip augmentation and normalisation, ``dctps.train.train_one_epoch`` with Adam and
the recipe's batch size). On CUDA the DCTpS model rebuilds its weights batched
(``dctps.batch_rebuild``), as ``dctps train`` does there. "Data share" is the time of one pass of
the same loader alone (gather, crop, flip, normalise; device-synchronised) divided by the training
epoch's time.
Targets: DCTpS >= 0.9x dense images/s; data share < 10%.

ResNet18 on a CPU uses a subset (default 512 images); LeNet-5 a larger one (default 10,000).

    python benchmarks/train_throughput.py [--device cpu|cuda] [--lenet-images N]
        [--resnet-images N] [--repeats R] [--threads T]
"""

from __future__ import annotations

import argparse
import time

import torch

from dctps import batch_rebuild, models, sparsify
from dctps import data as D
from dctps.bench import bench_device, positive_int
from dctps.errors import DctpsError, set_threads
from dctps.train.config import OptimConfig, RunConfig, SparsityConfig
from dctps.train.loop import train_one_epoch
from dctps.train.setup import make_optimizer


def _setup(model_name: str, method: str, n: int, batch: int, device: str):
    """``(model, optimizer, loader)`` of one side, warmed up by a short epoch (allocator,
    kernels, ``D`` matrices)."""
    info = D.get_info("cifar10")
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    torch.manual_seed(0)
    model = models.build(model_name)
    if method == "dctps":
        sparsify(model, 0.001, "epl", seed=0)
    model.to(device)
    if method == "dctps" and device.startswith("cuda"):
        batch_rebuild(model)  # as `dctps train` does on CUDA (--batched-rebuild auto)
    cfg = RunConfig(sparsity=SparsityConfig("dense"), optim=OptimConfig(batch_size=batch)).resolve()
    opt = make_optimizer(model, cfg.optim)
    loader = D.Loader(
        x,
        y,
        batch,
        shuffle=True,
        augment=True,
        info=info,
        generator=torch.Generator().manual_seed(1),
        device=device,
    )
    warm = D.Loader(
        x[: 2 * batch], y[: 2 * batch], batch, shuffle=True, augment=True, info=info, device=device
    )
    train_one_epoch(model, warm, opt, epoch=0)
    return model, opt, loader


def compare(model_name: str, n: int, batch: int, device: str, repeats: int):
    """Best-of-``repeats`` ``{method: (images/s, data share)}`` of one training epoch on ``n``
    random images, dense and DCTpS epochs alternating (run one side's epochs after the other's,
    a drift of the machine over the run biased the ratio)."""
    sides = {m: _setup(model_name, m, n, batch, device) for m in ("dense", "dctps")}
    best: dict[str, tuple[float, float]] = {}
    for _ in range(repeats):
        for m, (model, opt, loader) in sides.items():
            st = train_one_epoch(model, loader, opt, epoch=1)
            assert st.failed is None, st.failed
            r = (st.images_per_second, st.seconds)
            best[m] = r if m not in best or r[0] > best[m][0] else best[m]
    # Data handling: one pass of the same loader alone (gather, crop, flip, normalise), timed
    # with a device sync, as a share of the training epoch. On a CPU this is the time the loop
    # waits for batches; on a GPU it is the work the loader adds to the stream.
    data_s = {m: min(_loader_pass(sides[m][2], device) for _ in range(repeats)) for m in sides}
    return {m: (best[m][0], data_s[m] / best[m][1]) for m in sides}


def _loader_pass(loader, device: str) -> float:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _batch in loader:
        pass
    sync()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N; default: cuda if torch has CUDA, else cpu",
    )
    ap.add_argument(
        "--lenet-images",
        type=positive_int,
        default=10_000,
        help="random CIFAR-shaped images in LeNet-5's epoch; default %(default)s",
    )
    ap.add_argument(
        "--resnet-images",
        type=positive_int,
        default=None,
        help="random CIFAR-shaped images in ResNet18's epoch; default: 512 on CPU, 45,000 on CUDA",
    )
    ap.add_argument(
        "--repeats",
        type=positive_int,
        default=2,
        help="timed epochs (and loader passes) per model, the best kept; default %(default)s",
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads; default 0: torch's default"
    )
    a = ap.parse_args()
    try:  # a CUDA device on a CPU-only torch: one line, not an assertion's traceback
        bench_device(a.device)
        set_threads(a.threads)  # a negative count: one line, not torch's traceback
    except DctpsError as e:
        raise SystemExit(f"error: {e}") from None
    resnet_n = a.resnet_images or (45_000 if a.device.startswith("cuda") else 512)
    dev_name = torch.cuda.get_device_name() if a.device.startswith("cuda") else "CPU"
    print(
        f"device {a.device} ({dev_name}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, best of {a.repeats} epochs (dense and DCTpS "
        "alternating)"
    )
    print(
        f"{'model':10} {'images':>7} {'batch':>5} {'dense img/s':>12} {'dctps img/s':>12} "
        f"{'ratio':>6} {'data% dense':>11} {'data% dctps':>11}"
    )
    for name, n, batch in (("lenet5", a.lenet_images, 64), ("resnet18", resnet_n, 128)):
        t0 = time.perf_counter()
        got = compare(name, n, batch, a.device, a.repeats)
        (dense, dense_data), (dct, dct_data) = got["dense"], got["dctps"]
        print(
            f"{name:10} {n:>7} {batch:>5} {dense:>12.0f} {dct:>12.0f} {dct / dense:>6.2f} "
            f"{100 * dense_data:>10.1f}% {100 * dct_data:>10.1f}%   "
            f"({time.perf_counter() - t0:.0f} s)"
        )


if __name__ == "__main__":
    main()
