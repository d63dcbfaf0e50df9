"""SqliteProvider group commit: writes queued while another write holds the writer run in one
transaction, each all or nothing.

The leader's part (``_run_group``) is driven directly with a hand-made batch, so the tests are
deterministic; one threaded test checks that concurrent writes all land exactly once.
"""

from __future__ import annotations

import threading

import pytest

from duroxide_sim.errors import LockLostError, ProviderError
from duroxide_sim.providers import sqlite as sqlite_mod
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.testing.conformance import ConformanceClock, fetch, meta, start_item, started


@pytest.fixture
def provider(tmp_path):
    p = SqliteProvider.open(tmp_path / "group.db", clock=ConformanceClock())
    yield p
    if not p._closed:
        p._check()
        p.close()


def _insert(p, instance):
    def fn(db):
        p._insert_orch(db, start_item(instance), p._now(), p._now())
        return instance
    return fn


def _queued(p):
    with p._tx("test", write=False) as db:
        return sorted(r[0] for r in db.execute("SELECT instance_id FROM orchestrator_queue"))


def _batch(*fns):
    return [sqlite_mod._Write(f"op{i}", fn, None) for i, fn in enumerate(fns)]


def test_a_failing_write_leaves_nothing_and_the_others_commit(provider):
    p = provider
    calls = []

    def failing(db):
        calls.append("failing")
        p._insert_orch(db, start_item("bad"), p._now(), p._now())  # written, then rolled back
        raise ProviderError("boom", operation="op1")

    batch = _batch(_insert(p, "a"), failing, _insert(p, "c"))
    p._run_group(batch)
    assert [w.result for w in batch] == ["a", None, "c"]
    assert batch[0].error is None and batch[2].error is None
    assert isinstance(batch[1].error, ProviderError) and "boom" in str(batch[1].error)
    assert calls == ["failing"]  # the failed write is not run again
    assert _queued(p) == ["a", "c"]


def test_an_sqlite_error_is_mapped_with_the_writes_own_operation(provider):
    p = provider

    def bad_sql(db):
        db.execute("INSERT INTO no_such_table VALUES (1)")

    batch = _batch(_insert(p, "a"), bad_sql)
    p._run_group(batch)
    assert batch[0].error is None
    assert isinstance(batch[1].error, ProviderError) and batch[1].error.operation == "op1"
    assert _queued(p) == ["a"]


def test_lock_checks_run_per_write_in_queue_order(provider):
    p = provider
    p.enqueue_for_orchestrator(start_item("a"))
    item = fetch(p)

    def ack(db):
        return p._ack_orch(db, p._now(), item.lock_token, 1, [started("a")], [], [], meta(), [],
                           "ack_orchestration_item")

    batch = _batch(ack, ack)  # the second ack of one lock token must fail: the first released it
    p._run_group(batch)
    assert batch[0].error is None and batch[0].result == "a"
    assert isinstance(batch[1].error, LockLostError)
    assert p.read("a") == [started("a")]


def test_a_failed_commit_fails_every_write_of_the_group(provider, monkeypatch):
    p = provider
    p._hcache["x"] = (1, 1, ())
    batch = _batch(_insert(p, "a"), _insert(p, "b"))

    def closing(db):
        db.execute("ROLLBACK")  # the transaction is gone: COMMIT fails
        return "c"

    batch.append(sqlite_mod._Write("op2", closing, threading.Event()))
    p._run_group(batch)
    assert all(isinstance(w.error, ProviderError) for w in batch)
    assert all(w.result is None for w in batch)
    assert _queued(p) == []
    assert not p._hcache  # decoded history of the lost transaction is dropped


def test_concurrent_writes_all_commit_exactly_once(provider):
    p = provider
    n_threads, per_thread = 8, 25
    barrier = threading.Barrier(n_threads)
    errors = []

    def run(t):
        barrier.wait()
        try:
            for i in range(per_thread):
                p._group_write("enqueue_for_orchestrator", _insert(p, f"t{t}-{i:03d}"))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert _queued(p) == sorted(f"t{t}-{i:03d}" for t in range(n_threads) for i in range(per_thread))
    assert not p._gc_queue


def test_a_stale_wake_up_neither_loses_nor_doubles_a_later_one(provider):
    """A writer's wake-up lock may hold an unconsumed wake-up (a wait interrupted by Ctrl-C):
    waking it again must not raise, and its next write still waits for its own result."""
    p = provider
    lock = sqlite_mod._thread_wake_lock()
    assert lock.locked()  # no wake-up pending
    sqlite_mod._wake(lock)
    sqlite_mod._wake(lock)  # already pending: not released twice (would raise RuntimeError)
    assert not lock.locked()
    # This thread's next write as a follower: the stale wake-up returns its first wait at once,
    # it sees its write is neither done nor first in line, and waits again for the real one.
    gate = threading.Event()
    entered = threading.Event()

    def slow(db):
        entered.set()
        gate.wait(30)
        return "leader"

    leader = threading.Thread(target=lambda: p._group_write("enqueue_for_orchestrator", slow))
    leader.start()
    assert entered.wait(30)
    result = []
    follower = threading.Thread(target=lambda: result.append(p._group_write("enqueue_for_orchestrator", _insert(p, "f"))))
    # Plant the stale wake-up on the follower thread's own lock before it waits.
    original = sqlite_mod._thread_wake_lock

    planted = []

    def stale_then_original():
        lk = original()
        sqlite_mod._wake(lk)
        planted.append(lk)
        return lk

    sqlite_mod._thread_wake_lock = stale_then_original
    try:
        follower.start()
        # Until the follower has consumed the stale wake-up (its lock is held again).
        while not planted or not planted[0].locked():
            threading.Event().wait(0.001)
    finally:
        sqlite_mod._thread_wake_lock = original
    follower.join(0.2)
    assert follower.is_alive() and result == []  # still waiting for the leader's group
    gate.set()
    leader.join(30)
    follower.join(30)
    assert result == ["f"] and _queued(p) == ["f"] and not p._gc_queue
