"""Result mapping (SPEC §3.9), join/select (§4; §16 J item 38) and dropped-future reconciliation
(§3.10; J item 43)."""

from __future__ import annotations

from duroxide_sim.core.events import (
    ActivityExecute,
    ApplicationError,
    CancelInstance,
    ConfigurationErrorDetails,
    ContinueAsNew,
    StartOrchestration,
    SubOrchCompletedMsg,
    SubOrchFailedMsg,
    TimerFiredMsg,
)
from tests.core.histories import (
    NOW,
    act_done,
    act_fail,
    activity_cancel_requested,
    activity_completed,
    activity_failed,
    activity_scheduled,
    cancel,
    cancel_requested,
    chained,
    completed,
    continued_as_new,
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
    started,
    sub_cancel_requested,
    sub_scheduled,
    timer_created,
    timer_fired,
    turn,
)


def exec_item(id, name, input):
    return ActivityExecute(instance="i", execution_id=1, id=id, name=name, input=input,
                           orchestration_name="O", orchestration_version="1.0.0")


# ---------------------------------------------------------------------------------------------
# §3.9 mapping
# ---------------------------------------------------------------------------------------------


def test_continue_dispatches_every_new_schedule():
    """§3.9 Continue: CallActivity -> ActivityExecute, CreateTimer -> TimerFired at fire_at,
    StartSubOrchestration -> StartOrchestration(child `i::sub::N`, parent link, version),
    detached -> StartOrchestration(id verbatim, no parent)."""

    def orch(ctx, inp):
        yield ctx.start_orchestration_versioned("D", "3.0.0", "det", 0)
        return (yield ctx.all([
            ctx.schedule_activity("A", 1),
            ctx.schedule_timer(250),
            ctx.schedule_sub_orchestration_versioned("C", "2.0.0", 1),
        ]))

    r = turn(orch, [started()])
    assert r.kind == "continue"
    assert list(r.delta) == new(
        chained(2, "D", "det", "0"),
        activity_scheduled(3, "A", "1"),
        timer_created(4, NOW + 250),
        sub_scheduled(5, "C", "1", instance="sub::5"),
    )
    assert r.worker_items == (exec_item(3, "A", "1"),)
    assert r.orchestrator_items == (
        StartOrchestration(instance="det", orchestration="D", input="0", version="3.0.0"),
        TimerFiredMsg(instance="i", execution_id=1, id=4, fire_at_ms=NOW + 250),
        StartOrchestration(instance="i::sub::5", orchestration="C", input="1", version="2.0.0",
                           parent_instance="i", parent_id=5, parent_execution_id=1),
    )
    assert r.cancelled == ()


def test_completed_dispatches_only_detached_starts():
    """§3.9 Completed: only pending detached starts are dispatched; an activity and a timer first
    scheduled in the final turn stay history-only (the dropped activity gets its breadcrumb and
    worker-row deletion)."""

    def orch(ctx, inp):
        yield ctx.start_orchestration("D", "det", 1)
        won = yield ctx.select3(ctx.dequeue_event("q"), ctx.schedule_activity("A", 1), ctx.schedule_timer(100))
        return [won.index(), won.value]

    r = turn(orch, [started()], [enqueued("q", '"m"')])
    assert r.kind == "completed"
    assert r.output == '[0, "m"]'
    assert list(r.delta) == new(
        queue_delivered(2, "q", '"m"'),
        chained(3, "D", "det", "1"),
        queue_subscribed(4, "q"),
        activity_scheduled(5, "A", "1"),
        timer_created(6, NOW + 100),
        activity_cancel_requested(7, 5, "dropped_future"),
        completed(8, '[0, "m"]'),
    )
    assert r.worker_items == ()
    assert r.orchestrator_items == (StartOrchestration(instance="det", orchestration="D", input="1"),)
    assert r.cancelled == (("i", 1, 5),)


def test_failed_dispatches_detached_starts_and_notifies_parent():
    """§3.9 Failed: pending detached starts are dispatched; the terminal event is followed by
    SubOrchFailed to a linked parent."""

    def orch(ctx, inp):
        yield ctx.start_orchestration("D", "det", 1)
        raise ValueError("nope")

    r = turn(orch, [started(parent_instance="P", parent_id=4, parent_execution_id=2)])
    assert r.kind == "failed"
    assert [type(e).__name__ for e in r.delta] == ["OrchestrationChained", "OrchestrationFailed"]
    assert r.orchestrator_items == (
        StartOrchestration(instance="det", orchestration="D", input="1"),
        SubOrchFailedMsg(parent_instance="P", parent_execution_id=2, parent_id=4, details=r.error),
    )


def test_completed_child_notifies_parent():
    """§3.9 Completed / §7: a linked child sends SubOrchCompleted(result) to its parent."""

    def orch(ctx, inp):
        return (yield ctx.schedule_activity("A", 1))

    history = [started(parent_instance="P", parent_id=4, parent_execution_id=2), activity_scheduled(2, "A", "1")]
    r = turn(orch, history, [act_done(2, '"r"')])
    assert r.kind == "completed"
    assert r.orchestrator_items == (SubOrchCompletedMsg(parent_instance="P", parent_execution_id=2, parent_id=4, result='"r"'),)
    assert r.parent_instance == "P"


def test_terminal_activity_breadcrumbs_follow_the_terminal_event():
    """§3.1 step 9 / §3.9: on Completed, every activity scheduled but not completed/failed (here:
    one a newer code version no longer reaches) gets `ActivityCancelRequested{orchestration_terminal_completed}` after the
    terminal event and joins the cancelled list."""

    def orch(ctx, inp):
        a = yield ctx.schedule_activity("A", 1)
        return a  # version 2 no longer waits for B

    history = [
        started(),
        activity_scheduled(2, "A", "1"), activity_completed(3, 2, '"a"'),
        activity_scheduled(4, "B", "1"),
        activity_scheduled(5, "C", "1"), activity_failed(6, 5, "x"),
    ]
    r = turn(orch, history)
    assert r.kind == "completed"
    assert list(r.delta) == new(
        completed(7, '"a"'),
        activity_cancel_requested(8, 4, "orchestration_terminal_completed"),
    )
    assert r.cancelled == (("i", 1, 4),)


def test_continue_as_new_does_not_dispatch_detached_starts():
    """§3.9 ContinueAsNew: OrchestrationContinuedAsNew + the ContinueAsNew item; ⚠ pending detached
    starts are not dispatched."""

    def orch(ctx, inp):
        yield ctx.start_orchestration("D", "det", 1)
        yield ctx.continue_as_new("next")

    r = turn(orch, [started()])
    assert r.kind == "continued_as_new"
    assert list(r.delta) == new(chained(2, "D", "det", "1"), continued_as_new(3, '"next"'))
    assert r.orchestrator_items == (
        ContinueAsNew(instance="i", orchestration="O", input='"next"', carry_forward_events=(), execution_id=1),
    )
    assert r.worker_items == () and r.cancelled == ()


# ---------------------------------------------------------------------------------------------
# Item 38: join / select
# ---------------------------------------------------------------------------------------------


def _race_ab(ctx, inp):
    return (yield ctx.race(ctx.schedule_activity("A", 1), ctx.schedule_activity("B", 1)))


RACE_AB = [started(), activity_scheduled(2, "A", "1"), activity_scheduled(3, "B", "1")]


def test_select_winner_is_first_completion_in_history():
    """J38 / §4: the winner is the child whose completion comes first in history, not the first
    argument."""
    r = turn(_race_ab, RACE_AB + [activity_completed(4, 3, '"b"')])
    assert r.kind == "completed"
    assert r.output == '{"index": 1, "value": "b"}'
    assert list(r.delta) == new(activity_cancel_requested(5, 2, "dropped_future"), completed(6, r.output))
    assert r.cancelled == (("i", 1, 2),)


def test_select_winner_with_both_completions_in_one_batch():
    """J38: both completions arrive in one batch -> the first one in the batch wins."""
    r = turn(_race_ab, RACE_AB, [act_done(3, '"b"'), act_done(2, '"a"')])
    assert r.output == '{"index": 1, "value": "b"}'
    r = turn(_race_ab, RACE_AB, [act_done(2, '"a"'), act_done(3, '"b"')])
    assert r.output == '{"index": 0, "value": "a"}'


def test_select_both_pending_continues():
    """J38: select with both children pending -> Continue, nothing new."""
    r = turn(_race_ab, RACE_AB)
    assert r.kind == "continue"
    assert r.delta == () and r.worker_items == () and r.cancelled == ()


def test_select_first_turn_emits_both_children_in_argument_order():
    """§4: all select children are polled (emitting actions) in argument order."""
    r = turn(_race_ab, [started()])
    assert list(r.delta) == new(activity_scheduled(2, "A", "1"), activity_scheduled(3, "B", "1"))
    assert r.worker_items == (exec_item(2, "A", "1"), exec_item(3, "B", "1"))


def test_select_failing_winner_error_text_arrives_as_value():
    """J38 / §17 ⚠: a failing race winner's error text arrives as `value`, no error flag."""
    r = turn(_race_ab, RACE_AB, [act_fail(2, "bad thing")])
    assert r.kind == "completed"
    assert r.output == '{"index": 0, "value": "bad thing"}'


def test_select2_either_form():
    """§17 Rust names: select2 returns Either2 with index() / value."""

    def orch(ctx, inp):
        e = yield ctx.select2(ctx.schedule_timer(10), ctx.wait_for_event("E"))
        return [e.index(), e.value, e.is_second]

    history = [started(), timer_created(2, 1010), external_subscribed(3, "E")]
    r = turn(orch, history, [raised("E", '{"k": 1}')])
    assert r.output == '[1, {"k": 1}, true]'
    assert list(r.delta) == new(external_event(4, "E", '{"k": 1}'), completed(5, r.output))  # losing timer: nothing


def test_join_returns_all_results_in_list_order_with_err_entries():
    """J38 / §4: join waits for all; results in list order; failures are Err entries."""

    def orch(ctx, inp):
        return (yield ctx.all([ctx.schedule_activity("A", 1), ctx.schedule_activity("B", 1), ctx.schedule_timer(5)]))

    history = RACE_AB + [timer_created(4, 1005), activity_failed(5, 3, "b broke"), timer_fired(6, 4, 1005)]
    r = turn(orch, history)
    assert r.kind == "continue" and r.delta == ()
    r = turn(orch, history, [act_done(2, '"a"')])
    assert r.kind == "completed"
    assert r.output == '[{"ok": "a"}, {"err": "b broke"}, {"ok": null}]'


# ---------------------------------------------------------------------------------------------
# §3.10 / item 43: dropped futures
# ---------------------------------------------------------------------------------------------


def _race_then_b(ctx, inp):
    won = yield ctx.race(ctx.schedule_activity("A", 1), ctx.schedule_timer(10))
    b = yield ctx.schedule_activity("B", won["index"])
    return b


RACE_AT = [started(), activity_scheduled(2, "A", "1"), timer_created(3, 1010)]


def test_race_loser_activity_gets_breadcrumb_and_cancellation_once():
    """§3.10 / J43: a race-loser activity -> ActivityCancelRequested{dropped_future} (after the
    turn's new schedules) + one cancelled entry; the winner's follow-up is dispatched."""
    r = turn(_race_then_b, RACE_AT, [fired(3, 1010)])
    assert r.kind == "continue"
    assert list(r.delta) == new(
        timer_fired(4, 3, 1010),
        activity_scheduled(5, "B", "1"),
        activity_cancel_requested(6, 2, "dropped_future"),
    )
    assert r.worker_items == (exec_item(5, "B", "1"),)
    assert r.cancelled == (("i", 1, 2),)
    assert r.orchestrator_items == ()


def test_replay_with_persisted_breadcrumb_adds_nothing():
    """§3.10 / J43: replaying a persisted dropped_future breadcrumb writes no second one and has
    no side effects; a late completion of the cancelled activity is tolerated."""
    history = RACE_AT + [
        timer_fired(4, 3, 1010), activity_scheduled(5, "B", "1"), activity_cancel_requested(6, 2, "dropped_future"),
    ]
    r = turn(_race_then_b, history)
    assert r.kind == "continue" and r.delta == () and r.cancelled == ()

    r = turn(_race_then_b, history, [act_done(2, '"late"'), act_done(5, '"b"')])
    assert r.kind == "completed"
    assert r.output == '"b"'
    assert list(r.delta) == new(activity_completed(7, 2, '"late"'), activity_completed(8, 5, '"b"'), completed(9, '"b"'))
    assert r.cancelled == ()


def test_breadcrumb_the_code_no_longer_drops_is_cancellation_mismatch():
    """§3.10 step 1 / J43: persisted dropped_future breadcrumbs must be a subset of what the code
    drops now -> else `cancellation mismatch (activities)`."""

    def orch(ctx, inp):  # version 2 joins instead of racing: nothing is dropped
        return (yield ctx.all([ctx.schedule_activity("A", 1), ctx.schedule_timer(10)]))

    history = RACE_AT + [timer_fired(4, 3, 1010), activity_cancel_requested(5, 2, "dropped_future")]
    r = turn(orch, history)
    assert r.kind == "failed"
    assert isinstance(r.error, ConfigurationErrorDetails)
    assert r.error.message.startswith("cancellation mismatch (activities):")
    assert r.output.startswith("nondeterministic: cancellation mismatch (activities):")


def test_code_dropping_more_than_history_is_accepted():
    """§3.10 step 1: B ⊆ C passes; only the newly dropped id gets a breadcrumb."""

    def orch(ctx, inp):
        first = yield ctx.race(ctx.schedule_activity("A", 1), ctx.schedule_timer(10))
        second = yield ctx.race(ctx.schedule_activity("A2", 1), ctx.schedule_timer(10))
        return [first["index"], second["index"]]

    history = RACE_AT + [
        timer_fired(4, 3, 1010), activity_cancel_requested(5, 2, "dropped_future"),
        activity_scheduled(6, "A2", "1"), timer_created(7, 1010), timer_fired(8, 7, 1010),
    ]
    r = turn(orch, history)
    assert r.kind == "completed"
    assert list(r.delta) == new(activity_cancel_requested(9, 6, "dropped_future"), completed(10, "[1, 1]"))
    assert r.cancelled == (("i", 1, 6),)


def test_dropped_sub_orchestration_cancels_the_child():
    """§3.10 step 2 / §4: a dropped child -> SubOrchestrationCancelRequested{dropped_future} and
    CancelInstance('parent dropped sub-orchestration future') to the full child id."""

    def orch(ctx, inp):
        won = yield ctx.race(ctx.schedule_sub_orchestration("C", 1), ctx.schedule_timer(10))
        return won["index"]

    history = [started(), sub_scheduled(2, "C", "1"), timer_created(3, 1010)]
    r = turn(orch, history, [fired(3, 1010)])
    assert r.kind == "completed"
    assert list(r.delta) == new(timer_fired(4, 3, 1010), sub_cancel_requested(5, 2, "dropped_future"), completed(6, "1"))
    assert r.orchestrator_items == (CancelInstance(instance="i::sub::2", reason="parent dropped sub-orchestration future"),)
    assert r.cancelled == ()


def test_dropped_waits_get_subscription_breadcrumbs():
    """§3.10 step 2 / §4: dropped positional and queue waits -> ExternalSubscribedCancelled /
    QueueSubscriptionCancelled {dropped_future}; no other side effects."""

    def orch(ctx, inp):
        a = yield ctx.race(ctx.wait_for_event("E"), ctx.schedule_timer(10))
        b = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
        return [a["index"], b["index"]]

    history = [started(), external_subscribed(2, "E"), timer_created(3, 1010)]
    r = turn(orch, history, [fired(3, 1010)])
    assert r.kind == "continue"
    assert list(r.delta) == new(
        timer_fired(4, 3, 1010), queue_subscribed(5, "q"), timer_created(6, NOW + 10),
        external_cancelled(7, 2, "dropped_future"),
    )
    history += r.delta
    r = turn(orch, history, [fired(6, NOW + 10)])
    assert r.kind == "completed"
    assert list(r.delta) == new(timer_fired(8, 6, NOW + 10), queue_cancelled(9, 5, "dropped_future"), completed(10, "[1, 1]"))
    assert r.orchestrator_items == () and r.cancelled == ()


def test_dropped_timer_gets_nothing_and_fires_harmlessly():
    """§3.10 step 2: timers get no breadcrumb; their later TimerFired is recorded harmlessly."""

    def orch(ctx, inp):
        won = yield ctx.race(ctx.schedule_timer(10), ctx.schedule_activity("A", 1))
        yield ctx.schedule_activity("B", won["value"])
        return "done"

    history = [started(), timer_created(2, 1010), activity_scheduled(3, "A", "1")]
    r = turn(orch, history, [act_done(3, '"a"')])
    assert list(r.delta) == new(activity_completed(4, 3, '"a"'), activity_scheduled(5, "B", '"a"'))
    history += r.delta
    r = turn(orch, history, [fired(2, 1010)])
    assert r.kind == "continue"
    assert list(r.delta) == new(timer_fired(6, 2, 1010))
    assert r.worker_items == () and r.cancelled == ()


def test_cancelled_turn_skips_dropped_future_reconciliation():
    """§3.8 rule 1: on a Cancelled turn dropped-future reconciliation is skipped; the loser gets
    the terminal breadcrumb instead."""
    r = turn(_race_then_b, RACE_AT, [fired(3, 1010), cancel("x")])
    assert r.kind == "cancelled"
    assert list(r.delta) == new(
        timer_fired(4, 3, 1010),
        cancel_requested(5, "x"),
        activity_scheduled(6, "B", "1"),
        failed(7, ApplicationError(kind="Cancelled", reason="x", message="")),
        activity_cancel_requested(8, 2, "orchestration_terminal_failed"),
        activity_cancel_requested(9, 6, "orchestration_terminal_failed"),
    )
    assert r.cancelled == (("i", 1, 2), ("i", 1, 6))
    assert r.worker_items == ()
