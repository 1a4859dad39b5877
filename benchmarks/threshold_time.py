"""The global pruning threshold (the ``k``-th largest of ``N`` scores) three ways, side by side.

Every score-based pruning method keeps the ``k`` largest scores of a whole network
(:func:`dctps.pruning.common.top_k_mask`), so each step finds the ``k``-th largest of ``N``
scores: SynFlow 100 times per pruning. This times, on one device, the two ways of
:func:`dctps.pruning.common.kth_largest` (``torch.kthvalue``, the CPU's; ``torch.topk``, every
other device's) and a descending ``torch.sort``, and prints each as a ratio to ``kthvalue``.
The default ``N`` is a ResNet18's prunable weights (CIFAR-10), in SynFlow's float64.

    python benchmarks/threshold_time.py [--device cuda] [--n 11164352] [--keep 0.5] [--reps 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import torch

from dctps.bench import bench_device, positive_int
from dctps.errors import DctpsError
from dctps.pruning.common import kth_largest


def _time(fn: Callable[[], object], device: torch.device, reps: int) -> float:
    """Best of ``reps`` calls of ``fn`` in seconds, after one warm-up call (synchronised)."""
    fn()
    best = float("inf")
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default %(default)s")
    ap.add_argument(
        "--n", type=positive_int, default=11_164_352,
        help="number of scores; default %(default)s (ResNet18's prunable weights)",
    )  # fmt: skip
    ap.add_argument(
        "--keep", type=_fraction, default=0.5,
        help="k as a fraction of N, in (0, 1]; default %(default)s",
    )  # fmt: skip
    ap.add_argument(
        "--dtype", choices=("float32", "float64"), default="float64",
        help="score dtype; default %(default)s (SynFlow's)",
    )  # fmt: skip
    ap.add_argument(
        "--reps", type=positive_int, default=5, help="timed calls, best taken; default %(default)s"
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of the scores; default %(default)s")
    a = ap.parse_args(argv)
    try:
        device = bench_device(a.device)
    except DctpsError as e:
        sys.exit(f"error: {e}")
    g = torch.Generator().manual_seed(a.seed)
    scores = torch.rand(a.n, generator=g, dtype=getattr(torch, a.dtype)).to(device)
    k = max(1, round(a.keep * a.n))
    ways = {  # kth_largest's two ways (the CPU's, everywhere else's) and a sort
        "kthvalue": lambda: kth_largest(scores, k, select=True),
        "topk": lambda: kth_largest(scores, k, select=False),
        "sort": lambda: torch.sort(scores, descending=True).values[k - 1],
    }
    values = {name: float(fn()) for name, fn in ways.items()}
    if len(set(values.values())) != 1:  # the ways must agree, or the timings compare nothing
        sys.exit(f"error: the thresholds differ: {values}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{a.n} {a.dtype} scores, k = {k}, on {device} ({name}), "
          f"{torch.get_num_threads()} CPU threads, best of {a.reps}")  # fmt: skip
    base = None
    for label, fn in ways.items():
        t = _time(fn, device, a.reps)
        base = base or t
        print(f"  {label:<9} {t * 1e3:9.2f} ms  {t / base:6.3f}x kthvalue")


if __name__ == "__main__":
    main()
