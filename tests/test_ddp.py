"""`dctps train` under torchrun: 2 gloo CPU ranks train like 1 process on the same global batch
(the ranks with the batched rebuild, the one process without), and report the accuracy of the
model they save."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch.distributed as dist

import dctps.data
from dctps.results import Store
from dctps.train.checkpoint import model_from_checkpoint
from dctps.train.loop import evaluate

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")


def _train(out, root, nproc: int, *extra: str) -> subprocess.CompletedProcess:
    # LeNet-5 has no BatchNorm, so per-rank batch statistics cannot make the runs differ.
    # 288 training images, global batch 32: 9 steps per epoch, 16 images per rank and step.
    return _launch(
        nproc,
        "train",
        "--model",
        "lenet5",
        "--dataset",
        "cifar10",
        "--data-root",
        str(root),
        "--method",
        "dctps",
        "--density",
        "0.05",
        "--epochs",
        "2",
        "--batch-size",
        "32",
        "--device",
        "cpu",
        "--out",
        str(out),
        "-q",
        *extra,
    )


def _launch(nproc: int, *args: str) -> subprocess.CompletedProcess:
    """``dctps ARGS`` in one process, or under torchrun with ``nproc`` gloo ranks."""
    launcher = [sys.executable, "-m", "dctps.cli"]
    if nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "dctps.cli",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return subprocess.run([*launcher, *args], env=env, capture_output=True, text=True, timeout=300)


def test_two_gloo_ranks_match_one_process(fake_cifar10, tmp_path):
    one = _train(tmp_path / "one", fake_cifar10, 1)
    assert one.returncode == 0, one.stderr
    # the ranks also rebuild their weights batched (the CUDA default): DDP's gradient hooks must
    # see every gradient of the batched backward
    two = _train(tmp_path / "two", fake_cifar10, 2, "--batched-rebuild", "on")
    assert two.returncode == 0, two.stderr
    assert two.stdout.count(" done: val") == 1  # only rank 0 reports

    rows = {}
    for name in ("one", "two"):
        s = Store(tmp_path / name)
        (run,) = s.query()  # exactly one run row: only rank 0 writes the store
        rows[name] = (run, s.epochs(run["hash"]))
    (r1, e1), (r2, e2) = rows["one"], rows["two"]
    assert r1["hash"] == r2["hash"] and r2["status"] == "done"
    assert [e["epoch"] for e in e2] == [1, 2]
    for a, b in zip(e1, e2, strict=True):
        for key in ("train_loss", "val_loss"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4), (key, a[key], b[key])
        assert abs(a["train_acc"] - b["train_acc"]) <= 1 / 288 + 1e-12
    assert abs(r1["val_acc"] - r2["val_acc"]) <= 1 / 32 + 1e-12
    assert r1["nonzeros"] == r2["nonzeros"]
    run_dir = tmp_path / "two" / "runs" / r2["hash"]
    assert sorted(p.name for p in run_dir.iterdir() if not p.name.startswith(".")) == [
        "best.pt",
        "config.yaml",
        "last.pt",
    ]  # prev.pt: dropped once the run is done


def test_reported_val_is_that_of_the_saved_model(tmp_path):
    # ResNet18 has BatchNorm. DDP copies rank 0's running statistics to the other ranks only at
    # the start of a training forward, so after an epoch every rank holds statistics updated by
    # its own last batch; evaluated with them, the ranks would together report a model that was
    # never saved. 128 training digits, global batch 32: 4 steps per epoch; 128 validation digits,
    # 64 per rank. The reported numbers must be those of a one-process evaluation of best.pt.
    out = tmp_path / "bn"
    two = _launch(2, "train", "--model", "resnet18", "--dataset", "digits", "--method", "dctps",
                  "--density", "0.05", "--epochs", "2", "--batch-size", "32", "--subset", "128",
                  "--device", "cpu", "--out", str(out), "-q")  # fmt: skip
    assert two.returncode == 0, two.stderr
    store = Store(out)
    (run,) = store.query()
    epochs = {e["epoch"]: e for e in store.epochs(run["hash"])}
    model, saved = model_from_checkpoint(out / "runs" / run["hash"] / "best.pt")
    assert saved["epoch"] == run["best_epoch"]
    d = saved["config"]["data"]
    splits = dctps.data.build(
        d["dataset"], val_fraction=d["val_fraction"], split_seed=d["split_seed"], subset=d["subset"]
    )

    def one_process(x, y):  # the saved model only, all of the split in one process
        loader = dctps.data.Loader(x, y, 1000, shuffle=False, augment=False, info=splits.info)
        return evaluate(model, loader)

    loss, acc = one_process(splits.val_x, splits.val_y)
    assert acc == run["val_acc"]
    reported = epochs[run["best_epoch"]]["val_loss"]
    assert math.isclose(loss, reported, rel_tol=1e-5), (loss, reported)
    assert one_process(splits.test_x, splits.test_y)[1] == run["test_acc"]


def test_teardown_frees_the_ddp_model_before_destroying_the_group(tmp_path, monkeypatch):
    """DDP sits in a reference cycle and holds the process group: left to interpreter exit, its
    gloo threads aborted a finished rank now and then (SIGABRT, "terminate called without an
    active exception"; about 1 run in 14 on a loaded machine). teardown collects it first."""
    import gc
    import weakref

    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP

    from dctps.train.distributed import DistContext, teardown

    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
    )
    seen = []
    real = dist.destroy_process_group
    was_enabled = gc.isenabled()
    gc.disable()  # no automatic collection may do teardown's work for it
    try:
        net = DDP(torch.nn.Linear(4, 2))
        net(torch.randn(3, 4)).sum().backward()
        # DDP's own cycle (its hooks) does not form in every process: make one, so that only a
        # collection frees it, as happened in the aborted runs
        net.cycle = [net]
        alive = weakref.ref(net)
        del net
        assert alive() is not None
        monkeypatch.setattr(dist, "destroy_process_group", lambda: (seen.append(alive()), real()))
        teardown(DistContext(owns_group=True))
    finally:
        if was_enabled:
            gc.enable()
    assert seen == [None] and not dist.is_initialized()


def test_a_sweep_under_torchrun_trains_run_after_run(fake_cifar10, tmp_path):
    """Each run had created and destroyed its own process group on the same rendezvous: the
    next run's first collective failed now and then ("Connection reset by peer"; 7 of 13 sweeps
    of two runs in a review) or hung. The sweep now joins the group once for all its runs."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"base: {{data: {{dataset: cifar10, root: {fake_cifar10}}}, device: cpu,\n"
        "       optim: {epochs: 1, batch_size: 32}}\n"
        "models: [lenet5]\nmethods: [dense, dctps, random, snip]\ndensities: [0.05]\n"
    )
    for attempt in range(2):
        r = _launch(2, "sweep", str(grid), "--out", str(tmp_path / f"s{attempt}"), "-q",
                    "--threads", "1")  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.count("4 runs: 4 done") == 1, r.stdout  # one summary, not one per rank
        rows = Store(tmp_path / f"s{attempt}").query()
        assert len(rows) == 4 and {row["status"] for row in rows} == {"done"}


def test_a_refusal_on_rank_0_alone_is_every_ranks_one_line(fake_cifar10, tmp_path):
    """Rank 0 alone opens the store and locks the run: its refusal left rank 1 waiting in a
    broadcast, which failed with a 60-line gloo traceback that buried rank 0's one line."""
    notes = tmp_path / "notes.txt"
    notes.write_text("not a database, but notes that must survive\n" * 20)
    r = _train(tmp_path / "out", fake_cifar10, 2, "--db", str(notes))
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"[rank {rank}] error: " in r.stderr and "not a results database" in r.stderr
    # torchrun's own report of a failed child follows; no rank fails in gloo
    assert "gloo" not in r.stderr and "Connection closed" not in r.stderr, r.stderr
    assert r.stderr.count("not a results database") == 2
    assert notes.read_text().startswith("not a database")


def test_a_run_that_raises_in_a_sweep_under_torchrun_stops_it_with_its_own_error(
    fake_cifar10, tmp_path
):
    """A DDP review: rank 0 refused a run's unreadable checkpoint and went on to the next run
    while rank 1 waited in the old run's barrier: the sweep hung (gloo's 30-minute timeout).
    Under torchrun a run's error now stops the sweep on every rank, naming it."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"base: {{data: {{dataset: cifar10, root: {fake_cifar10}}}, device: cpu,\n"
        "       optim: {epochs: 1, batch_size: 32}}\n"
        "models: [lenet5]\nmethods: [dctps]\ndensities: [0.05]\nseeds: [0, 1]\n"
    )
    out = tmp_path / "s"
    first = _launch(1, "sweep", str(grid), "--out", str(out), "-q", "--threads", "1")
    assert first.returncode == 0, first.stderr
    store = Store(out)
    (row,) = [r for r in store.query() if r["seed"] == 0]
    run_dir = out / "runs" / row["hash"]
    store.update(row["hash"], status="interrupted")  # as a killed run leaves it
    (run_dir / "best.pt").unlink()
    (run_dir / "prev.pt").unlink(missing_ok=True)
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[:1000])  # torn: no checkpoint to resume from
    r = _launch(2, "sweep", str(grid), "--out", str(out), "-q", "--threads", "1")
    assert r.returncode != 0
    for rank in (0, 1):
        assert f"[rank {rank}] error: " in r.stderr and "checkpoint" in r.stderr, r.stderr
    assert "Connection closed" not in r.stderr and "collective mismatch" not in r.stderr
