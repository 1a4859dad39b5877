"""Issue 11 (c), the cause of the eager GPU gap: ATen operators dispatched per training step.

On a GPU each dispatched operator is a kernel launch and some host work. A small eager step is
bound by them (see ``step_cudagraph.py``), so their count is what the rebuild of
``W = alpha * D + S`` costs there. This counts them for one SGD step (``foreach``, as on CUDA) of
ResNet18 and ResNet50: dense, DCTpS rebuilt layer by layer, and DCTpS under
:func:`dctps.batch_rebuild`. The per-layer DCTpS row uses the code path that accelerators run
(``--path gpu``, default) or the CPU's fused one (``--path cpu``). Counts do not depend on the
widths, so the networks are built narrow (``--width 4``) and the count runs on the CPU.

It also times the steps on one CPU thread. With so little arithmetic, that is a stand-in for the
host-side cost of a GPU step: the dispatch, Python and autograd work around each operator, though
not the launch itself.

    python benchmarks/step_ops.py [--path gpu|cpu] [--width 4] [--steps 100]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch import nn

from dctps import layers
from dctps.batched import batch_rebuild
from dctps.bench import aten_ops, positive_int
from dctps.models.resnet import BasicBlock, Bottleneck, ResNet
from dctps.sparsify import sparsify

NETS = {"ResNet18": (BasicBlock, (2, 2, 2, 2)), "ResNet50": (Bottleneck, (3, 4, 6, 3))}


def make_step(net: str, kind: str, width: int) -> tuple[Callable[[], None], int]:
    """(one SGD step, number of Linear/Conv2d layers) of ``net`` as ``dense``, ``per-layer`` or
    ``batched``."""
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
    return step, n_layers


def best_seconds(steps: dict[str, Callable[[], None]], n: int, rounds: int = 7) -> dict[str, float]:
    """Best seconds per step of each callable over ``rounds`` interleaved rounds of ``n`` steps."""
    best = {k: float("inf") for k in steps}
    for _ in range(rounds):
        for k, step in steps.items():
            t0 = time.perf_counter()
            for _ in range(n):
                step()
            best[k] = min(best[k], (time.perf_counter() - t0) / n)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--path",
        choices=("gpu", "cpu"),
        default="gpu",
        help="the per-layer DCTpS row's rebuild: the accelerators' operators (gpu) or the "
        "CPU's fused one (cpu); default %(default)s",
    )
    ap.add_argument(
        "--width",
        type=positive_int,
        default=4,
        help="channels of the networks' first stage (the counts do not depend on it); "
        "default %(default)s",
    )
    ap.add_argument(
        "--steps",
        type=positive_int,
        default=100,
        help="training steps per timing round (7 rounds, the best kept); default %(default)s",
    )
    a = ap.parse_args()
    torch.set_num_threads(1)
    if a.path == "gpu":
        layers.cpu_rebuild = layers.op_rebuild  # type: ignore[assignment]  # accelerators' path
    print(f"Per SGD step: ATen operators (views excluded) and host ms (batch 2, 8x8 images, width "
          f"{a.width}, 1 thread, best of 7 interleaved rounds of {a.steps} steps); per-layer "
          f"path: {a.path}; torch {torch.__version__}")  # fmt: skip
    print(f"{'':>18} {'dense':>7} {'per-layer':>10} {'extra':>7} {'batched':>8} {'extra':>7}")
    for net in NETS:
        made = {k: make_step(net, k, a.width) for k in ("dense", "per-layer", "batched")}
        steps = {k: v[0] for k, v in made.items()}
        n_layers = made["dense"][1]
        ops = {k: aten_ops(f) for k, f in steps.items()}
        ms = {k: v * 1e3 for k, v in best_seconds(steps, a.steps).items()}
        label = f"{net} ({n_layers})"
        print(f"{label + ' ops':>18} {ops['dense']:>7} {ops['per-layer']:>10} "
              f"{ops['per-layer'] - ops['dense']:>+7} {ops['batched']:>8} "
              f"{ops['batched'] - ops['dense']:>+7}")  # fmt: skip
        print(f"{label + ' ms':>18} {ms['dense']:>7.2f} {ms['per-layer']:>10.2f} "
              f"{ms['per-layer'] - ms['dense']:>+7.2f} {ms['batched']:>8.2f} "
              f"{ms['batched'] - ms['dense']:>+7.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
