"""Sweeps: grid expansion, skip-done, resume of a killed sweep, failures, executors, the CLI."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from dctps.cli import app
from dctps.errors import DctpsError
from dctps.results import Store
from dctps.results.sweep import (
    apply_sets,
    expand_grid,
    load_grid,
    parse_density,
    plan,
    run_sweep,
)

runner = CliRunner()


def small_grid(root: Path, **kw) -> dict:
    """LeNet-5 on the fake CIFAR-10, one epoch, batch 32."""
    g = {
        "base": {
            "data": {"root": str(root)},
            "optim": {"epochs": kw.pop("epochs", 1), "batch_size": 32},
            "device": "cpu",
        },
        "models": ["lenet5"],
        "datasets": ["cifar10"],
        "methods": ["dense", "dctps"],
        "densities": [0.05],
        "seeds": [0],
    }
    g.update(kw)
    return g


def key(cfg) -> tuple:
    s = cfg.sparsity
    return (cfg.model.name, s.method, s.density, s.allocation, s.rigl, cfg.optim.recipe, cfg.seed)


# ----------------------------------------------------------------------------- expansion
def test_grid_expands_to_expected_run_set():
    grid = {
        "base": {"optim": {"epochs": 3}},
        "models": ["lenet5"],
        "datasets": ["cifar10"],
        "methods": [
            "dense",
            "dctps",
            {"method": "random", "rigl": True},
            {"method": "snip", "densities": ["50%"]},
            "dctps",  # a duplicate: kept once
        ],
        "densities": [0.1, "1%"],
        "seeds": 2,
        "variants": [{}, {"optim": {"recipe": "sgd"}}],
    }
    cfgs = expand_grid(grid)
    # per variant and seed: dense 1 + dctps 2 + RigL 2 + snip 1 = 6 runs
    assert len(cfgs) == 2 * 6 * 2
    assert len({c.config_hash() for c in cfgs}) == len(cfgs)
    expected = set()
    for recipe in ("lenet", "sgd"):
        for seed in (0, 1):
            expected.add(("lenet5", "dense", 1.0, None, False, recipe, seed))
            expected.add(("lenet5", "snip", 0.5, None, False, recipe, seed))
            for d in (0.1, 0.01):
                expected.add(("lenet5", "dctps", d, "epl", False, recipe, seed))
                expected.add(("lenet5", "random", d, "erk", True, recipe, seed))
    assert {key(c) for c in cfgs} == expected
    assert all(c.optim.epochs == 3 for c in cfgs)
    # overrides win over everything
    cfgs = expand_grid(grid, overrides={"optim": {"epochs": 7}, "data": {"root": "/x"}})
    assert {c.optim.epochs for c in cfgs} == {7} and {c.data.root for c in cfgs} == {"/x"}


@pytest.mark.parametrize(
    "grid,needle",
    [
        ({"modls": ["lenet5"]}, "unknown key 'modls'"),
        ({"base": {"optim": {"epoch": 3}}}, "unknown key 'optim.epoch'"),
        ({"methods": [{"method": "dctps", "alocation": "epl"}]}, "unknown key 'alocation'"),
        ({"variants": [{"sparsity": {"dens": 1}}]}, "unknown key 'sparsity.dens'"),
        ({"methods": ["dcpts"], "densities": [0.1]}, "Did you mean 'dctps'"),
        ({"methods": ["dctps"], "densities": ["2%%"]}, "not a density"),
        ({"methods": ["dctps"], "densities": [0]}, "density must be in"),
        ({"methods": [{"rigl": True}]}, "needs `method:`"),
        ({"methods": []}, "methods: the list is empty"),
        ({"models": [], "methods": ["dense"]}, "models: the list is empty"),
    ],
)
def test_bad_grids_are_rejected(grid, needle):
    with pytest.raises(DctpsError, match=needle):
        expand_grid(grid, "g.yaml")


def test_load_grid_rejects_unknown_key_and_parses_helpers(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("models: [lenet5]\nextra: 1\n")
    with pytest.raises(DctpsError, match=f"{p}: unknown key 'extra'"):
        load_grid(p)
    assert parse_density("0.1%") == pytest.approx(0.001) and parse_density("1e-4") == 1e-4
    # a percentage is exactly the decimal it names (float("0.7") / 100 == 0.006999...), so the
    # run hashes like --density 0.007 and --where density=0.007 finds it
    for pct, dec in (("0.7%", 0.007), ("0.07%", 0.0007), ("1e-3%", 1e-5), ("12.5%", 0.125)):
        assert parse_density(pct) == dec
    assert apply_sets(["optim.epochs=3", "data.subset=100", "device=cpu"]) == {
        "optim": {"epochs": 3},
        "data": {"subset": 100},
        "device": "cpu",
    }


# ----------------------------------------------------------------------------- running
def test_sweep_skips_done_and_failed_and_retries(fake_cifar10, tmp_path, capfd, monkeypatch):
    """SynFlow cannot prune FixupResNet110 (App. D.2): that run fails, the LeNet one trains."""
    from dctps import progress

    grid = small_grid(
        fake_cifar10,
        models=["lenet5", "fixup_resnet110"],
        methods=[{"method": "synflow", "options": {"iterations": 2}}],
    )
    cfgs = expand_grid(grid)
    out = tmp_path / "out"
    monkeypatch.setenv(progress.ENV, "lines")  # a log (a SLURM job's): the workers inherit it
    rep = run_sweep(cfgs, out, workers=2, progress=True)
    assert rep.counts() == {"done": 1, "failed": 1}, rep.summary()
    # the parallel runs share the sweep's log: each line a run writes names the run
    err = capfd.readouterr().err.splitlines()
    tags = {f"[{c.config_hash()[:8]} {c.summary()}] " for c in cfgs}
    own = [ln for ln in err if not ln.startswith("sweep ") and ln.startswith("[")]
    assert {ln[: ln.index("] ") + 2] for ln in own} == tags, err
    lenet = next(t for t in tags if "lenet5" in t)
    assert sum(ln.startswith(lenet + "epoch 1/1 ") for ln in own) == 1, err
    assert any(ln.startswith(lenet + "pruning synflow") for ln in own), err
    assert all(ln.startswith(("sweep ", "[", "2 runs")) for ln in err if ln.strip()), err
    store = Store(out)
    rows = {r["model"]: r for r in store.query({})}
    assert rows["lenet5"]["status"] == "done" and rows["lenet5"]["test_acc"] is not None
    assert rows["fixup_resnet110"]["status"] == "failed"
    assert "synflow" in rows["fixup_resnet110"]["reason"].lower()
    # a second invocation runs nothing
    rep2 = run_sweep(cfgs, out, progress=False)
    assert rep2.results == {} and rep2.counts() == {"skip-done": 1, "skip-failed": 1}
    # --retry-failed re-runs only the failed one (and it fails again)
    rep3 = run_sweep(cfgs, out, retry_failed=True, progress=False)
    assert list(rep3.results) == [rows["fixup_resnet110"]["hash"]]
    assert rep3.counts() == {"skip-done": 1, "failed": 1}


def test_error_in_one_run_does_not_stop_the_others(fake_cifar10, tmp_path, monkeypatch):
    """An exception in a run (here: injected into one run's `fit`) is an `error`, not `failed`:
    it is left out of the store's failed runs so the next sweep tries it again."""
    import dctps.train.loop as loop

    cfgs = expand_grid(small_grid(fake_cifar10, seeds=[0, 1], methods=["dense"]))
    real_fit = loop.fit

    def fit(cfg, *a, **kw):
        if cfg.seed == 0:
            raise RuntimeError("injected failure of seed 0")
        return real_fit(cfg, *a, **kw)

    monkeypatch.setattr(loop, "fit", fit)
    rep = run_sweep(cfgs, tmp_path, progress=False)
    assert rep.counts() == {"error": 1, "done": 1}
    (err,) = rep.errors
    assert "injected failure of seed 0" in err["reason"] and err["hash"] == cfgs[0].config_hash()
    assert Store(tmp_path).get(cfgs[0].config_hash()) is None
    # its traceback is kept, and the summary says where (it was captured and dropped)
    tb = tmp_path / "errors" / f"{err['hash']}.txt"
    assert "Traceback" in tb.read_text() and "injected failure of seed 0" in tb.read_text()
    assert f"traceback: {tb}" in rep.summary()
    assert [p.action for p in plan(cfgs, tmp_path)] == ["new", "skip-done"]
    # once the run trains, its old traceback goes (it stayed, pointing at a fixed error)
    monkeypatch.setattr(loop, "fit", real_fit)
    assert run_sweep(cfgs, tmp_path, progress=False).counts() == {"done": 1, "skip-done": 1}
    assert not tb.exists()


def test_a_data_set_missing_under_the_root_stops_the_sweep_first(fake_cifar10, tmp_path):
    """CIFAR-100 missing under a root that holds CIFAR-10: one error naming the folder and the
    way out, before any run (A.1 without Tiny ImageNet printed the same error per run)."""
    cfgs = expand_grid(
        small_grid(fake_cifar10, datasets=["cifar100", "cifar10"], methods=["dense"])
    )
    with pytest.raises(DctpsError, match=r"missing folder .*cifar-100-python.*leave data set "
                       r"'cifar100' out of the grid"):  # fmt: skip
        run_sweep(cfgs, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_runs_path_that_is_a_file_stops_the_sweep_without_creating_a_store(
    fake_cifar10, tmp_path
):
    """OUT/runs a file: the sweep said "cannot write run folder OUT/runs: File exists" after
    creating an empty results.db."""
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "runs").write_text("notes")
    cfgs = expand_grid(small_grid(fake_cifar10, methods=["dense"]))
    with pytest.raises(DctpsError, match=r"cannot write run folder .*runs: it is a file, not a "):
        run_sweep(cfgs, tmp_path / "out", progress=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["runs"]


def test_a_missing_data_root_stops_the_sweep_before_any_run(tmp_path, monkeypatch):
    """No data root (no --data-root, no DCTPS_DATA) is one error before anything starts, not the
    same error once per run of the grid (17 lines for a quick figure, in review)."""
    monkeypatch.delenv("DCTPS_DATA", raising=False)
    grid = small_grid(tmp_path)
    del grid["base"]["data"]
    cfgs = expand_grid(grid)
    with pytest.raises(DctpsError, match="no data root for dataset 'cifar10'"):
        run_sweep(cfgs, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
    grid["base"]["data"] = {"root": str(tmp_path / "nowhere")}
    with pytest.raises(DctpsError, match="nowhere does not exist"):
        run_sweep(expand_grid(grid), tmp_path / "out", progress=False)


def test_running_row_with_checkpoint_is_resumed(fake_cifar10, tmp_path):
    cfgs = expand_grid(small_grid(fake_cifar10, methods=["dctps"], epochs=2))
    (cfg,) = cfgs
    h = cfg.config_hash()
    rep = run_sweep(cfgs, tmp_path, progress=False)
    assert rep.counts() == {"done": 1}
    # simulate a crash after the last checkpoint: the row says running, the checkpoint is there
    Store(tmp_path).update(h, status="running")
    assert [p.action for p in plan(cfgs, tmp_path)] == ["resume"]
    rep = run_sweep(cfgs, tmp_path, progress=False)
    assert rep.results[h]["status"] == "done" and rep.results[h]["resumed_from"] == 2
    # an interrupted row (Ctrl-C) resumes the same way; without its checkpoint it restarts
    Store(tmp_path).update(h, status="interrupted")
    assert [p.action for p in plan(cfgs, tmp_path)] == ["resume"]
    for f in ("last.pt", "prev.pt"):
        (tmp_path / "runs" / h / f).unlink(missing_ok=True)
    assert [p.action for p in plan(cfgs, tmp_path)] == ["restart"]


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys, yaml
    from dctps.results.sweep import expand_grid, run_sweep
    from dctps.train import checkpoint

    real = checkpoint.save_checkpoint

    def save_then_die(state, folder):
        path = real(state, folder)
        if state["epoch"] == 1:
            os.kill(os.getpid(), signal.SIGKILL)  # killed right after the first checkpoint
        return path

    checkpoint.save_checkpoint = save_then_die
    grid = yaml.safe_load(open(sys.argv[1]))
    run_sweep(expand_grid(grid), sys.argv[2], progress=False)
    """
)


def test_killed_sweep_resumes(fake_cifar10, tmp_path):
    grid = small_grid(fake_cifar10, methods=["dctps"], seeds=[0, 1], epochs=2)
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(grid))
    script = tmp_path / "kill.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(script), str(gpath), str(out)],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    cfgs = expand_grid(grid)
    first, second = (c.config_hash() for c in cfgs)
    assert Store(out).get(first)["status"] == "running" and Store(out).get(second) is None
    assert [p.action for p in plan(cfgs, out)] == ["resume", "new"]
    rep = run_sweep(cfgs, out, progress=False)
    assert rep.results[first]["resumed_from"] == 1 and rep.results[second]["resumed_from"] is None
    assert rep.counts() == {"done": 2}
    assert rep.summary().splitlines()[0] == "2 runs: 2 done (1 resumed from a checkpoint)"
    assert [e["epoch"] for e in Store(out).epochs(first)] == [1, 2]


def test_submitit_local_executor_completes_two_runs(fake_cifar10, tmp_path, monkeypatch):
    from dctps import progress

    monkeypatch.setenv(progress.ENV, "lines")
    cfgs = expand_grid(small_grid(fake_cifar10))
    assert len(cfgs) == 2
    rep = run_sweep(cfgs, tmp_path, executor="submitit-local", workers=2, progress=True,
                    poll=0.2)  # fmt: skip
    assert rep.counts() == {"done": 2}, rep.summary()
    rows = Store(tmp_path).query({})
    assert sorted(r["hash"] for r in rows) == sorted(c.config_hash() for c in cfgs)
    assert all(r["status"] == "done" and r["test_acc"] is not None for r in rows)
    assert any((tmp_path / "submitit").rglob("*_log.out"))
    # each job's own log has its run's epochs, with the time left
    logs = [p.read_text() for p in (tmp_path / "submitit").rglob("*_log.err")]
    assert sum("epoch 1/" in text and " elapsed" in text for text in logs) == 2, logs


@pytest.mark.parametrize("quiet", [False, True])
def test_a_quiet_sweep_asks_its_jobs_for_no_epoch_lines(tmp_path, quiet, monkeypatch):
    """-q silences the whole command: a submitit job's own log too (it had logged its epochs
    whatever -q said)."""
    from dctps import progress
    from dctps.results import sweep

    monkeypatch.setenv(progress.ENV, "lines")
    asked = []

    class Job:
        def done(self):
            return True

        def result(self):
            return {"hash": None, "status": "done"}

    class Executor:
        def submit(self, fn, *args):
            asked.append(args)
            return Job()

    cfgs = expand_grid(small_grid(tmp_path))
    todo = sweep.plan(cfgs, tmp_path / "out")
    report = sweep.SweepReport(todo)
    bar = sweep._bar(len(todo), not quiet)
    sweep._run_submitit(Executor(), "submitit-local", todo, str(tmp_path), "", 1, {}, True,
                        report, bar, 0.0)  # fmt: skip
    assert [a[5] for a in asked] == [not quiet] * len(cfgs)


def test_bad_executor_and_workers(tmp_path):
    with pytest.raises(DctpsError, match="unknown executor"):
        run_sweep([], tmp_path, executor="ray")
    with pytest.raises(DctpsError, match="workers"):
        run_sweep([], tmp_path, workers=0)


# ----------------------------------------------------------------------------- CLI
def test_cli_sweep_dry_run_then_run_then_noop(fake_cifar10, tmp_path):
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(small_grid("/nonexistent", densities=[0.05, 0.01])))
    out = str(tmp_path / "out")
    common = ["sweep", str(gpath), "--out", out, "--data-root", str(fake_cifar10), "-q"]
    r = runner.invoke(app, [*common, "--dry-run", "--workers", "0"])  # refused before the plan
    assert isinstance(r.exception, DctpsError) and r.output == ""
    assert str(r.exception) == "workers must be a positive integer, got 0"
    r = runner.invoke(app, [*common, "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1] == "3 runs, 3 to train, 0 skipped"
    assert sum(" new " in ln for ln in lines) == 3 and "dctps@0.01" in r.output
    r = runner.invoke(app, common)
    assert r.exit_code == 0, r.output
    assert "3 runs: 3 done" in r.output
    r = runner.invoke(app, common)
    assert r.exit_code == 0 and "3 runs: 3 skip-done" in r.output
    # --epochs changes the runs (a new hash), --set too
    r = runner.invoke(app, [*common, "--dry-run", "--epochs", "2", "--set", "optim.lr=0.01"])
    assert r.output.strip().splitlines()[-1] == "3 runs, 3 to train, 0 skipped"


def test_the_plan_names_what_tells_two_otherwise_alike_runs_apart(tmp_path):
    """Two RigL entries that differ in rigl_alpha (or variants of another lr) were listed as
    the same line twice; each line now names the setting, and only where runs share a line."""
    from dctps.results.sweep import describe_plan

    grid = {"models": ["resnet18"], "base": {"data": {"dataset": "digits"}}, "densities": [0.1],
            "methods": ["snip", {"method": "random", "rigl": True},
                        {"method": "random", "rigl": True, "rigl_alpha": 0.5}]}  # fmt: skip
    text = describe_plan(plan(expand_grid(grid), tmp_path))
    lines = text.splitlines()
    assert lines[0].endswith("snip@0.1 recipe=adam seed=0 epochs=200"), text  # alone: as before
    assert lines[1].endswith("+rigl recipe=adam seed=0 epochs=200 allocation=erk rigl_alpha=0.3")
    assert lines[2].endswith("+rigl recipe=adam seed=0 epochs=200 allocation=erk rigl_alpha=0.5")
    varied = {**grid, "methods": ["snip"], "variants": [{}, {"optim": {"lr": 0.01}}]}
    lines = describe_plan(plan(expand_grid(varied), tmp_path)).splitlines()
    assert lines[0].endswith("epochs=200 lr=0.001") and lines[1].endswith("epochs=200 lr=0.01")


def test_cli_sweep_bad_config_is_one_line(tmp_path):
    gpath = tmp_path / "bad.yaml"
    gpath.write_text("models: [lenet5]\nseeds: [0]\nnope: 1\n")
    r = subprocess.run([sys.executable, "-m", "dctps.cli", "sweep", str(gpath)],
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "COLUMNS": "200"})  # fmt: skip
    assert r.returncode == 2 and r.stderr.strip().startswith("error:") and "'nope'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_slurm_path_as_a_job_array(fake_cifar10, tmp_path, monkeypatch):
    """The slurm executor's job-array code, run by submitit's local cluster (no SLURM here)."""
    import dctps.results.sweep as sweep_mod

    real = sweep_mod._submitit_executor
    seen = {}

    def local_instead(kind, folder, params):
        seen["kind"], seen["params"] = kind, dict(params)
        return real("submitit-local", folder, {})

    monkeypatch.setattr(sweep_mod, "_submitit_executor", local_instead)
    cfgs = expand_grid(small_grid(fake_cifar10))
    rep = run_sweep(cfgs, tmp_path, executor="slurm", workers=2, progress=False, poll=0.2,
                    slurm={"slurm_partition": "gpu"})  # fmt: skip
    # every run is device: cpu, so no GPU is requested; the default time limit is kept
    assert seen == {"kind": "slurm", "params": {"timeout_min": 4320, "slurm_partition": "gpu"}}
    assert rep.counts() == {"done": 2}, rep.summary()
    # --no-wait: submit and return the job ids; the jobs finish on their own
    more = expand_grid(small_grid(fake_cifar10, seeds=[1]))
    rep = run_sweep(more, tmp_path, executor="slurm", progress=False, wait=False)
    assert set(rep.submitted) == {c.config_hash() for c in more}
    assert rep.counts() == {"submitted": 2} and "submitted" in rep.summary()
    store = Store(tmp_path)
    deadline = time.monotonic() + 600  # generous: the jobs run one after another on 2 busy cores
    while sum(r["status"] == "done" for r in store.query({})) < 4:
        assert time.monotonic() < deadline, store.query({})
        time.sleep(0.5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:200]
    except OSError:
        return f"{pid} (gone)"


def _session_members(sid: int) -> list[int]:
    """The processes still alive in session ``sid`` (Linux ``/proc``)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # session id; not a zombie
            alive.append(int(stat.parent.name))
    return alive


@pytest.mark.parametrize(
    ("sig", "whole_group", "code", "said"),
    [
        (signal.SIGINT, True, 130, "interrupted"),  # a terminal's Ctrl-C
        (signal.SIGTERM, False, 143, "terminated (SIGTERM)"),  # timeout, docker stop, a scheduler
        # SLURM's scancel or time limit signals every process of the job: the workers died
        # outright and their rows stayed `running` (a batch review)
        (signal.SIGTERM, True, 143, "terminated (SIGTERM)"),
        (signal.SIGKILL, False, -9, ""),  # out of memory: the workers must notice by themselves
        # Windows: os.getppid() keeps naming a dead parent (a portability review: the workers
        # trained on, then waited forever); faked with a sitecustomize that freezes it
        (signal.SIGKILL, "frozen-ppid", -9, ""),
    ],
    ids=["ctrl-c", "sigterm", "sigterm-whole-job", "sigkill", "sigkill-windows-ppid"],
)
def test_an_interrupt_stops_a_parallel_sweep_without_training_the_queue(
    fake_cifar10, tmp_path, sig, whole_group, code, said
):
    """SIGINT to the process group (a terminal's Ctrl-C), or SIGTERM to the sweep alone, while
    2 workers train: the queued runs must not be trained, the command exits promptly and says
    how to go on, and no worker outlives it (after a SIGTERM the workers trained on and started
    new runs alone); the interrupted runs say where they stopped."""
    grid = small_grid(fake_cifar10, methods=["dctps"], seeds=[0, 1, 2, 3, 4, 5], epochs=500)
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(grid))
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if whole_group == "frozen-ppid":
        site = tmp_path / "site"
        site.mkdir()
        (site / "sitecustomize.py").write_text(
            "import os\n_p = os.getppid()\nos.getppid = lambda: _p\n"
        )
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
        whole_group = False
    proc = subprocess.Popen(
        [sys.executable, "-m", "dctps.cli", "sweep", str(gpath), "--out", str(out),
         "--workers", "2", "-q"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:  # both workers have started a run
            db = out / "results.db"
            if db.is_file() and len(Store(out).query({"status": "running"})) == 2:
                break
            time.sleep(0.5)
        else:
            pytest.fail("the two workers never started")
        t0 = time.time()
        if whole_group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        # the workers' grace is 30 s (WORKER_GRACE_SECONDS) where the sweep died: slack for a
        # loaded CI machine (a flakiness review measured 30.2 s with five processes on two cores)
        output, _ = proc.communicate(timeout=120)
        deadline = time.time() + 15  # multiprocessing's resource tracker exits on its own
        while (left := _session_members(proc.pid)) and time.time() < deadline:
            time.sleep(0.5)
        left = [_cmdline(p) for p in left]
    finally:
        if proc.poll() is None or _session_members(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.time() - t0
    assert proc.returncode == code, output
    assert took < 120, (took, output)
    if sig != signal.SIGKILL:
        assert said in output and "run the same `dctps sweep` again" in output, output
    assert left == [], f"worker processes outlived the sweep: {left}"
    rows = Store(out).query()
    statuses = [r["status"] for r in rows]
    assert len(rows) <= 4 and "done" not in statuses, (statuses, output)
    why = [(r["status"], r["reason"]) for r in rows]
    assert all(r["reason"] and r["reason"].startswith("interrupted") for r in rows), why
    assert set(statuses) == {"interrupted"}, rows  # not left "running", as if still training


def test_a_sequential_sweep_bar_names_the_run_in_progress(
    fake_cifar10, tmp_path, monkeypatch, capsys
):
    """The bar moved only when a run ended; during a long run (FORCE pruning at paper settings
    takes minutes) it said nothing about what was running."""
    from dctps.results import sweep as sweep_mod

    monkeypatch.setenv("DCTPS_PROGRESS", "bar")
    cfgs = expand_grid(small_grid(fake_cifar10, methods=["dense", "dctps"]))
    seen = []

    def fake_run_one(cfg, out, db, restart=False, threads=None, progress=False):
        assert progress is False  # a terminal's bar stays alone: no run's own bar under it
        seen.append(capsys.readouterr().err)
        return {"hash": cfg.config_hash(), "status": "done"}

    monkeypatch.setattr(sweep_mod, "run_one", fake_run_one)
    run_sweep(cfgs, tmp_path, progress=True)
    assert len(seen) == 2
    for text, cfg in zip(seen, cfgs, strict=True):
        assert f"running: {cfg.config_hash()[:8]} {cfg.summary()}" in text


def test_variants_and_sets_that_would_collapse_an_axis_are_refused():
    """`variants: [{seed: 1}, {seed: 2}]` gave one run at the grid's seed, and `--set seed=5` on
    a two-seed grid one run per setting: the axes replaced those values without a word."""
    grid = {"models": ["lenet5"], "methods": ["dctps"], "densities": [0.05], "seeds": [0, 1]}
    for variant, axis in (
        ({"seed": 1}, "seeds"),
        ({"sparsity": {"density": 0.2}}, "densities"),
        ({"model": {"name": "resnet18"}}, "models"),
        ({"data": {"dataset": "digits"}}, "datasets"),
    ):
        with pytest.raises(DctpsError, match=rf"variants\[1\] sets .* list the values in `{axis}"):
            expand_grid({**grid, "variants": [{}, variant]})
    with pytest.raises(DctpsError, match=r"--set sets seed=5, which the grid's seeds axis"):
        expand_grid(grid, overrides=apply_sets(["seed=5"]))
    # an axis of one value is replaced (a figure's data set), and other fields vary freely
    runs = expand_grid(grid, overrides=apply_sets(["data.dataset=cifar100"]))
    assert {c.data.dataset for c in runs} == {"cifar100"} and len(runs) == 2
    runs = expand_grid({**grid, "variants": [{}, {"sparsity": {"allocation": "epf"}}]})
    assert sorted(c.sparsity.allocation for c in runs) == ["epf", "epf", "epl", "epl"]


def test_a_method_setting_in_base_or_set_points_to_the_method_entries():
    """`--set sparsity.rigl_alpha=0.5` on a grid of RigL and static runs was refused with no
    way out: the error now says where such a setting goes, and that place works."""
    grid = {"models": ["lenet5"], "densities": [0.05],
            "methods": ["dctps", "snip", {"method": "random", "rigl": True}]}  # fmt: skip
    with pytest.raises(DctpsError) as e:
        expand_grid(grid, overrides=apply_sets(["sparsity.rigl_alpha=0.5"]))
    assert str(e.value).endswith(
        "--set reaches every run: give sparsity.rigl_alpha in the entries of the methods it "
        "applies to, e.g. methods: [{method: ..., rigl_alpha: 0.5}]"
    ), e.value
    with pytest.raises(DctpsError, match=r"base reaches every run: .*train_alpha: false\}\]$"):
        expand_grid({**grid, "base": {"sparsity": {"train_alpha": False}}})
    rigl = {"method": "random", "rigl": True, "rigl_alpha": 0.5}
    scoped = {**grid, "methods": [{"method": "dctps", "train_alpha": False}, "snip", rigl]}
    runs = {c.sparsity.method: c.sparsity for c in expand_grid(scoped)}
    assert runs["dctps"].train_alpha is False and runs["random"].rigl_alpha == 0.5
    assert runs["snip"].train_alpha is True and runs["snip"].rigl_alpha is None
    with pytest.raises(DctpsError, match=r"give sparsity\.options in the entries of the methods "
                       r"it applies to, e\.g\. methods: \[\{method: \.\.\., options: "
                       r"\{\"iterations\": 3\}\}\]$"):  # fmt: skip
        expand_grid({**grid, "methods": ["dense", "synflow"]},
                    overrides=apply_sets(["sparsity.options.iterations=3"]))  # fmt: skip
    # one method: the setting does not apply to it at all, and no entry would help
    with pytest.raises(DctpsError, match=r"applies only to method dctps$"):
        expand_grid({**grid, "methods": ["snip"]}, overrides=apply_sets(["sparsity.alpha=channel"]))


def test_a_read_only_database_or_run_folder_stops_the_sweep_first(
    fake_cifar10, tmp_path, monkeypatch
):
    """A read-only results.db failed once per run (the store opens it read-only for queries),
    and so did a run folder that cannot be written."""
    import dctps.results.store as store_mod

    cfgs = expand_grid(small_grid(fake_cifar10, methods=["dense"], seeds=[0, 1]))

    class ReadOnly(store_mod.Store):  # as on a read-only file system (root ignores chmod)
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.readonly = True

    with monkeypatch.context() as m:
        m.setattr(store_mod, "Store", ReadOnly)
        with pytest.raises(DctpsError, match=r"results\.db is read-only .* Give another --out"):
            run_sweep(cfgs, tmp_path / "ro", progress=False)
    (tmp_path / "rr").mkdir()
    (tmp_path / "rr" / "runs").write_text("a file where the run folders go")
    with pytest.raises(DctpsError, match=r"cannot write run folder .*runs"):
        run_sweep(cfgs, tmp_path / "rr", progress=False)
    assert Store(tmp_path / "rr").query() == []  # nothing ran


def test_threads_per_run_follow_omp_num_threads_and_the_cpu_affinity(monkeypatch):
    """Runs of a parallel or submitit sweep took os.cpu_count() // workers threads, ignoring
    OMP_NUM_THREADS and a taskset/cgroup limit (32 threads per run on a node limited to 2)."""
    import os

    from dctps.results import sweep as sw

    monkeypatch.setenv("OMP_NUM_THREADS", "6")
    assert sw.available_cpus() == 6 and sw._threads(2) == 3 and sw._threads(12) == 1
    monkeypatch.delenv("OMP_NUM_THREADS")
    if hasattr(os, "sched_getaffinity"):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        monkeypatch.setattr(os, "cpu_count", lambda: 64)
        assert sw.available_cpus() == 4 and sw._threads(2) == 2


def test_threads_sets_each_runs_torch_threads_and_leaves_the_callers(
    fake_cifar10, tmp_path, monkeypatch
):
    """`sweep --threads N` (a review: only `train` had it): each run trains with N torch
    threads (its checkpoint records them), the sweep's own process gets its count back, and
    parallel workers and submitit jobs take N over CPUs // workers."""
    import torch

    from dctps.results import sweep as sw

    before = torch.get_num_threads()
    want = 1 if before > 1 else 2
    cfgs = expand_grid(small_grid(fake_cifar10, methods=["dense"]))
    rep = run_sweep(cfgs, tmp_path, progress=False, threads=want)
    assert not rep.errors and torch.get_num_threads() == before
    (run,) = (tmp_path / "runs").iterdir()
    assert torch.load(run / "last.pt", weights_only=True)["threads"] == want
    with pytest.raises(DctpsError, match="threads must be >= 0 .*got -1"):
        run_sweep(cfgs, tmp_path, progress=False, threads=-1)
    with pytest.raises(DctpsError, match="--threads must be >= 0 .*got -2"):
        sw.sweep_command("nothere.yaml", str(tmp_path), threads=-2)  # before the grid is read

    calls = []

    class Executor:  # submitit-local: the jobs' thread count
        def submit(self, fn, *args):
            calls.append(args)
            return type("Job", (), {"done": lambda self: True, "result": lambda self: {}})()

    todo = [p for p in plan(expand_grid(small_grid(fake_cifar10, seeds=[0, 1])), tmp_path / "b")]
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    # --threads over CPUs // workers, and over a SLURM job's cpus_per_task
    for params, threads, expect in (({}, None, 4), ({}, 3, 3), ({"cpus_per_task": 5}, None, 5),
                                    ({"cpus_per_task": 5}, 3, 3)):  # fmt: skip
        calls.clear()
        sw._run_submitit(Executor(), "submitit-local", todo, str(tmp_path), "r.db", 2, params,
                         True, sw.SweepReport(todo), None, 0.0, threads)  # fmt: skip
        assert {c[4] for c in calls} == {expect}, (params, threads)
        assert {c[5] for c in calls} == {False}  # no bar (-q): its jobs are quiet too

    import concurrent.futures

    class Pool:  # a parallel local sweep's workers: the initializer's thread count
        def __init__(self, **kw):
            calls.append(kw["initargs"][0])
            raise RuntimeError("enough")

    monkeypatch.setattr(concurrent.futures, "ProcessPoolExecutor", Pool)
    for threads, expect in ((None, 4), (3, 3)):
        calls.clear()
        with pytest.raises(RuntimeError, match="enough"):
            sw._run_local(todo, str(tmp_path), "r.db", 2, sw.SweepReport(todo), None, threads)
        assert calls == [expect]


def test_threads_reach_the_runs_from_the_command_line(fake_cifar10, tmp_path, monkeypatch):
    """`dctps sweep --threads` and `dctps figure --threads` pass the count on (run_figure
    also takes None, as run_sweep does); a SLURM sweep's runs are on other machines, so this
    machine's CPUs do not bound it."""
    from typer.testing import CliRunner

    from dctps import cli
    from dctps.results import figures
    from dctps.results import sweep as sw

    class Stop(Exception):
        pass

    seen: list = []

    def capture(*a, **kw):
        seen.append(kw["threads"])
        raise Stop

    grid = tmp_path / "g.yaml"
    grid.write_text(yaml.safe_dump(small_grid(fake_cifar10, methods=["dense"])))
    runner = CliRunner()
    with monkeypatch.context() as m:
        m.setattr(sw, "run_sweep", capture)
        r = runner.invoke(cli.app, ["sweep", str(grid), "--out", str(tmp_path), "--threads", "2"])
        assert isinstance(r.exception, Stop), r.output
        m.setattr(figures, "run_figure", capture)
        r = runner.invoke(cli.app, ["figure", "A.1", "--threads", "3"])
        assert isinstance(r.exception, Stop), r.output
    with monkeypatch.context() as m:
        m.setattr(figures, "run_sweep", capture)
        for threads in (None, 4):
            with pytest.raises(Stop):
                figures.run_figure("density-lenet5-cifar10", tmp_path, config=str(grid),
                                   threads=threads, echo=lambda s: None)  # fmt: skip
    assert seen == [2, 3, None, 4]
    sw.sweep_command(str(grid), str(tmp_path), executor="slurm", threads=10**4, dry_run=True,
                     echo=lambda s: None)  # fmt: skip
    with pytest.raises(DctpsError, match="more than 4x this machine's"):
        sw.sweep_command(str(grid), str(tmp_path), threads=10**4, dry_run=True)
    figures.run_figure("density-lenet5-cifar10", tmp_path, config=str(grid), executor="slurm",
                       threads=10**4, dry_run=True, echo=lambda s: None)  # fmt: skip
    with monkeypatch.context() as m:  # run_sweep gets past its check for SLURM, to planning
        m.setattr(sw, "plan", lambda *a, **kw: (_ for _ in ()).throw(Stop()))
        with pytest.raises(Stop):
            sw.run_sweep(expand_grid(yaml.safe_load(grid.read_text())), tmp_path,
                         executor="slurm", threads=10**4)  # fmt: skip
    # on the machine that runs it, an impossible count is the run's error, not a crash
    (cfg,) = expand_grid(yaml.safe_load(grid.read_text()))
    res = sw.run_one(cfg, str(tmp_path), str(tmp_path / "r.db"), threads=10**6)
    assert res["status"] == "error" and "more than 4x this machine's" in res["reason"]


def test_an_interrupted_submitit_local_sweep_stops_its_jobs(fake_cifar10, tmp_path, monkeypatch):
    """Ctrl-C or SIGTERM of a `--executor submitit-local` sweep left its jobs training, orphaned
    (a rerun then found its runs "being trained by another process")."""
    from dctps.results import sweep as sw

    cancelled: list[int] = []

    class Job:
        def __init__(self, n):
            self.n, self.stopped = n, False

        def done(self):
            return self.stopped

        def cancel(self, check=True):
            cancelled.append(self.n)
            self.stopped = True

    class Executor:
        def __init__(self):
            self.jobs = []

        def submit(self, fn, *args):
            self.jobs.append(Job(len(self.jobs)))
            return self.jobs[-1]

    def interrupt(seconds):
        raise KeyboardInterrupt

    cfgs = expand_grid(small_grid(fake_cifar10, methods=["dense"], seeds=[0, 1, 2]))
    todo = [p for p in plan(cfgs, tmp_path) if p.runs]
    ex = Executor()
    monkeypatch.setattr(sw.time, "sleep", interrupt)
    with pytest.raises(KeyboardInterrupt):
        sw._run_submitit(ex, "submitit-local", todo, str(tmp_path), str(tmp_path / "r.db"), 2,
                         {}, True, sw.SweepReport(todo), None, 0.01)  # fmt: skip
    assert len(ex.jobs) == 2 and cancelled == [0, 1]  # the two in flight; the third never ran


# ----------------------------------------------------------------------------- preflight
def test_slurm_jobs_ask_for_a_gpu_unless_every_run_is_on_cpu():
    from dctps.results.sweep import slurm_overrides, slurm_parameters

    cpu = expand_grid(small_grid(Path("/nowhere")))
    auto = expand_grid({**small_grid(Path("/nowhere")), "base": {"optim": {"epochs": 1}}})
    assert {c.device for c in auto} == {"auto"}
    assert slurm_parameters(cpu, {}) == {"timeout_min": 4320}
    assert slurm_parameters(auto, {}) == {"timeout_min": 4320, "gpus_per_node": 1}
    # the user's own GPU request (any spelling submitit knows) replaces the default one
    assert slurm_parameters(auto, {"slurm_gres": "gpu:a100:2"}) == {
        "timeout_min": 4320, "slurm_gres": "gpu:a100:2"}  # fmt: skip
    assert slurm_parameters(auto, {"gpus_per_node": 4, "timeout_min": 60}) == {
        "timeout_min": 60, "gpus_per_node": 4}  # fmt: skip
    # --slurm KEY=VALUE over the grid's slurm: mapping, values read as YAML
    assert slurm_overrides({"slurm_partition": "gpu", "mem_gb": 16}, ["mem_gb=32", "name=x"]) == {
        "slurm_partition": "gpu", "mem_gb": 32, "name": "x"}  # fmt: skip
    with pytest.raises(DctpsError, match=r"--slurm expects a submitit parameter KEY=VALUE"):
        slurm_overrides(None, ["mem_gb"])
    # --slurm with another executor would be ignored, typos and all: refused
    with pytest.raises(DctpsError, match=r"--slurm .* needs --executor slurm, not 'local'"):
        slurm_overrides(None, ["slurm_partiton=x"], "local")
    assert slurm_overrides({"mem_gb": 4}, [], "local") == {"mem_gb": 4}  # the grid's: kept
    # a GPU asked for through sbatch's own options is not asked for twice
    for asked in ({"gres": "gpu:1"}, {"GRES": "gpu:a100:2"}, {"tres-per-task": "gres/gpu:1"},
                  {"gpus": 2}):  # fmt: skip
        assert "gpus_per_node" not in slurm_parameters(auto, {"slurm_additional_parameters": asked})
    # options that only tune GPUs, or a gres of something else, allocate none: the default stays
    for tuned in ({"gres_flags": "enforce-binding"}, {"gpu_bind": "closest"},
                  {"gpu-freq": "high"}, {"gres": "tmpfs:10G"}):  # fmt: skip
        params = slurm_parameters(auto, {"slurm_additional_parameters": tuned})
        assert params["gpus_per_node"] == 1, tuned
    assert slurm_parameters(auto, {"slurm_gres": "tmpfs:10G"})["gpus_per_node"] == 1
    assert "gpus_per_node" not in slurm_parameters(auto, {"slurm_gres": "gpu:v100:1"})


def test_preflight_finds_each_problem_once_for_the_grid(tmp_path, monkeypatch):
    import torch

    from dctps.results.sweep import preflight

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = {"base": {"data": {"root": str(tmp_path / "none")}, "device": "cuda"},
            "models": ["lenet5", "resnet18"], "datasets": ["digits", "cifar10"],
            "methods": ["dctps"], "densities": [0.1], "seeds": [0, 1, 2]}  # fmt: skip
    cfgs = expand_grid(grid)
    problems = preflight(cfgs, "local")
    assert len(problems) == 3, problems
    found = re.search(
        r"LeNet-5 needs 32x32 .*got image_size=8; models that take 8x8 inputs: "
        r"([a-z0-9_, ]+) \(3 runs of model 'lenet5' on 'digits'\)",
        problems[0],
    )
    assert found, problems[0]
    paper = ("fixup_resnet110", "mobilenetv2", "resnet18", "resnet50", "vgg19", "lenet5")
    # the paper's models among them exactly (one added later may take 8x8 too)
    assert [m for m in found.group(1).split(", ") if m in paper] == [
        "fixup_resnet110", "mobilenetv2", "resnet18", "resnet50"]  # fmt: skip
    assert "cifar10" in problems[1] and "the sweep checks every data set" in problems[1]
    assert problems[2].endswith(
        "device 'cuda' requested but CUDA is not available on this host "
        "(give device cpu or auto: --device, or the grid's device)"
    )
    # on SLURM the nodes may have the data and the GPUs: only what no host could run, and typos
    problems = preflight(cfgs, "slurm", {"slurm_partiton": "gpu", "mem_gb": 8})
    assert len(problems) == 2 and "lenet5" in problems[0], problems
    assert "unknown SLURM (submitit) parameter 'slurm_partiton'. Did you mean " \
        "'slurm_partition'?" in problems[1]  # fmt: skip
    problems = preflight(cfgs, "slurm", {"gpus_per_node": "abc", "mem_gb": -1, "timeout_min": 60})
    assert problems[1:] == ["SLURM parameter gpus_per_node must be a non-negative number, got "
                            "'abc'", "SLURM parameter mem_gb must be a non-negative number, "
                            "got -1"], problems  # fmt: skip
    ok = expand_grid({**grid, "models": ["resnet18"], "datasets": ["digits"], "base": {}})
    assert preflight(ok, "local") == [] and preflight(ok, "slurm", {"mem_gb": 8}) == []


def test_a_grid_that_cannot_run_fails_once_before_any_run(tmp_path):
    cfgs = expand_grid({"base": {"data": {"dataset": "digits"}, "optim": {"epochs": 1}},
                        "models": ["lenet5"], "methods": ["dense", "dctps"],
                        "densities": [0.1], "seeds": [0, 1]})  # fmt: skip
    with pytest.raises(DctpsError, match=r"LeNet-5 needs 32x32 .*\(4 runs of model 'lenet5'"):
        run_sweep(cfgs, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # nothing written: no store, no run folders


def test_dry_run_prints_the_plan_then_refuses_what_the_sweep_would(tmp_path):
    gpath = tmp_path / "g.yaml"
    gpath.write_text("base: {data: {dataset: digits}, optim: {epochs: 1}}\n"
                     "models: [lenet5, resnet18]\nmethods: [dctps]\n"
                     "densities: [0.1]\n")  # fmt: skip
    env = {**os.environ, "COLUMNS": "200"}

    def dry(*extra):
        return subprocess.run([sys.executable, "-m", "dctps.cli", "sweep", str(gpath),
                               "--dry-run", "--out", str(tmp_path / "o"), *extra],
                              capture_output=True, text=True, timeout=120, env=env)  # fmt: skip

    r = dry()
    assert r.returncode == 2 and "2 runs, 2 to train" in r.stdout, r.stdout + r.stderr
    assert "would stop before its first run: LeNet-5 needs 32x32" in r.stderr
    gpath.write_text(gpath.read_text().replace("lenet5, ", ""))
    r = dry("--executor", "slurm", "--slurm", "slurm_partition=gpu")
    assert r.returncode == 0, r.stderr
    assert ("SLURM jobs (submitit parameters): timeout_min=4320, gpus_per_node=1, "
            "slurm_partition='gpu'") in r.stdout  # fmt: skip
    r = dry("--executor", "slurm", "--slurm", "gpus_per_nod=2")
    assert r.returncode == 2 and "Did you mean 'gpus_per_node'?" in r.stderr, r.stderr
    r = dry("--workers", "0")
    assert r.returncode == 2 and "workers must be a positive integer, got 0" in r.stderr
    assert not (tmp_path / "o").exists()


def test_a_run_another_process_trains_is_busy_not_an_error(fake_cifar10, tmp_path):
    """Two sweeps of one grid on one --out (or a sweep beside `dctps train`): the second met the
    first's run lock and reported an error with a traceback, exiting 1. It is `busy` now: left
    to the process that holds it, the sweep going on with its other runs."""
    import fcntl

    import dctps.results.sweep as sweep_mod

    cfgs = expand_grid(small_grid(fake_cifar10, methods=["dense"], seeds=[0, 1]))
    held = tmp_path / "runs" / cfgs[0].config_hash()
    held.mkdir(parents=True)
    with open(held / ".lock", "a+") as f:  # as the other process's fit holds it
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        rep = run_sweep(cfgs, tmp_path, progress=False)
    assert rep.counts() == {"busy": 1, "done": 1} and rep.errors == []
    assert "busy 1" in sweep_mod._postfix(rep, "x")
    summary = rep.summary()
    assert "1 run busy: being trained by another process (on the same --out or --db)" in summary
    assert f"busy   {cfgs[0].config_hash()} " in summary and "traceback" not in summary
    assert not (tmp_path / "errors").exists()
    # once the other process is gone, the next sweep trains it
    assert run_sweep(cfgs, tmp_path, progress=False).counts() == {"done": 1, "skip-done": 1}
    # a run found done when its turn came (another sweep finished it) was counted as trained
    from dctps.results.sweep import SweepReport

    rep = SweepReport(plan(cfgs, tmp_path / "elsewhere"))
    rep.results = {cfgs[0].config_hash(): {"status": "done", "skipped": True},
                   cfgs[1].config_hash(): {"status": "done", "skipped": False}}  # fmt: skip
    assert rep.counts() == {"done": 1, "done-elsewhere": 1}


def test_a_sweep_does_not_skip_runs_done_on_other_data(fake_cifar10, tmp_path):
    """A sweep skipped every run found done whatever its data root: a grid rerun on the real
    data set into an --out of fake-data runs reported the fake results. Refused at planning,
    before any run, naming the run; the same data in another folder still skip."""
    import shutil

    from conftest import write_fake_cifar10

    out = tmp_path / "out"
    rep = run_sweep(expand_grid(small_grid(fake_cifar10, methods=["dense"])), out, progress=False)
    assert rep.counts() == {"done": 1}
    (h,) = rep.results
    other = write_fake_cifar10(tmp_path / "other", seed=1)
    moved = expand_grid(small_grid(other, methods=["dense"]))
    assert [c.config_hash() for c in moved] == [h]
    with pytest.raises(DctpsError, match=rf"run {h} \(done\) .* trained on other data"):
        run_sweep(moved, out, progress=False)
    copy = shutil.copytree(fake_cifar10, tmp_path / "copy")
    again = run_sweep(expand_grid(small_grid(copy, methods=["dense"])), out, progress=False)
    assert again.counts() == {"skip-done": 1}


def test_a_script_without_a_main_guard_is_told_why_its_workers_die(tmp_path):
    """Sweep workers are spawned (on every platform): each imports the main script. A script
    that called run_sweep at its top level got every run reported "killed or out of memory"
    and 276 lines of multiprocessing's bootstrapping text; a worker now refuses to start a
    sweep of its own, saying why, and the summary names the guard."""
    script = tmp_path / "noguard.py"
    script.write_text(
        textwrap.dedent("""
        import sys
        from dctps.results.sweep import expand_grid, run_sweep
        grid = {"base": {"optim": {"epochs": 1, "batch_size": 64}, "device": "cpu",
                         "data": {"subset": 64}},
                "models": ["resnet18"], "datasets": ["digits"], "methods": ["dense"],
                "densities": [0.05], "seeds": [0, 1]}
        print("SUMMARY", run_sweep(expand_grid(grid), sys.argv[1], workers=2,
                                   progress=False).summary())
    """)
    )
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "out")],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path)  # fmt: skip
    summary = p.stdout[p.stdout.index("SUMMARY") :]
    assert "2 runs: 2 error" in summary
    assert summary.count("a script that calls run_sweep must do so under `if __name__ ==") == 2
    assert "run_sweep was called while a sweep worker was importing the main script" in p.stderr


def test_a_failed_submitit_job_reports_its_error_not_its_log_path(tmp_path):
    """A submitit-local job that failed outside run_one (on Windows: submitit's own SIGCONT)
    was reported as the last line of submitit's message, the path of its .out log; the error
    itself was dropped. A real failed job's message gives the error and the .err log."""
    import submitit

    from dctps.results.sweep import job_failure

    ex = submitit.AutoExecutor(folder=str(tmp_path / "%j"), cluster="local")
    ex.update_parameters(timeout_min=2)
    job = ex.submit(int, "not a number")
    with pytest.raises(Exception) as info:
        job.result()
    line = job_failure(info.value)
    assert line.startswith("ValueError: invalid literal for int() with base 10: 'not a number'")
    assert line.endswith("_log.err)") and "(log: " + str(tmp_path) in line


def test_slurm_gpu_requests_for_mixed_grids_and_every_spelling(monkeypatch):
    """A mutation audit: only all-cpu and all-auto grids were tested. A grid with some cpu
    runs still asks a GPU for its others, as does `device: cuda`; every way submitit or
    sbatch spells a GPU request replaces the default; `gpus_per_node: 0` opts out; counts
    refuse booleans; preflight checks this host for submitit-local too, and `cuda:1`."""
    from dctps.results.sweep import (
        _asks_for_gpus,
        host_problems,
        preflight,
        slurm_parameters,
        submitit_parameter_problems,
    )

    def grid(device, **base):
        return expand_grid({"models": ["resnet18"], "datasets": ["digits"],
                            "methods": ["dctps"], "densities": [0.1], "seeds": [0],
                            "base": {"device": device, **base}})  # fmt: skip

    cpu, auto, cuda, cuda1 = grid("cpu"), grid("auto"), grid("cuda"), grid("cuda:1")
    assert slurm_parameters(cpu + auto, {})["gpus_per_node"] == 1
    assert slurm_parameters(cuda, {})["gpus_per_node"] == 1
    for asked in ({"slurm_gpus_per_task": 2}, {"slurm_mem_per_gpu": 8000},
                  {"slurm_additional_parameters": {"gpus-per-task": 2}}):  # fmt: skip
        assert "gpus_per_node" not in slurm_parameters(auto, asked), asked
    assert _asks_for_gpus("gres", "GPU:1")
    assert submitit_parameter_problems({"gpus_per_node": 0}) == []
    assert slurm_parameters(auto, {"gpus_per_node": 0})["gpus_per_node"] == 0
    assert any("mem_gb" in p for p in submitit_parameter_problems({"mem_gb": True}))
    missing = expand_grid(
        {
            "models": ["lenet5"],
            "datasets": ["cifar10"],
            "methods": ["dense"],
            "seeds": [0],
            "base": {"device": "cpu", "data": {"root": "/nowhere"}},
        }
    )
    assert any("/nowhere" in p for p in preflight(missing, "submitit-local"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert any("'cuda:1' requested but CUDA is not available" in p for p in host_problems(cuda1))


def test_a_sweep_under_torchrun_refuses_parallel_workers(monkeypatch, tmp_path):
    """Under torchrun the pool workers inherited RANK/WORLD_SIZE and joined the launcher's
    process group: runs of different configs met in one DDP group and the sweep hung. Such a
    sweep trains its runs one after the other (--workers 1, local); anything else is refused.
    Its errors name the rank that prints them."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    for kw in ({"workers": 2}, {"executor": "submitit-local"}):
        with pytest.raises(DctpsError, match=r"a sweep under torchrun \(2 processes\) trains its "
                           r"runs one after the other, each with DDP: give workers=1 and "
                           r"executor local \(--workers 1 --executor local; got "):  # fmt: skip
            run_sweep([], tmp_path / "s", **kw)
    assert run_sweep([], tmp_path / "s", workers=1).counts() == {}
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "1"}
    p = subprocess.run([sys.executable, "-m", "dctps.cli", "train", "--model", "resnet-18"],
                       capture_output=True, text=True, env=env)  # fmt: skip
    assert p.returncode == 2 and p.stderr.startswith("[rank 1] error: unknown model 'resnet-18'")


def test_a_run_config_and_a_sweep_grid_given_to_each_other_s_command_say_so(tmp_path):
    """`dctps train --config GRID` failed on "unknown key 'name'", `dctps sweep RUN.yaml` on
    "unknown key 'model'": each now names the other command."""
    from dctps.train.config import RunConfig, load_config, save_config

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump(small_grid("/nonexistent", densities=[0.05])))
    with pytest.raises(DctpsError, match=rf"{grid} is a sweep grid \(keys .*\), not a run "
                       rf"config: run it with `dctps sweep {grid}`"):  # fmt: skip
        load_config(grid)
    run = tmp_path / "config.yaml"
    save_config(RunConfig(), run)
    r = runner.invoke(app, ["sweep", str(run), "--dry-run"])
    assert isinstance(r.exception, DctpsError)
    assert "is a run config (keys model, data, sparsity" in str(r.exception)
    assert f"train it with `dctps train --config {run}`" in str(r.exception)
    # one key is thin evidence (a typo of a run-config key): the plain unknown-key error
    typo = tmp_path / "typo.yaml"
    typo.write_text("models: {name: lenet5}\n")
    with pytest.raises(DctpsError, match=r"unknown key 'models'") as e:
        load_config(typo)
    assert "sweep grid" not in str(e.value)


def test_a_pruned_run_recorded_before_the_path_check_is_not_reused(tmp_path):
    """A docs review: a SNIP or random run recorded before `prune` checked its masks for a path
    kept its hash, so a sweep into its store skipped it as done and averaged its chance
    accuracy (a disconnected network trained) with today's runs, which fail instead. Pruned
    runs' identities carry the check; their old rows are told apart and their configs re-run.
    DCTpS, dense and RigL runs (whose prune skips the check) keep their hashes."""
    from dctps.results.store import run_identity
    from dctps.train.config import identity_hash

    grid = small_grid(Path("/nowhere"), methods=["dense", "dctps", "random", "snip"])
    cfgs = expand_grid(grid)
    store = Store(tmp_path / "results.db")
    for c in cfgs:
        ident = c.identity()
        marked = ident["sparsity"].pop("path_check", None)
        assert (marked == 1) == (c.sparsity.method in ("random", "snip")), c.summary()
        old = identity_hash(ident)  # the hash before the check
        assert (old == c.config_hash()) == (marked is None)
        store.start(old, c.to_dict())
        store.finish(old, val_acc=0.1, test_acc=0.1)
    actions = {p.cfg.sparsity.method: p.action for p in plan(cfgs, tmp_path)}
    assert actions == {"dense": "skip-done", "dctps": "skip-done", "random": "new",
                       "snip": "new"}  # fmt: skip
    older = {r["method"]: run_identity(r).get("recorded_by") for r in store.query()}
    assert older == {"dense": None, "dctps": None, "random": "an older dctps",
                     "snip": "an older dctps"}  # fmt: skip
    rigl = expand_grid({**grid, "methods": [{"method": "random", "rigl": True}]})
    assert "path_check" not in rigl[0].identity()["sparsity"]
    from dctps import pruning

    every = expand_grid({**grid, "methods": pruning.names()})
    assert {c.sparsity.method for c in every} == set(pruning.names())
    assert all(c.identity()["sparsity"]["path_check"] == pruning.PATH_CHECK for c in every)


def test_dry_run_lists_a_run_whose_budget_train_refuses_as_refused(fake_cifar10, tmp_path):
    """A combinations review: `--alpha channel` at a density too low to pay for the alphas was
    listed `new` by --dry-run, then reported as an error by the sweep. The dry run now finds it
    as `dctps train` does (the meta device) and says why; the other densities stay `new`."""
    g = small_grid(fake_cifar10, densities=[0.05, 0.001], methods=["dctps"])
    g["base"]["sparsity"] = {"alpha": "channel"}
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(g))
    out = str(tmp_path / "out")
    r = runner.invoke(app, ["sweep", str(gpath), "--out", out, "--dry-run"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    refused = [i for i, ln in enumerate(lines) if ln.split()[1:2] == ["refused"]]
    assert len(refused) == 1 and "dctps@0.001" in lines[refused[0]]
    assert "too few to pay for its 15 extra per-channel alphas" in lines[refused[0] + 1]
    assert sum(" new " in ln for ln in lines) == 1 and "dctps@0.05" in r.output
    assert (
        lines[-1]
        == "2 runs, 1 to train, 0 skipped, 1 refused (the sweep would report it as an error)"
    )
    assert not Path(out).exists()  # a dry run writes nothing
    # the sweep reports it as an error with the same reason (no row), and trains the other
    r = runner.invoke(app, ["sweep", str(gpath), "--out", out, "-q"])
    assert r.exit_code == 1 and "2 runs: 1 done, 1 error" in r.output
    assert "too few to pay for its 15 extra per-channel alphas" in r.output
    rows = Store(Path(out) / "results.db").query()
    assert [(x["density"], x["status"]) for x in rows] == [(0.05, "done")]


def test_dry_run_finds_refusals_once_per_setting_for_every_seed_and_lists_kaiming_runs(tmp_path):
    """The refusal of a setting holds for each of its seeds (the dry run builds it once); a
    per-layer Kaiming alpha, which the meta device could not compute (a review), is `new`."""
    g = small_grid("/nonexistent", densities=[0.05, 0.001], methods=["dctps"], seeds=[0, 1, 2])
    g["base"]["sparsity"] = {"alpha": "channel"}
    g["variants"] = [{}, {"sparsity": {"alpha": "layer", "alpha_init": "kaiming"}}]
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(g))
    r = runner.invoke(app, ["sweep", str(gpath), "--out", str(tmp_path / "o"), "--dry-run"])
    lines = r.output.strip().splitlines()
    refused = [ln for ln in lines if ln.split()[1:2] == ["refused"]]
    assert len(refused) == 3 and all("dctps@0.001 alpha=channel" in ln for ln in refused)
    assert sum(ln.split()[1:2] == ["new"] for ln in lines) == 9, r.output
    assert "12 runs, 9 to train, 0 skipped, 3 refused (the sweep would report them as errors)" in (
        r.output
    )


def test_dry_run_lists_a_rigl_run_that_would_never_update_as_refused(tmp_path):
    """A review: `dctps train` refuses a RigL run whose schedule never updates the supports
    (1 epoch of 64 images at batch 32: 2 steps, RigL every 100); the dry run listed it `new`.
    It counts the steps from the data set's official size, as the loader would."""
    from dctps.train.setup import train_steps

    g = small_grid("/nonexistent", methods=["dense", {"method": "dctps", "rigl": True}])
    g["base"]["data"]["subset"] = 64
    gpath = tmp_path / "grid.yaml"
    gpath.write_text(yaml.safe_dump(g))
    cfgs = expand_grid(load_grid(gpath))
    assert {train_steps(c) for c in cfgs} == {2}
    r = runner.invoke(app, ["sweep", str(gpath), "--out", str(tmp_path / "o"), "--dry-run"])
    lines = r.output.strip().splitlines()
    refused = [i for i, ln in enumerate(lines) if ln.split()[1:2] == ["refused"]]
    assert len(refused) == 1 and "+rigl" in lines[refused[0]].lower()
    assert "RigL would never update the supports" in lines[refused[0] + 1]
    # without a subset: CIFAR-10's 45,000 training images after the hold-out, batch 32
    full = [c for c in expand_grid({**g, "base": {**g["base"], "data": {"root": "/x"}}})]
    assert {train_steps(c) for c in full} == {-(-45000 // 32)}


def test_the_summary_groups_many_failures_by_reason(fake_cifar10, tmp_path):
    """A scale review: a sweep whose 255 runs all raised alike printed two lines a run (511
    lines, 108 KB); beyond SUMMARY_RUNS, failures are one line per reason with a count and an
    example, and busy or submitted runs are counted past the first few."""
    from dctps.results.sweep import SUMMARY_RUNS, PlannedRun, SweepReport

    cfgs = expand_grid(small_grid(fake_cifar10, seeds=list(range(30)), methods=["dense"]))
    planned = [PlannedRun(c, c.config_hash(), "new") for c in cfgs]
    hashes = [p.hash for p in planned]
    results = {h: {"hash": h, "status": "error", "reason": "FileNotFoundError: data_batch_1",
                   "traceback_file": str(tmp_path / "errors" / f"{h}.txt")}
               for h in hashes[:25]}  # fmt: skip
    results.update({h: {"hash": h, "status": "failed", "reason": "snip: shortfall"}
                    for h in hashes[25:]})  # fmt: skip
    lines = SweepReport(planned, results).summary().splitlines()
    assert lines[0] == "30 runs: 25 error, 5 failed"
    assert lines[1:] == [
        "  25 error: FileNotFoundError: data_batch_1",
        f"         e.g. {hashes[0]} {cfgs[0].summary()} and 24 more",
        "  5 failed: snip: shortfall",
        f"         e.g. {hashes[25]} {cfgs[25].summary()} and 4 more",
        f"  tracebacks in {tmp_path / 'errors'}",
    ]
    few = SweepReport(planned, dict(list(results.items())[:SUMMARY_RUNS])).summary()
    assert len(few.splitlines()) == 1 + 2 * SUMMARY_RUNS  # each named, with its traceback
    jobs = SweepReport(planned, submitted={h: str(1000 + i) for i, h in enumerate(hashes)})
    text = jobs.summary().splitlines()
    assert len(text) == 1 + SUMMARY_RUNS + 1
    assert text[-1] == "  ... and 20 more submitted (jobs 1010 to 1029)"


def test_plan_reads_every_row_of_a_grid_past_its_batches(tmp_path):
    """A mutation audit: `plan` reads the store 500 hashes at a time, and no test had more
    than 500 runs (a batch of 499 retrained one finished run in each 500)."""
    from dctps.results.sweep import PlannedRun, SweepReport

    cfgs = expand_grid({"base": {"optim": {"epochs": 1}, "device": "cpu"}, "models": ["lenet5"],
                        "datasets": ["cifar10"], "methods": ["dense"], "densities": [1.0],
                        "seeds": list(range(501))})  # fmt: skip
    store = Store(tmp_path / "out")
    for c in cfgs:
        store.start(c.config_hash(), c.to_dict())
        store.finish(c.config_hash(), val_acc=0.5, test_acc=0.5)
    store.close()
    assert [p.action for p in plan(cfgs, tmp_path / "out")] == ["skip-done"] * 501
    # a run found done by another process is not one resumed here
    planned = [PlannedRun(c, c.config_hash(), "resume") for c in cfgs[:2]]
    results = {planned[0].hash: {"status": "done", "resumed_from": 1, "skipped": True},
               planned[1].hash: {"status": "done", "resumed_from": 1}}  # fmt: skip
    first = SweepReport(planned, results).summary().splitlines()[0]
    assert first == "2 runs: 1 done, 1 done-elsewhere (1 resumed from a checkpoint)"


def test_a_failed_run_on_other_data_is_not_skipped_silently(fake_cifar10, tmp_path):
    from conftest import write_fake_cifar10

    def grid(root):
        return expand_grid(small_grid(root, methods=["dense"]))

    out = tmp_path / "out"
    (h,) = run_sweep(grid(fake_cifar10), out, progress=False).results
    Store(out).fail(h, "snip: shortfall")
    other = write_fake_cifar10(tmp_path / "other", seed=1)
    with pytest.raises(DctpsError, match=rf"run {h} \(failed\) .* trained on other data"):
        plan(grid(other), out)
