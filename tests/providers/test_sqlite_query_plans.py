"""The SQLite provider's per-operation statements use indexes that keep their cost independent of
how many *other* instances and queued rows exist (found by ``bench/instance_scaling.py`` and
``bench/replay_scaling.py``; the benchmarks print the figures).

The statements are the ones the provider really executes (captured with the connection's trace
callback, parameters expanded) and are checked with ``EXPLAIN QUERY PLAN``:

- the first ack of a new instance numbers it ``MAX(created_seq) + 1``: an index search, not a
  scan of every instance (schema version 4; before, 429 us per new instance at 10,000);
- an ack deletes, and an abandon untags, the lock's batch through ``idx_orch_instance`` bounded
  by the lock's fetch time, so rows queued for later (an instance's far-off timers) are not
  walked.
"""

from __future__ import annotations

from typing import Any

from duroxide_sim import SqliteProvider
from duroxide_sim.core.events import ExternalRaised, OrchestrationStarted, StartOrchestration, TimerFiredMsg
from duroxide_sim.providers.base import ExecutionMetadata
from duroxide_sim.sim import SimClock


def _plans(provider: Any, statements: list[str], table: str) -> list[tuple[str, str]]:
    out = []
    for sql in statements:
        head = sql.lstrip().upper()
        if table.upper() not in head or not head.startswith(("INSERT", "DELETE", "UPDATE", "SELECT")):
            continue
        detail = " | ".join(row[-1] for row in provider._shared.execute(f"EXPLAIN QUERY PLAN {sql}"))
        out.append((sql, detail))
    return out


def _ack_start(provider: Any, clock: SimClock, item: Any, instance: str) -> None:
    started = OrchestrationStarted(event_id=1, instance_id=instance, execution_id=1, timestamp_ms=clock.now_ms(),
                                   name="O", version="1.0.0", input="null")
    provider.ack_orchestration_item(item.lock_token, 1, [started], [], [],
                                    ExecutionMetadata(orchestration_name="O", orchestration_version="1.0.0"))


def test_per_operation_statements_search_indexes_instead_of_scanning():
    clock = SimClock()
    provider = SqliteProvider.in_memory(clock=clock)
    for n in range(3):
        provider.enqueue_for_orchestrator(StartOrchestration(instance=f"old{n}", orchestration="O", input="null"), None)
        _ack_start(provider, clock, provider.fetch_orchestration_item(30_000), f"old{n}")
    provider.enqueue_for_orchestrator(StartOrchestration(instance="i", orchestration="O", input="null"), None)
    provider.enqueue_for_orchestrator(ExternalRaised(instance="i", name="e", data="1"), None)
    for n in range(3):  # queued for an hour from now beside the batch
        provider.enqueue_for_orchestrator(TimerFiredMsg(instance="i", execution_id=1, id=100 + n, fire_at_ms=0), 3_600_000)

    statements: list[str] = []
    provider._shared.set_trace_callback(statements.append)
    try:
        first = provider.fetch_orchestration_item(30_000)
        provider.abandon_orchestration_item(first.lock_token, None, True)
        again = provider.fetch_orchestration_item(30_000)
        _ack_start(provider, clock, again, "i")
    finally:
        provider._shared.set_trace_callback(None)

    instance_plans = _plans(provider, statements, "instances")
    numbering = [(sql, plan) for sql, plan in instance_plans if "MAX(created_seq)" in sql]
    assert numbering, statements
    for sql, plan in numbering:
        assert "SCAN instances" not in plan and "idx_instances_seq" in plan, (sql, plan)

    queue_plans = [(sql, plan) for sql, plan in _plans(provider, statements, "orchestrator_queue")
                   if "lock_token" in sql and not sql.lstrip().upper().startswith("SELECT")]
    deletes = [p for p in queue_plans if p[0].lstrip().upper().startswith("DELETE")]
    untags = [p for p in queue_plans if "SET lock_token = NULL" in p[0]]
    assert deletes and untags, statements
    for sql, plan in deletes + untags:
        assert "idx_orch_instance (instance_id=? AND visible_at<?)" in plan, (sql, plan)
    provider._check()


def test_management_calls_naming_instances_look_them_up_by_key():
    """A bulk delete/prune naming one instance, and the child check of an atomic delete, search
    the instances table by key (primary key, ``idx_instances_parent``) instead of reading every
    instance: deleting a large store one instance at a time was quadratic."""
    from duroxide_sim.providers.base import InstanceFilter, PruneOptions

    clock = SimClock()
    provider = SqliteProvider.in_memory(clock=clock)
    for n in range(4):
        provider.enqueue_for_orchestrator(StartOrchestration(instance=f"i{n}", orchestration="O", input="null"), None)
        item = provider.fetch_orchestration_item(30_000)
        started = OrchestrationStarted(event_id=1, instance_id=item.instance, execution_id=1,
                                       timestamp_ms=clock.now_ms(), name="O", version="1.0.0", input="null")
        provider.ack_orchestration_item(item.lock_token, 1, [started], [], [], ExecutionMetadata(
            status="Completed", output="1", orchestration_name="O", orchestration_version="1.0.0"))

    statements: list[str] = []
    provider._shared.set_trace_callback(statements.append)
    try:
        provider.prune_executions_bulk(InstanceFilter(instance_ids=["i0"]), PruneOptions(keep_last=1))
        provider.delete_instance_bulk(InstanceFilter(instance_ids=["i1"]))
        provider.delete_instances_atomic(["i2"], False)
    finally:
        provider._shared.set_trace_callback(None)
    selects = [(sql, plan) for sql, plan in _plans(provider, statements, "instances")
               if sql.lstrip().upper().startswith("SELECT") and "FROM instances" in sql]
    assert len(selects) >= 3, statements
    for sql, plan in selects:
        assert "SCAN" not in plan, (sql, plan)

    statements.clear()
    provider._shared.set_trace_callback(statements.append)
    try:
        provider.delete_instance_bulk(InstanceFilter(limit=1))  # no ids: filters and limit in SQL
    finally:
        provider._shared.set_trace_callback(None)
    selects = [sql for sql in statements if sql.lstrip().upper().startswith("SELECT") and "FROM instances i" in sql]
    assert selects and all("LIMIT 1" in sql and "parent_instance_id IS NULL" in sql for sql in selects), selects
    remaining = [row[0] for row in provider._shared.execute("SELECT instance_id FROM instances ORDER BY instance_id")]
    assert remaining == ["i3"]  # i1 (bulk by id), i2 (atomic), then the oldest left, i0 (limit 1)


def test_a_version_3_database_gets_the_index_on_open_and_keeps_numbering(tmp_path, monkeypatch):
    """Schema v4 only adds ``idx_instances_seq``: a database written by the previous version
    (schema 3) is upgraded in place on open, keeps its instances, and numbers new ones after
    them."""
    import sqlite3

    from duroxide_sim.providers import sqlite_schema

    path = tmp_path / "v3.db"
    clock = SimClock()
    with monkeypatch.context() as m:
        m.setattr(sqlite_schema, "MIGRATIONS", tuple(v for v in sqlite_schema.MIGRATIONS if v[0] <= 3))
        m.setattr(sqlite_schema, "SCHEMA_VERSION", 3)
        old = SqliteProvider.open(path, clock=clock)
        for n in range(3):
            old.enqueue_for_orchestrator(StartOrchestration(instance=f"old{n}", orchestration="O", input="null"), None)
            _ack_start(old, clock, old.fetch_orchestration_item(30_000), f"old{n}")
        old.close()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 3
    assert "idx_instances_seq" not in {r[1] for r in raw.execute("PRAGMA index_list(instances)")}
    raw.close()

    new = SqliteProvider.open(path, clock=clock)
    new.enqueue_for_orchestrator(StartOrchestration(instance="new", orchestration="O", input="null"), None)
    _ack_start(new, clock, new.fetch_orchestration_item(30_000), "new")
    new._check()
    new.close()
    raw = sqlite3.connect(path)
    assert raw.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] == 4
    assert "idx_instances_seq" in {r[1] for r in raw.execute("PRAGMA index_list(instances)")}
    assert raw.execute("SELECT instance_id FROM instances ORDER BY created_seq").fetchall() == [
        ("old0",), ("old1",), ("old2",), ("new",)]
    raw.close()
