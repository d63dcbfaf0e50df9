"""PostgresProvider (+ Runtime) against scenarios of the reference PostgreSQL provider's
fault-injection, cached-plan, LISTEN/NOTIFY, long-poll, stress, DB-metrics and basic test files
(duroxide-pg ``tests/fault_injection_tests.rs``, ``cached_plan_retryable_test.rs``,
``pg_listener_test.rs``, ``longpoll_tests.rs``, ``stress_tests.rs``, ``stress_tests_longpoll.rs``,
``db_metrics_tests.rs``, ``basic_tests.rs``), re-expressed as small Python reproductions:

* faults: failed statements (lock timeouts), permanent errors, connections dropped between and
  in the middle of operations, a dropped LISTEN connection, missed notifications, far-past and
  clock-skewed visibility - each surfacing as a ProviderError with the right ``retryable`` and
  recovering without losing or duplicating work (SPEC §15.1, §14 "Fetch errors back off");
* a concurrent migration changing a column type under psycopg's prepared statements ("cached
  plan must not change result type"): retryable *and* recovered;
* wake-ups: work committed by another provider object (process) wakes idle dispatchers without
  waiting a poll interval; notifications are scoped to the schema and to the queue that got work;
* scaled-down stress runs (fan-out, two runtimes, a small pool, flapping connections, bursts of
  notifications, staggered timers): everything completes exactly once, histories well-formed;
* the runtime counters that stand in for the reference's DB metrics (``metrics_snapshot``).

Timing: outcomes are awaited with generous timeouts; no wake-up bound is tighter than ~2 s.
The server and schemas come from the ``pg_url`` / ``pg_schema`` fixtures of ``conftest.py``
(as in ``test_postgres.py``); every test works in its own schema, dropped afterwards.
"""

from __future__ import annotations

import collections
import threading
import time

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.core.events import TimerFiredMsg
from duroxide_sim.errors import ProviderError
from duroxide_sim.providers.base import ExecutionMetadata
from duroxide_sim.providers.postgres import PostgresProvider
from duroxide_sim.runtime.realtime import SystemClock
from duroxide_sim.sim.checkers import check_well_formed
from duroxide_sim.testing.conformance import (
    ConformanceClock, act, act_done, ack, create, kv_set, meta, start_item, started, timer_created,
)




# --- helpers -----------------------------------------------------------------------------------------


def _admin(pg_url: str) -> psycopg.Connection:
    return psycopg.connect(pg_url, autocommit=True)


def _idle_backend_pids(provider: PostgresProvider) -> list[int]:
    """Server pids of the provider's idle pool connections and of its LISTEN connection (only
    this provider's own connections: other tests share the server)."""
    pids: list[int] = []
    for _ in range(5):
        try:
            pids = [c.info.backend_pid for c in list(provider._pool._pool)]
            break
        except RuntimeError:  # the deque changed while copied: a dispatcher took a connection
            continue
    listen = provider._listen_conn
    if listen is not None:
        try:
            pids.append(listen.info.backend_pid)
        except Exception:  # noqa: BLE001 - already closed: nothing to kill
            pass
    return pids


def _terminate(pg_url: str, pids: list[int]) -> None:
    with _admin(pg_url) as conn:
        for pid in pids:
            conn.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _retrying(op, attempts: int = 5):
    """Call ``op`` until it succeeds; every failure must be a *retryable* ProviderError.
    Returns (value, errors)."""
    errors: list[ProviderError] = []
    for _ in range(attempts):
        try:
            return op(), errors
        except ProviderError as exc:
            assert exc.retryable is True, f"non-retryable error after a dropped connection: {exc}"
            errors.append(exc)
            time.sleep(0.05)
    raise AssertionError(f"still failing after {attempts} attempts: {errors[-1]}")


def _wait_until(predicate, timeout_s: float, step_s: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step_s)
    return predicate()


class _Seen:
    """A wake-up listener recording the kinds it is called with."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.cond = threading.Condition()

    def __call__(self, kind: str) -> None:
        with self.cond:
            self.kinds.append(kind)
            self.cond.notify_all()

    def wait_for(self, kind: str, timeout_s: float = 10.0) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: kind in self.kinds, timeout=timeout_s)

    def clear(self) -> None:
        with self.cond:
            self.kinds.clear()


def _fan_out_runtime(provider: PostgresProvider, ran: collections.Counter, guard: threading.Lock, *,
                     poll_ms: int = 1, orch: int = 2, worker: int = 2, delay_s: float = 0.005,
                     sequential: bool = False) -> Runtime:
    """A runtime whose ``FanOut`` orchestration runs three ``Task`` activities (in parallel, or one
    after another with ``sequential``); every activity execution is counted in ``ran``."""
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=poll_ms, orchestration_concurrency=orch,
                                          worker_concurrency=worker))

    def task(ctx, x):
        with guard:
            ran[x] += 1
        time.sleep(delay_s)
        return f"done:{x}"

    def fan_out(ctx, n):
        if sequential:
            results = []
            for i in range(3):
                results.append((yield ctx.schedule_activity("Task", f"{ctx.instance_id}:{i}")))
            return results
        results = yield ctx.all([ctx.schedule_activity("Task", f"{ctx.instance_id}:{i}") for i in range(3)])
        return [r["ok"] for r in results]

    rt.register_activity("Task", task)
    rt.register_orchestration("FanOut", fan_out)
    return rt


def _assert_fan_out_done(client: Client, provider: PostgresProvider, ids: list[str], ran: collections.Counter,
                         timeout_ms: int = 30_000, exactly_once_runs: bool = True) -> None:
    """Every instance completed with its three results, histories well-formed with exactly three
    completions; with ``exactly_once_runs`` every activity body also ran exactly once (without
    faults; under faults activities are at-least-once, SPEC §10.2 "worker ack failure ->
    abandon", so only the history is checked for exactly-once)."""
    for instance in ids:
        st = client.wait_for_orchestration(instance, timeout_ms)
        assert (st.status, st.output) == ("Completed", [f"done:{instance}:{i}" for i in range(3)]), (instance, st)
    for instance in ids:
        history = provider.read(instance)
        assert check_well_formed(instance, 1, history) == [], instance
        assert sum(1 for e in history if type(e).__name__ == "ActivityCompleted") == 3, instance
    assert sorted(ran) == sorted(f"{i}:{n}" for i in ids for n in range(3))
    if exactly_once_runs:
        dupes = {k: v for k, v in ran.items() if v != 1}
        assert dupes == {}, f"activities executed more than once: {dupes}"


# --- basic_tests.rs ------------------------------------------------------------------------------------


def test_basic_lifecycle_on_a_fresh_schema(pg_url, pg_schema, opened):
    """Reference: basic_tests (test_provider_creation, test_schema_initialization,
    test_read_empty_instance, test_enqueue_for_orchestrator, test_enqueue_and_dequeue_worker,
    test_fetch_orchestration_item_empty_queue, test_management_capability,
    test_list_instances_and_executions).

    A new schema is created with its tables; an empty store reads, fetches and counts nothing;
    an enqueue does not create the instance, its first ack does (SPEC §15.1, §16 C14); worker
    items round-trip with a lock token; management sees both instances with execution [1]."""
    schema = pg_schema("basic")
    provider = opened(schema)
    with _admin(pg_url) as conn:
        assert conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s",
                            (schema,)).fetchone() is not None
        tables = {r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (schema,))}
    assert {"instances", "executions", "history", "orchestrator_queue", "worker_queue", "instance_locks"} <= tables
    assert provider.read("non_existent_instance") == []
    assert provider.fetch_orchestration_item(30_000) is None
    assert provider.fetch_work_item(30_000) is None
    assert provider.list_instances() == []
    metrics = provider.get_system_metrics()
    assert (metrics.total_instances, metrics.total_executions) == (0, 0)
    depths = provider.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)

    for inst in ("test_instance_1", "test_instance_2"):
        provider.enqueue_for_orchestrator(start_item(inst))
    assert provider.list_instances() == []  # enqueue never creates an instance
    for _ in range(2):
        item = provider.fetch_orchestration_item(30_000)
        assert item is not None and item.execution_id == 1 and item.history == ()
        ack(provider, item, [started(item.instance)], md=meta())
    assert sorted(provider.list_instances()) == ["test_instance_1", "test_instance_2"]
    assert provider.list_executions("test_instance_1") == [1]
    assert provider.latest_execution_id("test_instance_1") == 1
    history = provider.read("test_instance_1")
    assert [type(e).__name__ for e in history] == ["OrchestrationStarted"]

    provider.enqueue_for_worker(act("test_instance_worker", 100, name="TestActivity"))
    lease = provider.fetch_work_item(30_000)
    assert lease is not None and lease.lock_token
    assert (lease.item.instance, lease.item.name, lease.item.id) == ("test_instance_worker", "TestActivity", 100)


# --- fault_injection_tests.rs: failed statements, permanent errors, dropped connections ----------------


def test_statement_failing_on_a_lock_timeout_is_retryable_and_leaves_nothing_behind(pg_url, pg_schema, opened):
    """Reference: fault_injection_tests (fault_refresh_query_error: failing queries are handled
    and work is still found afterwards).

    A DBA's session holds the queue tables while the server's ``lock_timeout`` is 300 ms: the
    provider's statements fail. Each failure is a *retryable* ProviderError (SPEC §15.1: busy /
    locked -> retryable; §14: the dispatcher backs off and retries), the failed fetch holds no
    lock and counted no attempt (``Err`` => no lock held), and once the tables are free the same
    provider enqueues and fetches normally."""
    schema = pg_schema("locktimeout")
    url = make_conninfo(pg_url, options="-c lock_timeout=300")
    provider = opened(schema, url=url)
    provider.enqueue_for_orchestrator(start_item("queued"))
    blocker = _admin(pg_url)
    blocker.autocommit = False
    try:
        for table in ("orchestrator_queue", "worker_queue"):
            blocker.execute(sql.SQL("LOCK TABLE {}.{} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(schema), sql.Identifier(table)))
        for name, op in (("fetch_orchestration_item", lambda: provider.fetch_orchestration_item(5_000)),
                         ("enqueue_for_orchestrator", lambda: provider.enqueue_for_orchestrator(start_item("late"))),
                         ("enqueue_for_worker", lambda: provider.enqueue_for_worker(act("queued", 2))),
                         ("fetch_work_item", lambda: provider.fetch_work_item(5_000))):
            with pytest.raises(ProviderError) as err:
                op()
            assert err.value.retryable is True, (name, str(err.value))
    finally:
        blocker.rollback()
        blocker.close()
    item = provider.fetch_orchestration_item(5_000)
    assert item is not None and item.instance == "queued" and item.attempt_count == 1
    assert provider.fetch_work_item(5_000) is None  # the failed enqueue_for_worker left nothing
    provider.enqueue_for_orchestrator(start_item("late"))
    assert provider.fetch_orchestration_item(5_000).instance == "late"
    provider._check()


def test_permanent_errors_are_not_retryable_and_change_nothing(pg_url, pg_schema, opened):
    """Reference: fault_injection_tests / the provider's error classification (constraint
    violations and other database errors are permanent; only connection-level failures, pool
    exhaustion, deadlocks and cached plans are retried).

    A duplicate event id in an ack is a permanent error; the ack rolls back, the lock stays held
    and a correct ack then succeeds (SPEC §15.1, §16 A5). A statement on a table the DBA dropped
    is permanent too, and names the table: retrying cannot help."""
    schema = pg_schema("permanent")
    clock = ConformanceClock()
    provider, other = opened(schema, clock=clock), opened(schema, clock=clock)
    create(provider, "dup")
    provider.enqueue_for_orchestrator(start_item("dup"))
    item = provider.fetch_orchestration_item(5_000)
    with pytest.raises(ProviderError) as err:
        ack(provider, item, [kv_set("dup", 1, "k", "v")])  # event id 1 exists already
    assert err.value.retryable is False
    assert other.fetch_orchestration_item(5_000) is None  # still locked by the failed ack's holder
    ack(provider, item, [kv_set("dup", 2, "k", "v")])
    assert [e.event_id for e in provider.read("dup")] == [1, 2] and provider.get_kv_value("dup", "k") == "v"

    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("DROP TABLE {}.worker_queue").format(sql.Identifier(schema)))
    with pytest.raises(ProviderError) as err:
        provider.enqueue_for_worker(act("dup", 3))
    assert err.value.retryable is False and "worker_queue" in str(err.value)


def test_dropped_idle_connections_fail_retryably_once_and_lose_no_work(pg_url, pg_schema, opened):
    """Reference: fault_injection_tests / stress_tests_longpoll (stress_connection_flapping) /
    longpoll_tests (resilience_connection_drop), at the provider level.

    Six instances are queued and two are fetched; then every connection of the provider is
    killed by the server (a failover, an idle-connection reaper). The next operation fails with
    a *retryable* ProviderError naming PostgreSQL; retried, everything works: the two held turns
    are acked with their locks intact, the other four are fetched and acked, each instance is
    created exactly once and the queue ends empty (SPEC §15.1, §14 outages)."""
    schema = pg_schema("dropped")
    provider = opened(schema, max_connections=1)
    for i in range(6):
        provider.enqueue_for_orchestrator(start_item(f"i{i}"))
    held = [provider.fetch_orchestration_item(30_000) for _ in range(2)]
    assert all(h is not None for h in held)

    _terminate(pg_url, _idle_backend_pids(provider))
    time.sleep(0.1)
    with pytest.raises(ProviderError) as err:
        provider.get_queue_depths()
    assert err.value.retryable is True and "PostgreSQL" in str(err.value)

    for item in held:
        _retrying(lambda item=item: ack(provider, item, [started(item.instance)], md=meta()))
    acked = {h.instance for h in held}
    while True:
        item, _ = _retrying(lambda: provider.fetch_orchestration_item(30_000))
        if item is None:
            break
        assert item.instance not in acked, f"{item.instance} handed out twice"
        _retrying(lambda item=item: ack(provider, item, [started(item.instance)], md=meta()))
        acked.add(item.instance)
    assert acked == {f"i{i}" for i in range(6)}
    assert sorted(provider.list_instances()) == sorted(acked)
    assert all([e.event_id for e in provider.read(i)] == [1] for i in acked)
    depths = provider.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
    provider._check()


def test_connection_killed_in_the_middle_of_an_ack_rolls_back_and_the_retry_commits(pg_url, pg_schema, opened):
    """Reference: fault_injection_tests (query errors mid-operation), stress_connection_flapping.

    An ack is waiting on the server (the history table is held by a DBA's session) when its
    connection is terminated. The caller gets a *retryable* ProviderError and nothing of the
    turn is committed; the instance lock is still held (the failed ack never got to release
    it), so retrying the same ack with the same token commits the turn exactly once (SPEC
    §15.1: each operation one transaction; "Err => no partial effect")."""
    schema = pg_schema("midack")
    clock = ConformanceClock()
    provider, other = opened(schema, clock=clock), opened(schema, clock=clock)
    provider.enqueue_for_orchestrator(start_item("m"))
    item = provider.fetch_orchestration_item(30_000)
    blocker = _admin(pg_url)
    blocker.autocommit = False
    out: dict = {}
    try:
        blocker.execute(sql.SQL("LOCK TABLE {}.history IN ACCESS EXCLUSIVE MODE").format(sql.Identifier(schema)))

        def run() -> None:
            try:
                ack(provider, item, [started("m"), kv_set("m", 2, "k", "v")], worker=[act("m", 3)], md=meta())
                out["ok"] = True
            except BaseException as exc:  # reported below
                out["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        waiting: list[int] = []

        def ack_is_waiting() -> bool:
            waiting[:] = [r[0] for r in blocker.execute(
                "SELECT pid FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                (f'"{schema}".history',)).fetchall()]
            return bool(waiting)

        assert _wait_until(ack_is_waiting, 10), "the ack never waited on the history table"
        _terminate(pg_url, waiting)
        thread.join(10)
    finally:
        blocker.rollback()
        blocker.close()
    assert "error" in out, f"the ack survived its connection being killed: {out}"
    assert isinstance(out["error"], ProviderError) and out["error"].retryable is True, repr(out["error"])
    assert provider.read("m") == [] and provider.list_instances() == []
    assert other.fetch_orchestration_item(30_000) is None  # the lock is still held
    _retrying(lambda: ack(provider, item, [started("m"), kv_set("m", 2, "k", "v")], worker=[act("m", 3)],
                          md=meta()))
    assert [e.event_id for e in provider.read("m")] == [1, 2] and provider.get_kv_value("m", "k") == "v"
    lease = provider.fetch_work_item(30_000)
    assert lease is not None and lease.item.id == 3 and provider.fetch_work_item(30_000) is None
    provider._check()


def test_pool_exhaustion_is_retryable_and_recovers(pg_url, pg_schema, opened):
    """Reference: stress_tests (stress_test_connection_pool_limits; PoolTimedOut -> retryable).

    With its only pooled connection busy (a fetch stuck behind a DBA's table lock), another
    operation cannot get a connection: it fails after the pool timeout with a *retryable*
    ProviderError, and works as soon as the connection is free again."""
    schema = pg_schema("pool")
    provider = opened(schema, max_connections=1, pool_timeout_s=1.0)
    provider.enqueue_for_orchestrator(start_item("p"))
    blocker = _admin(pg_url)
    blocker.autocommit = False
    try:
        blocker.execute(sql.SQL("LOCK TABLE {}.orchestrator_queue IN ACCESS EXCLUSIVE MODE").format(
            sql.Identifier(schema)))
        out: dict = {}
        thread = threading.Thread(target=lambda: out.setdefault("item", provider.fetch_orchestration_item(5_000)),
                                  daemon=True)
        thread.start()
        time.sleep(0.3)  # the fetch now holds the only connection, waiting for the table
        with pytest.raises(ProviderError) as err:
            provider.read("p")
        assert err.value.retryable is True
    finally:
        blocker.rollback()
        blocker.close()
    thread.join(10)
    assert out.get("item") is not None and out["item"].instance == "p"
    assert provider.read("p") == []


def test_work_visible_far_in_the_past_is_fetched_at_once(pg_url, pg_schema, opened):
    """Reference: fault_injection_tests (fault_heap_corruption_negative_timer).

    A queued start whose ``visible_at`` lies an hour in the past (written by a node whose clock
    was behind, or restored from a backup) and a ``TimerFired`` whose fire time is long gone are
    both simply due: fetched at once, nothing crashes, nothing is mistaken for a parked orphan
    (SPEC §1 Visibility, §15.1, §16 B10)."""
    schema = pg_schema("pasttimer")
    clock = ConformanceClock(10_000_000)
    provider = opened(schema, clock=clock)
    provider.enqueue_for_orchestrator(start_item("negative-timer-test"))
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL("UPDATE {}.orchestrator_queue SET visible_at = %s").format(sql.Identifier(schema)),
                     (clock.now_ms() - 3_600_000,))
    item = provider.fetch_orchestration_item(30_000)
    assert item is not None and item.instance == "negative-timer-test"
    ack(provider, item, [started("negative-timer-test"), timer_created("negative-timer-test", 2)], md=meta(),
        orch=[TimerFiredMsg(instance="negative-timer-test", execution_id=1, id=2, fire_at_ms=0)])
    item = provider.fetch_orchestration_item(30_000)
    assert item is not None and [type(m).__name__ for m in item.messages] == ["TimerFiredMsg"]


def test_clock_skew_between_nodes_shifts_delayed_work_by_the_writer_clock(pg_schema, opened):
    """Reference: fault_injection_tests (fault_injection_clock_skew_late_visibility,
    fault_injection_clock_skew_early_visibility, fault_injection_symmetric_clock_skew).

    Delayed work is stamped ``visible_at = writer's now + delay`` and judged by the reader's
    clock (SPEC §15.1 "delay pushes visible messages to now+delay"). A writer 1 s ahead makes a
    500 ms delay look like 1.5 s to a correct reader; a writer 200 ms behind makes it 300 ms; a
    writer +100 ms and a reader -100 ms turn 500 ms into 700 ms. Deterministic clocks: no sleeps."""
    schema = pg_schema("skew")
    base = 5_000_000
    ahead, behind = ConformanceClock(base + 1_000), ConformanceClock(base - 200)
    plus, minus, correct = ConformanceClock(base + 100), ConformanceClock(base - 100), ConformanceClock(base)
    clocks = [ahead, behind, plus, minus, correct]
    node_ahead, node_behind = opened(schema, clock=ahead), opened(schema, clock=behind)
    node_plus, node_minus, node = opened(schema, clock=plus), opened(schema, clock=minus), opened(schema, clock=correct)

    def advance_to(wall_offset: int) -> None:  # every node's clock moves together
        delta = base + wall_offset - correct.now_ms()
        for c in clocks:
            c.advance(delta)

    node_ahead.enqueue_for_orchestrator(start_item("late"), 500)
    node_behind.enqueue_for_orchestrator(start_item("early"), 500)
    node_plus.enqueue_for_orchestrator(start_item("symmetric"), 500)
    advance_to(299)
    assert node.fetch_orchestration_item(30_000) is None
    advance_to(300)
    first = node.fetch_orchestration_item(30_000)
    assert first is not None and first.instance == "early"
    advance_to(650)  # 'symmetric' is visible at wall 0.6 s for a correct reader, ...
    assert node_minus.fetch_orchestration_item(30_000) is None  # ... not yet for one 100 ms behind
    advance_to(700)
    got = node_minus.fetch_orchestration_item(30_000)
    assert got is not None and got.instance == "symmetric"
    advance_to(1_499)
    assert node.fetch_orchestration_item(30_000) is None
    advance_to(1_500)
    got = node.fetch_orchestration_item(30_000)
    assert got is not None and got.instance == "late"


def test_staggered_delayed_items_become_visible_in_order_and_each_once(pg_schema, opened):
    """Reference: longpoll_tests (timer_precision_many_timers, timer_precision_under_load),
    stress_tests_longpoll (stress_many_timers).

    Fifty delayed starts due at 0.5 s, 1.5 s, ... 4.5 s: none is fetchable before its time, every
    one is fetchable at its time, in due order, and each is fetched exactly once (SPEC §1
    Visibility, §16 B10). Deterministic clock."""
    schema = pg_schema("timers")
    clock = ConformanceClock()
    provider = opened(schema, clock=clock)
    due: dict[str, int] = {}
    for i in range(50):
        delay = (i % 5) * 1_000 + 500
        provider.enqueue_for_orchestrator(start_item(f"timer-stress-{i}"), delay)
        due[f"timer-stress-{i}"] = clock.now_ms() + delay
    start = clock.now_ms()
    fetched: list[tuple[str, int]] = []
    for step in range(0, 5_001, 250):
        clock.advance(start + step - clock.now_ms())
        while (item := provider.fetch_orchestration_item(30_000)) is not None:
            fetched.append((item.instance, clock.now_ms()))
            ack(provider, item, [started(item.instance)], md=meta())
    assert sorted(i for i, _ in fetched) == sorted(due)
    for instance, at in fetched:
        assert due[instance] <= at < due[instance] + 250, (instance, due[instance], at)
    assert [due[i] for i, _ in fetched] == sorted(due[i] for i, _ in fetched)


# --- cached_plan_retryable_test.rs ---------------------------------------------------------------------


def _migrate_column_type(pg_url: str, schema: str) -> None:
    """A concurrent migration: widen ``orchestrator_queue.instance_id`` (text -> varchar), which
    changes the result type of every prepared statement selecting it."""
    with _admin(pg_url) as conn:
        conn.execute(sql.SQL('ALTER TABLE {}.orchestrator_queue ALTER COLUMN instance_id TYPE varchar(512) '
                             'COLLATE "C"').format(sql.Identifier(schema)))


def test_cached_plan_invalidated_by_a_migration_is_retryable_and_recovers(pg_url, pg_schema, opened):
    """Reference: cached_plan_retryable_test (cached_plan_invalidation_is_retried).

    A dispatcher has been polling (psycopg prepares a statement after 5 runs on a connection);
    a concurrent migration then changes a column type under that prepared statement, so the
    server answers ``cached plan must not change result type`` (SQLSTATE 0A000). The reference
    classifies it retryable AND recovers: the retry re-prepares and the fetch succeeds (it
    asserts the "cached plan" error is never surfaced). We accept surfacing it once as a
    *retryable* ProviderError, but a retry must then work (SPEC §15.1 retryable errors; §14
    "Fetch errors back off ... (retryable)" - retrying is only useful if it can succeed).

    Before 8fad285 this failed: the error was mapped retryable
    (``PostgresProvider._map_error``), but the pooled connection kept its stale prepared
    statement (``_probe`` / ``_tx`` handed the connection back to the pool unchanged), so every
    retry on it failed the same way forever."""
    schema = pg_schema("cachedplan")
    provider = opened(schema, max_connections=1)
    for _ in range(8):  # poll an empty queue: the candidate query gets prepared on the connection
        assert provider.fetch_orchestration_item(10_000) is None
    _migrate_column_type(pg_url, schema)
    provider.enqueue_for_orchestrator(start_item("after-migration"))
    errors: list[ProviderError] = []
    item = None
    for _ in range(5):
        try:
            item = provider.fetch_orchestration_item(10_000)
            break
        except ProviderError as exc:
            errors.append(exc)
    assert all(e.retryable for e in errors), [str(e) for e in errors]
    assert item is not None, (f"fetch still fails after {len(errors)} retries of a retryable error: "
                              f"{errors[-1] if errors else None}")
    assert item.instance == "after-migration"


@pytest.mark.realtime
def test_runtime_recovers_after_a_migration_invalidates_prepared_statements(pg_url, pg_schema, opened):
    """Reference: cached_plan_retryable_test (the production incident it reproduces: workers
    polling while a migration replaces what their prepared statements return).

    A runtime has been polling (1 ms interval, so its pooled connections have the fetch
    statements prepared); a migration changes a column type; orchestrations started afterwards
    must still complete - the dispatchers retry the retryable error and recover (SPEC §14 fetch
    back-off, §15.1).

    Before 8fad285 this failed: every connection that had prepared the candidate query kept
    failing with ``cached plan must not change result type`` (see the provider-level test
    above), so the dispatchers backed off forever and the orchestrations never started."""
    schema = pg_schema("cachedrt")
    provider = opened(schema, clock=SystemClock())
    ran: collections.Counter = collections.Counter()
    rt = _fan_out_runtime(provider, ran, threading.Lock())
    client = Client(provider)
    rt.start()
    try:
        client.start_orchestration("before", "FanOut", 0)
        assert client.wait_for_orchestration("before", 15_000).status == "Completed"
        time.sleep(0.5)  # idle polling: every pooled connection runs the candidate query many times
        _migrate_column_type(pg_url, schema)
        ids = [f"after-{i}" for i in range(3)]
        for instance in ids:
            client.start_orchestration(instance, "FanOut", 0)
        deadline = time.monotonic() + 8
        statuses = {}
        while time.monotonic() < deadline:
            statuses = {i: client.get_status(i).status for i in ids}
            if all(s == "Completed" for s in statuses.values()):
                break
            time.sleep(0.1)
        assert all(s == "Completed" for s in statuses.values()), (
            f"not completed 8 s after the migration: {statuses}; provider_errors="
            f"{rt.metrics_snapshot().provider_errors}")
    finally:
        rt.shutdown(2_000)


# --- pg_listener_test.rs / longpoll_tests.rs: wake-ups ----------------------------------------------------


def test_notifications_stay_within_their_schema_even_for_long_schema_names(pg_schema, opened):
    """Reference: pg_listener_test (test_pg_listener_basic, test_pg_listener_with_trigger: the
    notification channel must carry the schema of the table that got work, TG_TABLE_SCHEMA, not
    the session's search path).

    Two schemas whose names share their first 40+ characters (the channel name
    ``duroxide_<schema>`` exceeds PostgreSQL's 63-byte identifiers and must still be distinct).
    Work committed in schema B never wakes a listener of schema A; work committed in A by
    another provider object does, promptly (README 'PostgreSQL': LISTEN/NOTIFY per schema)."""
    long_prefix = "longschemanameprefix_x_longschemaname"  # 37 characters
    schema_a, schema_b = pg_schema(long_prefix), pg_schema(long_prefix)
    assert len(schema_a.encode()) <= 63 and schema_a[:40] == schema_b[:40] and schema_a != schema_b
    listener_a, writer_a, writer_b = opened(schema_a), opened(schema_a), opened(schema_b)
    seen = _Seen()
    listener_a.add_wakeup_listener(seen)
    writer_b.enqueue_for_orchestrator(start_item("elsewhere"))
    writer_b.enqueue_for_worker(act("elsewhere", 1))
    time.sleep(1.0)
    assert seen.kinds == [], f"schema A was woken by work in schema B: {seen.kinds}"
    writer_a.enqueue_for_orchestrator(start_item("here"))
    assert seen.wait_for("orchestrator", 10), "no NOTIFY reached the listener of schema A"
    assert listener_a.fetch_orchestration_item(30_000).instance == "here"


def test_acks_wake_only_the_queue_that_got_work(pg_schema, opened):
    """Reference: longpoll_tests (e2e_worker_and_orch_separate: orchestrator work must not wake
    worker dispatchers and vice versa).

    In another provider object (process): an orchestration ack that schedules only an activity
    wakes the worker queue, not the orchestrator queue; the worker's ack with the completion
    wakes the orchestrator queue (SPEC §15.1 ack semantics; wake-ups per queue)."""
    schema = pg_schema("kinds")
    clock = ConformanceClock()
    a, b = opened(schema, clock=clock), opened(schema, clock=clock)
    seen = _Seen()
    b.add_wakeup_listener(seen)
    a.enqueue_for_orchestrator(start_item("x"))
    assert seen.wait_for("orchestrator")
    item = a.fetch_orchestration_item(30_000)
    time.sleep(0.3)
    seen.clear()
    ack(a, item, [started("x")], worker=[act("x", 2)], md=meta())
    assert seen.wait_for("worker"), f"the activity did not wake the worker queue: {seen.kinds}"
    time.sleep(0.5)
    assert "orchestrator" not in seen.kinds, f"an ack with no orchestrator work woke that queue: {seen.kinds}"
    lease = a.fetch_work_item(30_000)
    seen.clear()
    a.ack_work_item(lease.lock_token, act_done("x", 2))
    assert seen.wait_for("orchestrator"), f"the completion did not wake the orchestrator queue: {seen.kinds}"
    time.sleep(0.5)
    assert "worker" not in seen.kinds, seen.kinds


def test_short_poll_fetch_returns_at_once_with_or_without_work(pg_schema, opened):
    """Reference: longpoll_tests (fetch_returns_immediately_when_work_exists,
    fetch_works_without_long_poll_enabled, resilience_work_before_startup at provider level).

    Our provider is a short-poll provider (SPEC §15.1 "Short-poll providers return at once";
    the runtime does the waiting): a fetch with a 5 s poll timeout returns existing work at
    once, and an empty result at once too - not after the poll timeout. Work queued through a
    provider object that has since closed is found by a new one."""
    schema = pg_schema("shortpoll")
    provider = opened(schema)
    begin = time.monotonic()
    assert provider.fetch_orchestration_item(30_000, 5_000) is None
    assert provider.fetch_work_item(30_000, 5_000) is None
    assert time.monotonic() - begin < 2.0
    first = opened(schema)
    first.enqueue_for_orchestrator(start_item("pre-existing"))
    first.close()
    begin = time.monotonic()
    item = provider.fetch_orchestration_item(30_000, 5_000)
    assert item is not None and item.instance == "pre-existing" and time.monotonic() - begin < 2.0


def _twice_runtime(provider: PostgresProvider, *, poll_ms: int, orch: int = 2, worker: int = 2,
                   activity_s: float = 0.0, running: threading.Event | None = None) -> Runtime:
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=poll_ms, orchestration_concurrency=orch,
                                          worker_concurrency=worker))

    def inc(ctx, x):
        if running is not None:
            running.set()
        time.sleep(activity_s)
        return x + 1

    def twice(ctx, x):
        x = yield ctx.schedule_activity("inc", x)
        return (yield ctx.schedule_activity("inc", x))

    rt.register_activity("inc", inc)
    rt.register_orchestration("Twice", twice)
    return rt


@pytest.mark.realtime
def test_idle_runtime_wakes_every_dispatcher_for_a_burst_from_another_process(pg_schema, opened):
    """Reference: longpoll_tests (fetch_waits_for_notify_when_no_work, e2e_immediate_work_detected,
    e2e_multiple_dispatchers_wake).

    A runtime with three orchestration and three worker threads polls only once a minute; three
    instances started at once through another provider object (process) all complete within
    seconds: the NOTIFY wakes the idle dispatchers instead of a poll (README 'PostgreSQL')."""
    schema = pg_schema("burst")
    worker_side, client_side = opened(schema, clock=SystemClock()), opened(schema, clock=SystemClock())
    rt = _twice_runtime(worker_side, poll_ms=60_000, orch=3, worker=3)
    rt.start()
    try:
        time.sleep(0.5)  # every dispatcher is idle now, waiting out its 60 s poll interval
        client = Client(client_side)
        begin = time.monotonic()
        for i in range(3):
            client.start_orchestration(f"multi-notify-{i}", "Twice", i * 10)
        for i in range(3):
            st = client.wait_for_orchestration(f"multi-notify-{i}", 20_000)
            assert (st.status, st.output) == ("Completed", i * 10 + 2)
        assert time.monotonic() - begin < 10, "the burst waited for a poll instead of being woken"
    finally:
        rt.shutdown(2_000)


@pytest.mark.realtime
def test_work_arriving_while_the_dispatchers_are_busy_is_not_lost(pg_schema, opened):
    """Reference: longpoll_tests (resilience_notify_during_busy).

    One orchestration thread and one worker thread, polling once a minute. While the only
    worker runs a slow activity, another process starts a second instance; its wake-ups arrive
    while no dispatcher is idle. Both instances still complete within seconds: a wake-up for a
    busy runtime is remembered, not dropped."""
    schema = pg_schema("busy")
    running = threading.Event()
    worker_side, client_side = opened(schema, clock=SystemClock()), opened(schema, clock=SystemClock())
    rt = _twice_runtime(worker_side, poll_ms=60_000, orch=1, worker=1, activity_s=0.4, running=running)
    rt.start()
    try:
        time.sleep(0.3)
        client = Client(client_side)
        begin = time.monotonic()
        client.start_orchestration("busy-test-1", "Twice", 0)
        assert running.wait(10)
        client.start_orchestration("busy-test-2", "Twice", 100)  # while the worker is busy
        for instance, out in (("busy-test-1", 2), ("busy-test-2", 102)):
            st = client.wait_for_orchestration(instance, 20_000)
            assert (st.status, st.output) == ("Completed", out)
        assert time.monotonic() - begin < 12, "a wake-up during busy processing was lost (waited for a poll)"
    finally:
        rt.shutdown(2_000)


@pytest.mark.realtime
def test_work_queued_before_the_runtime_started_is_found_at_once(pg_schema, opened):
    """Reference: longpoll_tests (resilience_work_before_startup).

    Instances started while no runtime was running (the provider that queued them is closed)
    are picked up as soon as a runtime starts, even one that polls once a minute: a starting
    dispatcher looks before it waits."""
    schema = pg_schema("before")
    early = opened(schema, clock=SystemClock())
    Client(early).start_orchestration("pre-existing", "Twice", 5)
    early.close()
    provider = opened(schema, clock=SystemClock())
    rt = _twice_runtime(provider, poll_ms=60_000)
    begin = time.monotonic()
    rt.start()
    try:
        st = Client(provider).wait_for_orchestration("pre-existing", 20_000)
        assert (st.status, st.output) == ("Completed", 7)
        assert time.monotonic() - begin < 10
    finally:
        rt.shutdown(2_000)


@pytest.mark.realtime
def test_runtime_wakes_again_after_its_listen_connection_is_killed(pg_url, pg_schema, opened):
    """Reference: longpoll_tests (resilience_connection_drop), fault_injection_tests
    (fault_notifier_panic: work is still found when the notifier fails).

    The server terminates the LISTEN connection of an idle runtime that polls once a minute.
    The provider reconnects and LISTENs again; work started afterwards by another process is
    still picked up within seconds, not at the next poll."""
    schema = pg_schema("relisten")
    worker_side, client_side = opened(schema, clock=SystemClock()), opened(schema, clock=SystemClock())
    rt = _twice_runtime(worker_side, poll_ms=60_000)
    rt.start()
    try:
        assert _wait_until(lambda: worker_side._listen_conn is not None, 10)
        old_pid = worker_side._listen_conn.info.backend_pid
        _terminate(pg_url, [old_pid])

        def relistening() -> bool:
            conn = worker_side._listen_conn
            try:
                return conn is not None and not conn.closed and conn.info.backend_pid != old_pid
            except Exception:  # noqa: BLE001 - swapped concurrently
                return False

        assert _wait_until(relistening, 15), "the LISTEN connection was not re-established"
        time.sleep(0.5)  # the new connection has issued LISTEN
        client = Client(client_side)
        begin = time.monotonic()
        client.start_orchestration("reconnect-test", "Twice", 1)
        st = client.wait_for_orchestration("reconnect-test", 20_000)
        assert (st.status, st.output) == ("Completed", 3)
        assert time.monotonic() - begin < 10, "after the reconnect the runtime only found work by polling"
    finally:
        rt.shutdown(2_000)


@pytest.mark.realtime
def test_work_whose_notification_was_missed_is_found_by_polling(pg_url, pg_schema, opened):
    """Reference: longpoll_tests (resilience_refresh_catches_missed_notify,
    resilience_notifier_disabled_finds_work, resilience_notifier_dead).

    Work committed without any NOTIFY reaching the runtime (the writer's notification went to
    another channel - as if lost during a reconnect) is still found by the runtime's regular
    poll (1 s here), so the instance completes within seconds."""
    schema = pg_schema("missed")
    worker_side, client_side = opened(schema, clock=SystemClock()), opened(schema, clock=SystemClock())
    channel = worker_side._channel
    client_side._channel = "duroxide_nobody_listens_here"  # its commits notify no one
    rt = _twice_runtime(worker_side, poll_ms=1_000)
    spy = _admin(pg_url)  # sees every NOTIFY on the schema's channel, with the sender's open id
    try:
        spy.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        rt.start()
        try:
            time.sleep(0.3)
            Client(client_side).start_orchestration("missed-notify-test", "Twice", 20)
            st = Client(worker_side).wait_for_orchestration("missed-notify-test", 15_000)
            assert (st.status, st.output) == ("Completed", 22)
        finally:
            rt.shutdown(2_000)
        senders = {n.payload.rsplit(":", 1)[1] for n in spy.notifies(timeout=0.5)}
    finally:
        spy.close()
    assert str(worker_side._open_id) in senders  # the spy listened on the right channel ...
    assert str(client_side._open_id) not in senders  # ... and the start's NOTIFY really was missed


@pytest.mark.realtime
def test_durable_timer_fires_on_time_not_early(pg_schema, opened):
    """Reference: longpoll_tests (e2e_timer_fires_correctly, timer_precision_100ms_grace).

    A 1.5 s durable timer on a runtime with the default poll interval: the orchestration does
    not finish before the timer is due, and finishes within a few seconds after (SPEC §5
    timers; §1 Visibility: TimerFired visible at fire_at_ms)."""
    schema = pg_schema("timer")
    provider = opened(schema, clock=SystemClock())
    rt = Runtime(provider, RuntimeOptions())

    def sleeper(ctx, ms):
        yield ctx.schedule_timer(ms)
        return "woke"

    rt.register_orchestration("Sleeper", sleeper)
    client = Client(provider)
    rt.start()
    try:
        begin = time.monotonic()
        client.start_orchestration("e2e-timer-test", "Sleeper", 1_500)
        st = client.wait_for_orchestration("e2e-timer-test", 20_000)
        took = time.monotonic() - begin
        assert (st.status, st.output) == ("Completed", "woke")
        assert 1.45 <= took < 8, f"timer of 1.5 s completed after {took:.2f} s"
        history = provider.read("e2e-timer-test")
        created = next(e for e in history if type(e).__name__ == "TimerCreated")
        fired = next(e for e in history if type(e).__name__ == "TimerFired")
        assert fired.fire_at_ms == created.fire_at_ms and fired.timestamp_ms >= created.fire_at_ms
    finally:
        rt.shutdown(2_000)


# --- stress_tests.rs / stress_tests_longpoll.rs (scaled down) + db_metrics counterparts -----------------


def test_high_notify_rate_every_item_fetched_exactly_once(pg_schema, opened):
    """Reference: stress_tests_longpoll (stress_high_notify_rate).

    One hundred starts enqueued back to back by one provider object: another object's listener
    is woken, and fetching and acking drains all hundred, each exactly once, leaving the queue
    empty."""
    schema = pg_schema("notifyrate")
    clock = ConformanceClock()
    writer, reader = opened(schema, clock=clock), opened(schema, clock=clock)
    seen = _Seen()
    reader.add_wakeup_listener(seen)
    for i in range(100):
        writer.enqueue_for_orchestrator(start_item(f"stress-{i}"))
    assert seen.wait_for("orchestrator")
    got: list[str] = []
    while (item := reader.fetch_orchestration_item(5_000)) is not None:
        got.append(item.instance)
        reader.ack_orchestration_item(item.lock_token, 1, [], [], [], ExecutionMetadata())
    assert sorted(got) == sorted(f"stress-{i}" for i in range(100))
    assert reader.get_queue_depths().orchestrator_queue == 0
    reader._check()


@pytest.mark.realtime
def test_parallel_fan_out_on_two_runtimes_completes_exactly_once(pg_schema, opened):
    """Reference: stress_tests (stress_test_parallel_orchestrations_light / _standard /
    _high_concurrency; 100% success, no infrastructure failures) and the DB-metrics summary
    (fetch attempts vs items) through its Python counterpart, ``Runtime.metrics_snapshot``.

    Sixty instances each fan out three activities and join them, on two runtimes sharing one
    schema (2 orchestration + 2 worker threads each). Every instance completes with all three
    results; every activity body ran exactly once; histories are well-formed; the counters add
    up: 60 completions, 180 activity successes and 180 activity fetches across both runtimes,
    no failures or infrastructure errors (SPEC §4 join, §14 metrics_snapshot, §18 invariants)."""
    schema = pg_schema("fanout")
    providers = [opened(schema, clock=SystemClock()) for _ in range(2)]
    ran: collections.Counter = collections.Counter()
    guard = threading.Lock()
    runtimes = [_fan_out_runtime(p, ran, guard) for p in providers]
    client = Client(providers[0])
    for rt in runtimes:
        rt.start()
    try:
        ids = [f"fan-{i:02}" for i in range(60)]
        for instance in ids:
            client.start_orchestration(instance, "FanOut", 0)
        _assert_fan_out_done(client, providers[0], ids, ran)
    finally:
        for rt in runtimes:
            rt.shutdown(2_000)
    snaps = [rt.metrics_snapshot() for rt in runtimes]
    total = {name: sum(s[name] for s in snaps) for name in (
        "orch_completions", "orch_failures", "orch_infrastructure_errors", "activity_success",
        "activity_infra_errors", "activity_app_errors", "worker_dispatcher_items_fetched",
        "orch_dispatcher_items_fetched", "orch_starts")}
    assert total["orch_completions"] == 60 and total["orch_failures"] == 0, total
    assert total["orch_infrastructure_errors"] == 0 and total["activity_infra_errors"] == 0, total
    assert total["activity_success"] == 180 and total["activity_app_errors"] == 0, total
    assert total["worker_dispatcher_items_fetched"] == 180, total
    assert total["orch_dispatcher_items_fetched"] >= 120, total  # at least the start + one completion turn each
    depths = client.get_queue_depths()
    assert (depths.orchestrator_queue, depths.worker_queue) == (0, 0)
    assert client.get_system_metrics().completed_instances == 60
    providers[0]._check()


@pytest.mark.realtime
def test_small_connection_pool_under_more_threads_still_completes_everything(pg_schema, opened):
    """Reference: stress_tests (stress_test_connection_pool_limits: more concurrent work than
    pooled connections must still succeed 100%).

    A runtime with four orchestration and four worker threads shares a pool of two connections;
    thirty fan-out instances all complete exactly once."""
    schema = pg_schema("smallpool")
    provider = opened(schema, clock=SystemClock(), max_connections=2)
    ran: collections.Counter = collections.Counter()
    rt = _fan_out_runtime(provider, ran, threading.Lock(), orch=4, worker=4)
    client = Client(provider)
    rt.start()
    try:
        ids = [f"pool-{i:02}" for i in range(30)]
        for instance in ids:
            client.start_orchestration(instance, "FanOut", 0)
        _assert_fan_out_done(client, provider, ids, ran)
        assert rt.metrics_snapshot().orch_failures == 0
    finally:
        rt.shutdown(2_000)


@pytest.mark.realtime
def test_connection_flapping_during_a_run_loses_and_duplicates_nothing(pg_url, pg_schema, opened):
    """Reference: stress_tests_longpoll (stress_connection_flapping), longpoll_tests
    (resilience_connection_drop).

    Twenty instances each run three activities one after another while the server kills the
    runtime's idle pooled connections and its LISTEN connection five times, 0.3 s apart. The
    dispatchers see retryable errors and back off; every instance still completes with the
    right output, each activity completed exactly once in its history (bodies may rerun after a
    failed worker ack: at-least-once, SPEC §10.2), histories are well-formed (SPEC §14 outages /
    back-off, §18 invariants)."""
    schema = pg_schema("flap")
    provider = opened(schema, clock=SystemClock())
    ran: collections.Counter = collections.Counter()
    rt = _fan_out_runtime(provider, ran, threading.Lock(), poll_ms=20, delay_s=0.02, sequential=True)
    client_provider = opened(schema, clock=SystemClock())
    client = Client(client_provider)
    rt.start()
    try:
        ids = [f"flap-{i:02}" for i in range(20)]
        for instance in ids:
            client.start_orchestration(instance, "FanOut", 0)
        killed = 0
        for _ in range(5):
            time.sleep(0.3)
            pids = _idle_backend_pids(provider)
            _terminate(pg_url, pids)
            killed += len(pids)
        assert killed >= 3
        _assert_fan_out_done(client, client_provider, ids, ran, timeout_ms=40_000, exactly_once_runs=False)
        assert rt.metrics_snapshot().orch_failures == 0
    finally:
        rt.shutdown(2_000)


@pytest.mark.realtime
def test_batches_driven_only_by_notifications_complete(pg_schema, opened):
    """Reference: stress_tests (batch_tests: batch_longpoll_enabled - launch a batch, wait for
    all of it, repeat; long-poll must carry the idle gaps).

    A runtime polling only every 30 s runs three batches of five orchestrations started by
    another process, each with a 100 ms activity: every batch completes within seconds, i.e.
    every step was driven by a wake-up, never by the 30 s poll."""
    schema = pg_schema("batches")
    worker_side, client_side = opened(schema, clock=SystemClock()), opened(schema, clock=SystemClock())
    rt = _twice_runtime(worker_side, poll_ms=30_000, activity_s=0.1)
    rt.start()
    try:
        client = Client(client_side)
        time.sleep(0.3)
        for batch in range(3):
            begin = time.monotonic()
            ids = [f"batch-{batch}-orch-{i}" for i in range(5)]
            for n, instance in enumerate(ids):
                client.start_orchestration(instance, "Twice", n)
            for n, instance in enumerate(ids):
                st = client.wait_for_orchestration(instance, 25_000)
                assert (st.status, st.output) == ("Completed", n + 2), (instance, st)
            assert time.monotonic() - begin < 10, f"batch {batch} waited for a poll"
        assert rt.metrics_snapshot().orch_completions == 15
    finally:
        rt.shutdown(2_000)
