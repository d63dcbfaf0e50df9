"""PostgresProvider against scenarios of the reference PostgreSQL provider's test suite
(duroxide-pg: regression, multi-node, expired-lease, migration and continue-as-new stress
tests), re-expressed as fresh minimal reproductions on our provider and runtime.

The server: ``$DUROXIDE_PG_URL`` or a private one (``tests/pg_server.py``), as in
``test_postgres.py``; every test works in its own schema (``pg_schema``, dropped afterwards).
"""

from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.errors import ProviderError
from duroxide_sim.providers import postgres_schema
from duroxide_sim.providers.postgres import PostgresProvider, _key32
from duroxide_sim.testing.conformance import ConformanceClock, act, start_item




def _lock_table(pg_url: str, schema: str, table: str) -> psycopg.Connection:
    """Another session (a DBA's maintenance, a long migration) holding ``table`` exclusively;
    statements of the provider on that table wait until the returned connection rolls back."""
    conn = psycopg.connect(pg_url)
    conn.execute(sql.SQL("LOCK TABLE {}.{} IN ACCESS EXCLUSIVE MODE").format(
        sql.Identifier(schema), sql.Identifier(table)))
    return conn


def _in_thread(fn):
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # reported by the caller
            out["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


# --- leases: a fetch that had to wait must not hand out a lock that is already expired ----------------


def test_orchestrator_fetch_that_waited_on_the_server_returns_a_live_lock(pg_url, pg_schema, opened):
    """Reference: expired_lease_regression_test (fetch_orchestration_item_never_returns_an_expired_lease).

    A dispatcher's fetch is slowed by the server (here another session holds the queue table for
    longer than the 5 s orchestrator lock). When the fetch finally returns an instance, the user
    expects it to be *locked* for the requested lock timeout from now: no other node may fetch the
    same instance, and the holder can renew (SPEC §1 "Peek-lock ... Instance lock", §15.1
    "take the instance lock", "renew_orchestration_item_lock: only if held and unexpired",
    §16 A1 "One fetcher per instance at a time"). Ours computes the lease from the clock reading
    taken *before* the wait, so the instance comes back with a lock that expired seconds ago:
    a second node fetches it at once (two turns of one instance run concurrently) and the
    first node's renewal and ack fail. Returning None would be acceptable; a dead lease is not."""
    schema = pg_schema("lease_o")
    clock = ConformanceClock()
    node_a, node_b = opened(schema, clock=clock), opened(schema, clock=clock)
    node_a.enqueue_for_orchestrator(start_item("slow"))
    blocker = _lock_table(pg_url, schema, "orchestrator_queue")
    try:
        thread, out = _in_thread(lambda: node_a.fetch_orchestration_item(5_000))
        time.sleep(0.3)  # node A's fetch is now waiting on the server
        clock.advance(6_000)  # ... for longer than its 5 s lock timeout
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(10)
    assert "error" not in out, out.get("error")
    item = out["value"]
    if item is None:  # declining the instance after such a wait is fine; then it must be fetchable
        assert node_b.fetch_orchestration_item(5_000) is not None
        return
    other = node_b.fetch_orchestration_item(5_000)
    assert other is None, (f"node B fetched {other.instance!r} (attempt {other.attempt_count}) while node A holds "
                           f"the lock it was just handed")
    node_a.renew_orchestration_item_lock(item.lock_token, 5_000)  # the lease is live


def test_worker_fetch_that_waited_on_the_server_returns_a_live_lock(pg_url, pg_schema, opened):
    """Reference: expired_lease_regression_test, the worker-queue analogue.

    A worker's fetch waits on the server for longer than its lock timeout (30 s here). If it
    returns the activity, the user expects the activity to be locked to that worker: no other
    worker may fetch it and run it a second time, and its renewal works (SPEC §1 "Peek-lock",
    §15.1 "fetch_work_item: oldest visible unlocked/expired row ...; lock", "renew_work_item_lock:
    fails if row gone or lock expired (= cancellation signal)"). Ours stamps the lease from the
    clock read before the wait: the activity is handed out already expired, a second worker
    fetches and runs it too (duplicate side effects), and the first worker's renewal fails, which
    the runtime takes as a cancellation of an activity that was never cancelled."""
    schema = pg_schema("lease_w")
    clock = ConformanceClock()
    worker_a, worker_b = opened(schema, clock=clock), opened(schema, clock=clock)
    worker_a.enqueue_for_worker(act("inst", 2))
    blocker = _lock_table(pg_url, schema, "worker_queue")
    try:
        thread, out = _in_thread(lambda: worker_a.fetch_work_item(30_000))
        time.sleep(0.3)
        clock.advance(31_000)
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(10)
    assert "error" not in out, out.get("error")
    lease = out["value"]
    if lease is None:
        assert worker_b.fetch_work_item(30_000) is not None
        return
    other = worker_b.fetch_work_item(30_000)
    assert other is None, (f"worker B fetched activity {other.item.name}#{other.item.id} (attempt "
                           f"{other.attempt_count}) that worker A was just handed")
    worker_a.renew_work_item_lock(lease.lock_token, 30_000)


def test_contended_instance_is_skipped_not_waited_for(pg_url, pg_schema, opened):
    """Reference: expired_lease_regression_test (head-of-line convoy part).

    While another session holds the claim fetchers take on the oldest queued instance, a fetch
    must not queue behind it: it returns the next free instance at once, with a live lock
    (SPEC §15.1 "oldest visible message whose instance is unlocked/expired", §16 A4 "Locks never
    block other instances")."""
    schema = pg_schema("convoy")
    provider = opened(schema)
    provider.enqueue_for_orchestrator(start_item("hot"))
    provider.enqueue_for_orchestrator(start_item("free"))
    holder = psycopg.connect(pg_url)
    try:
        holder.execute("SELECT pg_advisory_xact_lock(%s, %s)", (provider._schema_key, _key32("hot")))
        started = time.monotonic()
        item = provider.fetch_orchestration_item(1_000)
        took = time.monotonic() - started
    finally:
        holder.rollback()
        holder.close()
    assert item is not None and item.instance == "free" and took < 2.0
    provider.renew_orchestration_item_lock(item.lock_token, 1_000)
    hot = provider.fetch_orchestration_item(1_000)  # free again once the other session is gone
    assert hot is not None and hot.instance == "hot"


# --- migrations --------------------------------------------------------------------------------------


def test_concurrent_opens_of_a_precreated_empty_schema_all_succeed(pg_url, pg_schema, opened):
    """Reference: concurrent_migration_tests (concurrent_startup_migration_race[_6_workers]).

    The DBA created the (empty) schema beforehand; six runtime processes start at once. Every open
    succeeds and the schema is migrated exactly once (SPEC §15.1; README 'PostgreSQL': several
    processes may share one schema)."""
    schema = pg_schema("precreated")
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    results: list = []
    barrier = threading.Barrier(6)

    def open_it() -> None:
        barrier.wait()
        try:
            results.append(opened(schema))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert [r for r in results if isinstance(r, BaseException)] == [] and len(results) == 6
    with psycopg.connect(pg_url, autocommit=True) as conn:
        versions = conn.execute(sql.SQL("SELECT version FROM {}.schema_version").format(
            sql.Identifier(schema))).fetchall()
    assert versions == [(postgres_schema.SCHEMA_VERSION,)]


def test_a_schema_from_a_newer_version_is_refused_without_any_ddl(pg_url, pg_schema, opened):
    """Reference: migration_policy_tests (apply_all_unknown_migrations_causes_no_mutations).

    A schema claims a version newer than this code and has lost a core table. Opening it is
    refused with a clear, permanent error naming the version, and nothing is created or changed:
    the missing table stays missing, the version rows stay as they were."""
    schema = pg_schema("ahead")
    opened(schema).close()
    ident = sql.Identifier(schema)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE {}.instances").format(ident))
        conn.execute(sql.SQL("INSERT INTO {}.schema_version (version) VALUES (9999)").format(ident))
    with pytest.raises(ProviderError) as err:
        opened(schema)
    assert "9999" in str(err.value) and err.value.retryable is False
    with psycopg.connect(pg_url, autocommit=True) as conn:
        assert conn.execute("SELECT to_regclass(%s)", (f'"{schema}".instances',)).fetchone()[0] is None
        assert sorted(r[0] for r in conn.execute(sql.SQL("SELECT version FROM {}.schema_version").format(ident))) \
            == [postgres_schema.SCHEMA_VERSION, 9999]


# --- runtimes on one schema ------------------------------------------------------------------------


def _runtime(provider: PostgresProvider) -> Runtime:
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=1, orchestration_concurrency=4,
                                          worker_concurrency=4))
    rt.register_activity("Work", lambda ctx, x: f"done:{x}")

    def child(ctx, x):
        return (yield ctx.schedule_activity("Work", x))

    def parent(ctx, x):
        results = yield ctx.all([ctx.schedule_sub_orchestration("Child", f"{x}:{i}") for i in range(5)])
        return f"completed:{sum(1 for r in results if 'ok' in r)}"

    def counter(ctx, n):
        if n < 9:
            yield ctx.continue_as_new(n + 1)
        return f"completed at {n}"

    rt.register_orchestration("Child", child)
    rt.register_orchestration("Parent", parent)
    rt.register_orchestration("Counter", counter)
    return rt


@pytest.mark.realtime
def test_parallel_children_notifying_parents_on_two_runtimes(pg_schema, opened):
    """Reference: regression_tests (test_parallel_suborchestrations_no_deadlock).

    Ten parents each fan out to five children and join them; the children finish nearly together
    and race to notify their parent, processed by two runtimes on one schema with 1 ms polling.
    Every parent completes with all five results, none fails (SPEC §4 join, §7 notify)."""
    from duroxide_sim.runtime.realtime import SystemClock

    schema = pg_schema("fanin")
    providers = [opened(schema, clock=SystemClock()) for _ in range(2)]
    runtimes = [_runtime(p) for p in providers]
    try:
        for rt in runtimes:
            rt.start()
        client = Client(providers[0])
        for i in range(10):
            client.start_orchestration(f"parent-{i}", "Parent", f"in-{i}")
        outcomes = {(st.status, st.output, st.error) for st in
                    (client.wait_for_orchestration(f"parent-{i}", 20_000) for i in range(10))}
        assert outcomes == {("Completed", "completed:5", None)}
    finally:
        for rt in runtimes:
            rt.shutdown(2_000)


@pytest.mark.realtime
def test_concurrent_continue_as_new_chains_on_two_runtimes(pg_schema, opened):
    """Reference: continue_as_new_stress_tests (concurrent_continue_as_new_chains).

    Five instances each continue-as-new through ten executions at once, on two runtimes sharing a
    schema. Each completes with the last input, lists executions 1..10, and every execution's
    history is readable and non-empty (SPEC §8, §16 C15)."""
    from duroxide_sim.runtime.realtime import SystemClock

    schema = pg_schema("chains")
    providers = [opened(schema, clock=SystemClock()) for _ in range(2)]
    runtimes = [_runtime(p) for p in providers]
    try:
        for rt in runtimes:
            rt.start()
        client = Client(providers[1])
        ids = [f"chain-{i}" for i in range(5)]
        for instance in ids:
            client.start_orchestration(instance, "Counter", 0)
        for instance in ids:
            st = client.wait_for_orchestration(instance, 20_000)
            assert (st.status, st.output) == ("Completed", "completed at 9")
            assert client.list_executions(instance) == list(range(1, 11))
            for execution in range(1, 11):
                assert client.read_execution_history(instance, execution), (instance, execution)
    finally:
        for rt in runtimes:
            rt.shutdown(2_000)
