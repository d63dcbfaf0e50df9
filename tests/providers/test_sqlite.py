"""SQLite-specific behaviour of SqliteProvider: files, schema and migrations, refusals, error
mapping, several openers of one file (as several processes), awkward instance ids.

The shared provider contract (SPEC §16 A–I) is covered by the conformance suite in
``test_conformance.py``; this module covers what only a database file has.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest

from duroxide_sim.core.events import TimerFiredMsg, dumps
from duroxide_sim.errors import LockLostError, ProviderError
from duroxide_sim.providers import sqlite_schema
from duroxide_sim.providers.base import KvEntry, SessionConfig, TagFilter
from duroxide_sim.providers.sqlite import SCHEMA_VERSION, SqliteProvider, _map_error
from duroxide_sim.testing.conformance import (
    LOCK, ConformanceClock, ack, act, act_done, create, fetch, kv_set, meta, qmsg, run_threads, start_item, started,
    status_ev, timer_created, wfetch,
)

SPEC_TABLES = {
    "instances": {"instance_id", "orchestration_name", "orchestration_version", "current_execution_id",
                  "custom_status", "custom_status_version", "created_at", "updated_at", "parent_instance_id"},
    "executions": {"instance_id", "execution_id", "status", "output", "duroxide_version_major",
                   "duroxide_version_minor", "duroxide_version_patch", "started_at", "completed_at"},
    "history": {"instance_id", "execution_id", "event_id", "event_type", "event_data", "created_at"},
    "orchestrator_queue": {"id", "instance_id", "work_item", "visible_at", "lock_token", "locked_until",
                           "attempt_count", "created_at"},
    "worker_queue": {"id", "work_item", "visible_at", "lock_token", "locked_until", "attempt_count", "created_at",
                     "instance_id", "execution_id", "activity_id", "session_id", "tag"},
    "instance_locks": {"instance_id", "lock_token", "locked_until", "locked_at"},
    "sessions": {"session_id", "worker_id", "locked_until", "last_activity_at"},
    "kv_store": {"instance_id", "key", "value", "last_updated_at_ms"},
    "kv_delta": {"instance_id", "key", "value", "last_updated_at_ms"},
    "schema_version": {"version"},
}


@pytest.fixture
def clock() -> ConformanceClock:
    return ConformanceClock()


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "duroxide.db"


@pytest.fixture
def opened(db_path, clock):
    """Open providers on ``db_path``; all are invariant-checked and closed afterwards."""
    made: list[SqliteProvider] = []

    def open_one(**kw) -> SqliteProvider:
        provider = SqliteProvider.open(db_path, clock=kw.pop("clock", clock), **kw)
        made.append(provider)
        return provider

    yield open_one
    for provider in made:
        if not provider._closed:
            provider._check()
            provider.close()


def raw(path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# --- files and persistence ---------------------------------------------------------------------


class TestPersistence:
    def test_everything_survives_close_and_reopen(self, opened, clock):
        """History, executions, both queues (incl. delayed timers), KV store+delta, custom status,
        sessions and instance metadata survive closing and reopening the file."""
        t0 = clock.now_ms()
        p = opened()
        create(p, "done", extra=[kv_set("done", 2, "k", "stored", ts=7), status_ev("done", 3, "final")],
               status="Completed")
        create(p, "run", extra=[kv_set("run", 2, "d", "delta", ts=8), timer_created("run", 3)],
               worker=[act("run", 4, session="s", tag="gpu")])
        p.enqueue_for_orchestrator(qmsg("run", "queued"))
        p.enqueue_for_orchestrator(TimerFiredMsg(instance="run", execution_id=1, id=3, fire_at_ms=t0 + 5_000),
                                   delay_ms=5_000)
        claimed = p.fetch_work_item(LOCK, session=SessionConfig(owner_id="w1"), tag_filter=TagFilter.ANY)
        p.abandon_work_item(claimed.lock_token)  # session "s" now belongs to w1
        before = (p.read("done"), p.read("run"), p.list_instances(), p.get_instance_info("run"),
                  p.get_execution_info("done", 1), p.get_system_metrics(), p.get_queue_depths(),
                  p.get_kv_all_values("done"), p.get_kv_all_values("run"), p.get_custom_status("done", 0))
        p.close()

        q = opened()
        after = (q.read("done"), q.read("run"), q.list_instances(), q.get_instance_info("run"),
                 q.get_execution_info("done", 1), q.get_system_metrics(), q.get_queue_depths(),
                 q.get_kv_all_values("done"), q.get_kv_all_values("run"), q.get_custom_status("done", 0))
        assert after == before
        assert q.get_custom_status("done", 0) == ("final", 1)
        assert q.next_wakeup_ms() == t0 + 5_000
        item = fetch(q)
        assert item.instance == "run" and item.messages == (qmsg("run", "queued"),)
        assert dict(item.kv_snapshot) == {}  # "d" is still delta of the running execution
        assert q.fetch_work_item(LOCK, session=SessionConfig(owner_id="w2"), tag_filter=TagFilter.ANY) \
            is None  # w1 still owns session "s"
        lease = q.fetch_work_item(LOCK, session=SessionConfig(owner_id="w1"), tag_filter=TagFilter.ANY)
        assert lease.item == act("run", 4, session="s", tag="gpu") and lease.attempt_count == 2
        q.enqueue_for_orchestrator(qmsg("done"))
        assert dict(fetch(q).kv_snapshot) == {"k": KvEntry("stored", 7)}
        ack(q, item, md=meta())
        clock.advance(5_000)
        assert fetch(q).messages == (TimerFiredMsg(instance="run", execution_id=1, id=3, fire_at_ms=t0 + 5_000),)

    def test_a_lock_held_at_close_stays_held_until_it_expires(self, opened, clock):
        """A crashed holder's instance lock is not released by closing: it expires by the clock."""
        p = opened()
        p.enqueue_for_orchestrator(start_item("a"))
        stale = p.fetch_orchestration_item(1_000)
        p.close()  # "crash" before the ack
        q = opened()
        assert fetch(q) is None
        clock.advance(1_000)
        item = fetch(q)
        assert item.instance == "a" and item.attempt_count == 2
        with pytest.raises(LockLostError):
            ack(q, stale, [started("a")], md=meta())
        ack(q, item, [started("a")], md=meta())
        assert q.read("a") == [started("a")]

    def test_closed_provider_refuses_calls_and_context_manager_closes(self, db_path, clock):
        """close() (or leaving a with-block) closes every connection; later calls fail clearly."""
        with SqliteProvider.open(db_path, clock=clock) as p:
            p.enqueue_for_orchestrator(start_item("a"))
            seen = []
            t = threading.Thread(target=lambda: seen.append(p.get_queue_depths().orchestrator_queue))
            t.start()
            t.join()
            assert seen == [1]  # another thread used its own connection
        with pytest.raises(ProviderError, match="closed"):
            p.read("a")
        with SqliteProvider.open(db_path, clock=clock) as q:
            assert q.get_queue_depths().orchestrator_queue == 1

    def test_no_clock_is_a_clear_error_and_bind_clock_fixes_it(self, db_path, clock):
        """Time comes only from the injected clock; without one, operations say how to fix it."""
        p = SqliteProvider.in_memory()
        with pytest.raises(ProviderError, match="bind_clock"):
            p.enqueue_for_orchestrator(start_item("a"))
        p.bind_clock(clock)
        p.bind_clock(ConformanceClock(0))  # never replaces a bound clock
        p.enqueue_for_orchestrator(start_item("a"))
        assert fetch(p).instance == "a" and p.clock is clock
        p.close()

    def test_rows_hold_canonical_json_and_kind(self, opened, db_path):
        """History rows store events.dumps() text with event_type = kind; queues store work items
        the same way; times are integer ms."""
        p = opened()
        create(p, "a", extra=[timer_created("a", 2)], worker=[act("a", 3)])
        rows = raw(db_path).execute("SELECT event_type, event_data, created_at FROM history ORDER BY event_id")
        rows = rows.fetchall()
        assert [(r[0], r[1]) for r in rows] == [("OrchestrationStarted", dumps(started("a"))),
                                                ("TimerCreated", dumps(timer_created("a", 2)))]
        assert all(isinstance(r[2], int) for r in rows)
        assert raw(db_path).execute("SELECT work_item, instance_id, execution_id, activity_id FROM worker_queue"
                                    ).fetchall() == [(dumps(act("a", 3)), "a", 1, 3)]


# --- schema and migrations ---------------------------------------------------------------------


class TestSchema:
    def test_new_file_gets_the_spec_schema_wal_and_version(self, opened, db_path):
        """A new file is created with every SPEC §15.2 table and column, WAL mode and schema_version."""
        opened()
        conn = raw(db_path)
        for table, columns in SPEC_TABLES.items():
            found = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
            assert columns <= found, (table, columns - found)
        # Every migration applied in turn, each recorded.
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        index = {r[1] for r in conn.execute("PRAGMA index_list(worker_queue)")}
        assert "idx_worker_activity" in index

    def test_connection_settings(self, opened):
        """Each connection runs with busy_timeout 60 s, foreign keys on and synchronous=NORMAL."""
        p = opened()
        conn = p._conn("test")
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 60_000
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL

    def test_migrates_an_empty_file_and_reopens_without_remigrating(self, opened, db_path):
        """An existing empty file is migrated from version 0; reopening applies nothing twice."""
        db_path.write_bytes(b"")
        p = opened()
        create(p, "a")
        p.close()
        q = opened()
        assert q.read("a") == [started("a")]
        assert raw(db_path).execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)]

    def test_a_later_migration_upgrades_in_place(self, monkeypatch, opened, db_path):
        """A database at version 1 is upgraded to a new version on open, keeping its data."""
        p = opened()
        create(p, "a")
        p.close()
        nxt = SCHEMA_VERSION + 1
        monkeypatch.setattr(sqlite_schema, "MIGRATIONS", (*sqlite_schema.MIGRATIONS,
                            (nxt, ("ALTER TABLE instances ADD COLUMN note TEXT",))))
        monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", nxt)
        q = opened()
        assert q.read("a") == [started("a")]
        conn = raw(db_path)
        assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(instances)")}
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, nxt + 1)]

    def test_a_version_1_database_upgrades_to_the_latest_keeping_held_locks(self, monkeypatch, opened, db_path, clock):
        """Migrations 2 and 3 (fewer pages per commit) on a database written by version 1: the
        indexes on the queues' lock_token columns are dropped and instance_locks is rebuilt
        WITHOUT ROWID. Queued messages, history and an instance lock held across the upgrade
        survive (the held token still acks; the lock stays exclusive until then). A work-item
        lease taken before the upgrade has a token without its row id: it is lost, like any
        lost lock, and its activity is fetchable again once the lock expires."""
        with monkeypatch.context() as m:
            m.setattr(sqlite_schema, "MIGRATIONS", sqlite_schema.MIGRATIONS[:1])
            m.setattr(sqlite_schema, "SCHEMA_VERSION", 1)
            old = opened()
            create(old, "a", worker=[act("a", 5)])
            lease = wfetch(old)
            assert lease is not None and lease.item.id == 5
            old.enqueue_for_orchestrator(act_done("a", 2))
            held = fetch(old)
            assert held is not None and held.instance == "a"
            old.enqueue_for_orchestrator(start_item("b"))
            old.close()
        conn = raw(db_path)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'idx_%_token'")} == {
            "idx_orch_token", "idx_worker_token"}
        # What version-1 code wrote: a counter token without the row id.
        old_token = "sql-1-77"
        conn.execute("UPDATE worker_queue SET lock_token = ? WHERE lock_token = ?", (old_token, lease.lock_token))
        conn.close()

        new = opened()
        conn = raw(db_path)
        assert conn.execute("SELECT version FROM schema_version ORDER BY version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name LIKE 'idx_%_token'").fetchall() == []
        sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'instance_locks'").fetchone()[0]
        assert "WITHOUT ROWID" in sql and "instance_locks_v2" not in sql
        assert {r[1] for r in conn.execute("PRAGMA table_info(instance_locks)")} == SPEC_TABLES["instance_locks"]
        assert conn.execute("SELECT instance_id, lock_token FROM instance_locks").fetchall() == [("a", held.lock_token)]
        conn.close()
        other = fetch(new)  # "a" is still locked: only "b" can be fetched
        assert other is not None and other.instance == "b"
        ack(new, held, [timer_created("a", 2)])  # the token taken before the upgrade still acks
        assert [e.event_id for e in new.read("a")] == [1, 2]
        with pytest.raises(LockLostError):
            new.ack_work_item(old_token, act_done("a", 5))
        assert wfetch(new) is None  # still locked until it expires...
        clock.advance(LOCK + 1)
        again = wfetch(new)  # ...then delivered again, with a token that names its row
        assert again is not None and again.item.id == 5 and again.lock_token.endswith("-w1")
        new.ack_work_item(again.lock_token, act_done("a", 5))
        assert wfetch(new) is None

    def test_a_failing_migration_rolls_back_completely(self, monkeypatch, opened, db_path):
        """Migrations run in one transaction: a failing step leaves the database untouched."""
        p = opened()
        create(p, "a")
        p.close()
        nxt = SCHEMA_VERSION + 1
        monkeypatch.setattr(sqlite_schema, "MIGRATIONS", (*sqlite_schema.MIGRATIONS,
                            (nxt, ("CREATE TABLE extra (x INTEGER)", "THIS IS NOT SQL"))))
        monkeypatch.setattr(sqlite_schema, "SCHEMA_VERSION", nxt)
        with pytest.raises(ProviderError, match="open"):
            SqliteProvider.open(db_path)
        conn = raw(db_path)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [
            (v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []

    def test_newer_schema_is_refused_naming_both_versions(self, opened, db_path):
        """A database written by a newer duroxide_sim is refused, naming both versions."""
        opened().close()
        raw(db_path).execute("INSERT INTO schema_version (version) VALUES (99)")
        with pytest.raises(ProviderError, match=rf"schema version 99.*version {SCHEMA_VERSION} at most") as err:
            SqliteProvider.open(db_path)
        assert err.value.retryable is False
        assert (err.value.found_version, err.value.supported_version) == (99, SCHEMA_VERSION)

    def test_not_a_database_is_refused(self, db_path):
        """A file that is not SQLite is refused with a message saying so, and left unchanged."""
        junk = b"this is not a SQLite database, just some bytes\n" * 100
        db_path.write_bytes(junk)
        with pytest.raises(ProviderError, match="is not a SQLite database") as err:
            SqliteProvider.open(db_path)
        assert err.value.retryable is False
        assert db_path.read_bytes() == junk

    def test_read_only_file_is_refused(self, opened, db_path):
        """A read-only database file is refused up front with a clear message."""
        opened().close()
        os.chmod(db_path, 0o444)
        try:
            with pytest.raises(ProviderError, match="read-only") as err:
                SqliteProvider.open(db_path)
            assert err.value.retryable is False
        finally:
            os.chmod(db_path, 0o644)

    def test_missing_directory_is_a_clear_error(self, tmp_path):
        """A path whose directory does not exist fails with a ProviderError, not a crash."""
        with pytest.raises(ProviderError, match="open"):
            SqliteProvider.open(tmp_path / "no" / "such" / "dir.db")


class TestErrorMapping:
    def test_busy_is_retryable(self, db_path):
        """'database is locked' (another writer holds the lock) maps to a retryable ProviderError."""
        holder, other = raw(db_path), sqlite3.connect(db_path, isolation_level=None, timeout=0)
        holder.execute("CREATE TABLE t (x)")
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError) as exc:
            other.execute("BEGIN IMMEDIATE")
        mapped = _map_error(exc.value, "fetch_work_item", "x.db")
        assert mapped.retryable is True and mapped.operation == "fetch_work_item"
        holder.execute("ROLLBACK")

    def test_constraint_is_permanent(self):
        """Constraint violations map to a permanent ProviderError."""
        conn = sqlite3.connect(":memory:")
        conn.execute("CREATE TABLE t (x PRIMARY KEY)")
        conn.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.IntegrityError) as exc:
            conn.execute("INSERT INTO t VALUES (1)")
        assert _map_error(exc.value, "ack", "x.db").retryable is False

    def test_sqlite_read_only_error_is_permanent_and_explained(self, opened, db_path):
        """SQLite's own read-only error (e.g. a non-root user on a 0444 file) is permanent and clear."""
        opened().close()
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
        with pytest.raises(sqlite3.OperationalError) as exc:
            conn.execute("CREATE TABLE t (x)")
        mapped = _map_error(exc.value, "ack", repr(str(db_path)))
        assert mapped.retryable is False and "read-only" in str(mapped) and "write access" in str(mapped)

    def test_constraint_naming_a_lock_column_is_still_permanent(self):
        """A constraint message that mentions ``locked_until`` is not mistaken for 'locked'."""
        exc = sqlite3.IntegrityError("NOT NULL constraint failed: instance_locks.locked_until")
        assert _map_error(exc, "fetch", "x").retryable is False
        assert _map_error(sqlite3.OperationalError("database table is locked"), "fetch", "x").retryable is True

    def test_open_memory_path_is_the_in_memory_provider(self, clock):
        """open(':memory:') behaves like in_memory() (one shared connection, not one per thread)."""
        with SqliteProvider.open(":memory:", clock=clock) as p:
            p.enqueue_for_orchestrator(start_item("a"))
            seen = []
            t = threading.Thread(target=lambda: seen.append(p.get_queue_depths().orchestrator_queue))
            t.start()
            t.join()
            assert seen == [1]

    def test_other_operational_errors_are_retryable(self):
        """Unknown failures are retryable (SPEC §15.1)."""
        assert _map_error(sqlite3.OperationalError("disk I/O error"), "op", "x").retryable is True

    def test_failed_write_inside_an_operation_rolls_back(self, opened, db_path):
        """A SQLite error in the middle of an operation leaves nothing behind (one transaction)."""
        p = opened()
        create(p, "a")
        p.enqueue_for_orchestrator(qmsg("a"))
        item = fetch(p)
        # a trigger makes the history insert of this ack fail after the queue delete ran
        raw(db_path).execute("CREATE TRIGGER boom BEFORE INSERT ON history WHEN NEW.event_id = 2 "
                             "BEGIN SELECT RAISE(ABORT, 'planted failure'); END")
        with pytest.raises(ProviderError, match="planted failure"):
            ack(p, item, [timer_created("a", 2)], worker=[act("a", 2)], md=meta())
        raw(db_path).execute("DROP TRIGGER boom")
        assert p.read("a") == [started("a")] and p.get_queue_depths().worker_queue == 0
        assert fetch(p) is None  # lock still held: the rollback undid nothing else either
        ack(p, item, [timer_created("a", 2)], md=meta())
        assert [e.event_id for e in p.read("a")] == [1, 2]


# --- several openers of one file ---------------------------------------------------------------


class TestSharedFile:
    def test_two_providers_never_fetch_the_same_instance(self, opened):
        """Two provider objects on one file (as two processes) never hold one instance at once."""
        p1, p2 = opened(), opened()
        for i in range(30):
            p1.enqueue_for_orchestrator(start_item(f"i{i:02}"))
            p2.enqueue_for_orchestrator(qmsg(f"i{i:02}"))
        assert fetch(p1).instance == "i00"
        assert fetch(p2).instance == "i01"  # i00 is locked by p1
        got: list[str] = []
        guard = threading.Lock()
        barrier = threading.Barrier(6)

        def worker(p):
            barrier.wait()
            while (item := p.fetch_orchestration_item(LOCK)) is not None:
                with guard:
                    got.append(item.instance)

        run_threads([lambda p=p: worker(p) for p in (p1, p2) * 3])  # re-raises any thread's error
        assert sorted(got) == [f"i{i:02}" for i in range(2, 30)]

    def test_two_providers_never_lease_the_same_activity(self, opened):
        """Worker rows, too, go to exactly one of several openers."""
        p1, p2 = opened(), opened()
        for i in range(40):
            p1.enqueue_for_worker(act("a", i))
        got: list[int] = []
        guard = threading.Lock()
        barrier = threading.Barrier(6)

        def worker(p):
            barrier.wait()
            while (lease := p.fetch_work_item(LOCK)) is not None:
                with guard:
                    got.append(lease.item.id)

        run_threads([lambda p=p: worker(p) for p in (p1, p2) * 3])
        assert sorted(got) == list(range(40))

    def test_lock_takeover_after_expiry_across_providers(self, opened, clock):
        """An expired lock is taken over by the other opener; the old holder's ack and renew fail."""
        p1, p2 = opened(), opened()
        create(p1, "a")
        p1.enqueue_for_orchestrator(qmsg("a"))
        old = p1.fetch_orchestration_item(1_000)
        assert fetch(p2) is None
        clock.advance(1_000)
        new = fetch(p2)
        assert new.instance == "a" and new.attempt_count == 2 and new.lock_token != old.lock_token
        with pytest.raises(LockLostError):
            ack(p1, old, [timer_created("a", 2)], md=meta())
        with pytest.raises(LockLostError):
            p1.renew_orchestration_item_lock(old.lock_token, 1_000)
        ack(p2, new, [timer_created("a", 2)], md=meta())
        assert [e.event_id for e in p1.read("a")] == [1, 2]
        # the same for activity leases
        p1.enqueue_for_worker(act("a", 3))
        stale = p1.fetch_work_item(100)
        clock.advance(100)
        stolen = wfetch(p2)
        assert stolen.item.id == 3 and stolen.attempt_count == 2
        with pytest.raises(LockLostError):
            p1.ack_work_item(stale.lock_token, act_done("a", 3))
        p2.ack_work_item(stolen.lock_token, act_done("a", 3))
        assert fetch(p1).messages == (act_done("a", 3),)

    def test_tokens_are_unique_across_openers_and_deterministic(self, opened, clock):
        """Lock tokens come from a per-open id allocated by the database plus a counter: distinct
        across openers of one file, identical across fresh databases (no randomness)."""
        p1, p2 = opened(), opened()
        p1.enqueue_for_orchestrator(start_item("a"))
        p1.enqueue_for_orchestrator(start_item("b"))
        t1, t2 = fetch(p1).lock_token, fetch(p2).lock_token
        assert t1 != t2 and t1.startswith("sql-1-") and t2.startswith("sql-2-")

        def tokens():
            m = SqliteProvider.in_memory(clock=ConformanceClock())
            m.enqueue_for_orchestrator(start_item("x"))
            m.enqueue_for_worker(act("x", 1))
            out = [fetch(m).lock_token, wfetch(m).lock_token]
            m.close()
            return out

        assert tokens() == tokens() == ["sql-1-1", "sql-1-2-w1"]  # a work token also names its row

    def test_another_process_sees_the_lock(self, opened, db_path, clock):
        """A real second process opening the same file skips the instance this process holds."""
        p = opened()
        p.enqueue_for_orchestrator(start_item("held"))
        p.enqueue_for_orchestrator(start_item("free"))
        assert p.fetch_orchestration_item(10**9).instance == "held"
        script = textwrap.dedent(f"""
            from duroxide_sim.providers.sqlite import SqliteProvider
            class Clock:
                def now_ms(self):
                    return {clock.now_ms()}
            with SqliteProvider.open({str(db_path)!r}, clock=Clock()) as p:
                item = p.fetch_orchestration_item(30_000)
                print(item.instance, item.lock_token, p.fetch_orchestration_item(30_000))
        """)
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                             cwd=os.getcwd())
        assert out.returncode == 0, out.stderr
        instance, token, nothing = out.stdout.split()
        assert (instance, nothing) == ("free", "None") and token.startswith("sql-2-")
        assert fetch(p) is None  # both held now (the other process never acked)


# --- awkward ids, test hook ----------------------------------------------------------------------

AWKWARD_IDS = [
    "it's \"quoted\" `back` [brackets]",
    "ünïcødé-名前-🎉",
    "x" * 10_240,
    "semi;colon'); DROP TABLE instances; --",
    "tab\tnew\nline and %_ wildcards",
    "",
]


@pytest.mark.parametrize("inst", AWKWARD_IDS, ids=["quotes", "unicode", "10KB", "sql", "whitespace", "empty"])
def test_awkward_instance_ids_round_trip(opened, inst):
    """Instance ids with quotes, unicode, SQL text or 10 KB length are stored and found exactly."""
    p = opened()
    create(p, "other")
    create(p, inst, extra=[kv_set(inst, 2, "k", inst), status_ev(inst, 3, inst)], worker=[act(inst, 4)])
    p.enqueue_for_orchestrator(qmsg(inst, inst))
    item = fetch(p)
    assert item.instance == inst and item.messages == (qmsg(inst, inst),)
    assert item.history[0] == started(inst)
    ack(p, item, md=meta())
    assert wfetch(p).item.instance == inst
    assert p.get_kv_value(inst, "k") == inst and p.get_custom_status(inst, 0) == (inst, 1)
    assert p.get_instance_info(inst).instance_id == inst and set(p.list_instances()) == {inst, "other"}
    assert p.delete_instance(inst, force=True).instances_deleted == 1
    assert p.list_instances() == ["other"] and p.read(inst) == []


def test_corrupt_history_hook_writes_invalid_json_and_repairs(opened, db_path):
    """_corrupt_history makes the stored rows invalid JSON; read() reports it; error=None repairs."""
    p = opened()
    create(p, "a", extra=[timer_created("a", 2)])
    p._corrupt_history("a", "planted")
    for (text,) in raw(db_path).execute("SELECT event_data FROM history WHERE instance_id = 'a'"):
        with pytest.raises(ValueError):
            json.loads(text)
    with pytest.raises(ProviderError, match="deserialization failed"):
        p.read("a")
    p._corrupt_history("a", None)
    assert p.read("a") == [started("a"), timer_created("a", 2)]
    with pytest.raises(ProviderError, match="no history"):
        p._corrupt_history("nope")


def test_check_detects_a_broken_invariant(opened, db_path):
    """_check() fails on a worker row whose lock token has no expiry."""
    p = opened()
    p.enqueue_for_worker(act("a", 1))
    p._check()
    raw(db_path).execute("UPDATE worker_queue SET lock_token = 'x'")
    with pytest.raises(AssertionError):
        p._check()
    raw(db_path).execute("UPDATE worker_queue SET lock_token = NULL")


# --- the runtime on SQLite -----------------------------------------------------------------------


def _parity_run(make_provider):
    from duroxide_sim import Client, Runtime, RuntimeOptions
    from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

    clock = SimClock()
    provider = make_provider(clock)
    runtime = Runtime(provider, RuntimeOptions(), clock=clock, ids=SequentialIds())
    driver = SequentialDriver(runtime, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    runtime.register_activity("Hello", lambda ctx, x: f"hi {x}")

    def child(ctx, x):
        yield ctx.schedule_timer(1_000)
        return x * 2

    def parent(ctx, x):
        ctx.set_kv_value("k", f"v{x}")
        ctx.set_custom_status(f"round {x}")
        a = yield ctx.schedule_activity("Hello", x)
        b = yield ctx.schedule_sub_orchestration("Child", 21)
        e = yield ctx.wait_for_event("go")
        if x < 2:
            yield ctx.continue_as_new(x + 1)
        return [a, b, e]

    runtime.register_orchestration("Child", child)
    runtime.register_orchestration("Parent", parent)
    client.start_orchestration("p1", "Parent", 0)
    for _ in range(3):
        driver.run_until_quiet()
        client.raise_event("p1", "go", "ok")
    status = client.wait_for_orchestration("p1", 10**9)
    histories = {i: [provider.read_with_execution(i, e) for e in provider.list_executions(i)]
                 for i in provider.list_instances()}
    out = (status.status, status.output, client.get_kv_value("p1", "k"), provider.get_custom_status("p1", 0),
           histories, clock.now_ms())
    if hasattr(provider, "close"):
        provider._check()
        provider.close()
    return out


def test_runtime_gives_identical_histories_on_sqlite_and_memory(tmp_path):
    """The real runtime (sim clock, sequential driver) produces the same histories, KV, custom
    status and virtual end time on SQLite (memory and file) as on the in-memory provider."""
    from duroxide_sim import InMemoryProvider

    reference = _parity_run(InMemoryProvider)
    assert reference[:4] == ("Completed", ["hi 2", 42, "ok"], "v2", ("round 2", 3))
    assert _parity_run(lambda c: SqliteProvider.in_memory(clock=c)) == reference
    assert _parity_run(lambda c: SqliteProvider.open(tmp_path / "parity.db", clock=c)) == reference


@pytest.mark.realtime
def test_production_driver_on_a_sqlite_file(tmp_path):
    """The thread-based production driver (wall clock, 4+4 threads, per-thread connections)
    runs fan-out orchestrations to completion on a SQLite file."""
    from duroxide_sim import Client, Runtime, RuntimeOptions

    provider = SqliteProvider.open(tmp_path / "live.db")
    runtime = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5, orchestration_concurrency=4,
                                               worker_concurrency=4))
    runtime.register_activity("Add", lambda ctx, x: x + 1)

    def fan_out(ctx, x):
        results = yield ctx.all([ctx.schedule_activity("Add", i) for i in range(5)])
        yield ctx.schedule_timer(10)
        return sum(r["ok"] for r in results) + x

    runtime.register_orchestration("FanOut", fan_out)
    runtime.start()
    try:
        client = Client(provider)
        for i in range(10):
            client.start_orchestration(f"i{i}", "FanOut", i)
        assert [client.wait_for_orchestration(f"i{i}", 30_000).output for i in range(10)] == list(range(15, 25))
    finally:
        runtime.shutdown(2_000)
    provider._check()
    provider.close()


def test_a_work_token_names_its_row_and_only_the_current_token_of_that_row_works(opened):
    """Acks, renewals and abandons of activity leases find the row by the id at the end of the
    token (schema version 3 has no index on the token): a token naming another row, and tokens
    that are not ours at all, are unknown tokens - LockLostError, nothing changes."""
    p = opened()
    create(p, "a", worker=[act("a", 2), act("a", 3)])
    first, second = wfetch(p), wfetch(p)
    assert (first.item.id, second.item.id) == (2, 3)
    head, _, rid = first.lock_token.rpartition("-w")
    assert rid.isdigit() and head.startswith("sql-")
    other_rid = second.lock_token.rpartition("-w")[2]
    forged = [f"{head}-w{other_rid}", "", "x", "-w1", f"{head}-w", f"{head}-wabc", f"{head}-w" + "9" * 30,
              f"{head}-w-1", f"{head}-w١", f"{head}-w {rid}"]
    for token in forged:
        with pytest.raises(LockLostError):
            p.ack_work_item(token, act_done("a", 2))
        with pytest.raises(LockLostError):
            p.renew_work_item_lock(token, 1_000)
        with pytest.raises(LockLostError):
            p.abandon_work_item(token)
    assert wfetch(p) is None  # both still locked by their real tokens
    p.ack_work_item(second.lock_token, act_done("a", 3))
    p.ack_work_item(first.lock_token, act_done("a", 2))
    assert fetch(p).messages == (act_done("a", 3), act_done("a", 2))
