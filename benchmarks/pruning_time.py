"""Wall time to prepare a sparse ResNet18 (CIFAR-10 shapes) with each pruning method, as a ratio to
the time ``dctps.sparsify`` takes to build the DCTpS network at the same density.

The paper's settings (DCTpS Table E.2): Iter-SNIP / FORCE 60 steps with 1 batch of 128 per step,
SynFlow 100 iterations; SNIP and GraSP one batch of 128. Batches are random fake CIFAR batches
(drawn fresh at every step, on the device), so only the time is meaningful, not the masks; a method
that fails on them (``PruningFailed``) is timed up to the failure and marked.

    python benchmarks/pruning_time.py                 # paper settings (minutes on a 2-core CPU)
    python benchmarks/pruning_time.py --quick         # 6 steps / 10 iterations / batch 32
    python benchmarks/pruning_time.py --device cuda
    python benchmarks/pruning_time.py --quick --repeats 3 --threads 1   # steadier on a busy CPU
"""

from __future__ import annotations

import argparse
import time

import torch

import dctps
from dctps.bench import bench_device, positive_int
from dctps.errors import (
    DctpsError,
    PruningFailed,
    check_density,
    check_seed,
    set_threads,
    unknown_name,
)
from dctps.models import build
from dctps.pruning import names, prune


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--density",
        type=float,
        default=1e-3,
        help="fraction of weights kept, for dctps.sparsify and every method; default %(default)g",
    )
    p.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="cpu, cuda or cuda:N; default: cuda if torch has CUDA, else cpu",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=None,
        help="images per batch; default 128 (--quick: 32)",
    )
    p.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help="iter_snip / force steps; default 60 (--quick: 6)",
    )
    p.add_argument(
        "--iterations",
        type=positive_int,
        default=None,
        help="synflow iterations; default 100 (--quick: 10)",
    )
    p.add_argument("--quick", action="store_true",
                   help="the defaults --steps 6 --iterations 10 --batch-size 32")  # fmt: skip
    p.add_argument(
        "--methods",
        nargs="+",
        default=names(),
        help=f"pruning methods to time, in this order; default: all ({' '.join(names())})",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the models' initialisation and of the fake batches; default %(default)s",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        default=1,
        help="runs of each method, the best reported; default %(default)s",
    )
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads; default 0: torch's default"
    )
    args = p.parse_args()
    # --quick changes the defaults only: a size given explicitly is kept
    for key, full, quick in (("steps", 60, 6), ("iterations", 100, 10), ("batch_size", 128, 32)):
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    unknown = [m for m in args.methods if m not in names()]
    try:
        if unknown:
            raise unknown_name("pruning method", unknown[0], names())
        device = bench_device(args.device)
        check_density(args.density, "--density")  # a traceback at the warm-up's sparsify
        check_seed(args.seed, "--seed")
        set_threads(args.threads)  # a negative count: one line, not torch's traceback
    except DctpsError as e:
        raise SystemExit(f"error: {e}") from None
    gen = torch.Generator(device=device).manual_seed(args.seed)

    def fresh_batches():
        while True:
            x = torch.randn(args.batch_size, 3, 32, 32, device=device, generator=gen)
            y = torch.randint(0, 10, (args.batch_size,), device=device, generator=gen)
            yield x, y

    def model() -> torch.nn.Module:
        torch.manual_seed(args.seed)
        return build("resnet18").to(device)

    # Warm-up (allocator, cuDNN autotuning, thread pools): one forward/backward, one sparsify.
    net = model()
    x, y = next(fresh_batches())
    torch.nn.functional.cross_entropy(net(x), y).backward()
    dctps.sparsify(model(), args.density)
    del net

    # Both sides start from a built, initialised dense model (build time excluded).
    built = [model() for _ in range(3)]
    sparsify_t = min(_time(lambda m=m: dctps.sparsify(m, args.density), device) for m in built)
    del built

    options = {
        "iter_snip": {"steps": args.steps, "num_batches": 1},
        "force": {"steps": args.steps, "num_batches": 1},
        "synflow": {"iterations": args.iterations},
    }
    rows = []
    for method in args.methods:
        best, status = float("inf"), "ok"
        for _ in range(args.repeats):
            net = model()
            _sync(device)
            start = time.perf_counter()
            try:
                prune(net, args.density, method, batches=fresh_batches, **options.get(method, {}))
            except PruningFailed as e:
                status = f"PruningFailed: {e.reason}"
            _sync(device)
            best = min(best, time.perf_counter() - start)
            del net
        rows.append((method, best, status))

    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"ResNet18 (CIFAR-10 shapes), density {args.density:g}, device {dev_name}, "
        f"threads {torch.get_num_threads()}, batch {args.batch_size}, iter_snip/force "
        f"{args.steps} steps x 1 batch, synflow {args.iterations} iterations"
    )
    print(f"dctps.sparsify: {sparsify_t * 1e3:.2f} ms (best of 3; model build excluded)\n")
    print(f"{'method':<10} {'seconds':>9} {'x sparsify':>11}  status")
    for method, t, status in rows:
        print(f"{method:<10} {t:>9.2f} {t / sparsify_t:>11,.0f}  {status}")


if __name__ == "__main__":
    main()
