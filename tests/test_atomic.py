"""Atomic writes (dctps.atomic): the target is replaced whole or not at all, and no temporary
file is left behind, whatever stops the write."""

import os
import stat
import time

import pytest
import torch

import dctps
from dctps import checkpoint_io
from dctps.atomic import atomic_write, make_parent
from dctps.errors import DctpsError


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_success_replaces_the_target_with_the_usual_file_mode(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target, "test file") as f:
        f.write("new")
        assert target.read_text() == "old"  # nothing visible before the block ends
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_in_the_block_keeps_the_old_file(tmp_path, exc):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_write(target, "test file", "wb") as f:
            f.write(b"partial")
            raise exc
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_an_os_error_becomes_a_clear_error_naming_the_file(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(DctpsError, match=r"cannot write test file .*out\.txt: No space left"):
        with atomic_write(target, "test file"):
            raise OSError(28, "No space left on device")
    assert not target.exists() and _leftovers(tmp_path) == []
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(DctpsError, match="is a file, not a folder"):
        with atomic_write(blocker / "out.txt", "test file"):
            pass


def test_a_folder_is_not_a_file_target(tmp_path):
    """`out/` (Path drops the slash) or an existing folder: named as a folder, nothing written
    (a file called `out` was created, or the rename failed with a bare OSError)."""
    (tmp_path / "existing").mkdir()
    for target in (f"{tmp_path / 'new'}/", tmp_path / "existing"):
        for step in ("make_parent", "atomic_write"):
            with pytest.raises(DctpsError, match=r"that is a folder; give a file path in it, e\.g"):
                if step == "make_parent":
                    make_parent(target, "CSV file")
                else:
                    with atomic_write(target, "CSV file"):
                        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]
    assert list((tmp_path / "existing").iterdir()) == []


def test_a_write_never_replaces_a_link_a_fifo_a_device_or_a_database(tmp_path, capsys):
    """`benchmarks/bench_ckpt.py --json X` renamed its file over X: a results database became
    JSON, a symlink became a plain file (its target untouched), a FIFO a file its reader never
    saw, and, as root, /dev/null a plain file (a review). A link is now written through; the
    others are refused, before a benchmark runs and in the write itself."""
    from dctps import bench
    from dctps.results import Store

    real = tmp_path / "real.json"
    real.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(real)
    with atomic_write(link, "rows") as f:
        f.write("new")
    assert link.is_symlink() and real.read_text() == "new"
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    Store(tmp_path / "results.db")
    db = (tmp_path / "results.db").read_bytes()
    for target, why in ((fifo, "not a regular file"), (tmp_path / "results.db", "SQLite"),
                        ("/dev/null", "not a regular file")):  # fmt: skip
        with pytest.raises(DctpsError, match=why):
            with atomic_write(target, "rows") as f:
                f.write("x")
        with pytest.raises(SystemExit) as e:  # refused before the benchmark runs
            bench.main(["ckpt", "--quick", "--json", str(target)])
        assert e.value.code == 2
        assert why in capsys.readouterr().err
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert (tmp_path / "results.db").read_bytes() == db
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    assert _leftovers(tmp_path) == []


def test_concurrent_writers_of_one_target_do_not_share_a_temporary_file(tmp_path):
    target = tmp_path / "out.txt"
    with atomic_write(target, "test file") as a, atomic_write(target, "test file") as b:
        assert a.name != b.name
        a.write("a")
        b.write("b")
    assert target.read_text() == "a"  # b finished first, a replaced it
    assert _leftovers(tmp_path) == []


def test_an_interrupted_dctps_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    """dctps.save removed its temporary file only on an OSError: Ctrl-C left 'x.dctps.tmp'."""
    model = dctps.sparsify(torch.nn.Sequential(torch.nn.Linear(8, 4)), 0.5, seed=0)
    path = tmp_path / "m.dctps"
    dctps.save(model, path)
    before = path.read_bytes()

    class Interrupting:
        size = checkpoint_io._TRAILER.size

        def pack(self, *a):
            raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_io, "_TRAILER", Interrupting())
    with pytest.raises(KeyboardInterrupt):
        dctps.save(model, path)
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []


def test_a_failed_figure_write_leaves_the_previous_figure_whole(tmp_path, monkeypatch):
    """`savefig` wrote straight to the target: a full disk left a truncated p.png beside the
    old p.pdf and p.json (a fault-injection review). Each file is now replaced whole."""
    import errno

    import matplotlib.pyplot as plt

    from dctps.results import plots

    def figure(label):
        fig, ax = plt.subplots()
        ax.set_title(label)
        return fig

    plots.save(figure("old"), tmp_path / "p.png")
    plots.write_json({"v": "old"}, tmp_path / "p.json")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real = os.replace

    def full_disk(src, dst):
        if str(dst).endswith((".png", ".json")):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", full_disk)
    with pytest.raises(DctpsError, match=r"cannot write figure .*p\.png: No space left"):
        plots.save(figure("new"), tmp_path / "p.png")
    with pytest.raises(DctpsError, match=r"cannot write figure data .*p\.json: No space left"):
        plots.write_json({"v": "new"}, tmp_path / "p.json")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # a pyplot figure given to save is closed, written or not (pyplot keeps it until then)
    assert plt.get_fignums() == []


def test_atomic_write_removes_a_killed_writers_old_temporary_files(tmp_path):
    """A kill while writing config.yaml or a CSV left `.NAME.<random>.tmp` forever: a later
    write removes those an hour old, not a concurrent writer's fresh one."""
    from dctps.atomic import STALE_TEMP_SECONDS, atomic_write

    target = tmp_path / "r.csv"
    old, fresh = tmp_path / ".r.csv.0123456789ab.tmp", tmp_path / ".r.csv.ba9876543210.tmp"
    other = tmp_path / ".other.csv.0123456789ab.tmp"
    for p in (old, fresh, other):
        p.write_text("partial")
    past = time.time() - STALE_TEMP_SECONDS - 5
    os.utime(old, (past, past))
    os.utime(other, (past, past))
    with atomic_write(target, "CSV file") as f:
        f.write("a,b\n")
    assert target.read_text() == "a,b\n"
    assert not old.exists() and fresh.exists() and other.exists()


def test_the_temporary_file_is_opened_in_binary_mode_where_the_platform_has_one(
    tmp_path, monkeypatch
):
    """A portability review: on Windows a descriptor from ``os.open`` without ``O_BINARY`` is in
    text mode, and each b"\\n" of a checkpoint was written as b"\\r\\n" (``dctps.load`` then found
    the file padded). Here a fake ``O_BINARY`` bit must reach ``os.open``; bytes go out as given."""
    fake = 1 << 29
    seen = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, **kw):
        seen.append(flags)
        return real_open(path, flags & ~fake, mode, **kw)

    monkeypatch.setattr(os, "O_BINARY", fake, raising=False)
    monkeypatch.setattr(os, "open", recording_open)
    target = tmp_path / "f.bin"
    with atomic_write(target, "test file", "wb") as f:
        f.write(b"a\nb\r\n")
    assert seen and all(flags & fake for flags in seen)
    assert target.read_bytes() == b"a\nb\r\n"


@pytest.mark.parametrize("platform", ["win32", "linux"])
def test_a_target_held_open_on_windows_is_replaced_once_it_is_released(
    tmp_path, monkeypatch, platform
):
    """A portability review: on Windows a virus scanner reading a fresh checkpoint makes
    ``os.replace`` over it fail with PermissionError for a moment, and the run stopped there. It
    is retried on Windows only (POSIX replaces open files: a PermissionError there is real)."""
    import sys

    from dctps import atomic

    real = os.replace
    fails = [2]

    def held(src, dst):
        if fails[0]:
            fails[0] -= 1
            raise PermissionError(13, "The process cannot access the file", str(dst))
        real(src, dst)

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setattr(os, "replace", held)
    target = tmp_path / "last.pt"
    target.write_bytes(b"old")
    if platform == "win32":
        with atomic_write(target, "checkpoint", "wb") as f:
            f.write(b"new")
        assert target.read_bytes() == b"new" and fails == [0]
    else:
        with pytest.raises(DctpsError, match="checkpoint"):
            with atomic_write(target, "checkpoint", "wb") as f:
                f.write(b"new")
        assert target.read_bytes() == b"old"
    monkeypatch.setattr(atomic, "REPLACE_RETRY_SECONDS", 0.1)
    fails[0] = 100  # held for good: the error surfaces after the retries
    monkeypatch.setattr(sys, "platform", "win32")
    with pytest.raises(DctpsError, match="checkpoint"):
        with atomic_write(target, "checkpoint", "wb") as f:
            f.write(b"newer")
    assert target.read_bytes() == (b"new" if platform == "win32" else b"old")
    assert not list(tmp_path.glob(".*.tmp"))
