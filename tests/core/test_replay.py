"""Replay engine basics: SPEC §16 J items 32, 33, 37, 39, 40, 41 and replay-safe logging (§5).

Turns are run directly with ``execute_turn`` over hand-built histories (see ``histories.py``).
"""

from __future__ import annotations

import json
import logging

import pytest

from duroxide_sim.core.events import (
    ActivityExecute,
    ApplicationError,
    CancelInstance,
    ConfigurationErrorDetails,
    ContinueAsNew,
    InfrastructureError,
    OrchestrationFailed,
    PoisonError,
    StartOrchestration,
    SubOrchestrationFailed,
    TimerFiredMsg,
)
from tests.core.histories import (
    NOW,
    act_done,
    act_fail,
    activity_completed,
    activity_failed,
    activity_scheduled,
    cancel,
    chained,
    child_fail,
    completed,
    continued_as_new,
    external_subscribed,
    failed,
    fired,
    new,
    queue_subscribed,
    registry,
    started,
    start_msg,
    sub_scheduled,
    timer_created,
    timer_fired,
    turn,
)

COMPLETION_KINDS = ("ActivityCompleted", "ActivityFailed", "TimerFired", "SubOrchestrationCompleted", "SubOrchestrationFailed")


def exec_item(id: int, name: str, input: str, **kw) -> ActivityExecute:
    return ActivityExecute(
        instance="i", execution_id=1, id=id, name=name, input=input,
        orchestration_name="O", orchestration_version="1.0.0", **kw,
    )


# ---------------------------------------------------------------------------------------------
# Item 32: first turns
# ---------------------------------------------------------------------------------------------


def test_immediate_return_plain_function_completes():
    """J32: [Started] + immediate Ok -> Completed with one OrchestrationCompleted event."""

    def orch(ctx, inp):
        return {"got": inp}

    r = turn(orch, [started()])
    assert r.kind == "completed"
    assert r.status == "Completed"
    assert r.output == '{"got": "x"}'
    assert r.error is None
    assert list(r.delta) == new(completed(2, '{"got": "x"}'))
    assert r.worker_items == () and r.orchestrator_items == () and r.cancelled == ()


def test_immediate_return_generator_completes():
    """J32: a generator that returns without yielding completes in the first turn."""

    def orch(ctx, inp):
        if False:  # pragma: no cover - makes this a generator
            yield
        return 7

    r = turn(orch, [started()])
    assert r.kind == "completed"
    assert r.output == "7"
    assert list(r.delta) == new(completed(2, "7"))


def test_immediate_error_fails_with_application_error():
    """J32: [Started] + immediate Err -> Failed(Application{OrchestrationFailed}) (§17: message is
    the formatted exception)."""

    def orch(ctx, inp):
        raise ValueError("boom")

    r = turn(orch, [started()])
    assert r.kind == "failed"
    assert r.status == "Failed"
    assert isinstance(r.error, ApplicationError)
    assert r.error.kind == "OrchestrationFailed"
    assert r.error.message.splitlines()[0] == "Traceback (most recent call last):"  # as Python prints it
    assert r.error.message.splitlines()[-1] == "ValueError: boom"
    assert __file__ in r.error.message  # traceback of the user frame
    assert r.output == r.error.message
    assert list(r.delta) == new(failed(2, r.error))
    assert r.worker_items == () and r.orchestrator_items == ()


def test_first_turn_from_start_item_writes_started_event():
    """J32 / §3.1 step 6: empty history + StartOrchestration -> OrchestrationStarted id 1 with the
    resolved version, then the first schedule."""
    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", inp))

    r = turn(orch, [], [start_msg(input='"in"')])
    assert r.kind == "continue"
    assert list(r.delta) == new(started(input='"in"'), activity_scheduled(2, "A", '"in"'))
    assert r.worker_items == (exec_item(2, "A", '"in"'),)
    assert r.orchestration_name == "O" and r.orchestration_version == "1.0.0"


def _one(kind):
    def orch(ctx, inp):
        if kind == "activity":
            task = ctx.schedule_activity("A", 1)
        elif kind == "timer":
            task = ctx.schedule_timer(500)
        elif kind == "wait":
            task = ctx.wait_for_event("E")
        elif kind == "dequeue":
            task = ctx.dequeue_event("q")
        else:
            task = ctx.schedule_sub_orchestration("C", 1)
        return (yield task)

    return orch


@pytest.mark.parametrize(
    "kind, event, worker, orch_items",
    [
        ("activity", activity_scheduled(2, "A", "1"), [exec_item(2, "A", "1")], []),
        ("timer", timer_created(2, NOW + 500), [], [TimerFiredMsg(instance="i", execution_id=1, id=2, fire_at_ms=NOW + 500)]),
        ("wait", external_subscribed(2, "E"), [], []),
        ("dequeue", queue_subscribed(2, "q"), [], []),
        (
            "sub",
            sub_scheduled(2, "C", "1", instance="sub::2"),
            [],
            [StartOrchestration(instance="i::sub::2", orchestration="C", input="1", version=None,
                                parent_instance="i", parent_id=2, parent_execution_id=1)],
        ),
    ],
)
def test_one_schedule_of_each_kind_continues(kind, event, worker, orch_items):
    """J32: one schedule of each kind -> Continue with one pending action and one delta event."""
    r = turn(_one(kind), [started()])
    assert r.kind == "continue"
    assert r.status is None and r.output is None and r.error is None
    assert list(r.delta) == new(event)
    assert list(r.worker_items) == worker
    assert list(r.orchestrator_items) == orch_items
    assert r.cancelled == ()


def test_continue_as_new_first_turn():
    """J32: CAN -> ContinueAsNew with OrchestrationContinuedAsNew and a ContinueAsNew work item."""

    def orch(ctx, inp):
        yield ctx.continue_as_new(5)

    r = turn(orch, [started()])
    assert r.kind == "continued_as_new"
    assert r.status == "ContinuedAsNew"
    assert r.output == "5"
    assert list(r.delta) == new(continued_as_new(2, "5"))
    assert r.worker_items == ()
    assert r.orchestrator_items == (
        ContinueAsNew(instance="i", orchestration="O", input="5", version=None, carry_forward_events=(),
                      initial_custom_status=None, execution_id=1),
    )


def test_schedules_then_return_completes_with_all_pending_detached_starts():
    """J32 (Python form): schedules then return -> Completed with all actions pending. In the SDK
    only detached starts can be scheduled without being awaited; both are dispatched. Task
    descriptors that are built but never yielded do nothing (§17)."""

    def orch(ctx, inp):
        ctx.schedule_activity("NeverYielded", 1)  # descriptor only: no event, no work
        yield ctx.start_orchestration("D", "d1", 1)
        yield ctx.start_orchestration("D", "d2", 2)
        return "done"

    r = turn(orch, [started()])
    assert r.kind == "completed"
    assert list(r.delta) == new(chained(2, "D", "d1", "1"), chained(3, "D", "d2", "2"), completed(4, '"done"'))
    assert r.orchestrator_items == (
        StartOrchestration(instance="d1", orchestration="D", input="1"),
        StartOrchestration(instance="d2", orchestration="D", input="2"),
    )
    assert r.worker_items == ()


# ---------------------------------------------------------------------------------------------
# Item 33: full / partial histories
# ---------------------------------------------------------------------------------------------


def _three_steps(ctx, inp):
    a = yield ctx.schedule_activity("A", inp)
    yield ctx.schedule_timer(50)
    b = yield ctx.schedule_activity("B", a)
    return [a, b]


def _drive(reg, first_history):
    """Run turns until terminal, completing each activity with '"<name>-out"' and firing timers."""
    history = list(first_history)
    msgs = []
    for _ in range(20):
        r = turn(reg, history, msgs)
        history += r.delta
        if r.kind != "continue":
            return history, r
        msgs = [act_done(w.id, json.dumps(w.name + "-out")) for w in r.worker_items]
        msgs += [fired(t.id, t.fire_at_ms) for t in r.orchestrator_items if isinstance(t, TimerFiredMsg)]
    raise AssertionError("did not finish")


def test_full_history_replays_to_the_same_outcome():
    """J33: the full history (without its terminal event) replays to the same output, adding only
    the terminal event with the next id."""
    reg = registry(_three_steps)
    history, last = _drive(reg, [started()])
    assert last.kind == "completed" and last.output == '["A-out", "B-out"]'
    assert [type(e).__name__ for e in history] == [
        "OrchestrationStarted", "ActivityScheduled", "ActivityCompleted", "TimerCreated", "TimerFired",
        "ActivityScheduled", "ActivityCompleted", "OrchestrationCompleted",
    ]
    assert [e.event_id for e in history] == list(range(1, 9))
    again = turn(reg, history[:-1])
    assert again.kind == "completed"
    assert again.output == last.output
    assert list(again.delta) == [history[-1]]
    assert again.worker_items == () and again.orchestrator_items == ()


def test_partial_histories_resume_sequentially():
    """J33: every prefix replays; a prefix ending at a schedule -> Continue with no new actions;
    a prefix ending at a completion resumes with exactly the next recorded events."""
    reg = registry(_three_steps)
    history, _ = _drive(reg, [started()])
    for k in range(1, len(history)):
        prefix = history[:k]
        j = next((n for n in range(k, len(history)) if type(history[n]).__name__ in COMPLETION_KINDS), len(history))
        r = turn(reg, prefix)
        assert list(r.delta) == history[k:j], f"prefix of {k} events"
        if j == k:
            assert r.kind == "continue"
            assert r.worker_items == () and r.orchestrator_items == ()


def test_identical_activities_bind_positionally():
    """J33: identical (name, input) activities bind to schedules in emission order."""

    def orch(ctx, inp):
        return (yield ctx.all([ctx.schedule_activity("A", 1), ctx.schedule_activity("A", 1)]))

    history = [
        started(), activity_scheduled(2, "A", "1"), activity_scheduled(3, "A", "1"),
        activity_completed(4, 3, '"second"'), activity_completed(5, 2, '"first"'),
    ]
    r = turn(orch, history)
    assert r.kind == "completed"
    assert r.output == '[{"ok": "first"}, {"ok": "second"}]'


# ---------------------------------------------------------------------------------------------
# Item 37: corruption
# ---------------------------------------------------------------------------------------------


def _noop_orch(ctx, inp):
    return (yield ctx.schedule_activity("A", 1))


def test_empty_history_fails_as_corrupted():
    """J37 / §3.4: empty history (and nothing to start it) -> nondeterminism
    `corrupted history: empty`."""
    r = turn(_noop_orch, [])
    assert r.kind == "failed"
    assert isinstance(r.error, ConfigurationErrorDetails)
    assert r.error.message == "corrupted history: empty"


def test_history_not_starting_with_started_fails_as_corrupted():
    """J37 / §3.4: first event not OrchestrationStarted -> nondeterminism."""
    r = turn(_noop_orch, [activity_scheduled(1, "A", "1")])
    assert r.kind == "failed"
    assert r.error == ConfigurationErrorDetails(message="corrupted history: first event must be OrchestrationStarted")
    assert r.output == "nondeterministic: corrupted history: first event must be OrchestrationStarted"
    assert [type(e) for e in r.delta] == [OrchestrationFailed]
    assert r.delta[0].event_id == 2 and r.delta[0].details == r.error
    assert r.worker_items == () and r.orchestrator_items == ()


@pytest.mark.parametrize(
    "ids",
    [(0, 1, 2), (1, 5, 9), (1, 9, 4)],
    ids=["id-zero", "gaps", "non-monotonic"],
)
def test_odd_event_ids_are_accepted(ids):
    """J37: id 0, gaps and non-monotonic ids are accepted; new ids continue from the last one."""
    s, sched, done = ids
    history = [started(event_id=s), activity_scheduled(sched, "A", "1"), activity_completed(done, sched, '"r"')]
    r = turn(_noop_orch, history)
    assert r.kind == "completed"
    assert list(r.delta) == new(completed(done + 1, '"r"'))


@pytest.mark.parametrize(
    "terminal",
    [
        completed(3, '"r"'),
        failed(3, ApplicationError(kind="OrchestrationFailed", message="x")),
        continued_as_new(3, '"y"'),
    ],
    ids=["completed", "failed", "continued_as_new"],
)
def test_terminal_history_is_a_noop(terminal):
    """J37: any terminal event -> no-op (no events, no work), whatever the batch holds."""
    history = [started(), activity_scheduled(2, "A", "1"), terminal, activity_scheduled(4, "B", "1")]
    r = turn(_noop_orch, history, [act_done(2, '"late"'), cancel("c")])
    assert r.kind == "noop"
    assert r.delta == () and r.worker_items == () and r.orchestrator_items == () and r.cancelled == ()


# ---------------------------------------------------------------------------------------------
# Item 39: ids
# ---------------------------------------------------------------------------------------------


def test_new_ids_are_consecutive_and_pending_actions_carry_them():
    """J39: new ids = last + 1 consecutively; work items carry the schedule ids; auto child ids
    are `sub::{id}` and unique."""

    def orch(ctx, inp):
        yield ctx.schedule_timer(1)  # already fired in history
        return (yield ctx.all([
            ctx.schedule_activity("A", 1),
            ctx.schedule_timer(10),
            ctx.schedule_sub_orchestration("C", 1),
            ctx.schedule_sub_orchestration("C", 1),
        ]))

    history = [started(), timer_created(4, 1001)]  # ids need not be dense
    r = turn(orch, history, [fired(4, 1001)])
    assert r.kind == "continue"
    assert list(r.delta) == new(
        timer_fired(5, 4, 1001),
        activity_scheduled(6, "A", "1"),
        timer_created(7, NOW + 10),
        sub_scheduled(8, "C", "1", instance="sub::8"),
        sub_scheduled(9, "C", "1", instance="sub::9"),
    )
    assert r.worker_items == (exec_item(6, "A", "1"),)
    assert r.orchestrator_items == (
        TimerFiredMsg(instance="i", execution_id=1, id=7, fire_at_ms=NOW + 10),
        StartOrchestration(instance="i::sub::8", orchestration="C", input="1", parent_instance="i", parent_id=8, parent_execution_id=1),
        StartOrchestration(instance="i::sub::9", orchestration="C", input="1", parent_instance="i", parent_id=9, parent_execution_id=1),
    )


def test_explicit_child_ids_are_preserved():
    """J39 / §7: explicit child ids are used verbatim (⚠ except a `sub::` prefix, which is
    prefixed with the parent id like an auto id)."""

    def orch(ctx, inp):
        return (yield ctx.all([
            ctx.schedule_sub_orchestration_with_id("C", "kid", 1),
            ctx.schedule_sub_orchestration_with_id("C", "sub::odd", 2),
        ]))

    r = turn(orch, [started()])
    assert list(r.delta) == new(sub_scheduled(2, "C", "1", instance="kid"), sub_scheduled(3, "C", "2", instance="sub::odd"))
    assert [item.instance for item in r.orchestrator_items] == ["kid", "i::sub::odd"]


def test_replay_reuses_recorded_child_id():
    """J39: on replay the recorded child id stands (sub-orchestrations match on name + input only),
    e.g. for the CancelInstance a cancelled parent sends."""

    def orch(ctx, inp):
        return (yield ctx.schedule_sub_orchestration("C", 1))

    history = [started(), sub_scheduled(2, "C", "1", instance="sub::77")]
    r = turn(orch, history, [cancel("stop")])
    assert r.kind == "cancelled"
    assert CancelInstance(instance="i::sub::77", reason="parent canceled") in r.orchestrator_items


# ---------------------------------------------------------------------------------------------
# Item 40: is_replaying, and §5 logging
# ---------------------------------------------------------------------------------------------


def _flagging(flags):
    def orch(ctx, inp):
        flags.append(ctx.is_replaying())
        ctx.trace_info("start")
        a = yield ctx.schedule_activity("A", 1)
        flags.append(ctx.is_replaying())
        ctx.trace_info(f"after A {a}")
        b = yield ctx.schedule_activity("B", 1)
        flags.append(ctx.is_replaying())
        ctx.trace_warn(f"after B {b}")
        return [a, b]

    return orch


def test_is_replaying_false_on_first_turn():
    """J40: is_replaying() is False on the first turn (empty persisted history; Started is
    written by this turn); its logs are returned."""
    flags = []
    r = turn(_flagging(flags), [], [start_msg()])
    assert r.kind == "continue"
    assert flags == [False]
    assert r.logs == ((logging.INFO, "start"),)


def test_is_replaying_true_over_persisted_events_false_on_new_ones():
    """J40 / §5: True while replaying persisted events, False once the code reacts to a new
    event; trace logs are returned only for the non-replaying part."""
    flags = []
    history = [started(), activity_scheduled(2, "A", "1"), activity_completed(3, 2, '"a"'), activity_scheduled(4, "B", "1")]
    r = turn(_flagging(flags), history, [act_done(4, '"b"')])
    assert r.kind == "completed"
    assert flags == [True, True, False]
    assert r.logs == ((logging.WARNING, "after B b"),)


def test_full_replay_without_new_events_logs_nothing():
    """J40 / §5: a turn that only replays persisted events emits no trace logs."""
    flags = []
    history = [started(), activity_scheduled(2, "A", "1"), activity_completed(3, 2, '"a"'), activity_scheduled(4, "B", "1")]
    r = turn(_flagging(flags), history)
    assert r.kind == "continue" and r.delta == ()
    assert flags == [True, True]
    assert r.logs == ()


# ---------------------------------------------------------------------------------------------
# Item 41: errors
# ---------------------------------------------------------------------------------------------


def test_application_errors_reach_code():
    """J41: an Application activity failure is raised in the code with its display message."""

    def orch(ctx, inp):
        try:
            yield ctx.schedule_activity("A", 1)
        except Exception as exc:  # noqa: BLE001
            return f"caught: {exc}"
        return "no error"

    history = [started(), activity_scheduled(2, "A", "1")]
    r = turn(orch, history, [act_fail(2, "Activity 'A' call failed: ValueError: bad")])
    assert r.kind == "completed"
    assert r.output == json.dumps("caught: Activity 'A' call failed: ValueError: bad")
    assert list(r.delta) == new(activity_failed(3, 2, "Activity 'A' call failed: ValueError: bad"), completed(4, r.output))


def test_child_application_failure_reaches_code():
    """J41 / §7: an Application child failure reaches the parent code as its display text."""

    def orch(ctx, inp):
        try:
            yield ctx.schedule_sub_orchestration("C", 1)
        except Exception as exc:  # noqa: BLE001
            return str(exc)

    history = [started(), sub_scheduled(2, "C", "1")]
    r = turn(orch, history, [child_fail(2, ApplicationError(kind="Cancelled", reason="bye"))])
    assert r.kind == "completed"
    assert r.output == json.dumps("canceled: bye")


@pytest.mark.parametrize(
    "details",
    [
        InfrastructureError(operation="ack", message="disk on fire"),
        ConfigurationErrorDetails(message="schedule mismatch: x"),
        PoisonError(attempt_count=11, max_attempts=10, message_type="Activity", instance="i", execution_id=1,
                    activity_name="A", activity_id=2),
    ],
    ids=["infrastructure", "configuration", "poison"],
)
def test_system_activity_errors_abort_without_running_code(details):
    """J41 / §3.3 step 4: non-Application activity failures are recorded and abort the turn with
    the same details; user code never sees them."""
    seen = []

    def orch(ctx, inp):
        seen.append("ran")
        try:
            yield ctx.schedule_activity("A", 1)
        except Exception:  # noqa: BLE001
            return "swallowed"

    history = [started(), activity_scheduled(2, "A", "1")]
    r = turn(orch, history, [act_fail(2, details)])
    assert seen == []
    assert r.kind == "failed"
    assert r.error == details
    assert r.output == details.display_message()
    assert list(r.delta) == new(activity_failed(3, 2, details), failed(4, details))


@pytest.mark.parametrize(
    "details",
    [
        InfrastructureError(operation="ack", message="lost"),
        ConfigurationErrorDetails(message="schedule mismatch: y"),
        PoisonError(attempt_count=11, max_attempts=10, message_type="Orchestration", instance="i::sub::2", execution_id=1),
    ],
    ids=["infrastructure", "configuration", "poison"],
)
def test_system_child_errors_abort_parent(details):
    """J41 / §7: Configuration/Infrastructure/Poison child failures abort the parent with the same
    details."""

    def orch(ctx, inp):
        try:
            yield ctx.schedule_sub_orchestration("C", 1)
        except Exception:  # noqa: BLE001
            return "swallowed"

    history = [started(), sub_scheduled(2, "C", "1")]
    r = turn(orch, history, [child_fail(2, details)])
    assert r.kind == "failed"
    assert r.error == details
    assert [type(e) for e in r.delta] == [SubOrchestrationFailed, OrchestrationFailed]
    assert r.delta[0].details == details and r.delta[1].details == details


def test_exception_in_code_after_resume_fails_with_traceback():
    """J41 (Python form, §17): an exception escaping the generator (the SDK's "panic") fails with
    Application{OrchestrationFailed} whose message is the formatted exception."""

    def orch(ctx, inp):
        yield ctx.schedule_activity("A", 1)
        raise RuntimeError("kaput")

    history = [started(), activity_scheduled(2, "A", "1")]
    r = turn(orch, history, [act_done(2, '"r"')])
    assert r.kind == "failed"
    assert r.error.kind == "OrchestrationFailed"
    assert r.error.message.splitlines()[-1] == "RuntimeError: kaput"
    assert "Traceback" in r.error.message
    assert [type(e).__name__ for e in r.delta] == ["ActivityCompleted", "OrchestrationFailed"]
