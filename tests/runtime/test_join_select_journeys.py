"""User journeys around join / select (SPEC §4, §3.10 dropped futures, §11 cancellation of race
losers), in the simulated world, with the cache off, across a second Runtime, on SQLite with the
production driver, and under the simulator with faults.

Peer evidence is from duroxide 0.2.2 (duroxide-python) run under bench/.peer on
``SqliteProvider.in_memory()``; the printed outputs / history kinds are quoted in the docstrings.

Found by this file and fixed: yielding a task that lost a race again, after its late completion
had been recorded, resumed the code with None (as if the activity had returned None); it now
raises the same "lost a race" TypeError as before the completion arrives. Also found and
fixed: a retry task (``schedule_activity_with_retry``) could not be a child of ``all``/``race``,
where duroxide 0.2.2 runs it (``race(with_retry(...), timer)`` gave ``{'index': 0, 'value': 5}``,
``all([with_retry(...), activity])`` ``[{'ok': 5}, {'ok': 6}]``): those tests live in
test_retry_in_join_select.py.
"""

from __future__ import annotations

import time

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider

from ._helpers import SecondRuntime, events_of, kinds, wait_until

# ─── shared registrations ───────────────────────────────────────────────────────────────────


def _register(world):
    rt = world.runtime

    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("Fail")
    def fail(ctx, msg):
        raise ValueError(msg)

    @rt.register_activity("Sleep")
    def sleep(ctx, ms):
        world.clock.advance(ms)
        return ms

    @rt.register_orchestration("Child")
    def child(ctx, ms):
        yield ctx.schedule_timer(ms)
        return "child-done"

    @rt.register_orchestration("Kid")
    def kid(ctx, _):
        raise ValueError("kaboom")
        yield

    return world


@pytest.fixture
def w(world):
    return _register(world)


@pytest.fixture
def rw(replay_world):
    return _register(replay_world)


def _strip(h):
    """History without timestamps (for comparing two runs)."""
    return [(e["event_id"], e["kind"], e["source_event_id"], e["data"]) for e in h]


# ─── join ───────────────────────────────────────────────────────────────────────────────────


def test_all_of_four_kinds_matches_peer_output_and_schedule_order(w):
    """User joins an activity, a failing activity, a timer and an external event, then raises the
    event. Must hold (peer-observed): output
    [{'ok': 'a'}, {'err': "Activity 'Fail' call failed: ValueError: boom"}, {'ok': None}, {'ok': {'v': 1}}]
    and the schedules are recorded in list order: ActivityScheduled, ActivityScheduled,
    TimerCreated, ExternalSubscribed (§4: children polled in argument order); no short-circuit."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Echo", "a"), ctx.schedule_activity("Fail", "boom"),
                               ctx.schedule_timer(10), ctx.wait_for_event("e")]))

    w.client.start_orchestration("i", "O")
    w.run()
    w.client.raise_event("i", "e", {"v": 1})
    assert w.result("i").output == [{"ok": "a"}, {"err": "Activity 'Fail' call failed: ValueError: boom"},
                                    {"ok": None}, {"ok": {"v": 1}}]
    k = kinds(w, "i")
    assert k[:5] == ["OrchestrationStarted", "ActivityScheduled", "ActivityScheduled", "TimerCreated", "ExternalSubscribed"]
    assert sorted(k[5:-1]) == sorted(["ActivityCompleted", "ActivityFailed", "TimerFired", "ExternalEvent"])
    assert k[-1] == "OrchestrationCompleted"


def test_all_with_failing_sub_orchestration_does_not_short_circuit(w):
    """User fans out to a child that raises and to a slow activity. Must hold (§4 no
    short-circuit): the join waits for the slow activity and the child's entry is {"err": text}
    whose text ends with the child's ValueError line."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.all([ctx.schedule_sub_orchestration("Kid"), ctx.schedule_activity("Sleep", 5_000)]))

    w.client.start_orchestration("i", "O")
    out = w.result("i").output
    assert set(out[0]) == {"err"} and out[0]["err"].rstrip().endswith("ValueError: kaboom")
    assert out[1] == {"ok": 5_000}


def test_join_of_two_waits_on_same_name_consumes_in_order(w):
    """User joins two waits on the same event name and raises it twice. Must hold (§6.1
    positional slots): the first subscription gets the first raise, the second the second."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.all_typed([ctx.wait_for_event("x"), ctx.wait_for_event("x")]))

    w.client.start_orchestration("i", "O")
    w.run()
    w.client.raise_event("i", "x", 1)
    w.client.raise_event("i", "x", 2)
    assert w.result("i").output == [1, 2]


def test_all_typed_of_empty_list_and_join2_with_failure(w):
    """User joins nothing with all_typed, and joins (activity, failing activity) with join2.
    Must hold (§4/§17): [] immediately; join2 gives a 2-tuple of {"ok"}/{"err"} entries."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        e = yield ctx.all_typed([])
        t = yield ctx.join2(ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Fail", "x"))
        return [e, type(t).__name__, list(t)]

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == [[], "tuple", [{"ok": 1}, {"err": "Activity 'Fail' call failed: ValueError: x"}]]


# ─── race / select winners ──────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("first", ["queue", "event"])
def test_race_event_vs_dequeue_winner_is_first_in_history(w, first):
    """User races wait_for_event("a") against dequeue_event("q"); both arrive in one batch.
    Must hold (§4): the winner is the one whose message was sent first, not the first argument."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.race(ctx.wait_for_event("a"), ctx.dequeue_event("q")))

    w.client.start_orchestration("i", "O")
    w.run()
    if first == "queue":
        w.client.enqueue_event("i", "q", "Q")
        w.client.raise_event("i", "a", "A")
        expect = {"index": 1, "value": "Q"}
    else:
        w.client.raise_event("i", "a", "A")
        w.client.enqueue_event("i", "q", "Q")
        expect = {"index": 0, "value": "A"}
    assert w.result("i").output == expect


def test_select3_same_batch_winner_and_breadcrumbs_for_both_losers(w):
    """User select3's three waits and raises "c" then "a" in one batch. Must hold (§4, §3.10):
    index 2 wins with "C"; the two losing subscriptions each get ExternalSubscribedCancelled
    (dropped_future) pointing at their ExternalSubscribed ids (2 and 3)."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        e = yield ctx.select3(ctx.wait_for_event("a"), ctx.wait_for_event("b"), ctx.wait_for_event("c"))
        return [e.index(), e.value]

    w.client.start_orchestration("i", "O")
    w.run()
    w.client.raise_event("i", "c", "C")
    w.client.raise_event("i", "a", "A")
    assert w.result("i").output == [2, "C"]
    crumbs = events_of(w, "i", "ExternalSubscribedCancelled")
    assert sorted(c["source_event_id"] for c in crumbs) == [2, 3]
    assert {c["data"].get("reason") for c in crumbs} == {"dropped_future"}


def test_race_event_vs_timer_then_wait_again_matches_peer_history(w):
    """Timeout pattern on an event: race(wait "go", timer 50) - the timer wins - then wait "go"
    again and raise it. Must hold (peer-observed): output [{'index': 1, 'value': None}, 'G'] and
    history kinds Started, ExternalSubscribed, TimerCreated, TimerFired, ExternalSubscribed,
    ExternalSubscribedCancelled(source 2), ExternalEvent, OrchestrationCompleted - the cancelled
    slot consumes nothing."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        r = yield ctx.race(ctx.wait_for_event("go"), ctx.schedule_timer(50))
        r2 = yield ctx.wait_for_event("go")
        return [r, r2]

    w.client.start_orchestration("i", "O")
    w.run()
    w.client.raise_event("i", "go", "G")
    assert w.result("i").output == [{"index": 1, "value": None}, "G"]
    assert kinds(w, "i") == ["OrchestrationStarted", "ExternalSubscribed", "TimerCreated", "TimerFired",
                             "ExternalSubscribed", "ExternalSubscribedCancelled", "ExternalEvent",
                             "OrchestrationCompleted"]
    assert events_of(w, "i", "ExternalSubscribedCancelled")[0]["source_event_id"] == 2


def test_race_dequeue_vs_timer_then_dequeue_again_matches_peer_history(w):
    """Same with a queue: race(dequeue "q", timer 50), then dequeue "q", then enqueue. Must hold
    (peer-observed): [{'index': 1, 'value': None}, 'Q'] and kinds Started, QueueSubscribed,
    TimerCreated, TimerFired, QueueSubscribed, QueueSubscriptionCancelled(source 2),
    QueueEventDelivered, OrchestrationCompleted."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(50))
        r2 = yield ctx.dequeue_event("q")
        return [r, r2]

    w.client.start_orchestration("i", "O")
    w.run()
    w.client.enqueue_event("i", "q", "Q")
    assert w.result("i").output == [{"index": 1, "value": None}, "Q"]
    assert kinds(w, "i") == ["OrchestrationStarted", "QueueSubscribed", "TimerCreated", "TimerFired",
                             "QueueSubscribed", "QueueSubscriptionCancelled", "QueueEventDelivered",
                             "OrchestrationCompleted"]
    assert events_of(w, "i", "QueueSubscriptionCancelled")[0]["source_event_id"] == 2


def test_race_sub_orchestration_vs_timer_cancels_child(w):
    """User races a long child (explicit id "kid1") against a short timer. Must hold
    (peer-observed): parent output {'index': 1, 'value': None}; parent history has
    SubOrchestrationCancelRequested(source 2) after TimerFired; child status Failed with error
    'canceled: parent dropped sub-orchestration future', its history ending
    OrchestrationCancelRequested, OrchestrationFailed."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.race(ctx.schedule_sub_orchestration_with_id("Child", "kid1", 60_000), ctx.schedule_timer(50)))

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == {"index": 1, "value": None}
    k = kinds(w, "i")
    assert k == ["OrchestrationStarted", "SubOrchestrationScheduled", "TimerCreated", "TimerFired",
                 "SubOrchestrationCancelRequested", "OrchestrationCompleted"]
    assert events_of(w, "i", "SubOrchestrationCancelRequested")[0]["source_event_id"] == 2
    w.run()
    st = w.client.get_status("kid1")
    assert (st.status, st.error) == ("Failed", "canceled: parent dropped sub-orchestration future")
    assert kinds(w, "kid1")[-2:] == ["OrchestrationCancelRequested", "OrchestrationFailed"]


def test_race_failing_child_orchestration_value_is_traceback_text(w):
    """User races a child that raises ValueError('kaboom') against a long timer. Must hold
    (§17 ⚠ failing winner → error text as value; README documents the deliberate difference
    from 0.2.2, which raised): index 0, value text ending 'ValueError: kaboom'; the losing timer
    gets no breadcrumb (§4: timer → nothing)."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.race(ctx.schedule_sub_orchestration("Kid"), ctx.schedule_timer(60_000)))

    w.client.start_orchestration("i", "O")
    out = w.result("i").output
    assert out["index"] == 0 and out["value"].rstrip().endswith("ValueError: kaboom")
    assert "TimerFired" not in kinds(w, "i")
    assert [k for k in kinds(w, "i") if "Cancel" in k] == []


def test_race_of_three_is_a_catchable_error(w):
    """User passes three tasks to race and catches the error. Must hold (peer-observed: the
    generator caught 'select currently supports exactly 2 tasks' and completed; history
    Started, Completed - nothing scheduled)."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        try:
            return (yield ctx.race(ctx.schedule_timer(1), ctx.schedule_timer(2), ctx.schedule_timer(3)))
        except Exception as exc:  # noqa: BLE001
            return {"raised": str(exc)}

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == {"raised": "select currently supports exactly 2 tasks"}
    assert kinds(w, "i") == ["OrchestrationStarted", "OrchestrationCompleted"]


# ─── losers: late completion, re-yield ──────────────────────────────────────────────────────


def test_loser_activity_late_completion_is_recorded_not_delivered(w):
    """race(Sleep 10 s, timer 100 ms), then a longer timer, then return. In the sequential world
    the activity's completion lands in the same batch as TimerFired, after it. Must hold (§3.4
    'delivery to a dropped future is a no-op', §4 winner = first in history): the timer wins
    (index 1); the late ActivityCompleted(source 2) is recorded after TimerFired and changes
    nothing; at most one ActivityCancelRequested for it (observed: none, since it completed in
    the same turn it was dropped)."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        r = yield ctx.race(ctx.schedule_activity("Sleep", 10_000), ctx.schedule_timer(100))
        yield ctx.schedule_timer(50_000)
        return r

    w.client.start_orchestration("i", "O")
    st = w.result("i")
    assert (st.status, st.output) == ("Completed", {"index": 1, "value": None})
    k = kinds(w, "i")
    assert k.index("TimerFired") < k.index("ActivityCompleted")
    assert events_of(w, "i", "ActivityCompleted")[0]["source_event_id"] == 2
    assert len(events_of(w, "i", "ActivityCancelRequested")) <= 1


def test_yield_lost_activity_again_is_a_clear_error(w):
    """User yields the activity that lost a race again (it never ran: its tag has no worker).
    Must hold (brief: 'clear error'): the yield raises an error naming the lost race that the
    code can catch; the orchestration completes."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        a = ctx.schedule_activity("Echo", 1).with_tag("nobody")
        yield ctx.race(a, ctx.schedule_timer(10))
        try:
            return {"value": (yield a)}
        except Exception as exc:  # noqa: BLE001
            return {"raised": str(exc)}

    w.client.start_orchestration("i", "O")
    out = w.result("i").output
    assert "raised" in out and "lost a race" in out["raised"]


def test_yield_lost_activity_after_its_late_completion_does_not_silently_give_none(w):
    """User races Sleep(10 s) against a 100 ms timer, waits 50 s (the activity's completion arrives
    meanwhile and is recorded, not delivered), then yields the lost activity again. Must hold
    (§3.4 'delivery to a dropped future is a no-op'): the code does not silently receive None as
    if the activity had returned None - it gets either the clear 'lost a race' error or the real
    value 10000."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        a = ctx.schedule_activity("Sleep", 10_000)
        yield ctx.race(a, ctx.schedule_timer(100))
        yield ctx.schedule_timer(50_000)
        try:
            return {"value": (yield a)}
        except Exception as exc:  # noqa: BLE001
            return {"raised": str(exc)}

    w.client.start_orchestration("i", "O")
    out = w.result("i").output
    assert out == {"value": 10_000} or ("raised" in out and "lost a race" in out["raised"]), out


def test_yield_lost_timer_again_still_resolves(w):
    """User races Echo against a 60 s timer (Echo wins), then yields the lost timer. Timers get
    no cancellation (§3.10: 'they fire later; TimerFired is recorded harmlessly'), so waiting
    on it is meaningful. Must hold: the orchestration completes (either the original timer fires
    and resolves it, or a clear error is raised) - it does not hang or fail the instance.
    (Peer-observed: 0.2.2 re-yields the descriptor and schedules a second TimerCreated.)"""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        t = ctx.schedule_timer(60_000)
        r = yield ctx.race(ctx.schedule_activity("Echo", 1), t)
        try:
            r2 = yield t
            return [r, "resolved", r2]
        except Exception as exc:  # noqa: BLE001
            return [r, "raised", str(exc)]

    w.client.start_orchestration("i", "O")
    st = w.result("i")
    assert st.status == "Completed", st.error
    assert st.output[0] == {"index": 0, "value": 1}


# ─── dropped futures (§3.10, §17) ──────────────────────────────────────────────────────────


def test_unyielded_activity_is_not_scheduled(w):
    """User builds schedule_activity(...) but returns without yielding it. Must hold (SPEC §17:
    'Descriptors that are built but not yielded do nothing'; peer-observed history
    [OrchestrationStarted, OrchestrationCompleted], output 'ret')."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        ctx.schedule_activity("Echo", "unyielded")
        return "ret"
        yield

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == "ret"
    assert kinds(w, "i") == ["OrchestrationStarted", "OrchestrationCompleted"]
    assert w.client.get_queue_depths().worker_queue == 0


def test_unyielded_sub_orchestration_starts_no_child(w):
    """User builds a sub-orchestration descriptor with an explicit id and never yields it. Must
    hold (§17): no child instance exists."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        ctx.schedule_sub_orchestration_with_id("Child", "ghost", 10)
        yield ctx.schedule_timer(5)
        return "ok"

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == "ok"
    w.run()
    assert w.client.get_status("ghost").status == "NotFound"


def test_client_cancel_during_race_cascades_to_child_without_drop_breadcrumb(w):
    """User cancels the parent while it races a child against a long timer. Must hold (§3.8 1,
    §3.9 Cancelled): parent Failed 'canceled: stop'; the child gets CancelInstance('parent
    canceled') and fails 'canceled: parent canceled'; no SubOrchestrationCancelRequested
    breadcrumb (dropped-future reconciliation is skipped on Cancelled)."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.race(ctx.schedule_sub_orchestration_with_id("Child", "kid2", 60_000), ctx.schedule_timer(120_000)))

    w.client.start_orchestration("i", "O")
    w.run_for(10)
    w.client.cancel_instance("i", "stop")
    st = w.result("i")
    assert (st.status, st.error) == ("Failed", "canceled: stop")
    assert "SubOrchestrationCancelRequested" not in kinds(w, "i")
    w.run_for(10)
    kid = w.client.get_status("kid2")
    assert (kid.status, kid.error) == ("Failed", "canceled: parent canceled")


# ─── replay from scratch ────────────────────────────────────────────────────────────────────


def _loop_orch(ctx, n):
    """A timeout loop: each round races an event against a timer; then a join and a sub race."""
    got = []
    for _ in range(n):
        r = yield ctx.race(ctx.wait_for_event("tick"), ctx.schedule_timer(1_000))
        got.append(r["index"])
    j = yield ctx.all([ctx.schedule_activity("Echo", "j"), ctx.schedule_timer(5)])
    s = yield ctx.race(ctx.schedule_sub_orchestration("Child", 60_000), ctx.schedule_timer(10))
    return {"got": got, "join": j, "sub": s}


def _drive_loop(world):
    world.runtime.register_orchestration("Loop", _loop_orch)
    world.client.start_orchestration("i", "Loop", 4)
    world.run_for(1)
    world.client.raise_event("i", "tick", 1)   # round 1: event wins
    world.run_for(1_500)                        # round 2: timer wins
    world.client.raise_event("i", "tick", 2)   # round 3: event wins
    return world.result("i")


def test_timeout_loop_same_result_and_history_with_cache_off(w, rw):
    """User runs a loop of race(event, timer) rounds, a join and a sub-vs-timer race, once with
    the instance cache and once with every turn replayed from scratch. Must hold (§18 'identical
    outcomes on replay', §3.10: replayed dropped-future breadcrumbs must not trip the
    cancellation-mismatch check): both Completed with equal outputs and equal histories (ids,
    kinds, sources, data)."""
    a = _drive_loop(w)
    b = _drive_loop(rw)
    assert a.status == "Completed", a.error
    assert b.status == "Completed", b.error
    assert a.output == b.output
    assert a.output["got"][0] == 0 and a.output["got"][1] == 1
    assert a.output["sub"] == {"index": 1, "value": None}
    assert _strip(w.client.read_execution_history("i", 1)) == _strip(rw.client.read_execution_history("i", 1))


def test_second_runtime_finishes_a_pending_race_identically(w):
    """User starts race(wait "go", Child 60 s) + join on one runtime, then a new deployment
    (fresh registry, same store) receives the event. Must hold (§3.4 replay): the new runtime
    replays the open race, the event wins (index 0), the child gets
    SubOrchestrationCancelRequested and is cancelled; no nondeterminism."""

    def o(ctx, _):
        r = yield ctx.race(ctx.wait_for_event("go"), ctx.schedule_sub_orchestration_with_id("Child", "kid3", 60_000))
        j = yield ctx.all_typed([ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Echo", 2)])
        return [r, j]

    w.runtime.register_orchestration("O", o)
    w.client.start_orchestration("i", "O")
    w.run_for(10)
    second = SecondRuntime(w)
    second.runtime.register_orchestration("O", o)

    @second.runtime.register_activity("Echo")
    def echo(ctx, x):
        return x

    @second.runtime.register_orchestration("Child")
    def child(ctx, ms):
        yield ctx.schedule_timer(ms)
        return "child-done"

    second.client.raise_event("i", "go", "G")
    st = second.result("i")
    assert (st.status, st.output) == ("Completed", [{"index": 0, "value": "G"}, [1, 2]]), st.error
    second.run()
    assert w.client.get_status("kid3").status == "Failed"
    assert "SubOrchestrationCancelRequested" in kinds(w, "i")


# ─── production: Runtime + Client on SQLite ─────────────────────────────────────────────────


def _opts(**kw):
    base = dict(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=1_000)
    base.update(kw)
    return RuntimeOptions(**base)


@pytest.fixture
def sq(tmp_path):
    provider = SqliteProvider.open(tmp_path / "js.db")
    rt = Runtime(provider, _opts())
    holder = {"rt": rt, "provider": provider, "client": Client(provider), "path": tmp_path / "js.db", "extra": []}
    yield holder
    for r in [holder["rt"], *holder["extra"]]:
        try:
            r.shutdown(1_000)
        except Exception:  # noqa: BLE001
            pass


@pytest.mark.realtime
def test_sqlite_all_of_four_kinds_matches_peer(sq):
    """Production SQLite: the same four-kind join as the peer run. Must hold (peer-observed, same
    output on duroxide 0.2.2 SQLite): [{'ok': 'a'}, {'err': "Activity 'Fail' call failed:
    ValueError: boom"}, {'ok': None}, {'ok': {'v': 1}}]."""
    rt, c = sq["rt"], sq["client"]

    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("Fail")
    def fail(ctx, x):
        raise ValueError(x)

    @rt.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Echo", "a"), ctx.schedule_activity("Fail", "boom"),
                               ctx.schedule_timer(10), ctx.wait_for_event("e")]))

    rt.start()
    c.start_orchestration("i", "O")
    # (an event raised before the subscribing turn is committed would be lost: SPEC §6.1)
    assert wait_until(lambda: "ExternalSubscribed" in [e["kind"] for e in c.read_execution_history("i", 1)], 10)
    c.raise_event("i", "e", {"v": 1})
    assert c.wait_for_orchestration("i", 3_000).output == [
        {"ok": "a"}, {"err": "Activity 'Fail' call failed: ValueError: boom"}, {"ok": None}, {"ok": {"v": 1}}]


@pytest.mark.realtime
def test_sqlite_race_loser_activity_sees_cancel_and_never_completes(sq):
    """Production SQLite timeout pattern: race(Slow activity, 100 ms timer), then keep running
    for a while. Must hold (§4 losers, §11.2): index 1 wins; the running activity observes
    ctx.is_cancelled(); ActivityCancelRequested(source 2) is recorded; no ActivityCompleted for
    the loser reaches history (its row was deleted; peer-observed history has none); the worker
    queue is empty at the end."""
    rt, c = sq["rt"], sq["client"]
    seen = {}

    @rt.register_activity("Slow")
    def slow(ctx, _):
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            if ctx.is_cancelled():
                seen["cancelled"] = True
                return "cancelled"
            time.sleep(0.01)
        seen["cancelled"] = False
        return "done"

    @rt.register_orchestration("O")
    def o(ctx, _):
        r = yield ctx.race(ctx.schedule_activity("Slow"), ctx.schedule_timer(100))
        yield ctx.schedule_timer(1_800)
        return r

    rt.start()
    c.start_orchestration("i", "O")
    st = c.wait_for_orchestration("i", 5_000)
    assert st.output == {"index": 1, "value": None}
    assert seen.get("cancelled") is True
    h = c.read_execution_history("i", 1)
    assert [(e["kind"], e["source_event_id"]) for e in h if e["kind"].startswith("Activity")] == [
        ("ActivityScheduled", None), ("ActivityCancelRequested", 2)]
    assert c.get_queue_depths().worker_queue == 0


@pytest.mark.realtime
def test_sqlite_race_sub_vs_timer_child_cancelled(sq):
    """Production SQLite: race(child with 60 s timer, 50 ms timer). Must hold (peer-observed):
    parent {'index': 1, 'value': None}; child 'kid1' Failed with 'canceled: parent dropped
    sub-orchestration future'."""
    rt, c = sq["rt"], sq["client"]

    @rt.register_orchestration("Child")
    def child(ctx, ms):
        yield ctx.schedule_timer(ms)
        return "child-done"

    @rt.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.race(ctx.schedule_sub_orchestration_with_id("Child", "kid1", 60_000), ctx.schedule_timer(50)))

    rt.start()
    c.start_orchestration("i", "O")
    assert c.wait_for_orchestration("i", 3_000).output == {"index": 1, "value": None}
    kid = c.wait_for_orchestration("kid1", 3_000)
    assert (kid.status, kid.error) == ("Failed", "canceled: parent dropped sub-orchestration future")


@pytest.mark.realtime
def test_sqlite_new_runtime_resumes_pending_race(sq):
    """Production SQLite: a runtime shuts down while race(wait "go", 60 s timer) is pending; a new
    Runtime over the same file (fresh cache) gets the event. Must hold (§3.4): index 0, value
    'G'; the history has exactly one ExternalSubscribed and one TimerCreated (no duplicates
    from the replay)."""
    rt, c = sq["rt"], sq["client"]

    def o(ctx, _):
        return (yield ctx.race(ctx.wait_for_event("go"), ctx.schedule_timer(60_000)))

    rt.register_orchestration("O", o)
    rt.start()
    c.start_orchestration("i", "O")
    # (the first turn, which subscribes and starts the timer, committed before the restart)
    assert wait_until(lambda: "TimerCreated" in [e["kind"] for e in c.read_execution_history("i", 1)], 10)
    rt.shutdown(1_000)
    p2 = SqliteProvider.open(sq["path"])
    rt2 = Runtime(p2, _opts())
    sq["extra"].append(rt2)
    rt2.register_orchestration("O", o)
    rt2.start()
    c2 = Client(p2)
    c2.raise_event("i", "go", "G")
    assert c2.wait_for_orchestration("i", 3_000).output == {"index": 0, "value": "G"}
    k = [e["kind"] for e in c2.read_execution_history("i", 1)]
    assert k.count("ExternalSubscribed") == 1 and k.count("TimerCreated") == 1


# ─── simulator with faults ──────────────────────────────────────────────────────────────────


def _sim_setup(rt, world):
    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("Charge")
    def charge(ctx, oid):
        if world.put_if_absent(f"charged:{oid}", True):
            world.append("charges", oid)
        return f"charged-{oid}"

    @rt.register_orchestration("Child")
    def child(ctx, x):
        yield ctx.schedule_timer(10)
        return x * 2

    @rt.register_orchestration("Fan")
    def fan(ctx, n):
        parts = yield ctx.all([ctx.schedule_activity("Charge", f"{n}-{i}") for i in range(3)]
                              + [ctx.schedule_sub_orchestration("Child", n), ctx.schedule_timer(5)])
        fast = yield ctx.race(ctx.schedule_activity("Echo", n), ctx.schedule_timer(3_600_000))
        slow = yield ctx.race(ctx.schedule_sub_orchestration("Child", n), ctx.schedule_timer(3_600_000))
        return {"parts": parts, "fast": fast, "slow": slow}


def test_simulator_join_and_races_under_faults():
    """User writes a fan-out/fan-in plus two races whose timers are an hour (the work always
    wins) and runs 6 seeds with all fault kinds at 5 %. Must hold (§18 invariants, §4): every
    seed passes run_and_check (same outputs as the fault-free twin, replay-clean, no completion
    for a cancelled-and-deleted activity), and every instance's output has the expected shape."""
    from duroxide_sim.sim.checkers import run_and_check
    from duroxide_sim.sim.faults import FaultPlan
    from duroxide_sim.sim.harness import SimSpec, Simulation, Start

    spec = SimSpec(name="join-select-journeys", setup=_sim_setup,
                   starts=[Start(instance=f"f{i}", orchestration="Fan", input=i) for i in range(3)])
    for seed in range(6):
        res = run_and_check(Simulation(spec, seed, FaultPlan.all(0.05)))
        assert res.ok, res.failures[0].render()
        for i in range(3):
            status, out = res.outputs()[f"f{i}"]
            assert status == "Completed", (seed, out)


def _timeout_setup(rt, world):
    @rt.register_orchestration("Wait")
    def wait(ctx, _):
        r = yield ctx.race(ctx.wait_for_event("go"), ctx.schedule_timer(60_000))
        if r["index"] == 1:
            r2 = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(60_000))
            return ["timeout", r2["index"]]
        return ["event", r["value"]]


def test_simulator_event_vs_timer_signals_at_arbitrary_times():
    """User's approval-with-timeout workflow gets its event and queue message at seed-chosen
    times, under faults. Must hold: every seed passes run_and_check (not fault-transparent:
    the winner depends on timing) and each output is one of the legal shapes."""
    from duroxide_sim.sim.checkers import run_and_check
    from duroxide_sim.sim.faults import FaultPlan
    from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start

    spec = SimSpec(name="timeout-signals", setup=_timeout_setup, fault_transparent=False,
                   starts=[Start(instance=f"w{i}", orchestration="Wait") for i in range(3)],
                   signals=[s for i in range(3) for s in (
                       Signal(instance=f"w{i}", name="go", data=i, at_ms=None),
                       Signal(instance=f"w{i}", name="q", data=i, at_ms=None, kind="enqueue"))])
    for seed in range(8):
        res = run_and_check(Simulation(spec, seed, FaultPlan.all(0.05)))
        assert res.ok, res.failures[0].render()
        for i in range(3):
            status, out = res.outputs()[f"w{i}"]
            assert status == "Completed"
            assert out in (["event", i], ["timeout", 0], ["timeout", 1]), out
