"""Provider, recovery and lifecycle scenarios from the Rust reference's own test files
(provider_atomic_tests, recovery_tests, worker_reliability_test, shutdown_tests, sqlite_tests),
re-expressed against duroxide_sim on every shipped provider (memory, SQLite file, PostgreSQL).

Written fresh for this project: each test is a minimal reproduction of what a user of the
runtime expects, citing SPEC.md. PostgreSQL cases use the ``pg_url``/``pg_schema`` fixtures of
``tests/providers/conftest.py`` (``$DUROXIDE_PG_URL``, else a private server).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.core.events import (
    ActivityCompleted, ActivityScheduled, ExternalRaised, OrchestrationCompleted, OrchestrationFailed,
    StartOrchestration, TimerCreated,
)
from duroxide_sim.errors import ProviderError
from duroxide_sim.providers.base import ExecutionMetadata
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.runtime.realtime import SystemClock
from duroxide_sim.testing.conformance import LOCK, ConformanceClock, act, completed_ev, create, started

PROVIDERS = ["memory", "sqlite", "postgres"]


# --- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def store(request, tmp_path) -> Iterator[Callable[[], Any]]:
    """``open_()`` -> a new provider object on one shared store (wall clock). Memory has one
    object only (a second "connection" is the same object). Everything opened is closed."""
    kind = request.param
    opened: list[Any] = []
    if kind == "memory":
        mem = InMemoryProvider(SystemClock())

        def open_() -> Any:
            return mem
    elif kind == "sqlite":
        path = tmp_path / "f.db"

        def open_() -> Any:
            p = SqliteProvider.open(path, clock=SystemClock())
            opened.append(p)
            return p
    else:
        from duroxide_sim.providers.postgres import PostgresProvider

        url, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")("rsf")

        def open_() -> Any:
            p = PostgresProvider.connect_with_schema(url, schema, clock=SystemClock())
            opened.append(p)
            return p
    yield open_
    for p in opened:
        try:
            p.close()
        except Exception:  # noqa: BLE001 - teardown
            pass


@pytest.fixture
def fake_clock_provider(request, tmp_path) -> Iterator[tuple[Any, ConformanceClock]]:
    """A provider on a controllable fake clock (provider-level scenarios)."""
    clock = ConformanceClock()
    if request.param == "memory":
        p: Any = InMemoryProvider(clock)
    elif request.param == "sqlite":
        p = SqliteProvider.open(tmp_path / "fc.db", clock=clock)
    else:
        from duroxide_sim.providers.postgres import PostgresProvider

        url, schema = request.getfixturevalue("pg_url"), request.getfixturevalue("pg_schema")("rsfc")
        p = PostgresProvider.connect_with_schema(url, schema, clock=clock)
    yield p, clock
    getattr(p, "close", lambda: None)()


def _opts(**kw: Any) -> RuntimeOptions:
    base: dict[str, Any] = dict(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=2_000,
                                session_idle_timeout_ms=60_000)
    base.update(kw)
    return RuntimeOptions(**base)


class _Runtimes:
    def __init__(self) -> None:
        self.items: list[Runtime] = []

    def make(self, provider: Any, options: RuntimeOptions) -> Runtime:
        rt = Runtime(provider, options)
        self.items.append(rt)
        return rt


@pytest.fixture
def runtimes() -> Iterator[_Runtimes]:
    r = _Runtimes()
    yield r
    for rt in r.items:
        try:
            rt.shutdown(1_000)
        except Exception:  # noqa: BLE001 - teardown
            pass


def _wait(pred: Callable[[], bool], timeout_s: float = 8.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return bool(pred())


class _Wrapped:
    """Pass-through provider whose operation ``op`` is replaced by ``hook(original, *args)``.
    It hides the optional ``*_and_fetch`` fast paths so the runtime calls ``op`` itself."""

    def __init__(self, inner: Any, op: str, hook: Callable[..., Any]) -> None:
        self._inner, self._op, self._hook = inner, op, hook

    def __getattr__(self, name: str) -> Any:
        if name.endswith("_and_fetch"):
            raise AttributeError(name)
        attr = getattr(self._inner, name)
        if name != self._op:
            return attr
        return lambda *a, **k: self._hook(attr, *a, **k)


# --- provider level (provider_atomic_tests / sqlite_tests) --------------------------------------


@pytest.mark.parametrize("fake_clock_provider", PROVIDERS, indirect=True)
def test_first_ack_without_metadata_still_stores_history_and_worker_items(fake_clock_provider):
    """Rust ``test_ack_orchestration_item_atomic`` / ``test_sqlite_provider_transactional``: a
    user (or a thin runtime) acks the first turn with empty metadata. SPEC §15.1: the ack appends
    the delta verbatim and inserts worker items in one transaction; ``read`` returns the history
    (§15.1 "read(instance) (latest execution)") and the activities become fetchable; the fetched
    item carried the start item's name and version (§15.1 fetch: "from a start/CAN item
    (execution 1, empty history)")."""
    p, _clock = fake_clock_provider
    p.enqueue_for_orchestrator(StartOrchestration(instance="t", orchestration="TestOrch", input="i", version="1.0.0"))
    item = p.fetch_orchestration_item(LOCK)
    assert (item.orchestration_name, item.version, item.execution_id, item.history) == ("TestOrch", "1.0.0", 1, ())
    timer = TimerCreated(event_id=2, instance_id="t", execution_id=1, fire_at_ms=0)
    p.ack_orchestration_item(item.lock_token, 1, [started("t", name="TestOrch"), timer],
                             [act("t", 2), act("t", 3), act("t", 4)], [], ExecutionMetadata(), [])
    assert [e.event_id for e in p.read("t")] == [1, 2]
    ids = []
    while (lease := p.fetch_work_item(LOCK)) is not None:
        ids.append(lease.item.id)
    assert sorted(ids) == [2, 3, 4]
    assert p.fetch_orchestration_item(LOCK) is None


@pytest.mark.parametrize("fake_clock_provider", PROVIDERS, indirect=True)
def test_message_for_a_completed_instance_is_consumed_by_an_empty_ack(fake_clock_provider):
    """Rust ``test_ignore_work_after_terminal_event``: an event raised to a Completed instance is
    fetched, the runtime acks it with no changes (SPEC §3.1 step 3), the queue is then empty and
    the history unchanged (§3.12 "Anything for a Completed/Failed instance → discarded without
    history")."""
    p, _clock = fake_clock_provider
    create(p, "t", status="Completed")
    before = p.read("t")
    p.enqueue_for_orchestrator(ExternalRaised(instance="t", name="Ignored", data="x"))
    item = p.fetch_orchestration_item(LOCK)
    assert item is not None and len(item.messages) == 1
    p.ack_orchestration_item(item.lock_token, item.execution_id, [], [], [], ExecutionMetadata(), [])
    assert p.fetch_orchestration_item(LOCK) is None
    assert p.read("t") == before


@pytest.mark.parametrize("fake_clock_provider", PROVIDERS, indirect=True)
def test_execution_status_and_output_come_from_ack_metadata_alone(fake_clock_provider):
    """Rust ``test_execution_status_completed``: an ack whose metadata carries only
    status+output (no name) still records the execution's status and output (SPEC §15.1 ack:
    "apply status/output/completed_at"; §14 ``get_execution_info``)."""
    p, _clock = fake_clock_provider
    p.enqueue_for_orchestrator(StartOrchestration(instance="t", orchestration="TestOrch", input="{}", version="1.0.0"))
    item = p.fetch_orchestration_item(LOCK)
    p.ack_orchestration_item(item.lock_token, 1, [completed_ev("t", 1, output="Success")], [], [],
                             ExecutionMetadata(status="Completed", output="Success"), [])
    info = p.get_execution_info("t", 1)
    assert (p.list_executions("t"), info.status, info.output) == ([1], "Completed", "Success")


# --- recovery (recovery_tests / worker_reliability_test) ----------------------------------------


@pytest.mark.parametrize("store", PROVIDERS, indirect=True)
def test_restart_while_waiting_for_an_event_resumes_without_repeating_steps(store, runtimes):
    """Rust ``recovery_across_restart_*``: a runtime stops while the orchestration waits for an
    event after two activities; a new runtime on the same store (new provider object) gets the
    event and finishes. Each step is scheduled exactly once (SPEC §3.4 replay; §3.5 matching;
    §6.1 the event arrives after the subscription is persisted)."""
    calls: list[str] = []

    def register(rt: Runtime) -> None:
        @rt.register_activity("Step")
        def step(ctx, x):
            calls.append(x)
            return x

        @rt.register_orchestration("Recovery")
        def orch(ctx, _):
            a = yield ctx.schedule_activity("Step", "1")
            b = yield ctx.schedule_activity("Step", "2")
            yield ctx.wait_for_event("Resume")
            c = yield ctx.schedule_activity("Step", "3")
            d = yield ctx.schedule_activity("Step", "4")
            return a + b + c + d

    p1 = store()
    rt1 = runtimes.make(p1, _opts())
    register(rt1)
    rt1.start()
    Client(p1).start_orchestration("r", "Recovery", "")
    assert _wait(lambda: any(type(e).__name__ == "ExternalSubscribed" for e in p1.read("r")))
    rt1.shutdown(1_000)

    p2 = store()
    rt2 = runtimes.make(p2, _opts())
    register(rt2)
    rt2.start()
    c2 = Client(p2)
    c2.raise_event("r", "Resume", "go")
    st = c2.wait_for_orchestration("r", 8_000)
    assert (st.status, st.output) == ("Completed", "1234")
    scheduled = [e.input for e in p2.read("r") if isinstance(e, ActivityScheduled)]
    assert scheduled == ['"1"', '"2"', '"3"', '"4"']
    assert calls == ["1", "2", "3", "4"]


@pytest.mark.parametrize("op", ["ack_orchestration_item", "ack_work_item"])
@pytest.mark.parametrize("store", PROVIDERS, indirect=True)
def test_ack_that_commits_then_reports_an_error_completes_exactly_once(store, runtimes, op):
    """Rust ``lifecycle_fetch_and_ack_faults_preserve_orchestration_recovery...`` and
    ``worker_abandon_on_ack_failure_enables_retry``: an ack commits but its reply is a retryable
    error. The instance still completes, with exactly one OrchestrationCompleted, no
    OrchestrationFailed and one ActivityCompleted (SPEC §3.1 step 10: the retried ack finds the
    lock gone; §3.3 duplicates dropped; §18 "ack that commits then errors")."""
    base = store()
    state = {"left": 1}

    def commit_then_fail(original: Callable[..., Any], *a: Any, **k: Any) -> Any:
        result = original(*a, **k)
        if state["left"]:
            state["left"] -= 1
            raise ProviderError(f"reply of {op} lost after commit", operation=op, retryable=True)
        return result

    rt = runtimes.make(_Wrapped(base, op, commit_then_fail), _opts(orchestration_concurrency=1, worker_concurrency=1))
    rt.register_activity("Work", lambda ctx, _: "done")

    @rt.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("Work", ""))

    rt.start()
    client = Client(base)
    client.start_orchestration("x", "O", "")
    st = client.wait_for_orchestration("x", 8_000)
    assert (st.status, st.output) == ("Completed", "done")
    assert state["left"] == 0
    history = base.read("x")
    assert sum(isinstance(e, OrchestrationCompleted) for e in history) == 1
    assert not any(isinstance(e, OrchestrationFailed) for e in history)
    assert sum(isinstance(e, ActivityCompleted) for e in history) == 1


# --- lock renewal through a slow ack (shutdown_tests) -------------------------------------------


@pytest.mark.parametrize("store", PROVIDERS, indirect=True)
def test_worker_lock_stays_renewed_while_the_activity_ack_is_slow(store, runtimes):
    """Rust ``shutdown_renews_work_lock_through_graceful_acknowledgement``: the activity has
    finished and its ack is slow (a contended database) for longer than the worker lock. The
    lease is the worker's until that ack returns: no other fetcher may take it meanwhile, the ack
    then commits, and the activity runs exactly once.

    SPEC §1 (locks "renewed in the background while work runs"), §3.1 (the orchestrator pipeline
    renews "throughout", ack included - ours does for orchestrations), §11.2 (a failing renewal is
    the cancellation signal, not a slow ack). Ours stops renewing the worker lock when the
    activity returns, before its ack: the lease expires during the ack, another fetcher takes it,
    the ack fails and the activity runs again."""
    base = store()
    lock_ms = 1_000
    slow = {"left": 1}
    in_ack = threading.Event()

    def slow_first_ack(original: Callable[..., Any], *a: Any, **k: Any) -> Any:
        if slow["left"]:
            slow["left"] -= 1
            in_ack.set()
            time.sleep(lock_ms * 1.6 / 1000)
        return original(*a, **k)

    runs = {"n": 0}
    rt = runtimes.make(_Wrapped(base, "ack_work_item", slow_first_ack),
                       _opts(orchestration_concurrency=1, worker_concurrency=1, worker_lock_timeout_ms=lock_ms))

    @rt.register_activity("Charge")
    def charge(ctx, _):
        runs["n"] += 1
        return "charged"

    @rt.register_orchestration("Pay")
    def pay(ctx, _):
        return (yield ctx.schedule_activity("Charge", ""))

    rt.start()
    client = Client(base)
    client.start_orchestration("pay", "Pay", "")
    assert in_ack.wait(5)
    time.sleep(lock_ms * 1.3 / 1000)  # past the original lease, ack still in progress
    other = store()
    stolen = other.fetch_work_item(lock_ms)
    if stolen is not None:
        other.abandon_work_item(stolen.lock_token)
    assert stolen is None, "another worker could take the lease while its ack was in progress"
    st = client.wait_for_orchestration("pay", 8_000)
    assert (st.status, st.output) == ("Completed", "charged")
    assert runs["n"] == 1, f"the activity ran {runs['n']} times"


# --- shutdown (shutdown_tests) ------------------------------------------------------------------


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_idle_shutdown_returns_promptly_and_twice(store, runtimes):
    """Rust ``shutdown_returns_as_soon_as_tasks_drain`` / ``shutdown_is_idempotent``: an idle
    runtime's ``shutdown(10_000)`` does not sleep out its grace, and a second call is a no-op
    (SPEC §14 ``shutdown(timeout_ms)``: a grace period, not a delay)."""
    rt = runtimes.make(store(), _opts())
    rt.start()
    time.sleep(0.1)
    t0 = time.monotonic()
    rt.shutdown(10_000)
    rt.shutdown(None)
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("store", ["sqlite"], indirect=True)
def test_shutdown_abort_of_an_async_activity_is_not_counted_as_an_activity_failure(store, runtimes, caplog):
    """Rust ``shutdown_zero_stops_activity_and_renewal_before_returning``: ``shutdown(0)``
    cancels an in-flight async activity and gives its work item back (attempt not counted);
    nothing failed. A user watching ``metrics_snapshot()`` (SPEC §14: activity_app_errors counts
    application errors) or the logs must not see an activity failure that never happened.
    Ours counts it in ``activity_app_errors`` and logs "activity 'Slow' ... failed: ...
    CancelledError" at WARNING while the item is requeued for another runtime."""
    p = store()
    entered = threading.Event()
    rt = runtimes.make(p, _opts(orchestration_concurrency=1, worker_concurrency=1))

    @rt.register_activity("Slow")
    async def slow(ctx, _):
        entered.set()
        await asyncio.sleep(5)
        return "late"

    @rt.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("Slow", ""))

    rt.start()
    Client(p).start_orchestration("s", "O", "")
    assert entered.wait(5)
    caplog.clear()
    with caplog.at_level("WARNING", logger="duroxide_sim"):
        rt.shutdown(0)
        time.sleep(0.3)
    lease = p.fetch_work_item(1_000)
    assert lease is not None and lease.attempt_count == 1  # given back, attempt not spent
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage() and "Slow" in r.getMessage()]
    assert rt.metrics_snapshot()["activity_app_errors"] == 0
    assert failures == []
