"""SQLite results store: one row per run (keyed by config hash), one row per epoch.

Many processes (sweep workers, SLURM jobs) may write to one ``results.db``: the database runs in WAL
mode with a busy timeout, every write is one short ``BEGIN IMMEDIATE`` transaction, and a
``database is locked`` error is retried with jittered exponential backoff until ``timeout`` seconds
have passed (then a :class:`DctpsError`, never a raw ``sqlite3.OperationalError``). Each process
holds one connection per database file.

WAL needs all its processes on one host: its index lives in shared memory. On a network file
system (NFS, Lustre, GPFS, SMB, ...; read from ``/proc/self/mounts`` on Linux), where SLURM jobs on
several nodes write one database, the store uses SQLite's rollback journal instead, which locks
through the file system's POSIX locks (:func:`journal_mode`). Those must work there (NFS with
lockd); where they do not, give each job its own ``--db``.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as _dt
import hashlib
import json
import math
import os
import random
import re
import shutil
import socket
import sqlite3
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from dctps.atomic import (
    SQLITE_MAGIC,
    atomic_write,
    check_file_target,
    foreign_file,
    make_parent,
    starts_with,
    utf8_stdout,
)
from dctps.errors import (
    CannotWrite,
    DctpsError,
    as_items,
    cannot_write,
    refuse_empty,
    show,
    user_path,
)

__all__ = ["RUN_COLUMNS", "EPOCH_COLUMNS", "Store", "format_table", "parse_where", "print_results"]

DB_NAME = "results.db"
BUSY_SECONDS = 1.0  # SQLite's own wait for a lock; then our backoff loop takes over

RUN_COLUMNS: dict[str, str] = {
    "hash": "TEXT PRIMARY KEY",
    "model": "TEXT",
    "dataset": "TEXT",
    "method": "TEXT",
    "density": "REAL",
    "allocation": "TEXT",
    "recipe": "TEXT",
    "seed": "INTEGER",
    "rigl": "INTEGER",
    "config_json": "TEXT",
    "status": "TEXT",  # running | interrupted | done | failed
    "reason": "TEXT",
    "val_acc": "REAL",
    "test_acc": "REAL",
    "best_epoch": "INTEGER",
    "weights": "INTEGER",
    "nonzeros": "INTEGER",
    "trainable": "INTEGER",
    "prune_seconds": "REAL",
    "wall_seconds": "REAL",
    "created": "TEXT",
    "updated": "TEXT",
    # Added after 0.1.0: ALTERed into older databases on open (see Store._init_schema).
    "alphas": "INTEGER",  # DCTpS offset scales: one per layer, or per channel
    # where the run's data came from: the data root is not part of a run's identity, so a done
    # run is reused for other data only if their fingerprints (Splits.fingerprint) agree
    "data_root": "TEXT",
    "data_fingerprint": "TEXT",
    # the classes the run's data had: a reduced copy of Tiny ImageNet has fewer than 200, and
    # its plots' chance line (where failed points are drawn) is 1 / this
    "classes": "INTEGER",
    # "host:pid" of the process that started (or resumed) the run: a `running` row whose
    # process is gone (SIGKILL, out of memory, a preempted job) reads as a live run otherwise
    "owner": "TEXT",
}
EPOCH_COLUMNS: dict[str, str] = {
    "hash": "TEXT NOT NULL",
    "epoch": "INTEGER NOT NULL",
    "train_loss": "REAL",
    "train_acc": "REAL",
    "val_loss": "REAL",
    "val_acc": "REAL",
    "lr": "REAL",
    "seconds": "REAL",
}
METRIC_COLUMNS = (
    "val_acc",
    "test_acc",
    "best_epoch",
    "weights",
    "nonzeros",
    "alphas",
    "trainable",
    "prune_seconds",
    "wall_seconds",
)
#: ``running``: started, not finished (or its process was killed: SIGKILL, a crash);
#: ``interrupted``: stopped by Ctrl-C / SIGTERM, its reason says where; both resume on a rerun
STATUSES = ("running", "interrupted", "done", "failed")

_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS runs ("
    + ", ".join(f"{k} {v}" for k, v in RUN_COLUMNS.items())
    + ")",
    "CREATE TABLE IF NOT EXISTS epochs ("
    + ", ".join(f"{k} {v}" for k, v in EPOCH_COLUMNS.items())
    + ", PRIMARY KEY (hash, epoch))",
    "CREATE INDEX IF NOT EXISTS runs_by_setting ON runs (model, dataset, method, density)",
]

T = TypeVar("T")

# One connection per (process, database); a lock serialises threads on it. _FILE_IDS holds the
# (device, inode) of the file each connection opened: a Store opened after that file was
# deleted, moved or replaced must not reuse a connection to the old one.
_CONNECTIONS: dict[tuple[int, str], tuple[sqlite3.Connection, threading.RLock]] = {}
_FILE_IDS: dict[tuple[int, str], tuple[int, int] | None] = {}
_CONN_LOCK = threading.Lock()
#: cached connections kept at most (3 descriptors each: the file, its WAL and shared memory);
#: the least recently used beyond are closed (and reopened when used again): a notebook or a
#: script that opened hundreds of results folders ran out of descriptors
MAX_CONNECTIONS = 16


def _file_id(path: Path) -> tuple[int, int] | None:
    """``(st_dev, st_ino)`` of ``path``, or ``None`` where it does not exist."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino)


def _now() -> str:
    # microseconds: which of one seed's records is the latest must not be a tie (plots'
    # _one_per_seed); a same-second older "...:05+00:00" still sorts before "...:05.1+00:00"
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")


def _missing_columns(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    """``(table, column, SQL type)`` of every column of :data:`RUN_COLUMNS` and
    :data:`EPOCH_COLUMNS` the database lacks (all of a missing table's)."""
    out = []
    for table, columns in (("runs", RUN_COLUMNS), ("epochs", EPOCH_COLUMNS)):
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        out += [(table, name, sql) for name, sql in columns.items() if name not in have]
    return out


def _schema_is_current(conn: sqlite3.Connection) -> bool:
    """Whether the database has every table, column and index :data:`_SCHEMA` makes."""
    if _missing_columns(conn):
        return False
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    return "runs_by_setting" in indexes


def _is_busy(e: sqlite3.OperationalError) -> bool:
    msg = str(e).lower()
    return "locked" in msg or "busy" in msg


def _io_failure(path: Path, e: sqlite3.OperationalError) -> CannotWrite | None:
    """SQLite's ``disk I/O error`` or ``database or disk is full`` as a :class:`CannotWrite`
    that says what may have caused it (SQLite gives no errno): the space left on the store's
    file system and the process's file-size limit (``ulimit -f``), where either is low. A
    fault-injection review met the bare ``disk I/O error``, with no hint of a full disk."""
    msg = str(e)
    if "disk I/O error" not in msg and "disk is full" not in msg:
        return None
    name = getattr(e, "sqlite_errorname", None)  # Python 3.11: SQLITE_IOERR_WRITE, ...
    causes = []
    try:
        free = shutil.disk_usage(path.parent).free
        if free < 1 << 30:
            causes.append(f"{free / 2**20:.1f} MiB free on its file system")
    except OSError:
        pass
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
        if limit != resource.RLIM_INFINITY:
            causes.append(f"a file-size limit (ulimit -f) of {limit:,} bytes")
    except (ImportError, OSError, ValueError):  # Windows has no `resource`
        pass
    why = f"; {' and '.join(causes)}" if causes else ""
    then = ": once there is room, the same command goes on" if causes else ""
    return CannotWrite(
        f"results database {path}: {msg}{f' ({name})' if name else ''}{why}. Nothing written "
        f"before is lost{then}"
    )


def resolve_db_path(path: str | os.PathLike[str] | None) -> Path:
    """``path`` itself, or ``path/results.db`` when it is a folder (``None``: ./results.db)."""
    p = user_path(path if path is not None else DB_NAME, "the results database path (db, --db)")
    if p.is_dir() or (not p.suffix and not p.exists()):
        p = p / DB_NAME
    return p


def out_db_path(out: str | os.PathLike[str], db: str | os.PathLike[str] | None = None) -> Path:
    """The results database of an ``--out`` folder: ``db`` when given (see
    :func:`resolve_db_path`), else ``out/results.db``. ``out`` is always a folder, also before it
    exists and when its name has a dot (``exp.v2``)."""
    return (
        resolve_db_path(db)
        if db is not None
        else user_path(out, "the output folder (out, --out)") / DB_NAME
    )


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back the open transaction, if SQLite has not already done so; never raise (the
    caller re-raises the error that caused it, which must not be masked)."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


def _check_sqlite_file(path: Path) -> None:
    """Refuse an existing file that is not a SQLite database (SQLite would turn a small one, e.g.
    a stray ``notes.txt`` passed as ``--db``, into a database, destroying it)."""
    try:
        if not path.is_file() or path.stat().st_size == 0:
            return
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise DctpsError(f"cannot read results database {path}: {e.strerror or e}") from None
    if head != SQLITE_MAGIC:
        raise DctpsError(f"{path} is not a results database (not a SQLite file); left untouched")
    try:  # read-only: another program's database must not get our tables (nor WAL mode)
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            tables = {
                r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            conn.close()
    except sqlite3.Error:
        return  # locked, or damaged: the store's own open reports it
    if tables and "runs" not in tables:
        raise DctpsError(
            f"{path} is a SQLite database of another program (tables: "
            f"{', '.join(sorted(tables)[:5])}), not a dctps results database; left untouched"
        )


def _read_only_message(path: Path) -> str:
    return (
        f"results database {path} is read-only (its file system or folder is not writable): it "
        "can be queried and plotted, not written. Copy the folder to a writable place to add runs"
    )


def _read_only_place(path: Path) -> bool:
    """Whether ``path`` cannot be written, or its folder (where SQLite puts its WAL and lock
    files) cannot: a read-only file system or missing permissions."""
    with contextlib.suppress(OSError, AttributeError):
        if os.statvfs(path).f_flag & os.ST_RDONLY:
            return True
    return not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK))


#: file systems whose files processes on other hosts share (``/proc/self/mounts`` types)
NETWORK_FILE_SYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "beegfs", "ceph", "glusterfs",
    "fuse.glusterfs", "fuse.sshfs", "fuse.cephfs", "9p", "afs", "panfs", "ocfs2", "gfs2",
    "wekafs", "fuse.s3fs", "fuse.rclone", "fuse.juicefs", "fuse.gcsfuse", "davfs", "fuse.davfs",
})  # fmt: skip


def mount_type(path: str | os.PathLike[str], mounts: str | None = None) -> str | None:
    """The file system type of the mount holding ``path``, from ``mounts`` (the text of
    ``/proc/self/mounts``, read when ``None``); ``None`` where that is unknown (not Linux)."""
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None
    target = os.path.abspath(path)
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        # octal escapes in mount points (a space is \040)
        point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[1])
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def journal_mode(path: str | os.PathLike[str]) -> str:
    """``WAL`` for a database on a local file system, ``DELETE`` (a rollback journal) on a
    network one (:data:`NETWORK_FILE_SYSTEMS`), whose hosts cannot share WAL's index."""
    kind = mount_type(Path(path).parent)
    return "DELETE" if kind in NETWORK_FILE_SYSTEMS else "WAL"


def _set_journal_mode(conn: sqlite3.Connection, path: Path) -> str:
    """Put ``conn``'s database in :func:`journal_mode`'s mode where it can; return the mode it
    is in (lower case). SQLite leaves WAL only when no other connection has the file open, and
    refuses at once with "database is locked": retried as a busy write, an upgraded store on NFS
    that an older dctps (or a host that sees the disk as local) held open hung for the store's
    whole timeout, then failed. The database then stays in WAL, with a warning."""
    current = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    wanted = journal_mode(path).lower()
    if current == wanted or current not in ("wal", "delete"):  # memory, read-only, ...
        return current
    try:
        return str(conn.execute(f"PRAGMA journal_mode = {wanted}").fetchone()[0]).lower()
    except sqlite3.OperationalError as e:
        # only leaving WAL is refused while another connection is open; a busy switch the
        # other way is retried as any busy write is
        if current != "wal" or ("locked" not in str(e) and "busy" not in str(e)):
            raise
    # once per database and process: Python's default filter drops a repeat of one message
    # from one place, so the stack level stops at this module's Store.__init__ on purpose
    warnings.warn(
        f"results database {path} is on a network file system but stays in WAL mode while "
        "another process has it open; WAL's index cannot be shared between hosts: stop the "
        "other processes (or give each host its own --db), and the next command switches it",
        RuntimeWarning,
        stacklevel=4,
    )
    return current


def _close_least_recent(keep: tuple[int, str]) -> None:
    """Close this process's least recently used connections beyond :data:`MAX_CONNECTIONS`,
    and any whose file is gone (an ``rmtree`` of its folder: the descriptors kept its disk space
    in use), except ``keep`` and any a thread is using. Called with ``_CONN_LOCK`` held."""
    pid = os.getpid()
    mine = [k for k in _CONNECTIONS if k[0] == pid and k != keep]
    excess = len(mine) + 1 - MAX_CONNECTIONS
    for i, k in enumerate(mine):
        if i >= excess and _file_id(Path(k[1])) is not None:
            continue
        conn, lock = _CONNECTIONS[k]
        if not lock.acquire(blocking=False):
            continue
        try:
            del _CONNECTIONS[k]
            _FILE_IDS.pop(k, None)
            conn.close()
        finally:
            lock.release()


class Store:
    """The results database.

    Args:
        path: the ``.db`` file, or a folder (then ``folder/results.db``); created if missing.
        timeout: seconds to keep retrying a locked database before raising :class:`DctpsError`.

    Run rows have the columns of :data:`RUN_COLUMNS`; epoch rows those of :data:`EPOCH_COLUMNS`.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None, timeout: float = 600.0):
        self.path = resolve_db_path(path).resolve()
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise DctpsError(
                f"timeout must be a number of seconds >= 0 (how long a locked database is "
                f"retried), got {timeout!r}"
            )
        self.timeout = float(timeout)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise cannot_write("results database", self.path, e) from None
        self.readonly = False
        key = (os.getpid(), str(self.path))
        if key in _CONNECTIONS and _FILE_IDS.get(key) != _file_id(self.path):
            # the database was deleted (rmtree of an --out folder), moved or replaced since this
            # process connected: the cached connection still reads and writes the old file, so
            # finished runs would be "done" and new rows lost. SQLite neither checkpoints nor
            # deletes a WAL on closing a connection whose file has moved.
            self.close()
        if key not in _CONNECTIONS:
            # Only before this process connects: once it holds a connection, closing any other
            # descriptor of the file (as the header check does) drops all of the process's
            # POSIX locks on it; another process could then take itself for the last connection
            # and delete the WAL that this one still writes to, losing those writes.
            _check_sqlite_file(self.path)
        try:
            self._retry(self._init_schema)
            _FILE_IDS[key] = _file_id(self.path)
        except DctpsError:
            if not (self.path.is_file() and _read_only_place(self.path)):
                raise
            wal = self.path.with_name(self.path.name + "-wal")
            if wal.is_file() and wal.stat().st_size:
                # rows committed there are not in the file yet, and reading them needs a
                # writable folder: a read-only view without them would silently lack runs
                raise DctpsError(
                    f"results database {self.path} is on a read-only file system or folder, and "
                    f"its write-ahead log {wal.name} holds runs not yet merged into it: copy the "
                    "folder to a writable place to read them"
                ) from None
            # an archived or shared results folder (read-only file system or permissions):
            # still queried and plotted; a write says why it cannot happen
            self.close()
            self.readonly = True
            self._retry(lambda conn: conn.execute("SELECT count(*) FROM runs").fetchone())
            _FILE_IDS[key] = _file_id(self.path)

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r})"

    # ------------------------------------------------------------------ plumbing
    def _connection(self) -> tuple[sqlite3.Connection, threading.RLock]:
        key = (os.getpid(), str(self.path))
        with _CONN_LOCK:
            entry = _CONNECTIONS.pop(key, None)
            if entry is not None:
                _CONNECTIONS[key] = entry  # most recently used last
                known = _FILE_IDS.get(key)
                now = _file_id(self.path)
                if known is not None and now != known:
                    # deleted or replaced since this process connected: the connection still
                    # reads and writes the old file, so a row written now would be lost
                    del _CONNECTIONS[key]
                    _FILE_IDS.pop(key, None)
                    entry[0].close()
                    entry = None
                    if now is None:
                        raise DctpsError(
                            f"results database {self.path} was deleted or moved while this "
                            "process was using it: nothing more can be recorded there (a new "
                            "command creates a new one)"
                        )
            if entry is None:
                # read-only: immutable, as no lock or WAL index can be written there
                target = (
                    f"{self.path.as_uri()}?mode=ro&immutable=1" if self.readonly else str(self.path)
                )
                try:
                    conn = sqlite3.connect(
                        target,
                        timeout=BUSY_SECONDS,
                        isolation_level=None,
                        check_same_thread=False,
                        uri=self.readonly,
                    )
                except sqlite3.Error as e:
                    raise DctpsError(f"cannot open results database {self.path}: {e}") from None
                conn.row_factory = sqlite3.Row
                conn.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
                conn.create_function("dctps_density", 1, _sql_density, deterministic=True)
                entry = (conn, threading.RLock())
                _CONNECTIONS[key] = entry
                _close_least_recent(keep=key)
                # also after close(): each connection knows the file it opened (None until a
                # new database is first written; __init__ records it after its schema)
                _FILE_IDS[key] = _file_id(self.path)
            return entry

    def _retry(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)``, retrying on a locked/busy database with jittered backoff."""
        deadline = time.monotonic() + self.timeout
        attempt = 0
        while True:
            conn, lock = self._connection()
            try:
                with lock:
                    return fn(conn)
            except sqlite3.OperationalError as e:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                if "readonly database" in str(e):
                    raise DctpsError(_read_only_message(self.path)) from None
                if not _is_busy(e):
                    raise _io_failure(self.path, e) or DctpsError(
                        f"results database {self.path}: {e}"
                    ) from None
                if time.monotonic() > deadline:
                    raise DctpsError(
                        f"results database {self.path} stayed locked for {self.timeout:.0f} s"
                    ) from None
                time.sleep(min(0.02 * 2**attempt, 1.0) * random.uniform(0.5, 1.5))
                attempt += 1
            except sqlite3.DatabaseError as e:
                raise DctpsError(
                    f"results database {self.path} is unusable: {e}. Once you move it aside, "
                    "the same `dctps train`/`dctps sweep` commands rebuild it: a done run's rows "
                    "come back from its run folder's last.pt without training"
                ) from None

    def check_writable(self, why: str = "") -> None:
        """A :class:`DctpsError` if this store was opened read-only (see :attr:`readonly`), with
        ``why`` (what the caller was about to write) appended to the message."""
        if self.readonly:
            raise DctpsError(_read_only_message(self.path) + (f". {why}" if why else ""))

    def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` inside one short ``BEGIN IMMEDIATE`` transaction (retried when locked)."""
        self.check_writable()

        def tx(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                out = fn(conn)
            except BaseException:
                _rollback(conn)  # SQLite may have rolled back already (e.g. on a full disk)
                raise
            conn.execute("COMMIT")
            return out

        return self._retry(tx)

    def _init_schema(self, conn: sqlite3.Connection) -> None:
        mode = _set_journal_mode(conn, self.path)
        # a rollback journal without a full sync can be corrupted by a power loss (WAL cannot)
        conn.execute(f"PRAGMA synchronous = {'NORMAL' if mode == 'wal' else 'FULL'}")
        if _schema_is_current(conn):
            # read without the write lock: `dctps results` waited out any writer's transaction
            # (6 s behind a writer that held one for 6 s), though it writes nothing
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            for stmt in _SCHEMA:
                conn.execute(stmt)
            for table, name, sql_type in _missing_columns(conn):  # an older version's database
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}")
        except BaseException:
            _rollback(conn)
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this process's connection to the database (reopened on the next call)."""
        key = (os.getpid(), str(self.path))
        with _CONN_LOCK:
            entry = _CONNECTIONS.pop(key, None)
            _FILE_IDS.pop(key, None)
        if entry is not None:
            entry[0].close()

    # ------------------------------------------------------------------ runs
    def start(self, hash: str, config: Mapping[str, Any]) -> None:
        """Insert run ``hash`` as ``running`` (or mark an existing row running again).

        ``config`` is the resolved config as a nested dict (``RunConfig.to_dict()``); the
        descriptive columns (model, dataset, method, ...) are taken from it.
        """
        s, o = config.get("sparsity", {}), config.get("optim", {})
        row = {
            "hash": hash,
            "model": config.get("model", {}).get("name"),
            "dataset": config.get("data", {}).get("dataset"),
            "method": s.get("method"),
            "density": s.get("density"),
            "allocation": s.get("allocation"),
            "recipe": o.get("recipe"),
            "seed": config.get("seed"),
            "rigl": int(bool(s.get("rigl"))),
            "config_json": json.dumps(config, sort_keys=True),
            "status": "running",
            "reason": None,
            "created": _now(),
            "updated": _now(),
            "owner": owner_id(),
        }
        row = {k: sqlite_text(v) for k, v in row.items()}
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        keep = ("hash", "created")
        update = ", ".join(f"{k} = excluded.{k}" for k in row if k not in keep)

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(
                f"INSERT INTO runs ({cols}) VALUES ({marks}) "
                f"ON CONFLICT(hash) DO UPDATE SET {update}",
                tuple(row.values()),
            )

        self._write(fn)

    def _update(self, hash: str, values: Mapping[str, Any]) -> None:
        bad = [k for k in values if k not in RUN_COLUMNS or k == "hash"]
        if bad:
            raise DctpsError(f"unknown run column(s) {bad}; valid: {', '.join(RUN_COLUMNS)}")
        values = {**{k: sqlite_text(v) for k, v in values.items()}, "updated": _now()}
        sets = ", ".join(f"{k} = ?" for k in values)

        def fn(conn: sqlite3.Connection) -> None:
            cur = conn.execute(f"UPDATE runs SET {sets} WHERE hash = ?", (*values.values(), hash))
            if cur.rowcount == 0:
                raise DctpsError(f"no run {hash!r} in {self.path}; call start() first")

        self._write(fn)

    def update(self, hash: str, **metrics: Any) -> None:
        """Set columns of run ``hash`` (e.g. ``weights=...``, ``prune_seconds=...``)."""
        self._update(hash, metrics)

    def finish(self, hash: str, **metrics: Any) -> None:
        """Mark run ``hash`` ``done`` and record its metrics (columns of :data:`METRIC_COLUMNS`)."""
        self._update(hash, {"status": "done", "reason": None, **metrics})

    def fail(self, hash: str, reason: str, **metrics: Any) -> None:
        """Mark run ``hash`` ``failed`` with a short ``reason``."""
        self._update(hash, {"status": "failed", "reason": str(reason), **metrics})

    def get(self, hash: str) -> dict[str, Any] | None:
        """The run row of ``hash`` as a dict, or ``None``."""

        def fn(conn: sqlite3.Connection) -> dict[str, Any] | None:
            r = conn.execute("SELECT * FROM runs WHERE hash = ?", (hash,)).fetchone()
            return dict(r) if r is not None else None

        return self._retry(fn)

    def clear_epochs(self, hash: str) -> None:
        """Remove run ``hash``'s epoch rows (a run started over: its earlier attempt's
        learning curve is not this attempt's)."""
        self._write(lambda conn: conn.execute("DELETE FROM epochs WHERE hash = ?", (hash,)))

    def delete(self, hash: str) -> None:
        """Remove run ``hash`` and its epochs."""

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM epochs WHERE hash = ?", (hash,))
            conn.execute("DELETE FROM runs WHERE hash = ?", (hash,))

        self._write(fn)

    # ------------------------------------------------------------------ epochs
    def log_epoch(self, hash: str, epoch: int, **metrics: Any) -> None:
        """Insert or replace the row ``(hash, epoch)`` with ``metrics`` (epoch columns)."""
        bad = [k for k in metrics if k not in EPOCH_COLUMNS or k in ("hash", "epoch")]
        if bad:
            raise DctpsError(
                f"unknown epoch column(s) {bad}; valid: {', '.join(list(EPOCH_COLUMNS)[2:])}"
            )
        row = {"hash": hash, "epoch": int(epoch), **metrics}
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        update = ", ".join(f"{k} = excluded.{k}" for k in row if k not in ("hash", "epoch"))
        sql = f"INSERT INTO epochs ({cols}) VALUES ({marks}) ON CONFLICT(hash, epoch) DO " + (
            f"UPDATE SET {update}" if update else "NOTHING"
        )

        def fn(conn: sqlite3.Connection) -> None:
            conn.execute(sql, tuple(row.values()))
            conn.execute("UPDATE runs SET updated = ? WHERE hash = ?", (_now(), hash))

        self._write(fn)

    def epochs(self, hash: str) -> list[dict[str, Any]]:
        """All epoch rows of run ``hash``, by epoch."""

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = conn.execute("SELECT * FROM epochs WHERE hash = ? ORDER BY epoch", (hash,))
            return [dict(r) for r in rows]

        return self._retry(fn)

    # ------------------------------------------------------------------ queries
    def query(
        self,
        where: Mapping[str, Any] | str | None = None,
        params: Sequence[Any] = (),
        order_by: str = "model, dataset, method, density, allocation, rigl, seed, hash",
    ) -> list[dict[str, Any]]:
        """Run rows matching ``where``.

        ``where`` is either a dict of ``column: value`` (equality; a list/tuple value means
        ``IN``, ``None`` means ``IS NULL``; a key of :func:`config_keys` such as
        ``"optim.epochs"``, or its last part ``"epochs"``, compares the run's resolved config;
        a text value of a typed column reads as ``--where`` reads it: ``"1%"``, ``"no"``), a
        list of ``--where`` items (``["method=dctps,snip", "epochs=1"]``, as
        :func:`parse_where` reads them; ``status`` ``dead``: a ``running`` row whose process on
        this host is gone, as ``dctps results`` shows it), or a SQL condition string such as
        ``"density < 0.01 AND status = 'done'"`` (with ``?`` placeholders filled from
        ``params``).
        """
        sql, args = "SELECT * FROM runs", [sqlite_text(a) for a in as_items(params, "params")]
        by_config: dict[str, Any] = {}
        if isinstance(where, (list, tuple)):
            where = parse_where(where)
        if isinstance(where, Mapping):
            named: dict[str, Any] = {}
            for k, v in where.items():
                full = k if k in RUN_COLUMNS else config_key(k)
                if full in named:  # {"epochs": 2, "optim.epochs": 6} kept the last one
                    raise DctpsError(f"where gives {full!r} twice (as {k!r} too); give it once")
                named[full] = _typed(full, v)
            where = named
            by_config = {k: v for k, v in where.items() if k not in RUN_COLUMNS}
            where = {k: v for k, v in where.items() if k in RUN_COLUMNS}
            statuses = where.get("status")
            statuses = list(statuses) if isinstance(statuses, (list, tuple, set)) else [statuses]
            if "dead" in statuses:  # stored running: narrowed to the dead ones after the read
                others = [v for v in statuses if v != "dead"]
                where["status"] = [*others, "running"]
                locks = locks_folder(self.path)
                rows = self.query(where, params, order_by)
                rows = [r for r in rows if r["status"] in others or _is_dead(r, locks)]
                return config_matches(rows, by_config) if by_config else rows
        if isinstance(where, Mapping) and where:
            conds = []
            for k, v in where.items():
                value: Callable[[Any], Any] = sqlite_text
                if k == "classes":  # a row of dctps 0.1 has none: its data set's count
                    k, pairs = _classes_expr()
                    args.extend(pairs)
                elif k == "density":  # as the plots and tables group densities: 0.1 * 0.1 is 1%
                    k, value = "dctps_density(density)", _sql_density
                if v is None:
                    conds.append(f"{k} IS NULL")
                elif isinstance(v, (list, tuple, set)):
                    # IN never matches NULL: an empty cell among the values is its own test
                    rest = [x for x in v if x is not None]
                    tests = [f"{k} IN ({', '.join('?' for _ in rest)})"] if rest else []
                    if len(rest) < len(v):
                        tests.insert(0, f"{k} IS NULL")
                    conds.append(f"({' OR '.join(tests)})" if tests else "0")
                    args.extend(map(value, rest))
                else:
                    conds.append(f"{k} = ?")
                    args.append(value(v))
            sql += " WHERE " + " AND ".join(conds)
        elif isinstance(where, str) and where.strip():
            sql += f" WHERE {where}"
        elif where is not None and not isinstance(where, (Mapping, str)):
            raise DctpsError(
                f"where must be a dict, a list of key=value items or a SQL string, got "
                f"{type(where).__name__}"
            )
        if order_by:
            sql += f" ORDER BY {order_by}"

        def fn(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            try:
                return [dict(r) for r in conn.execute(sql, args)]
            except sqlite3.OperationalError as e:
                if _is_busy(e):
                    raise
                raise DctpsError(f"bad query {sql!r}: {e}") from None
            except sqlite3.ProgrammingError as e:  # params that do not fit: not a bad database
                raise DctpsError(f"bad query {sql!r} with params {args!r}: {e}") from None

        rows = self._retry(fn)
        return config_matches(rows, by_config) if by_config else rows

    def runs_with_epochs(
        self,
        where: Mapping[str, Any] | str | None = None,
        *,
        marked: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """The matching runs as :meth:`query` returns them, with ``config`` (the run's config, a
        dict, in place of ``config_json``) and ``epochs`` (its per-epoch rows, by epoch, without
        their ``hash``): what ``dctps results --json`` writes, learning curves included.
        ``marked``: :func:`with_marks` of this query's rows, where the caller has them (each
        row's identity resolved once for the table and every export)."""
        rows = list(marked) if marked is not None else with_marks(self.query(where))
        return list(self._with_epochs(rows))

    def _with_epochs(self, rows: Sequence[Mapping[str, Any]]) -> Iterable[dict[str, Any]]:
        """:meth:`runs_with_epochs` of ``rows``, a run at a time: their epochs are read
        :data:`EPOCHS_READ_RUNS` runs at a time, so that an export of 20,000 runs of 200 epochs
        holds one such chunk, not every epoch of the store."""
        for i in range(0, len(rows), EPOCHS_READ_RUNS):
            chunk = rows[i : i + EPOCHS_READ_RUNS]
            by_hash: dict[str, list[dict[str, Any]]] = {r["hash"]: [] for r in chunk}
            hashes = list(by_hash)

            def fn(conn: sqlite3.Connection, hashes: list[str] = hashes) -> list[dict[str, Any]]:
                sql = (
                    f"SELECT * FROM epochs WHERE hash IN ({', '.join('?' for _ in hashes)}) "
                    "ORDER BY hash, epoch"
                )
                return [dict(r) for r in conn.execute(sql, hashes)]

            for e in self._retry(fn):
                by_hash[e.pop("hash")].append(e)
            for r in chunk:
                run = {k: v for k, v in r.items() if k != "config_json"}
                try:
                    run["config"] = json.loads(r["config_json"]) if r.get("config_json") else None
                except ValueError:  # a row written by hand: kept as its text
                    run["config"] = r["config_json"]
                run["epochs"] = by_hash[r["hash"]]
                yield run

    def to_json(
        self,
        path: str | os.PathLike[str],
        where: Mapping[str, Any] | str | None = None,
        *,
        marked: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Write the matching runs (:meth:`runs_with_epochs`) to a JSON file, a list with one
        object per run; return the number of runs. Written atomically, as :meth:`to_csv` is,
        and never over a database or a file that is not such a JSON list. ``marked``: as
        :meth:`runs_with_epochs` takes it. Strict JSON: a number that is not finite (an
        infinite loss; SQLite already stores a NaN as NULL) is written as ``null``. The epochs
        are read while the text is written (500 runs at a time): a read that fails midway
        leaves a file as it was, but a stream (``-``, a pipe) has had the runs before it."""
        _check_export_target(user_path(path, "the JSON path"), "JSON")
        rows = list(marked) if marked is not None else with_marks(self.query(where))
        _export(path, "JSON", lambda f: _write_json(f, self._with_epochs(rows)))
        return len(rows)

    def to_csv(
        self,
        path: str | os.PathLike[str],
        where: Mapping[str, Any] | str | None = None,
        columns: Sequence[str] | None = None,
        *,
        marked: Sequence[Mapping[str, Any]] | None = None,
    ) -> int:
        """Write the matching run rows to a CSV file; return the number of rows.

        Refuses to overwrite an SQLite file (this store or another: a results database given
        as the CSV path by mistake would lose every run). The file is written to a temporary
        sibling and renamed, so a failure leaves any previous CSV intact. ``marked``: as
        :meth:`runs_with_epochs` takes it.
        """
        _check_export_target(user_path(path, "the CSV path"))
        rows = list(marked) if marked is not None else with_marks(self.query(where))
        cols = list(columns or (*RUN_COLUMNS, *MARK_COLUMNS))
        _export(path, "CSV", lambda f: _write_csv(f, rows, cols), newline="")
        return len(rows)


#: what ``--csv`` and ``--json`` write beside the stored columns: the table's ``variant``
#: (:func:`variant_column`) and ``recorded_by`` ("an older dctps" for a run recorded by an
#: older version of its computation, :func:`run_identity`), so that a group-by over the
#: export never averages runs the table and the plots keep apart
MARK_COLUMNS = ("variant", "recorded_by")


def sqlite_text(value: Any) -> Any:
    """``value``, a string as SQLite can store it: the bytes of a file name that are not UTF-8
    (a Latin-1 folder name, held by Python as lone surrogates, ``\\udce9``) as ``\\xe9``
    escapes. SQLite refused them, and a run under such a data root failed at every resume;
    stored and queried alike, a ``--where`` on that text still matches."""
    if not isinstance(value, str):
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        try:
            raw = value.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:  # a surrogate that stands for no byte
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return raw.decode("utf-8", "backslashreplace")
    return value


def owner_id() -> str:
    """``host:pid`` of this process, as :meth:`Store.start` records a run's owner."""
    return f"{socket.gethostname()}:{os.getpid()}"


def process_gone(owner: object) -> bool:
    """Whether the process of ``owner`` (``host:pid``, :func:`owner_id`) is known to be gone:
    it ran on this host and no process has its pid now. ``False`` where that cannot be told
    (another host, no owner recorded, not POSIX), and for a pid a later process took."""
    if not isinstance(owner, str) or os.name != "posix":
        return False
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OverflowError, OSError):  # PermissionError: another user's process, alive
        return False
    return False


def _is_dead(row: Mapping[str, Any], locks: Path) -> bool:
    """Whether ``row`` is a dead run: recorded ``running``, but its process on this host is
    gone (:func:`process_gone`) and its lock in ``locks`` (:func:`locks_folder`) is free."""
    return (
        row.get("status") == "running"
        and process_gone(row.get("owner"))
        # its lock held: alive in another PID namespace on a host of the same name
        and lock_held(locks / str(row["hash"]) / ".lock") is not True
    )


def reading_dead(rows: Sequence[Mapping[str, Any]], locks: Path) -> list[Mapping[str, Any]]:
    """``rows`` with each dead run (:func:`_is_dead`, locks in ``locks``) as a copy whose
    ``status`` reads ``dead``; the other rows are the same objects. What ``dctps results``
    and ``dctps plot --x epoch`` show (the exports keep the stored status)."""
    return [{**r, "status": "dead"} if _is_dead(r, locks) else r for r in rows]


def density_key(d: float) -> float:
    """A density as runs are grouped and filtered by it: to the 6 significant digits that a
    label (``1%``) shows, so float noise (``0.1 * 0.1 = 0.010000000000000002``, a config
    built in Python) is the same point, column and ``--where density=1%`` as ``0.01``."""
    return float(f"{float(d):.6g}")


def _sql_density(d: Any) -> float | None:
    """:func:`density_key` in SQL (``dctps_density``); an empty or non-numeric cell stays as it
    is, so that it matches nothing, as it did before."""
    return density_key(d) if isinstance(d, (int, float)) and not isinstance(d, bool) else d


def locks_folder(db: Path) -> Path:
    """The folder of run locks beside results database ``db`` (``DB.locks``): each run of that
    store holds ``<hash>/.lock`` in it while it trains (:func:`dctps.train.loop.fit`)."""
    return db.with_name(db.name + ".locks")


def lock_held(path: Path) -> bool | None:
    """Whether a process holds the run lock ``path`` (``DB.locks/<hash>/.lock``, which every
    run of a store with a path takes): ``False`` where the file is gone or free, ``None`` where
    that cannot be told (no ``fcntl``, a file system without locks). A free lock is taken
    shared for an instant."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return None
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return False
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return None
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    return False


def with_marks(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` with :data:`MARK_COLUMNS` added (``None`` where there is nothing to say)."""
    flats = flat_identities(rows)
    variants = variant_column(rows, flats)
    return [
        {**r, "variant": v or None, "recorded_by": f.get("recorded_by")}
        for r, v, f in zip(rows, variants, flats, strict=True)
    ]


def _export(
    path: str | os.PathLike[str],
    kind: str,
    write: Callable[[Any], None],
    newline: str | None = None,
) -> None:
    """Run ``write(f)`` on the export target ``path`` (checked by :func:`_check_export_target`):
    standard output; another stream (a descriptor, a FIFO, a device), appended to and never
    replaced (opening ``/dev/fd/N`` or ``/dev/stderr`` for writing would truncate a file the
    shell redirected there with ``>>``); else a file written atomically, so a failure leaves
    the previous one whole."""
    target = user_path(path, "the export path")
    try:
        if str(path) in STDOUT_PATHS:  # through sys.stdout: appends, as `>>` asks
            with utf8_stdout(newline) as f:
                write(f)
        elif _csv_stream(path):
            with open(target, "a", newline=newline, encoding="utf-8") as f:
                write(f)
        else:
            with atomic_write(target, f"{kind} file", newline=newline) as f:
                write(f)
    except BrokenPipeError:
        if not _csv_stream(path):
            raise cannot_write(f"{kind} file", path, BrokenPipeError("Broken pipe")) from None
        _reader_gone(str(path) in STDOUT_PATHS)
    except OSError as e:
        raise cannot_write(f"{kind} file", path, e) from None


def _reader_gone(stdout: bool) -> None:
    """The reader of a stream left before the export's end (``dctps results --json - | head``):
    it read what it wanted, as for the printed table, so that is no error. Standard output then
    goes to ``os.devnull``, so that Python's flush of what is still buffered, at exit, does not
    fail again (the recipe of Python's documentation on SIGPIPE)."""
    if not stdout:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # a stdout without a descriptor (captured, as in tests)
        pass


def _write_json(f: Any, runs: Iterable[Mapping[str, Any]]) -> None:
    """Write ``runs`` to ``f`` as ``json.dumps(list(runs), indent=1)`` would, with every
    non-finite float as ``null`` (:func:`json_safe`), a run at a time (an export of 20,000 runs
    of 200 epochs had built its 2 GB text in memory first)."""
    # in pieces of about 64 KB, not a write per JSON token as json.dump makes: under
    # PYTHONUNBUFFERED=1 (containers, SLURM, CI) each is a system call (5.5 million for 9,180
    # runs: 13 s where 4.5 s is the encoding)
    encode = json.JSONEncoder(indent=1, allow_nan=False).encode
    pieces: list[str] = []
    size = 0
    sep = "[\n "
    for run in runs:
        # a run's own lines one level deeper, as inside the list: a JSON string holds no raw
        # newline, so every newline of the encoding is between tokens
        pieces.append(sep + encode(json_safe(run)).replace("\n", "\n "))
        size += len(pieces[-1])
        sep = ",\n "
        if size >= JSON_WRITE_CHARS:
            f.write("".join(pieces))
            pieces, size = [], 0
    f.write("".join(pieces) + ("[]\n" if sep == "[\n " else "\n]\n"))


def json_safe(data: Any) -> Any:
    """``data`` with every NaN or infinite float as ``None``: ``json.dumps`` writes a bare
    ``NaN`` or ``Infinity``, which strict parsers (``jq``, JavaScript, serde) reject."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, Mapping):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [json_safe(v) for v in data]
    return data


#: how many runs' epochs `dctps results --json` reads at a time (under SQLite's limit of 999
#: bound parameters)
EPOCHS_READ_RUNS = 500

#: how much of `dctps results --json` is written at a time (characters)
JSON_WRITE_CHARS = 1 << 16


def _write_csv(f: Any, rows: Sequence[Mapping[str, Any]], cols: Sequence[str]) -> None:
    w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)


_FD_PATH = re.compile(r"/(dev|proc/self)/fd/\d+")
# where `--csv` means standard output: then the CSV is the command's only output
STDOUT_PATHS = ("-", "/dev/stdout", "/dev/fd/1", "/proc/self/fd/1")


def _csv_stream(path: str | os.PathLike[str]) -> bool:
    """Whether a CSV target is a stream rather than a file to replace: ``-`` or another name of
    a file descriptor (``/dev/stdout``, ``/dev/stderr``, ``/dev/fd/N``, ``/proc/self/fd/N``), or
    an existing file that is not a regular one (a FIFO, a device). Streams are written
    directly: never read first (that blocks on a pipe), never replaced by a rename (that would
    replace the ``/dev`` link itself). Any other path, ``/dev/shm/x.csv`` included, is a file."""
    s = str(path)
    if s in STDOUT_PATHS or s == "/dev/stderr" or _FD_PATH.fullmatch(s):
        return True
    p = Path(s)
    return p.exists() and not p.is_file() and not p.is_dir()


#: how each CSV that `dctps results` writes begins: its runs, or its --summary
CSV_SIGNATURES = (b"hash,", b"model,dataset,setting,")


def _check_export_target(target: Path, kind: str = "CSV") -> None:
    """Refuse to overwrite an existing file that is not an earlier CSV (``kind='JSON'``: JSON)
    of this command (a results database, a run checkpoint or config given as the path by
    mistake)."""
    ext, signatures = ("json", (b"[",)) if kind == "JSON" else ("csv", CSV_SIGNATURES)
    if _csv_stream(target):
        return
    if target.is_dir():  # refused before the table is printed
        example = target / f"results.{ext}"
        raise DctpsError(f"{kind} target {target} is a folder; give a file path, e.g. {example}")
    side = re.fullmatch(r"(.+)-(wal|shm|journal)", target.name)
    if side and starts_with(target.with_name(side[1]), SQLITE_MAGIC):
        # SQLite owns these: it deletes or rewrites them when the database next closes
        raise DctpsError(
            f"{kind} target {target} is named like an SQLite database's side file, which "
            f"SQLite deletes or rewrites; give another path, e.g. results.{ext}"
        )
    # an SQLite database (a results store given as the path), a FIFO or a device: every
    # writer's own refusal, before this command's own signature check
    check_file_target(target, f"{kind} file", f"results.{ext}")
    if all(foreign_file(target, signature) for signature in signatures):
        raise DctpsError(
            f"{target} exists and is not a {kind} written by `dctps results`; refusing to "
            f"overwrite it. Give another path, e.g. results.{ext}"
        )


# ----------------------------------------------------------------------------- CLI helpers
def _typed(key: str, value: Any) -> Any:
    """A ``Store.query`` dict value for column or config key ``key``: text (or a list of
    texts) in a typed column or a config key read as ``--where`` reads it (``density: "1%"``,
    ``rigl: "no"``, ``epochs: "2"``), which matched nothing before; anything else as given."""
    if key in RUN_COLUMNS:
        if RUN_COLUMNS[key].split()[0] == "TEXT":
            return value
        parse = _parse_value
    else:  # a config key: "2" for optim.epochs, "1e-3" for optim.lr, "all" for data.subset
        parse = _parse_config_value
    if isinstance(value, str):
        return parse(value, key)
    if isinstance(value, (list, tuple, set)):
        return [parse(v, key) if isinstance(v, str) else v for v in value]
    return value


def _parse_value(raw: str, key: str) -> Any:
    """A ``--where`` value converted to the type of column ``key`` (:data:`RUN_COLUMNS`): TEXT
    stays text (a hash like ``0123456789012345`` is not a number), ``rigl`` takes the table's
    ``yes``/``no`` as well as ``true``/``false``/``1``/``0``."""
    low = raw.lower()
    if low in ("none", "null", "-"):  # "-": how the table prints an empty cell
        return None
    kind = RUN_COLUMNS[key].split()[0]
    if key == "density":  # as --density and sweep grids take it
        from dctps.errors import parse_density  # exact: 0.7% is 0.007, not 0.006999...

        try:
            return parse_density(raw, "--where density")
        except DctpsError:
            # 2 or nan matched nothing, and `dctps plot` said "no finished or failed runs"
            raise DctpsError(
                f"--where density takes a density in (0, 1] as a number or a percentage "
                f"(0.001 or 0.1%), got {raw!r}"
            ) from None
    if key == "rigl":
        if low in ("yes", "true", "1"):
            return 1
        if low in ("no", "false", "0"):
            return 0
        raise DctpsError(f"--where rigl takes yes or no, got {raw!r}")
    if kind == "TEXT":
        return raw
    if low in ("true", "false"):
        return int(low == "true")
    for conv in (int, float) if kind == "INTEGER" else (float,):
        try:
            value = conv(raw)
        except ValueError:
            continue
        if isinstance(value, int) and not -(2**63) <= value < 2**63:  # SQLite's INTEGER
            raise DctpsError(f"--where {key}={raw} is out of range: no stored value is that large")
        if not math.isfinite(value):  # SQLite stores a NaN as NULL: it matched nothing, silently
            raise DctpsError(
                f"--where {key} takes a finite number, got {raw!r} (none for an empty cell)"
            )
        return value
    raise DctpsError(f"--where {key} takes a number, got {raw!r}")


def _classes_expr() -> tuple[str, list[Any]]:
    """The SQL value of a row's ``classes`` with its placeholders' values: the column, or for a
    row recorded before it (dctps 0.1) its data set's class count, as the plots read it (a
    ``--where classes=10`` missed every such row)."""
    from dctps import data

    pairs = [(n, data.get_info(n).num_classes) for n in data.names()]
    case = " ".join("WHEN ? THEN ?" for _ in pairs)
    return f"COALESCE(classes, CASE dataset {case} END)", [x for p in pairs for x in p]


def config_keys() -> list[str]:
    """The keys of a run's resolved config as :func:`flat_identities` flattens it
    (``"optim.epochs"``, ``"sparsity.train_alpha"``, ...): what ``--where`` can filter on
    besides :data:`RUN_COLUMNS`."""
    from dctps.results.variants import flatten
    from dctps.train.config import RunConfig, omitted_defaults

    ident = flatten(RunConfig.from_dict({"sparsity": {"density": 0.5}}, "").identity())
    # and the fields an identity holds only where they are not their default (offset, alpha,
    # fused, ...), which the variant column names as any other
    return sorted({*ident, *omitted_defaults()})


def config_key(name: str) -> str:
    """The config key ``name`` means: itself, or the one key it ends (``epochs`` ->
    ``optim.epochs``, as the ``variant`` column names it); else a :class:`DctpsError` listing
    the columns and the config keys."""
    keys = config_keys()
    if name in keys:
        return name
    short = [k.rsplit(".", 1)[-1] for k in keys]
    ends = [k for k, last in zip(keys, short, strict=True) if last == name]
    if len(ends) == 1:
        return ends[0]
    import difflib

    close = difflib.get_close_matches(name, [*RUN_COLUMNS, *keys, *short], n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    extra = sorted({n for n in short if n not in RUN_COLUMNS})
    listed = [c for c in RUN_COLUMNS if c not in ("config_json", "owner")]  # valid, not for this
    # the config keys nearest the name: all of them made a line of about 600 characters
    near = sorted(difflib.get_close_matches(name, extra, n=8, cutoff=0.0))
    raise DctpsError(
        f"unknown column {name!r} in --where.{hint} Columns: {', '.join(listed)}; or one of "
        f"{len(extra)} config keys, e.g. {', '.join(near)} (or dotted: optim.epochs; "
        "`dctps results --json -` shows a run's config)"
    )


def _parse_config_value(raw: str, key: str) -> Any:
    """A ``--where`` value for config ``key`` as the flattened config holds it: YAML's reading
    (``6``, ``0.1``, ``false``, ``null``) converted to the field's type as ``--set`` converts it
    (``1e-3`` a float), ``all`` for ``data.subset`` the whole split (as the ``variant`` column
    shows it), lists and mappings as their JSON text."""
    from dctps.results.variants import flat_value
    from dctps.train.config import NOT_CONVERTED, coerce_key

    if key == "data.subset" and raw.lower() == "all":
        return None
    if key == "sparsity.density":  # as the density column and every flag read it: 1%, 0.7%
        from dctps.errors import parse_density

        try:
            return parse_density(raw, "--where sparsity.density")
        except DctpsError:
            pass  # none, null: as YAML reads them below
    try:
        value = yaml.safe_load(raw) if raw else raw
    except yaml.YAMLError:
        value = raw
    if value is None or isinstance(value, (str, int, float, bool)):
        # as --set reads it: lr=1e-3 is a float, not text; train_alpha=0 is False (the text
        # converts where YAML's reading does not); a value that converts neither way is kept
        typed = coerce_key(key, value)
        if typed is NOT_CONVERTED:
            typed = coerce_key(key, raw)
        value = value if typed is NOT_CONVERTED else typed
    return flat_value(value)


def _same(a: Any, b: Any) -> bool:
    """Equal as config values: ``True`` is not ``1`` (nor ``False`` ``0``), ``6`` is ``6.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b


def config_matches(
    rows: Sequence[dict[str, Any]], where: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The ``rows`` whose resolved config (:func:`flat_identities`) has each ``key: value`` of
    ``where`` (a list value: any of its values)."""
    from dctps.train.config import omitted_defaults

    defaults = omitted_defaults()  # a key an identity leaves out holds its default
    keep = []
    for row, flat in zip(rows, flat_identities(rows), strict=True):
        if all(
            any(_same(flat.get(k, defaults.get(k)), w) for w in (v if isinstance(v, list) else [v]))
            for k, v in where.items()
        ):
            keep.append(row)
    return keep


def parse_where(items: Iterable[str]) -> dict[str, Any]:
    """``["method=dctps", "density=0.001"]`` -> ``{"method": "dctps", "density": 0.001}``.

    A comma-separated value means any of them (``method=dctps,snip``), and so does a repeated
    key (``method=dctps``, ``method=snip``). Besides the columns, a key of the runs' configs
    filters on it (:func:`config_key`: ``optim.epochs=6``, or ``epochs=6`` as the table's
    ``variant`` column names it).
    """
    out: dict[str, Any] = {}
    for item in as_items(items, "where"):
        if not isinstance(item, str):  # a pair or a dict in the list: partition raised
            raise DctpsError(
                f"where items must be key=value strings such as 'method=dctps', got {show(item)} "
                "(or give where as one dict)"
            )
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise DctpsError(f"--where expects key=value, got {item!r}")
        if key not in RUN_COLUMNS:
            key = config_key(key)
            # a list or mapping (milestones=[100,150]) is one value: its commas do not split it
            parts = [raw] if raw.lstrip().startswith(("[", "{")) else raw.split(",")
            vals = [_parse_config_value(v.strip(), key) for v in parts]
        else:
            vals = [_parse_value(v.strip(), key) for v in raw.split(",")]
        if key in out:  # a repeated key means any of its values, as a comma list does
            prev = out[key]
            vals = [*(prev if isinstance(prev, list) else [prev]), *vals]
        out[key] = vals if len(vals) > 1 else vals[0]
    return out


TABLE_COLUMNS = (
    "hash",
    "model",
    "dataset",
    "method",
    "density",
    "allocation",
    "rigl",
    "recipe",
    "seed",
    "status",
    "val_acc",
    "test_acc",
    "best_epoch",
    "nonzeros",
    "alphas",
    "wall_seconds",
    "reason",
)


def _cell(v: Any, col: str) -> str:
    if v is None:
        return "-"
    if col in ("val_acc", "test_acc") and isinstance(v, float):
        return f"{100 * v:.2f}"
    if col == "wall_seconds" and isinstance(v, (int, float)):
        return f"{v:.0f}"
    if col == "rigl":
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] = TABLE_COLUMNS) -> str:
    """A plain-text table of ``rows`` (accuracies in %)."""
    header = [c if c not in ("val_acc", "test_acc") else c + "%" for c in columns]
    body = [[_cell(r.get(c), c) for c in columns] for r in rows]
    widths = [
        max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(b, widths, strict=True)).rstrip() for b in body]
    return "\n".join(lines)


#: the run fields that :data:`TABLE_COLUMNS` already show (flattened config keys)
SHOWN_FIELDS = (
    "model.name",
    "data.dataset",
    "sparsity.method",
    "sparsity.density",
    "sparsity.allocation",
    "sparsity.rigl",
    "optim.recipe",
    "seed",
)


def row_config(row: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved config stored with a run row (``config_json``), as a dict."""
    raw = row.get("config_json")
    return json.loads(raw) if raw else {}


def run_identity(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's config as its run identity (today's defaults filled in, non-identity fields such
    as the device dropped), or as stored where this version cannot read it.

    When that identity no longer hashes to the row's ``hash``, the row was recorded by an older
    version of a computation that changed since (VGG19 before revision 2,
    :data:`dctps.models.REVISIONS`; DCTpS supports seeded ``seed + i``,
    :data:`dctps.sparsify.SUPPORT_REVISION`): it gets ``recorded_by = "an older dctps"``, so
    the results table and the plots tell it apart and never average it with today's runs."""
    from dctps.train.config import RunConfig

    try:
        cfg = row_config(row)
    except (ValueError, RecursionError):  # not JSON, or nested past Python's recursion limit
        return {}
    try:
        ident = RunConfig.from_dict(dict(cfg), source="results store").identity()
    except Exception:  # an older or foreign config: compare it as stored
        return cfg if isinstance(cfg, dict) else {}
    if _older(ident, row):
        ident = {**ident, "recorded_by": "an older dctps"}
    return ident


def _older(ident: dict[str, Any], row: Mapping[str, Any]) -> bool:
    """Whether ``row`` was recorded by an older version of its computation: its hash is not
    that of today's identity ``ident`` (:func:`run_identity`)."""
    from dctps.train.config import identity_hash

    run_hash = row.get("hash")
    return run_hash is not None and identity_hash(ident) != run_hash


def flat_identities(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``flatten(run_identity(row))`` of each row (:func:`dctps.results.variants.flatten`),
    each config's identity flattened once for all its seeds."""
    from dctps.results.variants import flatten

    flats: dict[int, dict[str, Any]] = {}  # id(base) -> its flattened form
    out = []
    for base, seed, older in _identity_parts(rows):
        if seed is None:
            out.append(flatten(base))
            continue
        if id(base) not in flats:
            flats[id(base)] = flatten(base)
        out.append(_seeded(flats[id(base)], seed, older))
    return out


def identities(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """:func:`run_identity` of each row, resolving each config once for all its seeds."""
    return [
        base if seed is None else _seeded(base, seed, older)
        for base, seed, older in _identity_parts(rows)
    ]


def _seeded(base: dict[str, Any], seed: int, older: bool) -> dict[str, Any]:
    ident = {**base, "seed": seed}
    if older:
        ident["recorded_by"] = "an older dctps"
    return ident


def _identity_parts(
    rows: Sequence[Mapping[str, Any]],
) -> list[tuple[dict[str, Any], int | None, bool]]:
    """Per row, ``(identity of its config at seed 0, its seed, recorded by an older dctps)``,
    the first shared by the rows of one config: a config's identity holds its seed as given and
    nothing derived from it, so each is resolved once for all its seeds. (``dctps results``
    spent about 2 ms a row resolving 10,000 rows of 10 settings one by one.) A row whose config
    cannot be read so is ``(run_identity(row), None, False)``, resolved alone or as stored."""
    from dctps.errors import check_seed
    from dctps.train.config import RunConfig

    memo: dict[str, dict[str, Any] | None] = {}
    out: list[tuple[dict[str, Any], int | None, bool]] = []
    for r in rows:
        try:
            cfg = row_config(r)
            seed = cfg.get("seed") if isinstance(cfg, dict) else None
            if isinstance(seed, bool) or not isinstance(seed, int):
                raise DctpsError("not an integer seed")
            check_seed(seed)
            key = json.dumps({**cfg, "seed": 0}, sort_keys=True, default=str)
        except (DctpsError, TypeError, ValueError, RecursionError):
            out.append((run_identity(r), None, False))  # resolved alone, or as stored
            continue
        if key not in memo:
            try:
                memo[key] = RunConfig.from_dict({**cfg, "seed": 0}, "results store").identity()
            except Exception:  # an older or foreign config
                memo[key] = None
        base = memo[key]
        if base is None:  # compared as stored, as run_identity does
            out.append((cfg, None, False))
            continue
        out.append((base, seed, _older({**base, "seed": seed}, r)))
    return out


def older_records(
    store: Store, configs: Sequence[Any], hashes: Sequence[str] | None = None
) -> dict[str, dict[str, Any]]:
    """For each config (a :class:`~dctps.train.config.RunConfig`) whose run the store does not
    hold under its hash: the latest row of the same config recorded by an older dctps (its
    hash that of the identity then; today's identity of its config hashes to the config's), as
    ``hash -> row``. Such a run cannot be reused or resumed: a computation of it changed since
    (:func:`run_identity`), so it is trained anew, and the old row stays beside it, marked
    ``recorded_by``. Rows read: those of the configs' models, data sets, methods, densities
    and seeds. ``hashes``: the configs' hashes, where the caller has them."""
    from dctps.train.config import identity_hash

    want = set(hashes if hashes is not None else (c.config_hash() for c in configs))
    if not want:
        return {}
    resolved = [c.resolve() for c in configs]
    rows = store.query({
        "model": sorted({c.model.name for c in resolved}),
        "dataset": sorted({c.data.dataset for c in resolved}),
        "method": sorted({c.sparsity.method for c in resolved}),
        "density": sorted({c.sparsity.density for c in resolved}),
        "seed": sorted({c.seed for c in resolved}),
    }, order_by="")  # fmt: skip
    held = {r["hash"] for r in rows}
    rows = [r for r in rows if r["hash"] not in want]
    keys = [_memo_key(r) for r in rows]
    new = [r for r, k in zip(rows, keys, strict=True) if k not in _TODAY_HASH]
    if len(_TODAY_HASH) + len(new) > _TODAY_HASH_MAX:
        _TODAY_HASH.clear()
    for r, ident in zip(new, identities(new), strict=True):
        older = ident.get("recorded_by") is not None
        today = {k: v for k, v in ident.items() if k != "recorded_by"}
        _TODAY_HASH[_memo_key(r)] = identity_hash(today) if older else None
    out: dict[str, dict[str, Any]] = {}
    for r, k in zip(rows, keys, strict=True):
        h = _TODAY_HASH.get(k)
        if (
            h is not None
            and h in want
            and h not in held
            and str(r.get("updated") or "") >= str((out.get(h) or {}).get("updated") or "")
        ):
            out[h] = r
    return out


#: a row (its hash and config) -> today's hash of its config where an older dctps recorded
#: it, else None: a memo of :func:`older_records`, so that a loop of fits into one setting of
#: a large store resolves each row once, not once per fit (about 0.6 ms a row); cleared past
#: _TODAY_HASH_MAX entries
_TODAY_HASH: dict[str, str | None] = {}
_TODAY_HASH_MAX = 200_000


def _memo_key(row: Mapping[str, Any]) -> str:
    raw = str(row.get("config_json") or "").encode()
    return f"{row.get('hash')}:{hashlib.blake2b(raw, digest_size=8).hexdigest()}"


def describe_older(row: Mapping[str, Any]) -> str:
    """One phrase for a row :func:`older_records` found: ``run 5feeddc4e59e97ed (recorded by an
    older dctps, done)``."""
    return f"run {row.get('hash')} (recorded by an older dctps, {row.get('status') or 'no status'})"


def variant_column(
    rows: Sequence[Mapping[str, Any]], flats: Sequence[Mapping[str, Any]] | None = None
) -> list[str]:
    """Per row, what tells it apart from the rows that the table's columns show alike: the
    config fields that differ among them, as ``"epochs=6, train_alpha=False"`` (what ``dctps
    plot`` puts in brackets), and the settings in which the rows of its model and data set
    differ beyond their methods' own (:func:`~dctps.results.variants.differing_settings`);
    ``""`` for a row no other row looks like. ``flats``: :func:`flat_identities` of ``rows``,
    where the caller has them."""
    from dctps.results.variants import (
        NOT_A_VARIANT,
        differing_settings,
        named_differences,
        own_settings,
        varying_keys,
    )

    if flats is None:
        flats = flat_identities(rows)
    # what the rows of one model and data set differ in beyond their methods' own settings
    # and recipe defaults (DCTpS at 40 epochs beside SNIP at 2), as `dctps plot` labels it
    panels: dict[tuple[Any, Any], list[int]] = {}
    for i, r in enumerate(rows):
        panels.setdefault((r.get("model"), r.get("dataset")), []).append(i)
    across: list[set[str]] = [set()] * len(rows)
    for members in panels.values():
        differ = set(differing_settings([flats[i] for i in members])) - set(SHOWN_FIELDS)
        for i in members:
            across[i] = differ
    # grouped as `dctps plot` groups curves: across seeds and densities, so that the runs of one
    # setting carry one label whatever their seed (grouped per seed, a seed with a fixed-alpha
    # run said "train_alpha=True" where the other seed's same runs said nothing)
    grouping = [k for k in SHOWN_FIELDS if k not in NOT_A_VARIANT]
    groups: dict[str, list[int]] = {}
    for i, f in enumerate(flats):
        shown = json.dumps([f.get(k) for k in grouping], sort_keys=True, default=str)
        groups.setdefault(shown, []).append(i)
    out = [""] * len(rows)
    for members in groups.values():
        group = [flats[i] for i in members]
        varying = varying_keys(group, shown=SHOWN_FIELDS) if len(members) > 1 else []
        for i in members:
            keys = sorted(set(varying) | across[i] | set(own_settings(flats[i])))
            out[i] = ", ".join(named_differences(flats[i], keys))
    return out


def _what_is_there(store: Store, where: Mapping[str, Any]) -> str:
    """For a filter that matched nothing: the values the store holds for each filtered column
    that no value of the filter matched (a typo, ``DCTpS`` for ``dctps``, ``10`` for ``0.1``)."""
    rows = store.query()
    if not rows:
        return " (the database holds no runs)"
    from dctps.train.config import omitted_defaults

    notes = []
    flats = flat_identities(rows) if any(k not in RUN_COLUMNS for k in where) else None
    defaults = omitted_defaults()
    for key, want in where.items():
        wanted = want if isinstance(want, list) else [want]
        cells = (
            (f.get(key, defaults.get(key)) for f in flats)
            if key not in RUN_COLUMNS and flats
            else (r.get(key) for r in rows)
        )
        present = sorted(set(cells), key=lambda v: (v is None, str(v)))
        if not any(_same(w, p) for w in wanted for p in present):
            # floats in full: an exact filter must match the stored value, not its rounding
            shown = ", ".join(
                "-" if v is None else repr(v) if isinstance(v, float) else str(v)
                for v in present[:12]
            )
            more = f", ... ({len(present)} values)" if len(present) > 12 else ""
            unit = " (fractions, not %)" if key in ("val_acc", "test_acc") else ""
            if key == "status" and "dead" in wanted:  # never stored: what the table shows
                unit += " (dead: a running row whose process on this host is gone)"
            notes.append(f"{key} holds: {shown}{more}{unit}")
    return "; " + "; ".join(notes) if notes else ""


def existing_db(db: str | os.PathLike[str] | None, hint: str = "") -> Path:
    """The results database that a reading command (``results``, ``plot``, a figure's
    ``--plot-only``) opens: :func:`resolve_db_path` of ``db``, which must be a non-empty file
    (SQLite would make an empty one a database, changing a file the command only reads)."""
    path = resolve_db_path(db)
    hint = hint or "pass --db PATH or a run's --out folder"
    if not path.is_file():
        raise DctpsError(f"no results database at {path} ({hint})")
    if path.stat().st_size == 0:
        raise DctpsError(f"{path} is empty, not a results database ({hint}); left untouched")
    return path


def print_results(
    db: str | os.PathLike[str] | None,
    where: Iterable[str] = (),
    csv_path: str | os.PathLike[str] | None = None,
    echo: Callable[[str], Any] = print,
    json_path: str | os.PathLike[str] | None = None,
    summary: bool = False,
    metric: str | None = None,
) -> list[dict[str, Any]]:
    """``dctps results``: print the matching runs as a table, optionally write them to CSV
    and/or JSON (the runs' configs and per-epoch metrics too: :meth:`Store.to_json`). With
    ``summary``, their accuracy over seeds instead (:mod:`dctps.results.summary`: a table per
    model and data set; the CSV and JSON hold a row per setting and density), of ``metric``
    (auto, test_acc or val_acc, as ``dctps plot`` takes it)."""
    if metric is not None and not summary:
        raise DctpsError(
            f"--metric {metric} chooses the accuracy that --summary averages; add --summary"
        )
    metric = "auto" if metric is None else metric
    if metric not in ("auto", "test_acc", "val_acc"):
        raise DctpsError(f"--metric must be auto, test_acc or val_acc, got {show(metric)}")
    path = existing_db(db)
    exports = [(p, kind) for p, kind in ((csv_path, "CSV"), (json_path, "JSON")) if p is not None]
    if sum(str(p) in STDOUT_PATHS for p, _ in exports) > 1:
        raise DctpsError("--csv and --json cannot both go to standard output; give one a file")
    for target, kind in exports:
        refuse_empty(target, f"--{kind.lower()}", f"results.{kind.lower()}")
        # before printing: the table would hide the error
        _check_export_target(user_path(target), kind)
        if not _csv_stream(target):
            make_parent(target, f"{kind} file", f"results.{kind.lower()}")  # as commands do
    store = Store(path)
    filters = parse_where(where)
    locks = locks_folder(path)
    rows = store.query(filters)
    if summary:
        _print_summary(rows, exports, echo, metric, f"no runs in {path} match" + (
            "" if rows else _what_is_there(store, filters)))  # fmt: skip
        return rows
    # the variant column, resolved once for the table and every export (it resolves each
    # row's config: 1.4 s at 10,000 rows, once per export before)
    marked = with_marks(rows)
    if _streamed(
        exports,
        lambda target, kind: (store.to_csv if kind == "CSV" else store.to_json)(
            target, marked=marked
        ),
    ):
        return rows
    if rows:
        columns: Sequence[str] = TABLE_COLUMNS
        if any(r["variant"] for r in marked):  # runs the other columns cannot tell apart
            i = TABLE_COLUMNS.index("seed") + 1
            columns = (*TABLE_COLUMNS[:i], "variant", *TABLE_COLUMNS[i:])
        # a `running` row whose process is gone read as a live run (the exports keep the
        # stored status and the owner column)
        shown = reading_dead(marked, locks)
        echo(format_table(shown, columns))
        n = sum(r["status"] == "dead" for r in shown)
        if n:
            echo(f"{n} run{' is' if n == 1 else 's are'} dead: recorded running, but the "
                 f"process that trained {'it' if n == 1 else 'them'} on this host is gone "
                 "(killed, out of memory); the same `dctps train`/`sweep` command resumes "
                 f"{'it' if n == 1 else 'each'} from its last checkpoint")  # fmt: skip
    else:
        echo(f"no runs in {path} match" + _what_is_there(store, filters))
    if csv_path is not None:
        n = store.to_csv(csv_path, marked=marked)
        echo(f"wrote {n} rows to {csv_path}")
    if json_path is not None:
        n = store.to_json(json_path, marked=marked)
        echo(f"wrote {n} run{'' if n == 1 else 's'} (configs and per-epoch metrics) to {json_path}")
    return rows


def _streamed(
    exports: Sequence[tuple[str | os.PathLike[str], str]],
    write: Callable[[str | os.PathLike[str], str], Any],
) -> bool:
    """Where one of ``exports`` (``(target, "CSV" | "JSON")``) goes to standard output, it is
    the command's only output (e.g. for a pipe): write the others, then it, and return
    ``True``; else write nothing and return ``False`` (the caller prints, then exports)."""
    streamed = [(p, kind) for p, kind in exports if str(p) in STDOUT_PATHS]
    if not streamed:
        return False
    for target, kind in exports:
        if (target, kind) not in streamed:
            write(target, kind)
    write(*streamed[0])
    return True


def _print_summary(
    rows: Sequence[Mapping[str, Any]],
    exports: Sequence[tuple[str | os.PathLike[str], str]],
    echo: Callable[[str], Any],
    metric: str,
    nothing: str,
) -> None:
    """``dctps results --summary``: the tables, and the rows of the summary to each export
    (alone on standard output where one goes there)."""
    from dctps.results.summary import SUMMARY_COLUMNS, format_summary, summarise, summary_rows

    panels = summarise(rows, metric) if rows else []
    long = summary_rows(panels)

    def write(target: str | os.PathLike[str], kind: str) -> None:
        if kind == "CSV":
            flat = [{**r, "failed_seeds": " ".join(map(str, r["failed_seeds"])),
                     # a JSON list: a reason is an exception's text, and may hold any separator
                     "failed_reasons": json.dumps(r["failed_reasons"]) if r["failed_reasons"]
                     else ""} for r in long]  # fmt: skip
            _export(target, "CSV", lambda f: _write_csv(f, flat, SUMMARY_COLUMNS), newline="")
        else:
            _export(target, "JSON", lambda f: _write_json(f, long))

    if _streamed(exports, write):
        return
    from dctps.results.plots import panel_title

    shown = {(p.model, p.dataset) for p in panels}
    left: dict[tuple[str, str], list[int]] = {}
    for r in rows:  # panels aggregate() leaves out: say why, not nothing
        if (r["model"], r["dataset"]) not in shown:
            n = left.setdefault((r["model"], r["dataset"]), [0, 0])
            n[r.get("status") == "done"] += 1
    if not rows:
        echo(nothing)
    elif panels:
        echo(format_summary(panels))
    for (model, dataset), (n_open, n_done) in left.items():
        why = [f"{n_open} without a result yet"] if n_open else []
        if n_done:
            why.append(f"{n_done} done without " + ("an accuracy" if metric == "auto" else metric))
        echo(f"{panel_title(model, dataset)}: no table ({', '.join(why)})")
    for target, kind in exports:
        write(target, kind)
        echo(f"wrote {len(long)} summary row{'' if len(long) == 1 else 's'} to {target}")
