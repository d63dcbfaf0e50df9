"""Prep (messages -> events, SPEC §3.3/§3.12), cancellation and finalization precedence (§3.8):
SPEC §16 J items 34 and 35."""

from __future__ import annotations

import pytest

from duroxide_sim.core.events import (
    ApplicationError,
    CancelInstance,
    ConfigurationErrorDetails,
    ContinueAsNew,
    SubOrchFailedMsg,
)
from tests.core.histories import (
    act_done,
    act_fail,
    activity_cancel_requested,
    activity_completed,
    activity_scheduled,
    cancel,
    cancel_requested,
    child_done,
    child_fail,
    completed,
    enqueued,
    external_cancelled,
    external_event,
    external_subscribed,
    failed,
    fired,
    new,
    queue_cancelled,
    queue_delivered,
    queue_subscribed,
    raised,
    start_msg,
    started,
    sub_completed,
    sub_scheduled,
    timer_created,
    timer_fired,
    turn,
)


def _wait_all(ctx, inp):
    """Waits on an activity (2), a timer (3) and a child (4) scheduled in one go."""
    return (yield ctx.all([ctx.schedule_activity("A", 1), ctx.schedule_timer(10), ctx.schedule_sub_orchestration("C", 1)]))


ALL_SCHEDULED = [started(), activity_scheduled(2, "A", "1"), timer_created(3, 1010), sub_scheduled(4, "C", "1")]


# ---------------------------------------------------------------------------------------------
# Item 34 / §3.3: conversion, filters, duplicates
# ---------------------------------------------------------------------------------------------


def test_completions_become_delta_events_in_message_order():
    """J34 / §3.3 steps 4-5: completions become events with source ids, next ids in message order."""
    r = turn(_wait_all, ALL_SCHEDULED, [child_done(4, '"c"'), fired(3, 1010), act_done(2, '"a"')])
    assert r.kind == "completed"
    assert list(r.delta) == new(
        sub_completed(5, 4, '"c"'),
        timer_fired(6, 3, 1010),
        activity_completed(7, 2, '"a"'),
        completed(8, '[{"ok": "a"}, {"ok": null}, {"ok": "c"}]'),
    )


@pytest.mark.parametrize(
    "msg",
    [act_done(2, '"a"', execution_id=2), act_fail(2, "x", execution_id=0), fired(3, 1010, execution_id=2),
     child_done(4, '"c"', parent_execution_id=2), child_fail(4, "x", parent_execution_id=3)],
    ids=["activity-completed", "activity-failed", "timer", "sub-completed", "sub-failed"],
)
def test_execution_filter_drops_stale_completions(msg):
    """§3.3 step 1 / J34: completions addressed to another execution are dropped silently."""
    r = turn(_wait_all, ALL_SCHEDULED, [msg])
    assert r.kind == "continue"
    assert r.delta == () and r.worker_items == () and r.orchestrator_items == ()
    assert r.error is None


def test_stale_completion_of_unknown_id_is_dropped_not_nondeterminism():
    """§3.12: a completion for another execution is dropped even if its id is unknown here."""
    r = turn(_wait_all, ALL_SCHEDULED, [act_done(99, '"a"', execution_id=7)])
    assert r.kind == "continue" and r.delta == ()


@pytest.mark.parametrize(
    "persisted, msg",
    [
        (activity_completed(5, 2, '"a"'), act_done(2, '"again"')),
        (timer_fired(5, 3, 1010), fired(3, 1010)),
        (sub_completed(5, 4, '"c"'), child_done(4, '"again"')),
    ],
    ids=["activity", "timer", "sub"],
)
def test_duplicate_of_persisted_completion_is_dropped(persisted, msg):
    """§3.3 step 2 / J34: a completion already in persisted history is dropped."""
    r = turn(_wait_all, ALL_SCHEDULED + [persisted], [msg])
    assert r.kind == "continue"
    assert r.delta == ()


def test_duplicate_activity_failed_after_completed_is_dropped():
    """§3.3 step 2 / §3.12 Recommend: a completion whose source already completed is dropped,
    including an ActivityFailed after an ActivityCompleted (and vice versa)."""
    r = turn(_wait_all, ALL_SCHEDULED + [activity_completed(5, 2, '"a"')], [act_fail(2, "late failure")])
    assert r.kind == "continue" and r.delta == () and r.error is None
    r = turn(_wait_all, ALL_SCHEDULED + [activity_completed(5, 2, '"a"')], [act_fail(2, "late failure"), act_fail(2, "again")])
    assert r.kind == "continue" and r.delta == ()


def test_duplicate_child_completion_of_other_kind_is_dropped():
    """§3.12 Recommend: SubOrchFailed for a child that already completed is dropped."""
    r = turn(_wait_all, ALL_SCHEDULED + [sub_completed(5, 4, '"c"')], [child_fail(4, "late")])
    assert r.kind == "continue" and r.delta == ()


def test_same_batch_duplicates_are_dropped():
    """§3.3 step 2 / J34: a second completion for the same id in one batch is dropped, Completed
    and Failed counted together."""
    msgs = [act_done(2, '"a"'), act_done(2, '"a2"'), act_fail(2, "f"), fired(3, 1010), fired(3, 1010)]
    r = turn(_wait_all, ALL_SCHEDULED, msgs)
    assert r.kind == "continue"
    assert list(r.delta) == new(activity_completed(5, 2, '"a"'), timer_fired(6, 3, 1010))


def test_same_batch_failed_then_completed_keeps_the_failure():
    """§3.3 step 2: the first completion in the batch wins."""
    r = turn(_wait_all, ALL_SCHEDULED, [act_fail(2, "boom"), act_done(2, '"a"')])
    assert [type(e).__name__ for e in r.delta] == ["ActivityFailed"]
    assert r.delta[0].details == ApplicationError(kind="ActivityFailed", message="boom")


@pytest.mark.parametrize(
    "msg, text",
    [
        (act_done(9, '"a"'), "no matching schedule for completion id=9"),
        (act_fail(9, "x"), "no matching schedule for completion id=9"),
        (fired(9, 5), "no matching schedule for timer id=9"),
        (child_done(9, '"c"'), "no matching schedule for sub-orchestration id=9"),
        (child_fail(9, "x"), "no matching schedule for sub-orchestration id=9"),
    ],
    ids=["activity-completed", "activity-failed", "timer", "sub-completed", "sub-failed"],
)
def test_unknown_completion_id_fails_nondeterministic(msg, text):
    """§3.3 step 3 / J36: unknown completion id -> the turn fails with
    `nondeterministic: no matching schedule for ... id=N`; the message is skipped; code never runs."""
    ran = []

    def orch(ctx, inp):
        ran.append(1)
        return (yield ctx.schedule_activity("A", 1))

    r = turn(orch, [started(), activity_scheduled(2, "A", "1")], [msg])
    assert ran == []
    assert r.kind == "failed"
    assert r.error == ConfigurationErrorDetails(message=text)
    assert r.output == f"nondeterministic: {text}"
    assert list(r.delta) == new(
        failed(3, ConfigurationErrorDetails(message=text)),
        activity_cancel_requested(4, 2, "orchestration_terminal_failed"),
    )
    assert r.cancelled == (("i", 1, 2),)


@pytest.mark.parametrize(
    "msg, text",
    [
        (fired(2, 5), "completion kind mismatch for id=2, expected 'activity', got 'timer'"),
        (child_done(2, '"c"'), "completion kind mismatch for id=2, expected 'activity', got 'suborchestration'"),
        (act_done(3, '"a"'), "completion kind mismatch for id=3, expected 'timer', got 'activity'"),
        (act_fail(4, "x"), "completion kind mismatch for id=4, expected 'suborchestration', got 'activity'"),
    ],
    ids=["timer-for-activity", "sub-for-activity", "activity-for-timer", "activity-for-sub"],
)
def test_wrong_kind_completion_fails_nondeterministic(msg, text):
    """§3.3 step 3 / J36: a completion of the wrong kind -> `completion kind mismatch`."""
    r = turn(_wait_all, ALL_SCHEDULED, [msg])
    assert r.kind == "failed"
    assert r.error == ConfigurationErrorDetails(message=text)
    assert r.output == f"nondeterministic: {text}"
    assert [type(e).__name__ for e in r.delta] == ["OrchestrationFailed", "ActivityCancelRequested"]


def test_first_abort_error_wins_and_valid_messages_are_still_recorded():
    """§3.3 steps 3-4: the first abort error wins; valid completions in the batch are recorded."""
    r = turn(_wait_all, ALL_SCHEDULED, [act_done(2, '"a"'), fired(8, 1), act_done(9, '"z"')])
    assert r.kind == "failed"
    assert r.error == ConfigurationErrorDetails(message="no matching schedule for timer id=8")
    assert [type(e).__name__ for e in r.delta] == ["ActivityCompleted", "OrchestrationFailed"]


def test_external_and_queue_events_always_materialized_duplicates_kept():
    """J34 / §3.3 step 4: ExternalRaised / QueueMessage always become events (no subscription
    needed), identical ones are all kept."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    history = [started(), activity_scheduled(2, "A", "1"), external_event(3, "E", '"d"')]
    r = turn(orch, history, [raised("E", '"d"'), raised("E", '"d"'), enqueued("q", '"m"'), enqueued("q", '"m"')])
    assert r.kind == "continue"
    assert list(r.delta) == new(
        external_event(4, "E", '"d"'), external_event(5, "E", '"d"'),
        queue_delivered(6, "q", '"m"'), queue_delivered(7, "q", '"m"'),
    )


# ---------------------------------------------------------------------------------------------
# Item 35 / §3.8: cancellation and precedence
# ---------------------------------------------------------------------------------------------


def _one_activity(ctx, inp):
    return (yield ctx.schedule_activity("A", 1))


def test_cancel_message_cancels_and_beats_completion():
    """J35 / §3.8 rule 1: a cancel request beats the value the code returns in the same turn."""
    history = [started(), activity_scheduled(2, "A", "1")]
    r = turn(_one_activity, history, [act_done(2, '"a"'), cancel("stop")])
    details = ApplicationError(kind="Cancelled", reason="stop", message="")
    assert r.kind == "cancelled"
    assert r.status == "Failed"
    assert r.error == details
    assert r.output == "canceled: stop"
    assert list(r.delta) == new(activity_completed(3, 2, '"a"'), cancel_requested(4, "stop"), failed(5, details))
    assert r.worker_items == () and r.orchestrator_items == () and r.cancelled == ()


def test_cancel_in_history_cancels():
    """J35: a persisted OrchestrationCancelRequested (no terminal yet) -> Cancelled."""
    history = [started(), activity_scheduled(2, "A", "1"), cancel_requested(3, "earlier")]
    r = turn(_one_activity, history)
    details = ApplicationError(kind="Cancelled", reason="earlier", message="")
    assert r.kind == "cancelled"
    assert list(r.delta) == new(
        failed(4, details),
        activity_cancel_requested(5, 2, "orchestration_terminal_failed"),
    )
    assert r.cancelled == (("i", 1, 2),)


def test_duplicate_cancel_is_filtered():
    """J35 / §3.3 step 4: a cancel request already in history, or earlier in the batch, records
    nothing new; the first reason stands."""
    history = [started(), activity_scheduled(2, "A", "1"), cancel_requested(3, "first")]
    r = turn(_one_activity, history, [cancel("second")])
    assert [type(e).__name__ for e in r.delta] == ["OrchestrationFailed", "ActivityCancelRequested"]
    assert r.error.reason == "first"

    r = turn(_one_activity, [started(), activity_scheduled(2, "A", "1")], [cancel("one"), cancel("two")])
    assert [type(e).__name__ for e in r.delta] == ["OrchestrationCancelRequested", "OrchestrationFailed", "ActivityCancelRequested"]
    assert r.delta[0].reason == "one" and r.error.reason == "one"


def test_start_and_cancel_in_one_batch():
    """§11.1: Start + cancel in one batch -> Started, CancelRequested, Failed."""
    r = turn(_one_activity, [], [start_msg(), cancel("early")])
    assert r.kind == "cancelled"
    assert [type(e).__name__ for e in r.delta] == [
        "OrchestrationStarted", "OrchestrationCancelRequested", "ActivityScheduled", "OrchestrationFailed",
        "ActivityCancelRequested",
    ]
    assert [e.event_id for e in r.delta] == [1, 2, 3, 4, 5]
    assert r.worker_items == ()


def test_cancel_beats_continue_as_new():
    """§3.8 rule 1 / §8: a cancel request beats continue-as-new: no ContinueAsNew item."""

    def orch(ctx, inp):
        yield ctx.schedule_timer(5)
        yield ctx.continue_as_new(2)

    history = [started(), timer_created(2, 1005)]
    r = turn(orch, history, [fired(2, 1005), cancel("halt")])
    assert r.kind == "cancelled"
    assert list(r.delta) == new(
        timer_fired(3, 2, 1005), cancel_requested(4, "halt"),
        failed(5, ApplicationError(kind="Cancelled", reason="halt", message="")),
    )
    assert not any(isinstance(i, ContinueAsNew) for i in r.orchestrator_items)


def test_continue_as_new_beats_return_value():
    """§3.8 rule 2 (Python form): returning the CAN task continues as new, it does not complete
    with it as a value."""

    def orch(ctx, inp):
        yield ctx.schedule_timer(5)
        return ctx.continue_as_new(3)

    r = turn(orch, [started(), timer_created(2, 1005)], [fired(2, 1005)])
    assert r.kind == "continued_as_new"
    assert [type(e).__name__ for e in r.delta] == ["TimerFired", "OrchestrationContinuedAsNew"]
    assert r.delta[1].input == "3"
    assert [type(i).__name__ for i in r.orchestrator_items] == ["ContinueAsNew"]


def test_cancelled_turn_cancels_children_and_notifies_parent():
    """§3.9 Cancelled: outstanding children get CancelInstance('parent canceled'), the parent gets
    SubOrchFailed(Cancelled); completed children are left alone."""

    def orch(ctx, inp):
        return (yield ctx.all([ctx.schedule_sub_orchestration("C", 1), ctx.schedule_sub_orchestration_with_id("C", "kid", 2)]))

    history = [
        started(parent_instance="P", parent_id=7, parent_execution_id=3),
        sub_scheduled(2, "C", "1"), sub_scheduled(3, "C", "2", instance="kid"), sub_completed(4, 2, '"done"'),
    ]
    r = turn(orch, history, [cancel("bye")])
    details = ApplicationError(kind="Cancelled", reason="bye", message="")
    assert r.kind == "cancelled"
    assert list(r.delta) == new(cancel_requested(5, "bye"), failed(6, details))
    assert r.orchestrator_items == (
        CancelInstance(instance="kid", reason="parent canceled"),
        SubOrchFailedMsg(parent_instance="P", parent_execution_id=3, parent_id=7, details=details),
    )
    assert r.parent_instance == "P"


def test_cancelled_turn_breadcrumbs_subscriptions_and_activities():
    """§3.9 Cancelled: outstanding subscriptions get `...Cancelled{orchestration_terminal}` before
    the terminal event; open activities get `ActivityCancelRequested{orchestration_terminal_failed}`
    after it and join the cancelled list."""

    def orch(ctx, inp):
        return (yield ctx.all([ctx.wait_for_event("E"), ctx.dequeue_event("q"), ctx.schedule_activity("A", 1)]))

    history = [started(), external_subscribed(2, "E"), queue_subscribed(3, "q"), activity_scheduled(4, "A", "1")]
    r = turn(orch, history, [cancel("c")])
    assert list(r.delta) == new(
        cancel_requested(5, "c"),
        external_cancelled(6, 2, "orchestration_terminal"),
        queue_cancelled(7, 3, "orchestration_terminal"),
        failed(8, ApplicationError(kind="Cancelled", reason="c", message="")),
        activity_cancel_requested(9, 4, "orchestration_terminal_failed"),
    )
    assert r.cancelled == (("i", 1, 4),)
    assert r.worker_items == ()
