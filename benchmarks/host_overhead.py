"""Issue 11 (b) eagerly: the host time a DCTpS conv adds to ``nn.Conv2d``, and what a C++ op saves.

On a GPU, a lone eager DCTpS conv of ResNet18/VGG19 took 1.35-2.61x ``nn.Conv2d`` (session 16)
while its GPU time was 1.02-1.09x: the host is the bottleneck. Host time per call is what a CPU
spends on a tiny conv, where the arithmetic is negligible, so this measures it here, without a
GPU: forward+backward of a 4->4 3x3 conv on a 1x4x4x4 input (``--channels``, ``--size``), on
``--threads`` threads, each path as

- ``nn.Conv2d``: one operator and one autograd node each way;
- ``layer``: ``DCTpSConv2d(mode='dense')`` as the CPU calls it: at this size its rebuild of
  ``W = alpha * D + S`` takes the built-in operators of :func:`dctps.layers.op_rebuild`, as
  eager CUDA calls do (whose layer adds a few checks for Triton and CUDA graphs);
- ``layer, fused``: the same layer rebuilding with one Python autograd Function
  (:func:`dctps.layers.cpu_rebuild`), what the CPU takes for layers of
  :data:`dctps.layers.FUSED_REBUILD_MIN` weights or more;
- ``ops by hand``: those operators and ``F.conv2d`` written out, without the layer's Python;
- ``C++, one node`` (``--cpp``, needs a C++ compiler and ninja): rebuild and conv in one C++
  autograd node, compiled here with ``-O2`` by :func:`torch.utils.cpp_extension.load_inline` (the
  "compiled op" that sessions 16-17 named as the way to close (b) eagerly). Its outputs and
  gradients are checked against the layer's in float64 before it is timed.

A second table times the rebuild alone, forward+backward, with each CPU rebuild (the fused
Function and the operators) for ``D`` of 1k to 1M elements (density 1%): where they cross is
:data:`dctps.layers.FUSED_REBUILD_MIN`'s reason.

    python benchmarks/host_overhead.py [--cpp] [--channels 4] [--size 4] [--reps 7]
"""

from __future__ import annotations

import argparse
import shutil
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dctps import layers
from dctps.bench import positive_int, timeit
from dctps.layers import DCTpSConv2d

#: rebuild and conv forward in one autograd node; backward: conv backward, then
#: d alpha = <dW, D> and d values = dW[indices] from the one dense dW
CPP = r"""
#include <torch/extension.h>
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct RebuildConv : public torch::autograd::Function<RebuildConv> {
  static at::Tensor forward(AutogradContext* ctx, at::Tensor x, at::Tensor d, at::Tensor alpha,
                            at::Tensor indices, at::Tensor values, at::Tensor bias,
                            std::vector<int64_t> stride, std::vector<int64_t> padding) {
    at::Tensor w = at::mul(d, alpha);
    w.view({-1}).index_add_(0, indices, values);
    at::Tensor y = at::convolution(x, w, bias, stride, padding, {1, 1}, false, {0, 0}, 1);
    ctx->save_for_backward({x, w, d, indices});
    ctx->saved_data["stride"] = stride;
    ctx->saved_data["padding"] = padding;
    return y;
  }
  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto s = ctx->get_saved_variables();
    std::vector<int64_t> bias_sizes = {s[1].size(0)};
    auto r = at::convolution_backward(
        grads[0], s[0], s[1], at::OptionalIntArrayRef(bias_sizes),
        ctx->saved_data["stride"].toIntVector(), ctx->saved_data["padding"].toIntVector(),
        {1, 1}, false, {0, 0}, 1, {true, true, true});
    at::Tensor g = std::get<1>(r).reshape({-1});
    at::Tensor dalpha = at::dot(g, s[2].reshape({-1}));
    at::Tensor dvalues = g.index_select(0, s[3]);
    return {std::get<0>(r), at::Tensor(), dalpha, at::Tensor(), dvalues, std::get<2>(r),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor rebuild_conv(at::Tensor x, at::Tensor d, at::Tensor alpha, at::Tensor indices,
                        at::Tensor values, at::Tensor bias, std::vector<int64_t> stride,
                        std::vector<int64_t> padding) {
  return RebuildConv::apply(x, d, alpha, indices, values, bias, stride, padding);
}
"""


def compile_cpp() -> Any:
    """The C++ extension module (``rebuild_conv``), built once into torch's extension cache."""
    from torch.utils.cpp_extension import load_inline

    return load_inline(
        name="dctps_host_overhead", cpp_sources=CPP, functions=["rebuild_conv"],
        extra_cflags=["-O2"], verbose=False,
    )  # fmt: skip


def paths(layer: DCTpSConv2d, conv: nn.Conv2d, x: torch.Tensor, cpp: Any) -> dict[str, Any]:
    """Forward callables of each path (the benchmark adds ``.sum().backward()``)."""
    shape, stride, padding = layer.weight_shape, list(layer.stride), list(layer.padding)
    d, indices = layer.D, layer.indices

    def layer_fused() -> torch.Tensor:
        # the size threshold lowered by two assignments (a context manager's own cost would be
        # timed)
        threshold = layers.FUSED_REBUILD_MIN
        layers.FUSED_REBUILD_MIN = 0
        try:
            return layer(x)
        finally:
            layers.FUSED_REBUILD_MIN = threshold

    def by_hand() -> torch.Tensor:
        w = layers.op_rebuild(d, layer.alpha, indices, layer.values).view(shape)
        return F.conv2d(x, w, layer.bias, stride, padding)

    out: dict[str, Callable[[], torch.Tensor]] = {
        "nn.Conv2d": lambda: conv(x),
        "layer": lambda: layer(x),
        "layer, fused": layer_fused,
        "ops by hand": by_hand,
    }
    if cpp is not None:
        out["C++, one node"] = lambda: cpp.rebuild_conv(
            x, d, layer.alpha, indices, layer.values, layer.bias, stride, padding
        )
    return out


def check_paths(fns: dict[str, Callable[[], torch.Tensor]], layer: DCTpSConv2d) -> None:
    """Every DCTpS path gives the layer's output and gradients (the caller's dtype; 1e-10)."""
    ref: list[torch.Tensor] | None = None
    for name, fn in fns.items():
        if name == "nn.Conv2d":
            continue
        layer.zero_grad(set_to_none=True)
        y = fn()
        y.backward(torch.ones_like(y))
        got = [y.detach(), *(p.grad for p in (layer.alpha, layer.values, layer.bias))]
        if ref is None:
            ref = got
        for a, b in zip(ref, got, strict=True):
            if b is None or not torch.allclose(a, b, rtol=0, atol=1e-10):
                raise SystemExit(f"path {name!r} disagrees with the layer's output or gradients")


def _rebuild_step(rebuild: Callable[..., torch.Tensor], *args: torch.Tensor) -> Callable[[], None]:
    g = torch.ones_like(args[0])
    return lambda: rebuild(*args).backward(g)


def rebuild_sizes(reps: int) -> None:
    """Forward+backward of the rebuild alone, fused Function vs operators, by ``D``'s size."""
    print(f"\nrebuild alone, forward+backward, {torch.get_num_threads()} thread(s), best of {reps}")
    print(f"{'D elements':>10s} {'fused us':>9s} {'ops us':>9s} {'ops/fused':>10s}")
    for numel in (1 << 10, 1 << 13, 1 << 15, 1 << 16, 1 << 17, 1 << 18, 1 << 20):
        d = torch.randn(numel)
        alpha = torch.tensor(1.0, requires_grad=True)
        idx = torch.randperm(numel)[: max(1, numel // 100)].sort().values
        vals = torch.randn(idx.numel(), requires_grad=True)
        fns = {
            "fused": _rebuild_step(layers.cpu_rebuild, d, alpha, idx, vals),
            "ops": _rebuild_step(layers.op_rebuild, d, alpha, idx, vals),
        }
        calls = max(5, 2_000_000 // (numel + 2000))
        t = timeit(fns, reps=reps, device=torch.device("cpu"), warmup=5, calls=calls)
        fused, ops = t["fused"].best, t["ops"].best
        print(f"{numel:10d} {fused * 1e6:9.1f} {ops * 1e6:9.1f} {ops / fused:10.2f}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--cpp", action="store_true",
        help="also compile and time the one-node C++ op (needs a C++ compiler and ninja)",
    )  # fmt: skip
    ap.add_argument(
        "--channels", type=positive_int, default=4, help="in = out channels; default %(default)s"
    )
    ap.add_argument(
        "--size", type=positive_int, default=4, help="input height = width; default %(default)s"
    )
    ap.add_argument(
        "--threads", type=positive_int, default=1, help="CPU threads; default %(default)s"
    )
    ap.add_argument(
        "--reps",
        type=positive_int,
        default=7,
        help="timings per path (best kept); default %(default)s",
    )
    ap.add_argument(
        "--calls", type=positive_int, default=2000, help="calls per timing; default %(default)s"
    )
    args = ap.parse_args(argv)
    cpp = None
    if args.cpp:
        missing = [t for t in ("ninja", "c++") if shutil.which(t) is None]
        if missing:
            raise SystemExit(f"--cpp needs ninja and a C++ compiler on PATH; missing: {missing}")
        cpp = compile_cpp()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    c, n = args.channels, args.size
    nnz = max(1, c * c * 9 // 10)
    x64 = torch.randn(1, c, n, n, dtype=torch.float64, requires_grad=True)
    layer = DCTpSConv2d(c, c, 3, padding=1, nnz=nnz, seed=0, dtype=torch.float64)
    check_paths(paths(layer, nn.Conv2d(c, c, 3, padding=1), x64, cpp), layer)
    layer = DCTpSConv2d(c, c, 3, padding=1, nnz=nnz, seed=0)
    conv = nn.Conv2d(c, c, 3, padding=1)
    x = torch.randn(1, c, n, n, requires_grad=True)
    modules = (layer, conv)

    def step(fn: Callable[[], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            for m in modules:
                m.zero_grad(set_to_none=True)
            x.grad = None
            fn().sum().backward()

        return run

    fns = {k: step(f) for k, f in paths(layer, conv, x, cpp).items()}
    times = timeit(fns, reps=args.reps, device=torch.device("cpu"), warmup=50, calls=args.calls)
    base = times["nn.Conv2d"].best
    print(
        f"forward+backward, {c}->{c} 3x3 conv on 1x{c}x{n}x{n}, {args.threads} thread(s), "
        f"best of {args.reps}"
    )
    print(f"{'path':16s} {'us':>7s} {'x nn.Conv2d':>12s} {'extra us':>9s}")
    for name, t in times.items():
        us = t.best * 1e6
        print(f"{name:16s} {us:7.1f} {t.best / base:12.2f} {us - base * 1e6:9.1f}")
    rebuild_sizes(args.reps)


if __name__ == "__main__":
    main()
