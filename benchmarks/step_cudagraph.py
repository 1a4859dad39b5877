"""Issue 11 (c) on a GPU: a ResNet18 training step, eager against CUDA-graph replay.

On an H200 the eager DCTpS step (0.1%, ``mode='auto'``) takes 1.20x the dense step, because each
DCTpS layer adds a few small kernels (rebuild ``W = alpha*D + S``, the gathers of its backward)
and Python work to a step that is bound by kernel launches. A CUDA graph of the whole step
(forward, backward, SGD) replays the kernels without the CPU. This prints both ratios, measured
side by side in one run (``best`` of ``--reps`` interleaved timings of ``--steps`` steps each):

    python benchmarks/step_cudagraph.py [--batch 128] [--reps 5] [--steps 20] [--compile]

``--compile`` adds a row for ``torch.compile``'d models (dense and ``dctps-dense``: inside
``torch.compile`` every DCTpS layer takes the dense path, so ``auto`` and ``batched`` compile to
the same program), to see whether fusing the rebuild closes the gap that eager leaves.

Graph capture follows PyTorch's whole-network recipe: warm-up steps on a side stream, gradients
set to ``None`` before capture, static input and target tensors. Without CUDA only the eager rows
are printed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from dctps import fast as fastmod
from dctps.batched import batch_rebuild
from dctps.bench import cuda_graph, positive_int
from dctps.models import build
from dctps.models import names as model_names
from dctps.sparsify import sparsify

#: the steps :func:`make_step` builds
STEP_KINDS = ("dense", "auto", "dctps-dense", "batched")


def make_step(
    kind: str,
    device: torch.device,
    batch: int,
    model_name: str = "resnet18",
    compile: bool = False,
    channels_last: bool = False,
) -> Callable[[], None]:
    """One SGD step of ``model_name`` on fixed random data: ``dense``, ``auto``, ``dctps-dense``
    or ``batched`` (``dctps-dense`` under :func:`dctps.batch_rebuild`, what ``dctps train`` runs
    on CUDA); with ``compile``, through ``torch.compile`` of the model; with ``channels_last``,
    model and input in that memory format (cuDNN converted NCHW activations to NHWC and back
    for 0.9 ms of a 7.4 ms step on an H100)."""
    if kind not in STEP_KINDS:  # any other name ran a DCTpS model in dense mode, labelled as it
        raise ValueError(f"step kind must be one of {', '.join(STEP_KINDS)}, got {kind!r}")
    torch.manual_seed(0)
    if kind == "dense":
        model = build(model_name)
    else:
        model = sparsify(build(model_name), 0.001, seed=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(device, memory_format=fmt)
    if kind != "dense":
        fastmod.set_mode(model, "auto" if kind == "auto" else "dense")
    if kind == "batched":
        batch_rebuild(model)
    x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=fmt)
    y = torch.randint(0, 10, (batch,), device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    net = torch.compile(model) if compile else model

    def step() -> None:
        F.cross_entropy(net(x), y).backward()
        opt.step()

    def eager() -> None:
        opt.zero_grad(set_to_none=True)
        step()

    eager.opt = opt  # type: ignore[attr-defined]
    eager.inner = step  # type: ignore[attr-defined]
    return eager


def graphed(eager: Callable[[], None]) -> Callable[[], None]:
    """Capture ``eager``'s step (without its ``zero_grad``) in a CUDA graph; returns its replay."""
    opt = eager.opt  # type: ignore[attr-defined]

    def warmup() -> None:
        eager()
        opt.zero_grad(set_to_none=True)

    replay = cuda_graph(eager.inner, warmup)  # type: ignore[attr-defined]
    # the graph does not own its tensors: keep the model, data and optimizer alive with it
    replay.keep = eager  # type: ignore[attr-defined]
    return replay


def per_step(fns: dict[str, Callable[[], None]], reps: int, steps: int, device: torch.device):
    """Best seconds per step of each callable, timed interleaved after two warm-up calls."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for fn in fns.values():
        fn()
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            best[name] = min(best[name], (time.perf_counter() - t0) / steps)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--batch", type=positive_int, default=128, help="images per step; default %(default)s"
    )
    ap.add_argument(
        "--reps",
        type=positive_int,
        default=5,
        help="interleaved timings of each step, the best kept; default %(default)s",
    )
    ap.add_argument(
        "--steps",
        type=positive_int,
        default=20,
        help="back-to-back steps per timing (one synchronisation each side); default %(default)s",
    )
    ap.add_argument(
        "--model", default="resnet18", choices=model_names(),
        help="a dctps.models name; default %(default)s",
    )  # fmt: skip
    ap.add_argument(
        "--compile",
        action="store_true",
        help="add a row of torch.compile'd models (dense and dctps-dense; off by default)",
    )
    ap.add_argument(
        "--channels-last",
        action="store_true",
        help="add eager and graph rows in channels_last (off by default)",
    )
    a = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(
        f"{a.model} SGD step, batch {a.batch}, DCTpS at 0.1%; {name}, torch {torch.__version__}",
        flush=True,
    )
    kinds = ("dense", "auto", "dctps-dense", "batched")
    rows = []
    for nhwc in (False, True) if a.channels_last else (False,):
        suffix = " NHWC" if nhwc else ""
        eager = {k: make_step(k, device, a.batch, a.model, channels_last=nhwc) for k in kinds}
        rows.append(("eager" + suffix, per_step(eager, a.reps, a.steps, device)))
        if device.type == "cuda":
            graphs = {}
            for k in kinds:
                try:
                    graphs[k] = graphed(make_step(k, device, a.batch, a.model, channels_last=nhwc))
                except Exception as e:  # a path that cannot be captured is reported, not hidden
                    print(f"graph capture failed for {k}{suffix}: {type(e).__name__}: {e}")
            if "dense" in graphs:
                rows.append(("CUDA graph" + suffix, per_step(graphs, a.reps, a.steps, device)))
    if a.compile:
        t0 = time.perf_counter()
        compiled = {}
        for k in ("dense", "dctps-dense"):
            fn = make_step(k, device, a.batch, a.model, True)
            try:
                fn()  # compiles forward and backward, outside the timing
            except Exception as e:  # a model that does not compile is reported, not hidden
                print(f"torch.compile failed for {k}: {type(e).__name__}: {e}", flush=True)
                continue
            compiled[k] = fn
        print(f"torch.compile of the models: {time.perf_counter() - t0:.0f} s", flush=True)
        if "dense" in compiled:
            rows.append(("compiled", per_step(compiled, a.reps, a.steps, device)))
    print(
        f"{'':>11} {'dense ms':>9}" + "".join(f" {k + ' ms':>15} {'ratio':>6}" for k in kinds[1:])
    )
    for label, t in rows:
        d = t["dense"]
        line = f"{label:>11} {1e3 * d:>9.2f}"
        for k in kinds[1:]:
            v = t.get(k)
            line += " " + (
                f"{'-':>15} {'-':>6}" if v is None else f"{1e3 * v:>15.2f} {v / d:>6.3f}"
            )
        print(line)


if __name__ == "__main__":
    main()
