"""SqliteProvider's background WAL checkpoints (``_Checkpointer`` in providers/sqlite.py).

A file database's commits append to the write-ahead log; a checkpoint copies the log back into
the database file and syncs it. The provider runs those checkpoints in a thread of its own, so
the committing writer (the group-commit leader every other writer waits for) never waits for
the checkpoint's fsyncs; the writer's own automatic checkpoint is only a backstop at a much
larger log. These tests pin what a user can observe: committed work reaches the database file
without anybody else checkpointing, the thread runs only while a checkpoint is due (an idle
provider owns none), and a failed checkpointer leaves the provider working (the backstop takes
over).
"""

from __future__ import annotations

import gc
import logging
import shutil
import sqlite3
import threading
import time
import weakref

import pytest

from duroxide_sim.providers import sqlite as sqlite_mod
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.testing.conformance import ConformanceClock, start_item

THREAD = "duroxide-sqlite-checkpoint"


def _checkpoint_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD and t.is_alive()]


def _queued_in_file_alone(db_path, tmp_path) -> int:
    """Rows of orchestrator_queue in the database FILE, ignoring its write-ahead log: a copy of
    the main file without its -wal, opened immutable, sees only checkpointed transactions."""
    copy = tmp_path / "main-file-only.db"
    shutil.copyfile(db_path, copy)
    conn = sqlite3.connect(f"{copy.as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        return conn.execute("SELECT COUNT(*) FROM orchestrator_queue").fetchone()[0]
    finally:
        conn.close()


def _queued_rows(db_path, connect=sqlite3.connect) -> int:
    """Rows of orchestrator_queue as any reader sees them (the database file and its log).
    ``connect`` is bound when this module loads: the real one, even where a test replaces it."""
    raw = connect(db_path)
    try:
        return raw.execute("SELECT COUNT(*) FROM orchestrator_queue").fetchone()[0]
    finally:
        raw.close()


def _wait_for(predicate, what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.01)


def _enqueue(provider: SqliteProvider, n: int, prefix: str = "i") -> None:
    for k in range(n):  # one commit each
        provider.enqueue_for_orchestrator(start_item(f"{prefix}{k}"))


def test_committed_work_reaches_the_database_file_through_the_background_thread(tmp_path) -> None:
    db_path = tmp_path / "d.db"
    provider = SqliteProvider.open(db_path, clock=ConformanceClock())
    try:
        writer_backstop = provider._shared.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert writer_backstop == sqlite_mod._CHECKPOINT_BACKSTOP_PAGES > 1000  # SQLite's default: 1,000
        assert provider._checkpointer is not None and provider._checkpointer.checkpoints == 0
        n = 3 * sqlite_mod._CHECKPOINT_EVERY
        _enqueue(provider, n)
        # Far below the writer's backstop (a few pages per commit): only the background thread
        # checkpoints here, and what it copied is in the main file.
        _wait_for(lambda: provider._checkpointer.checkpoints >= 1, "a background checkpoint")
        in_file = _queued_in_file_alone(db_path, tmp_path)
        assert sqlite_mod._CHECKPOINT_EVERY <= in_file <= n, in_file
        assert _queued_rows(db_path) == n
    finally:
        provider.close()


def test_a_thread_runs_only_while_a_checkpoint_is_due(tmp_path) -> None:
    before = len(_checkpoint_threads())
    provider = SqliteProvider.open(tmp_path / "d.db", clock=ConformanceClock())
    assert len(_checkpoint_threads()) == before  # an idle provider owns no thread
    _enqueue(provider, sqlite_mod._CHECKPOINT_EVERY - 1)
    assert len(_checkpoint_threads()) == before and provider._checkpointer.checkpoints == 0
    _enqueue(provider, 1)  # the commit that makes a checkpoint due
    _wait_for(lambda: provider._checkpointer.checkpoints == 1, "the checkpoint")
    _wait_for(lambda: len(_checkpoint_threads()) == before, "its thread to end")
    _enqueue(provider, 5 * sqlite_mod._CHECKPOINT_EVERY)
    provider.close()  # waits for a checkpoint still running
    assert len(_checkpoint_threads()) == before
    assert 2 <= provider._checkpointer.checkpoints <= 6
    assert provider._checkpointer._conn is None  # its connection closed with the provider
    assert not (tmp_path / "d.db-wal").exists()  # the last connection checkpointed and removed the log
    provider.close()  # idempotent
    # In-memory databases have no write-ahead log to checkpoint.
    memory = SqliteProvider.in_memory(clock=ConformanceClock())
    try:
        assert memory._checkpointer is None
    finally:
        memory.close()


def test_an_unclosed_provider_is_not_kept_alive_by_its_checkpointer(tmp_path) -> None:
    provider = SqliteProvider.open(tmp_path / "d.db", clock=ConformanceClock())
    _enqueue(provider, sqlite_mod._CHECKPOINT_EVERY)
    checkpointer = provider._checkpointer
    _wait_for(lambda: checkpointer.checkpoints == 1, "the checkpoint")
    assert checkpointer._conn is not None
    ref = weakref.ref(provider)
    del provider
    gc.collect()
    assert ref() is None
    assert checkpointer._conn is None and checkpointer._stopped  # closed when the provider was collected


def test_a_failing_checkpointer_leaves_the_writer_checkpointing_at_its_backstop(tmp_path, monkeypatch, caplog) -> None:
    """Plant a checkpointer that cannot open its connection: the failure is logged once, the
    thread ends, every write still commits, and the writer's backstop checkpoint (made small
    here) still copies the log into the file."""
    real_connect = sqlite3.connect

    def refusing(*args, **kwargs):
        if threading.current_thread().name == THREAD:
            raise sqlite3.OperationalError("unable to open database file (planted)")
        return real_connect(*args, **kwargs)

    monkeypatch.setattr(sqlite_mod, "_CHECKPOINT_BACKSTOP_PAGES", 64)
    monkeypatch.setattr(sqlite_mod.sqlite3, "connect", refusing)
    db_path = tmp_path / "d.db"
    caplog.set_level(logging.WARNING, logger=sqlite_mod.__name__)
    provider = SqliteProvider.open(db_path, clock=ConformanceClock())
    try:
        n = 4 * sqlite_mod._CHECKPOINT_EVERY
        _enqueue(provider, n)
        _wait_for(lambda: provider._checkpointer._failed, "the planted failure")
        _wait_for(lambda: not _checkpoint_threads(), "the failed thread to end")
        warnings = [r for r in caplog.records if "background checkpoint" in r.getMessage()]
        assert len(warnings) == 1 and "planted" in warnings[0].getMessage()
        assert provider._checkpointer.checkpoints == 0
        _enqueue(provider, 200, prefix="after")
        assert _queued_in_file_alone(db_path, tmp_path) > 0  # the writer's backstop checkpointed
        assert _queued_rows(db_path) == n + 200
    finally:
        provider.close()


@pytest.mark.parametrize("backstop_only", [False, True])
def test_the_log_stays_far_below_the_backstop_while_the_thread_works(tmp_path, monkeypatch, backstop_only) -> None:
    """With the thread working the log is copied back and restarted every few dozen commits,
    so the -wal file stays small; with the thread planted broken (``backstop_only``) the log
    grows to the writer's backstop before anything is copied back. The same writes, paced so
    a checkpoint can finish between bursts, tell the two apart."""
    if backstop_only:
        monkeypatch.setattr(sqlite_mod._Checkpointer, "committed", lambda self: None)
    db_path = tmp_path / "d.db"
    provider = SqliteProvider.open(db_path, clock=ConformanceClock())
    page = provider._shared.execute("PRAGMA page_size").fetchone()[0]
    try:
        every = sqlite_mod._CHECKPOINT_EVERY
        for burst in range(40):
            _enqueue(provider, every, prefix=f"b{burst}-")
            if not backstop_only:
                _wait_for(lambda: provider._checkpointer.checkpoints >= burst + 1, "the burst's checkpoint")
        wal_pages = (tmp_path / "d.db-wal").stat().st_size // (page + 24)
    finally:
        provider.close()
    if backstop_only:
        assert wal_pages > sqlite_mod._CHECKPOINT_BACKSTOP_PAGES // 2, wal_pages
    else:
        assert wal_pages < sqlite_mod._CHECKPOINT_BACKSTOP_PAGES // 8, wal_pages


def test_a_thread_that_cannot_start_fails_no_commit(tmp_path, monkeypatch, caplog) -> None:
    """Plant "can't start new thread" (a process at its thread limit): the commit that made the
    checkpoint due is still reported as done (it is committed), the failure is logged, and later
    commits do not try again."""
    starts: list[str] = []

    def refuse(self) -> None:
        starts.append(self.name)
        raise RuntimeError("can't start new thread (planted)")

    provider = SqliteProvider.open(tmp_path / "d.db", clock=ConformanceClock())
    try:
        caplog.set_level(logging.WARNING, logger=sqlite_mod.__name__)
        monkeypatch.setattr(threading.Thread, "start", refuse)
        n = 3 * sqlite_mod._CHECKPOINT_EVERY
        _enqueue(provider, n)  # every commit returns normally
        assert starts == [THREAD]
        assert provider._checkpointer._failed
        assert [r for r in caplog.records if "could not start" in r.getMessage()]
        monkeypatch.undo()
        assert _queued_rows(tmp_path / "d.db") == n
    finally:
        provider.close()
