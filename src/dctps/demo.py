"""``dctps demo``: DCTpS against random pruning at equal density, on the embedded digits data.

A 4-layer MLP (64 -> 256 -> 256 -> 256 -> 10, 150k weights) is trained dense, as DCTpS at 10% and 1%
density, and randomly pruned at the same densities with the same per-layer budgets (EPL), so the
only difference between the sparse rows is the DCT offset ``alpha * D``. Each network is trained
with Adam; the best-validation epoch is evaluated on the held-out test set.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

import dctps
from dctps import progress
from dctps.data import build as build_data
from dctps.data.loader import Loader
from dctps.errors import check_flag, check_seed, set_threads


@dataclass
class DemoRow:
    method: str
    density: float
    trainable_weights: int
    test_acc: float
    seconds: float


def demo_model(width: int = 256) -> nn.Module:
    """The demo's MLP on flattened 8x8 digits: 64 -> 256 -> 256 -> 256 -> 10."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10),
    )  # fmt: skip


@torch.no_grad()
def _accuracy(model: nn.Module, loader: Loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += int((model(x).argmax(1) == y).sum())
        total += y.numel()
    model.train()
    return correct / total


def _prepare(method: str, density: float, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = demo_model()
    if method == "dctps":
        dctps.sparsify(model, density, allocation="epl", seed=seed)
    elif method == "random":
        from dctps.pruning import prune

        prune(model, density, "random", allocation="epl", seed=seed)
    return model


def train_one(method: str, density: float, epochs: int, seed: int, bar: Any) -> DemoRow:
    """Train one network and return its row (test accuracy of the best-validation epoch)."""
    data = build_data("digits", split_seed=seed)
    gen = torch.Generator().manual_seed(seed)
    train = Loader(data.train_x, data.train_y, 64, shuffle=True, augment=False, info=data.info,
                   generator=gen)  # fmt: skip
    val = Loader(data.val_x, data.val_y, 512, shuffle=False, augment=False, info=data.info)
    test = Loader(data.test_x, data.test_y, 512, shuffle=False, augment=False, info=data.info)
    start = time.perf_counter()
    model = _prepare(method, density, seed)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    best_val, best_state = -1.0, None
    for epoch in range(epochs):
        for x, y in train:
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
        val_acc = _accuracy(model, val)
        if val_acc > best_val:
            best_val = val_acc
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if bar is not None:
            # in percent, as the table and dctps train's lines give them
            bar.set_postfix_str(f"{method} {density:.0%} ep {epoch + 1} val {val_acc:.2%}")
            bar.update(1)
    progress.mark(bar)  # in a log: a line per network, not per epoch
    assert best_state is not None
    model.load_state_dict(best_state)
    c = dctps.count(model)
    return DemoRow(method, density, c.nonzeros, _accuracy(model, test),
                   time.perf_counter() - start)  # fmt: skip


def format_table(rows: list[DemoRow]) -> str:
    """The demo's plain-text table: method, density, trainable weights, test accuracy, time."""
    lines = [f"{'method':<8} {'density':>8} {'trainable weights':>18} {'test acc':>9} {'time':>7}"]
    for r in rows:
        lines.append(
            f"{r.method:<8} {r.density:>8.2%} {r.trainable_weights:>18,} {r.test_acc:>9.2%} "
            f"{r.seconds:>6.1f}s"
        )
    return "\n".join(lines)


def run_demo(
    epochs: int = 20,
    seed: int = 0,
    threads: int = 0,
    echo: Callable[[str], Any] = print,
    progress: bool = True,
) -> list[DemoRow]:
    """Train the five networks, print the table and a one-line verdict (through ``echo``);
    return the rows. ``threads``: torch's threads while it runs (0: as they are); restored
    after it, as torch's global random generator, which each network's seed sets.
    ``progress``: a bar on stderr (a line per network in a log)."""
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise dctps.DctpsError(f"--epochs must be an integer >= 1, got {epochs!r}")
    check_seed(seed, "--seed")
    check_flag(progress, "progress")
    before = torch.get_num_threads()  # a notebook's kernel kept the demo's count
    set_threads(threads)
    try:
        with torch.random.fork_rng(devices=[]):  # the demo trains on the CPU
            return _run(epochs, seed, echo, progress)
    finally:
        torch.set_num_threads(before)


def _run(
    epochs: int, seed: int, echo: Callable[[str], Any], progress_on: bool = True
) -> list[DemoRow]:
    plan = [("dense", 1.0), ("dctps", 0.1), ("random", 0.1), ("dctps", 0.01), ("random", 0.01)]
    # the first optimizer a process builds imports torch._dynamo (about 1.2 s): not the first
    # row's training time, which the table would otherwise show as dense's
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])
    rows = []
    bar = progress.make_bar(epochs * len(plan), "demo", "epoch", enabled=progress_on)
    try:
        for method, density in plan:
            rows.append(train_one(method, density, epochs, seed, bar))
    finally:
        if bar is not None:
            bar.close()
    echo(format_table(rows))
    by = {(r.method, r.density): r.test_acc for r in rows}
    for d in (0.1, 0.01):
        gap = by[("dctps", d)] - by[("random", d)]
        echo(f"at {d:.0%} density DCTpS is {gap * 100:+.1f} points vs random pruning")
    return rows
