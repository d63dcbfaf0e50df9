"""SqliteProvider's statement-saving paths: the fetch part of an ack-and-fetch runs without a
savepoint (a failure reruns the ack alone), the lock check and release are one statement, the
execution row is written only when it changes, the kv merge runs only when there is a delta, an
ack's events go in one multi-row INSERT (a taken id still names the first offending event), and a
status read is one autocommit SELECT."""

from __future__ import annotations

import sqlite3

import pytest

from duroxide_sim.core.events import KeyValueSet
from duroxide_sim.errors import LockLostError, ProviderError
from duroxide_sim.providers import sqlite as sqlite_mod
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.testing.conformance import (
    LOCK, ConformanceClock, act_done, completed_ev, create, fetch, meta, start_item, started,
)


@pytest.fixture
def provider(tmp_path):
    p = SqliteProvider.open(tmp_path / "fewer.db", clock=ConformanceClock())
    yield p
    if not p._closed:
        p._check()
        p.close()


def _ack_fetch(p, item, delta=(), md=None):
    return p.ack_orchestration_item_and_fetch(item.lock_token, item.execution_id, list(delta), [], [], md or meta(),
                                              [], lock_timeout_ms=LOCK)


def _statements(p):
    seen: list[str] = []
    p._shared.set_trace_callback(seen.append)
    return seen


def test_a_fetch_part_failing_after_it_wrote_reruns_the_ack_alone(provider, monkeypatch):
    p = provider
    p.enqueue_for_orchestrator(start_item("a"))
    p.enqueue_for_orchestrator(start_item("b"))
    item = fetch(p)
    real = p._fetch_orch
    calls = []

    def locks_then_fails(*args, **kwargs):
        calls.append(real(*args, **kwargs))  # b gets locked inside the transaction ...
        raise ProviderError("fetch_orchestration_item: boom", operation="fetch")  # ... then the fetch fails

    monkeypatch.setattr(p, "_fetch_orch", locks_then_fails)
    seen = _statements(p)
    assert _ack_fetch(p, item, [started("a")]) is None
    assert len(calls) == 1  # the rerun did not fetch again
    assert not any("SAVEPOINT" in s for s in seen)
    monkeypatch.undo()
    assert p.read("a") == [started("a")]  # the ack is committed
    nxt = fetch(p)  # b's lock from the failed fetch part was rolled back
    assert nxt is not None and nxt.instance == "b"
    p.abandon_orchestration_item(nxt.lock_token, None, True)


def test_multi_row_event_insert_names_the_first_taken_id_and_keeps_nothing(provider):
    p = provider
    create(p, "a")
    p.enqueue_for_orchestrator(act_done("a", 5))
    item = fetch(p)
    with pytest.raises(ProviderError, match="duplicate event_id 1"):
        p.ack_orchestration_item(item.lock_token, 1, [completed_ev("a", 2), started("a")], [], [], meta(), [])
    assert p.read("a") == [started("a")]
    seen = _statements(p)  # the lock is still held: the ack can be retried
    p.ack_orchestration_item(item.lock_token, 1, [completed_ev("a", 2), completed_ev("a", 3)], [], [],
                             meta(status="Completed", output="done"), [])
    assert sum(s.startswith("INSERT INTO history") for s in seen) == 1
    assert [e.event_id for e in p.read("a")] == [1, 2, 3]


def test_lock_check_and_release_are_one_statement(provider):
    if not sqlite_mod._HAS_RETURNING:
        pytest.skip("SQLite < 3.35 keeps the two-statement path")
    p = provider
    create(p, "a")
    p.enqueue_for_orchestrator(act_done("a", 5))
    item = fetch(p)
    seen = _statements(p)
    p.ack_orchestration_item(item.lock_token, 1, [], [], [], meta(), [])
    assert sum("instance_locks" in s for s in seen) == 1
    with pytest.raises(LockLostError):
        p.ack_orchestration_item(item.lock_token, 1, [], [], [], meta(), [])


def _pin(p, inst):
    return p._shared.execute("SELECT duroxide_version_major, duroxide_version_minor, duroxide_version_patch, status "
                             "FROM executions WHERE instance_id = ?", (inst,)).fetchone()


def test_execution_row_written_only_when_it_changes(provider):
    p = provider
    create(p, "a")
    assert _pin(p, "a") == (0, 1, 0, "Running")
    p.enqueue_for_orchestrator(act_done("a", 5))
    item = fetch(p)
    seen = _statements(p)
    p.ack_orchestration_item(item.lock_token, 1, [], [], [], meta(), [])  # same pin, no status
    assert not any("executions" in s for s in seen)
    p.enqueue_for_orchestrator(act_done("a", 6))
    item = fetch(p)
    p.ack_orchestration_item(item.lock_token, 1, [], [], [], meta(pin="0.2.0"), [])  # a new pin is stored
    assert _pin(p, "a") == (0, 2, 0, "Running")
    p.enqueue_for_orchestrator(act_done("a", 7))
    item = fetch(p)
    p.ack_orchestration_item(item.lock_token, 1, [completed_ev("a", 2)], [], [],
                             meta(status="Completed", output="done", pin="0.2.0"), [])
    assert _pin(p, "a") == (0, 2, 0, "Completed")


def test_kv_merge_runs_only_with_a_delta(provider):
    p = provider
    create(p, "a", extra=[KeyValueSet(event_id=2, instance_id="a", execution_id=1, key="k", value="v",
                                      last_updated_at_ms=1)])
    create(p, "b")
    for inst, eid in (("a", 3), ("b", 2)):
        p.enqueue_for_orchestrator(act_done(inst, 9))
        item = fetch(p)
        seen = _statements(p)
        p.ack_orchestration_item(item.lock_token, 1, [completed_ev(inst, eid)], [], [],
                                 meta(status="Completed", output="done"), [])
        assert any("kv_delta" in s for s in seen) == (inst == "a")
    assert p.get_kv_value("a", "k") == "v"
    assert p._shared.execute("SELECT COUNT(*) FROM kv_delta").fetchone()[0] == 0


def test_worker_ack_with_an_unknown_token_changes_nothing(provider):
    p = provider
    with pytest.raises(LockLostError):
        p.ack_work_item("sql-0-999", act_done("a", 1))
    assert p._shared.execute("SELECT COUNT(*) FROM orchestrator_queue").fetchone()[0] == 0
    assert isinstance(p._shared, sqlite3.Connection)


def test_a_status_read_is_one_statement_and_sees_committed_state(provider):
    """read_status runs its single SELECT in autocommit mode (its own consistent snapshot): no
    BEGIN / COMMIT round trips for a waiting client."""
    p = provider
    assert p.read_status("a") is None
    p.enqueue_for_orchestrator(start_item("a"))
    item = fetch(p)
    p.ack_orchestration_item(item.lock_token, item.execution_id, [started("a")], [], [], meta(), [])
    p._conn("read_status")  # this thread's reader connection (created on first use)
    seen: list[str] = []
    p._local.conn.set_trace_callback(seen.append)
    assert p.read_status("a")[0] == "Running"
    assert len(seen) == 1 and seen[0].lstrip().upper().startswith("SELECT"), seen
    assert not p._local.conn.in_transaction  # the statement ran to its end: no snapshot held open
