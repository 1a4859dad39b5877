"""Reliability: nothing is lost under SIGKILL, concurrent writers, full disks and numerical faults.

* A sweep whose worker processes (and whole process group) are SIGKILLed at random moments, during
  training, while a checkpoint is half written and inside store transactions, is relaunched until
  it completes: every run ends ``done`` with exactly the metrics of an uninterrupted sweep
  (bit-exact on CPU), every checkpoint on disk is readable, the store holds one row per run.
* 8 processes hammer one results database; a 9th is killed inside a write transaction.
* A full disk while writing a checkpoint, a sparse checkpoint or the store: one clear error, the
  previous good files and rows untouched, the run resumes to the same result afterwards.
* NaN/Inf loss or gradient stops a run as ``failed`` naming the epoch and step; all-zero saliency
  is a ``PruningFailed``.
* Same seed, same bits; another seed, other supports and masks.

``python -m pytest -q tests/test_reliability.py -m slow -s`` runs the long kill test and prints
the counts recorded in ``docs/RELIABILITY.md``.
"""

from __future__ import annotations

import errno
import json
import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import dctps
import dctps.layers
import dctps.models
from dctps.errors import DctpsError, PruningFailed
from dctps.pruning import prune
from dctps.results import Store
from dctps.results import sweep as sweep_mod
from dctps.results.sweep import expand_grid
from dctps.train import checkpoint as ckpt_io
from dctps.train import fit, loop
from dctps.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SparsityConfig

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="needs /proc and POSIX signals")

EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")
ROW_KEYS = ("status", "val_acc", "test_acc", "best_epoch", "weights", "nonzeros", "trainable")


def small_cfg(root: Path, **kw) -> RunConfig:
    """LeNet-5 on the fake CIFAR-10 (288 train / 32 val / 64 test images), batch 32, CPU."""
    method = kw.pop("method", "dctps")
    return RunConfig(
        model=ModelConfig("lenet5"),
        data=DataConfig("cifar10", root=str(root)),
        sparsity=SparsityConfig(method, kw.pop("density", 0.05)),
        optim=OptimConfig(epochs=kw.pop("epochs", 2), batch_size=32),
        seed=kw.pop("seed", 0),
        device="cpu",
    )


def measured(result: dict) -> dict:
    """What a run measured, without wall-clock times."""
    hist = [{k: h[k] for k in EPOCH_KEYS} for h in result["history"]]
    return {"history": hist, **{k: result[k] for k in ("val_acc", "test_acc", "best_epoch")}}


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# =============================================================================================
# 1. SIGKILL at random moments of a sweep
# =============================================================================================

# Imported at start-up by every Python process of the killed sweep (PYTHONPATH): it widens the
# windows worth killing in (a checkpoint half written, a store transaction open) and tells the
# test what each worker is doing through phase files. Numerics are untouched.
HOOK = textwrap.dedent(
    """
    import os

    if os.environ.get("DCTPS_KILLTEST_DIR"):
        import io
        import time
        from pathlib import Path

        import torch
        from dctps.results import store as _store
        from dctps.train import checkpoint as _ckpt
        from dctps.train import loop as _loop

        _D = Path(os.environ["DCTPS_KILLTEST_DIR"])
        _PID = os.getpid()
        _CKPT_S = float(os.environ.get("DCTPS_KILLTEST_CKPT_S", "0.25"))
        _STORE_S = float(os.environ.get("DCTPS_KILLTEST_STORE_S", "0.08"))
        _STEP_S = float(os.environ.get("DCTPS_KILLTEST_STEP_S", "0.03"))
        _replace = os.replace

        def _phase(name):
            tmp = _D / f".phase-{_PID}.tmp"
            tmp.write_text(name)
            _replace(tmp, _D / f"phase-{_PID}")

        def _event(text):
            with open(_D / "events", "a") as f:
                f.write(f"{_PID} {text}\\n")

        _train = _loop.train_one_epoch

        def train_one_epoch(model, loader, *a, **kw):
            def batches():  # a little slower, so that "during training" is a wide window
                for b in loader:
                    time.sleep(_STEP_S)
                    yield b

            _phase("train")
            try:
                return _train(model, batches(), *a, **kw)
            finally:
                _phase("other")

        _loop.train_one_epoch = train_one_epoch

        _save = _ckpt.save_checkpoint

        def save_checkpoint(state, folder):
            _phase("ckpt")
            try:
                path = _save(state, folder)
            finally:
                _phase("other")
            _event(f"ckpt-done {Path(folder).name} {state['epoch']}")
            return path

        _ckpt.save_checkpoint = save_checkpoint

        _torch_save = torch.save

        def slow_save(obj, f, *a, **kw):  # the temporary file stays half written for a while
            if not hasattr(f, "write"):
                return _torch_save(obj, f, *a, **kw)
            buf = io.BytesIO()
            _torch_save(obj, buf, *a, **kw)
            data = buf.getvalue()
            _phase("ckpt")
            f.write(data[: len(data) // 2])
            f.flush()
            time.sleep(_CKPT_S)
            f.write(data[len(data) // 2 :])

        torch.save = slow_save

        def slow_replace(src, dst, *a, **kw):  # last.pt rotated to prev.pt, new one not yet in
            _replace(src, dst, *a, **kw)
            if str(src).endswith("last.pt"):
                time.sleep(_CKPT_S / 2)

        os.replace = slow_replace

        _write = _store.Store._write

        def slow_write(self, fn):  # sleep inside BEGIN IMMEDIATE ... COMMIT
            def inner(conn):
                out = fn(conn)
                _phase("store")
                time.sleep(_STORE_S)
                return out

            try:
                return _write(self, inner)
            finally:
                _phase("other")

        _store.Store._write = slow_write
    """
)

PHASES = ("train", "ckpt", "store")
KILL_DELAY = {"train": 0.1, "ckpt": 0.08, "store": 0.02}  # random wait after seeing the phase


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def _phases(folder: Path) -> dict[int, str]:
    out = {}
    for p in folder.glob("phase-*"):
        try:
            out[int(p.name.split("-")[1])] = p.read_text()
        except (OSError, ValueError):
            pass
    return out


def _ckpts_done(folder: Path) -> int:
    try:
        return (folder / "events").read_text().count("ckpt-done")
    except OSError:
        return 0


def _run_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "runs").glob("*") if p.is_dir()) if out.exists() else []


def check_checkpoints(out: Path) -> int:
    """Every checkpoint file on disk loads, and the newest one is used without a fallback."""
    n = 0
    for run_dir in _run_dirs(out):
        for name in ("last.pt", "prev.pt", "best.pt"):
            path = run_dir / name
            if path.exists():
                obj = torch.load(path, map_location="cpu", weights_only=True)
                assert obj["config_hash"] == run_dir.name, path
                n += 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a fallback from last.pt to prev.pt warns
            ckpt_io.load_checkpoint(run_dir, run_dir.name, quarantine=False)
        assert not (run_dir / "last.pt.corrupt").exists()
    return n


def sweep_cmd(grid: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "dctps.cli", "sweep", str(grid), "--out", str(out),
            "--workers", "2", "-q"]  # fmt: skip


def killed_sweep(tmp: Path, grid: Path, out: Path, n_kills: int, seed: int,
                 group_every: int = 0, budget_s: float = 900) -> dict:  # fmt: skip
    """Run the sweep, SIGKILL workers in turn in each phase of PHASES (every ``group_every``-th
    kill takes the whole process group: the sweep's parent too), relaunch it until it completes.

    Every second kill waits until a new checkpoint was completed since the previous one, so the
    sweep always makes progress. Returns the kills, sessions and checks done.
    """
    rng = random.Random(seed)
    hook_dir, ev = tmp / "hook", tmp / "events"
    hook_dir.mkdir()
    ev.mkdir()
    (hook_dir / "sitecustomize.py").write_text(HOOK)
    pp = os.pathsep.join(p for p in (str(hook_dir), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pp, "DCTPS_KILLTEST_DIR": str(ev)}
    kills: list[dict] = []
    sessions: list[dict] = []
    checked = 0
    proc = None
    gate = -1
    deadline = time.monotonic() + budget_s
    try:
        while True:
            assert time.monotonic() < deadline, f"no completion in {budget_s} s: {sessions}"
            if proc is None:
                log = open(tmp / f"session{len(sessions)}.log", "w")
                proc = subprocess.Popen(
                    sweep_cmd(grid, out),
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                sessions.append({"log": log.name, "rc": None, "t0": time.monotonic()})
                log.close()
            rc = proc.poll()
            if rc is not None:
                sessions[-1]["rc"] = rc
                sessions[-1]["seconds"] = round(time.monotonic() - sessions[-1]["t0"], 1)
                proc = None
                checked += check_checkpoints(out)  # nothing runs now: every file must be whole
                text = Path(sessions[-1]["log"]).read_text()
                assert "Traceback" not in text and "unreadable" not in text, text
                if rc == 0:
                    break
                assert rc in (1, -signal.SIGKILL), text
                continue
            if time.monotonic() - sessions[-1]["t0"] > 300:  # pragma: no cover - a hang
                os.killpg(proc.pid, signal.SIGKILL)
                raise AssertionError(f"sweep session hung: {sessions[-1]}")
            if len(kills) < n_kills and (len(kills) % 2 == 0 or _ckpts_done(ev) > gate):
                want = PHASES[len(kills) % len(PHASES)]
                victims = [pid for pid, ph in _phases(ev).items()
                           if ph == want and _ppid(pid) == proc.pid]  # fmt: skip
                if victims:
                    pid = rng.choice(victims)
                    time.sleep(rng.uniform(0, KILL_DELAY[want]))
                    seen = _phases(ev).get(pid, "?")
                    if seen != want:  # the window closed meanwhile: wait for the next one
                        continue
                    group = bool(group_every) and len(kills) % group_every == group_every - 1
                    try:
                        if group:
                            os.killpg(proc.pid, signal.SIGKILL)
                        else:
                            os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:  # it just finished: try again
                        continue
                    kills.append({"want": want, "phase": seen, "group": group, "pid": pid,
                                  "ckpts": _ckpts_done(ev)})  # fmt: skip
                    gate = _ckpts_done(ev)
                    (ev / f"phase-{pid}").unlink(missing_ok=True)
            time.sleep(0.005)
    finally:
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return {"kills": kills, "sessions": sessions, "checkpoints_checked": checked}


def kill_grid(root: Path, methods: list, seeds: list, epochs: int) -> dict:
    return {
        "base": {"data": {"root": str(root)}, "optim": {"epochs": epochs, "batch_size": 32},
                 "device": "cpu"},
        "models": ["lenet5"], "datasets": ["cifar10"], "methods": methods,
        "densities": [0.05], "seeds": seeds,
    }  # fmt: skip


@linux_only
@pytest.mark.parametrize(
    "methods,seeds,epochs,n_kills,group_every",
    [
        pytest.param(["dctps", "random"], [0], 2, 3, 0, id="3-kills"),
        pytest.param(
            ["dctps", "random"], [0, 1], 3, 12, 4, id="12-kills", marks=pytest.mark.slow
        ),  # fmt: skip
    ],
)
def test_sigkilled_sweep_completes_with_uninterrupted_results(
    fake_cifar10, tmp_path, methods, seeds, epochs, n_kills, group_every
):
    grid = kill_grid(fake_cifar10, methods, seeds, epochs)
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(grid))
    cfgs = expand_grid(grid)
    hashes = sorted(c.config_hash() for c in cfgs)
    # the uninterrupted reference, with the thread count of a sweep worker (2 workers)
    ref_out = tmp_path / "ref"
    threads = torch.get_num_threads()
    torch.set_num_threads(sweep_mod._threads(2))
    try:
        for c in cfgs:
            assert fit(c, ref_out, progress=False)["status"] == "done"
    finally:
        torch.set_num_threads(threads)
    out = tmp_path / "out"
    t0 = time.monotonic()
    res = killed_sweep(tmp_path, gpath, out, n_kills, seed=n_kills, group_every=group_every)
    kills = res["kills"]
    phases = sorted(k["phase"] for k in kills)
    assert len(kills) == n_kills, kills
    assert {"train", "ckpt", "store"} <= set(phases), kills
    if group_every:
        assert any(k["group"] for k in kills)

    ref, got = Store(ref_out), Store(out)
    rows = got.query({})
    assert sorted(r["hash"] for r in rows) == hashes  # one row per run, nothing else
    assert all(r["status"] == "done" for r in rows)
    n_epochs = 0
    for h in hashes:
        a, b = ref.get(h), got.get(h)
        assert {k: a[k] for k in ROW_KEYS} == {k: b[k] for k in ROW_KEYS}, h
        ea = [{k: e[k] for k in ("epoch", *EPOCH_KEYS)} for e in ref.epochs(h)]
        eb = [{k: e[k] for k in ("epoch", *EPOCH_KEYS)} for e in got.epochs(h)]
        assert ea == eb and [e["epoch"] for e in eb] == list(range(1, epochs + 1)), h
        n_epochs += len(eb)
        for name in ("best.pt", "last.pt"):
            sa = torch.load(ref_out / "runs" / h / name, weights_only=True)["model"]
            sb = torch.load(out / "runs" / h / name, weights_only=True)["model"]
            assert states_equal(sa, sb), (h, name)
        # no temporary file of a killed writer is left behind
        assert not list((out / "runs" / h).glob(".*.tmp")), h
    checked = res["checkpoints_checked"] + check_checkpoints(out)
    con = sqlite3.connect(got.path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    print(
        f"\nRELIABILITY kill test: {len(kills)} SIGKILLs survived "
        f"({', '.join(f'{p}={phases.count(p)}' for p in PHASES)}; "
        f"{sum(k['group'] for k in kills)} of the whole process group), "
        f"{len(res['sessions'])} sweep launches, {len(hashes)} runs done, {len(rows)} run rows "
        f"and {n_epochs} epoch rows equal to the uninterrupted sweep, {checked} checkpoint files "
        f"loaded, {time.monotonic() - t0:.0f} s"
    )


# =============================================================================================
# 2. The store under load
# =============================================================================================

# The writers load only the store (a stub package: no torch import), so 9 start in seconds.
STORE_ONLY = """
import importlib.util, sys, types
pkg = types.ModuleType("dctps")
pkg.__path__ = list(importlib.util.find_spec("dctps").submodule_search_locations)
sys.modules["dctps"] = pkg
from dctps.results.store import Store
"""

WRITER = STORE_ONLY + textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path

    db, wid, seconds, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), Path(sys.argv[4])
    s = Store(db)
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    end = time.monotonic() + seconds
    runs = writes = reads = 0
    while time.monotonic() < end:
        h = f"w{wid}-{runs}"
        s.start(h, {"model": {"name": "m"}, "sparsity": {"method": "dctps"}, "seed": runs})
        for e in (1, 2, 3):
            s.log_epoch(h, e, train_loss=1.0 / e, val_acc=0.1 * e)
        s.update(h, nonzeros=wid)
        s.finish(h, val_acc=0.3, best_epoch=3)
        s.log_epoch("shared", runs % 5, train_loss=float(wid))  # contended upserts, same keys
        writes += 7
        if runs % 4 == 0:
            reads += len(s.query({"status": "done"})) >= 0
        runs += 1
    print(json.dumps({"runs": runs, "writes": writes, "reads": reads}), flush=True)
    """
)

VICTIM = STORE_ONLY + textwrap.dedent(
    """
    import sys, time
    from pathlib import Path

    s = Store(sys.argv[1])
    go = Path(sys.argv[2])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.01)
    n = 0
    while True:  # every write holds the lock a while: it is killed inside a transaction
        def slow(conn, n=n):
            conn.execute("INSERT INTO runs (hash, status) VALUES (?, 'running')", (f"v-{n}",))
            conn.execute("INSERT INTO epochs (hash, epoch) VALUES (?, 1)", (f"v-{n}",))
            print(f"in-tx {n}", flush=True)
            time.sleep(0.05)
        s._write(slow)
        n += 1
    """
)


def test_store_under_load_8_writers_and_a_killed_one(tmp_path):
    db = tmp_path / "results.db"
    Store(db).start("shared", {"model": {"name": "m"}})
    go = tmp_path / "go"
    (tmp_path / "writer.py").write_text(WRITER)
    (tmp_path / "victim.py").write_text(VICTIM)
    procs = [
        subprocess.Popen([sys.executable, str(tmp_path / "writer.py"), str(db), str(w), "3",
                          str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for w in range(8)
    ]  # fmt: skip
    victim = subprocess.Popen(
        [sys.executable, str(tmp_path / "victim.py"), str(db), str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        for p in [*procs, victim]:
            assert p.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
        go.touch()
        time.sleep(1.0)
        line = victim.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("in-tx")
        victim.kill()  # SIGKILL while it holds the write lock (or is about to take it again)
        victim.wait(30)
        stats = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            assert "locked" not in err and "Traceback" not in err, err
            stats.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in [*procs, victim]:
            if p.poll() is None:
                p.kill()
                p.wait()
    runs = sum(s["runs"] for s in stats)
    writes = sum(s["writes"] for s in stats)
    assert all(s["runs"] > 0 for s in stats), stats
    s = Store(db)
    rows = s.query("hash LIKE 'w%'")
    assert len(rows) == runs == len({r["hash"] for r in rows})  # none lost, none duplicated
    assert all(r["status"] == "done" and r["best_epoch"] == 3 for r in rows)
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    n_ep = con.execute("SELECT COUNT(*) FROM epochs WHERE hash LIKE 'w%'").fetchone()[0]
    assert n_ep == 3 * runs
    dup = con.execute("SELECT COUNT(*) FROM (SELECT hash, epoch FROM epochs "
                      "GROUP BY hash, epoch HAVING COUNT(*) > 1)").fetchone()[0]  # fmt: skip
    assert dup == 0
    # the victim's transactions are all or nothing: each committed run row has its epoch row
    v_runs = con.execute("SELECT COUNT(*) FROM runs WHERE hash LIKE 'v-%'").fetchone()[0]
    v_eps = con.execute("SELECT COUNT(*) FROM epochs WHERE hash LIKE 'v-%'").fetchone()[0]
    assert v_runs == v_eps
    con.close()
    print(f"\nRELIABILITY store load: 8 writers, {writes} committed writes "
          f"({runs} runs, {3 * runs} epoch rows), 1 writer SIGKILLed inside a transaction, "
          "0 lost, 0 duplicated, 0 'database is locked'")  # fmt: skip


# =============================================================================================
# 3. Corrupt or foreign files; a full disk
# =============================================================================================


def test_truncated_latest_checkpoint_falls_back_to_the_previous(
    fake_cifar10, tmp_path, monkeypatch
):
    cfg = small_cfg(fake_cifar10, epochs=3)
    ref = fit(cfg, tmp_path / "ref", progress=False)
    out = tmp_path / "run"
    # as if killed after its last epoch, each time: prev.pt still there
    monkeypatch.setattr(ckpt_io, "drop_backup", lambda folder: None)
    fit(cfg, out, progress=False)
    run_dir = out / "runs" / ref["hash"]
    last = run_dir / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a torn write
    with pytest.warns(RuntimeWarning, match=r"last\.pt is unreadable.*resuming from"):
        ck = ckpt_io.load_checkpoint(run_dir, ref["hash"], quarantine=False)
    assert ck["epoch"] == 2
    Store(out).delete(ref["hash"])  # forget the result: the run resumes from prev.pt
    with pytest.warns(RuntimeWarning, match="unreadable"):
        r = fit(cfg, out, progress=False)
    assert r["resumed_from"] == 2 and measured(r) == measured(ref)
    # both truncated: a specific error naming both files, never a silent restart over them
    for name in ("last.pt", "prev.pt"):
        p = run_dir / name
        p.write_bytes(p.read_bytes()[:100])
    with pytest.warns(RuntimeWarning), pytest.raises(DctpsError) as info:
        ckpt_io.load_checkpoint(run_dir, ref["hash"])
    msg = str(info.value)
    assert "no readable checkpoint" in msg and "last.pt" in msg and "prev.pt" in msg
    assert "\n" not in msg and "delete" in msg


def test_checkpoint_of_another_density_or_model_is_refused(fake_cifar10, tmp_path):
    a = fit(small_cfg(fake_cifar10, epochs=1), tmp_path, progress=False)
    src = tmp_path / "runs" / a["hash"] / "last.pt"
    for other in (small_cfg(fake_cifar10, epochs=1, density=0.2),
                  small_cfg(fake_cifar10, epochs=1, method="dense", density=None)):  # fmt: skip
        h = other.config_hash()
        (tmp_path / "runs" / h).mkdir(parents=True)
        (tmp_path / "runs" / h / "last.pt").write_bytes(src.read_bytes())
        with pytest.raises(DctpsError, match=rf"runs/{h}/last\.pt belongs to config {a['hash']}"):
            fit(other, tmp_path, progress=False)
    # a sparse checkpoint given to dctps.load with a model of another architecture or class
    # count is refused naming the file and the layer; into a model sparsified at another
    # density it loads the file's own supports (the file is the truth)
    m = dctps.sparsify(dctps.models.build("lenet5"), 0.05)
    path = dctps.save(m, tmp_path / "lenet.dctps")
    with pytest.raises(DctpsError, match=r"lenet\.dctps: layer 'features\.0' has weight shape"):
        dctps.load(path, model=dctps.models.build("vgg19"))
    with pytest.raises(DctpsError, match=r"lenet\.dctps: layer 'classifier\.2' has weight shape"):
        dctps.load(path, model=dctps.models.build("lenet5", num_classes=100))
    other = dctps.load(path, model=dctps.sparsify(dctps.models.build("lenet5"), 0.2))
    assert dctps.count(other) == dctps.count(m)


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0,
    reason="root ignores file permissions (the table covers a path under a file)",
)
def test_read_only_output_folder(fake_cifar10, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DctpsError, match=r"ro/results\.db.*[Pp]ermission denied|readonly"):
            fit(small_cfg(fake_cifar10, epochs=1), ro / "out", progress=False)
    finally:
        ro.chmod(0o700)


def _enospc(*a, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_disk_full_checkpoint_write_keeps_the_good_ones(fake_cifar10, tmp_path, monkeypatch):
    cfg = small_cfg(fake_cifar10, epochs=3)
    ref = fit(cfg, tmp_path / "ref", progress=False)
    out = tmp_path / "run"
    real = ckpt_io.save_checkpoint

    def full_at_3(state, folder):
        if state["epoch"] == 3:
            monkeypatch.setattr(torch, "save", _enospc)
        return real(state, folder)

    monkeypatch.setattr(ckpt_io, "save_checkpoint", full_at_3)
    with pytest.raises(DctpsError) as info:
        fit(cfg, out, progress=False)
    msg = str(info.value)
    run_dir = out / "runs" / ref["hash"]
    assert msg == f"cannot write checkpoint {run_dir / 'last.pt'}: No space left on device"
    # the two good checkpoints (epochs 2 and 1) are intact, no temporary file is left
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 2
    assert torch.load(run_dir / "prev.pt", weights_only=True)["epoch"] == 1
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.yaml", "last.pt",
                                                          "prev.pt"]  # fmt: skip
    assert Store(out).get(ref["hash"])["status"] == "interrupted"  # saying why; resumable
    # space again: the run resumes from epoch 2 to the uninterrupted result
    monkeypatch.undo()
    r = fit(cfg, out, progress=False)
    assert r["resumed_from"] == 2 and measured(r) == measured(ref)


def test_disk_full_best_and_cli_are_one_line(fake_cifar10, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from dctps.cli import app

    cfg = small_cfg(fake_cifar10, epochs=1)
    real = ckpt_io.atomic_save

    def full(obj, path):
        monkeypatch.setattr(torch, "save", _enospc)
        return real(obj, path)

    monkeypatch.setattr(ckpt_io, "atomic_save", full)  # best.pt, written after the last epoch
    with pytest.raises(DctpsError, match=r"cannot write checkpoint .*best\.pt: No space left"):
        fit(cfg, tmp_path, progress=False)
    monkeypatch.undo()
    # never "done" without best.pt; and not "running" with no process training it (a coverage
    # review): "interrupted", saying why and that the same command finishes it
    row = Store(tmp_path).get(cfg.config_hash())
    assert row["status"] == "interrupted"
    assert row["reason"].startswith("stopped after its last epoch (1 of 1) by an error "
                                    "(CannotWrite: cannot write checkpoint")  # fmt: skip
    assert row["reason"].endswith("before its result was recorded; run the same command again "
                                  "to finish")  # fmt: skip
    r = fit(cfg, tmp_path, progress=False)
    assert r["status"] == "done" and r["resumed_from"] == 1
    assert Store(tmp_path).get(cfg.config_hash())["status"] == "done"
    monkeypatch.setattr(torch, "save", _enospc)
    args = ["train", "--model", "lenet5", "--dataset", "cifar10", "--data-root",
            str(fake_cifar10), "--density", "0.05", "--epochs", "1", "--batch-size", "32",
            "--seed", "9", "--device", "cpu", "--out", str(tmp_path / "cli"), "-q"]  # fmt: skip
    res = CliRunner().invoke(app, args)
    assert isinstance(res.exception, DctpsError), res.output
    assert "No space left on device" in str(res.exception) and "\n" not in str(res.exception)
    assert res.exception.exit_code == 1  # the machine's failure, not a bad command (2)


def test_disk_full_store_write_keeps_rows(tmp_path):
    """SQLITE_FULL for real: the database may not grow (max_page_count = its size)."""
    s = Store(tmp_path / "r.db")
    s.start("good", {"model": {"name": "m"}})
    s.log_epoch("good", 1, train_loss=0.5)
    s.finish("good", val_acc=0.9)
    before = (s.get("good"), s.epochs("good"))
    conn, _ = s._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    big = {"model": {"name": "m"}, "blob": "x" * 200_000}
    with pytest.raises(DctpsError) as info:
        s.start("new", big)
    assert "database or disk is full" in str(info.value) and str(s.path) in str(info.value)
    assert "\n" not in str(info.value)
    assert (s.get("good"), s.epochs("good")) == before and s.get("new") is None
    s.close()
    assert Store(tmp_path / "r.db").get("good")["status"] == "done"


def test_disk_full_sparse_checkpoint_keeps_the_old_file(tmp_path, monkeypatch, disk_full_after):
    m = dctps.sparsify(nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), 0.2)
    path = dctps.save(m, tmp_path / "m.dctps")
    good = path.read_bytes()

    new_model = dctps.sparsify(nn.Sequential(nn.Linear(16, 8)), 0.5)
    disk_full_after(64)
    with pytest.raises(DctpsError, match=r"cannot write checkpoint .*m\.dctps.*No space left"):
        dctps.save(new_model, path)
    assert path.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["m.dctps"]
    monkeypatch.undo()
    dctps.load(path, model=nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)))


# =============================================================================================
# 5. Numerical faults
# =============================================================================================


def _inject(monkeypatch, at_epoch: int, at_step: int, what: str) -> None:
    """At step ``at_step`` of epoch ``at_epoch``: an Inf input batch (``loss``) or a NaN gradient
    of one weight with a finite loss (``grad``)."""
    real = loop.train_one_epoch

    def patched(model, loader, *a, **kw):
        if kw["epoch"] != at_epoch:
            return real(model, loader, *a, **kw)
        p = next(q for q in model.parameters() if q.requires_grad)
        calls = {"n": 0}

        def hook(g):
            calls["n"] += 1
            return g * float("nan") if calls["n"] == at_step else g

        handle = p.register_hook(hook) if what == "grad" else None

        def batches():
            for i, (x, y) in enumerate(loader, start=1):
                if what == "loss" and i == at_step:
                    x = x * float("inf")
                yield x, y

        try:
            return real(model, batches(), *a, **kw)
        finally:
            if handle is not None:
                handle.remove()

    monkeypatch.setattr(loop, "train_one_epoch", patched)


@pytest.mark.parametrize("what,epoch,step", [("loss", 1, 4), ("grad", 2, 3)])
def test_non_finite_loss_or_gradient_fails_the_run_at_its_step(
    fake_cifar10, tmp_path, monkeypatch, what, epoch, step
):
    cfg = small_cfg(fake_cifar10, epochs=3)
    _inject(monkeypatch, epoch, step, what)
    r = fit(cfg, tmp_path, progress=False)
    name = "loss" if what == "loss" else "gradient"
    reason = f"non-finite {name} (NaN/Inf) at epoch {epoch}, step {step}"
    assert r["status"] == "failed" and r["reason"] == reason
    s = Store(tmp_path)
    row = s.get(r["hash"])
    assert row["status"] == "failed" and row["reason"] == reason
    assert [e["epoch"] for e in s.epochs(r["hash"])] == list(range(1, epoch))
    run_dir = tmp_path / "runs" / r["hash"]
    if epoch > 1:  # the good checkpoint before the fault is kept and finite
        ck = torch.load(run_dir / "last.pt", weights_only=True)
        assert ck["epoch"] == epoch - 1
        assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert not (run_dir / "best.pt").exists()


@pytest.mark.parametrize("method", ["snip", "iter_snip", "force", "synflow", "grasp"])
def test_all_zero_saliency_is_pruning_failed(method):
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    batches = [(torch.randn(4, 8), torch.tensor([0, 1, 2, 0]))]
    with pytest.raises(PruningFailed, match="saliency") as info:
        prune(net, 0.1, method, batches)
    assert info.value.reached == 1.0
    assert not hasattr(net[0], "weight_mask")  # the model is left dense, not mislabelled


# =============================================================================================
# 6. Determinism
# =============================================================================================


def _indices(model: nn.Module) -> list[torch.Tensor]:
    return [v for k, v in model.state_dict().items() if k.endswith("indices")]


def _masks(model: nn.Module) -> list[torch.Tensor]:
    return [v for k, v in model.state_dict().items() if k.endswith("weight_mask")]


def _partial(model: nn.Module) -> list[bool]:
    """Per DCTpS layer: is its support a proper subset (a full layer has one support only)?"""
    return [m.nnz < math.prod(m.weight_shape) for m in model.modules()
            if isinstance(m, dctps.layers.DCTpSLayer)]  # fmt: skip


def test_seeds_fix_supports_and_masks():
    def make():
        return dctps.models.build("lenet5")

    a, b, c = (dctps.sparsify(make(), 0.05, seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(_indices(a), _indices(b), strict=True))
    partial = _partial(a)
    assert sum(partial) >= 4  # LeNet-5 at 5% (EPL): only the first conv is full
    for x, y, part in zip(_indices(a), _indices(c), partial, strict=True):
        assert torch.equal(x, y) != part
    a, b, c = (prune(make(), 0.05, "random", seed=s) for s in (0, 0, 1))
    assert all(torch.equal(x, y) for x, y in zip(_masks(a), _masks(b), strict=True))
    assert all(not torch.equal(x, y) for x, y in zip(_masks(a), _masks(c), strict=True))


def test_same_seed_same_bits_other_seed_other_run(fake_cifar10, tmp_path):
    """Two runs of one config are bit-identical (metrics and weights); another seed gives other
    supports (dctps) and other masks (random pruning)."""
    for method in ("dctps", "random"):
        runs = {}
        for tag, seed in (("a", 0), ("b", 0), ("c", 1)):
            out = tmp_path / method / tag
            r = fit(small_cfg(fake_cifar10, method=method, epochs=1, seed=seed), out,
                    progress=False)  # fmt: skip
            best = torch.load(out / "runs" / r["hash"] / "best.pt", weights_only=True)["model"]
            runs[tag] = (r, best)
        (ra, ba), (rb, bb), (_, bc) = runs["a"], runs["b"], runs["c"]
        assert measured(ra) == measured(rb) and states_equal(ba, bb)
        key = "indices" if method == "dctps" else "weight_mask"
        sup = [k for k in ba if k.endswith(key) and k != "features.0.indices"]  # full at 5% EPL
        assert len(sup) >= 4 and all(not torch.equal(ba[k], bc[k]) for k in sup), method
        assert not math.isnan(ra["val_acc"])


def test_yaml_is_utf8_whatever_the_locale(tmp_path):
    """`--print-config` writes UTF-8 (an em dash in a title); read back under a C locale it
    raised UnicodeDecodeError with a traceback (Windows' cp1252 would misread it). Text files
    are read and written as UTF-8; a file that is not UTF-8 is a one-line DctpsError."""
    import subprocess
    import sys

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_bytes("title: 'a \u2014 b'\n".encode())
    bad.write_bytes("title: 'caf\xe9'\n".encode("latin-1"))
    script = (
        "import sys, locale; from dctps.train.config import read_yaml; from dctps.errors import "
        "DctpsError\nprint(locale.getpreferredencoding(False))\n"
        f"print(ascii(read_yaml({str(good)!r}, 'x')['title']))\n"
        f"try:\n    read_yaml({str(bad)!r}, 'sweep config')\nexcept DctpsError as e:\n"
        "    print('refused:', e)\n"
    )
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    env.pop("PYTHONIOENCODING", None)
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    enc, title, refused = p.stdout.splitlines()
    assert enc.lower().replace("-", "") != "utf8"  # the locale really is not UTF-8
    assert title == "'a \\u2014 b'"
    assert refused.startswith(f"refused: cannot read sweep config {bad}: not UTF-8 text")


def test_a_retried_run_keeps_nothing_of_its_failed_attempt(fake_cifar10, tmp_path, monkeypatch):
    """``sweep --retry-failed`` (``fit(resume=False)``) started over but left the failed
    attempt's last.pt/prev.pt and epoch rows: a retry interrupted before its first checkpoint
    then resumed from the failed attempt's epoch 2 under "start it over", mixing the two."""
    cfg = small_cfg(fake_cifar10, epochs=3)
    reference = fit(cfg, tmp_path / "ref", progress=False)
    _inject(monkeypatch, 3, 1, "loss")
    failed = fit(cfg, tmp_path, progress=False)
    assert failed["status"] == "failed"
    monkeypatch.undo()
    run_dir, h = tmp_path / "runs" / failed["hash"], failed["hash"]
    assert ckpt_io.exists(run_dir) and len(Store(tmp_path).epochs(h)) == 2

    real = loop.train_one_epoch

    def interrupted(*a, **kw):  # Ctrl-C in the retry's first epoch
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_one_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        fit(cfg, tmp_path, progress=False, resume=False)
    monkeypatch.setattr(loop, "train_one_epoch", real)
    assert not ckpt_io.exists(run_dir) and Store(tmp_path).epochs(h) == []
    kept = sorted(p.name for p in run_dir.glob("*.before-retry"))
    assert kept == ["last.pt.before-retry", "prev.pt.before-retry"]  # set aside, not deleted
    assert Store(tmp_path).get(h)["status"] == "interrupted"

    again = fit(cfg, tmp_path, progress=False)  # "run the same command again to start it over"
    assert again["resumed_from"] is None and again["status"] == "done"
    assert measured(again) == measured(reference)
    assert [e["epoch"] for e in Store(tmp_path).epochs(h)] == [1, 2, 3]


def test_a_done_run_without_its_row_and_last_checkpoint_keeps_its_best(fake_cifar10, tmp_path):
    """A done run whose results database was moved aside (as its "unusable" message says) and
    whose last.pt was deleted (RELIABILITY.md: safe for a done run) was trained again from
    scratch, and its best.pt silently replaced."""
    cfg = small_cfg(fake_cifar10, epochs=1)
    r = fit(cfg, tmp_path, progress=False)
    run_dir = tmp_path / "runs" / r["hash"]
    before = (run_dir / "best.pt").read_bytes()
    (tmp_path / "results.db").rename(tmp_path / "results.db.aside")
    (run_dir / "last.pt").unlink()
    with pytest.raises(DctpsError, match=r"finished before: .*best\.pt holds its model.*move "
                       r"best\.pt aside to train the run again"):  # fmt: skip
        fit(cfg, tmp_path, progress=False)
    assert (run_dir / "best.pt").read_bytes() == before
    assert not ckpt_io.exists(run_dir)
