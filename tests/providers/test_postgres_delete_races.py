"""A forced delete racing a fetch or a worker ack of the same instance on PostgreSQL (SPEC §14,
§16 F20/F21). Both were found by test_postgres_concurrency_journeys' forced-delete test, which
failed now and then under load; here each interleaving is forced.

A fetch inserts the instance's lock row and tags its messages inside its own transaction; a
forced delete running at that moment did not see the uncommitted lock row, deleted everything
else once the fetch committed, and left the fetch's lock row behind. The turn then acked on that
lock and wrote the deleted instance back: history without its ``OrchestrationStarted`` and a
status (seen as an instance "written back as Failed" under load, in
test_postgres_concurrency_journeys). The delete now takes the fetchers' per-instance advisory
lock first, so it runs wholly before or wholly after a fetch: either the fetch finds nothing, or
the delete removes the fetch's lock row and the turn's ack fails with ``LockLostError``.

A worker's ack locks its activity row, deletes it and queues the completion for the
orchestrator. A forced delete running beside it removed the orchestrator queue rows first (not
seeing the uncommitted completion), then waited for the activity row, and committed after the
ack: the completion stayed behind as an orphan, and a new instance started with the same id
received it (``nondeterministic: no matching schedule for completion``). The delete now removes
activity rows before orchestrator messages, so it waits for such an ack and then removes what
the ack queued.

Each interleaving is forced, not hoped for: the provider call is paused at the point named
until the delete is seen waiting for a lock on the server.
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest

from duroxide_sim.errors import LockLostError
from duroxide_sim.providers.base import ExecutionMetadata
from duroxide_sim.providers.postgres import PostgresProvider
from duroxide_sim.testing.conformance import LOCK, ConformanceClock, act, act_done, create, qmsg, start_item


@pytest.fixture
def two_objects(pg_url, pg_schema):
    """Two provider objects (two processes) on one fresh schema and one clock."""
    schema = pg_schema("delrace")
    clock = ConformanceClock()
    a = PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)
    b = PostgresProvider.connect_with_schema(pg_url, schema, clock=clock)
    yield a, b, clock
    a.close()
    b.close()


def _wait_for_a_blocked_backend(url: str, timeout_s: float = 10.0) -> bool:
    """True once some backend of this database waits for a lock (the delete, blocked)."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                                   "WHERE NOT l.granted AND a.datname = current_database()").fetchone()[0]
            if waiting:
                return True
            time.sleep(0.02)
    return False


class _DeleteWhilePaused:
    """Wraps a provider method: at its first call (before it runs, or with ``after`` once it
    has returned), start ``b.delete_instance(instance, force=True)`` in a thread and wait until
    the server shows a backend waiting for a lock (the delete, blocked by this call's open
    transaction), then go on."""

    def __init__(self, b: PostgresProvider, instance: str, url: str, *, after: bool = False) -> None:
        self.url, self.after, self.outcome = url, after, {}
        self.thread = threading.Thread(
            target=lambda: self.outcome.setdefault("deleted", b.delete_instance(instance, force=True)))

    def _start_the_delete(self) -> None:
        if "started" not in self.outcome:
            self.outcome["started"] = True
            self.thread.start()
            self.outcome["blocked"] = _wait_for_a_blocked_backend(self.url)

    def around(self, real):
        def paused(*args, **kw):
            if not self.after:
                self._start_the_delete()
            result = real(*args, **kw)
            if self.after:
                self._start_the_delete()
            return result
        return paused

    def finish(self) -> int:
        self.thread.join(15)
        assert not self.thread.is_alive(), "the delete never finished"
        assert self.outcome.get("blocked"), "the delete did not wait for the paused call"
        return self.outcome["deleted"].instances_deleted


def _rows_left(pg_url: str, schema: str, instance: str) -> dict:
    with psycopg.connect(pg_url, autocommit=True) as conn:
        return {table: conn.execute(f'SELECT count(*) FROM "{schema}".{table} WHERE instance_id = %s',
                                    (instance,)).fetchone()[0]
                for table in ("instances", "executions", "history", "instance_locks", "orchestrator_queue",
                              "worker_queue")}


def test_forced_delete_during_a_fetch_does_not_let_the_turn_write_the_instance_back(two_objects, pg_url, monkeypatch):
    a, b, _clock = two_objects
    create(a, "x")  # committed first turn: the instance row, execution 1, OrchestrationStarted
    a.enqueue_for_orchestrator(qmsg("x", "payload"))
    # Paused after the fetch took x's lock row and tagged its message (uncommitted), before it
    # reads the history.
    race = _DeleteWhilePaused(b, "x", pg_url)
    monkeypatch.setattr(a, "_load_events", race.around(a._load_events))
    item = a.fetch_orchestration_item(LOCK)
    monkeypatch.undo()
    assert race.finish() == 1
    assert item is not None and item.instance == "x" and len(item.history) == 1

    # The turn of that fetch now acks: its lock went with the instance.
    with pytest.raises(LockLostError):
        a.ack_orchestration_item(item.lock_token, 1, [], [], [], ExecutionMetadata(status="Running"))
    assert a.read("x") == [] and b.read("x") == []
    assert "x" not in a.list_instances()
    left = _rows_left(pg_url, a.schema, "x")
    assert left == dict.fromkeys(left, 0)
    a._check()

    # The id is free again: a new start runs as a fresh execution 1.
    create(a, "x")
    assert [type(e).__name__ for e in a.read("x")] == ["OrchestrationStarted"]


def test_forced_delete_during_a_worker_ack_leaves_no_completion_for_a_new_instance(two_objects, pg_url, monkeypatch):
    a, b, _clock = two_objects
    create(a, "x", worker=[act("x", 2)])  # the first turn scheduled activity 2
    lease = a.fetch_work_item(LOCK)
    assert lease is not None and lease.item.id == 2
    # Paused after the ack locked the activity row (SELECT ... FOR UPDATE), before it deletes
    # the row and queues the completion.
    race = _DeleteWhilePaused(b, "x", pg_url, after=True)
    monkeypatch.setattr(a, "_work_row_for", race.around(a._work_row_for))
    a.ack_work_item(lease.lock_token, act_done("x", 2))  # it held the row: its ack goes through
    monkeypatch.undo()
    assert race.finish() == 1
    left = _rows_left(pg_url, a.schema, "x")
    assert left == dict.fromkeys(left, 0), "the completion the ack queued outlived the delete"

    # A new instance with the same id gets its start alone, not the old incarnation's completion.
    a.enqueue_for_orchestrator(start_item("x"))
    item = a.fetch_orchestration_item(LOCK)
    assert item is not None and item.history == () and [type(m).__name__ for m in item.messages] == ["StartOrchestration"]
    a._check()
