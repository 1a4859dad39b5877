"""Where a training step's time and kernels go on a GPU: dense vs DCTpS, phase by phase.

For ``--model`` at ``--batch`` on fixed random data, with the recipe's Adam (``--optimizer adam``,
default) or SGD with momentum, this times (best of 3 rounds of 20 back-to-back calls, each round
device-synchronised) and counts the GPU kernels of: forward+backward; forward+backward+optimizer
step; the body of :func:`dctps.train.loop.train_one_epoch` (plus its non-finite check and the
accuracy count); the non-finite check alone; the optimizer step alone. Models: dense, DCTpS 0.1%
batched (what ``dctps train`` runs on CUDA) and DCTpS rebuilt layer by layer. Then it trains two
real epochs of ``--images`` random CIFAR-shaped images through the loader and
``train_one_epoch`` (dense and batched) and prints images/s.

A step whose time is far above its GPU time is bound by the host's per-kernel work, so there
the kernel count is what costs.

    python benchmarks/step_breakdown.py [--model resnet18] [--batch 128] [--images 6400]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from dctps import batch_rebuild, models, sparsify
from dctps import data as D
from dctps.bench import positive_int
from dctps.train.config import OptimConfig, RunConfig, SparsityConfig
from dctps.train.loop import _grad_max, train_one_epoch
from dctps.train.setup import make_optimizer

KINDS = ("dense", "batched", "per-layer")


def build(name: str, kind: str, optimizer: str, batch: int, device: str):
    torch.manual_seed(0)
    m = models.build(name)
    if kind != "dense":
        sparsify(m, 0.001, "epl", seed=0)
    m.to(device)
    if kind == "batched":
        batch_rebuild(m)
    o = (
        OptimConfig(batch_size=batch)
        if optimizer == "adam"
        else OptimConfig(batch_size=batch, optimizer="sgd", lr=0.1, momentum=0.9)
    )
    cfg = RunConfig(sparsity=SparsityConfig("dense"), optim=o).resolve()
    return m, make_optimizer(m, cfg.optim)


def phases(m, opt, x, y) -> dict[str, Callable[[], object]]:
    params = [p for p in m.parameters() if p.requires_grad]

    def fwd_bwd() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(m(x), y).backward()

    def with_opt() -> None:
        fwd_bwd()
        opt.step()

    def body() -> None:  # train_one_epoch's step, its check and its accuracy count
        opt.zero_grad(set_to_none=True)
        out = m(x)
        loss = F.cross_entropy(out, y)
        loss.backward()
        torch.stack([~torch.isfinite(loss.detach()), ~torch.isfinite(_grad_max(params))])
        opt.step()
        (out.detach().argmax(1) == y).sum()

    def check() -> None:
        torch.stack([~torch.isfinite(x.sum()), ~torch.isfinite(_grad_max(params))])

    return {"fwd+bwd": fwd_bwd, "+opt": with_opt, "loop body": body, "check": check,
            "opt": opt.step}  # fmt: skip


def best_ms(fn: Callable[[], object], sync: Callable[[], None], n: int = 20) -> float:
    for _ in range(3):
        fn()
    b = float("inf")
    for _ in range(3):
        sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        b = min(b, (time.perf_counter() - t) / n)
    return 1e3 * b


def gpu(fn: Callable[[], object], cuda: bool, n: int = 5) -> tuple[float, float]:
    """(GPU kernel ms, kernels) per call."""
    if not cuda:
        return float("nan"), float("nan")
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as p:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    ev = [e for e in p.key_averages() if e.device_type == DeviceType.CUDA]
    return sum(e.self_device_time_total for e in ev) / n / 1e3, sum(e.count for e in ev) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--model", default="resnet18", choices=models.names(),
        help="a dctps.models name; default %(default)s",
    )  # fmt: skip
    ap.add_argument(
        "--batch",
        type=positive_int,
        default=128,
        help="images per step, also the real epochs' batch size; default %(default)s",
    )
    ap.add_argument(
        "--images",
        type=positive_int,
        default=6400,
        help="random CIFAR-shaped images per real epoch (two epochs each of dense and "
        "batched); default %(default)s",
    )
    ap.add_argument(
        "--optimizer",
        choices=("adam", "sgd"),
        default="adam",
        help="the recipe's Adam, or SGD (lr 0.1, momentum 0.9); default %(default)s",
    )
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    dev = "cuda" if cuda else "cpu"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    name = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"{a.model}, batch {a.batch}, {a.optimizer}; {name}, torch {torch.__version__}")
    x = torch.randn(a.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (a.batch,), device=dev)
    res = {}
    for kind in KINDS:
        m, opt = build(a.model, kind, a.optimizer, a.batch, dev)
        res[kind] = {k: (best_ms(f, sync), *gpu(f, cuda)) for k, f in phases(m, opt, x, y).items()}
    print(
        f"{'phase':>10} " + " ".join(f"{k + ' ms':>14} {'GPU ms':>7} {'kernels':>7}" for k in KINDS)
    )
    for ph in res["dense"]:
        d = res["dense"][ph][0]
        cells = []
        for kind in KINDS:
            ms, g, n = res[kind][ph]
            ratio = "" if kind == "dense" else f" ({ms / d:.2f}x)"
            cells.append(f"{f'{ms:.2f}{ratio}':>14} {g:>7.2f} {n:>7.0f}")
        print(f"{ph:>10} " + " ".join(cells))
    info = D.get_info("cifar10")
    g = torch.Generator().manual_seed(0)
    xs = torch.randint(0, 256, (a.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    ys = torch.randint(0, 10, (a.images,), generator=g)
    for kind in ("dense", "batched"):
        m, opt = build(a.model, kind, a.optimizer, a.batch, dev)
        warm = D.Loader(xs[: 2 * a.batch], ys[: 2 * a.batch], a.batch, shuffle=True,
                        augment=True, info=info, device=dev)  # fmt: skip
        train_one_epoch(m, warm, opt, epoch=0)
        loader = D.Loader(xs, ys, a.batch, shuffle=True, augment=True, info=info, device=dev,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
        st = [train_one_epoch(m, loader, opt, epoch=1) for _ in range(2)]
        print(f"epoch {kind}: {max(s.images_per_second for s in st):.0f} img/s")


if __name__ == "__main__":
    main()
