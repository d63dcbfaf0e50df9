"""Scenarios from the Node.js SDK's behavioural suites (microsoft/duroxide-node ``__tests__/``),
re-expressed against duroxide_sim's Python API.

Sources, in the order of this file:

* ``races.test.js`` - ``ctx.all`` / ``ctx.race`` over activities, timers, positional waits and
  queue dequeues; value types through join/select; cooperative activity cancellation of a race
  loser (``is_cancelled()``), which stays set after the cancellation grace period.
* ``advanced_features.test.js`` - typed registration, retry, cancellation of a parent with a
  child, custom status, event queues, continue-as-new, versioned sub-orchestrations, error
  propagation and compensation, nondeterminism after a code change.
* ``async_blocks.test.js`` - multi-step "blocks" written as sub-orchestrations and joined or
  raced by a parent.
* ``lifecycle.test.js`` - the parts that are workflow behaviour: an activity round trip on
  SQLite, races that preserve failures and values (raw and typed), invalid shutdown timeouts
  refused without stopping anything, a quick idle shutdown, invalid options and version
  registration order refused.
* ``lock_options.test.js`` - every lock timeout / renewal buffer option reaches the provider
  calls and the renewal periods (SPEC §1), and the defaults.
* ``replay_isolation.test.js`` - a replay that lost its orchestration lock keeps running while a
  second dispatcher replays the same instance; neither replay sees the other's KV / custom
  status, and the stale replay's commit is refused.
* ``scenarios/toygres-node.test.js`` - the toygres control-plane orchestrations (create with a
  readiness polling loop and a detached actor, an eternal health-check actor with
  continue-as-new and a timer/event race, delete, backup with ``utc_now`` and polling, an
  eternal pruner stopped by cancellation, and the whole lifecycle).

Most tests run in the simulated world (virtual clock, no threads). Those that need an activity
running while the orchestration moves on, or real lock expiry, use a real Runtime with short
polls and short locks.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from duroxide_sim import (
    Client,
    ConfigurationError,
    InMemoryProvider,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
)
from duroxide_sim.runtime.options import renewal_period_ms


from ._helpers import SecondRuntime, events_of, kinds, wait_until


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _run(world: Any, name: str, inp: Any = None, instance: str | None = None) -> Any:
    """Start ``name`` in the simulated world, run it to quiescence, return its status."""
    inst = instance or name
    world.client.start_orchestration(inst, name, inp)
    world.run()
    return world.client.get_status(inst)


class _Live:
    """A real Runtime + Client on one provider (short polls), shut down at teardown."""

    def __init__(self, provider: Any = None, **opts: Any) -> None:
        base: dict[str, Any] = dict(dispatcher_poll_interval_ms=5)
        base.update(opts)
        self.provider = provider if provider is not None else InMemoryProvider()
        self.runtime = Runtime(self.provider, RuntimeOptions(**base))
        self.client = Client(self.provider)

    def start(self) -> "_Live":
        self.runtime.start()
        return self

    def close(self) -> None:
        try:
            self.runtime.shutdown(500)
        except Exception:  # noqa: BLE001 - teardown
            pass


# =============================================================================================
# races.test.js - all() / race() with mixed task types
# =============================================================================================


def test_all_joins_an_activity_and_a_timer(world) -> None:
    """races: 'joins activity + timer'. Join results come in list order as {"ok": v}; a timer's
    entry is {"ok": None} (SPEC §4, §17)."""
    world.runtime.register_activity("Slow", lambda ctx, x: f"done-{x}")

    @world.runtime.register_orchestration("AllActivityTimer")
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Slow", "work"), ctx.schedule_timer(50)]))

    st = _run(world, "AllActivityTimer")
    assert (st.status, st.output) == ("Completed", [{"ok": "done-work"}, {"ok": None}])


def test_all_joins_an_activity_and_an_external_event(world) -> None:
    """races: 'joins activity + waitEvent'. The event raised after the subscription exists
    arrives decoded as an object in its list position (SPEC §6.1, §17)."""
    world.runtime.register_activity("Quick", lambda ctx, x: f"quick-{x}")

    @world.runtime.register_orchestration("AllActivityWait")
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Quick", "go"), ctx.wait_for_event("signal")]))

    world.client.start_orchestration("aw", "AllActivityWait", None)
    world.run()
    assert world.client.get_status("aw").status == "Running"
    world.client.raise_event("aw", "signal", {"msg": "hi"})
    world.run()
    st = world.client.get_status("aw")
    assert (st.status, st.output) == ("Completed", [{"ok": "quick-go"}, {"ok": {"msg": "hi"}}])


def test_all_joins_two_timers(world) -> None:
    """races: 'joins multiple timers'. Both entries are {"ok": None}; both timers fired."""

    @world.runtime.register_orchestration("AllTimers")
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_timer(50), ctx.schedule_timer(100)]))

    st = _run(world, "AllTimers")
    assert (st.status, st.output) == ("Completed", [{"ok": None}, {"ok": None}])
    assert kinds(world, "AllTimers").count("TimerFired") == 2


def test_all_joins_an_activity_and_a_dequeue_without_double_encoding(world) -> None:
    """races: 'joins activity + dequeueEvent - value is not double-serialized'. An enqueued
    object arrives in the join as a dict, decoded once (SPEC §6.2, §17)."""
    world.runtime.register_activity("Quick", lambda ctx, x: f"quick-{x}")

    @world.runtime.register_orchestration("AllActivityDequeue")
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Quick", "go"), ctx.dequeue_event("inbox")]))

    world.client.start_orchestration("ad", "AllActivityDequeue", None)
    world.run()
    world.client.enqueue_event("ad", "inbox", {"prompt": "HELLO"})
    world.run()
    st = world.client.get_status("ad")
    assert st.status == "Completed"
    assert st.output == [{"ok": "quick-go"}, {"ok": {"prompt": "HELLO"}}]
    assert isinstance(st.output[1]["ok"], dict)


def test_race_activity_beats_a_long_timer(world) -> None:
    """races: 'races activity vs timer (activity wins)'. {"index": 0, "value": "fast-go"}; the
    losing timer gets no cancellation event (SPEC §4: timer loser → nothing)."""
    world.runtime.register_activity("Fast", lambda ctx, x: f"fast-{x}")

    @world.runtime.register_orchestration("RaceActTimer")
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("Fast", "go"), ctx.schedule_timer(60_000)))

    st = _run(world, "RaceActTimer")
    assert (st.status, st.output) == ("Completed", {"index": 0, "value": "fast-go"})
    assert "ActivityCancelRequested" not in kinds(world, "RaceActTimer")


def test_race_timer_beats_an_activity_which_sees_is_cancelled() -> None:
    """races: 'races timer vs activity (timer wins, activity cooperatively cancels)'. The timer
    wins ({"index": 0, "value": None}); the losing activity's worker row is deleted, the worker
    notices at its next lock renewal and ``ActivityContext.is_cancelled()`` turns True
    (SPEC §4 losers, §11.2)."""
    live = _Live(worker_lock_timeout_ms=1_000).start()
    cancelled = threading.Event()
    started = threading.Event()
    try:
        @live.runtime.register_activity("Glacial")
        def glacial(ctx, _):
            started.set()
            deadline = time.monotonic() + 5
            while not ctx.is_cancelled() and time.monotonic() < deadline:
                time.sleep(0.02)
            if ctx.is_cancelled():
                cancelled.set()
            return "cancelled"

        @live.runtime.register_orchestration("RaceTimerAct")
        def orch(ctx, _):
            return (yield ctx.race(ctx.schedule_timer(50), ctx.schedule_activity("Glacial", "x")))

        live.client.start_orchestration("rta", "RaceTimerAct", None)
        result = live.client.wait_for_orchestration("rta", 5_000)
        assert (result.status, result.output) == ("Completed", {"index": 0, "value": None})
        assert started.is_set()
        assert cancelled.wait(3), "the losing activity never saw is_cancelled()"
        hist = [e["kind"] for e in live.client.read_execution_history("rta", 1)]
        assert "ActivityCancelRequested" in hist and "ActivityCompleted" not in hist, hist
    finally:
        live.close()


def test_is_cancelled_stays_true_after_the_grace_period() -> None:
    """races: 'isCancelled() stays true after the cancellation grace period'. Once a losing
    activity has been told it is cancelled, the runtime gives up on it after the grace period
    (SPEC §11.2), but the function may keep running: ``is_cancelled()`` must never go back to
    False. (Grace shortened to 100 ms.)"""
    live = _Live(worker_lock_timeout_ms=1_000, activity_cancellation_grace_period_ms=100).start()
    samples: list[tuple[float, bool]] = []
    first: list[float] = []
    done = threading.Event()
    try:
        @live.runtime.register_activity("Stubborn")
        def stubborn(ctx, _):
            start = time.monotonic()
            while True:
                c = ctx.is_cancelled()
                now = time.monotonic()
                if c and not first:
                    first.append(now)
                samples.append((now, c))
                if first and now - first[0] > 0.4:  # grace (0.1 s) + 0.3 s more
                    break
                if now - start > 5:
                    break
                time.sleep(0.02)
            done.set()
            return "late"

        @live.runtime.register_orchestration("RaceTimerStubborn")
        def orch(ctx, _):
            return (yield ctx.race(ctx.schedule_timer(50), ctx.schedule_activity("Stubborn", "x")))

        live.client.start_orchestration("sticky", "RaceTimerStubborn", None)
        result = live.client.wait_for_orchestration("sticky", 5_000)
        assert (result.status, result.output["index"]) == ("Completed", 0)
        assert done.wait(6)
        assert first, "the activity never saw is_cancelled()"
        since = [s for s in samples if s[0] >= first[0]]
        assert since[-1][0] - first[0] > 0.1, "the activity did not keep checking after the grace period"
        went_back = [round(t - first[0], 3) for t, c in since if not c]
        assert not went_back, f"is_cancelled() went back to False {went_back[0]} s after it was first True"
    finally:
        live.close()


def test_race_external_event_beats_a_long_timer(world) -> None:
    """races: 'races waitEvent vs timer (event wins)'. {"index": 0, "value": {"ok": True}}."""

    @world.runtime.register_orchestration("RaceWaitTimer")
    def orch(ctx, _):
        return (yield ctx.race(ctx.wait_for_event("approval"), ctx.schedule_timer(60_000)))

    world.client.start_orchestration("rw", "RaceWaitTimer", None)
    world.run_for(300)
    world.client.raise_event("rw", "approval", {"ok": True})
    world.run()
    st = world.client.get_status("rw")
    assert (st.status, st.output) == ("Completed", {"index": 0, "value": {"ok": True}})


def test_race_timer_against_dequeue_delivers_an_object(world) -> None:
    """races: 'race(timer, dequeueEvent) - value is not double-serialized (#59)'."""

    @world.runtime.register_orchestration("RaceDequeue")
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_timer(60_000), ctx.dequeue_event("messages")))

    world.client.start_orchestration("rd", "RaceDequeue", None)
    world.run_for(500)
    world.client.enqueue_event("rd", "messages", {"prompt": "HELLO"})
    world.run()
    st = world.client.get_status("rd")
    assert (st.status, st.output) == ("Completed", {"index": 1, "value": {"prompt": "HELLO"}})
    assert isinstance(st.output["value"], dict)


def test_race_two_timers_shorter_wins(world) -> None:
    """races: 'races two timers (shorter wins)'. The 50 ms timer wins even though both are
    scheduled in the same turn; the instance completes without waiting for the long one."""

    @world.runtime.register_orchestration("RaceTwoTimers")
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_timer(50), ctx.schedule_timer(60_000)))

    world.client.start_orchestration("rt", "RaceTwoTimers", None)
    world.run_for(1_000)
    st = world.client.get_status("rt")
    assert (st.status, st.output) == ("Completed", {"index": 0, "value": None})


def test_all_preserves_every_json_value_type(world) -> None:
    """races: 'all() preserves all value types'. str, int, dict, list, None, bool come back as
    themselves (one JSON decode, SPEC §17)."""
    values = {"ReturnString": "hello", "ReturnNumber": 42, "ReturnObject": {"key": "val"},
              "ReturnArray": [1, 2, 3], "ReturnNull": None, "ReturnBool": True}
    for name, v in values.items():
        world.runtime.register_activity(name, lambda ctx, _, v=v: v)

    @world.runtime.register_orchestration("AllTypes")
    def orch(ctx, _):
        return (yield ctx.all([ctx.schedule_activity(n, None) for n in values]))

    st = _run(world, "AllTypes")
    assert st.status == "Completed"
    vals = [r["ok"] for r in st.output]
    assert vals == list(values.values())
    assert [type(v) for v in vals] == [str, int, dict, list, type(None), bool]


@pytest.mark.parametrize("value", ["hello", 42, {"key": "val"}], ids=["string", "number", "object"])
def test_race_preserves_value_types(world, value) -> None:
    """races: 'race() preserves all value types (string, number, object)'."""
    world.runtime.register_activity("FastVal", lambda ctx, _: value)

    @world.runtime.register_orchestration("RaceValue")
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("FastVal", None), ctx.schedule_timer(60_000)))

    st = _run(world, "RaceValue")
    assert st.status == "Completed"
    assert st.output == {"index": 0, "value": value}
    assert type(st.output["value"]) is type(value)


# =============================================================================================
# advanced_features.test.js
# =============================================================================================


def test_typed_registration_round_trip(world) -> None:
    """advanced_features: 'typed registration round trip' - typed activity + typed
    orchestration + ``schedule_activity_typed``: 21 → 42 (SPEC §17 _typed variants)."""

    def double(ctx, n: int) -> int:
        return n * 2

    def typed_orch(ctx, inp: int):
        return (yield ctx.schedule_activity_typed("Double", inp))

    world.runtime.register_activity_typed("Double", double)
    world.runtime.register_orchestration_typed("TypedRegRT", typed_orch)
    st = _run(world, "TypedRegRT", 21)
    assert (st.status, st.output) == ("Completed", 42)


def test_typed_activities_fan_out_from_a_plain_orchestration(world) -> None:
    """advanced_features: 'typed registration fan out' - 5+10 and 5*3 joined → 30."""

    def add_ten(ctx, n: int) -> int:
        return n + 10

    def mul_three(ctx, n: int) -> int:
        return n * 3

    world.runtime.register_activity_typed("AddTen", add_ten)
    world.runtime.register_activity_typed("MulThree", mul_three)

    @world.runtime.register_orchestration("TypedFanOut")
    def orch(ctx, n):
        r = yield ctx.all([ctx.schedule_activity("AddTen", n), ctx.schedule_activity("MulThree", n)])
        return r[0]["ok"] + r[1]["ok"]

    st = _run(world, "TypedFanOut", 5)
    assert (st.status, st.output) == ("Completed", 30)


def test_typed_activity_wins_a_race(world) -> None:
    """advanced_features: 'typed registration race wins' - the race value is the number."""

    def quick_calc(ctx, n: int) -> int:
        return n * 2

    world.runtime.register_activity_typed("QuickCalc", quick_calc)

    @world.runtime.register_orchestration("TypedRace")
    def orch(ctx, _):
        w = yield ctx.race(ctx.schedule_activity("QuickCalc", 21), ctx.schedule_timer(2_000))
        return w["value"]

    st = _run(world, "TypedRace")
    assert (st.status, st.output) == ("Completed", 42)


def test_retry_succeeds_after_failures(world) -> None:
    """advanced_features: 'retry succeeds after failures' - fails twice, succeeds on attempt 3
    with ``{"maxAttempts": 5, "backoff": "fixed"}`` (camelCase keys accepted, SPEC §17; fixed
    1 s back-off between attempts, SPEC §9)."""
    attempts = []

    @world.runtime.register_activity("Flaky")
    def flaky(ctx, _):
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("transient")
        return f"success-on-{len(attempts)}"

    @world.runtime.register_orchestration("RetryAfterFail")
    def orch(ctx, _):
        return (yield ctx.schedule_activity_with_retry("Flaky", "go", {"maxAttempts": 5, "backoff": "fixed"}))

    st = _run(world, "RetryAfterFail")
    assert (st.status, st.output) == ("Completed", "success-on-3")
    scheduled = [e for e in events_of(world, "RetryAfterFail", "ActivityScheduled") if e["data"]["name"] == "Flaky"]
    assert len(scheduled) == 3
    assert kinds(world, "RetryAfterFail").count("TimerCreated") == 2  # one back-off per failure


def test_retry_exhaustion_runs_compensation(world) -> None:
    """advanced_features: 'retry exhaustion compensation' - after 2 failed attempts the error
    is raised at the yield; the except branch compensates."""

    @world.runtime.register_activity("AlwaysFails")
    def always_fails(ctx, _):
        raise RuntimeError("permanent error")

    world.runtime.register_activity("Compensate", lambda ctx, _: "compensated")

    @world.runtime.register_orchestration("RetryComp")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity_with_retry("AlwaysFails", None, {"max_attempts": 2, "backoff": "fixed"})
            return "should not reach"
        except Exception as e:  # noqa: BLE001
            assert "permanent error" in str(e)
            return (yield ctx.schedule_activity("Compensate", None))

    st = _run(world, "RetryComp")
    assert (st.status, st.output) == ("Completed", "compensated")
    failed = [e for e in events_of(world, "RetryComp", "ActivityScheduled") if e["data"]["name"] == "AlwaysFails"]
    assert len(failed) == 2


def test_cancel_propagates_to_a_sub_orchestration(world) -> None:
    """advanced_features: 'cancel propagates to sub orchestration'. The parent ends Failed with
    ``canceled: test-cancel``; the waiting child receives CancelInstance('parent canceled')
    and ends Failed too (SPEC §3.9 Cancelled, §11.1 cascade)."""

    @world.runtime.register_orchestration("LongChild6")
    def child(ctx, _):
        yield ctx.wait_for_event("never_comes")
        return "child-done"

    @world.runtime.register_orchestration("CancelParent")
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration("LongChild6", None))

    world.client.start_orchestration("cp", "CancelParent", None)
    world.run()
    (sched,) = events_of(world, "cp", "SubOrchestrationScheduled")
    child_id = f"cp::{sched['data']['instance']}"
    assert world.client.get_status(child_id).status == "Running"
    world.client.cancel_instance("cp", "test-cancel")
    world.run()
    st = world.client.get_status("cp")
    assert (st.status, st.error) == ("Failed", "canceled: test-cancel")
    cst = world.client.get_status(child_id)
    assert (cst.status, cst.error) == ("Failed", "canceled: parent canceled")


def test_cancel_of_a_completed_instance_is_a_no_op(world) -> None:
    """advanced_features: 'cancel completed is noop' - no error, status stays Completed and no
    event is added (SPEC §11.1: ignored if terminal)."""
    world.runtime.register_activity("Echo7", lambda ctx, x: x)

    @world.runtime.register_orchestration("QuickOrch")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("Echo7", "hello"))

    st = _run(world, "QuickOrch")
    assert (st.status, st.output) == ("Completed", "hello")
    before = kinds(world, "QuickOrch")
    world.client.cancel_instance("QuickOrch", "test-cancel-noop")
    world.run()
    st = world.client.get_status("QuickOrch")
    assert (st.status, st.output) == ("Completed", "hello")
    assert kinds(world, "QuickOrch") == before


def test_race_between_sub_orchestrations_fast_child_wins(world) -> None:
    """advanced_features: 'race sub orchestration wins' - {"index": 0, "value": "work-done"};
    the losing child gets SubOrchestrationCancelRequested and is cancelled (SPEC §4, §3.10)."""
    world.runtime.register_activity("Work8", lambda ctx, _: "work-done")

    @world.runtime.register_orchestration("FastChild8")
    def fast(ctx, _):
        return (yield ctx.schedule_activity("Work8", None))

    @world.runtime.register_orchestration("SlowChild8")
    def slow(ctx, _):
        yield ctx.wait_for_event("never")
        return "slow-done"

    @world.runtime.register_orchestration("RaceParent8")
    def parent(ctx, _):
        return (yield ctx.race(ctx.schedule_sub_orchestration("FastChild8", None),
                               ctx.schedule_sub_orchestration("SlowChild8", None)))

    st = _run(world, "RaceParent8")
    assert (st.status, st.output) == ("Completed", {"index": 0, "value": "work-done"})
    slow_sched = [e for e in events_of(world, "RaceParent8", "SubOrchestrationScheduled") if e["data"]["name"] == "SlowChild8"]
    assert len(slow_sched) == 1
    assert "SubOrchestrationCancelRequested" in kinds(world, "RaceParent8")
    loser = world.client.get_status(f"RaceParent8::{slow_sched[0]['data']['instance']}")
    assert loser.status == "Failed" and loser.error.startswith("canceled:"), (loser.status, loser.error)


def test_timers_interleaved_with_activities(world) -> None:
    """advanced_features: 'timer activity interleave'."""
    world.runtime.register_activity("Step9", lambda ctx, x: f"step:{x}")

    @world.runtime.register_orchestration("TimerInterleave")
    def orch(ctx, _):
        yield ctx.schedule_timer(50)
        r1 = yield ctx.schedule_activity("Step9", "1")
        yield ctx.schedule_timer(50)
        r2 = yield ctx.schedule_activity("Step9", "2")
        return f"{r1},{r2}"

    st = _run(world, "TimerInterleave")
    assert (st.status, st.output) == ("Completed", "step:1,step:2")
    assert [k for k in kinds(world, "TimerInterleave") if k in ("TimerFired", "ActivityCompleted")] == [
        "TimerFired", "ActivityCompleted", "TimerFired", "ActivityCompleted"]


def test_zero_duration_timer(world) -> None:
    """advanced_features: 'zero duration timer' - a 0 ms timer is valid and fires (SPEC §5)."""
    world.runtime.register_activity("After10", lambda ctx, _: "after-timer")

    @world.runtime.register_orchestration("ZeroTimer")
    def orch(ctx, _):
        yield ctx.schedule_timer(0)
        return (yield ctx.schedule_activity("After10", None))

    st = _run(world, "ZeroTimer")
    assert (st.status, st.output) == ("Completed", "after-timer")
    assert "TimerFired" in kinds(world, "ZeroTimer")


def test_custom_status_across_turns(world) -> None:
    """advanced_features: 'custom status multi turn lifecycle' - set/read/reset across turns
    (SPEC §13)."""
    world.runtime.register_activity("Noop11", lambda ctx, _: "ok")

    @world.runtime.register_orchestration("StatusLifecycle")
    def orch(ctx, _):
        ctx.set_custom_status("phase1")
        yield ctx.schedule_activity("Noop11", None)
        s1 = ctx.get_custom_status()
        ctx.set_custom_status("phase2")
        yield ctx.schedule_activity("Noop11", None)
        s2 = ctx.get_custom_status()
        ctx.reset_custom_status()
        yield ctx.schedule_activity("Noop11", None)
        s3 = ctx.get_custom_status()
        return f"{s1},{s2},{s3 if s3 is not None else 'none'}"

    st = _run(world, "StatusLifecycle")
    assert (st.status, st.output) == ("Completed", "phase1,phase2,none")
    assert st.custom_status is None


def test_custom_status_visible_from_the_client_while_waiting(world) -> None:
    """advanced_features: 'custom status visible from client'."""

    @world.runtime.register_orchestration("StatusVisible")
    def orch(ctx, _):
        ctx.set_custom_status("processing")
        yield ctx.wait_for_event("proceed")
        return "done"

    world.client.start_orchestration("sv", "StatusVisible", None)
    world.run()
    st = world.client.get_status("sv")
    assert (st.status, st.custom_status) == ("Running", "processing")
    world.client.raise_event("sv", "proceed", "go")
    world.run()
    st = world.client.get_status("sv")
    assert (st.status, st.output, st.custom_status) == ("Completed", "done", "processing")


def test_event_queue_is_fifo(world) -> None:
    """advanced_features: 'event queue fifo ordering'."""

    @world.runtime.register_orchestration("FifoTest")
    def orch(ctx, _):
        m1 = yield ctx.dequeue_event("work")
        m2 = yield ctx.dequeue_event("work")
        m3 = yield ctx.dequeue_event("work")
        return f"{m1},{m2},{m3}"

    world.client.start_orchestration("fifo", "FifoTest", None)
    world.run()
    for v in ("first", "second", "third"):
        world.client.enqueue_event("fifo", "work", v)
    world.run()
    st = world.client.get_status("fifo")
    assert (st.status, st.output) == ("Completed", "first,second,third")


def test_event_queues_are_isolated_by_name(world) -> None:
    """advanced_features: 'event queue multi queue isolation'."""

    @world.runtime.register_orchestration("MultiQueue")
    def orch(ctx, _):
        a1 = yield ctx.dequeue_event("alpha")
        b1 = yield ctx.dequeue_event("beta")
        a2 = yield ctx.dequeue_event("alpha")
        return f"a:{a1}+{a2},b:{b1}"

    world.client.start_orchestration("mq", "MultiQueue", None)
    world.run()
    world.client.enqueue_event("mq", "alpha", "a-first")
    world.client.enqueue_event("mq", "beta", "b-first")
    world.client.enqueue_event("mq", "alpha", "a-second")
    world.run()
    st = world.client.get_status("mq")
    assert (st.status, st.output) == ("Completed", "a:a-first+a-second,b:b-first")


def test_continue_as_new_with_an_activity_per_execution(world) -> None:
    """advanced_features: 'continue as new with activity' - 3 → 2 → 1, final 'recorded:1';
    three executions, the first two ContinuedAsNew (SPEC §8)."""
    world.runtime.register_activity("Record", lambda ctx, n: f"recorded:{n}")

    @world.runtime.register_orchestration("CanCounter")
    def orch(ctx, n):
        r = yield ctx.schedule_activity("Record", n)
        if n > 1:
            yield ctx.continue_as_new(n - 1)
            return None
        return r

    st = _run(world, "CanCounter", 3)
    assert (st.status, st.output) == ("Completed", "recorded:1")
    assert world.client.list_executions("CanCounter") == [1, 2, 3]
    assert world.client.get_execution_info("CanCounter", 1).status == "ContinuedAsNew"


def test_versioned_sub_orchestration_with_an_explicit_pin(world) -> None:
    """advanced_features: 'versioned sub orchestration explicit pin' - asking for 1.0.0 runs
    1.0.0 although 1.0.1 is registered; without a version the latest runs (SPEC §12)."""
    world.runtime.register_orchestration_versioned("VChild", "1.0.0", lambda ctx, _: "v1-result")
    world.runtime.register_orchestration_versioned("VChild", "1.0.1", lambda ctx, _: "v2-result")

    @world.runtime.register_orchestration("VersionParent")
    def parent(ctx, _):
        pinned = yield ctx.schedule_sub_orchestration_versioned("VChild", "1.0.0", None)
        latest = yield ctx.schedule_sub_orchestration("VChild", None)
        return [pinned, latest]

    st = _run(world, "VersionParent")
    assert (st.status, st.output) == ("Completed", ["v1-result", "v2-result"])


def test_sub_orchestration_error_reaches_the_parent(world) -> None:
    """advanced_features: 'error sub orchestration propagates' - the child's activity failure
    fails the child; the parent catches it at the yield with the activity's message in the
    error text (SPEC §7 propagation)."""

    @world.runtime.register_activity("FailAct")
    def fail_act(ctx, _):
        raise RuntimeError("child-error")

    @world.runtime.register_orchestration("FailChild")
    def child(ctx, _):
        yield ctx.schedule_activity("FailAct", None)
        return "ok"

    @world.runtime.register_orchestration("ErrorParent")
    def parent(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration("FailChild", None)
        except Exception as e:  # noqa: BLE001
            return f"caught:{e}"
        return "no-error"

    st = _run(world, "ErrorParent")
    assert st.status == "Completed"
    assert st.output.startswith("caught:") and "child-error" in st.output, st.output


def test_saga_compensation_debit_ship_refund(world) -> None:
    """advanced_features: 'error compensation debit ship refund'."""
    world.runtime.register_activity("Debit", lambda ctx, _: "debited")

    @world.runtime.register_activity("Ship")
    def ship(ctx, _):
        raise RuntimeError("ship-failed")

    world.runtime.register_activity("Refund", lambda ctx, _: "refunded")

    @world.runtime.register_orchestration("Saga")
    def saga(ctx, _):
        debit = yield ctx.schedule_activity("Debit", "order-1")
        try:
            yield ctx.schedule_activity("Ship", "order-1")
        except Exception:  # noqa: BLE001
            refund = yield ctx.schedule_activity("Refund", "order-1")
            return f"compensated:{debit}:{refund}"
        return f"shipped:{debit}"

    st = _run(world, "Saga")
    assert (st.status, st.output) == ("Completed", "compensated:debited:refunded")


def _phase_one(world: Any, name: str, extra: tuple[str, ...] = ()) -> None:
    world.runtime.register_activity("Work", lambda ctx, _: "done")
    for n in extra:
        world.runtime.register_activity(n, lambda ctx, _: "extra")

    @world.runtime.register_orchestration(name)
    def v1(ctx, _):
        yield ctx.schedule_activity("Work", "x")
        yield ctx.wait_for_event("proceed")
        return "v1"

    world.client.start_orchestration(name, name, None)
    world.run()
    assert world.client.get_status(name).status == "Running"


def test_nondeterminism_when_an_activity_becomes_a_timer(world) -> None:
    """advanced_features: 'nondeterminism command type swap'. Deployed code now yields a timer
    where history has ActivityScheduled: the next turn fails with a nondeterminism error
    (SPEC §3.5 different kinds never match, §3.11)."""
    _phase_one(world, "NondetSwap")
    v2 = SecondRuntime(world)
    v2.runtime.register_activity("Work", lambda ctx, _: "done")

    @v2.runtime.register_orchestration("NondetSwap")
    def swapped(ctx, _):
        yield ctx.schedule_timer(100)
        yield ctx.wait_for_event("proceed")
        return "v2"

    v2.client.raise_event("NondetSwap", "proceed", "go")
    v2.run()
    st = v2.client.get_status("NondetSwap")
    assert st.status == "Failed", (st.status, st.output)
    assert st.error.startswith("nondeterministic:"), st.error


def test_nondeterminism_when_an_extra_activity_is_inserted(world) -> None:
    """advanced_features: 'nondeterminism extra activity'. The new code yields an extra activity
    where history has the event subscription (SPEC §3.5: changed order is nondeterminism)."""
    _phase_one(world, "NondetExtra", ("Extra",))
    v2 = SecondRuntime(world)
    v2.runtime.register_activity("Work", lambda ctx, _: "done")
    v2.runtime.register_activity("Extra", lambda ctx, _: "extra")

    @v2.runtime.register_orchestration("NondetExtra")
    def extra(ctx, _):
        yield ctx.schedule_activity("Work", "x")
        yield ctx.schedule_activity("Extra", "x")
        yield ctx.wait_for_event("proceed")
        return "v2"

    v2.client.raise_event("NondetExtra", "proceed", "go")
    v2.run()
    st = v2.client.get_status("NondetExtra")
    assert st.status == "Failed", (st.status, st.output)
    assert st.error.startswith("nondeterministic:"), st.error


# =============================================================================================
# async_blocks.test.js - blocks as sub-orchestrations, joined or raced
# =============================================================================================


def _ok_values(results: list[dict[str, Any]]) -> list[Any]:
    return [r["ok"] for r in results]


def test_blocks_joined_with_control_flow(world) -> None:
    """async_blocks 1: 'async block join with control flow'."""
    rt = world.runtime
    rt.register_activity("Step", lambda ctx, x: f"step:{x}")
    rt.register_activity("Check", lambda ctx, x: f"check:{x}")

    @rt.register_orchestration("BlockA")
    def block_a(ctx, _):
        first = yield ctx.schedule_activity("Step", "A1")
        second = None
        if "step" in first:
            second = yield ctx.schedule_activity("Step", "A2")
        return f"A:[{first},{second}]"

    @rt.register_orchestration("BlockB")
    def block_b(ctx, _):
        results = [(yield ctx.schedule_activity("Check", "B1"))]
        for i in (2, 3):
            results.append((yield ctx.schedule_activity("Step", f"B{i}")))
        return f"B:[{','.join(results)}]"

    @rt.register_orchestration("BlockC")
    def block_c(ctx, _):
        yield ctx.schedule_timer(5)
        r = yield ctx.schedule_activity("Step", "C1")
        return f"C:[timer,{r}]"

    @rt.register_orchestration("JoinBlocks")
    def parent(ctx, _):
        r = yield ctx.all([ctx.schedule_sub_orchestration(n, None) for n in ("BlockA", "BlockB", "BlockC")])
        return ",".join(_ok_values(r))

    st = _run(world, "JoinBlocks")
    assert (st.status, st.output) == (
        "Completed", "A:[step:A1,step:A2],B:[check:B1,step:B2,step:B3],C:[timer,step:C1]")


def test_many_blocks_joined_in_order(world) -> None:
    """async_blocks 2: 'async block join many' - five children, results in list order."""
    world.runtime.register_activity("Work", lambda ctx, x: f"done:{x}")

    @world.runtime.register_orchestration("JoinManyBlock")
    def block(ctx, inp):
        index, delay = inp.split(":")
        r = yield ctx.schedule_activity("Work", delay)
        return f"block{index}:{r}"

    @world.runtime.register_orchestration("JoinMany")
    def parent(ctx, _):
        r = yield ctx.all([ctx.schedule_sub_orchestration("JoinManyBlock", f"{i}:{(5 - i) * 5}") for i in range(5)])
        return ",".join(_ok_values(r))

    st = _run(world, "JoinMany")
    assert st.status == "Completed"
    assert st.output == ",".join(f"block{i}:done:{(5 - i) * 5}" for i in range(5))


def test_sequential_block(world) -> None:
    """async_blocks 3: 'async block sequential' (no sub-orchestrations)."""
    world.runtime.register_activity("Process", lambda ctx, x: f"processed:{x}")

    @world.runtime.register_orchestration("SequentialBlocks")
    def orch(ctx, inp):
        a = yield ctx.schedule_activity("Process", inp)
        b = yield ctx.schedule_activity("Process", "extra")
        phase2 = yield ctx.schedule_activity("Process", f"{a}+{b}")
        yield ctx.schedule_timer(5)
        final = yield ctx.schedule_activity("Process", phase2)
        return f"final:{final}"

    st = _run(world, "SequentialBlocks", "start")
    assert (st.status, st.output) == (
        "Completed", "final:processed:processed:processed:start+processed:extra")


def test_racing_blocks_fast_block_wins(world) -> None:
    """async_blocks 4: 'async block select racing'."""
    rt = world.runtime
    rt.register_activity("Fast", lambda ctx, x: f"fast:{x}")
    rt.register_activity("Slow", lambda ctx, x: f"slow:{x}")

    @rt.register_orchestration("RaceFastBlock")
    def fast(ctx, _):
        a = yield ctx.schedule_activity("Fast", "1")
        b = yield ctx.schedule_activity("Fast", "2")
        return f"fast_block:[{a},{b}]"

    @rt.register_orchestration("RaceSlowBlock")
    def slow(ctx, _):
        yield ctx.schedule_timer(60_000)
        a = yield ctx.schedule_activity("Slow", "1")
        b = yield ctx.schedule_activity("Slow", "2")
        return f"slow_block:[{a},{b}]"

    @rt.register_orchestration("RaceBlocks")
    def parent(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("RaceFastBlock", None),
                           ctx.schedule_sub_orchestration("RaceSlowBlock", None))
        return f"winner:{w['index']},result:{w['value']}"

    st = _run(world, "RaceBlocks")
    assert (st.status, st.output) == ("Completed", "winner:0,result:fast_block:[fast:1,fast:2]")
    # the slow block was cancelled before its timer fired: its activities never ran
    slow_ids = [e["data"]["instance"] for e in events_of(world, "RaceBlocks", "SubOrchestrationScheduled")
                if e["data"]["name"] == "RaceSlowBlock"]
    assert "ActivityScheduled" not in kinds(world, f"RaceBlocks::{slow_ids[0]}")


def test_single_activity_beats_a_multi_step_block(world) -> None:
    """async_blocks 5: 'async block vs durable future'."""
    world.runtime.register_activity("Quick", lambda ctx, x: f"quick:{x}")
    world.runtime.register_activity("Multi", lambda ctx, x: f"multi:{x}")

    @world.runtime.register_orchestration("MultiStepBlock")
    def block(ctx, _):
        yield ctx.schedule_timer(60_000)
        a = yield ctx.schedule_activity("Multi", "1")
        b = yield ctx.schedule_activity("Multi", "2")
        return f"block:[{a},{b}]"

    @world.runtime.register_orchestration("BlockVsFuture")
    def parent(ctx, _):
        w = yield ctx.race(ctx.schedule_activity("Quick", "single"),
                           ctx.schedule_sub_orchestration("MultiStepBlock", None))
        return f"winner:{w['index']},result:{w['value']}"

    st = _run(world, "BlockVsFuture")
    assert (st.status, st.output) == ("Completed", "winner:0,result:quick:single")


def test_select_of_three_timed_blocks_via_a_nested_group(world) -> None:
    """async_blocks 6: 'async block select3 with timers' (B and C grouped behind one child
    because race takes exactly two tasks)."""
    rt = world.runtime
    rt.register_activity("Work", lambda ctx, x: f"work:{x}")

    def timed(delay: int, tag: str):
        def block(ctx, _):
            yield ctx.schedule_timer(delay)
            r = yield ctx.schedule_activity("Work", tag)
            return f"{tag}:{r}"
        return block

    rt.register_orchestration("TimerBlockA", timed(1, "A"))
    rt.register_orchestration("TimerBlockB", timed(60_000, "B"))
    rt.register_orchestration("TimerBlockC", timed(30_000, "C"))

    @rt.register_orchestration("SlowTimerGroup")
    def group(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("TimerBlockB", None),
                           ctx.schedule_sub_orchestration("TimerBlockC", None))
        return w["value"]

    @rt.register_orchestration("Select3Timers")
    def parent(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("TimerBlockA", None),
                           ctx.schedule_sub_orchestration("SlowTimerGroup", None))
        return f"winner:{w['index']},result:{w['value']}"

    st = _run(world, "Select3Timers")
    assert (st.status, st.output) == ("Completed", "winner:0,result:A:work:A")


def test_join_inside_a_block_that_wins_a_select(world) -> None:
    """async_blocks 7: 'async block nested join in select'."""
    world.runtime.register_activity("Step", lambda ctx, x: f"step:{x}")

    @world.runtime.register_orchestration("WorkBlock")
    def work(ctx, _):
        r = yield ctx.all([ctx.schedule_activity("Step", s) for s in ("1", "2", "3")])
        return f"work:[{','.join(_ok_values(r))}]"

    @world.runtime.register_orchestration("TimeoutBlock")
    def timeout(ctx, _):
        yield ctx.schedule_timer(60_000)
        return "timeout"

    @world.runtime.register_orchestration("NestedJoinSelect")
    def parent(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("WorkBlock", None),
                           ctx.schedule_sub_orchestration("TimeoutBlock", None))
        return f"winner:{w['index']},result:{w['value']}"

    st = _run(world, "NestedJoinSelect")
    assert (st.status, st.output) == ("Completed", "winner:0,result:work:[step:1,step:2,step:3]")


def test_block_with_its_own_sub_orchestration_wins_a_race(world) -> None:
    """async_blocks 8: 'async block sub-orchestration wins race'."""
    rt = world.runtime
    rt.register_activity("FastWork", lambda ctx, x: f"fast:{x}")
    rt.register_activity("SlowWork", lambda ctx, x: f"slow:{x}")

    @rt.register_orchestration("FastChild")
    def fast_child(ctx, inp):
        return f"child:{(yield ctx.schedule_activity('FastWork', inp))}"

    @rt.register_orchestration("SubOrchBlock")
    def block_a(ctx, _):
        sub = yield ctx.schedule_sub_orchestration("FastChild", "sub-input")
        act = yield ctx.schedule_activity("FastWork", "after-sub")
        return f"blockA:[{sub},{act}]"

    @rt.register_orchestration("SlowBlock8")
    def block_b(ctx, _):
        yield ctx.schedule_timer(60_000)
        a = yield ctx.schedule_activity("SlowWork", "1")
        b = yield ctx.schedule_activity("SlowWork", "2")
        return f"blockB:[{a},{b}]"

    @rt.register_orchestration("RaceParent")
    def parent(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("SubOrchBlock", None),
                           ctx.schedule_sub_orchestration("SlowBlock8", None))
        return f"winner:{w['index']},result:{w['value']}"

    st = _run(world, "RaceParent")
    assert (st.status, st.output) == ("Completed", "winner:0,result:blockA:[child:fast:sub-input,fast:after-sub]")


def test_block_with_a_slow_sub_orchestration_loses_a_race(world) -> None:
    """async_blocks 9: 'async block sub-orchestration loses race' - winner index 1; the losing
    block is cancelled and its own child is cancelled with it (SPEC §3.9 cascade)."""
    rt = world.runtime
    rt.register_activity("Fast", lambda ctx, x: f"fast:{x}")
    rt.register_activity("VerySlow", lambda ctx, x: f"veryslow:{x}")

    @rt.register_orchestration("SlowChild")
    def slow_child(ctx, inp):
        yield ctx.schedule_timer(60_000)
        a = yield ctx.schedule_activity("VerySlow", inp + "-1")
        b = yield ctx.schedule_activity("VerySlow", inp + "-2")
        return f"child:[{a},{b}]"

    @rt.register_orchestration("SlowSubOrchBlock")
    def block_a(ctx, _):
        return f"blockA:{(yield ctx.schedule_sub_orchestration('SlowChild', 'sub-input'))}"

    @rt.register_orchestration("FastBlock9")
    def block_b(ctx, _):
        a = yield ctx.schedule_activity("Fast", "1")
        b = yield ctx.schedule_activity("Fast", "2")
        return f"blockB:[{a},{b}]"

    @rt.register_orchestration("RaceParentLoses")
    def parent(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("SlowSubOrchBlock", None),
                           ctx.schedule_sub_orchestration("FastBlock9", None))
        return f"winner:{w['index']},result:{w['value']}"

    st = _run(world, "RaceParentLoses")
    assert (st.status, st.output) == ("Completed", "winner:1,result:blockB:[fast:1,fast:2]")
    loser_block = next(e["data"]["instance"] for e in events_of(world, "RaceParentLoses", "SubOrchestrationScheduled")
                       if e["data"]["name"] == "SlowSubOrchBlock")
    loser_id = f"RaceParentLoses::{loser_block}"
    assert world.client.get_status(loser_id).status == "Failed"
    (grand,) = events_of(world, loser_id, "SubOrchestrationScheduled")
    assert world.client.get_status(f"{loser_id}::{grand['data']['instance']}").status == "Failed"


def test_blocks_with_sub_orchestrations_joined(world) -> None:
    """async_blocks 10: 'async block multiple sub-orchestrations joined'."""
    rt = world.runtime
    rt.register_activity("Transform", lambda ctx, x: f"transformed:{x}")

    @rt.register_orchestration("ChildA")
    def child_a(ctx, inp):
        return f"childA:{(yield ctx.schedule_activity('Transform', 'A-' + inp))}"

    @rt.register_orchestration("ChildB")
    def child_b(ctx, inp):
        r1 = yield ctx.schedule_activity("Transform", "B1-" + inp)
        r2 = yield ctx.schedule_activity("Transform", "B2-" + inp)
        return f"childB:[{r1},{r2}]"

    @rt.register_orchestration("ChildC")
    def child_c(ctx, inp):
        yield ctx.schedule_timer(5)
        return f"childC:timer+{(yield ctx.schedule_activity('Transform', 'C-' + inp))}"

    @rt.register_orchestration("JoinBlock1")
    def block1(ctx, inp):
        sub = yield ctx.schedule_sub_orchestration("ChildA", inp)
        act = yield ctx.schedule_activity("Transform", "block1-extra")
        return f"block1:[{sub},{act}]"

    @rt.register_orchestration("JoinBlock2")
    def block2(ctx, inp):
        return f"block2:{(yield ctx.schedule_sub_orchestration('ChildB', inp))}"

    @rt.register_orchestration("JoinBlock3")
    def block3(ctx, inp):
        act = yield ctx.schedule_activity("Transform", "block3-first")
        sub = yield ctx.schedule_sub_orchestration("ChildC", inp)
        return f"block3:[{act},{sub}]"

    @rt.register_orchestration("JoinSubOrchParent")
    def parent(ctx, inp):
        r = yield ctx.all([ctx.schedule_sub_orchestration(f"JoinBlock{i}", inp) for i in (1, 2, 3)])
        return "|".join(_ok_values(r))

    st = _run(world, "JoinSubOrchParent", "data")
    assert st.status == "Completed"
    assert st.output.split("|") == [
        "block1:[childA:transformed:A-data,transformed:block1-extra]",
        "block2:childB:[transformed:B1-data,transformed:B2-data]",
        "block3:[transformed:block3-first,childC:timer+transformed:C-data]",
    ]


def test_block_with_a_sub_orchestration_races_a_timeout_group(world) -> None:
    """async_blocks 11: 'async block sub-orchestration racing timeout'."""
    rt = world.runtime
    rt.register_activity("Work", lambda ctx, x: f"work:{x}")
    rt.register_activity("SlowWork", lambda ctx, x: f"slowwork:{x}")

    @rt.register_orchestration("FastChild2")
    def fast_child(ctx, inp):
        return f"fast-child:{(yield ctx.schedule_activity('Work', inp))}"

    @rt.register_orchestration("SlowChild2")
    def slow_child(ctx, inp):
        yield ctx.schedule_timer(60_000)
        return f"slow-child:{(yield ctx.schedule_activity('SlowWork', inp))}"

    @rt.register_orchestration("FastSubBlock")
    def fast_block(ctx, _):
        return f"blockA:{(yield ctx.schedule_sub_orchestration('FastChild2', 'fast-input'))}"

    @rt.register_orchestration("SlowSubBlock")
    def slow_block(ctx, _):
        return f"blockB:{(yield ctx.schedule_sub_orchestration('SlowChild2', 'slow-input'))}"

    @rt.register_orchestration("TimeoutOnlyBlock")
    def timeout_block(ctx, _):
        yield ctx.schedule_timer(120_000)
        return "blockC:timeout"

    @rt.register_orchestration("SlowTimeoutGroup")
    def group(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("SlowSubBlock", None),
                           ctx.schedule_sub_orchestration("TimeoutOnlyBlock", None))
        return w["value"]

    @rt.register_orchestration("TimeoutRaceParent")
    def parent(ctx, _):
        w = yield ctx.race(ctx.schedule_sub_orchestration("FastSubBlock", None),
                           ctx.schedule_sub_orchestration("SlowTimeoutGroup", None))
        return f"winner:{w['index']},result:{w['value']}"

    st = _run(world, "TimeoutRaceParent")
    assert (st.status, st.output) == ("Completed", "winner:0,result:blockA:fast-child:work:fast-input")


def test_nested_sub_orchestration_chain(world) -> None:
    """async_blocks 12: 'async block nested sub-orchestration chain' - three levels, joins at
    two of them."""
    rt = world.runtime
    rt.register_activity("Leaf", lambda ctx, x: f"leaf:{x}")

    @rt.register_orchestration("Grandchild")
    def grandchild(ctx, inp):
        return f"grandchild:{(yield ctx.schedule_activity('Leaf', inp))}"

    @rt.register_orchestration("Child")
    def child(ctx, inp):
        r = yield ctx.all([ctx.schedule_sub_orchestration("Grandchild", "gc-" + inp),
                           ctx.schedule_activity("Leaf", "child-" + inp)])
        gc, own = _ok_values(r)
        return f"child:[{gc},{own}]"

    @rt.register_orchestration("ChainBlock1")
    def block1(ctx, inp):
        return f"block1:{(yield ctx.schedule_sub_orchestration('Child', 'c1-' + inp))}"

    @rt.register_orchestration("ChainBlock2")
    def block2(ctx, inp):
        yield ctx.schedule_timer(5)
        return f"block2:timer+{(yield ctx.schedule_sub_orchestration('Child', 'c2-' + inp))}"

    @rt.register_orchestration("NestedParent")
    def parent(ctx, inp):
        r = yield ctx.all([ctx.schedule_sub_orchestration("ChainBlock1", inp),
                           ctx.schedule_sub_orchestration("ChainBlock2", inp)])
        return "|".join(_ok_values(r))

    st = _run(world, "NestedParent", "root")
    assert st.status == "Completed"
    assert st.output.split("|") == [
        "block1:child:[grandchild:leaf:gc-c1-root,leaf:child-c1-root]",
        "block2:timer+child:[grandchild:leaf:gc-c2-root,leaf:child-c2-root]",
    ]


# =============================================================================================
# lifecycle.test.js - the workflow-behaviour parts
# =============================================================================================


def test_sqlite_activity_round_trip_through_the_public_api() -> None:
    """lifecycle: 'SQLite activity and orchestration run through the unchanged public API'."""
    live = _Live(SqliteProvider.in_memory())
    try:
        live.runtime.register_activity("LifecycleEcho", lambda ctx, x: x)

        @live.runtime.register_orchestration("LifecycleEchoFlow")
        def flow(ctx, inp):
            return (yield ctx.schedule_activity("LifecycleEcho", inp))

        live.start()
        live.client.start_orchestration("lifecycle-echo", "LifecycleEchoFlow", "hello")
        result = live.client.wait_for_orchestration("lifecycle-echo", 5_000)
        assert (result.status, result.output) == ("Completed", "hello")
    finally:
        live.close()


@pytest.mark.parametrize("typed", [False, True], ids=["raw", "typed"])
def test_races_preserve_failures_and_values(typed) -> None:
    """lifecycle: 'SQLite raw/typed races preserve failures, values, and shutdown'.

    A failing activity yielded on its own raises an exception whose text names the failure. The
    Node SDK throws the same error when the failing activity wins a race; SPEC §17 (⚠) says
    the Python face hands the failing winner's error text over as ``value`` with no error flag,
    and we follow SPEC. A winner whose value is an object with ``err``/``ok`` keys is a plain
    value, not mistaken for an error envelope. After shutdown, a second shutdown(0) returns
    None."""
    live = _Live(SqliteProvider.in_memory())
    try:
        rt = live.runtime

        @rt.register_activity("LifecycleRaceFail")
        def fail(ctx, _):
            raise RuntimeError("race-failure")

        rt.register_activity("LifecycleRaceValue", lambda ctx, _: {"err": "data", "ok": True})

        @rt.register_orchestration("LifecycleRaceFlow")
        def flow(ctx, _):
            schedule = ctx.schedule_activity_typed if typed else ctx.schedule_activity
            race = ctx.race_typed if typed else ctx.race
            direct = None
            try:
                yield schedule("LifecycleRaceFail", None)
            except Exception as e:  # noqa: BLE001
                direct = {"type": "Exception" if isinstance(e, Exception) else type(e).__name__, "message": str(e)}
            raced = yield race(ctx.schedule_timer(60_000), schedule("LifecycleRaceFail", None))
            winner = yield race(schedule("LifecycleRaceValue", None), ctx.schedule_timer(60_000))
            return {"direct": direct, "raced": raced, "winner": winner}

        live.start()
        live.client.start_orchestration("lifecycle-race", "LifecycleRaceFlow", None)
        result = live.client.wait_for_orchestration("lifecycle-race", 5_000)
        assert result.status == "Completed", result.error
        out = result.output
        assert out["direct"] is not None and out["direct"]["type"] == "Exception"
        assert "race-failure" in out["direct"]["message"]
        assert out["raced"] == {"index": 1, "value": out["direct"]["message"]}
        assert out["winner"] == {"index": 0, "value": {"err": "data", "ok": True}}
    finally:
        live.close()
    assert live.runtime.shutdown(0) is None


def test_invalid_shutdown_timeouts_are_refused_without_stopping_the_runtime() -> None:
    """lifecycle: 'invalid durations preserve registration, startup, and repeated-stop
    ownership'. A negative, fractional or string timeout is refused before anything stops
    (SPEC §14 shutdown(timeout_ms)); the runtime keeps processing; shutdown(0) and a repeated
    shutdown() then return None."""
    live = _Live(SqliteProvider.in_memory())
    try:
        @live.runtime.register_orchestration("LifecycleInvalidInput")
        def flow(ctx, inp):
            return inp
            yield  # noqa: unreachable - a generator

        live.start()
        for bad in (-1, 0.5, "0", float("nan")):
            with pytest.raises((ValueError, TypeError)):
                live.runtime.shutdown(bad)
        live.client.start_orchestration("still-running", "LifecycleInvalidInput", "ok")
        result = live.client.wait_for_orchestration("still-running", 5_000)
        assert (result.status, result.output) == ("Completed", "ok")
        assert live.runtime.shutdown(0) is None
        assert live.runtime.shutdown() is None
    finally:
        live.close()


def test_idle_shutdown_returns_quickly_despite_a_long_grace() -> None:
    """lifecycle: 'idle shutdown short-circuits long grace' - nothing in flight, so a 30 s grace
    does not make shutdown wait (SPEC §14)."""
    live = _Live().start()
    t0 = time.monotonic()
    assert live.runtime.shutdown(30_000) is None
    assert time.monotonic() - t0 < 2.0
    assert live.runtime.shutdown(0) is None


def test_invalid_options_are_refused_before_anything_runs() -> None:
    """lifecycle: 'fallible preparation rejects invalid options' (sessionIdleTimeoutMs: 0):
    refused with a configuration error (SPEC §14: session idle must exceed the worker renewal
    period)."""
    with pytest.raises(ConfigurationError):
        RuntimeOptions(session_idle_timeout_ms=0)


def test_descending_version_registration_is_refused() -> None:
    """lifecycle: 'pre-core startup failure ... registry-descending' - versions must be
    registered in strictly ascending order per name (SPEC §12: else a hard error)."""
    rt = Runtime(InMemoryProvider())
    rt.register_orchestration_versioned("Desc", "2.0.0", lambda ctx, _: "v2")
    with pytest.raises(ConfigurationError):
        rt.register_orchestration_versioned("Desc", "1.0.0", lambda ctx, _: "v1")


# =============================================================================================
# lock_options.test.js
# =============================================================================================


class _SpyProvider:
    """Passes everything through; records the lock arguments the runtime uses."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: dict[str, list[Any]] = {"orch_fetch": [], "work_fetch": [], "session": [], "work_renew": []}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def fetch_orchestration_item(self, lock_timeout_ms, *args, **kwargs):
        self.calls["orch_fetch"].append(lock_timeout_ms)
        return self._inner.fetch_orchestration_item(lock_timeout_ms, *args, **kwargs)

    def fetch_work_item(self, lock_timeout_ms, *args, **kwargs):
        self.calls["work_fetch"].append(lock_timeout_ms)
        session = kwargs.get("session", args[1] if len(args) > 1 else None)
        if session is not None:
            self.calls["session"].append(session.lock_timeout_ms)
        return self._inner.fetch_work_item(lock_timeout_ms, *args, **kwargs)

    def renew_work_item_lock(self, token, extend_ms):
        self.calls["work_renew"].append(extend_ms)
        return self._inner.renew_work_item_lock(token, extend_ms)


def _run_lock_options(opts: dict[str, Any]) -> _SpyProvider:
    spy = _SpyProvider(InMemoryProvider())
    live = _Live(spy, dispatcher_poll_interval_ms=20, **opts)
    try:
        live.runtime.register_activity("Echo", lambda ctx, x: x)

        @live.runtime.register_orchestration("LockOptions")
        def flow(ctx, _):
            return (yield ctx.schedule_activity_on_session("Echo", "hi", "session-1"))

        live.start()
        live.client.start_orchestration("lock-options-1", "LockOptions", None)
        result = live.client.wait_for_orchestration("lock-options-1", 5_000)
        assert (result.status, result.output) == ("Completed", "hi")
    finally:
        live.close()
    return spy


def test_every_lock_timeout_and_renewal_buffer_reaches_the_runtime() -> None:
    """lock_options: 'every lock timeout and renewal buffer reaches the runtime'. Each option
    gets its own value: orchestrator 20 s / buffer 17 s → renew every 3 s; worker 21 s → 4 s;
    session 22 s → 5 s (SPEC §1 renewal rule). The fetches carry the matching timeouts."""
    opts = dict(orchestrator_lock_timeout_ms=20_000, orchestrator_lock_renewal_buffer_ms=17_000,
                worker_lock_timeout_ms=21_000, worker_lock_renewal_buffer_ms=17_000,
                session_lock_timeout_ms=22_000, session_lock_renewal_buffer_ms=17_000)
    spy = _run_lock_options(opts)
    assert spy.calls["orch_fetch"] and set(spy.calls["orch_fetch"]) == {20_000}
    assert spy.calls["work_fetch"] and set(spy.calls["work_fetch"]) == {21_000}
    assert spy.calls["session"] and set(spy.calls["session"]) == {22_000}
    assert renewal_period_ms(20_000, 17_000) == 3_000
    assert renewal_period_ms(21_000, 17_000) == 4_000
    assert renewal_period_ms(22_000, 17_000) == 5_000


def test_lock_options_default_to_the_core_defaults() -> None:
    """lock_options: 'without the options the runtime uses its defaults' - orchestrator 5 s
    (below 15 s → renewed at half: 3 s), worker 30 s / 5 s buffer → 25 s, session 30 s / 5 s →
    25 s (SPEC §1, §14)."""
    o = RuntimeOptions()
    assert (o.orchestrator_lock_timeout_ms, o.worker_lock_timeout_ms, o.session_lock_timeout_ms) == (5_000, 30_000, 30_000)
    spy = _run_lock_options({})
    assert set(spy.calls["orch_fetch"]) == {5_000}
    assert set(spy.calls["work_fetch"]) == {30_000}
    assert set(spy.calls["session"]) == {30_000}
    assert renewal_period_ms(o.orchestrator_lock_timeout_ms, o.orchestrator_lock_renewal_buffer_ms) == 3_000
    assert renewal_period_ms(o.worker_lock_timeout_ms, o.worker_lock_renewal_buffer_ms) == 25_000
    assert renewal_period_ms(o.session_lock_timeout_ms, o.session_lock_renewal_buffer_ms) == 25_000


def test_a_worker_lock_shorter_than_the_activity_is_renewed() -> None:
    """lock_options (behaviour behind the renewal log line): an activity running longer than
    ``worker_lock_timeout_ms`` keeps its lock - renewed with that timeout - runs once and
    completes (SPEC §1 lock renewal)."""
    spy = _SpyProvider(InMemoryProvider())
    live = _Live(spy, worker_lock_timeout_ms=1_000)
    runs = []
    try:
        @live.runtime.register_activity("LongStep")
        def long_step(ctx, _):
            runs.append(1)
            time.sleep(1.2)
            return "cancelled" if ctx.is_cancelled() else "finished"

        @live.runtime.register_orchestration("LongFlow")
        def flow(ctx, _):
            return (yield ctx.schedule_activity("LongStep", None))

        live.start()
        live.client.start_orchestration("long", "LongFlow", None)
        result = live.client.wait_for_orchestration("long", 5_000)
        assert (result.status, result.output) == ("Completed", "finished")
        assert len(runs) == 1
        assert spy.calls["work_renew"] and set(spy.calls["work_renew"]) == {1_000}
    finally:
        live.close()


# =============================================================================================
# replay_isolation.test.js
# =============================================================================================


class _FreezableProvider:
    """Passes everything through. While ``frozen`` is set, lock renewals of orchestration
    items fetched before the freeze began are dropped: the process that holds them is
    "stopped" (the Node test sends SIGSTOP), so nothing it would renew reaches the store."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.frozen_since: float | None = None
        self._fetched_at: dict[str, float] = {}
        self.dropped = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def fetch_orchestration_item(self, *args, **kwargs):
        item = self._inner.fetch_orchestration_item(*args, **kwargs)
        if item is not None:
            self._fetched_at[item.lock_token] = time.monotonic()
        return item

    def renew_orchestration_item_lock(self, token, extend_ms):
        since = self.frozen_since
        if since is not None and self._fetched_at.get(token, 0.0) < since:
            self.dropped += 1
            return None
        return self._inner.renew_orchestration_item_lock(token, extend_ms)


_STEPS = 6
_FREEZE_PASS = 5


def _replay_isolation(lock_ms: int) -> dict[str, Any]:
    provider = _FreezableProvider(InMemoryProvider())
    live = _Live(provider, orchestration_concurrency=2, orchestrator_lock_timeout_ms=lock_ms,
                 instance_cache_size=0)
    guard = threading.Lock()
    state: dict[str, Any] = {"replays": 0, "froze": False}
    steps: list[tuple[int, int, int]] = []  # (replay, step, counter read) in the order they ran

    @live.runtime.register_orchestration("Counter")
    def counter(ctx, _):
        with guard:  # test bookkeeping only; never used for a decision
            state["replays"] += 1
            replay = state["replays"]
        for step in range(1, _STEPS + 1):
            if replay == _FREEZE_PASS and step == 1 and not state["froze"]:
                state["froze"] = True
                provider.frozen_since = time.monotonic()
                time.sleep(0.5)  # longer than the short lock; the renewals are dropped meanwhile
                provider.frozen_since = None
            if state["froze"]:
                time.sleep(0.08 if replay == _FREEZE_PASS else 0.02)
            read = int(ctx.get_kv_value("counter") or 0)
            with guard:
                steps.append((replay, step, read))
            ctx.set_kv_value("counter", str(read + 1))
            ctx.set_custom_status(f"step {read + 1}")
            yield ctx.utc_now()
        return f"done counter={ctx.get_kv_value('counter')}"

    live.start()
    try:
        live.client.start_orchestration("replay-isolation", "Counter", None)
        result = live.client.wait_for_orchestration("replay-isolation", 10_000)
        history_at_completion = live.client.read_execution_history("replay-isolation", 1)
        # the frozen replay runs steps 1.._FREEZE_PASS, then tries to commit: let it get there
        wait_until(lambda: any(s[:2] == (_FREEZE_PASS, _FREEZE_PASS) for s in list(steps)), 3.0)
        time.sleep(0.2)
        kv = live.client.get_kv_value("replay-isolation", "counter")
        history_after = live.client.read_execution_history("replay-isolation", 1)
        final = live.client.get_status("replay-isolation")
    finally:
        live.close()
    return {"result": result, "kv": kv, "final": final,
            "history_changed": history_after != history_at_completion, "steps": list(steps), "replays": state["replays"],
            "froze": state["froze"], "dropped": provider.dropped}


def test_a_replay_that_lost_its_lock_does_not_disturb_another_replay() -> None:
    """replay_isolation: 'a replay that lost its lock does not disturb another replay of the
    same instance'. Replay 5 is stalled for longer than the 300 ms orchestration lock (its
    renewals are lost meanwhile); the second dispatcher slot fetches the instance again and
    replays it while the stalled replay is still running its steps. Every replay must read its
    own KV counter only (at step k it reads k-1), the instance completes with
    ``done counter=6`` and the stale replay's commit is refused (SPEC §15.1 ack: lock must still
    be held; §16 A.7)."""
    r = _replay_isolation(300)
    assert r["froze"] and r["dropped"] >= 1, r
    res = r["result"]
    assert (res.status, res.output) == ("Completed", f"done counter={_STEPS}"), (res.status, res.error, r["steps"])
    assert res.custom_status == f"step {_STEPS}"
    assert r["kv"] == str(_STEPS)
    frozen = [s for s in r["steps"] if s[0] == _FREEZE_PASS]
    assert [s[1] for s in frozen] == list(range(1, _FREEZE_PASS + 1)), f"the stalled replay did not run all its steps: {r['steps']}"
    bad = [s for s in r["steps"] if s[2] != s[1] - 1]
    assert not bad, f"a replay read another replay's counter: {bad}; steps {r['steps']}"
    last_of_frozen = max(i for i, s in enumerate(r["steps"]) if s[0] == _FREEZE_PASS)
    first_of_next = next((i for i, s in enumerate(r["steps"]) if s[0] > _FREEZE_PASS), None)
    assert first_of_next is not None and first_of_next < last_of_frozen, f"no overlap: {r['steps']}"
    assert r["replays"] > _STEPS + 1  # the stalled turn was redone by the other slot
    # the stale replay's commit was refused: nothing was appended after the completion
    assert not r["history_changed"]
    assert (r["final"].status, r["final"].output) == ("Completed", f"done counter={_STEPS}")


def test_a_longer_orchestrator_lock_outlives_the_stall() -> None:
    """replay_isolation: 'orchestratorLockTimeoutMs keeps the lock across a stall shorter than
    the timeout'. Same stall, but a 3 s lock: nobody fetches the instance again, so there is
    exactly one replay per turn (STEPS + 1)."""
    r = _replay_isolation(3_000)
    res = r["result"]
    assert (res.status, res.output) == ("Completed", f"done counter={_STEPS}"), (res.status, res.error)
    assert r["replays"] == _STEPS + 1, f"expected {_STEPS + 1} replays, got {r['replays']}; steps {r['steps']}"
    assert not [s for s in r["steps"] if s[2] != s[1] - 1]


# =============================================================================================
# scenarios/toygres-node.test.js
# =============================================================================================


def _cms() -> dict[str, Any]:
    return {"instances": {}, "health_checks": [], "images": {}, "dns": set()}


def _register_create(rt: Any, cms: dict[str, Any], ready_after: int, counters: dict[str, int]) -> None:
    @rt.register_activity("cms-create-instance-record")
    def create_record(ctx, inp):
        ctx.trace_info(f"creating CMS record for {inp['name']}")
        rec = {"id": f"inst-{inp['name']}", "name": inp["name"], "k8sName": f"pg-{inp['name']}",
               "state": "provisioning", "dnsName": f"{inp['name']}.postgres.local"}
        cms["instances"][rec["id"]] = dict(rec)
        cms["dns"].add(rec["dnsName"])
        return rec

    rt.register_activity("deploy-postgres-v2", lambda ctx, i: {"statefulSet": i["k8sName"], "service": f"{i['k8sName']}-svc"})

    @rt.register_activity("wait-for-ready")
    def wait_ready(ctx, _):
        counters["ready"] += 1
        return {"ready": counters["ready"] >= ready_after}

    rt.register_activity("get-connection-strings", lambda ctx, i: {
        "host": f"{i['k8sName']}.default.svc.cluster.local", "port": 5432,
        "connectionString": f"postgresql://postgres:secret@{i['k8sName']}:5432/postgres"})
    rt.register_activity("test-connection", lambda ctx, _: {"connected": True, "latencyMs": 3})

    @rt.register_activity("cms-update-instance-state")
    def update_state(ctx, i):
        inst = cms["instances"].get(i["id"])
        if inst:
            inst["state"] = i["state"]
        return {"ok": True}

    @rt.register_activity("cms-record-instance-actor")
    def record_actor(ctx, i):
        inst = cms["instances"].get(i["id"])
        if inst:
            inst["actorInstanceId"] = i["actorInstanceId"]
        return {"ok": True}

    rt.register_activity("delete-postgres", lambda ctx, _: {"deleted": True})


def test_toygres_create_instance(world) -> None:
    """toygres: 'provisions a new PostgreSQL instance end-to-end' - readiness polling with a
    timer between polls, a detached InstanceActor start (``ctx.start_orchestration``, SPEC §7
    detached: id verbatim, dispatched on a Continue turn), and the CMS ends up running."""
    cms, counters = _cms(), {"ready": 0}
    rt = world.runtime
    _register_create(rt, cms, ready_after=2, counters=counters)

    @rt.register_orchestration("InstanceActor")
    def actor(ctx, inp):
        ctx.trace_info(f"actor started for {inp['instanceId']}")
        return {"status": "started"}
        yield

    @rt.register_orchestration("CreateInstance")
    def create(ctx, inp):
        record = yield ctx.schedule_activity("cms-create-instance-record", {"name": inp["name"], "sku": inp.get("sku", "basic")})
        try:
            yield ctx.schedule_activity("deploy-postgres-v2", {"k8sName": record["k8sName"], "sku": inp.get("sku", "basic")})
            ready = False
            for attempt in range(60):
                status = yield ctx.schedule_activity("wait-for-ready", {"k8sName": record["k8sName"]})
                if status["ready"]:
                    ready = True
                    break
                ctx.trace_info(f"pod not ready, waiting (attempt {attempt + 1})")
                yield ctx.schedule_timer(100)
            if not ready:
                raise RuntimeError("pod readiness timeout")
            conn = yield ctx.schedule_activity("get-connection-strings", {"k8sName": record["k8sName"]})
            yield ctx.schedule_activity("test-connection", {"host": conn["host"], "port": conn["port"]})
            yield ctx.schedule_activity("cms-update-instance-state", {"id": record["id"], "state": "running"})
            actor_id = f"actor-{record['id']}"
            started = yield ctx.start_orchestration("InstanceActor", actor_id, {"instanceId": record["id"], "iteration": 0})
            assert started is None
            yield ctx.schedule_activity("cms-record-instance-actor", {"id": record["id"], "actorInstanceId": actor_id})
            return {"status": "created", "instanceId": record["id"], "actorId": actor_id,
                    "connectionString": conn["connectionString"]}
        except Exception as e:  # noqa: BLE001
            ctx.trace_error(f"creation failed: {e}")
            yield ctx.schedule_activity("cms-update-instance-state", {"id": record["id"], "state": "failed"})
            yield ctx.schedule_activity("delete-postgres", {"k8sName": record["k8sName"]})
            return {"status": "failed", "reason": str(e), "instanceId": record["id"]}

    st = _run(world, "CreateInstance", {"name": "mydb", "sku": "basic"}, instance="create-mydb")
    assert st.status == "Completed", st.error
    assert st.output["status"] == "created"
    assert (st.output["instanceId"], st.output["actorId"]) == ("inst-mydb", "actor-inst-mydb")
    assert "mydb" in st.output["connectionString"]
    assert cms["instances"]["inst-mydb"]["state"] == "running"
    assert cms["instances"]["inst-mydb"]["actorInstanceId"] == "actor-inst-mydb"
    assert counters["ready"] == 2
    assert kinds(world, "create-mydb").count("TimerCreated") == 1
    (chained,) = events_of(world, "create-mydb", "OrchestrationChained")
    assert chained["data"]["instance"] == "actor-inst-mydb"
    actor_st = world.client.get_status("actor-inst-mydb")
    assert (actor_st.status, actor_st.output) == ("Completed", {"status": "started"})


def _register_actor(rt: Any, cms: dict[str, Any], counters: dict[str, int]) -> None:
    @rt.register_activity("cms-get-instance-connection")
    def get_conn(ctx, i):
        inst = cms["instances"].get(i["instanceId"])
        if not inst:
            return {"found": False}
        return {"found": True, "connectionString": inst.get("connectionString", "pg://test"), "state": inst["state"]}

    if rt.registry.activity("test-connection") is None:
        rt.register_activity("test-connection", lambda ctx, _: {"connected": True, "latencyMs": 2})

    @rt.register_activity("cms-record-health-check")
    def record_health(ctx, i):
        counters["health"] += 1
        cms["health_checks"].append({"instanceId": i["instanceId"], "healthy": i["healthy"]})
        return {"ok": True}

    @rt.register_orchestration("InstanceActor")
    def actor(ctx, inp):
        iteration = inp.get("iteration", 0)
        conn = yield ctx.schedule_activity("cms-get-instance-connection", {"instanceId": inp["instanceId"]})
        if not conn["found"] or conn["state"] == "deleted":
            return {"status": "exited", "reason": "instance_not_found", "iterations": iteration}
        health = yield ctx.schedule_activity("test-connection", {"connectionString": conn["connectionString"]})
        yield ctx.schedule_activity("cms-record-health-check", {"instanceId": inp["instanceId"],
                                                               "healthy": health["connected"], "latencyMs": health["latencyMs"]})
        winner = yield ctx.race(ctx.schedule_timer(100), ctx.wait_for_event("InstanceDeleted"))
        if winner["index"] == 1:
            return {"status": "exited", "reason": "signal", "iterations": iteration + 1}
        return (yield ctx.continue_as_new({"instanceId": inp["instanceId"], "iteration": iteration + 1}))


def test_toygres_instance_actor_health_loop(world) -> None:
    """toygres: 'runs health checks and exits on InstanceDeleted signal'. The eternal actor
    checks health every 100 ms (continue-as-new per cycle) and exits when the CMS says the
    instance is gone; a second actor exits on the ``InstanceDeleted`` event, which wins its
    race against the timer (SPEC §4, §8)."""
    cms, counters = _cms(), {"health": 0}
    for name in ("testdb", "other"):
        cms["instances"][f"inst-{name}"] = {"id": f"inst-{name}", "state": "running",
                                            "connectionString": f"postgresql://postgres:secret@pg-{name}:5432/postgres"}
    _register_actor(world.runtime, cms, counters)
    world.client.start_orchestration("actor-testdb", "InstanceActor", {"instanceId": "inst-testdb", "iteration": 0})
    world.client.start_orchestration("actor-other", "InstanceActor", {"instanceId": "inst-other", "iteration": 0})
    world.run_for(450)
    assert world.client.get_status("actor-testdb").status == "Running"
    world.client.raise_event("actor-other", "InstanceDeleted", {"reason": "instance-deleted"})
    world.run_for(350)
    cms["instances"]["inst-testdb"]["state"] = "deleted"
    world.run()

    st = world.client.get_status("actor-testdb")
    assert st.status == "Completed", st.error
    assert (st.output["status"], st.output["reason"]) == ("exited", "instance_not_found")
    assert st.output["iterations"] >= 2
    assert world.client.list_executions("actor-testdb") == list(range(1, st.output["iterations"] + 2))
    other = world.client.get_status("actor-other")
    assert other.status == "Completed", other.error
    assert (other.output["status"], other.output["reason"]) == ("exited", "signal")
    assert other.output["iterations"] == len(world.client.list_executions("actor-other"))
    assert counters["health"] >= 2


def _register_delete(rt: Any, cms: dict[str, Any]) -> None:
    @rt.register_activity("cms-get-instance-by-k8s-name")
    def by_k8s(ctx, i):
        return next((dict(v) for v in cms["instances"].values() if v.get("k8sName") == i["k8sName"]), None)

    @rt.register_activity("cms-update-instance-state")
    def update_state(ctx, i):
        inst = cms["instances"].get(i["id"])
        if inst:
            inst["state"] = i["state"]
        return {"ok": True}

    rt.register_activity("send-external-event", lambda ctx, _: {"sent": True})
    rt.register_activity("delete-postgres", lambda ctx, _: {"deleted": True})

    @rt.register_activity("cms-delete-instance-record")
    def delete_record(ctx, i):
        cms["instances"].pop(i["id"], None)
        return {"ok": True}

    @rt.register_activity("cms-free-dns-name")
    def free_dns(ctx, i):
        cms["dns"].discard(i["dnsName"])
        return {"ok": True}

    @rt.register_orchestration("DeleteInstance")
    def delete(ctx, inp):
        instance = yield ctx.schedule_activity("cms-get-instance-by-k8s-name", {"k8sName": inp["k8sName"]})
        if not instance:
            ctx.trace_warn("instance not found, nothing to delete")
            return {"status": "not_found"}
        yield ctx.schedule_activity("cms-update-instance-state", {"id": instance["id"], "state": "deleting"})
        if instance.get("actorInstanceId"):
            try:
                yield ctx.schedule_activity("send-external-event", {"instanceId": instance["actorInstanceId"],
                                                                    "eventName": "InstanceDeleted"})
            except Exception as e:  # noqa: BLE001
                ctx.trace_warn(f"failed to signal actor (best-effort): {e}")
        yield ctx.schedule_activity("delete-postgres", {"k8sName": instance["k8sName"]})
        yield ctx.schedule_activity("cms-free-dns-name", {"dnsName": instance.get("dnsName")})
        yield ctx.schedule_activity("cms-delete-instance-record", {"id": instance["id"]})
        return {"status": "deleted", "instanceId": instance["id"]}


def test_toygres_delete_instance(world) -> None:
    """toygres: 'tears down instance and signals actor' - and a second delete of the same name
    finds nothing."""
    cms = _cms()
    cms["instances"]["inst-delme"] = {"id": "inst-delme", "name": "delme", "k8sName": "pg-delme", "state": "running",
                                      "dnsName": "delme.postgres.local", "actorInstanceId": "actor-delme"}
    cms["dns"].add("delme.postgres.local")
    _register_delete(world.runtime, cms)
    st = _run(world, "DeleteInstance", {"k8sName": "pg-delme"}, instance="delete-delme")
    assert (st.status, st.output) == ("Completed", {"status": "deleted", "instanceId": "inst-delme"})
    assert cms["instances"] == {} and cms["dns"] == set()
    signalled = [e for e in events_of(world, "delete-delme", "ActivityScheduled") if e["data"]["name"] == "send-external-event"]
    assert len(signalled) == 1
    again = _run(world, "DeleteInstance", {"k8sName": "pg-delme"}, instance="delete-again")
    assert (again.status, again.output) == ("Completed", {"status": "not_found"})


def test_toygres_create_image_backup(world) -> None:
    """toygres: 'runs a backup job and polls to completion' - ``utc_now`` gives a deterministic
    timestamp for the blob path (the same value on every replay, SPEC §5), the job is polled
    with a timer between polls until it succeeds."""
    cms = _cms()
    polls = {"n": 0}
    cms["instances"]["inst-srcdb"] = {"id": "inst-srcdb", "name": "srcdb", "k8sName": "pg-srcdb", "state": "running"}
    rt = world.runtime

    @rt.register_activity("cms-get-instance-by-k8s-name")
    def by_k8s(ctx, i):
        return next((v for v in cms["instances"].values() if v.get("k8sName") == i["k8sName"]), None)

    rt.register_activity("cms-get-instance-password", lambda ctx, _: {"password": "secret123"})

    @rt.register_activity("cms-image-create")
    def image_create(ctx, i):
        img = {"id": f"img-{i['imageName']}", "name": i["imageName"], "state": "pending", "blobPath": i["blobPath"]}
        cms["images"][img["id"]] = img
        return img

    rt.register_activity("run-backup-job", lambda ctx, i: {"jobName": f"backup-{i['imageName']}"})

    @rt.register_activity("wait-for-job")
    def wait_job(ctx, _):
        polls["n"] += 1
        return {"status": "running" if polls["n"] < 3 else "succeeded"}

    @rt.register_activity("cms-image-update-state")
    def image_state(ctx, i):
        cms["images"][i["imageId"]]["state"] = i["state"]
        return {"ok": True}

    rt.register_activity("delete-job", lambda ctx, _: {"ok": True})

    @rt.register_orchestration("CreateImage")
    def create_image(ctx, inp):
        instance = yield ctx.schedule_activity("cms-get-instance-by-k8s-name", {"k8sName": inp["k8sName"]})
        if not instance:
            return {"status": "failed", "reason": "source not found"}
        pw = (yield ctx.schedule_activity("cms-get-instance-password", {"k8sName": inp["k8sName"]}))["password"]
        now = yield ctx.utc_now()
        blob = f"images/{inp['imageName']}-{now}/"
        image = yield ctx.schedule_activity("cms-image-create", {"imageName": inp["imageName"],
                                                                 "sourceInstanceId": instance["id"], "blobPath": blob})
        job = (yield ctx.schedule_activity("run-backup-job", {"imageName": inp["imageName"], "k8sName": inp["k8sName"],
                                                              "password": pw, "blobPath": blob}))["jobName"]
        status = "running"
        for _ in range(360):
            status = (yield ctx.schedule_activity("wait-for-job", {"jobName": job}))["status"]
            if status != "running":
                break
            yield ctx.schedule_timer(100)
        yield ctx.schedule_activity("delete-job", {"jobName": job})
        final = "ready" if status == "succeeded" else "failed"
        yield ctx.schedule_activity("cms-image-update-state", {"imageId": image["id"], "state": final})
        return {"status": final, "imageId": image["id"], "blobPath": blob}

    st = _run(world, "CreateImage", {"k8sName": "pg-srcdb", "imageName": "srcdb-snap"}, instance="backup-srcdb")
    assert st.status == "Completed", st.error
    assert st.output["status"] == "ready"
    assert st.output["blobPath"].startswith("images/srcdb-snap-")
    stamp = st.output["blobPath"][len("images/srcdb-snap-"):-1]
    assert stamp.isdigit()
    img = cms["images"]["img-srcdb-snap"]
    assert img["state"] == "ready" and img["blobPath"] == st.output["blobPath"]
    assert polls["n"] == 3
    assert kinds(world, "backup-srcdb").count("TimerCreated") == 2


def test_toygres_system_pruner_runs_until_cancelled(world) -> None:
    """toygres: 'runs periodic pruning with continue-as-new' - the eternal pruner runs several
    cycles; cancelling it ends it Failed with ``canceled: test-done`` (SPEC §11.1)."""
    prunes = {"n": 0}

    @world.runtime.register_activity("system-prune-2")
    def prune(ctx, i):
        prunes["n"] += 1
        return {"pruned": prunes["n"] * 3, "deleted": prunes["n"]}

    @world.runtime.register_orchestration("SystemPruner")
    def pruner(ctx, inp):
        iteration = inp.get("iteration", 0)
        yield ctx.schedule_activity("system-prune-2", {"iteration": iteration})
        yield ctx.schedule_timer(100)
        return (yield ctx.continue_as_new({"iteration": iteration + 1}))

    world.client.start_orchestration("pruner", "SystemPruner", {"iteration": 0})
    world.run_for(800)
    assert world.client.get_status("pruner").status == "Running"
    world.client.cancel_instance("pruner", "test-done")
    world.run()
    st = world.client.get_status("pruner")
    assert (st.status, st.error) == ("Failed", "canceled: test-done")
    assert prunes["n"] >= 2
    assert len(world.client.list_executions("pruner")) >= 2


def test_toygres_full_lifecycle(world) -> None:
    """toygres: 'creates, monitors, then deletes an instance'."""
    cms, counters = _cms(), {"ready": 0, "health": 0}
    rt = world.runtime
    _register_create(rt, cms, ready_after=1, counters=counters)
    _register_actor(rt, cms, counters)

    @rt.register_activity("cms-get-instance-by-k8s-name")
    def by_k8s(ctx, i):
        return next((dict(v) for v in cms["instances"].values() if v.get("k8sName") == i["k8sName"]), None)

    rt.register_activity("send-external-event", lambda ctx, _: {"sent": True})

    @rt.register_activity("cms-delete-instance-record")
    def delete_record(ctx, i):
        cms["instances"].pop(i["id"], None)
        return {"ok": True}

    @rt.register_activity("cms-free-dns-name")
    def free_dns(ctx, i):
        cms["dns"].discard(i["dnsName"])
        return {"ok": True}

    @rt.register_orchestration("CreateInstance")
    def create(ctx, inp):
        record = yield ctx.schedule_activity("cms-create-instance-record", {"name": inp["name"]})
        yield ctx.schedule_activity("deploy-postgres-v2", {"k8sName": record["k8sName"]})
        status = yield ctx.schedule_activity("wait-for-ready", {"k8sName": record["k8sName"]})
        if not status["ready"]:
            return {"status": "failed"}
        conn = yield ctx.schedule_activity("get-connection-strings", {"k8sName": record["k8sName"]})
        yield ctx.schedule_activity("test-connection", {"connectionString": conn["connectionString"]})
        yield ctx.schedule_activity("cms-update-instance-state", {"id": record["id"], "state": "running"})
        return {"status": "created", "instanceId": record["id"]}

    @rt.register_orchestration("DeleteInstance")
    def delete(ctx, inp):
        instance = yield ctx.schedule_activity("cms-get-instance-by-k8s-name", {"k8sName": inp["k8sName"]})
        if not instance:
            return {"status": "not_found"}
        yield ctx.schedule_activity("cms-update-instance-state", {"id": instance["id"], "state": "deleting"})
        yield ctx.schedule_activity("delete-postgres", {"k8sName": instance["k8sName"]})
        yield ctx.schedule_activity("cms-free-dns-name", {"dnsName": instance["dnsName"]})
        yield ctx.schedule_activity("cms-delete-instance-record", {"id": instance["id"]})
        return {"status": "deleted"}

    created = _run(world, "CreateInstance", {"name": "lifecycle"}, instance="create-lifecycle")
    assert (created.status, created.output) == ("Completed", {"status": "created", "instanceId": "inst-lifecycle"})

    world.client.start_orchestration("actor-lifecycle", "InstanceActor", {"instanceId": "inst-lifecycle", "iteration": 0})
    world.run_for(600)
    assert counters["health"] >= 2
    cms["instances"]["inst-lifecycle"]["state"] = "deleted"
    world.run()
    actor = world.client.get_status("actor-lifecycle")
    assert (actor.status, actor.output["status"]) == ("Completed", "exited")

    cms["instances"]["inst-lifecycle"]["state"] = "running"
    deleted = _run(world, "DeleteInstance", {"k8sName": "pg-lifecycle"}, instance="delete-lifecycle")
    assert (deleted.status, deleted.output) == ("Completed", {"status": "deleted"})
    assert cms["instances"] == {} and cms["dns"] == set()
