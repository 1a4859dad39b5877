"""Issue 11 (b) on a GPU: the Triton rebuild kernels alone, against the memory floor.

A DCTpS conv under a CUDA graph adds two kernels to ``nn.Conv2d``'s: the forward writes
``W = alpha * D + S`` and the backward reads ``dW`` (``d alpha = <dW, D>``, ``d values`` a gather).
Where the kernels compute ``D``'s entries, that is the weight's bytes written once and read once:
the traffic of one copy of the weight, which this script times as the floor (``copy``). For each
weight shape of the ResNet18/VGG19 convs it times, as CUDA-graph replays (GPU time only):

- ``ops``: the built-in operators' rebuild and its backward (:func:`dctps.layers.op_rebuild`);
- ``kernels``: both kernels as the library launches them, for each variant asked for: programs
  per launch (``--programs``; 1 = one program per row, no chunks), warps per program
  (``--warps``), ``D`` computed or read as the library chooses (``--dct auto``, the cell's
  label without a suffix), always computed (``c``) or always read (``r``).

    python benchmarks/rebuild_kernels.py [--programs 1 512 1024] [--warps 4 8] [--dct auto c r]

It needs CUDA and Triton; it prints microseconds per forward+backward and ratios to ``copy``.
"""

from __future__ import annotations

import argparse
import itertools

import torch

from dctps import triton_rebuild as tr
from dctps.bench import cuda_graph, positive_int
from dctps.dct import conv_dct_basis
from dctps.layers import op_rebuild

#: (out, in, k): the distinct conv weights of ResNet18 and VGG19 at CIFAR sizes
SHAPES = [
    (64, 3, 3), (64, 64, 3), (128, 64, 3), (128, 128, 3), (128, 64, 1), (256, 128, 3),
    (256, 256, 3), (256, 128, 1), (512, 256, 3), (512, 512, 3), (512, 256, 1),
]  # fmt: skip
NNZ = 1178  # VGG19's per-layer budget at 0.1% (EPL): small beside any of these weights


def _time(fn, reps: int) -> float:
    """Microseconds per call of a CUDA-graph replay of ``fn``: ``reps`` replays, best of 3."""
    replay = cuda_graph(fn)
    best = float("inf")
    for _ in range(3):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(reps):
            replay()
        end.record()
        torch.cuda.synchronize()
        best = min(best, start.elapsed_time(end) * 1e3 / reps)
    return best


def _warps(text: str) -> int:
    """An argparse type: warps per program, a power of two (Triton's ``num_warps``)."""
    n = positive_int(text)
    if n & (n - 1):
        raise argparse.ArgumentTypeError(f"must be a power of two, got {n}")
    return n


def _shape(text: str) -> tuple[int, int, int]:
    """An argparse type: ``OUTxINxK``, three integers of at least 1, as a weight's (out, in, k)."""
    parts = text.split("x")
    try:
        if len(parts) != 3:
            raise ValueError
        out, cin, k = (positive_int(p) for p in parts)
    except (ValueError, argparse.ArgumentTypeError):
        raise argparse.ArgumentTypeError(
            f"must be OUTxINxK, three integers of at least 1 (e.g. 512x2048x3), got {text!r}"
        ) from None
    return out, cin, k


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--programs",
        type=positive_int,
        nargs="+",
        default=[1, 512, 1024, 2048, 4096],
        help="programs per launch to try, each a variant (1: one program per row, no chunks); "
        "default: 1 512 1024 2048 4096",
    )
    ap.add_argument(
        "--warps",
        type=_warps,
        nargs="+",
        default=[4, 8],
        help="warps per program to try, each a variant (powers of two, as Triton requires); "
        "default: 4 8",
    )
    ap.add_argument(
        "--dct",
        nargs="+",
        choices=["auto", "c", "r"],
        default=["auto"],
        help="D as the library chooses (auto), always computed (c), always read (r); default: auto",
    )
    ap.add_argument(
        "--reps",
        type=positive_int,
        default=200,
        help="CUDA-graph replays per timing (best of 3 timings); default %(default)s",
    )
    ap.add_argument(
        "--shapes",
        nargs="+",
        type=_shape,
        metavar="OUTxINxK",
        help="weights to time instead of ResNet18's and VGG19's, e.g. 512x2048x3 (out "
        "channels, in channels, kernel size); default: those of ResNet18 and VGG19",
    )
    args = ap.parse_args()
    if not (torch.cuda.is_available() and tr.available()):
        raise SystemExit("rebuild_kernels.py needs CUDA and Triton")
    dev = torch.device("cuda")
    print(f"device {torch.cuda.get_device_name(0)}, torch {torch.__version__}; us per fwd+bwd")
    variants = list(itertools.product(args.programs, args.warps, args.dct))
    head = f"{'weight':>16} {'MB':>6} {'copy':>7} {'ops':>7}" + "".join(
        f" {f'p{p}w{w}' + ('' if r == 'auto' else r):>10}" for p, w, r in variants
    )
    print(head)
    saved = (tr._PROGRAMS, tr._NUM_WARPS, tr.MIN_DCT_TILES, tr.MIN_DCT_TILES_WINDOW)
    try:
        shapes = args.shapes or SHAPES
        for out, cin, k in shapes:
            print(" ".join(_row(out, cin, k, variants, args.reps, dev, saved[2:])), flush=True)
    finally:
        tr._PROGRAMS, tr._NUM_WARPS, tr.MIN_DCT_TILES, tr.MIN_DCT_TILES_WINDOW = saved
    print("cells: us per forward+backward / chunks per row; copy: the weight's bytes read and "
          "written once (the floor of kernels that compute D)")  # fmt: skip


def _row(out: int, cin: int, k: int, variants: list, reps: int, dev: torch.device,
         min_tiles: tuple[int, int]) -> list[str]:  # fmt: skip
    """One weight's cells: its size, the floor, the operators, each kernel variant."""
    d = conv_dct_basis(out, cin, k, k, dtype=torch.float32).to(dev).reshape(out, -1)
    numel = d.numel()
    g = torch.Generator().manual_seed(0)
    idx = torch.sort(torch.randperm(numel, generator=g)[:NNZ]).values.to(dev)
    vals = torch.randn(NNZ, generator=g).to(dev).requires_grad_()
    alpha = torch.tensor(0.7, device=dev, requires_grad=True)
    grad = torch.randn(numel, device=dev)
    scratch = torch.empty_like(grad)
    cells = [f"{f'{cin}->{out} k{k}':>16}", f"{numel * 4 / 1e6:6.2f}"]
    cells.append(f"{_time(lambda: scratch.copy_(grad), reps):7.1f}")

    def ops() -> None:
        w = op_rebuild(d, alpha, idx, vals)
        torch.autograd.grad(w, (alpha, vals), grad)

    cells.append(f"{_time(ops, reps):7.1f}")
    for programs, warps, dct in variants:
        tr._PROGRAMS, tr._NUM_WARPS = programs, warps
        least = {"auto": min_tiles, "c": (0, 0), "r": (10**9, 10**9)}[dct]
        tr.MIN_DCT_TILES, tr.MIN_DCT_TILES_WINDOW = least
        ws = tr.workspace(tr.dct_layout((out, cin, k, k)))
        t = _time(_kernels(d, alpha.detach(), idx, vals.detach(), grad, ws), reps)
        cells.append(f"{t:6.1f}/{_chunks(out, numel // out, ws.layout):<3d}")
    return cells


def _kernels(d, alpha, idx, vals, grad, ws):  # type: ignore[no-untyped-def]
    """Both kernels, as the library launches them (no autograd: GPU time is what is timed)."""

    def step() -> None:
        done = tr._forward(d, alpha, idx, vals, ws)
        assert done is not None
        tr._backward(grad, d, idx, done[1], alpha.shape, True, True, ws.layout)

    return step


def _chunks(out: int, fan: int, layout: tr.DctLayout | None) -> int:
    return tr._plan(out, fan, layout)[2]


if __name__ == "__main__":
    main()
