"""The SQLite results store: rows, upserts, queries, CSV, and many concurrent writers."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dctps.errors import DctpsError
from dctps.results.store import RUN_COLUMNS, Store, format_table, parse_where, print_results


def cfg(method="dctps", density=0.01, seed=0, model="lenet5"):
    return {
        "model": {"name": model},
        "data": {"dataset": "cifar10"},
        "sparsity": {"method": method, "density": density, "allocation": "epl", "rigl": False},
        "optim": {"recipe": "adam"},
        "seed": seed,
    }


def test_run_lifecycle_and_epochs(tmp_path):
    s = Store(tmp_path)  # a folder -> folder/results.db
    assert s.path == (tmp_path / "results.db").resolve()
    assert s.get("h1") is None
    s.start("h1", cfg())
    row = s.get("h1")
    assert row["status"] == "running" and row["model"] == "lenet5" and row["density"] == 0.01
    assert json.loads(row["config_json"])["seed"] == 0 and row["rigl"] == 0
    s.log_epoch("h1", 1, train_loss=2.0, val_acc=0.1, lr=1e-3, seconds=1.5)
    s.log_epoch("h1", 2, train_loss=1.5, val_acc=0.2, lr=1e-3, seconds=1.5)
    s.log_epoch("h1", 2, train_loss=1.4, val_acc=0.3, lr=1e-3, seconds=1.5)  # upsert
    eps = s.epochs("h1")
    assert [(e["epoch"], e["train_loss"], e["val_acc"]) for e in eps] == [
        (1, 2.0, 0.1),
        (2, 1.4, 0.3),
    ]
    s.finish("h1", val_acc=0.3, test_acc=0.25, best_epoch=2, weights=10, nonzeros=1)
    row = s.get("h1")
    assert row["status"] == "done" and row["test_acc"] == 0.25 and row["reason"] is None
    created = row["created"]
    s.start("h1", cfg())  # restart keeps 'created'
    assert s.get("h1")["created"] == created and s.get("h1")["status"] == "running"
    s.fail("h1", "non-finite loss at epoch 3, step 7")
    assert s.get("h1")["reason"].startswith("non-finite")
    with pytest.raises(DctpsError, match="unknown epoch column"):
        s.log_epoch("h1", 3, accuracy=1.0)
    with pytest.raises(DctpsError, match="no run"):
        s.finish("nope", val_acc=1.0)
    mode = sqlite3.connect(s.path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode.lower() == "wal"


def test_query_where_and_csv(tmp_path):
    s = Store(tmp_path / "x.db")
    for i, (m, d) in enumerate([("dctps", 0.01), ("dctps", 0.001), ("snip", 0.01)]):
        s.start(f"h{i}", cfg(m, d, seed=i))
        s.finish(f"h{i}", val_acc=0.5 + i / 10)
    assert [r["hash"] for r in s.query({"method": "dctps"})] == ["h1", "h0"]  # by density
    assert [r["hash"] for r in s.query({"method": ["snip"], "density": 0.01})] == ["h2"]
    assert len(s.query("val_acc > ?", params=[0.55])) == 2
    assert len(s.query()) == 3
    with pytest.raises(DctpsError, match="unknown column"):
        s.query({"acc": 1})
    with pytest.raises(DctpsError, match="bad query"):
        s.query("no_such_column = 1")
    assert parse_where(["method=dctps,snip", "density=0.01", "rigl=false"]) == {
        "method": ["dctps", "snip"],
        "density": 0.01,
        "rigl": 0,
    }
    with pytest.raises(DctpsError, match="key=value"):
        parse_where(["method"])
    n = s.to_csv(tmp_path / "o.csv", {"method": "dctps"})
    rows = list(csv.DictReader(open(tmp_path / "o.csv")))
    assert (
        n == 2
        and [r["hash"] for r in rows] == ["h1", "h0"]
        and list(rows[0]) == [*RUN_COLUMNS, "variant", "recorded_by"]
    )
    table = format_table(s.query())
    assert "val_acc%" in table and "60.00" in table and len(table.splitlines()) == 4


def test_where_values_take_their_columns_type():
    """The table prints rigl as yes/no, and hashes may look like numbers: both must select."""
    s_rows = parse_where(["rigl=yes", "hash=0123456789012345,1234e56789012345", "seed=3"])
    assert s_rows == {"rigl": 1, "hash": ["0123456789012345", "1234e56789012345"], "seed": 3}
    assert parse_where(["rigl=no"]) == {"rigl": 0}
    assert parse_where(["method=dctps", "method=random,snip"]) == {
        "method": ["dctps", "random", "snip"]
    }
    with pytest.raises(DctpsError, match="rigl takes yes or no, got 'maybe'"):
        parse_where(["rigl=maybe"])
    with pytest.raises(DctpsError, match=r"density takes a density in \(0, 1\] .*got 'high'"):
        parse_where(["density=high"])
    for out_of_range in ("2", "nan", "0"):  # matched nothing: "no runs" instead of the mistake
        with pytest.raises(DctpsError, match=rf"density in \(0, 1\] .*got '{out_of_range}'"):
            parse_where([f"density={out_of_range}"])


def test_where_takes_what_the_table_prints_and_a_miss_says_what_is_there(tmp_path):
    assert parse_where(["density=0.1%", "allocation=-"]) == {"density": 0.001, "allocation": None}
    assert parse_where(["density=0.7%"]) == {"density": 0.007}  # not 0.7 / 100 = 0.006999...
    with pytest.raises(
        DctpsError,
        match=r"density takes a density in \(0, 1\] as a number or a percentage .*got 'x%'",
    ):
        parse_where(["density=x%"])
    s = Store(tmp_path / "results.db")
    s.start("h0", cfg("dctps", 0.01))
    s.finish("h0", val_acc=0.5, test_acc=0.25)
    printed: list[str] = []
    print_results(tmp_path, ["method=DCTpS", "status=done"], echo=printed.append)
    assert printed == [f"no runs in {tmp_path / 'results.db'} match; method holds: dctps"]
    printed.clear()
    print_results(tmp_path, ["test_acc=25"], echo=printed.append)
    assert printed[0].endswith("test_acc holds: 0.25 (fractions, not %)")


def test_where_an_empty_cell_among_values_still_matches(tmp_path):
    """``allocation=-,epl`` ("dense or EPL"): SQL's ``IN`` never matches NULL, so the dense
    rows (no allocation) were dropped without a word, and so was the dense curve of a plot."""
    s = Store(tmp_path / "results.db")
    s.start("d0", {**cfg("dense", 1.0), "sparsity": {"method": "dense", "density": 1.0}})
    s.start("s0", cfg("dctps", 0.01))
    s.start("s1", {**cfg("dctps", 0.01, seed=1), "sparsity": {
        "method": "dctps", "density": 0.01, "allocation": "erk", "rigl": False}})  # fmt: skip
    assert s.get("d0")["allocation"] is None
    for where in (["allocation=-,epl"], ["allocation=epl", "allocation=-"]):
        assert sorted(r["hash"] for r in s.query(parse_where(where))) == ["d0", "s0"]
    assert [r["hash"] for r in s.query({"allocation": [None]})] == ["d0"]
    assert s.query({"allocation": []}) == []
    assert sorted(r["hash"] for r in s.query({"allocation": ["epl", "erk"]})) == ["s0", "s1"]


def test_where_refuses_an_integer_sqlite_cannot_hold():
    with pytest.raises(DctpsError, match=r"--where seed=99999999999999999999 is out of range"):
        parse_where(["seed=99999999999999999999"])
    assert parse_where([f"seed={2**63 - 1}"]) == {"seed": 2**63 - 1}


def test_a_store_that_cannot_be_written_is_still_read(tmp_path, monkeypatch):
    """An archived results folder on a read-only file system could not even be queried (the
    schema check opens a write transaction); it opens read-only, and a write says why not.
    (Simulated: the tests may run as root, whom permissions do not stop.)"""
    import sqlite3

    from dctps.results import store as store_mod

    s = Store(tmp_path / "results.db")
    s.start("h0", cfg())
    s.finish("h0", val_acc=0.5)
    s.close()

    def refuse(conn):
        raise sqlite3.OperationalError("attempt to write a readonly database")

    monkeypatch.setattr(Store, "_init_schema", staticmethod(refuse))
    with pytest.raises(DctpsError, match="is read-only"):  # a writable place: the error
        Store(tmp_path / "results.db")
    monkeypatch.setattr(store_mod, "_read_only_place", lambda path: True)
    ro = Store(tmp_path / "results.db")
    assert ro.readonly and [r["hash"] for r in ro.query()] == ["h0"]
    printed: list[str] = []
    print_results(tmp_path, echo=printed.append)
    assert "h0" in printed[0]
    with pytest.raises(DctpsError, match="is read-only .*queried and plotted, not written"):
        ro.start("h1", cfg(seed=1))
    ro.close()
    # runs still in the write-ahead log cannot be read there: refused, not silently missing
    (tmp_path / "results.db-wal").write_bytes(b"x" * 100)
    with pytest.raises(DctpsError, match="write-ahead log results.db-wal holds runs not yet"):
        Store(tmp_path / "results.db")


def test_hash_that_looks_like_a_number_is_found(tmp_path):
    s = Store(tmp_path / "x.db")
    for h in ("0123456789012345", "1234e56789012345", "abcdef0123456789"):
        s.start(h, cfg(seed=len(s.query())))
    for h in ("0123456789012345", "1234e56789012345"):
        assert [r["hash"] for r in s.query(parse_where([f"hash={h}"]))] == [h]


def test_csv_never_overwrites_a_database(tmp_path):
    s = Store(tmp_path / "results.db")
    s.start("h0", cfg())
    with pytest.raises(DctpsError, match="is an SQLite database.*refusing"):
        s.to_csv(tmp_path / "results.db")
    assert [r["hash"] for r in Store(tmp_path / "results.db").query()] == ["h0"]
    (tmp_path / "old.csv").write_text("hash,model\nprevious,x\n")  # an earlier export
    with pytest.raises(DctpsError, match="cannot write CSV file"):
        s.to_csv(tmp_path / "missing" / "x.csv")
    assert s.to_csv(tmp_path / "old.csv") == 1  # an earlier CSV is replaced
    assert "previous" not in (tmp_path / "old.csv").read_text()
    assert sorted(
        p.name for p in tmp_path.iterdir() if p.suffix != ".db" and "-" not in p.name
    ) == ["old.csv"]  # no temporary file left behind
    for other in ("config.yaml", "best.pt"):  # anything else that exists is left alone
        (tmp_path / other).write_bytes(b"PK\x03\x04 not a csv")
        with pytest.raises(DctpsError, match="is not a CSV written by `dctps results`"):
            s.to_csv(tmp_path / other)
        assert (tmp_path / other).read_bytes() == b"PK\x03\x04 not a csv"
    (tmp_path / "empty.csv").touch()  # an empty file may be written over
    assert s.to_csv(tmp_path / "empty.csv") == 1
    for side in ("results.db-wal", "results.db-shm", "results.db-journal"):  # SQLite's own
        with pytest.raises(DctpsError, match=rf"{side} is named like an SQLite database's side"):
            s.to_csv(tmp_path / side)
    assert s.to_csv(tmp_path / "paper-journal") == 1  # no database "paper" beside it
    # a folder is not a stream: refused by name (the CLI printed the table first)
    (tmp_path / "out").mkdir()
    with pytest.raises(DctpsError, match=r"CSV target .*out is a folder; give a file path"):
        s.to_csv(tmp_path / "out")
    with pytest.raises(DctpsError, match=r"target / is a folder; .* e\.g\. /results\.csv$"):
        s.to_csv(Path("/"))  # the example path joins as a path ("//results.csv" before)


def test_results_json_holds_configs_and_learning_curves(tmp_path, capsys):
    """`dctps results --json`: every matching run with its config as an object and its
    per-epoch metrics (what a CSV of final numbers cannot give: learning curves)."""
    s = Store(tmp_path / "results.db")
    for i, (method, density) in enumerate([("dctps", 0.01), ("snip", 0.01), ("dctps", 0.001)]):
        s.start(f"h{i}", cfg(method, density, seed=i))
        for epoch in (1, 2, 3):
            s.log_epoch(f"h{i}", epoch, train_loss=3.0 - epoch - i / 10, val_acc=epoch / 10)
        s.finish(f"h{i}", val_acc=0.3)
    s.log_epoch("h0", 4, train_loss=float("inf"))  # a diverged epoch
    printed: list[str] = []
    print_results(tmp_path, ["method=dctps"], echo=printed.append,
                  json_path=tmp_path / "out" / "runs.json")  # fmt: skip
    assert printed[-1].startswith("wrote 2 runs (configs and per-epoch metrics) to ")
    runs = json.loads((tmp_path / "out" / "runs.json").read_text())
    assert [r["hash"] for r in runs] == ["h2", "h0"]  # the table's order
    assert runs[1]["config"] == cfg("dctps", 0.01, seed=0) and "config_json" not in runs[1]
    assert [e["epoch"] for e in runs[1]["epochs"]] == [1, 2, 3, 4]
    assert [e["train_loss"] for e in runs[0]["epochs"]] == [1.8, 0.8, -0.2]
    # strict JSON (jq, JavaScript): an infinite loss is null, not a bare Infinity
    text = (tmp_path / "out" / "runs.json").read_text()
    assert "Infinity" not in text and json.loads(text, parse_constant=pytest.fail) == runs
    assert runs[1]["epochs"][3]["train_loss"] is None and "hash" not in runs[1]["epochs"][0]
    assert {k for k in runs[0] if k not in ("config", "epochs")} == (
        set(RUN_COLUMNS) - {"config_json"} | {"variant", "recorded_by"}
    )
    # standard output: the JSON alone, beside a CSV file
    capsys.readouterr()
    print_results(tmp_path, ["seed=1"], tmp_path / "one.csv", json_path="-")
    assert [r["hash"] for r in json.loads(capsys.readouterr().out)] == ["h1"]
    assert (tmp_path / "one.csv").read_text().startswith("hash,")
    # never over a database or a file that is not such a JSON list; not both to stdout
    for bad, match in (
        (tmp_path / "results.db", "is an SQLite database"),
        (tmp_path / "one.csv", "is not a JSON written by `dctps results`"),
    ):
        with pytest.raises(DctpsError, match=match):
            print_results(tmp_path, echo=printed.append, json_path=bad)
    with pytest.raises(DctpsError, match="cannot both go to standard output"):
        print_results(tmp_path, [], "-", json_path="/dev/stdout")
    assert s.to_json(tmp_path / "out" / "runs.json") == 3  # an earlier export is replaced


def test_results_command_creates_the_csv_folder(tmp_path):
    """`dctps results --csv DIR/x.csv` creates DIR, as every command does for its outputs (the
    library's Store.to_csv refuses a missing folder, as above); a parent that is a file is named
    before the table is printed."""
    s = Store(tmp_path / "results.db")
    s.start("h0", cfg())
    printed: list[str] = []
    target = tmp_path / "tables" / "new" / "runs.csv"
    print_results(tmp_path, csv_path=target, echo=printed.append)
    assert target.read_text().splitlines()[1].startswith("h0,")
    (tmp_path / "file.txt").write_text("x")
    printed.clear()
    with pytest.raises(DctpsError, match=r"cannot write CSV file .*file\.txt is a file, not a"):
        print_results(tmp_path, csv_path=tmp_path / "file.txt" / "r.csv", echo=printed.append)
    assert printed == []  # refused before the table


def test_results_csv_to_standard_output_or_a_pipe(tmp_path, capsys):
    """`--csv -` (or /dev/stdout) prints the CSV alone, for a pipe; a FIFO is written directly.
    Both hung or were refused: the target was read first (blocking on a pipe) and, when stdout
    was a file, checked again after the table had been printed into it."""
    import threading

    s = Store(tmp_path / "results.db")
    s.start("h0", cfg())
    s.start("h1", cfg(seed=1))
    print_results(tmp_path, csv_path="-")
    out = capsys.readouterr().out
    assert [r["hash"] for r in csv.DictReader(out.splitlines())] == ["h0", "h1"]
    assert "wrote" not in out
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_text()), daemon=True)
    reader.start()
    printed: list[str] = []
    print_results(tmp_path, csv_path=fifo, echo=printed.append)  # hung before
    reader.join(timeout=10)
    assert got and got[0].splitlines()[0].startswith("hash,")
    assert printed[-1] == f"wrote 2 rows to {fifo}"
    # a descriptor's name appends (a file redirected with >> keeps what it held); any other
    # path, one under /dev included, is a file: checked, and replaced atomically
    from dctps.results.store import _csv_stream

    log = tmp_path / "log.txt"
    with open(log, "a") as f:
        f.write("line0\n")
        f.flush()
        print_results(tmp_path, csv_path=f"/proc/self/fd/{f.fileno()}", echo=printed.append)
    assert log.read_text().splitlines()[:2] == ["line0", next(iter(out.splitlines()))]
    assert _csv_stream("/dev/stderr") and _csv_stream("/dev/fd/7") and _csv_stream("-")
    assert not _csv_stream("/dev/shm/results.csv") and not _csv_stream(tmp_path / "r.csv")


@pytest.mark.parametrize("flag", ["--csv", "--json"])
def test_an_export_to_a_reader_that_left_is_no_error(flag, tmp_path):
    """`dctps results --json - | head -1` printed `error: cannot write JSON file -: Broken pipe`
    and exited 2 (the plain table, 0): a reader that left has what it wanted. Here the pipe
    is closed before the command writes at all, so every write fails."""
    s = Store(tmp_path / "results.db")
    for i in range(50):
        s.start(f"h{i}", cfg(seed=i))
    p = subprocess.Popen([sys.executable, "-m", "dctps.cli", "results", "--db", str(tmp_path),
                          flag, "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert p.stdout is not None and p.stderr is not None
    p.stdout.close()
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 0, err
    assert err == ""


WRITER = textwrap.dedent(
    """
    import os, sys, time
    from dctps.results.store import Store

    path, wid, seconds, go = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
    s = Store(path)
    print("ready", flush=True)
    while not os.path.exists(go):  # all writers start together
        time.sleep(0.01)
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        h = f"w{wid}-{n}"
        s.start(h, {"model": {"name": "m"}, "sparsity": {"method": "dctps"}, "seed": n})
        s.log_epoch(h, 1, train_loss=1.0)
        s.log_epoch(h, 2, train_loss=0.5)
        s.finish(h, val_acc=0.5)
        s.log_epoch("shared", n % 7, train_loss=float(wid))  # contended upserts of the same keys
        n += 1
    print(n)
    """
)


def test_concurrent_writers_lose_nothing(tmp_path):
    db = tmp_path / "results.db"
    Store(db).start("shared", {"model": {"name": "m"}})
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(db), str(w), "3", str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(4)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready"  # type: ignore[union-attr]
    go.touch()
    counts = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        assert "locked" not in err
        counts.append(int(out.strip()))
    assert all(c > 0 for c in counts)
    s = Store(db)
    runs = s.query("hash LIKE 'w%'")
    assert len(runs) == sum(counts) == len({r["hash"] for r in runs})
    assert all(r["status"] == "done" and r["val_acc"] == 0.5 for r in runs)
    con = sqlite3.connect(db)
    n_epochs = con.execute("SELECT COUNT(*) FROM epochs WHERE hash LIKE 'w%'").fetchone()[0]
    assert n_epochs == 2 * sum(counts)
    dup = con.execute(
        "SELECT COUNT(*) FROM (SELECT hash, epoch FROM epochs GROUP BY hash, epoch "
        "HAVING COUNT(*) > 1)"
    ).fetchone()[0]
    assert dup == 0
    assert len(s.epochs("shared")) == min(7, max(counts))


def test_locked_database_is_retried_not_raised(tmp_path):
    """A writer holding the lock longer than SQLite's busy timeout: the store waits it out."""
    import threading
    import time

    s = Store(tmp_path / "r.db")
    s.start("a", cfg())
    other = sqlite3.connect(s.path, isolation_level=None, timeout=0.1, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    release = threading.Timer(2.5, lambda: other.execute("COMMIT"))
    release.start()
    t0 = time.monotonic()
    try:
        s.finish("a", val_acc=0.9)  # blocks past SQLite's 1 s busy timeout, then succeeds
    finally:
        release.join()
    assert time.monotonic() - t0 >= 2.0
    assert s.get("a")["val_acc"] == 0.9
    other.close()
    with pytest.raises(DctpsError, match="stayed locked"):
        short = Store(tmp_path / "r.db", timeout=0.5)
        lock = sqlite3.connect(s.path, isolation_level=None, timeout=0.1, check_same_thread=False)
        lock.execute("BEGIN IMMEDIATE")
        try:
            short.finish("a", val_acc=0.1)
        finally:
            lock.execute("ROLLBACK")
            lock.close()


def _count_rows_elsewhere(path) -> int:
    """Count run rows from a fresh process (its connection closes at exit)."""
    code = (
        "import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
        "print(c.execute('SELECT COUNT(*) FROM runs').fetchone()[0]); c.close()"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


def test_reopening_the_store_in_a_writing_process_loses_nothing(tmp_path):
    """A sweep with one worker trains its runs one after another in one process, and each run
    opens ``Store(db)`` again. Reading the file's header with ``open()``/``close()`` there would
    drop all of that process's POSIX locks on the file (a ``close`` releases every lock the
    process holds on it). A reader in another process would then think it was the last
    connection, checkpoint and delete the WAL, and every later write of the sweep would go to
    the deleted WAL, invisible to everyone else and lost (seen on a real sweep)."""
    s = Store(tmp_path)
    s.start("h1", cfg())
    Store(tmp_path)  # the next run of the in-process sweep
    assert _count_rows_elsewhere(s.path) == 1  # a `dctps results` while the sweep runs
    s.start("h2", cfg(seed=1))
    Store(tmp_path).start("h3", cfg(seed=2))
    assert _count_rows_elsewhere(s.path) == 3
    Store(tmp_path).close()
    assert _count_rows_elsewhere(s.path) == 3  # and after it reopens its connection


def test_a_store_opened_after_its_file_was_deleted_or_replaced_uses_the_new_file(tmp_path):
    """The process's cached connection kept serving a deleted database: after `rm -r out`, a
    rerun of `dctps train` found its old row "done" (and trained nothing), and new rows went to
    the unlinked file, invisible to every other reader."""
    import shutil

    folder = tmp_path / "out"
    s = Store(folder)
    s.start("old", cfg())
    s.finish("old", val_acc=0.5, test_acc=0.5, best_epoch=1, wall_seconds=1.0)
    shutil.rmtree(folder)
    s2 = Store(folder)
    assert s2.get("old") is None and s2.query() == []
    s2.start("new", cfg(seed=1))
    assert _count_rows_elsewhere(s2.path) == 1  # on disk, where other readers look

    # replaced by another database (a restored backup) while this process is connected
    backup = tmp_path / "backup.db"
    b = Store(backup)
    b.start("b1", cfg(seed=2))
    b.start("b2", cfg(seed=3))
    b.close()
    os.replace(backup, s2.path)
    for suffix in ("-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(str(s2.path) + suffix)
    assert sorted(r["hash"] for r in Store(folder).query()) == ["b1", "b2"]

    # a connection reopened after close() knows its file too
    s3 = Store(folder)
    s3.close()
    assert len(s3.query()) == 2  # reconnects
    shutil.rmtree(folder)
    assert Store(folder).query() == []


def test_database_of_an_older_version_gains_new_columns(tmp_path):
    path = tmp_path / "old.db"
    old_cols = {k: v for k, v in RUN_COLUMNS.items() if k != "alphas"}
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE runs (" + ", ".join(f"{k} {v}" for k, v in old_cols.items()) + ")")
    conn.execute("INSERT INTO runs (hash, status, nonzeros) VALUES ('old', 'done', 7)")
    conn.commit()
    conn.close()
    s = Store(path)
    assert s.get("old")["nonzeros"] == 7 and s.get("old")["alphas"] is None
    s.start("new", cfg())
    s.finish("new", nonzeros=3, alphas=5)
    assert s.get("new")["alphas"] == 5
    assert "alphas" in format_table(s.query()).splitlines()[0]


def test_results_table_names_what_tells_otherwise_equal_runs_apart(tmp_path):
    """A new user saw runs with --epochs 2 and 6 (or with and without --fixed-alpha) as
    duplicate rows: the table now has a 'variant' column when the rows differ in fields that no
    other column shows, as `dctps plot` names them in brackets."""
    from dctps.results.store import print_results
    from dctps.train.config import ModelConfig, OptimConfig, RunConfig, SparsityConfig

    def run(epochs, train_alpha=True, seed=0):
        sparsity = SparsityConfig("dctps", 0.01, train_alpha=train_alpha)
        return RunConfig(
            model=ModelConfig("lenet5"),
            seed=seed,
            optim=OptimConfig(epochs=epochs),
            sparsity=sparsity,
        )

    s = Store(tmp_path / "r.db")
    h = []  # real hashes: a row whose hash is not its config's reads "recorded_by=an older dctps"
    for c in [run(2), run(6), run(6, train_alpha=False), run(6, seed=1)]:
        h.append(c.resolve().config_hash())
        s.start(h[-1], c.to_dict())
    out: list[str] = []
    print_results(tmp_path / "r.db", echo=out.append)
    lines = out[0].splitlines()
    assert "variant" in lines[0].split()
    rows = {ln.split()[0]: ln for ln in lines[1:]}
    assert "epochs=2, train_alpha=True" in rows[h[0]]
    assert "epochs=6, train_alpha=False" in rows[h[2]]
    assert "epochs=6, train_alpha=True" in rows[h[1]]
    # another seed of h1's setting carries h1's label (grouped per seed, it carried none, and a
    # seed without a fixed-alpha run read differently from one with)
    assert "epochs=6, train_alpha=True" in rows[h[3]]
    assert "older" not in out[0]
    # rows that only the shown columns (here the seed) tell apart get no column
    out.clear()
    print_results(tmp_path / "r.db", where=[f"hash={h[1]}", f"hash={h[3]}"], echo=out.append)
    assert "variant" not in out[0].splitlines()[0]


def test_reading_commands_leave_an_empty_file_alone(tmp_path):
    """`dctps results --db EMPTY` and `dctps plot --db EMPTY` turned a 0-byte file into a 24 KB
    database: a command that only reads changed the file."""
    from dctps.errors import DctpsError
    from dctps.results.plots import plot_command
    from dctps.results.store import print_results

    empty = tmp_path / "empty.db"
    empty.touch()
    for call in (lambda: print_results(empty, echo=lambda s: None),
                 lambda: plot_command(str(empty), out=str(tmp_path / "p.png"))):  # fmt: skip
        with pytest.raises(DctpsError, match=r"empty\.db is empty, not a results database"):
            call()
        assert empty.stat().st_size == 0


def test_another_programs_sqlite_database_is_left_alone(tmp_path):
    """`dctps results --db foreign.sqlite` printed "no runs" and left dctps's tables in the
    file, switched to WAL mode for good."""
    import sqlite3

    from dctps.errors import DctpsError
    from dctps.results.store import print_results

    path = tmp_path / "foreign.sqlite"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE notes (id INTEGER, text TEXT)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    for call in (lambda: Store(path), lambda: print_results(path, echo=lambda s: None)):
        with pytest.raises(DctpsError, match=r"foreign\.sqlite is a SQLite database of another "
                           r"program \(tables: notes\), not a dctps results database"):  # fmt: skip
            call()
    assert path.read_bytes() == before and not (tmp_path / "foreign.sqlite-wal").exists()


def test_where_filters_on_what_the_variant_column_shows(tmp_path):
    """The table showed `variant` values (epochs=2, train_alpha=False, subset=all) that
    `--where` refused as unknown columns: a config key, dotted or by its last part, now filters
    `results`, `plot` and the exports on the runs' resolved configs."""
    from dctps.train.config import DataConfig, ModelConfig, OptimConfig, RunConfig, SparsityConfig

    def run(epochs, train_alpha=True, subset=None):
        sparsity = SparsityConfig("dctps", 0.01, train_alpha=train_alpha)
        data = DataConfig("cifar10", subset=subset)
        return RunConfig(model=ModelConfig("lenet5"), data=data, optim=OptimConfig(epochs=epochs),
                         sparsity=sparsity)  # fmt: skip

    db = tmp_path / "r.db"
    s = Store(db)
    for h, c in {"a": run(2), "b": run(6), "c": run(6, False), "d": run(6, subset=500)}.items():
        s.start(h, c.to_dict())

    def hashes(*where):
        return sorted(r["hash"] for r in s.query(parse_where(where)))

    assert hashes("epochs=6") == ["b", "c", "d"]
    assert hashes("optim.epochs=2") == ["a"]
    assert hashes("epochs=2,6", "train_alpha=false") == ["c"]
    assert hashes("subset=all", "epochs=6") == ["b", "c"]
    assert hashes("data.subset=500", "method=dctps") == ["d"]
    # values read as --set reads them: a flag's 0/1, an exponent that YAML 1.1 leaves text
    assert hashes("train_alpha=0") == ["c"] and hashes("train_alpha=1") == ["a", "b", "d"]
    assert hashes("lr=1e-3") == hashes("lr=0.001") == ["a", "b", "c", "d"]
    assert hashes("lr=1e-3,0.01") == ["a", "b", "c", "d"]  # the 1e-3 rows were dropped
    assert hashes("weight_decay=5e-4") == ["a", "b", "c", "d"]
    assert hashes("subset=null") == hashes("subset=all") == ["a", "b", "c"]  # YAML's null
    assert hashes("milestones=[]") == ["a", "b", "c", "d"]  # Adam's recipe: none
    e = dataclasses.replace(run(6), optim=OptimConfig(epochs=6, milestones=[2, 4]))
    s.start("e", e.to_dict())
    assert hashes("milestones=[2,4]") == ["e"]  # a list is one value, its commas split nothing
    assert hashes("milestones=[2, 4]", "epochs=6") == ["e"]
    # Store.query takes what --where takes (a consistency review: {"density": "1%"} and
    # {"rigl": "no"} matched nothing, {"epochs": 6} was an unknown column)
    py = {"list": ["epochs=2,6", "train_alpha=false"], "epochs": {"epochs": 6, "subset": 500},
          "percent": {"density": "1%", "rigl": "no", "epochs": 2},
          "texts": {"density": ["1%", "0.5"], "optim.epochs": 2},
          "config texts": {"epochs": "6", "lr": "1e-3", "subset": "all"}}  # fmt: skip
    got = {k: sorted(r["hash"] for r in s.query(w)) for k, w in py.items()}
    assert got == {"list": ["c"], "epochs": ["d"], "percent": ["a"], "texts": ["a"],
                   "config texts": ["b", "c", "e"]}  # fmt: skip
    assert sorted(r["hash"] for r in s.query(["sparsity.density=1%", "epochs=2"])) == ["a"]
    with pytest.raises(DctpsError, match=r"where items must be key=value strings such as "
                       r"'method=dctps', got \('method', 'dctps'\)"):  # fmt: skip
        s.query([("method", "dctps")])
    with pytest.raises(DctpsError, match=r"bad query .* with params \['x', 'dctps'\]: "
                       r"Incorrect number of bindings"):  # fmt: skip
        s.query({"method": "dctps"}, params=("x",))  # not "the database is unusable"
    with pytest.raises(DctpsError, match=r"where gives 'optim\.epochs' twice \(as 'optim\.epochs' "
                       r"too\); give it once"):  # fmt: skip
        s.query({"epochs": 2, "optim.epochs": 6})
    out: list[str] = []
    print_results(db, where=["epochs=3"], echo=out.append)
    assert out == [f"no runs in {db} match; optim.epochs holds: 2, 6"]
    csv_path = tmp_path / "e.csv"
    print_results(db, where=["train_alpha=false"], csv_path=csv_path, echo=out.append)
    assert len(csv_path.read_text().splitlines()) == 2  # the header and run c
    with pytest.raises(
        DctpsError,
        match=r"unknown column 'epoch' in --where\. Did you mean 'epochs'\? .*optim\.epochs",
    ):
        parse_where(["epoch=6"])


def test_a_full_data_run_beside_subset_runs_reads_subset_all(tmp_path):
    """Beside `--subset 5000` runs, a full-data run's variant read `subset=None`."""
    from dctps.results.store import print_results
    from dctps.train.config import DataConfig, ModelConfig, RunConfig, SparsityConfig

    s = Store(tmp_path / "r.db")
    for h, subset in (("full", None), ("part", 5000)):
        cfg = RunConfig(model=ModelConfig("lenet5"), data=DataConfig("cifar10", subset=subset),
                        sparsity=SparsityConfig("dctps", 0.01))  # fmt: skip
        s.start(h, cfg.to_dict())
    out: list[str] = []
    print_results(tmp_path / "r.db", echo=out.append)
    rows = {ln.split()[0]: ln for ln in out[0].splitlines()[1:]}
    assert "subset=all" in rows["full"] and "subset=5000" in rows["part"]
    assert "None" not in out[0]


def test_a_store_follows_its_file_and_says_when_it_was_deleted(tmp_path):
    """A Store kept open (a notebook, a sweep) went on using a database file that had been
    deleted or replaced: rows written were lost without an error (a leak review)."""
    import shutil

    from dctps.results import store as store_mod

    s = Store(tmp_path / "a")
    s.start("aaaa", cfg())
    other = Store(tmp_path / "b")
    other.start("bbbb", cfg(seed=1))
    other.close()
    shutil.rmtree(tmp_path / "a")  # the folder deleted, another process's made in its place
    os.rename(tmp_path / "b", tmp_path / "a")
    assert [r["hash"] for r in s.query()] == ["bbbb"]
    s.start("cccc", cfg(seed=2))
    assert sorted(r["hash"] for r in Store(tmp_path / "a").query()) == ["bbbb", "cccc"]
    shutil.rmtree(tmp_path / "a")
    with pytest.raises(DctpsError, match=r"results database .*a/results\.db was deleted or moved "
                       r"while this process was using it"):  # fmt: skip
        s.start("dddd", cfg(seed=3))
    assert (os.getpid(), str(s.path)) not in store_mod._CONNECTIONS


def test_cached_connections_are_bounded_and_dropped_for_deleted_files(tmp_path, monkeypatch):
    """Each database a process opened kept 3 descriptors for the life of the process, even
    after its folder was deleted (whose disk space they kept in use): ~340 folders exhausted a
    1024-descriptor limit. Beyond MAX_CONNECTIONS the least recently used are closed (reopened
    when used again), and those of deleted files first."""
    import shutil

    from dctps.results import store as store_mod

    monkeypatch.setattr(store_mod, "MAX_CONNECTIONS", 3)
    pid = os.getpid()

    def cached():
        return {k[1] for k in store_mod._CONNECTIONS if k[0] == pid}

    stores = [Store(tmp_path / f"s{i}") for i in range(5)]
    for i, s in enumerate(stores):
        s.start(f"h{i}", cfg(seed=i))
    assert len(cached() & {str(s.path) for s in stores}) <= 3
    assert str(stores[-1].path) in cached()
    assert [r["hash"] for r in stores[0].query()] == ["h0"]  # closed, and reopened on use
    shutil.rmtree(tmp_path / "s4")
    Store(tmp_path / "s5").query()
    assert str(stores[4].path) not in cached()  # its file is gone: closed


def test_a_row_whose_config_nests_past_the_recursion_limit_is_shown(tmp_path):
    """`dctps results` raised RecursionError on a row whose config_json nests deeply (a crafted
    or damaged database; a fuzzing review); the row is shown with what it has."""
    s = Store(tmp_path)
    s.start("aaaa", cfg())
    conn = sqlite3.connect(tmp_path / "results.db")
    conn.execute(
        "UPDATE runs SET config_json = ? WHERE hash = 'aaaa'", ("[" * 100_000 + "]" * 100_000,)
    )
    conn.commit()
    conn.close()
    said: list[str] = []
    rows = print_results(tmp_path, echo=said.append)
    assert [r["hash"] for r in rows] == ["aaaa"] and "aaaa" in "\n".join(said)


def test_a_malformed_database_is_one_clear_error(tmp_path):
    """A database whose pages are damaged: one line that names it and says what rebuilds it
    (the path was untested; its wording said "Moved aside" of a file left in place)."""
    s = Store(tmp_path / "r.db")
    s.start("a", {"model": {"name": "m"}})
    s.close()
    db = tmp_path / "r.db"
    b = bytearray(db.read_bytes())
    for i in range(100, len(b), 7):  # past the 100-byte header: damaged pages
        b[i] = (b[i] * 31 + 7) % 256
    db.write_bytes(bytes(b))
    for extra in ("r.db-wal", "r.db-shm"):
        (tmp_path / extra).unlink(missing_ok=True)
    needle = (r"r\.db is unusable: .*malformed\. Once you move it aside, the same "
              r"`dctps train`/`dctps sweep` commands rebuild it")  # fmt: skip
    with pytest.raises(DctpsError, match=needle):
        Store(db).query()
    assert db.read_bytes() == bytes(b)  # left as it was


def test_a_database_of_0_1_0_gains_the_new_columns_in_place(tmp_path):
    """0.1.0's `runs` table had no `alphas`, `data_root` nor `data_fingerprint`: opening it
    adds them, and its rows keep their status and metrics (untested before a coverage review;
    an upgrade review confirmed it on real 0.1.0-era files)."""
    db = tmp_path / "r.db"
    s = Store(db)
    s.start("a", {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"}})
    s.finish("a", val_acc=0.5, test_acc=0.25)
    s.close()
    conn = sqlite3.connect(db)
    for col in ("alphas", "data_root", "data_fingerprint", "classes"):
        conn.execute(f"ALTER TABLE runs DROP COLUMN {col}")
    conn.commit()
    conn.close()
    row = Store(db).get("a")
    assert (row["status"], row["val_acc"], row["test_acc"]) == ("done", 0.5, 0.25)
    assert {"alphas", "data_root", "data_fingerprint", "classes"} <= set(row)
    conn = sqlite3.connect(db)
    have = {r[1] for r in conn.execute("PRAGMA table_info(runs)")}
    conn.close()
    assert {"alphas", "data_root", "data_fingerprint", "classes"} <= have
    # such a row has no classes: `--where classes=10` reads its data set's count, as plots do
    s = Store(db)
    s.start("b", {"model": {"name": "lenet5"}, "data": {"dataset": "cifar100"}})
    s.finish("b", val_acc=0.5, test_acc=0.25)
    assert [r["hash"] for r in s.query({"classes": 10})] == ["a"]
    assert [r["hash"] for r in s.query({"classes": [100, 7]})] == ["b"]
    assert s.query({"classes": 200}) == [] and s.query(parse_where(["classes=10,100"]))


def test_exports_carry_the_tables_variant_and_recorded_by_marks(tmp_path):
    """A figures review: `--csv`/`--json` held only the stored columns, so a group-by over
    method and density averaged 2-epoch runs with 4-epoch runs, and stale runs with current
    ones, which the table and the plots keep apart."""
    from dctps.train.config import ModelConfig, OptimConfig, RunConfig, SparsityConfig

    s = Store(tmp_path)
    for h, epochs in (("a", 2), ("b", 4)):
        c = RunConfig(model=ModelConfig("lenet5"), sparsity=SparsityConfig("dctps", 0.01),
                      optim=OptimConfig(epochs=epochs)).resolve()  # fmt: skip
        s.start(c.config_hash() if h == "a" else "0123456789abcdef", c.to_dict())
    s.to_csv(tmp_path / "o.csv")
    rows = {r["hash"]: r for r in csv.DictReader(open(tmp_path / "o.csv"))}
    old, new = rows.pop("0123456789abcdef"), rows.popitem()[1]  # old: its hash is not today's
    assert (new["variant"], new["recorded_by"]) == ("epochs=2", "")
    assert old["variant"] == "epochs=4, recorded_by=an older dctps"
    assert old["recorded_by"] == "an older dctps"
    s.to_json(tmp_path / "o.json")
    runs = json.loads((tmp_path / "o.json").read_text())
    assert sorted((r["variant"], r["recorded_by"]) for r in runs) == [
        ("epochs=2", None),
        ("epochs=4, recorded_by=an older dctps", "an older dctps"),
    ]


def test_where_filters_on_settings_an_identity_holds_only_when_not_default(tmp_path):
    """A newcomer review: --where fused=true, offset=hadamard, alpha=channel or
    charge_alpha=false was "unknown column", though the variant column names them: an
    identity leaves those fields out while they hold their default."""
    from dctps.train.config import ModelConfig, OptimConfig, RunConfig, SparsityConfig

    def run(optim=None, **sp):
        return RunConfig(model=ModelConfig("lenet5"), sparsity=SparsityConfig("dctps", 0.01, **sp),
                         optim=OptimConfig(**(optim or {}))).resolve()  # fmt: skip

    s = Store(tmp_path)
    runs = {"plain": run(), "had": run(offset="hadamard"), "chan": run(alpha="channel"),
            "fused": run(optim={"fused": True}), "kaim": run(alpha_init="kaiming")}  # fmt: skip
    for name, c in runs.items():
        s.start(name, c.to_dict())

    def names(*where):
        return sorted(r["hash"] for r in s.query(parse_where(where)))

    everyone = sorted(runs)
    assert names("offset=hadamard") == ["had"]
    assert names("sparsity.offset=dct") == sorted(set(everyone) - {"had"})  # the default
    assert names("alpha=channel") == ["chan"] and names("fused=true") == ["fused"]
    assert names("optim.fused=false") == sorted(set(everyone) - {"fused"})
    assert names("alpha_init=kaiming") == ["kaim"]
    assert names("alpha_init=1") == names("alpha_init=1.0") == sorted(set(everyone) - {"kaim"})
    assert names("alpha_init=0.5") == []  # a number of the str | float field, not the text
    assert names("charge_alpha=true") == everyone
    printed: list[str] = []
    print_results(tmp_path, ["offset=dct_permuted"], echo=printed.append)
    assert "sparsity.offset holds: dct, hadamard" in printed[-1]


MOUNTS = """\
sysfs /sys sysfs rw 0 0
/dev/sda1 / ext4 rw,relatime 0 0
server:/export/home /home nfs4 rw,relatime 0 0
/dev/sdb1 /home/me/scratch xfs rw 0 0
mds@tcp:/lfs /lustre lustre rw,flock 0 0
/dev/sdc1 /mnt/my\\040data ext4 rw 0 0
"""


def test_mount_type_finds_the_innermost_mount():
    from dctps.results.store import mount_type

    assert mount_type("/home/me/results.db", MOUNTS) == "nfs4"
    assert mount_type("/home/me/scratch/out/results.db", MOUNTS) == "xfs"  # local, under NFS
    assert mount_type("/homework/x.db", MOUNTS) == "ext4"  # not under /home
    assert mount_type("/lustre/proj/results.db", MOUNTS) == "lustre"
    assert mount_type("/mnt/my data/results.db", MOUNTS) == "ext4"  # an escaped space
    assert mount_type("/tmp/x.db", "") is None


@pytest.mark.parametrize(("kind", "mode"), [("nfs4", "delete"), ("lustre", "delete"),
                                            ("ext4", "wal"), (None, "wal")])  # fmt: skip
def test_a_database_on_a_network_file_system_uses_a_rollback_journal(tmp_path, monkeypatch,
                                                                      kind, mode):  # fmt: skip
    """A portability review: WAL keeps its index in shared memory, which SLURM jobs on several
    nodes writing one results.db over NFS or Lustre cannot share (lost commits, corruption).
    There the store journals as SQLite's rollback mode does, locking through the file system."""
    from dctps.results import store as store_mod

    monkeypatch.setattr(store_mod, "mount_type", lambda path, mounts=None: kind)
    s = Store(tmp_path / f"{kind}.db")
    s.start("h", {"seed": 0})
    s.finish("h", val_acc=0.5)
    assert _journal_mode_of(tmp_path / f"{kind}.db") == mode
    assert s.query({})[0]["status"] == "done"
    s.close()


def _journal_mode_of(db: Path) -> str:
    """The journal mode a fresh connection finds ``db`` in (WAL persists in the file)."""
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA journal_mode").fetchone()[0])
    finally:
        conn.close()


def test_a_wal_database_another_process_holds_stays_wal_with_a_warning_not_a_hang(
    tmp_path, monkeypatch
):
    """A diff review: SQLite leaves WAL only when no other connection has the file open, and
    refuses at once with "database is locked"; retried as a busy write, opening an upgraded
    store on NFS that another process held open hung for the store's whole timeout (600 s),
    then failed. It stays in WAL, with a warning, and switches once the other is gone."""
    import time

    from dctps.results import store as store_mod

    db = tmp_path / "r.db"
    monkeypatch.setattr(store_mod, "mount_type", lambda path, mounts=None: "ext4")
    s = Store(db)
    s.start("h", {"seed": 0})
    s.close()
    other = sqlite3.connect(db)  # an older dctps, or a host that sees the disk as local
    assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other.execute("SELECT count(*) FROM runs").fetchone()
    monkeypatch.setattr(store_mod, "mount_type", lambda path, mounts=None: "nfs4")
    t0 = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="stays in WAL mode while another process has it"):
        s = Store(db, timeout=30)
    assert time.perf_counter() - t0 < 5
    s.finish("h", val_acc=0.5)  # the store still works
    s.close()
    other.close()
    s = Store(db)
    assert s.query({})[0]["status"] == "done"
    s.close()
    assert _journal_mode_of(db) == "delete"


def test_a_busy_switch_to_wal_is_retried_not_warned_of(tmp_path, monkeypatch):
    """A second diff review: the keep-WAL warning also fired for a rollback-journal database
    switching to WAL on a local disk while a reader held it for a moment, and said that the
    database was on a network file system and stayed in WAL (both false). That switch waits."""
    import threading
    import warnings

    from dctps.results import store as store_mod

    db = tmp_path / "r.db"
    monkeypatch.setattr(store_mod, "mount_type", lambda path, mounts=None: "nfs4")
    s = Store(db)
    s.start("h", {"seed": 0})
    s.close()
    reader = sqlite3.connect(db, check_same_thread=False, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM runs").fetchone()  # holds a shared lock
    threading.Timer(0.5, lambda: reader.execute("COMMIT")).start()
    monkeypatch.setattr(store_mod, "mount_type", lambda path, mounts=None: "ext4")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s = Store(db, timeout=30)
    assert s.query({})[0]["hash"] == "h"
    s.close()
    reader.close()
    assert _journal_mode_of(db) == "wal"


def test_results_json_is_written_in_large_pieces():
    """A scale review: json.dump writes once per JSON token, and under PYTHONUNBUFFERED=1
    each write is a system call (5.5 million for 9,180 runs, 13 s against 4.5 s). The output
    is what json.dump writes, in pieces of about JSON_WRITE_CHARS."""
    import io

    from dctps.results.store import JSON_WRITE_CHARS, _write_json

    runs = [{"hash": f"{i:016x}", "test_acc": i / 1000, "history": [{"epoch": e, "loss": 1.0}
             for e in range(20)], "config": {"model": {"name": "lenet5"}}}
            for i in range(300)]  # fmt: skip

    class Counting(io.StringIO):
        writes = 0

        def write(self, s):
            Counting.writes += 1
            return super().write(s)

    f = Counting()
    _write_json(f, iter(runs))
    want = json.dumps(runs, indent=1) + "\n"
    assert f.getvalue() == want
    assert Counting.writes <= len(want) // JSON_WRITE_CHARS + 2 < 100
    for few in ([], runs[:1]):
        f = Counting()
        _write_json(f, few)
        assert f.getvalue() == json.dumps(few, indent=1) + "\n"


def test_results_json_reads_the_epochs_a_chunk_at_a_time(tmp_path, monkeypatch):
    """A scale review: `dctps results --json` built every run with every epoch, and then their
    whole text, in memory (about 2 GB for 20,000 runs of 200 epochs). It now reads 500 runs'
    epochs at a time (100 here) and writes them before it reads the next: its peak memory is a
    fraction of what the whole list takes, and the file is the same."""
    import sqlite3
    import tracemalloc

    from dctps.results import store

    monkeypatch.setattr(store, "EPOCHS_READ_RUNS", 100)

    s = Store(tmp_path / "results.db")
    s.start("h", cfg("dctps", 0.01))  # creates the tables
    n_runs, n_epochs = 600, 40
    with sqlite3.connect(tmp_path / "results.db") as conn:
        conn.executemany(
            "INSERT INTO runs (hash, model, dataset, method, density, seed, status, config_json)"
            " VALUES (?, 'lenet5', 'mnist', 'dctps', 0.01, ?, 'done', '{}')",
            [(f"{i:016x}", i) for i in range(n_runs)],
        )
        conn.executemany(
            "INSERT INTO epochs (hash, epoch, train_loss, val_acc) VALUES (?, ?, ?, ?)",
            [(f"{i:016x}", e, 1.0 / (e + 1), i / n_runs) for i in range(n_runs)
             for e in range(1, n_epochs + 1)],
        )  # fmt: skip
    tracemalloc.start()
    everything = s.runs_with_epochs()
    whole = tracemalloc.get_traced_memory()[1]  # the runs alone, without their text
    del everything
    tracemalloc.reset_peak()
    assert s.to_json(tmp_path / "runs.json") == n_runs + 1
    streamed = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    runs = json.loads((tmp_path / "runs.json").read_text())
    assert len(runs) == n_runs + 1 and all(len(r["epochs"]) == n_epochs for r in runs[1:])
    assert runs == s.runs_with_epochs()
    assert streamed < 0.5 * whole, (streamed, whole)


def test_reading_a_store_does_not_wait_for_a_writers_transaction(tmp_path):
    """A scale review: opening a Store took SQLite's write lock to check its schema, so `dctps
    results` waited out any writer's transaction (6.2 s behind one held 6 s). A current schema
    is checked by reading; an older database still gets its columns added."""
    import sqlite3
    import subprocess
    import sys

    store = Store(tmp_path)
    store.start("h1", {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"},
                       "sparsity": {"method": "dense"}, "optim": {}, "seed": 0})  # fmt: skip
    writer = sqlite3.connect(store.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a writer mid-transaction
    try:
        code = ("from dctps.results import Store; import time; t = time.time(); "
                f"rows = Store({str(tmp_path)!r}).query(); "
                "print(len(rows), time.time() - t)")  # fmt: skip
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=120, check=True)  # fmt: skip
        n, seconds = out.stdout.split()
        assert n == "1" and float(seconds) < 2, out.stdout
    finally:
        writer.execute("ROLLBACK")
        writer.close()


def test_a_store_missing_its_index_or_an_epochs_column_is_mended_on_open(tmp_path):
    """A mutation audit: the schema check read only `runs`; an older `epochs` table (without
    `seconds`) was never mended, and the first log_epoch failed."""
    db = tmp_path / "r.db"
    s = Store(db)
    s.start("a", {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"}})
    s.close()
    conn = sqlite3.connect(db)
    conn.execute("DROP INDEX runs_by_setting")
    conn.execute("ALTER TABLE epochs DROP COLUMN seconds")
    conn.commit()
    conn.close()
    s = Store(db)
    s.log_epoch("a", 1, val_acc=0.5, seconds=1.0)
    s.close()
    conn = sqlite3.connect(db)
    assert "seconds" in {r[1] for r in conn.execute("PRAGMA table_info(epochs)")}
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    conn.close()
    assert "runs_by_setting" in names


@pytest.mark.skipif(sys.platform == "win32", reason="RLIMIT_FSIZE (ulimit -f) is POSIX")
def test_a_full_disk_is_named_and_exits_1_not_2(tmp_path):
    """A fault-injection review: a store that could not grow said only SQLite's `disk I/O
    error`, and every failed write exited 2, the status of a bad command, though the command
    was right and runs again once there is room. Under a file-size limit (`ulimit -f`, a full
    disk's stand-in) the store names the limit, and `dctps results --csv` that cannot write its
    file exits 1; the rows written before are all there."""
    code = textwrap.dedent(
        """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not death by signal
        from dctps.errors import CannotWrite
        from dctps.results.store import Store
        s = Store(sys.argv[1])
        for i in range(60, -1, -1):  # h0 last: the CSV below is larger than its limit
            s.start(f"h{i}", {"model": {"name": "lenet5"}, "seed": i})
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            for e in range(1, 100_000):
                s.log_epoch("h0", e, train_loss=1.0, val_acc=0.5)
        except CannotWrite as err:
            print(e, err)
        """
    )
    db = tmp_path / "results.db"
    out = subprocess.run([sys.executable, "-c", code, str(db)], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0, out.stderr
    last, msg = out.stdout.split(" ", 1)
    assert "disk I/O error" in msg or "disk is full" in msg, msg
    assert "a file-size limit (ulimit -f) of 200,000 bytes" in msg and "same command" in msg
    epochs = Store(db).runs_with_epochs({"hash": "h0"})[0]["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(1, int(last)))  # each written one kept

    cli = textwrap.dedent(
        """
        import resource, signal, sys
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))
        sys.argv = ["dctps", "results", "--db", sys.argv[1], "--csv", sys.argv[2]]
        from dctps.cli import main
        main()
        """
    )
    out = subprocess.run([sys.executable, "-c", cli, str(db), str(tmp_path / "o.csv")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert out.returncode == 1, (out.returncode, out.stderr)
    assert out.stderr.startswith("error: cannot write CSV file") and "File too large" in out.stderr
    assert not (tmp_path / "o.csv").exists()


def test_a_running_row_whose_process_is_gone_reads_dead(tmp_path):
    """A concurrency review: a run killed by SIGKILL (out of memory, a preempted job) stayed
    `running` in `dctps results`, read as a live one. The table marks it dead where its
    process ran on this host and is gone; a live one, or one elsewhere, stays running."""
    import socket
    import subprocess

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    s = Store(tmp_path / "r.db")
    here = socket.gethostname()
    for h, owner in (("live", None), ("gone", f"{here}:{gone.pid}"),
                     ("away", f"another-host-{os.getpid()}:{gone.pid}"),
                     ("hidden", f"{here}:{gone.pid}")):  # fmt: skip
        s.start(h, {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"}, "seed": 0})
        if owner is not None:
            s._update(h, {"owner": owner})
    assert s.get("live")["owner"] == f"{here}:{os.getpid()}"
    lines: list[str] = []
    from dctps.train.loop import _run_lock

    # "hidden" holds its lock beside the store: alive in another PID namespace of this host
    with _run_lock(tmp_path / "r.db.locks" / "hidden", prune_parent=True):
        print_results(tmp_path / "r.db", echo=lines.append)
    status = {ln.split()[0]: ln.split()[9] for ln in lines[0].splitlines()[1:]}
    assert status == {"live": "running", "gone": "dead", "away": "running", "hidden": "running"}
    assert lines[1].startswith("1 run is dead: recorded running, but the process that trained "
                               "it on this host is gone")  # fmt: skip
    assert Store(tmp_path / "r.db").get("gone")["status"] == "running"  # stored as it was
    # `--where status=dead` lists the dead runs; with another status, those runs too
    s.start("done", {"model": {"name": "lenet5"}, "data": {"dataset": "cifar10"}, "seed": 1})
    s.finish("done", val_acc=0.5)
    with _run_lock(tmp_path / "r.db.locks" / "hidden", prune_parent=True):
        picked = {w: {r["hash"] for r in print_results(tmp_path / "r.db", where=[w], echo=print)}
                  for w in ("status=dead", "status=dead,done", "status=running")}  # fmt: skip
        assert [r["hash"] for r in s.query({"status": "dead"})] == ["gone"]  # Python too
    out: list[str] = []
    print_results(tmp_path / "r.db", where=["status=dead", "seed=1"], echo=out.append)
    assert out[-1].endswith("status holds: done, running (dead: a running row whose process on "
                            "this host is gone)")  # fmt: skip
    assert picked == {"status=dead": {"gone"}, "status=dead,done": {"gone", "done"},
                      "status=running": {"live", "gone", "away", "hidden"}}  # fmt: skip
