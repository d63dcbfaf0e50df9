"""End-to-end: activity retry policies, backoff timers and per-attempt timeouts (SPEC §9)."""

from __future__ import annotations

import pytest

from duroxide_sim import Backoff, RetryPolicy, TaskFailedError

from ._helpers import STYLES, events_of, pick


def _flaky(world, name, fail_times):
    """Register an activity that fails its first ``fail_times`` calls; returns the call log."""
    calls = []

    @world.runtime.register_activity(name)
    def flaky(ctx, x):
        calls.append(x)
        if len(calls) <= fail_times:
            raise ValueError(f"attempt {len(calls)} failed")
        return f"ok after {len(calls)}"

    return calls


def _retry_orch(world, style, retry, activity="Flaky"):
    def gen(ctx, x):
        try:
            return (yield ctx.schedule_activity_with_retry(activity, x, retry))
        except TaskFailedError as exc:
            return {"error": str(exc)}

    async def coro(ctx, x):
        try:
            return await ctx.schedule_activity_with_retry(activity, x, retry)
        except TaskFailedError as exc:
            return {"error": str(exc)}

    world.runtime.register_orchestration("Retry", pick(style, gen, coro))


def _backoff_deltas(world, instance):
    """fire_at_ms - timestamp_ms of every TimerCreated (the requested delays)."""
    return [e["data"]["fireAtMs"] - e["timestamp_ms"] for e in events_of(world, instance, "TimerCreated")]


@pytest.mark.parametrize("style", STYLES)
def test_retry_succeeds_after_transient_failures(world, style):
    """A retried activity that fails twice then succeeds returns the successful result."""
    calls = _flaky(world, "Flaky", 2)
    _retry_orch(world, style, {"max_attempts": 3, "backoff": "fixed"})
    world.client.start_orchestration("i1", "Retry", "x")
    st = world.result("i1")
    assert st.output == "ok after 3"
    assert calls == ["x", "x", "x"]
    assert len(events_of(world, "i1", "ActivityScheduled")) == 3


@pytest.mark.parametrize(
    "retry,expected",
    [
        ({"max_attempts": 4, "backoff": "fixed"}, [1000, 1000, 1000]),
        ({"max_attempts": 4, "backoff": "linear"}, [100, 200, 300]),
        ({"max_attempts": 4, "backoff": "exponential"}, [100, 200, 400]),
        ({"maxAttempts": 4}, [100, 200, 400]),  # default backoff is exponential
        (RetryPolicy(4, Backoff.exponential(50, 3.0, 1000)), [50, 150, 450]),
        (RetryPolicy(5, Backoff.exponential(300, 2.0, 1000)), [300, 600, 1000, 1000]),
        (RetryPolicy(4, Backoff.linear(250, 600)), [250, 500, 600]),
        (RetryPolicy(3, Backoff.fixed(42)), [42, 42]),
    ],
    ids=["fixed", "linear", "exponential", "default", "exp-custom", "exp-capped", "linear-capped", "fixed-42"],
)
@pytest.mark.parametrize("style", STYLES)
def test_retry_backoff_timer_delays(world, style, retry, expected):
    """Backoff between attempts is a durable timer whose fire_at - now follows the policy."""
    calls = _flaky(world, "Flaky", 100)
    _retry_orch(world, style, retry)
    world.client.start_orchestration("i1", "Retry", 1)
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output["error"].startswith("Activity 'Flaky' call failed: ValueError:")
    assert _backoff_deltas(world, "i1") == expected
    assert len(calls) == len(expected) + 1
    # the timers really elapsed on the (simulated) clock between attempts
    scheduled = events_of(world, "i1", "ActivityScheduled")
    gaps = [b["timestamp_ms"] - a["timestamp_ms"] for a, b in zip(scheduled, scheduled[1:])]
    assert gaps == expected


def test_no_backoff_means_no_timers(world):
    """Backoff.none() retries immediately, without timers."""
    _flaky(world, "Flaky", 2)
    _retry_orch(world, "generator", RetryPolicy(3, Backoff.none()))
    world.client.start_orchestration("i1", "Retry", 1)
    assert world.result("i1").output == "ok after 3"
    assert events_of(world, "i1", "TimerCreated") == []


@pytest.mark.parametrize("style", STYLES)
def test_exhausted_retries_return_last_error(world, style):
    """After the last attempt the error of that last attempt is raised unchanged."""
    _flaky(world, "Flaky", 100)
    _retry_orch(world, style, {"max_attempts": 3, "backoff": "fixed"})
    world.client.start_orchestration("i1", "Retry", 1)
    assert world.result("i1").output == {"error": "Activity 'Flaky' call failed: ValueError: attempt 3 failed"}


@pytest.mark.parametrize("style", STYLES)
def test_uncaught_exhausted_retry_fails_instance(world, style):
    """An exhausted retry that is not caught fails the orchestration with the last error."""
    _flaky(world, "Flaky", 100)

    def gen(ctx, _):
        return (yield ctx.schedule_activity_with_retry("Flaky", 1, {"max_attempts": 2}))

    async def coro(ctx, _):
        return await ctx.schedule_activity_with_retry("Flaky", 1, {"max_attempts": 2})

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    st = world.result("i1")
    assert st.status == "Failed"
    assert "Activity 'Flaky' call failed: ValueError: attempt 2 failed" in st.error


@pytest.mark.parametrize("style", STYLES)
def test_per_attempt_timeout_is_not_retried(world, style):
    """An attempt exceeding timeout_ms fails with 'timeout: activity timed out' and is never retried."""
    calls = []

    @world.runtime.register_activity("Slow")
    def slow(ctx, _):
        calls.append(1)
        world.clock.advance(5_000)  # the activity takes 5 s of (simulated) time
        return "late"

    _retry_orch(world, style, {"max_attempts": 3, "timeout_ms": 1_000}, activity="Slow")
    world.client.start_orchestration("i1", "Retry")
    assert world.result("i1").output == {"error": "timeout: activity timed out"}
    assert len(calls) == 1
    assert len(events_of(world, "i1", "ActivityScheduled")) == 1
    assert _backoff_deltas(world, "i1") == [1_000]  # only the deadline timer
    # the timed-out attempt was dropped: cancel breadcrumb recorded
    crumbs = events_of(world, "i1", "ActivityCancelRequested")
    assert [c["data"]["reason"] for c in crumbs] == ["dropped_future"]


def test_attempt_within_timeout_succeeds(world):
    """An attempt finishing before its timeout returns normally."""

    @world.runtime.register_activity("Quick")
    def quick(ctx, _):
        world.clock.advance(200)
        return "done"

    _retry_orch(world, "async", RetryPolicy(3).with_timeout(1_000), activity="Quick")
    world.client.start_orchestration("i1", "Retry")
    assert world.result("i1").output == "done"


def test_timeout_applies_to_each_attempt(world):
    """With a timeout, failed attempts are still retried; a later attempt may then time out."""
    calls = []

    @world.runtime.register_activity("FailThenHang")
    def fail_then_hang(ctx, _):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("first")
        world.clock.advance(10_000)
        return "too late"

    _retry_orch(world, "generator", {"max_attempts": 3, "timeout_ms": 500, "backoff": "fixed"}, activity="FailThenHang")
    world.client.start_orchestration("i1", "Retry")
    assert world.result("i1").output == {"error": "timeout: activity timed out"}
    assert len(calls) == 2
    assert _backoff_deltas(world, "i1") == [500, 1000, 500]  # deadline, backoff, deadline


def test_total_timeout_alias_is_per_attempt(world):
    """``total_timeout_ms`` overrides ``timeout_ms`` and is a per-attempt timeout."""
    calls = []

    @world.runtime.register_activity("Slow")
    def slow(ctx, _):
        calls.append(1)
        world.clock.advance(2_000)
        return "late"

    _retry_orch(world, "generator", {"max_attempts": 2, "timeout_ms": 60_000, "total_timeout_ms": 300}, activity="Slow")
    world.client.start_orchestration("i1", "Retry")
    assert world.result("i1").output == {"error": "timeout: activity timed out"}
    assert _backoff_deltas(world, "i1") == [300]


def test_retry_logs_warning_once_per_failed_attempt(world, caplog):
    """Each failed attempt with retries left logs one replay-safe warning."""
    _flaky(world, "Flaky", 2)
    _retry_orch(world, "generator", {"max_attempts": 3})
    caplog.set_level("WARNING", logger="duroxide_sim.orchestration")
    world.client.start_orchestration("i1", "Retry", 1)
    assert world.result("i1").output == "ok after 3"
    warnings = [r.getMessage() for r in caplog.records if r.name == "duroxide_sim.orchestration"]
    assert len(warnings) == 2
    assert "attempt 1/3" in warnings[0] and "attempt 2/3" in warnings[1]


def test_retry_policy_validation():
    """max_attempts < 1, bad timeouts and unknown dict keys are rejected."""
    with pytest.raises(ValueError):
        RetryPolicy(0)
    with pytest.raises(ValueError):
        RetryPolicy(3, timeout_ms=0)
    with pytest.raises(ValueError):
        RetryPolicy.from_dict({"attempts": 3})


def test_retry_inside_all_runs_its_loop(world):
    """A retry task inside all() runs its attempts as a child of the join (duroxide-python
    0.2.2 allows it; it used to be refused with a TypeError): a first failure is retried."""
    calls = []

    @world.runtime.register_activity("A")
    def a(ctx, x):
        calls.append(x)
        if len(calls) == 1:
            raise RuntimeError("first attempt fails")
        return x

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_activity_with_retry("A", 1, {"backoff": "fixed"})]))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [{"ok": 1}]
    assert calls == [1, 1]
