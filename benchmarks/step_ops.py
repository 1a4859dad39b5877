"""Issue 11 (c), the cause of the eager GPU gap: ATen operators dispatched per training step.

On a GPU each dispatched operator is a kernel launch and some host work. A small eager step is
bound by them (see ``step_cudagraph.py``), so their count is what the rebuild of
``W = alpha * D + S`` costs there. This counts them for one SGD step (``foreach``, as on CUDA) of
ResNet18 and ResNet50: dense, DCTpS rebuilt layer by layer, and DCTpS under
:func:`dctps.batch_rebuild`. The per-layer DCTpS row uses the code path that accelerators run
(``--path gpu``, default) or the CPU's fused one (``--path cpu``). Counts do not depend on the
widths, so the networks are built narrow (``--width 4``) and the count runs on the CPU:

    python benchmarks/step_ops.py [--path gpu|cpu] [--width 4]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

from dctps import layers
from dctps.batched import batch_rebuild
from dctps.bench import aten_ops
from dctps.models.resnet import BasicBlock, Bottleneck, ResNet
from dctps.sparsify import sparsify

NETS = {"ResNet18": (BasicBlock, (2, 2, 2, 2)), "ResNet50": (Bottleneck, (3, 4, 6, 3))}


def count(net: str, kind: str, width: int) -> tuple[int, int]:
    """(operators per step, DCTpS layers) of ``net`` as ``dense``, ``per-layer`` or ``batched``."""
    torch.manual_seed(0)
    block, blocks = NETS[net]
    model: nn.Module = ResNet(block, blocks, width=width)
    n_layers = sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in model.modules())
    if kind != "dense":
        model = sparsify(model, 0.05, seed=0)
    if kind == "batched":
        batch_rebuild(model, segmented=True)  # the accelerators' reduction
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, foreach=True)
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    step()  # momentum buffers and plans exist from here on
    n = aten_ops(step)
    assert n is not None, "this torch has no dispatch-mode hook"
    return n, n_layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--path", choices=("gpu", "cpu"), default="gpu")
    ap.add_argument("--width", type=int, default=4)
    a = ap.parse_args()
    if a.path == "gpu":
        layers.cpu_rebuild = layers.op_rebuild  # type: ignore[assignment]  # accelerators' path
    print(f"ATen operators per SGD step (views excluded); per-layer path: {a.path}; "
          f"torch {torch.__version__}")  # fmt: skip
    print(f"{'net':>9} {'layers':>7} {'dense':>6} {'per-layer':>10} {'extra':>6} "
          f"{'batched':>8} {'extra':>6}")  # fmt: skip
    for net in NETS:
        dense, n_layers = count(net, "dense", a.width)
        per, _ = count(net, "per-layer", a.width)
        bat, _ = count(net, "batched", a.width)
        print(f"{net:>9} {n_layers:>7} {dense:>6} {per:>10} {per - dense:>+6} {bat:>8} "
              f"{bat - dense:>+6}")  # fmt: skip


if __name__ == "__main__":
    main()
