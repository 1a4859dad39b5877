"""Benchmarks of the DCTpS fast paths, sparse checkpoints and memory (``dctps bench``).

Each benchmark measures DCTpS and its dense counterpart side by side in one run (interleaved
repetitions, after warm-up), prints a table with the ratios, and returns its rows:

``linear``  forward+backward at batch 128 of square Linear layers 1024/4096/8192 at 0.1% density:
            ``DCTpSLinear(mode='fast')`` vs ``nn.Linear``.
``conv``    forward+backward at batch 128 of every distinct conv of ResNet18 and VGG19 at CIFAR
            sizes (nnz from the EPL allocation at 0.1%): every DCTpS path, ``mode='auto'``,
            ``nn.Conv2d`` and the reference code's two-conv scheme.
``step``    a whole ResNet18 training step (SGD), DCTpS at 0.1% with ``mode='auto'`` vs dense, and
            the DCTpS model under :func:`dctps.batch_rebuild`; with the ATen operators each
            step dispatches (a GPU's kernel launches).
``ckpt``    checkpoint bytes of ResNet50 at 1% / 0.1% / 0.01%: ``dctps.save`` vs
            ``torch.save(dense.state_dict())``.
``memory``  peak memory of a training step of the 8192 Linear, fast DCTpS vs dense, each in a
            fresh subprocess (on CPU the growth of the resident-memory peak, reset before the
            step on Linux; ``torch.cuda.max_memory_allocated`` on CUDA).

Times are wall-clock; ratios use the best of the interleaved repetitions (the least disturbed
run, robust on a shared machine); medians are printed too. On CUDA one timing of ``conv`` and
``step`` is :data:`LOOP_CALLS` back-to-back calls, the cost of a call inside a training loop, where
the host queues kernels while the GPU runs earlier ones; ``conv`` also prints ``auto``'s ratio with
every call synchronised (its latency, which a lone small layer's host work dominates).
``--quick`` shrinks batches and repetitions so everything runs in a few minutes on 2 CPU cores;
each table says what it ran.
The scripts in ``benchmarks/`` call :func:`main`.
"""

from __future__ import annotations

import argparse
import copy
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dctps.atomic import atomic_write, check_file_target, make_parent
from dctps.errors import (
    DctpsError,
    cannot_write,
    no_cuda,
    one_line,
    refuse_empty,
    set_threads,
    unknown_name,
)

__all__ = ["NAMES", "run", "main", "timeit"]

NAMES = ("linear", "conv", "step", "ckpt", "memory")
#: back-to-back calls per timing on CUDA (on a CPU each call is synchronous, and one suffices)
LOOP_CALLS = 10
Echo = Callable[[str], Any]


@dataclass
class Timing:
    best: float
    median: float


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fns: dict[str, Callable[[], Any]], reps: int, device: torch.device,
           warmup: int = 2, calls: int = 1) -> dict[str, Timing]:  # fmt: skip
    """Time each zero-argument callable ``reps`` times, interleaved, after ``warmup`` calls each.

    One timing is ``calls`` back-to-back calls between two device synchronisations, divided by
    ``calls``. With ``calls=1`` that is a call's latency; on a GPU, where the host queues kernels
    ahead, more calls give the time a call costs inside a loop (a training loop never waits for
    each layer or step), in which the host's work overlaps the GPU's.

    The garbage collector is off while timing (as in :mod:`timeit`): a collection triggered by
    one path's Python objects must not land in another path's measurement. The order rotates at
    each repetition, so that no callable is always timed right after the same other one (a
    conv timed after a larger one read 0.87x an identical copy, and 1.15x in the other order).
    """
    if calls < 1 or reps < 1:
        raise DctpsError(f"calls and reps must be at least 1, got calls={calls}, reps={reps}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    order = list(fns.items())
    try:
        for rep in range(reps):
            shift = rep % len(order)
            for name, fn in order[shift:] + order[:shift]:
                _sync(device)
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                _sync(device)
                times[name].append((time.perf_counter() - t0) / calls)
    finally:
        if enabled:
            gc.enable()
    return {k: Timing(min(v), statistics.median(v)) for k, v in times.items()}


def _fwd_bwd(module: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        x.grad = None
        y = module(x)
        y.backward(torch.ones_like(y))

    return step


def cuda_graph(
    step: Callable[[], None], warmup: Callable[[], None] | None = None
) -> Callable[[], None]:
    """``step`` (a zero-argument forward+backward) captured in a CUDA graph; returns its replay.

    PyTorch's recipe: three warm-up calls on a side stream (they also run ``mode='auto'``'s
    micro-benchmark, which synchronises and so cannot be captured), then one captured call. The
    gradients the capture allocates are rewritten by every replay. A replay launches the step's
    kernels without the host's per-operator work, so a ratio of replays is a ratio of GPU time.
    ``warmup``, when given, runs instead of ``step`` before the capture (a training step warms
    up with its ``zero_grad`` and then clears the gradients, so the capture allocates them).
    """
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            (warmup or step)()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()

    def replay() -> None:
        graph.replay()

    # the graph does not own its tensors: the module and input stay alive with the replay
    replay.keep = step  # type: ignore[attr-defined]
    return replay


def _graph_ratios(fns: dict[str, Callable[[], None]], keys: tuple[str, ...], reps: int,
                  device: torch.device, echo: Echo) -> dict[str, float]:  # fmt: skip
    """Ratios to ``fns['conv']`` of the CUDA-graph replays of ``keys`` (``conv`` first); a step
    that cannot be captured is reported and left out, not hidden."""
    graphs = {}
    for k in ("conv", *keys):
        try:
            graphs[k] = cuda_graph(fns[k])
        except Exception as e:
            echo(f"   CUDA graph capture failed for {k}: {one_line(e)}")
    if "conv" not in graphs:
        return {}
    t = timeit(graphs, reps, device, calls=LOOP_CALLS)
    return {k: v.best / t["conv"].best for k, v in t.items()}


def _env(device: torch.device) -> str:
    if device.type == "cuda":
        return f"device cuda ({torch.cuda.get_device_name(device)}), torch {torch.__version__}"
    return f"device cpu, {torch.get_num_threads()} threads, torch {torch.__version__}"


def _ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def _ms(t: float) -> str:
    return f"{t * 1e3:.2f}"


# ------------------------------------------------------------------------------------------------
# (a) Linear
# ------------------------------------------------------------------------------------------------


def bench_linear(device: torch.device, quick: bool, echo: Echo) -> list[dict[str, Any]]:
    """``linear`` (module doc): fast DCTpSLinear vs nn.Linear, forward+backward."""
    from dctps.layers import DCTpSLinear

    batch, density = 128, 0.001
    reps = 3 if quick else 10
    targets = {4096: 0.15, 8192: 0.08}
    echo(f"== linear: forward+backward, batch {batch}, density {density:.1%}, best of {reps}; "
         f"{_env(device)}")  # fmt: skip
    echo(f"{'size':>6} {'nnz':>8} {'nn.Linear ms':>13} {'DCTpS fast ms':>14} {'ratio':>7} "
         f"{'median ratio':>13} {'target':>7}")  # fmt: skip
    rows = []
    for n in (1024, 4096, 8192):
        torch.manual_seed(0)
        x = torch.randn(batch, n, device=device, requires_grad=True)
        dense = nn.Linear(n, n, device=device)
        nnz = round(density * n * n)
        fast = DCTpSLinear(n, n, nnz, seed=0, mode="fast", device=device)
        t = timeit({"dense": _fwd_bwd(dense, x), "fast": _fwd_bwd(fast, x)}, reps, device)
        ratio = t["fast"].best / t["dense"].best
        med = t["fast"].median / t["dense"].median
        tgt = targets.get(n)
        echo(f"{n:>6} {nnz:>8} {_ms(t['dense'].best):>13} {_ms(t['fast'].best):>14} "
             f"{ratio:>7.3f} {med:>13.3f} {'<=' + str(tgt) if tgt else '-':>7}")  # fmt: skip
        rows.append({"size": n, "nnz": nnz, "dense_s": t["dense"].best,
                     "fast_s": t["fast"].best, "ratio": ratio, "median_ratio": med,
                     "target": tgt, "D_built": fast.basis_built})  # fmt: skip
        del dense, fast, x
    return rows


# ------------------------------------------------------------------------------------------------
# (b) Conv
# ------------------------------------------------------------------------------------------------


def conv_shapes(names: tuple[str, ...] = ("resnet18", "vgg19"), density: float = 0.001):
    """Distinct convs of the models at 32x32: ``(model, cin, cout, k, stride, pad, groups, H,
    nnz)``, ``nnz`` the layer's EPL budget at ``density``.

    Distinct by model and geometry (the first such layer's budget): a VGG19 conv with a ResNet18
    conv's geometry is listed again with VGG19's own budget, since the sparse paths' cost grows
    with ``nnz``.
    """
    from dctps.models import build
    from dctps.sparsify import sparsify

    seen: dict[tuple, tuple] = {}
    for name in names:
        model = sparsify(build(name, num_classes=10), density, seed=0)
        sizes: dict[str, int] = {}

        def hook(mod: nn.Module, inp: tuple, out: Any, sizes: dict = sizes) -> None:
            sizes[mod.dctps_bench_name] = inp[0].shape[-1]

        hooks = []
        for mname, m in model.named_modules():
            if hasattr(m, "kernel_size") and hasattr(m, "values"):
                m.dctps_bench_name = mname
                hooks.append(m.register_forward_hook(hook))
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 32, 32))
        for h in hooks:
            h.remove()
        for mname, m in model.named_modules():
            if mname in sizes:
                key = (m.in_channels, m.out_channels, m.kernel_size[0], m.stride[0],
                       m.padding[0], m.groups, sizes[mname])  # fmt: skip
                if (name, key) not in seen:
                    seen[(name, key)] = (name, *key, m.nnz)
    return list(seen.values())


class TwoConv(nn.Module):
    """The reference code's scheme: a conv with ``alpha * D`` plus a conv with a masked ``S``."""

    D: torch.Tensor
    mask: torch.Tensor

    def __init__(self, layer: Any):  # a DCTpSConv2d
        super().__init__()
        self.layer = layer
        self.register_buffer("D", layer.D.detach().clone())
        self.register_buffer("mask", (layer.sparse_weight() != 0).to(layer.D.dtype) + 0.0)
        self.weight = nn.Parameter(layer.sparse_weight().detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lay = self.layer
        a = F.conv2d(x, lay.alpha * self.D, None, lay.stride, lay.padding, lay.dilation,
                     lay.groups)  # fmt: skip
        b = F.conv2d(x, self.weight * self.mask, None, lay.stride, lay.padding, lay.dilation,
                     lay.groups)  # fmt: skip
        return a + b


def bench_conv(device: torch.device, quick: bool, echo: Echo) -> list[dict[str, Any]]:
    """``conv`` (module doc): every DCTpS conv path vs nn.Conv2d and the two-conv scheme."""
    from dctps import fast as fastmod
    from dctps.layers import DCTpSConv2d

    batch = 32 if quick else 128
    reps = 3 if quick else 5
    density = 0.001
    echo(f"== conv: forward+backward, batch {batch}, CIFAR 32x32 inputs, nnz = EPL budget at "
         f"{density:.1%}, best of {reps}; {_env(device)}")  # fmt: skip
    echo(
        "   times in ms; ratios vs nn.Conv2d; '-' = path ruled out by the cost model "
        "(dctps.fast.candidates)"
    )
    echo(
        "   'dense' / 'fast' / 'factor' / 'auto': DCTpSConv2d(mode=...), 'auto path' the path "
        "auto chose; 'two-conv': the reference code's scheme; 'control': a second nn.Conv2d "
        "like the first, timed beside it (how far from 1.00 noise moves a ratio)"
    )
    head = (f"{'model':<9} {'conv':<22} {'H':>3} {'nnz':>6} {'nn.Conv2d':>10} {'control':>8} "
            f"{'two-conv':>9} {'dense':>7} {'fast':>7} {'factor':>7} {'auto':>7} "
            f"{'auto path':>9}")  # fmt: skip
    if device.type == "cuda":
        echo(
            f"   each timing: {LOOP_CALLS} back-to-back calls; 'auto sync': auto's ratio with "
            "every call synchronised"
        )
        echo(
            "   'graph auto' / 'graph two': the same calls captured in CUDA graphs, both sides "
            "(a ratio of GPU time, without the host's per-operator work)"
        )
        head += f" {'auto sync':>10} {'graph auto':>10} {'graph two':>9}"
    echo(head)
    rows = []
    for name, cin, cout, k, stride, pad, groups, h, nnz in conv_shapes(density=density):
        torch.manual_seed(0)
        x = torch.randn(batch, cin, h, h, device=device, requires_grad=True)
        conv = nn.Conv2d(cin, cout, k, stride, pad, bias=False, groups=groups, device=device)

        geom = {"kernel_size": k, "stride": stride, "padding": pad, "groups": groups, "nnz": nnz}

        def make(mode: str, geom: dict = geom, cin: int = cin, cout: int = cout) -> DCTpSConv2d:
            lay = DCTpSConv2d(cin, cout, **geom, bias=False, seed=0, mode=mode, device=device)
            with torch.no_grad():
                lay.values.normal_(0, 0.01)
            return lay

        dense = make("dense")
        cands = fastmod.candidates(dense)
        control = copy.deepcopy(conv)
        fns = {"conv": _fwd_bwd(conv, x), "control": _fwd_bwd(control, x),
               "two": _fwd_bwd(TwoConv(dense), x), "dense": _fwd_bwd(dense, x)}  # fmt: skip
        if "fast" in cands:
            fns["fast"] = _fwd_bwd(make("fast"), x)
        if "factor" in cands:
            fns["factor"] = _fwd_bwd(make("factor"), x)
        auto = make("auto")
        fastmod.clear_auto_cache()
        fns["auto"] = _fwd_bwd(auto, x)  # the first (warm-up) call runs the micro-benchmark
        cuda = device.type == "cuda"
        t = timeit(fns, reps, device, calls=LOOP_CALLS if cuda else 1)
        path = next(iter(fastmod.auto_cache().values()))[0]
        base = t["conv"].best
        r = {k: v.best / base for k, v in t.items()}
        sync_ratio = None
        graph: dict[str, float] = {}
        if cuda:
            lat = timeit({k: fns[k] for k in ("conv", "auto")}, reps, device)
            sync_ratio = lat["auto"].best / lat["conv"].best
            graph = _graph_ratios(fns, ("auto", "two"), reps, device, echo)

        def cell(key: str, r: dict[str, float] = r) -> str:
            return f"{r[key]:.2f}" if key in r else "-"

        desc = f"{cin}->{cout} k{k} s{stride}" + (f" g{groups}" if groups > 1 else "")
        echo(f"{name:<9} {desc:<22} {h:>3} {nnz:>6} {_ms(base):>10} {cell('control'):>8} "
             f"{cell('two'):>9} "
             f"{cell('dense'):>7} {cell('fast'):>7} {cell('factor'):>7} {cell('auto'):>7} "
             f"{path:>9}" + ("" if sync_ratio is None else f" {sync_ratio:>10.2f}"
             f" {_ratio(graph.get('auto')):>10} {_ratio(graph.get('two')):>9}"))  # fmt: skip
        rows.append({"model": name, "cin": cin, "cout": cout, "k": k, "stride": stride, "H": h,
                     "nnz": nnz, "conv_s": base, "ratios": r, "auto_path": path,
                     "median_auto_ratio": t["auto"].median / t["conv"].median,
                     "auto_sync_ratio": sync_ratio, "graph_ratios": graph or None})  # fmt: skip
    wins = [row for row in rows if row["auto_path"] != "dense"]
    worst = max(rows, key=lambda row: row["ratios"]["auto"])
    echo(f"auto picked a transform path in {len(wins)} of {len(rows)} shapes:")
    for row in wins:
        echo(f"  {row['model']} {row['cin']}->{row['cout']} k{row['k']} s{row['stride']} "
             f"H={row['H']}: {row['auto_path']} at {row['ratios']['auto']:.2f}x nn.Conv2d "
             f"(dense DCTpS {row['ratios']['dense']:.2f}x)")  # fmt: skip
    controls = [row["ratios"]["control"] for row in rows]
    echo(f"worst auto ratio: {worst['ratios']['auto']:.2f}x ({worst['cin']}->{worst['cout']} "
         f"k{worst['k']} H={worst['H']}); target <= 1.10x; the control nn.Conv2d read "
         f"{min(controls):.2f}-{max(controls):.2f}x")  # fmt: skip
    graphed = [row for row in rows if row["graph_ratios"] and "auto" in row["graph_ratios"]]
    if graphed:
        g = max(graphed, key=lambda row: row["graph_ratios"]["auto"])
        echo(f"worst auto ratio as CUDA graphs (GPU time): {g['graph_ratios']['auto']:.2f}x "
             f"({g['cin']}->{g['cout']} k{g['k']} H={g['H']})")  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------
# (c) Training step
# ------------------------------------------------------------------------------------------------


def aten_ops(fn: Callable[[], Any]) -> int | None:
    """Number of ATen operators ``fn()`` dispatches, views excluded: on a GPU each one is a kernel
    launch (or a host-side op), the cost that bounds a small eager step. ``None`` where this torch
    lacks the (private) dispatch-mode hook."""
    try:
        from torch.utils._python_dispatch import TorchDispatchMode
    except ImportError:  # pragma: no cover - every supported torch has it
        return None

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if not func.is_view and func.overloadpacket.__name__ != "detach":
                self.n += 1
            return func(*args, **(kwargs or {}))

    with Count() as c:
        fn()
    return c.n


def bench_step(device: torch.device, quick: bool, echo: Echo) -> list[dict[str, Any]]:
    """``step`` (module doc): one ResNet18 SGD step, DCTpS at 0.1% (``auto``) vs dense, and the
    same DCTpS model with :func:`dctps.batch_rebuild` (one batched weight rebuild per step)."""
    import copy

    from dctps import fast as fastmod
    from dctps.batched import batch_rebuild
    from dctps.models import build
    from dctps.sparsify import sparsify

    batch = 32 if quick else 128
    reps = 3 if quick else 5
    density = 0.001
    echo(f"== step: ResNet18 training step (forward, backward, SGD momentum 0.9), batch {batch}, "
         f"CIFAR 32x32, DCTpS at {density:.1%} mode='auto' vs dense; best of {reps}; "
         f"{_env(device)}")  # fmt: skip
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32, device=device)
    target = torch.randint(0, 10, (batch,), device=device)
    dense = build("resnet18").to(device)
    sparse = sparsify(build("resnet18"), density, seed=0).to(device)
    fastmod.set_mode(sparse, "auto")
    fastmod.clear_auto_cache()

    def stepper(model: nn.Module) -> Callable[[], None]:
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                              momentum=0.9)  # fmt: skip

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), target).backward()
            opt.step()

        return step

    t0 = time.perf_counter()
    s_step = stepper(sparse)
    s_step()  # auto's micro-benchmarks run here
    tune = time.perf_counter() - t0
    batched = copy.deepcopy(sparse)  # with auto's decisions: the dense-path layers are batched
    batch_rebuild(batched)
    steps = {"dense": stepper(dense), "dctps": s_step, "batched": stepper(batched)}
    calls = LOOP_CALLS if device.type == "cuda" else 1
    if calls > 1:
        echo(f"each timing: {calls} back-to-back steps")
    t = timeit(steps, reps, device, calls=calls)
    ops = {k: aten_ops(f) for k, f in steps.items()}
    ratio = t["dctps"].best / t["dense"].best
    ratio_b = t["batched"].best / t["dense"].best
    paths: dict[str, int] = {}
    for path, _ in fastmod.auto_cache().values():
        paths[path] = paths.get(path, 0) + 1
    echo(f"{'':>17} {'ms':>9} {'ratio':>7} {'median ratio':>13} {'aten ops':>9} {'target':>7}")
    for key, label in (("dense", "dense"), ("dctps", "DCTpS"), ("batched", "DCTpS batched")):
        med = t[key].median / t["dense"].median
        r = t[key].best / t["dense"].best
        n_ops = "-" if ops[key] is None else str(ops[key])
        goal = "" if key == "dense" else "<=1.05"
        echo(f"{label:>17} {_ms(t[key].best):>9} {r:>7.3f} {med:>13.3f} {n_ops:>9} {goal:>7}")
    echo(f"auto decisions (distinct layer signatures): {paths}; first step incl. "
         f"micro-benchmarks: {tune:.1f} s")  # fmt: skip
    if set(paths) - {"dense"}:
        echo("the batched model batches only the layers on the dense path; the fast and factor "
             "paths dispatch many operators of their own. benchmarks/step_ops.py counts with "
             "every layer batched.")  # fmt: skip
    return [{"batch": batch, "dense_s": t["dense"].best, "dctps_s": t["dctps"].best,
             "batched_s": t["batched"].best, "ratio": ratio, "batched_ratio": ratio_b,
             "aten_ops": ops, "paths": paths, "tune_s": tune}]  # fmt: skip


# ------------------------------------------------------------------------------------------------
# (d) Checkpoints
# ------------------------------------------------------------------------------------------------


def bench_ckpt(device: torch.device, quick: bool, echo: Echo) -> list[dict[str, Any]]:
    """``ckpt`` (module doc): ResNet50 checkpoint bytes, ``dctps.save`` vs ``torch.save``."""
    from dctps.checkpoint_io import save
    from dctps.layers import DCTpSLayer
    from dctps.models import build
    from dctps.sparsify import sparsify

    echo(
        "== ckpt: ResNet50 (10 classes) checkpoint bytes; dense = torch.save(state_dict); "
        "DCTpS = dctps.save (values float32 + int32 indices + alphas + BN/bias)"
    )
    buf = io.BytesIO()
    torch.save(build("resnet50").state_dict(), buf)
    dense_bytes = buf.tell()
    echo(f"{'density':>8} {'nnz':>10} {'DCTpS bytes':>12} {'torch.save(DCTpS sd)':>21} "
         f"{'dense bytes':>12} {'dense/DCTpS':>12}")  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in (0.01, 0.001, 0.0001):
            model = sparsify(build("resnet50"), d, seed=0)
            path = os.path.join(tmp, "m.dctps")
            save(model, path, arch={"name": "resnet50", "num_classes": 10})
            size = os.path.getsize(path)
            b2 = io.BytesIO()
            torch.save(model.state_dict(), b2)
            nnz = sum(m.nnz for m in model.modules() if isinstance(m, DCTpSLayer))
            echo(f"{d:>8.2%} {nnz:>10,} {size:>12,} {b2.tell():>21,} {dense_bytes:>12,} "
                 f"{dense_bytes / size:>11.1f}x")  # fmt: skip
            rows.append({"density": d, "nnz": nnz, "bytes": size, "sd_bytes": b2.tell(),
                         "dense_bytes": dense_bytes, "ratio": dense_bytes / size})  # fmt: skip
    echo("target at 0.1%: dense/DCTpS >= 150")
    return rows


# ------------------------------------------------------------------------------------------------
# (e) Memory
# ------------------------------------------------------------------------------------------------


def _proc_status_bytes(key: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process from ``/proc/self/status`` in bytes (Linux), or
    ``None`` where there is no such file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset this process's resident-memory high-water mark (``VmHWM``) to its current size, as
    ``echo 5 > /proc/self/clear_refs`` does (Linux 4.0+); whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return _proc_status_bytes("VmHWM") is not None


def _maxrss_bytes() -> int | None:
    """This process's ``ru_maxrss`` in bytes (Linux and the BSDs report kilobytes, macOS
    bytes), or ``None`` without the ``resource`` module (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    rss = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return rss if sys.platform == "darwin" else rss * 1024


def _memory_child(
    variant: str, device_name: str, batch: int, n: int, threads: int = 0
) -> dict[str, Any]:
    """One training step of the ``n x n`` layer in this (fresh) process; the peak memory growth
    (``bytes``) and the whole process's peak (``total``: with what importing torch holds).

    On the CPU the peak is the resident-memory high-water mark, reset before the step where Linux
    allows it: otherwise the mark that importing torch left can exceed a small step's own peak
    (a fast DCTpS step once measured 0.0 MB). Elsewhere ``ru_maxrss`` growth, an underestimate
    for such steps (reported as ``peak``)."""
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device_name)
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # the peak statistics below read the current device
    torch.manual_seed(0)
    x = torch.randn(batch, n, device=device)
    # the first optimizer of a process imports torch._dynamo (813 modules, about 70 MB resident):
    # done before the reset, or both sides' "step" counted it (the fast side's 129 MB was 58 MB
    # of step and 71 MB of imports, a review found)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
    how = "cuda"
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.max_memory_allocated()
    elif _reset_peak_rss():
        how = "VmHWM"
        base = _proc_status_bytes("VmRSS") or 0
    else:
        how = "ru_maxrss"
        base = _maxrss_bytes() or 0
    if variant == "dense":
        layer: nn.Module = nn.Linear(n, n, device=device)
    else:
        from dctps.layers import DCTpSLinear

        layer = DCTpSLinear(n, n, round(0.001 * n * n), seed=0, mode="fast", device=device)
    opt = torch.optim.SGD(layer.parameters(), lr=1e-3, momentum=0.9)
    for _ in range(2):
        opt.zero_grad(set_to_none=True)
        layer(x).square().mean().backward()
        opt.step()
    if how == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    elif how == "VmHWM":
        peak = _proc_status_bytes("VmHWM") or 0
    else:
        peak = _maxrss_bytes() or 0
    built = bool(getattr(layer, "basis_built", False))
    total = peak if how == "VmHWM" else None  # the others do not see the whole process
    return {"variant": variant, "bytes": peak - base, "total": total, "D_built": built, "how": how}


def bench_memory(device: torch.device, quick: bool, echo: Echo) -> list[dict[str, Any]]:
    """``memory`` (module doc): peak memory of a training step, fast DCTpS vs dense Linear."""
    batch, n = 128, 8192
    what = (
        "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "growth of the resident-memory peak, reset before the step on Linux"
    )
    echo(f"== memory: peak memory of 2 training steps (SGD momentum) of Linear {n}x{n}, batch "
         f"{batch}, each in a fresh subprocess ({what}, counting parameters, gradients, "
         f"optimizer state and activations); {_env(device)}")  # fmt: skip
    if device.type == "cpu" and _proc_status_bytes("VmRSS") is None and _maxrss_bytes() is None:
        raise DctpsError(
            "the memory benchmark cannot read a process's peak memory on this system (neither "
            "/proc nor the resource module: Windows); run it on Linux or macOS, or with "
            "--device cuda"
        )
    res = {}
    for variant in ("dense", "fast"):
        cmd = [sys.executable, "-m", "dctps.bench", "_memory_child", variant, str(device),
               str(batch), str(n), str(torch.get_num_threads())]  # fmt: skip
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise DctpsError(f"memory benchmark child failed: {out.stderr.strip()[-500:]}")
        res[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    # the dense step holds at least its weight, gradient and momentum (float32): a reading below
    # that means the measurement failed, and its ratio must not pass for a result
    floor = 3 * 4 * n * n
    if res["dense"]["bytes"] < floor or res["fast"]["bytes"] <= 0:
        raise DctpsError(
            f"memory benchmark: implausible readings ({res['dense']['how']}): dense "
            f"{res['dense']['bytes'] / 2**20:.1f} MB (its parameters, gradients and momentum "
            f"alone take {floor / 2**20:.1f} MB), DCTpS fast {res['fast']['bytes'] / 2**20:.1f} "
            "MB; run it again on an idle machine"
        )
    ratio = res["fast"]["bytes"] / res["dense"]["bytes"]
    echo(f"{'':>22} {'dense MB':>10} {'DCTpS fast MB':>14} {'ratio':>7} {'target':>7} "
         f"{'D built':>8}")  # fmt: skip
    echo(f"{'the step (the target)':>22} {res['dense']['bytes'] / 2**20:>10.1f} "
         f"{res['fast']['bytes'] / 2**20:>14.1f} {ratio:>7.3f} {'<=0.25':>7} "
         f"{str(res['fast']['D_built']):>8}")  # fmt: skip
    row = {"dense_bytes": res["dense"]["bytes"], "fast_bytes": res["fast"]["bytes"],
           "ratio": ratio, "D_built": res["fast"]["D_built"]}  # fmt: skip
    if res["dense"].get("total") and res["fast"].get("total"):
        # the whole process, torch's own few hundred MB included in both: for reference
        total = res["fast"]["total"] / res["dense"]["total"]
        echo(f"{'the whole process':>22} {res['dense']['total'] / 2**20:>10.1f} "
             f"{res['fast']['total'] / 2**20:>14.1f} {total:>7.3f}")  # fmt: skip
        row.update(dense_total=res["dense"]["total"], fast_total=res["fast"]["total"],
                   total_ratio=total)  # fmt: skip
    return [row]


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------

_BENCHES = {
    "linear": bench_linear,
    "conv": bench_conv,
    "step": bench_step,
    "ckpt": bench_ckpt,
    "memory": bench_memory,
}


def run(name: str = "all", quick: bool = False, device: str = "cpu", echo: Echo = print,
        threads: int = 0) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    """Run benchmark ``name`` (one of :data:`NAMES`, or ``'all'``); return its rows by name.

    ``threads > 0`` sets ``torch.set_num_threads`` for the run (1 thread gives the steadiest CPU
    numbers on a machine shared with other jobs); the caller's count is restored after.
    """
    before = torch.get_num_threads()
    set_threads(threads)
    try:
        return _run(name, quick, device, echo, threads)
    finally:
        torch.set_num_threads(before)


def positive_int(text: str) -> int:
    """An argparse ``type`` for counts (repetitions, steps, batch sizes, ...): an integer of at
    least 1 (a 0 divided by zero, or timed nothing and printed ``inf``/``nan``). argparse reports
    a refusal as ``argument --reps: must be at least 1, got 0`` and exits with status 2."""
    n = int(text)  # a ValueError: argparse's own "invalid positive_int value: 'x'"
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def bench_device(device: str) -> torch.device:
    """A benchmark's ``--device`` (``cpu``, ``cuda`` or ``cuda:N``) as a device this machine
    has, or a :class:`DctpsError` saying what is valid (the scripts' tracebacks said less)."""
    valid = "'cpu', 'cuda', 'cuda:N' or 'auto'"
    if device == "auto":  # as train, sweep and figure take it
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise DctpsError(f"--device must be {valid}, got {device!r}")
    try:
        dev = torch.device(device)
    except RuntimeError:  # cuda:x, cuda:-1
        raise DctpsError(f"--device must be {valid}, got {device!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DctpsError(no_cuda(f"--device {device}", "give --device cpu"))
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise DctpsError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA "
            f"device(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return dev


def _run(name: str, quick: bool, device: str, echo: Echo, threads: int,
         ) -> dict[str, list[dict[str, Any]]]:  # fmt: skip
    if name != "all" and name not in _BENCHES:
        raise unknown_name("benchmark", name, [*NAMES, "all"])
    dev = bench_device(device)
    if dev.index is not None:
        # the memory statistics, synchronisations and graph-capture streams below act on the
        # current device
        torch.cuda.set_device(dev)
    names = list(_BENCHES) if name == "all" else [name]
    if dev.type == "cpu" and not threads and torch.get_num_threads() > 1:
        echo(f"note: {torch.get_num_threads()} threads (torch's default). On a machine shared "
             "with other work the many small operators of the sparse paths can wait on a "
             "preempted thread and run up to tens of times slower; --threads 1 gives the "
             "steadiest ratios")  # fmt: skip
    out = {}
    for n in names:
        t0 = time.perf_counter()
        out[n] = _BENCHES[n](dev, quick, echo)
        tag = ", --quick" if quick and n != "memory" else ""  # memory runs its full size
        echo(f"({n}: {time.perf_counter() - t0:.0f} s{tag})\n")
    return out


def main(argv: list[str] | None = None, default: str = "all") -> None:
    """``python benchmarks/bench_X.py [--quick] [--device cuda] [--threads N] [--json FILE]``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_memory_child"]:
        _, variant, device, batch, n, threads = argv
        print(json.dumps(_memory_child(variant, device, int(batch), int(n), int(threads))))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument(
        "name", nargs="?", default=default, help=f"{' | '.join(NAMES)} | all; default %(default)s"
    )
    p.add_argument(
        "--quick", action="store_true",
        help="smaller batches / fewer repetitions (memory: the same run, whose size is the target)",
    )  # fmt: skip
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N; default %(default)s")
    p.add_argument(
        "--threads", type=int, default=0, help="torch CPU threads; default 0: torch's default"
    )
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    a = p.parse_args(argv)
    try:
        refuse_empty(a.json, "--json", "rows.json")
        if a.json:  # before the run: a bad path must not cost the whole benchmark's rows
            check_file_target(a.json, "benchmark rows", "rows.json")
            make_parent(a.json, "benchmark rows", "rows.json")
        rows = run(a.name, a.quick, a.device, threads=a.threads)
        if a.json:
            try:
                with atomic_write(a.json, "benchmark rows") as f:
                    json.dump(rows, f, indent=1, default=str)
            except OSError as e:
                raise cannot_write("benchmark rows", a.json, e) from None
    except DctpsError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None


if __name__ == "__main__":
    main()
