"""Production SQLite provider: the Provider + ManagementProvider contract on one database file.

Owns the connection policy; applying the schema (SPEC §15.2, times as integer ms; the DDL and
migrations are data in ``sqlite_schema.py``) on open; the mapping of ``sqlite3`` errors to
:class:`~duroxide_sim.errors.ProviderError`; and every queue, lock, history, KV and session
operation. Management operations (SPEC §14) live in the :class:`SqliteAdminMixin` of
``sqlite_admin.py``; they share this module's transaction helper.

Behaviour matches :class:`~duroxide_sim.providers.memory.InMemoryProvider` (the reference
implementation of the same contract, with the same documented deviations: orphan messages
are parked instead of blocking the queue (later fetches do not walk them; a late start still
gets them; they expire after 5 minutes: ``_shared.ORPHAN_PARK_SHIFT``), the batch is ordered
by ``(visible_at, id)``, ``poll_timeout_ms`` is ignored). The shared conformance suite (``duroxide_sim.testing.
conformance``) runs against both.

Concurrency: every operation is ONE transaction. Writes start with ``BEGIN IMMEDIATE`` (the
write lock is taken up front, so a transaction never fails half-way with "database is
locked"); pure reads use deferred transactions. Several processes may share one file:
instance locks are rows of ``instance_locks`` whose ``locked_until`` is compared with the
injected clock, so an expired lock is taken over by whoever fetches next, and the old
holder's ack fails with ``LockLostError``. File databases use one connection per thread (WAL,
``synchronous=NORMAL``, ``busy_timeout`` 60 s, foreign keys on); an in-process write lock
keeps this process's threads from busy-waiting on each other. ``in_memory()`` databases use
one connection guarded by a lock.

Must not: read a wall clock (time comes only from ``self.clock.now_ms()``), use randomness or
uuids (lock tokens are ``sql-{open id}-{counter}``, where the open id is allocated by the
database itself, so two openers of one file never collide and a fresh database yields the
same tokens on every run), order by anything but stored columns, or assign event ids. This is
the only module of the package that imports ``sqlite3``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import os
import pathlib
import sqlite3
import _thread
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ..core.events import (
    ActivityCompletedMsg, ActivityExecute, ActivityFailedMsg, ContinueAsNew, CustomStatusUpdated, HistoryEvent,
    KeyValueCleared, KeyValuesCleared, KeyValueSet, QueueMessage, StartOrchestration, TimerFiredMsg, WorkItem,
    dumps, loads,
)
from ..core.logsink import emit
from ..errors import ProviderError, SerializationError
from ._shared import ENDED_STATUSES, ORPHAN_PARK_SHIFT, ORPHAN_RETENTION_MS, ORPHAN_SWEEP_INTERVAL_MS, PARKED_BELOW
from ._shared import HistoryView
from ._shared import imported_executions as _imported_executions
from ._shared import check_instance_arg
from ._shared import forget_if_filled_below
from ._shared import lock_lost as _lock_lost
from ._shared import parse_semver as _parse_semver
from .base import (
    Clock, ExecutionMetadata, KvEntry, OrchestrationItem, ScheduledActivityIdentifier, SessionConfig, TagFilter,
    WorkItemLease,
)
from . import sqlite_schema
from .sqlite_admin import TERMINAL_STATUSES, SqliteAdminMixin
from .sqlite_schema import SCHEMA_VERSION

__all__ = ["SqliteProvider", "SCHEMA_VERSION"]

_log = logging.getLogger(__name__)
_BUSY_TIMEOUT_MS = 60_000
_MIN_SQLITE = (3, 25, 0)  # upsert (3.24) and window functions (3.25)
_HISTORY_CACHE_SIZE = 1024  # instances whose decoded current history is kept (LRU)
# Short histories (decoding them again is cheap) are cached only while few are: thousands of
# concurrent small instances would otherwise keep every decoded event alive.
_FEW_HISTORIES = 16
_LONG_HISTORY = 32
_CORRUPT_PREFIX = "#corrupt#"  # _corrupt_history marker: never valid JSON
_INSERT_EVENT = ("INSERT INTO history (instance_id, execution_id, event_id, event_type, event_data, created_at) "
                 "VALUES (?, ?, ?, ?, ?, ?)")
_HAS_RETURNING = sqlite3.sqlite_version_info >= (3, 35, 0)  # DELETE ... RETURNING
_FEW_EVENTS = 16
# n -> one INSERT of n history rows (acks of at most _FEW_EVENTS events)
_INSERT_EVENTS_N = {n: _INSERT_EVENT.split(" VALUES ")[0] + " VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * n)
                    for n in range(2, _FEW_EVENTS + 1)}
_KNOWN_PINS_MAX = 4096  # acks with at most this many events detect duplicate ids while inserting


def _serialize_ack(delta: list, workers: list, orchs: list) -> tuple[list[str], list[str], list[str]] | None:
    """JSON of an ack's rows, computed before the write transaction. None when anything does
    not serialize: the ack then serializes in the transaction and reports it in its own order."""
    try:
        return [dumps(e) for e in delta], [dumps(w) for w in workers], [dumps(o) for o in orchs]
    except Exception:  # noqa: BLE001 - reported by the ack itself
        return None


#: Most writes one group commit runs in one transaction (see SqliteProvider._group_write).
_GROUP_MAX = 32
#: File databases: commits of this process between two background checkpoints (_Checkpointer).
_CHECKPOINT_EVERY = 64
#: ... and the WAL size (pages) at which a commit checkpoints in the writer's own thread, as
#: SQLite does by default at 1,000 pages: a backstop in case the background thread falls behind.
_CHECKPOINT_BACKSTOP_PAGES = 8192
_gc_local = threading.local()  # per thread: the lock a waiting writer sleeps on (_thread_wake_lock)


class _Checkpointer:
    """Copies a file database's WAL back into the database in a background thread.

    SQLite's default checkpoints in the thread of whichever commit pushes the WAL over 1,000
    pages, inside that commit's call: the copy ends with two fsyncs (~5 ms each on the build
    VM), and here the committing thread is the group-commit leader, so every writer of the
    process waited for them (W6: 27 checkpoints, ~0.14 s of a 0.55 s run). Instead the writer
    counts its commits (:meth:`committed`, called under the write guard) and every
    ``_CHECKPOINT_EVERY`` commits a short-lived thread runs ``PRAGMA wal_checkpoint(PASSIVE)`` on
    a connection of its own: a passive checkpoint takes no lock that writers or readers wait
    for, so commits go on while it copies and syncs. Durability is SQLite's WAL with
    ``synchronous=NORMAL`` either way: a commit is durable once the WAL is synced, which the
    checkpoint does before it copies. The writer's connection keeps an automatic checkpoint at
    ``_CHECKPOINT_BACKSTOP_PAGES`` in case the thread falls behind or fails (a failure is logged
    once and no thread is started again; the backstop then does the work, as before).

    The thread exists only while a checkpoint is due (it runs the ones asked for meanwhile,
    then ends), so an idle provider owns no thread and a stopped runtime leaves none behind.
    ``close()`` waits for a running checkpoint and closes the connection; a provider collected
    unclosed does the same. Nothing here refers to the provider, and checkpoints are triggered
    by commit counts, never by a clock.
    """

    __slots__ = ("_path", "_lock", "_conn", "_thread", "_due", "_stopped", "_failed", "_commits", "checkpoints",
                 "__weakref__")

    def __init__(self, path: Any) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None  # used by one checkpoint thread at a time
        self._thread: threading.Thread | None = None  # the running checkpoint thread, if any
        self._due = False  # another checkpoint was asked for while one ran
        self._stopped = False
        self._failed = False
        self._commits = 0
        self.checkpoints = 0  # passive checkpoints run so far (diagnostics and tests)

    def committed(self) -> None:
        """One commit of this process's writer (called under the provider's write guard, after
        the COMMIT: it never raises, so a committed write is never reported as failed)."""
        self._commits += 1
        if self._commits < _CHECKPOINT_EVERY:
            return
        self._commits = 0
        with self._lock:  # started under the lock: stop() never sees a thread that has not started
            if self._stopped or self._failed:
                return
            if self._thread is not None:
                self._due = True
                return
            thread = threading.Thread(target=self._run, name="duroxide-sqlite-checkpoint", daemon=True)
            try:
                thread.start()
            except Exception as exc:  # noqa: BLE001 - e.g. "can't start new thread": never fail the commit
                self._failed = True
                _log.warning("SQLite background checkpoint of %r could not start (%r); commits checkpoint the "
                             "WAL themselves from now on", self._path, exc)
                return
            self._thread = thread

    def stop(self) -> None:
        """Wait for a checkpoint in progress, start none again, close the connection (idempotent)."""
        with self._lock:
            self._stopped = True
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _run(self) -> None:
        try:
            while True:
                conn = self._conn
                if conn is None:
                    conn = self._conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
                    conn.execute("PRAGMA synchronous = NORMAL")  # the checkpoint syncs as the writer would
                # PASSIVE: copies what it can without waiting for any reader or writer (and
                # without the busy handler); what a reader still needs stays for the next one.
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                self.checkpoints += 1
                with self._lock:
                    if not self._due or self._stopped:
                        self._thread = None
                        return
                    self._due = False
        except Exception as exc:  # noqa: BLE001 - the writer's automatic checkpoint takes over
            with self._lock:
                self._failed, self._thread = True, None
                if self._stopped:  # closed under it (an unclosed provider collected meanwhile): not a failure
                    return
            _log.warning("SQLite background checkpoint of %r failed (%r); commits checkpoint the WAL "
                         "themselves from now on", self._path, exc)


class _RerunWithoutFetch(Exception):
    """Raised by an ack-and-fetch write whose fetch part failed: the group rolls back and runs
    that write again (with its fetch turned off) together with the others; nothing is reported."""


class _Write:
    """One write waiting for (or run by) a group commit."""

    __slots__ = ("op", "fn", "result", "error", "done", "wake")

    def __init__(self, op: str, fn: Callable[[sqlite3.Connection], Any], wake: Any) -> None:
        self.op = op
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = False
        self.wake = wake  # the writing thread's wake-up lock (see SqliteProvider._group_write)


def _thread_wake_lock() -> Any:
    """This thread's wake-up lock for group commits: a raw lock held while nobody has woken the
    thread. Waiting is acquiring it; waking is releasing it (:func:`_wake`). A raw lock instead of
    a ``threading.Event``: the Event's Python-level condition machinery cost ~10 us of CPU per
    wait and set, for every write that joins a group."""
    lock = getattr(_gc_local, "wake", None)
    if lock is None:
        lock = _gc_local.wake = _thread.allocate_lock()
        lock.acquire()
    return lock


def _wake(lock: Any) -> None:
    """Wake the thread that owns ``lock`` (called under ``_gc_lock``). A wake-up it has not
    consumed yet (possible only after an interrupted wait) is not doubled: the thread re-checks
    its write's state after every wake-up anyway."""
    if lock.locked():
        lock.release()


_UNKNOWN: Any = object()  # "not read yet" (``created_seq`` may legitimately be None)
# The instance row and its current execution in one lookup (fetch: pin, metadata, continue-as-new).
_INSTANCE_INFO = ("SELECT i.orchestration_name, i.orchestration_version, i.current_execution_id, i.created_seq, "
                  "e.status, e.duroxide_version_major, e.duroxide_version_minor, e.duroxide_version_patch, "
                  "EXISTS (SELECT 1 FROM kv_store k WHERE k.instance_id = i.instance_id), "
                  "EXISTS (SELECT 1 FROM kv_delta d WHERE d.instance_id = i.instance_id) "
                  "FROM instances i LEFT JOIN executions e ON e.instance_id = i.instance_id "
                  "AND e.execution_id = i.current_execution_id WHERE i.instance_id = ?")


def _upsert_execution_sql(with_pin: bool, with_status: bool) -> str:
    cols, sets = ["instance_id", "execution_id", "status", "started_at"], []
    if with_pin:
        cols += ["duroxide_version_major", "duroxide_version_minor", "duroxide_version_patch"]
        sets += [f"{c} = excluded.{c}" for c in cols[-3:]]
    if with_status:
        cols += ["output", "completed_at"]
        sets += [f"{c} = excluded.{c}" for c in ("status", "output", "completed_at")]
    return (f"INSERT INTO executions ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
            f"ON CONFLICT (instance_id, execution_id) DO UPDATE SET {', '.join(sets)}")


# (pin given?, status given?) -> one statement that creates the execution row or updates it.
_UPSERT_EXECUTION = {(p, st): _upsert_execution_sql(p, st) for p in (True, False) for st in (True, False) if p or st}


# A work item's lock token ends with the id of the row it locks, so acks, renewals and
# abandons find the row by its primary key (the token column has no index: schema version 3).
# A token without that suffix (not one of ours) matches no row. The comparison on lock_token
# still decides: a stolen lock's old token names the right row but not its current token.
_ROW_MARK = "-w"
_WORK_BY_TOKEN = "id = ? AND lock_token = ?"


def _work_token_params(token: str) -> tuple[int, str]:
    head, mark, rid = token.rpartition(_ROW_MARK) if isinstance(token, str) else ("", "", "")
    if not mark or not head or not rid.isdigit() or not rid.isascii() or len(rid) > 18:
        return -1, ""  # no row has id -1
    return int(rid), token


# Visible rows oldest first (index on visible_at, id) of instances without a live lock. The
# range starts above the parked orphans (see _shared.PARKED_BELOW), so they are never walked.
_CANDIDATES = (f"SELECT q.instance_id FROM orchestrator_queue q WHERE q.visible_at >= {PARKED_BELOW} "
               "AND q.visible_at <= ? AND NOT EXISTS "
               "(SELECT 1 FROM instance_locks l WHERE l.instance_id = q.instance_id AND l.locked_until > ?) "
               "ORDER BY q.visible_at, q.id")
# Park an orphan's visible, not yet parked rows (SPEC §3.12; see _shared.ORPHAN_PARK_SHIFT).
_PARK_ORPHAN = (f"UPDATE orchestrator_queue SET visible_at = visible_at - {ORPHAN_PARK_SHIFT} "
                f"WHERE instance_id = ? AND visible_at >= {PARKED_BELOW} AND visible_at <= ?")
# The instance has no row, no history and no start / ContinueAsNew item queued (``q`` is a row of it).
_STILL_ORPHAN = ("NOT EXISTS (SELECT 1 FROM instances i WHERE i.instance_id = q.instance_id) "
                 "AND NOT EXISTS (SELECT 1 FROM executions e WHERE e.instance_id = q.instance_id) "
                 "AND NOT EXISTS (SELECT 1 FROM orchestrator_queue s WHERE s.instance_id = q.instance_id "
                 "AND json_extract(s.work_item, '$.kind') IN ('StartOrchestration', 'ContinueAsNew'))")
# Parked rows whose original visible_at is at least the retention old (bound: :b) ...
_EXPIRE_ORPHANS = ("DELETE FROM orchestrator_queue WHERE id IN (SELECT q.id FROM orchestrator_queue q "
                   f"WHERE q.visible_at <= :b AND {_STILL_ORPHAN})")
# ... and every parked row of an instance that exists by now (delivered normally from here on).
_UNPARK_EXISTING = (f"UPDATE orchestrator_queue SET visible_at = visible_at + {ORPHAN_PARK_SHIFT} "
                    f"WHERE visible_at < {PARKED_BELOW} AND instance_id IN (SELECT q.instance_id FROM "
                    "orchestrator_queue q WHERE q.visible_at <= :b AND (EXISTS (SELECT 1 FROM instances i "
                    "WHERE i.instance_id = q.instance_id) OR EXISTS (SELECT 1 FROM executions e "
                    "WHERE e.instance_id = q.instance_id)))")
# Tables and views of the file, SQLite's own (sqlite_sequence, sqlite_stat1, ...) left out.
_USER_TABLES = ("SELECT name FROM sqlite_master WHERE type IN ('table', 'view') "
                "AND name NOT LIKE 'sqlite^_%' ESCAPE '^' ORDER BY name")
# Tables every duroxide_sim database has from schema version 1 on (sqlite_schema.MIGRATIONS).
_OUR_MARKERS = frozenset({"schema_version", "provider_meta"})


def _map_error(exc: sqlite3.Error, op: str, where: str) -> ProviderError:
    """sqlite3 error -> ProviderError with ``retryable`` per SPEC §15.1: busy/locked and
    unknown failures are retryable; constraint violations are permanent. Read-only, not-a-
    database, corruption and misuse are permanent too (retrying cannot fix them)."""
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    low = text.lower()
    # Constraint first: its messages name columns such as "locked_until".
    if isinstance(exc, sqlite3.IntegrityError) or name.startswith("SQLITE_CONSTRAINT"):
        return ProviderError(f"{op}: constraint violated: {text}", operation=op, retryable=False)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or " is locked" in low or "busy" in low:
        return ProviderError(f"{op}: database is busy ({text}); retry", operation=op, retryable=True)
    if name.startswith("SQLITE_READONLY") or "readonly" in low or "read-only" in low:
        return ProviderError(
            f"{op}: SQLite database {where} is read-only ({text}); SqliteProvider needs write access to the "
            "file and to its directory (for the WAL and shared-memory files)", operation=op, retryable=False)
    if name == "SQLITE_NOTADB" or "not a database" in low:
        return ProviderError(f"{op}: {where} is not a SQLite database ({text}); open a duroxide_sim database "
                             "file or a new path", operation=op, retryable=False)
    if name.startswith("SQLITE_CANTOPEN") or "unable to open database file" in low:
        return ProviderError(
            f"{op}: cannot open SQLite database {where} ({text}): check that the directory exists, that the "
            "path is a file (not a directory) and that it is writable", operation=op, retryable=False)
    if op == "open" and (name.startswith("SQLITE_IOERR") or "disk i/o error" in low):
        # At open an I/O error does not pass by itself: typically the -wal / -shm files of a
        # database another process still has open were removed (tests/providers/
        # test_sqlite_processes.py), or the file system refuses the shared-memory file.
        return ProviderError(
            f"{op}: disk I/O error opening SQLite database {where} ({text}): if another process has it open, "
            "its -wal/-shm files may have been deleted (stop that process first; its commits are in its -wal "
            "file); check the file system too", operation=op, retryable=False)
    if name.startswith("SQLITE_CORRUPT") or "malformed" in low:
        return ProviderError(f"{op}: SQLite database {where} is corrupt ({text})", operation=op, retryable=False)
    if isinstance(exc, sqlite3.ProgrammingError):
        return ProviderError(f"{op}: {text}", operation=op, retryable=False)
    if "no such table" in low or "no such column" in low:
        # Part of the schema is gone (dropped by hand after the open checked it): no retry helps.
        return ProviderError(f"{op}: SQLite database {where} is missing part of its schema ({text}); restore it "
                             "from a backup", operation=op, retryable=False)
    return ProviderError(f"{op}: SQLite error on {where}: {text}", operation=op, retryable=True)


def _mapped(exc: sqlite3.Error, op: str, where: str) -> ProviderError:
    err = _map_error(exc, op, where)
    err.__cause__ = exc
    return err



class _ReadGuard:
    """A file provider's read: marks the thread busy (see SqliteProvider.close) and, when the
    provider was closed meanwhile, closes the thread's own connection at the end."""

    __slots__ = ("_p",)

    def __init__(self, provider: "SqliteProvider") -> None:
        self._p = provider

    def __enter__(self) -> None:
        self._p._busy.add(threading.get_ident())

    def __exit__(self, *exc: object) -> None:
        p = self._p
        p._busy.discard(threading.get_ident())
        if p._closed:
            conn = getattr(p._local, "conn", None)
            if conn is not None:
                p._local.conn = None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

class SqliteProvider(SqliteAdminMixin):
    """Provider + ManagementProvider backed by SQLite. See the module docstring.

    Build with :meth:`open` (a file, created if missing) or :meth:`in_memory`; release with
    :meth:`close` or a ``with`` block.
    """

    def __init__(self, target: str, *, clock: Clock | None = None, memory: bool = False) -> None:
        self.clock: Clock | None = clock
        if not memory:
            target = self._resolve_path(target)
        self.path = target
        self._memory = memory
        self._where = ":memory:" if memory else repr(target)
        self._listeners: list[Callable[[str], None]] = []
        self._commit_listeners: list[Callable[[str], None]] = []
        self._final_listeners: list[Callable[[str], None]] = []
        # Reentrant: a Client's listener is removed by a weakref finalizer (runtime/realtime.py),
        # which the garbage collector may run in a thread that holds this lock already.
        self._listeners_lock = threading.RLock()
        self._tokens = itertools.count(1)
        self._closed = False
        self._local = threading.local()
        self._conns: list[tuple[weakref.ref, sqlite3.Connection]] = []
        self._conns_lock = threading.Lock()
        # In-memory: one connection, every operation under one lock. File: per-thread
        # connections; writers of this process queue on a lock instead of busy-waiting in SQLite.
        self._write_guard = threading.RLock()
        # Group commit (see _group_write): writes waiting for the writer, oldest first.
        self._gc_lock = threading.Lock()
        self._gc_queue: collections.deque[_Write] = collections.deque()
        self._hcache: OrderedDict[str, tuple[int, int, list[HistoryEvent]]] = OrderedDict()
        self._hcache_lock = threading.RLock()
        # lock token -> (execution id, pin, kv_delta rows?) as its fetch read them (writer only)
        self._known_pins: dict[str, tuple[int, tuple[int, int, int] | None, bool]] = {}
        # File: a read marks its thread busy, so close() never closes a connection that another
        # thread is using (closing one mid-statement crashed the process); that thread closes
        # its own when its read ends.
        self._busy: set[int] = set()  # thread idents reading now; membership only
        self._read_guard: Any = self._write_guard if memory else _ReadGuard(self)
        self._pid = os.getpid()
        self._orphan_sweep_at: int | None = None  # clock time of the next orphan expiry (writer only)
        self._checkpointer: _Checkpointer | None = None  # file databases: started once the schema is in place
        if sqlite3.sqlite_version_info < _MIN_SQLITE:
            raise ProviderError(f"SqliteProvider needs SQLite >= {'.'.join(map(str, _MIN_SQLITE))}, "
                                f"found {sqlite3.sqlite_version}", operation="open")
        if not memory:
            self._refuse_read_only(target)
        try:
            conn = self._connect(first=True)
            # The writer: every write transaction of this process runs on this one connection
            # under ``_write_guard`` (in-memory: every operation). Writes are serialized anyway,
            # and one connection keeps its page cache across them; with one connection per
            # thread each commit invalidated every other connection's cache, so pages were
            # re-read from the WAL on every operation. Reads use per-thread connections.
            self._shared = conn
            self._open_id = self._migrate(conn)
            if not memory:
                conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_BACKSTOP_PAGES}")
                self._checkpointer = _Checkpointer(target)
                weakref.finalize(self, self._checkpointer.stop)  # an unclosed provider's connection
        except BaseException:
            self.close()
            raise

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, clock: Clock | None = None) -> "SqliteProvider":
        """Open (creating if missing) the database file at ``path`` and migrate it.
        ``":memory:"`` gives the same as :meth:`in_memory`.

        A relative ``path`` is resolved against the working directory once, here: connections
        opened later (one per thread) use the same file even after ``os.chdir``. An empty path
        is refused. So is an existing database that is not a duroxide_sim one (it has tables,
        none of them ours): it is left untouched, see :meth:`_refuse_foreign`."""
        target = os.fspath(path)
        if target == ":memory:":  # per-thread connections would each see a different database
            return cls.in_memory(clock=clock)
        return cls(target, clock=clock)

    @classmethod
    def in_memory(cls, *, clock: Clock | None = None) -> "SqliteProvider":
        """A private in-memory database (gone when closed)."""
        return cls(":memory:", clock=clock, memory=True)

    @classmethod
    def snapshot_of(cls, path: str | os.PathLike[str], *, clock: Clock | None = None) -> "SqliteProvider":
        """An in-memory copy of the database file at ``path``, read without writing to it: the
        file may be read-only (a CI fixture, a read-only mount) and is never migrated or
        touched (an older schema is migrated in the copy). For read-only checks such as
        ``duroxide-sim replay``; the copy lives in memory until closed."""
        target = os.fspath(path)
        if not os.path.isfile(target):
            raise ProviderError(f"open: no SQLite database file at {target!r}", operation="open", retryable=False)
        where = repr(target)
        provider = cls.in_memory(clock=clock)
        try:
            try:
                cls._copy_into(pathlib.Path(target), provider._shared)
            except sqlite3.Error as exc:
                raise _map_error(exc, "open", where) from exc
            provider._where = where
            try:
                provider._refuse_foreign(provider._shared)
            except sqlite3.Error as exc:
                raise _map_error(exc, "open", where) from exc
            provider._where = ":memory:"
            provider._open_id = provider._migrate(provider._shared)
        except BaseException:
            provider.close()
            raise
        return provider

    @staticmethod
    def _copy_into(path: pathlib.Path, target: sqlite3.Connection) -> None:
        """Copy the database at ``path`` into ``target`` reading only. A WAL database's reader
        needs its ``-shm`` file beside it: in a directory it may not write (a read-only mount)
        the file and its ``-wal`` are copied to a temporary directory first and read there, so
        the committed transactions still in the WAL are not missed."""
        import shutil
        import tempfile

        def read(file: pathlib.Path) -> None:
            # A database closed cleanly (no -wal beside it: every writer has gone, the last
            # checkpointed it) is read as immutable, so SQLite creates no -wal/-shm next to a
            # file the command promises not to change. With a -wal (a live writer, or one that
            # crashed) it is read through the WAL, as it must be to see the last commits.
            wal_beside = file.with_name(file.name + "-wal").exists()
            mode = "mode=ro" if wal_beside else "mode=ro&immutable=1"
            source = sqlite3.connect(f"{file.absolute().as_uri()}?{mode}", uri=True)
            try:
                source.backup(target)
            finally:
                source.close()

        try:
            read(path)
        except sqlite3.OperationalError:
            if os.access(path.parent, os.W_OK):
                raise
            with tempfile.TemporaryDirectory(prefix="duroxide-snapshot-") as tmp:
                copy = pathlib.Path(tmp) / "db"
                shutil.copyfile(path, copy)
                wal = path.with_name(path.name + "-wal")
                if wal.is_file():
                    shutil.copyfile(wal, copy.with_name("db-wal"))
                read(copy)

    # --- connections and transactions ----------------------------------------------------------

    @staticmethod
    def _resolve_path(target: Any) -> Any:
        """``target`` made absolute (not normalized: ``..`` after a symlink keeps SQLite's
        meaning); an empty or blank path is refused at once. (SQLite would open a private
        temporary database per connection for ``""``, which never switches to WAL: the open
        used to retry for the whole busy timeout and then fail with an unrelated message.)"""
        if not (target.strip() if isinstance(target, (str, bytes)) else True):
            raise ProviderError(
                f"open: the SQLite database path is empty ({target!r}): pass the path of a database file "
                "(a new path creates one), or \":memory:\" for a private in-memory database",
                operation="open", retryable=False)
        nul = "\x00" if isinstance(target, str) else b"\x00"
        if isinstance(target, (str, bytes)) and nul in target:
            raise ProviderError(f"open: the SQLite database path {target!r} contains a NUL character, which no file "
                                "name can hold", operation="open", retryable=False)
        if isinstance(target, str) and not target.isascii():
            try:
                target.encode("utf-8")
            except UnicodeEncodeError:  # (os.fsdecode's stand-ins for undecodable bytes)
                raise ProviderError(f"open: the SQLite database path {target!r} is not valid Unicode (it holds a lone "
                                    "surrogate): SQLite takes UTF-8 file names", operation="open",
                                    retryable=False) from None
        if isinstance(target, (str, bytes)) and not os.path.isabs(target):
            return os.path.join(os.getcwd() if isinstance(target, str) else os.getcwdb(), target)
        return target

    @staticmethod
    def _refuse_read_only(path: str) -> None:
        # Checked up front (including the mode bits, which root would otherwise ignore) so the
        # error names the cause instead of failing on the first write.
        if os.path.exists(path) and (not os.access(path, os.W_OK) or not os.stat(path).st_mode & 0o222):
            raise ProviderError(
                f"SQLite database {path!r} is read-only: SqliteProvider needs write access to the file and "
                "to its directory (for the WAL and shared-memory files)", operation="open", retryable=False)

    def _connect(self, first: bool = False) -> sqlite3.Connection:
        """A new connection with this provider's settings. ``first``: the open's own connection,
        which checks (reading only) that the file is empty or a duroxide_sim database before
        anything changes it, the WAL switch included."""
        try:
            # check_same_thread=False only so close() may close other threads' connections;
            # each connection is used by the thread that made it (or under the lock).
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=_BUSY_TIMEOUT_MS / 1000,
                                   check_same_thread=False)
        except sqlite3.Error as exc:
            raise _map_error(exc, "open", self._where) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA foreign_keys = ON")
            if self._memory:
                conn.execute("PRAGMA journal_mode = MEMORY")
                conn.execute("PRAGMA synchronous = OFF")
            else:
                if first:  # first read of the file: "not a database" here
                    self._retry_busy(lambda: self._refuse_foreign(conn))
                self._journal_wal(conn)
                conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, no fsync per commit
                conn.execute("PRAGMA cache_size = -32768")  # 32 MiB page cache per connection
                conn.execute("PRAGMA temp_store = MEMORY")
        except sqlite3.Error as exc:
            conn.close()
            raise _map_error(exc, "open", self._where) from exc
        except BaseException:  # a refused file (ProviderError), an interrupt
            conn.close()
            raise
        return conn

    def _refuse_foreign(self, conn: sqlite3.Connection) -> None:
        """Refuse (permanently, before anything is written) a database that is not ours.

        Ours: no tables at all (a new or empty file; the schema is created) or the tables every
        duroxide_sim database has (``schema_version`` and ``provider_meta``: any schema version,
        older ones are migrated, newer ones refused by :meth:`_migrate`). Anything else is
        another application's database, also when none of its tables is named like ours:
        adding our tables to it would mix two applications' data in one file (and a name clash
        such as ``instances`` failed the migration half-way, after the WAL switch had already
        rewritten the file header). The file is only read here."""
        names = [row[0] for row in conn.execute(_USER_TABLES)]
        if not names or _OUR_MARKERS <= set(names):
            return
        ours = [n for n in names if n in sqlite_schema.TABLES]
        if len(ours) >= 3:  # most of our schema, without its markers: ours, damaged
            raise ProviderError(
                f"open: {self._where} is a damaged duroxide_sim database: it has duroxide_sim tables "
                f"({', '.join(ours[:6])}{', ...' if len(ours) > 6 else ''}) but no "
                f"{' / '.join(sorted(_OUR_MARKERS - set(names)))} table; restore it from a backup (the file was "
                "left unchanged)", operation="open", retryable=False)
        shown = ", ".join(names[:8]) + (f", ... ({len(names)} in all)" if len(names) > 8 else "")
        raise ProviderError(
            f"open: {self._where} is not a duroxide_sim database: it holds other tables ({shown}) and no "
            "duroxide_sim schema (no schema_version / provider_meta tables). SqliteProvider does not add its "
            "tables to another application's database; the file was left unchanged. Open a new path or an "
            "empty database file instead", operation="open", retryable=False)

    @staticmethod
    def _retry_busy(step: Callable[[], None]) -> None:
        """Run ``step`` of an open, waiting out another process that is creating or converting
        the same new file: while it holds a lock on a file not yet in WAL mode, SQLite answers
        SQLITE_BUSY at once to ``PRAGMA journal_mode`` (the busy timeout does not cover this
        pragma), so two services starting together on a new path failed to open (found by
        tests/providers/test_sqlite_processes.py). Retried with back-off (1 ms doubling to
        50 ms) up to the busy timeout, also for a retryable ProviderError; the waits are
        counted, not clocked (providers read no clock)."""
        waited, delay = 0.0, 0.001
        while True:
            problem: Exception
            try:
                step()
                return
            except ProviderError as exc:
                if not exc.retryable:
                    raise
                problem = exc
            except sqlite3.OperationalError as exc:
                code = getattr(exc, "sqlite_errorcode", None)
                busy = (code & 0xFF) == 5 if code is not None else "locked" in str(exc) or "busy" in str(exc)
                if not busy:  # SQLITE_BUSY and its extended codes only
                    raise
                problem = exc
            if waited >= _BUSY_TIMEOUT_MS / 1000:
                raise problem
            threading.Event().wait(delay)
            waited += delay
            delay = min(delay * 2, 0.05)

    def _journal_wal(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA journal_mode = WAL``, retried while another opener holds the file (see
        :meth:`_retry_busy`: the busy timeout does not cover this pragma)."""

        def switch() -> None:
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ProviderError(f"open: SQLite database {self.path!r} stayed in journal mode {mode!r} "
                                    "instead of WAL", operation="open", retryable=True)

        self._retry_busy(switch)

    def _register(self, conn: sqlite3.Connection) -> None:
        with self._conns_lock:
            alive = []
            for ref, other in self._conns:  # close connections of threads that have ended
                thread = ref()
                if thread is not None and thread.is_alive():
                    alive.append((ref, other))
                else:
                    other.close()
            alive.append((weakref.ref(threading.current_thread()), conn))
            self._conns = alive
        self._local.conn = conn

    def _forked(self, op: str) -> ProviderError:
        return ProviderError(f"{op}: this SqliteProvider ({self._where}) was opened in process {self._pid}, not in this "
                             "forked child: its connections and locks belong to the parent; open a new SqliteProvider "
                             "(and Client) in the child", operation=op, retryable=False)

    def _conn(self, op: str, write: bool = False) -> sqlite3.Connection:
        if self._closed:
            raise ProviderError(f"{op}: SqliteProvider {self._where} is closed", operation=op)
        if os.getpid() != self._pid:
            raise self._forked(op)
        if self._memory or write:
            return self._shared  # callers hold _write_guard
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._register(conn)
        return conn

    def _migrate(self, conn: sqlite3.Connection) -> int:
        """Bring the schema to the latest version in one transaction; return this open's id."""
        latest = sqlite_schema.SCHEMA_VERSION  # read at call time: tests plant extra migrations
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY)")
                current = conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_version").fetchone()[0]
                if current == 0 and conn.execute(
                        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'provider_meta'").fetchone():
                    # (migration 1 would fail on "table provider_meta already exists")
                    raise ProviderError(
                        f"SQLite database {self._where} is a damaged duroxide_sim database: its schema_version "
                        "table is empty, so its schema version is unknown; restore it from a backup (the file was "
                        "left unchanged)", operation="open", retryable=False)
                if current > latest:
                    raise ProviderError(
                        f"SQLite database {self._where} has schema version {current}, but this duroxide_sim "
                        f"supports schema version {latest} at most; upgrade duroxide_sim to open it",
                        operation="open", retryable=False, found_version=current, supported_version=latest)
                for version, statements in sqlite_schema.MIGRATIONS:
                    if version > current:
                        for statement in statements:
                            conn.execute(statement)
                        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
                have = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                missing = [t for t in sqlite_schema.TABLES if t not in have]
                if missing and latest == sqlite_schema.TABLES_VERSION:
                    raise ProviderError(
                        f"SQLite database {self._where} is a damaged duroxide_sim database: table(s) "
                        f"{', '.join(missing)} missing (schema version {max(current, latest)}); restore it from a "
                        "backup (the file was left unchanged)", operation="open", retryable=False,
                        missing_tables=missing)
                conn.execute("UPDATE provider_meta SET value = value + 1 WHERE key = 'opens'")
                open_id = conn.execute("SELECT value FROM provider_meta WHERE key = 'opens'").fetchone()[0]
                conn.execute("COMMIT")
                return int(open_id)
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise _map_error(exc, "open", self._where) from exc

    @contextlib.contextmanager
    def _tx(self, op: str, *, write: bool = True) -> Iterator[sqlite3.Connection]:
        """One transaction: BEGIN IMMEDIATE for writes, deferred for reads; COMMIT on success,
        ROLLBACK on any error (sqlite3 errors re-raised as ProviderError)."""
        if write and os.getpid() != self._pid:  # (before the write guard: a fork may have copied it held)
            raise self._forked(op)
        with self._write_guard if write else self._read_guard:
            conn = self._conn(op, write)
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            except sqlite3.Error as exc:
                raise _map_error(exc, op, self._where) from exc
            try:
                yield conn
                conn.execute("COMMIT")
                if write and self._checkpointer is not None:
                    self._checkpointer.committed()
            except BaseException as exc:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise _map_error(exc, op, self._where) from exc
                raise

    def _group_write(self, op: str, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run ``fn(db)`` in a write transaction and return its result (errors as :meth:`_tx`).

        Group commit: writes of several threads that queue up while another write holds the
        writer are run by ONE thread (the leader) in ONE transaction and committed together
        (one BEGIN and one COMMIT, one WAL append, for the group). Each write stays all or
        nothing: a write that fails reports its error alone and leaves nothing behind (the
        transaction is rolled back and the group's other writes run again without it, see
        :meth:`_run_group`); if the COMMIT fails, every write of the group reports that error
        and nothing of the group is stored. Lock checks are unchanged: each write runs its own
        checks, in queue order, against everything committed or written before it. A write
        alone runs exactly as in :meth:`_tx`. Callers get their result only after the commit,
        so nothing uncommitted is ever handed out."""
        wake = _thread_wake_lock()
        req = _Write(op, fn, wake)
        queue = self._gc_queue
        with self._gc_lock:
            queue.append(req)
            lead = queue[0] is req
        interrupted: BaseException | None = None
        while not lead:
            try:
                wake.acquire()  # until the leader reports this write done, or makes it the next leader
            except BaseException as exc:  # Ctrl-C (or a signal handler's exception) while waiting
                # The write is queued: leaving now would orphan it at the head of the queue, where
                # it would be made leader with nobody to lead, and every later write of the process
                # would wait forever. Wait it out (normally milliseconds), then re-raise.
                interrupted = interrupted or exc
            with self._gc_lock:
                if req.done:
                    break
                lead = queue[0] is req
        if lead:
            with self._gc_lock:
                batch = [queue[i] for i in range(min(len(queue), _GROUP_MAX))]
            try:
                self._run_group(batch)
            finally:
                with self._gc_lock:
                    for done in batch:
                        queue.popleft()
                        done.done = True
                        if done is not req:
                            _wake(done.wake)
                    if queue:
                        _wake(queue[0].wake)  # the next leader
        if interrupted is not None:
            raise interrupted
        if req.error is not None:
            raise req.error
        return req.result

    def _run_group(self, batch: list[_Write]) -> None:
        """The leader's part of :meth:`_group_write`: one transaction for ``batch``.

        The writes run one after the other without savepoints (a savepoint per write costs two
        statements and keeps a journal of every page it touches). When one raises, the whole
        transaction is rolled back, that write reports its error, and the others run again
        from the start in a new transaction: a write that has not committed has reported
        nothing, so running it again later is the same as running it alone later."""
        pending = batch
        with self._write_guard:
            while pending:
                failed: _Write | None = None
                ok: list[_Write] = []
                try:
                    conn = self._conn(pending[0].op, True)
                    conn.execute("BEGIN IMMEDIATE")
                    rerun = False
                    for req in pending:
                        try:
                            req.result = req.fn(conn)
                        except _RerunWithoutFetch:
                            rerun = True
                            break
                        except KeyboardInterrupt:
                            raise  # Ctrl-C in the leader's thread: the whole group is lost, reported to all
                        except BaseException as exc:  # noqa: BLE001 - reported to the write's own caller
                            req.error = _mapped(exc, req.op, self._where) if isinstance(exc, sqlite3.Error) else exc
                            failed = req
                            break
                        ok.append(req)
                    if failed is None and not rerun:
                        conn.execute("COMMIT")
                        if self._checkpointer is not None:
                            self._checkpointer.committed()
                        return
                except BaseException as exc:  # BEGIN or COMMIT failed, or interrupted
                    self._rollback_group(ok)
                    self._group_lost([req for req in pending if req.error is None], exc)
                    if not isinstance(exc, Exception):
                        raise
                    return
                if rerun:  # the failed fetch may have decoded rolled-back history: clear the cache
                    self._rollback_group(ok or pending)
                    for req in pending:
                        req.result = None
                    continue
                self._rollback_group(ok)
                pending = [req for req in pending if req is not failed]
                for req in pending:
                    req.result = None

    def _rollback_group(self, ran: list[_Write]) -> None:
        with contextlib.suppress(sqlite3.Error):
            if self._shared.in_transaction:
                self._shared.execute("ROLLBACK")
        if ran:  # history decoded in the lost transaction may include rolled-back events
            with self._hcache_lock:
                self._hcache.clear()

    def _group_lost(self, lost: list[_Write], exc: BaseException) -> None:
        """``lost`` writes were rolled back with their group (or never ran): report ``exc``."""
        for req in lost:
            req.result = None
            req.error = (_mapped(exc, req.op, self._where) if isinstance(exc, sqlite3.Error) else
                         exc if isinstance(exc, ProviderError) else
                         ProviderError(f"{req.op}: group commit failed: {exc!r}", operation=req.op))

    def close(self) -> None:
        """Close every connection. In-memory data is gone afterwards; further calls fail. A
        thread reading right now keeps its connection until its read ends (it closes it then)."""
        self._closed = True
        checkpointer = getattr(self, "_checkpointer", None)
        if checkpointer is not None:
            checkpointer.stop()
        shared = getattr(self, "_shared", None)
        if shared is not None:
            with self._write_guard, contextlib.suppress(sqlite3.Error):
                shared.close()
        with self._conns_lock:
            for ref, conn in self._conns:
                thread = ref()
                if thread is not None and thread.ident in self._busy:
                    continue
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            self._conns = []

    def __enter__(self) -> "SqliteProvider":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------------------------

    def bind_clock(self, clock: Clock) -> None:
        """Use ``clock`` if none was injected at construction (never replaces one)."""
        with self._listeners_lock:
            if self.clock is None:
                self.clock = clock

    def add_wakeup_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback("orchestrator"|"worker")`` after commits that add work (in-process)."""
        with self._listeners_lock:
            self._listeners.append(callback)

    def add_commit_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(instance_id)`` after each orchestration ack of that instance commits
        (in-process), so a client waiting for one instance wakes for that instance only."""
        with self._listeners_lock:
            self._commit_listeners.append(callback)

    def remove_wakeup_listener(self, callback: Callable[[str], None]) -> None:
        """Undo :meth:`add_wakeup_listener` (a stopped runtime); unknown callbacks are ignored."""
        with self._listeners_lock:
            self._listeners = [c for c in self._listeners if c is not callback]

    def remove_commit_listener(self, callback: Callable[[str], None]) -> None:
        """Undo :meth:`add_commit_listener` (a client that is gone); unknown callbacks are ignored."""
        with self._listeners_lock:
            self._commit_listeners = [c for c in self._commit_listeners if c is not callback]

    def add_final_commit_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(instance_id)`` after an orchestration ack that ended that instance
        (Completed or Failed; a continue-as-new is not an end), in-process, so a client waiting
        for the end is not woken by every turn before it (it still is by commit listeners)."""
        with self._listeners_lock:
            self._final_listeners.append(callback)

    def remove_final_commit_listener(self, callback: Callable[[str], None]) -> None:
        """Undo :meth:`add_final_commit_listener`; unknown callbacks are ignored."""
        with self._listeners_lock:
            self._final_listeners = [c for c in self._final_listeners if c is not callback]

    def _now(self) -> int:
        if self.clock is None:
            raise ProviderError(
                "SqliteProvider has no clock: pass clock= to open()/in_memory() or call bind_clock() "
                "(the Runtime and Client do this) before using it", operation="clock")
        return int(self.clock.now_ms())

    def _notify(self, kinds: Sequence[str], instance: str | None = None, final: bool = False) -> None:
        # After COMMIT and outside every lock: a listener may call back into the provider, and a
        # failing listener must not make a committed operation look failed. ``final``: the
        # commit ended ``instance`` (its final listeners are called too).
        with self._listeners_lock:
            listeners = list(self._listeners)
            committers = list(self._commit_listeners) if instance is not None else []
            if final and instance is not None:
                committers += self._final_listeners
        for callback in committers:
            try:
                callback(instance)
            except Exception:  # pragma: no cover - defensive
                _log.exception("commit listener failed")
        for kind in dict.fromkeys(kinds):
            for callback in listeners:
                try:
                    callback(kind)
                except Exception:  # pragma: no cover - defensive
                    _log.exception("wakeup listener failed")

    def _new_token(self) -> str:
        return f"sql-{self._open_id}-{next(self._tokens)}"

    # --- (de)serialization ---------------------------------------------------------------------

    @staticmethod
    def _load_work(text: str, op: str) -> WorkItem:
        try:
            return loads(text, "work")
        except SerializationError as exc:
            raise ProviderError(f"{op}: unreadable queued work item: {exc}", operation=op) from exc

    def _load_events(self, db: sqlite3.Connection, instance: str, execution_id: int,
                     seq: Any = _UNKNOWN) -> Sequence[HistoryEvent]:
        """History of one execution in event_id order; SerializationError if a row is unreadable.

        Histories are append-only, so decoded events are kept (per instance, bounded LRU) and
        only rows newer than the last cached event id are read and decoded on later calls. A
        cache entry is keyed by the instance row's ``created_seq`` (pass ``seq`` when already
        read) and the execution id, so a deleted-and-recreated instance or a new execution never
        reuses stale events. New events are appended to the cached list and the caller gets a
        :class:`HistoryView` of the events it saw: O(1), not a copy of the whole history."""
        with self._hcache_lock:
            if seq is _UNKNOWN:
                row = db.execute("SELECT created_seq FROM instances WHERE instance_id = ?", (instance,)).fetchone()
                seq = row[0] if row is not None else None
            entry = self._hcache.get(instance)
            cached: list[HistoryEvent] | None = None
            if seq is not None and entry is not None and entry[0] == seq and entry[1] == execution_id:
                cached = entry[2]
            after = cached[-1].event_id if cached else 0
            fresh = self._decode_rows(db, instance, execution_id, after)
            if cached is None:
                events = fresh
            else:
                events = cached
                if fresh:
                    events.extend(fresh)  # views handed out earlier keep their own length
            if seq is not None and (len(events) >= _LONG_HISTORY or len(self._hcache) < _FEW_HISTORIES
                                    or instance in self._hcache):
                self._hcache[instance] = (seq, execution_id, events)
                self._hcache.move_to_end(instance)
                while len(self._hcache) > _HISTORY_CACHE_SIZE:
                    self._hcache.popitem(last=False)
            return HistoryView(events)

    def _retire_seq(self, db: sqlite3.Connection, instance: str) -> None:
        """Before deleting an instance: remember its ``created_seq`` so no later instance gets it
        again (a recreated id took the deleted one's number, and with it the deleted history a
        concurrent reader had put back in the cache)."""
        db.execute("INSERT INTO provider_meta (key, value) SELECT 'created_seq_retired', created_seq FROM instances "
                   "WHERE instance_id = ? AND created_seq IS NOT NULL "
                   "ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)", (instance,))

    def _forget_history(self, instance: str) -> None:
        """Drop the decoded history of an instance that reached a terminal state: it is read
        again only by management calls, which decode it from the rows."""
        with self._hcache_lock:
            self._hcache.pop(instance, None)

    @staticmethod
    def _decode_rows(db: sqlite3.Connection, instance: str, execution_id: int, after: int) -> list[HistoryEvent]:
        rows = db.execute("SELECT event_id, event_data FROM history WHERE instance_id = ? AND execution_id = ? "
                          "AND event_id > ? ORDER BY event_id", (instance, execution_id, after)).fetchall()
        out = []
        for event_id, text in rows:
            try:
                out.append(loads(text, "event"))
            except SerializationError as exc:
                raise SerializationError(f"event {event_id} of execution {execution_id} of instance "
                                         f"{instance!r}: {exc}") from exc
        return out

    def _read_events(self, db: sqlite3.Connection, instance: str, execution_id: int, op: str) -> list[HistoryEvent]:
        """History as this read transaction sees it. The decoded-history cache is shared with the
        writer, whose group commit may have appended events of a transaction that has not
        committed yet (or will roll back): a reader keeps only the ids its own snapshot holds."""
        try:
            events = list(self._load_events(db, instance, execution_id))
        except SerializationError as exc:
            raise ProviderError(f"{op}: history deserialization failed: {exc}", operation=op,
                                instance_id=instance) from exc
        if events:
            row = db.execute("SELECT MAX(event_id) FROM history WHERE instance_id = ? AND execution_id = ?",
                             (instance, execution_id)).fetchone()
            last = row[0] if row is not None and row[0] is not None else 0
            if events[-1].event_id > last:
                events = [e for e in events if e.event_id <= last]
        return events

    @staticmethod
    def _check_orch_item(item: Any, op: str) -> None:
        if not isinstance(item, WorkItem) or isinstance(item, ActivityExecute):
            raise ProviderError(f"not an orchestrator work item: {item!r}", operation=op)

    @staticmethod
    def _check_worker_item(item: Any, op: str) -> None:
        if not isinstance(item, ActivityExecute):
            raise ProviderError(f"the worker queue takes ActivityExecute only, got {item!r}", operation=op)

    # --- row helpers ---------------------------------------------------------------------------

    @staticmethod
    def _insert_orch(db: sqlite3.Connection, item: WorkItem, visible_at: int, now: int, text: str | None = None) -> None:
        db.execute("INSERT INTO orchestrator_queue (instance_id, work_item, visible_at, attempt_count, created_at) "
                   "VALUES (?, ?, ?, 0, ?)", (item.target_instance, text or dumps(item), visible_at, now))

    @staticmethod
    def _insert_work(db: sqlite3.Connection, item: ActivityExecute, now: int, text: str | None = None) -> None:
        db.execute("INSERT INTO worker_queue (work_item, visible_at, attempt_count, created_at, instance_id, "
                   "execution_id, activity_id, session_id, tag) VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?)",
                   (text or dumps(item), now, now, item.instance, item.execution_id, item.id, item.session_id,
                    item.tag))

    def _held_orch_lock(self, db: sqlite3.Connection, token: str, now: int, op: str) -> str:
        """Instance held by ``token`` with an unexpired lock, else LockLostError."""
        row = db.execute("SELECT instance_id, locked_until FROM instance_locks WHERE lock_token = ?",
                         (token,)).fetchone()
        if row is None:
            raise _lock_lost(op, token, f"Invalid lock token {token!r}: unknown, already released, taken over "
                             "after expiry, or its instance was deleted")
        if row[1] <= now:
            raise _lock_lost(op, token, f"Instance lock expired for instance {row[0]!r} (lock token {token!r}); "
                             "the turn must not commit", instance_id=row[0])
        return row[0]

    def _take_orch_lock(self, db: sqlite3.Connection, token: str, now: int, op: str) -> tuple[str, int]:
        """:meth:`_held_orch_lock` and the release of that lock in one statement (SQLite >=
        3.35: ``DELETE ... RETURNING``; older: the check, then the delete). On LockLostError
        the caller's transaction rolls back, so a held lock stays held. Returns the instance
        and the lock's fetch time (``locked_at``: the rows it tagged were visible by then)."""
        if not _HAS_RETURNING:
            instance = self._held_orch_lock(db, token, now, op)
            locked_at = db.execute("SELECT locked_at FROM instance_locks WHERE instance_id = ?", (instance,)).fetchone()[0]
            db.execute("DELETE FROM instance_locks WHERE instance_id = ?", (instance,))
            return instance, locked_at
        rows = db.execute("DELETE FROM instance_locks WHERE lock_token = ? RETURNING instance_id, locked_until, locked_at",
                          (token,)).fetchall()
        if not rows:
            raise _lock_lost(op, token, f"Invalid lock token {token!r}: unknown, already released, taken over "
                             "after expiry, or its instance was deleted")
        instance, locked_until, locked_at = rows[0]
        if locked_until <= now:
            raise _lock_lost(op, token, f"Instance lock expired for instance {instance!r} (lock token {token!r}); "
                             "the turn must not commit", instance_id=instance)
        return instance, locked_at

    # The rows a lock tagged were visible at its fetch (``locked_at``) and stay so while it is
    # held, so statements on them name ``visible_at <= locked_at``: idx_orch_instance then walks
    # only those, not rows queued for later (an instance with thousands of far-off timers paid
    # for all of them on every ack).
    _TAGGED = "instance_id = ? AND visible_at <= ? AND lock_token = ?"

    @classmethod
    def _release_orch_lock(cls, db: sqlite3.Connection, instance: str) -> None:
        row = db.execute("SELECT lock_token, locked_at FROM instance_locks WHERE instance_id = ?", (instance,)).fetchone()
        if row is not None:
            db.execute(f"UPDATE orchestrator_queue SET lock_token = NULL WHERE {cls._TAGGED}", (instance, row[1], row[0]))
            db.execute("DELETE FROM instance_locks WHERE instance_id = ?", (instance,))

    @staticmethod
    def _work_row_for(db: sqlite3.Connection, token: str, now: int, op: str, *, need_live: bool) -> tuple:
        row = db.execute("SELECT id, locked_until, session_id, attempt_count, visible_at FROM worker_queue "
                         f"WHERE {_WORK_BY_TOKEN}", _work_token_params(token)).fetchone()
        if row is None:
            raise _lock_lost(op, token, f"Work item lock token {token!r} is unknown: the activity was cancelled or "
                             "deleted, already acked/abandoned, or its lock was stolen after expiry")
        if need_live and row[1] is not None and row[1] <= now:
            raise _lock_lost(op, token, f"Work item lock expired (lock token {token!r})")
        return row

    @staticmethod
    def _bump_session(db: sqlite3.Connection, session_id: str | None, now: int) -> None:
        # Only while the session lock is live: never refresh a session another worker took over.
        if session_id is not None:
            db.execute("UPDATE sessions SET last_activity_at = ? WHERE session_id = ? AND locked_until > ?",
                       (now, session_id, now))

    @staticmethod
    def _current_execution_id(db: sqlite3.Connection, instance: str) -> int | None:
        """From the instance row, else the latest stored execution, else None."""
        row = db.execute("SELECT current_execution_id FROM instances WHERE instance_id = ?", (instance,)).fetchone()
        if row is not None:
            return row[0]
        return db.execute("SELECT MAX(execution_id) FROM executions WHERE instance_id = ?", (instance,)).fetchone()[0]

    # --- orchestrator queue --------------------------------------------------------------------

    def fetch_orchestration_item(
        self, lock_timeout_ms: int, poll_timeout_ms: int = 0, filter: tuple[str, str] | None = None
    ) -> OrchestrationItem | None:
        """Lock the instance of the oldest visible message and return its batch (SPEC §15.1).

        Locked instances, filter-incompatible ones and orphans (SPEC §3.12, Recommend) are
        skipped so they never block others. ``poll_timeout_ms`` is ignored (short poll).
        """
        op = "fetch_orchestration_item"
        bounds = self._filter_bounds(filter)
        return self._group_write(op, lambda db: self._fetch_orch(db, self._now(), lock_timeout_ms, bounds, op))

    @staticmethod
    def _filter_bounds(filter: tuple[str, str] | None) -> tuple | None:
        if filter is None:
            return None
        return _parse_semver(filter[0], "filter minimum"), _parse_semver(filter[1], "filter maximum")

    def _fetch_orch(self, db: sqlite3.Connection, now: int, lock_timeout_ms: int, bounds: tuple | None,
                    op: str) -> OrchestrationItem | None:
        """The body of :meth:`fetch_orchestration_item`, inside the caller's write transaction."""
        if self._orphan_sweep_at is None or now >= self._orphan_sweep_at:
            self._orphan_sweep_at = now + ORPHAN_SWEEP_INTERVAL_MS
            self._expire_orphans(db, now)
        orphans: list[int] = []
        parked: list[tuple[str, int]] = []
        result = None
        # Walk visible rows oldest first (index on visible_at, id) and stop at the first
        # eligible instance: the cost is the rows skipped, not the queue length.
        considered: set[str] = set()  # membership only; order comes from the queue
        for (instance,) in db.execute(_CANDIDATES, (now, now)):
            if instance in considered:
                continue
            considered.add(instance)
            info = db.execute(_INSTANCE_INFO, (instance,)).fetchone()
            # No instance row (typically a new instance): its latest stored execution, if any.
            orphan_exec = (db.execute("SELECT MAX(execution_id) FROM executions WHERE instance_id = ?",
                                      (instance,)).fetchone()[0] if info is None else None)
            if bounds is not None:
                if info is not None:
                    compatible = info[5] is None or bounds[0] <= tuple(info[5:8]) <= bounds[1]
                else:
                    compatible = orphan_exec is None or self._pin_compatible(db, instance, bounds, orphan_exec)
                if not compatible:
                    continue  # skipped before locking or reading history (SPEC §16 I30)
            rows = db.execute("SELECT id, work_item, attempt_count FROM orchestrator_queue WHERE instance_id = ? "
                              "AND visible_at <= ? ORDER BY visible_at, id", (instance, now)).fetchall()
            batch = [(rid, self._load_work(text, op)) for rid, text, _ in rows]
            items = [item for _, item in batch]
            meta = ((info[0], info[1], info[2], True, None) if info is not None
                    else self._batch_metadata(db, instance, items, orphan_exec))
            status = info[4] if info is not None else (None if orphan_exec is None else db.execute(
                "SELECT status FROM executions WHERE instance_id = ? AND execution_id = ?",
                (instance, orphan_exec)).fetchone()[0])
            if status == "ContinuedAsNew" and self._continue_as_new_pending(db, instance, items):
                continue
            if meta is None:
                # Orphan: no row, no history, no start item. QueueMessages sent before the
                # instance exists are dropped (SPEC §6.2); anything else may be racing its
                # start, so it stays queued, parked (see _shared.ORPHAN_PARK_SHIFT: no later
                # fetch walks past it, the start's batch still carries it, and it expires
                # after ORPHAN_RETENTION_MS), while we move on to the next candidate.
                # A start item that is queued but not yet visible (abandoned with a delay
                # after a failed first ack) means the instance is about to exist: keep its
                # messages rather than drop them (found by the simulation).
                pending_start = db.execute(
                    "SELECT 1 FROM orchestrator_queue WHERE instance_id = ? AND "
                    "json_extract(work_item, '$.kind') IN ('StartOrchestration', 'ContinueAsNew') LIMIT 1",
                    (instance,),
                ).fetchone()
                if pending_start is None and all(isinstance(item, QueueMessage) for _, item in batch):
                    orphans.extend(rid for rid, _ in batch)
                else:
                    parked.append((instance, now))
                continue
            attempts = max(count for _, _, count in rows) + 1
            seq = info[3] if info is not None else None
            has_kv = bool(info[8]) if info is not None else True
            result = self._lock_batch(db, instance, meta, lock_timeout_ms, now, op, items, attempts, seq, has_kv)
            if info is not None and info[4] is not None:
                # What the ack need not write again: the execution row exists (with this pin)
                # and whether the instance has kv_delta rows to merge at its end.
                pins = self._known_pins
                if len(pins) >= _KNOWN_PINS_MAX:  # tokens whose ack never came (lock lost, abandoned)
                    pins.clear()
                pins[result.lock_token] = (info[2], tuple(info[5:8]) if info[5] is not None else None, bool(info[9]))
            break
        if orphans:
            db.executemany("DELETE FROM orchestrator_queue WHERE id = ?", [(rid,) for rid in orphans])
        if parked:  # after the scan, which must not see its rows move
            db.executemany(_PARK_ORPHAN, parked)
        return result

    @staticmethod
    def _expire_orphans(db: sqlite3.Connection, now: int) -> None:
        """Parked orphans (SPEC §3.12) at least ORPHAN_RETENTION_MS old: deleted if their
        instance still does not exist (no row, no history, no start / ContinueAsNew queued),
        delivered normally if it exists by now, left for the start's batch if one is queued.
        Run from a fetch at most every ORPHAN_SWEEP_INTERVAL_MS; each statement walks only the
        old parked rows (index on visible_at)."""
        bound = {"b": now - ORPHAN_RETENTION_MS - ORPHAN_PARK_SHIFT}
        expired = db.execute(_EXPIRE_ORPHANS, bound).rowcount
        db.execute(_UNPARK_EXISTING, bound)
        if expired:
            emit(_log, logging.DEBUG, "expired %d queued message(s) for instances that did not exist %d ms after "
                 "the messages became deliverable (SPEC §3.12)", expired, ORPHAN_RETENTION_MS)

    def _pin_compatible(self, db: sqlite3.Connection, instance: str, bounds: tuple,
                        execution_id: Any = _UNKNOWN) -> bool:
        if execution_id is _UNKNOWN:
            execution_id = self._current_execution_id(db, instance)
        row = db.execute("SELECT duroxide_version_major, duroxide_version_minor, duroxide_version_patch "
                         "FROM executions WHERE instance_id = ? AND execution_id = ?",
                         (instance, execution_id)).fetchone()
        if row is None or row[0] is None:
            return True  # no pin yet: NULL is compatible
        return bounds[0] <= tuple(row) <= bounds[1]

    def _continue_as_new_pending(self, db: sqlite3.Connection, instance: str, items: list[WorkItem]) -> bool:
        """For an instance whose current execution continued-as-new (the caller checked, from
        the instance row or, without one, the latest stored execution): True when its
        ContinueAsNew item is queued but not in this batch - wait for it instead of letting SPEC
        §3.1 step 3 discard the batch's messages (see InMemoryProvider._continue_as_new_pending)."""
        if any(isinstance(item, ContinueAsNew) for item in items):
            return False
        return db.execute(
            "SELECT 1 FROM orchestrator_queue WHERE instance_id = ? AND json_extract(work_item, '$.kind') = 'ContinueAsNew' "
            "LIMIT 1", (instance,)).fetchone() is not None

    def _batch_metadata(self, db: sqlite3.Connection, instance: str, items: list[WorkItem],
                        execution_id: Any = _UNKNOWN) -> tuple | None:
        """(name, version, execution id, read history?, history error) or None for an orphan.
        ``execution_id``: the latest stored execution when the caller already knows the
        instance has no row (else both are read here)."""
        if execution_id is _UNKNOWN:
            row = db.execute("SELECT orchestration_name, orchestration_version, current_execution_id FROM instances "
                             "WHERE instance_id = ?", (instance,)).fetchone()
            if row is not None:
                return row[0], row[1], row[2], True, None
            execution_id = self._current_execution_id(db, instance)
        error = None
        if execution_id is not None:  # history without a row: metadata from OrchestrationStarted
            started = db.execute("SELECT event_data FROM history WHERE instance_id = ? AND execution_id = ? "
                                 "AND event_type = 'OrchestrationStarted' ORDER BY event_id LIMIT 1",
                                 (instance, execution_id)).fetchone()
            if started is not None:
                try:
                    event = loads(started[0], "event")
                    return event.name, event.version, execution_id, True, None
                except SerializationError as exc:
                    error = f"Failed to deserialize history: {exc}"
        for item in items:
            if isinstance(item, (StartOrchestration, ContinueAsNew)):
                return item.orchestration, item.version, 1, False, error
        if error is not None:
            return "", None, execution_id, False, error
        return None

    def _lock_batch(self, db: sqlite3.Connection, instance: str, meta: tuple, lock_timeout_ms: int, now: int,
                    op: str, messages: list[WorkItem], attempts: int, seq: int | None,
                    has_kv: bool = True) -> OrchestrationItem:
        """Lock ``instance`` and tag its visible rows: exactly the batch the caller read in this
        transaction (``messages``, in order; ``attempts`` = their highest count after this fetch)."""
        name, version, execution_id, read_history, error = meta
        token = self._new_token()
        # The upsert overwrites only an expired lock: the old token becomes unknown.
        cur = db.execute(
            "INSERT INTO instance_locks (instance_id, lock_token, locked_until, locked_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (instance_id) DO UPDATE SET lock_token = excluded.lock_token, "
            "locked_until = excluded.locked_until, locked_at = excluded.locked_at "
            "WHERE instance_locks.locked_until <= ?", (instance, token, now + lock_timeout_ms, now, now))
        if cur.rowcount != 1:  # pragma: no cover - impossible under BEGIN IMMEDIATE
            raise ProviderError(f"{op}: lost the race for instance {instance!r}", operation=op, retryable=True)
        db.execute("UPDATE orchestrator_queue SET lock_token = ?, attempt_count = attempt_count + 1 "
                   "WHERE instance_id = ? AND visible_at <= ?", (token, instance, now))
        history: tuple[HistoryEvent, ...] = ()
        if read_history and error is None:
            try:
                history = self._load_events(db, instance, execution_id, seq)
            except SerializationError as exc:
                error = f"Failed to deserialize history: {exc}"  # lock held, attempts counted (SPEC §16 I31)
        kv = {key: KvEntry(value, ts) for key, value, ts in db.execute(
            "SELECT key, value, last_updated_at_ms FROM kv_store WHERE instance_id = ? ORDER BY key",
            (instance,))} if has_kv else {}
        return OrchestrationItem(
            instance=instance, orchestration_name=name, execution_id=execution_id, version=version,
            history=() if error is not None else history, messages=tuple(messages), lock_token=token,
            attempt_count=attempts, history_error=error, kv_snapshot=kv,
        )

    def ack_orchestration_item(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[HistoryEvent],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivityIdentifier] = (),
    ) -> None:
        """Commit one turn in one transaction (SPEC §15.1) and release the instance lock.

        Raises LockLostError (unknown or expired token) or ProviderError (duplicate event id,
        malformed input); the transaction then rolls back, so nothing changes and a held lock
        stays held.
        """
        op = "ack_orchestration_item"
        delta, workers, orchs = list(history_delta), list(worker_items), list(orchestrator_items)
        texts = _serialize_ack(delta, workers, orchs)
        instance = self._group_write(op, lambda db: self._ack_orch(
            db, self._now(), lock_token, execution_id, delta, workers, orchs, metadata, cancelled_activities, op,
            texts))
        if delta and self._hcache:  # again after the commit: a reader may have cached meanwhile
            forget_if_filled_below(self._hcache, self._hcache_lock, instance, execution_id, delta)
        self._notify_ack(workers, orchs, instance, metadata.status in ENDED_STATUSES)

    def ack_orchestration_item_and_fetch(
        self,
        lock_token: str,
        execution_id: int,
        history_delta: Sequence[HistoryEvent],
        worker_items: Sequence[ActivityExecute],
        orchestrator_items: Sequence[WorkItem],
        metadata: ExecutionMetadata,
        cancelled_activities: Sequence[ScheduledActivityIdentifier] = (),
        *,
        lock_timeout_ms: int,
        filter: tuple[str, str] | None = None,
    ) -> OrchestrationItem | None:
        """:meth:`ack_orchestration_item`, then :meth:`fetch_orchestration_item` in the SAME
        transaction (one commit instead of two; a dispatcher that just finished a turn looks
        for the next one anyway). The ack behaves exactly as the plain ack (same errors, all or
        nothing); the fetch part runs in a savepoint and any failure there is rolled back to
        it and reported as "nothing fetched", so it can never make the ack fail.

        A subclass that overrides the plain ack or fetch gets exactly those two calls instead
        (its overrides keep seeing every ack and fetch)."""
        if not self._not_overridden("ack_orchestration_item", "fetch_orchestration_item"):
            self.ack_orchestration_item(lock_token, execution_id, history_delta, worker_items, orchestrator_items,
                                        metadata, cancelled_activities)
            return self._fetch_after_ack(lambda: self.fetch_orchestration_item(lock_timeout_ms, 0, filter))
        op = "ack_orchestration_item"
        bounds = self._filter_bounds(filter)
        delta, workers, orchs = list(history_delta), list(worker_items), list(orchestrator_items)
        texts = _serialize_ack(delta, workers, orchs)
        fetch_on = [True]

        def body(db: sqlite3.Connection) -> tuple[str, OrchestrationItem | None]:
            now = self._now()
            instance = self._ack_orch(db, now, lock_token, execution_id, delta, workers, orchs, metadata,
                                      cancelled_activities, op, texts)
            if not fetch_on[0]:
                return instance, None
            return instance, self._chained_fetch(
                fetch_on, lambda: self._fetch_orch(db, now, lock_timeout_ms, bounds, "fetch_orchestration_item"))

        instance, nxt = self._group_write(op, body)
        if delta and self._hcache:  # (as in ack_orchestration_item)
            forget_if_filled_below(self._hcache, self._hcache_lock, instance, execution_id, delta)
        if nxt is not None and all(item.target_instance == nxt.instance for item in orchs):
            # Everything this ack queued is for the instance the caller just fetched (e.g. its own
            # continue-as-new): waking another dispatcher would only find it locked.
            self._notify((["worker"] if workers else []) + ["committed"], instance, metadata.status in ENDED_STATUSES)
        else:
            self._notify_ack(workers, orchs, instance, metadata.status in ENDED_STATUSES)
        return nxt

    def _not_overridden(self, *names: str) -> bool:
        cls = type(self)
        return all(getattr(cls, name) is getattr(SqliteProvider, name) for name in names)

    @staticmethod
    def _fetch_after_ack(fetch: Callable[[], Any]) -> Any:
        try:
            return fetch()
        except ProviderError as exc:  # the ack is committed; the next plain fetch reports it
            emit(_log, logging.DEBUG, "fetch after ack failed: %s", exc)
            return None

    @staticmethod
    def _chained_fetch(fetch_on: list[bool], fetch: Callable[[], Any]) -> Any:
        """The fetch part of an ack-and-fetch write, run right after its ack without a savepoint
        (two statements fewer per write). If it fails, the write's transaction is rolled back
        and the write runs again with its fetch turned off (``fetch_on[0] = False``, see
        :meth:`_run_group`): the ack is all or nothing either way and the failure is reported
        as "nothing fetched" (the next plain fetch reports it)."""
        try:
            return fetch()
        except Exception as exc:  # noqa: BLE001 - the plain fetch will report it
            emit(_log, logging.DEBUG, "fetch after ack failed (the ack runs again alone): %s", exc)
            fetch_on[0] = False
            raise _RerunWithoutFetch() from exc

    def _notify_ack(self, workers: list, orchs: list, instance: str, final: bool) -> None:
        # "committed" (and the commit listeners) let in-process clients waiting on an instance
        # look again at once.
        self._notify((["orchestrator"] if orchs else []) + (["worker"] if workers else []) + ["committed"],
                     instance, final)

    def _ack_orch(self, db: sqlite3.Connection, now: int, lock_token: str, execution_id: int, delta: list,
                  workers: list, orchs: list, metadata: ExecutionMetadata,
                  cancelled_activities: Sequence[ScheduledActivityIdentifier], op: str,
                  texts: tuple[list[str], list[str], list[str]] | None = None) -> str:
        """The body of :meth:`ack_orchestration_item`, inside the caller's write transaction.
        ``texts``: the JSON of the delta, worker and orchestrator items, serialized before the
        transaction (:func:`_serialize_ack`) so the write lock is not held for it."""
        # Checks the lock and releases it (the whole ack rolls back if anything below fails).
        instance, locked_at = self._take_orch_lock(db, lock_token, now, op)
        few = len(delta) <= _FEW_EVENTS
        if few:  # duplicates are then detected by the primary key as each row is inserted
            for event in delta:
                if not isinstance(event, HistoryEvent):
                    raise ProviderError(f"not a history event: {event!r}", operation=op)
        else:
            self._validate_events(db, instance, execution_id, delta, op)
        event_texts, worker_texts, orch_texts = texts if texts is not None else (None, None, None)
        pin = metadata.pinned_duroxide_version
        pin = _parse_semver(pin, "pinned_duroxide_version") if pin is not None else None
        for item in workers:
            self._check_worker_item(item, op)
        for item in orchs:
            self._check_orch_item(item, op)
        # Every row of the batch carries this token (fetch tagged them), so deleting them
        # leaves no row tagged with it: releasing the lock is deleting its row (done above).
        db.execute(f"DELETE FROM orchestrator_queue WHERE {self._TAGGED}", (instance, locked_at, lock_token))
        has_row = self._upsert_instance(db, instance, execution_id, metadata, now)
        # The execution row is created by its first ack; later acks only update it. The fetch
        # remembered the stored pin of an existing row: the same pin is not written again.
        known = self._known_pins.pop(lock_token, None)
        if known is not None and known[0] != execution_id:
            known = None
        if metadata.status is None and known is not None and (pin is None or known[1] == pin):
            pass  # nothing to change
        elif pin is None and metadata.status is None:
            db.execute("INSERT OR IGNORE INTO executions (instance_id, execution_id, status, started_at) "
                       "VALUES (?, ?, 'Running', ?)", (instance, execution_id, now))
        else:
            db.execute(_UPSERT_EXECUTION[(pin is not None, metadata.status is not None)],
                       (instance, execution_id, metadata.status or "Running", now,
                        *(pin if pin is not None else ()),
                        *((metadata.output, now) if metadata.status is not None else ())))
        if few:
            self._insert_events_checked(db, instance, execution_id, delta, now, event_texts, op)
        else:
            self._insert_events(db, instance, execution_id, delta, now, event_texts)
        if delta and self._hcache:  # (a fetch chained to this ack reads the history in this transaction)
            forget_if_filled_below(self._hcache, self._hcache_lock, instance, execution_id, delta)
        statuses = [e for e in delta if isinstance(e, CustomStatusUpdated)]
        if statuses and has_row:  # the last one wins; one version bump per ack
            db.execute("UPDATE instances SET custom_status = ?, custom_status_version = custom_status_version + 1 "
                       "WHERE instance_id = ?", (statuses[-1].status, instance))
        kv_events = self._apply_kv(db, instance, delta)
        if metadata.status in TERMINAL_STATUSES and (known is None or known[2] or kv_events):
            self._merge_kv(db, instance)  # skipped when there is nothing to merge
        for i, item in enumerate(workers):
            self._insert_work(db, item, now, worker_texts[i] if worker_texts is not None else None)
        # Cancel AFTER inserting: schedule+cancel in one ack must leave nothing (SPEC §11.2).
        if cancelled_activities:
            db.executemany("DELETE FROM worker_queue WHERE instance_id = ? AND execution_id = ? "
                           "AND activity_id = ?",
                           [(c.instance, c.execution_id, c.activity_id) for c in cancelled_activities])
        for i, item in enumerate(orchs):
            self._insert_orch(db, item, item.fire_at_ms if isinstance(item, TimerFiredMsg) else now, now,
                              orch_texts[i] if orch_texts is not None else None)
        if metadata.status in TERMINAL_STATUSES:
            self._forget_history(instance)
        return instance

    @staticmethod
    def _validate_events(db: sqlite3.Connection, instance: str, execution_id: int, events: list, op: str) -> None:
        for event in events:
            if not isinstance(event, HistoryEvent):
                raise ProviderError(f"not a history event: {event!r}", operation=op)
        ids = sorted({e.event_id for e in events})
        seen: set[int] = set()
        for start in range(0, len(ids), 500):  # stay far below SQLite's bound-parameter limit
            chunk = ids[start:start + 500]
            seen.update(r[0] for r in db.execute(
                f"SELECT event_id FROM history WHERE instance_id = ? AND execution_id = ? AND event_id IN "
                f"({','.join('?' * len(chunk))})", (instance, execution_id, *chunk)))
        for event in events:
            if event.event_id in seen:
                raise ProviderError(
                    f"duplicate event_id {event.event_id} in execution {execution_id} of instance {instance!r}; "
                    "history is append-only", operation=op, instance_id=instance, event_id=event.event_id)
            seen.add(event.event_id)

    @classmethod
    def _append(cls, db: sqlite3.Connection, instance: str, execution_id: int, events: list, now: int) -> None:
        """Create the execution if absent and store ``events`` verbatim."""
        db.execute("INSERT OR IGNORE INTO executions (instance_id, execution_id, status, started_at) "
                   "VALUES (?, ?, 'Running', ?)", (instance, execution_id, now))
        cls._insert_events(db, instance, execution_id, events, now)

    @staticmethod
    def _insert_events(db: sqlite3.Connection, instance: str, execution_id: int, events: list, now: int,
                       texts: list[str] | None = None) -> None:
        db.executemany(_INSERT_EVENT, [(instance, execution_id, e.event_id, type(e).KIND,
                                        texts[i] if texts is not None else dumps(e), now)
                                       for i, e in enumerate(events)])

    @staticmethod
    def _insert_events_checked(db: sqlite3.Connection, instance: str, execution_id: int, events: list, now: int,
                               texts: list[str] | None, op: str) -> None:
        """Insert row by row; the first event whose id is taken (stored before, or earlier in
        ``events``) raises the same error as :meth:`_validate_events` (nothing is kept: the
        caller's transaction rolls back).

        All rows go in ONE multi-row INSERT first (one statement instead of one per event); a
        statement is all or nothing, so if it hits a taken id nothing of it is kept and the rows
        are inserted again one by one to name the first offending event."""
        if len(events) > 1:
            try:
                db.execute(_INSERT_EVENTS_N[len(events)], [
                    v for i, e in enumerate(events)
                    for v in (instance, execution_id, e.event_id, type(e).KIND,
                              texts[i] if texts is not None else dumps(e), now)])
                return
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc) and "PRIMARY KEY" not in str(exc):
                    raise
        for i, e in enumerate(events):
            try:
                db.execute(_INSERT_EVENT, (instance, execution_id, e.event_id, type(e).KIND,
                                           texts[i] if texts is not None else dumps(e), now))
            except sqlite3.IntegrityError as exc:
                if "UNIQUE" not in str(exc) and "PRIMARY KEY" not in str(exc):
                    raise
                raise ProviderError(
                    f"duplicate event_id {e.event_id} in execution {execution_id} of instance {instance!r}; "
                    "history is append-only", operation=op, instance_id=instance, event_id=e.event_id) from None

    @staticmethod
    def _upsert_instance(db: sqlite3.Connection, instance: str, execution_id: int, md: ExecutionMetadata,
                         now: int) -> bool:
        """Create-if-absent / update the instance row from metadata and move its current
        execution forward to ``execution_id``; True if a row exists after."""
        if md.orchestration_name is None:
            return db.execute("UPDATE instances SET current_execution_id = MAX(current_execution_id, ?), "
                              "updated_at = ? WHERE instance_id = ?", (execution_id, now, instance)).rowcount == 1
        # A NULL version is filled in later, never cleared.
        if db.execute("UPDATE instances SET orchestration_name = ?, orchestration_version = COALESCE(?, "
                      "orchestration_version), current_execution_id = MAX(current_execution_id, ?), updated_at = ? "
                      "WHERE instance_id = ?", (md.orchestration_name, md.orchestration_version, execution_id, now,
                                                instance)).rowcount == 0:
            db.execute(
                "INSERT INTO instances (instance_id, orchestration_name, orchestration_version, current_execution_id, "
                "created_at, updated_at, parent_instance_id, created_seq) VALUES (?, ?, ?, ?, ?, ?, ?, "
                "(SELECT MAX(COALESCE(MAX(created_seq), 0), COALESCE((SELECT value FROM provider_meta "
                "WHERE key = 'created_seq_retired'), 0)) + 1 FROM instances))",
                (instance, md.orchestration_name, md.orchestration_version, execution_id, now, now,
                 md.parent_instance_id))  # the parent link is immutable once created
        return True

    @staticmethod
    def _apply_kv(db: sqlite3.Connection, instance: str, delta: list) -> bool:
        """Store the delta's kv events in kv_delta; True if there were any."""
        found = False
        upsert = ("INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms) VALUES (?, ?, ?, ?) "
                  "ON CONFLICT (instance_id, key) DO UPDATE SET value = excluded.value, "
                  "last_updated_at_ms = excluded.last_updated_at_ms")
        for event in delta:
            if isinstance(event, (KeyValueSet, KeyValueCleared, KeyValuesCleared)):
                found = True
            if isinstance(event, KeyValueSet):
                db.execute(upsert, (instance, event.key, event.value, event.last_updated_at_ms))
            elif isinstance(event, KeyValueCleared):
                db.execute(upsert, (instance, event.key, None, None))
            elif isinstance(event, KeyValuesCleared):
                # Tombstone every delta row and every store key, so reads hide the store too.
                db.execute("UPDATE kv_delta SET value = NULL, last_updated_at_ms = NULL WHERE instance_id = ?",
                           (instance,))
                db.execute("INSERT INTO kv_delta (instance_id, key, value, last_updated_at_ms) "
                           "SELECT instance_id, key, NULL, NULL FROM kv_store WHERE instance_id = ? "
                           "ON CONFLICT (instance_id, key) DO UPDATE SET value = NULL, last_updated_at_ms = NULL",
                           (instance,))
        return found

    @staticmethod
    def _merge_kv(db: sqlite3.Connection, instance: str) -> None:
        """At the end of an execution the delta folds into the store (tombstones delete)."""
        db.execute("DELETE FROM kv_store WHERE instance_id = ? AND key IN "
                   "(SELECT key FROM kv_delta WHERE instance_id = ? AND value IS NULL)", (instance, instance))
        db.execute("INSERT INTO kv_store (instance_id, key, value, last_updated_at_ms) "
                   "SELECT instance_id, key, value, last_updated_at_ms FROM kv_delta "
                   "WHERE instance_id = ? AND value IS NOT NULL ORDER BY key "
                   "ON CONFLICT (instance_id, key) DO UPDATE SET value = excluded.value, "
                   "last_updated_at_ms = excluded.last_updated_at_ms", (instance,))
        db.execute("DELETE FROM kv_delta WHERE instance_id = ?", (instance,))

    def abandon_orchestration_item(
        self, lock_token: str, delay_ms: int | None = None, ignore_attempt: bool = False
    ) -> None:
        """Release the instance lock; optionally hide its visible messages for ``delay_ms``
        and undo this fetch's attempt increment (``ignore_attempt``, floor 0)."""
        op = "abandon_orchestration_item"
        with self._tx(op) as db:
            now = self._now()
            row = db.execute("SELECT instance_id, locked_at FROM instance_locks WHERE lock_token = ?",
                             (lock_token,)).fetchone()
            if row is None:
                raise _lock_lost(op, lock_token, f"Invalid lock token {lock_token!r}: unknown or already released")
            instance, locked_at = row
            self._known_pins.pop(lock_token, None)  # filled by the fetch, read only by an ack
            if ignore_attempt:
                db.execute(f"UPDATE orchestrator_queue SET attempt_count = MAX(0, attempt_count - 1) WHERE {self._TAGGED}",
                           (instance, locked_at, lock_token))
            # Untag before hiding: the delay moves tagged rows past locked_at.
            self._release_orch_lock(db, instance)
            if delay_ms is not None:
                db.execute("UPDATE orchestrator_queue SET visible_at = MAX(visible_at, ?) "
                           "WHERE instance_id = ? AND visible_at <= ?", (now + delay_ms, instance, now))

    def renew_orchestration_item_lock(self, lock_token: str, extend_ms: int) -> None:
        """Extend a held, unexpired instance lock to now + ``extend_ms``."""
        op = "renew_orchestration_item_lock"
        with self._tx(op) as db:
            now = self._now()
            instance = self._held_orch_lock(db, lock_token, now, op)
            db.execute("UPDATE instance_locks SET locked_until = ? WHERE instance_id = ?", (now + extend_ms, instance))

    # --- worker queue --------------------------------------------------------------------------

    def fetch_work_item(
        self,
        lock_timeout_ms: int,
        poll_timeout_ms: int = 0,
        session: SessionConfig | None = None,
        tag_filter: TagFilter = TagFilter.DEFAULT_ONLY,  # type: ignore[attr-defined]
    ) -> WorkItemLease | None:
        """Lock the oldest visible, unlocked (or expired) activity that the tag filter and the
        session rules allow (SPEC §15.3), claiming its session for ``session.owner_id``."""
        op = "fetch_work_item"
        if tag_filter.mode == "none":
            return None
        query, params = self._work_query(session, tag_filter)
        return self._group_write(op, lambda db: self._fetch_work(db, self._now(), lock_timeout_ms, session, query, params,
                                                           op))

    @staticmethod
    def _work_query(session: SessionConfig | None, tag_filter: TagFilter) -> tuple[str, dict[str, Any]]:
        params: dict[str, Any] = {"now": None}
        where = ["visible_at <= :now", "(locked_until IS NULL OR locked_until <= :now)"]
        tags = sorted(tag_filter.tag_set)
        params.update({f"t{i}": tag for i, tag in enumerate(tags)})
        listed = f"tag IN ({', '.join(f':t{i}' for i in range(len(tags)))})"
        where.append({"default_only": "tag IS NULL", "tags": listed, "default_and": f"(tag IS NULL OR {listed})",
                      "any": "1"}[tag_filter.mode])
        if session is None:
            where.append("session_id IS NULL")  # session rows go only to session-aware fetchers
        else:
            params["owner"] = session.owner_id
            where.append("(session_id IS NULL OR NOT EXISTS (SELECT 1 FROM sessions s WHERE s.session_id = "
                         "worker_queue.session_id AND s.locked_until > :now AND s.worker_id != :owner))")
        query = f"SELECT id, work_item, session_id, attempt_count FROM worker_queue WHERE {' AND '.join(where)} " \
                "ORDER BY visible_at, id LIMIT 1"
        return query, params

    def _fetch_work(self, db: sqlite3.Connection, now: int, lock_timeout_ms: int, session: SessionConfig | None,
                    query: str, params: dict[str, Any], op: str) -> WorkItemLease | None:
        """The body of :meth:`fetch_work_item`, inside the caller's write transaction."""
        params["now"] = now
        row = db.execute(query, params).fetchone()
        if row is None:
            return None
        rid, text, session_id, attempts = row
        item = self._load_work(text, op)
        if session_id is not None and session is not None:
            db.execute("INSERT INTO sessions (session_id, worker_id, locked_until, last_activity_at) "
                       "VALUES (?, ?, ?, ?) ON CONFLICT (session_id) DO UPDATE SET worker_id = excluded.worker_id, "
                       "locked_until = excluded.locked_until, last_activity_at = excluded.last_activity_at",
                       (session_id, session.owner_id, now + session.lock_timeout_ms, now))
        # The token names the row (see _work_row_id): an expired lock is stolen, and its old
        # token becomes unknown.
        token = f"{self._new_token()}{_ROW_MARK}{rid}"
        db.execute("UPDATE worker_queue SET lock_token = ?, locked_until = ?, attempt_count = attempt_count + 1 "
                   "WHERE id = ?", (token, now + lock_timeout_ms, rid))
        assert isinstance(item, ActivityExecute)
        return WorkItemLease(item=item, lock_token=token, attempt_count=attempts + 1)

    def ack_work_item(self, lock_token: str, completion: WorkItem | None) -> None:
        """Delete the locked row and enqueue ``completion`` (if any) in one transaction.
        LockLostError if the row was cancelled or deleted, or its lock expired or was stolen."""
        op = "ack_work_item"
        self._group_write(op, lambda db: self._ack_work(db, self._now(), lock_token, completion, op))
        if completion is not None:
            self._notify(["orchestrator"])

    def ack_work_item_and_fetch(
        self,
        lock_token: str,
        completion: WorkItem | None,
        *,
        lock_timeout_ms: int,
        session: SessionConfig | None = None,
        tag_filter: TagFilter = TagFilter.DEFAULT_ONLY,  # type: ignore[attr-defined]
    ) -> WorkItemLease | None:
        """:meth:`ack_work_item`, then :meth:`fetch_work_item` in the SAME transaction (see
        :meth:`ack_orchestration_item_and_fetch`: the ack is unchanged, a failing fetch part is
        rolled back to a savepoint and reported as "nothing fetched"; a subclass overriding
        the plain ack or fetch gets those two calls instead)."""
        if not self._not_overridden("ack_work_item", "fetch_work_item"):
            self.ack_work_item(lock_token, completion)
            return self._fetch_after_ack(lambda: self.fetch_work_item(lock_timeout_ms, 0, session, tag_filter))
        op = "ack_work_item"
        query, params = self._work_query(session, tag_filter) if tag_filter.mode != "none" else ("", {})

        fetch_on = [bool(query)]

        def body(db: sqlite3.Connection) -> WorkItemLease | None:
            now = self._now()
            self._ack_work(db, now, lock_token, completion, op)
            if not fetch_on[0]:
                return None
            return self._chained_fetch(
                fetch_on, lambda: self._fetch_work(db, now, lock_timeout_ms, session, query, params,
                                                   "fetch_work_item"))

        nxt = self._group_write(op, body)
        if completion is not None:
            self._notify(["orchestrator"])
        return nxt

    def _ack_work(self, db: sqlite3.Connection, now: int, lock_token: str, completion: WorkItem | None,
                  op: str) -> None:
        if _HAS_RETURNING:  # check and delete in one statement; a lock error rolls the delete back
            rows = db.execute(f"DELETE FROM worker_queue WHERE {_WORK_BY_TOKEN} RETURNING locked_until, session_id",
                              _work_token_params(lock_token)).fetchall()
            if not rows:
                raise _lock_lost(op, lock_token, f"Work item lock token {lock_token!r} is unknown: the activity was "
                                 "cancelled or deleted, already acked/abandoned, or its lock was stolen after expiry")
            locked_until, session_id = rows[0]
            if locked_until is not None and locked_until <= now:
                raise _lock_lost(op, lock_token, f"Work item lock expired (lock token {lock_token!r})")
        else:
            rid, _, session_id, _, _ = self._work_row_for(db, lock_token, now, op, need_live=True)
            db.execute("DELETE FROM worker_queue WHERE id = ?", (rid,))
        if completion is not None and not isinstance(completion, (ActivityCompletedMsg, ActivityFailedMsg)):
            raise ProviderError(f"a worker ack takes ActivityCompleted/ActivityFailed, got {completion!r}",
                                operation=op)
        self._bump_session(db, session_id, now)
        if completion is not None:
            self._insert_orch(db, completion, now, now)

    def renew_work_item_lock(self, lock_token: str, extend_ms: int) -> None:
        """Extend a live row lock. Failure is the worker's cancellation signal."""
        op = "renew_work_item_lock"
        with self._tx(op) as db:
            now = self._now()
            rid, _, session_id, _, _ = self._work_row_for(db, lock_token, now, op, need_live=True)
            db.execute("UPDATE worker_queue SET locked_until = ? WHERE id = ?", (now + extend_ms, rid))
            self._bump_session(db, session_id, now)

    def abandon_work_item(self, lock_token: str, delay_ms: int | None = None, ignore_attempt: bool = False) -> None:
        """Unlock the row; ``delay_ms`` hides it until now + delay; ``ignore_attempt`` undoes
        the fetch's attempt increment (floor 0). Without a delay the row keeps its FIFO place."""
        op = "abandon_work_item"
        with self._tx(op) as db:
            now = self._now()
            rid, _, _, attempts, visible_at = self._work_row_for(db, lock_token, now, op, need_live=False)
            if ignore_attempt:
                attempts = max(0, attempts - 1)
            if delay_ms is not None:
                visible_at = max(visible_at, now + delay_ms)
            db.execute("UPDATE worker_queue SET lock_token = NULL, locked_until = NULL, attempt_count = ?, "
                       "visible_at = ? WHERE id = ?", (attempts, visible_at, rid))

    def session_locks(self) -> list[tuple[str, str, int, int]]:
        """``(session_id, owner_id, locked_until, last_activity_at)`` of every session, in id
        order (see InMemoryProvider.session_locks; for the simulator, not a hot path)."""
        with self._tx("session_locks", write=False) as db:
            return [tuple(r) for r in db.execute(  # type: ignore[misc]
                "SELECT session_id, worker_id, locked_until, last_activity_at FROM sessions ORDER BY session_id")]

    def renew_session_lock(self, owner_ids: Sequence[str], extend_ms: int, idle_timeout_ms: int) -> int:
        """Extend the live, non-idle sessions owned by ``owner_ids``; return how many."""
        owners = list(dict.fromkeys(owner_ids))
        if not owners:
            return 0
        with self._tx("renew_session_lock") as db:
            now = self._now()
            cur = db.execute(f"UPDATE sessions SET locked_until = ? WHERE worker_id IN ({','.join('?' * len(owners))}) "
                             "AND locked_until > ? AND last_activity_at > ?",
                             (now + extend_ms, *owners, now, now - idle_timeout_ms))
            return cur.rowcount

    def cleanup_orphaned_sessions(self, idle_timeout_ms: int) -> int:
        """Delete expired sessions that have no queued rows; return how many."""
        with self._tx("cleanup_orphaned_sessions") as db:
            now = self._now()
            cur = db.execute("DELETE FROM sessions WHERE locked_until < ? AND session_id NOT IN "
                             "(SELECT session_id FROM worker_queue WHERE session_id IS NOT NULL)", (now,))
            return cur.rowcount

    # --- enqueue and reads ---------------------------------------------------------------------

    def enqueue_for_orchestrator(self, item: WorkItem, delay_ms: int | None = None) -> None:
        """Queue ``item`` for its target instance, visible after ``delay_ms``. Never creates
        an instance (its first ack does)."""
        op = "enqueue_for_orchestrator"
        self._check_orch_item(item, op)
        text = dumps(item)  # serialized before taking the writer

        with self._tx(op) as db:
            now = self._now()
            self._insert_orch(db, item, now + max(0, delay_ms or 0), now, text)
        self._notify(["orchestrator"])

    def enqueue_for_worker(self, item: ActivityExecute) -> None:
        """Queue an activity, visible now."""
        op = "enqueue_for_worker"
        self._check_worker_item(item, op)
        text = dumps(item)
        self._group_write(op, lambda db: self._insert_work(db, item, self._now(), text))
        self._notify(["worker"])

    def read(self, instance: str) -> list[HistoryEvent]:
        """History of the latest execution; unknown instance -> []."""
        check_instance_arg(instance, "read")
        with self._tx("read", write=False) as db:
            latest = db.execute("SELECT MAX(execution_id) FROM executions WHERE instance_id = ?",
                                (instance,)).fetchone()[0]
            return [] if latest is None else self._read_events(db, instance, latest, "read")

    def read_with_execution(self, instance: str, execution_id: int) -> list[HistoryEvent]:
        """History of one execution; unknown -> []."""
        check_instance_arg(instance, "read_with_execution")
        with self._tx("read_with_execution", write=False) as db:
            return self._read_events(db, instance, execution_id, "read_with_execution")

    def append_with_execution(self, instance: str, execution_id: int, events: Sequence[HistoryEvent]) -> None:
        """Append events verbatim (tests, tools). Duplicate ids -> ProviderError, nothing stored."""
        op = "append_with_execution"
        events = list(events)
        with self._tx(op) as db:
            now = self._now()
            self._validate_events(db, instance, execution_id, events, op)
            self._append(db, instance, execution_id, events, now)
        forget_if_filled_below(self._hcache, self._hcache_lock, instance, execution_id, events)  # after the commit

    def import_history(self, instance: str, executions: Sequence[tuple[int, Sequence[HistoryEvent]]],
                       kv_base: Mapping[str, tuple[str, int]] | None = None,
                       restored: Mapping[str, int] | None = None, queued: Sequence[WorkItem] = ()) -> None:
        """Restore a recorded instance (``duroxide-sim import``): its executions' events verbatim,
        plus what their turns' acks stored beside them, read back from the events: the instance
        row (name, version, parent, current execution, created/updated at the recorded times),
        each execution's status, output and pin, the last custom status, and the KV store (each
        execution's KV events, merged at its end as an ack does; ``kv_base``, when given, is the
        stored KV store as exported - see :meth:`kv_base` - for an instance whose earlier
        executions were pruned). ``restored``: the source's ``created_at`` and
        ``custom_status_version``, which the events cannot tell (pruned executions, several
        custom status updates in one execution). ``queued``: the work still queued for it (an
        export's ``queued``), queued again in the same transaction - visible now, a fired timer
        at its fire time, activities unlocked with a fresh attempt count. One transaction; refused
        (nothing written) when the instance already exists or an event id repeats."""
        op = "import_history"
        for item in queued:
            if not isinstance(item, ActivityExecute):
                self._check_orch_item(item, op)
        rows = [(item, dumps(item)) for item in queued]  # serialized before taking the writer
        with self._tx(op) as db:
            if db.execute("SELECT 1 FROM instances WHERE instance_id = ? UNION ALL "
                          "SELECT 1 FROM executions WHERE instance_id = ? LIMIT 1", (instance, instance)).fetchone():
                raise ProviderError(f"{op}: instance {instance!r} already exists; refusing to overwrite it",
                                    operation=op, instance_id=instance, retryable=False)
            for execution_id, events, info in _imported_executions(instance, executions, op):
                self._validate_events(db, instance, execution_id, events, op)
                md = info.metadata
                self._upsert_instance(db, instance, execution_id, md, info.started_ms)
                pin = _parse_semver(md.pinned_duroxide_version, "pinned_duroxide_version") \
                    if md.pinned_duroxide_version is not None else None
                if pin is None and md.status is None:
                    db.execute("INSERT INTO executions (instance_id, execution_id, status, started_at) "
                               "VALUES (?, ?, 'Running', ?)", (instance, execution_id, info.started_ms))
                else:
                    db.execute(_UPSERT_EXECUTION[(pin is not None, md.status is not None)],
                               (instance, execution_id, md.status or "Running", info.started_ms, *(pin or ()),
                                *((md.output, info.ended_ms) if md.status is not None else ())))
                self._insert_events(db, instance, execution_id, events, info.ended_ms)
                db.execute("UPDATE instances SET updated_at = ? WHERE instance_id = ?", (info.ended_ms, instance))
                if info.custom_status is not None:
                    db.execute("UPDATE instances SET custom_status = ?, custom_status_version = custom_status_version + 1 "
                               "WHERE instance_id = ?", (info.custom_status.status, instance))
                self._apply_kv(db, instance, events)
                if md.status in TERMINAL_STATUSES:
                    self._merge_kv(db, instance)
            if kv_base is not None:
                db.execute("DELETE FROM kv_store WHERE instance_id = ?", (instance,))
                db.executemany("INSERT INTO kv_store (instance_id, key, value, last_updated_at_ms) VALUES (?, ?, ?, ?)",
                               [(instance, k, v, ts) for k, (v, ts) in sorted(kv_base.items())])
            if restored:  # the exported instance row's own fields (see history_io.export_instance)
                db.execute("UPDATE instances SET created_at = COALESCE(?, created_at), "
                           "custom_status_version = COALESCE(?, custom_status_version) WHERE instance_id = ?",
                           (restored.get("created_at"), restored.get("custom_status_version"), instance))
                if "custom_status" in restored:
                    db.execute("UPDATE instances SET custom_status = ? WHERE instance_id = ?",
                               (restored["custom_status"], instance))
            if rows:
                now = self._now()
                for item, text in rows:
                    if isinstance(item, ActivityExecute):
                        self._insert_work(db, item, now, text)
                    else:
                        visible_at = max(now, item.fire_at_ms) if isinstance(item, TimerFiredMsg) else now
                        self._insert_orch(db, item, visible_at, now, text)
        if rows:
            self._notify(["worker" if isinstance(i, ActivityExecute) else "orchestrator" for i, _ in rows])

    def kv_base(self, instance: str) -> dict[str, tuple[str, int]]:
        """The instance's stored KV store without the current execution's own changes: what the
        current execution started with while it runs (the KV store a turn of it replays from),
        everything once it has ended. ``{key: (value, last_updated_at_ms)}``; empty for an unknown
        instance. Export carries it for instances whose earlier executions were pruned (their
        KV events, which would rebuild it, are gone)."""
        check_instance_arg(instance, "kv_base")
        with self._tx("kv_base", write=False) as db:
            return {k: (v, ts) for k, v, ts in db.execute(
                "SELECT key, value, last_updated_at_ms FROM kv_store WHERE instance_id = ? ORDER BY key", (instance,))}

    def latest_execution_id(self, instance: str) -> int | None:
        """Current execution id, or None for an unknown instance."""
        check_instance_arg(instance, "latest_execution_id")
        with self._tx("latest_execution_id", write=False) as db:
            return self._current_execution_id(db, instance)

    def pending_messages(self, instance: str) -> int:
        """Messages queued for ``instance`` in the orchestrator queue (visible or not, locked or
        not): the client's ``get_orchestration_stats().queue_pending_count``."""
        check_instance_arg(instance, "pending_messages")
        with self._tx("pending_messages", write=False) as db:
            return int(db.execute("SELECT COUNT(*) FROM orchestrator_queue WHERE instance_id = ?",
                                  (instance,)).fetchone()[0])

    def queued_work(self) -> dict[str, list[WorkItem]]:
        """Everything still queued, by the instance it is for: orchestrator messages (visible or
        not, locked or not, parked orphans too) then activity items (queued or in flight), each
        in queue order. Reads both whole queues: for diagnostics and the simulator's liveness
        checker (what can still move an instance once a run stops), not for hot paths."""
        op = "queued_work"
        out: dict[str, list[WorkItem]] = {}
        with self._tx(op, write=False) as db:
            for table in ("orchestrator_queue", "worker_queue"):
                for instance, text in db.execute(f"SELECT instance_id, work_item FROM {table} ORDER BY id").fetchall():
                    out.setdefault(instance, []).append(self._load_work(text, op))
        return out

    def read_status(self, instance: str) -> tuple[str, str | None, str | None, int] | None:
        """Cheap status read for clients: ``(execution status, output, custom status, version)``
        of the current execution, from the instance and execution rows (no history decoding).
        None when there is no instance row (the client then reads history)."""
        check_instance_arg(instance, "read_status")
        # One statement: in autocommit mode it is its own read transaction (a consistent
        # snapshot), so no BEGIN/COMMIT around it (each a round trip, and a GIL hand-off, for
        # the client waiting on an instance). fetchall() runs the statement to its end, which
        # ends that read transaction at once.
        with self._read_guard:
            db = self._conn("read_status")
            try:
                rows = db.execute(
                    "SELECT e.status, e.output, i.custom_status, i.custom_status_version FROM instances i "
                    "JOIN executions e ON e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id "
                    "WHERE i.instance_id = ?", (instance,)).fetchall()
            except sqlite3.Error as exc:
                raise _map_error(exc, "read_status", self._where) from exc
        return None if not rows else tuple(rows[0])  # type: ignore[return-value]

    def get_custom_status(self, instance: str, last_seen_version: int) -> tuple[str | None, int] | None:
        """``(status, version)`` if the version moved past ``last_seen_version``, else None."""
        check_instance_arg(instance, "get_custom_status")
        with self._tx("get_custom_status", write=False) as db:
            row = db.execute("SELECT custom_status, custom_status_version FROM instances WHERE instance_id = ?",
                             (instance,)).fetchone()
        if row is None or row[1] <= last_seen_version:
            return None
        return row[0], row[1]

    def get_kv_value(self, instance: str, key: str) -> str | None:
        """The store overlaid by the current execution's delta; tombstones hide."""
        check_instance_arg(instance, "get_kv_value")
        with self._tx("get_kv_value", write=False) as db:
            row = db.execute("SELECT value FROM kv_delta WHERE instance_id = ? AND key = ?", (instance, key)).fetchone()
            if row is None:
                row = db.execute("SELECT value FROM kv_store WHERE instance_id = ? AND key = ?",
                                 (instance, key)).fetchone()
            return row[0] if row is not None else None

    def get_kv_all_values(self, instance: str) -> dict[str, str]:
        """All live keys: the store overlaid by the delta; tombstones hide."""
        check_instance_arg(instance, "get_kv_all_values")
        with self._tx("get_kv_all_values", write=False) as db:
            out = dict(db.execute("SELECT key, value FROM kv_store WHERE instance_id = ? ORDER BY key", (instance,)))
            for key, value in db.execute("SELECT key, value FROM kv_delta WHERE instance_id = ? ORDER BY key",
                                         (instance,)):
                if value is None:
                    out.pop(key, None)
                else:
                    out[key] = value
            return out

    # --- simulation and test hooks -------------------------------------------------------------

    def next_wakeup_ms(self) -> int | None:
        """Earliest future time at which a queued row becomes visible or a live lock (instance,
        work item, session) expires (None if nothing is pending), so a simulated clock can jump
        straight to it."""
        with self._tx("next_wakeup_ms", write=False) as db:
            now = self._now()
            return db.execute(
                "SELECT MIN(t) FROM ("
                " SELECT MIN(visible_at) AS t FROM orchestrator_queue WHERE visible_at > :now"
                " UNION ALL SELECT MIN(visible_at) FROM worker_queue WHERE visible_at > :now"
                " UNION ALL SELECT MIN(locked_until) FROM instance_locks WHERE locked_until > :now"
                " UNION ALL SELECT MIN(locked_until) FROM worker_queue WHERE locked_until > :now"
                # A session held by a crashed worker blocks its queued activities until it expires.
                " UNION ALL SELECT MIN(locked_until) FROM sessions WHERE locked_until > :now)",
                {"now": now}).fetchone()[0]

    def _corrupt_history(self, instance: str, error: str | None = "injected history corruption") -> None:
        """Test hook: make the current execution's history unreadable by writing invalid JSON
        into its history rows (the original text is kept behind a marker); ``error=None``
        restores it. Fetches then return ``history_error`` with the lock held (SPEC §16 I31)."""
        op = "_corrupt_history"
        with self._hcache_lock:
            self._hcache.pop(instance, None)
        with self._tx(op) as db:
            execution_id = self._current_execution_id(db, instance)
            rows = db.execute("SELECT event_id, event_data FROM history WHERE instance_id = ? AND execution_id = ?",
                              (instance, execution_id)).fetchall()
            if error is not None and not rows:
                raise ProviderError(f"{op}: instance {instance!r} has no history to corrupt", operation=op)
            for event_id, text in rows:
                if error is None and text.startswith(_CORRUPT_PREFIX):
                    text = json.loads(text[len(_CORRUPT_PREFIX):])[1]
                elif error is not None and not text.startswith(_CORRUPT_PREFIX):
                    text = _CORRUPT_PREFIX + json.dumps([error, text])
                db.execute("UPDATE history SET event_data = ? WHERE instance_id = ? AND execution_id = ? "
                           "AND event_id = ?", (text, instance, execution_id, event_id))

    def _check(self) -> None:
        """Assert the database's invariants (schema, lock tokens, queue rows, executions)."""
        with self._tx("_check", write=False) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert db.execute("PRAGMA foreign_key_check").fetchall() == []
            assert db.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
            # every tagged orchestrator row belongs to the lock of its own instance
            assert db.execute("SELECT COUNT(*) FROM orchestrator_queue q WHERE q.lock_token IS NOT NULL AND NOT EXISTS "
                              "(SELECT 1 FROM instance_locks l WHERE l.instance_id = q.instance_id "
                              "AND l.lock_token = q.lock_token)").fetchone()[0] == 0
            assert db.execute("SELECT COUNT(*) FROM worker_queue WHERE (lock_token IS NULL) != (locked_until IS NULL)"
                              ).fetchone()[0] == 0
            tokens = [r[0] for r in db.execute("SELECT lock_token FROM worker_queue WHERE lock_token IS NOT NULL "
                                               "UNION ALL SELECT lock_token FROM instance_locks")]
            assert len(tokens) == len(set(tokens)), "lock token shared by two holders"
            assert db.execute("SELECT COUNT(*) FROM instances i WHERE NOT EXISTS (SELECT 1 FROM executions e "
                              "WHERE e.instance_id = i.instance_id AND e.execution_id = i.current_execution_id)"
                              ).fetchone()[0] == 0
            for (text,) in db.execute("SELECT work_item FROM orchestrator_queue UNION ALL "
                                      "SELECT work_item FROM worker_queue"):
                loads(text, "work")
