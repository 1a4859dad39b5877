"""Issue 11 (b) on a GPU: what a lone DCTpS conv adds to ``nn.Conv2d``, host and kernels apart.

For a few conv shapes of ResNet18 at CIFAR sizes this times forward+backward of ``nn.Conv2d`` and
of ``DCTpSConv2d(mode='dense')`` with each rebuild of ``W = alpha * D + S``:

- ``kernel``: one Triton kernel each way (:mod:`dctps.triton_rebuild`), what CUDA uses while a
  graph is captured (here in every call), computing the DCT's entries where
  :func:`dctps.triton_rebuild.computes_dct` says it pays (for none of these convs since
  session 16: they read ``D`` as ``kernel-read`` does);
- ``kernel-read``: the same kernels reading ``D``, as they do for the other offsets;
- ``ops``: built-in differentiable operators, what eager CUDA calls use (after the first, which
  compile the kernels) and other accelerators (:func:`dctps.layers.op_rebuild`);
- ``fused``: one autograd Function, what the CPU uses (:func:`dctps.layers.cpu_rebuild`).

Per call it prints the latency (each call synchronised), the time inside a loop (``--calls``
back-to-back calls per synchronisation), the time of a CUDA-graph replay of the call (GPU time
without host work), and from :mod:`torch.profiler` the GPU kernel time and kernel count. A layer
whose latency ratio is far above its graph ratio pays in host work, not in GPU work.

    python benchmarks/profile_layer.py [--batch 128] [--reps 10] [--calls 10]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from dctps import layers, triton_rebuild
from dctps.bench import cuda_graph, positive_int, timeit
from dctps.layers import DCTpSConv2d

#: cin, cout, kernel, stride, H: ResNet18's and, last, the two that were slowest as CUDA graphs in
#: session 13 (VGG19's 512->512 at 2x2, ResNet18's 1x1 shortcut 256->512)
SHAPES = [
    (3, 64, 3, 1, 32), (64, 64, 3, 1, 16), (256, 256, 3, 1, 8), (512, 512, 3, 1, 4),
    (512, 512, 3, 1, 2), (256, 512, 1, 2, 8),
]  # fmt: skip


def fwd_bwd(module: nn.Module, x: torch.Tensor, rebuild: str | None) -> Callable[[], None]:
    """One forward+backward of ``module``; a DCTpS layer rebuilds its weight as ``rebuild``
    says (``dense_weight()`` looks these names up per call, so each call sets them)."""
    chosen = {"ops": ORIGINAL[1], "fused": ORIGINAL[2]}.get(rebuild or "")

    def step() -> None:
        if rebuild is not None:
            kernel = rebuild.startswith("kernel")
            if kernel:  # the layer's kernel state, with or without the DCT's layout
                state = module.__dict__.get(layers.KERNEL_STATE)
                if state is None:
                    state = module.__dict__[layers.KERNEL_STATE] = triton_rebuild.workspace()
                shape = module.weight_shape  # type: ignore[union-attr]
                state.layout = (
                    None if rebuild == "kernel-read" else triton_rebuild.dct_layout(shape)
                )
            layers.kernel_rebuild_usable = ORIGINAL[0] if kernel else _never
            layers.capturing = _always if kernel else ORIGINAL[3]
            if chosen is not None:
                layers.op_rebuild = layers.cpu_rebuild = chosen  # type: ignore[assignment]
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = module(x)
        y.backward(torch.ones_like(y))

    return step


def _never(*args: object) -> bool:
    return False


def _always(*args: object) -> bool:
    return True


ORIGINAL = (layers.kernel_rebuild_usable, layers.op_rebuild, layers.cpu_rebuild, layers.capturing)


def _restore() -> None:
    (layers.kernel_rebuild_usable, layers.op_rebuild, layers.cpu_rebuild,
     layers.capturing) = ORIGINAL  # fmt: skip


def kernels(fn: Callable[[], None], n: int, cuda: bool) -> tuple[float, float]:
    """(GPU kernel microseconds, kernels) per call of ``fn``, over ``n`` profiled calls."""
    if not cuda:
        return float("nan"), float("nan")
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    ev = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    return sum(e.self_device_time_total for e in ev) / n, sum(e.count for e in ev) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--batch", type=positive_int, default=128, help="images per call; default %(default)s"
    )
    ap.add_argument(
        "--reps",
        type=positive_int,
        default=10,
        help="interleaved timings of each variant, the best kept; default %(default)s",
    )
    ap.add_argument(
        "--calls",
        type=positive_int,
        default=10,
        help="back-to-back calls per synchronisation in the loop and graph timings; "
        "default %(default)s",
    )
    a = ap.parse_args()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    variants = ["ops", "fused"]
    if cuda and triton_rebuild.available():
        variants += ["kernel", "kernel-read"]
    print(f"device {torch.cuda.get_device_name(0) if cuda else 'CPU'}, torch {torch.__version__}")
    print(f"{'conv':>16} {'variant':>11} {'sync us':>8} {'ratio':>6} {'loop us':>8} {'ratio':>6} "
          f"{'graph us':>8} {'ratio':>6} {'kernel us':>9} {'kernels':>7}")  # fmt: skip
    for cin, cout, k, s, h in SHAPES:
        torch.manual_seed(0)
        x = torch.randn(a.batch, cin, h, h, device=device, requires_grad=True)
        pad = k // 2
        conv = nn.Conv2d(cin, cout, k, s, pad, bias=False, device=device)
        lay = DCTpSConv2d(cin, cout, k, s, pad, bias=False, nnz=532, seed=0, device=device)
        fns = {"conv": fwd_bwd(conv, x, None)} | {v: fwd_bwd(lay, x, v) for v in variants}
        try:
            lat = timeit(fns, a.reps, device)
            loop = timeit(fns, a.reps, device, calls=a.calls)
            counted = {k: kernels(fn, 5, cuda) for k, fn in fns.items()}
            graph = {}
            if cuda:  # a fresh layer per capture: a graph holds its gradients' memory
                lay_g = {v: DCTpSConv2d(cin, cout, k, s, pad, bias=False, nnz=532, seed=0,
                                        device=device) for v in variants}  # fmt: skip
                graphs = {}
                for name in fns:
                    graphs[name] = cuda_graph(
                        fwd_bwd(lay_g.get(name, conv), x, name if name in variants else None)
                    )
                graph = timeit(graphs, a.reps, device, calls=a.calls)
        finally:
            _restore()
        for name in fns:
            us, n = counted[name]
            g_us = 1e6 * graph[name].best if graph else float("nan")
            g_r = graph[name].best / graph["conv"].best if graph else float("nan")
            print(f"{f'{cin}->{cout} k{k} H{h}':>16} {name:>11} {1e6 * lat[name].best:>8.1f} "
                  f"{lat[name].best / lat['conv'].best:>6.2f} {1e6 * loop[name].best:>8.1f} "
                  f"{loop[name].best / loop['conv'].best:>6.2f} {g_us:>8.1f} {g_r:>6.2f} "
                  f"{us:>9.1f} {n:>7.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
