"""Scenarios from the reference's behavioural suites (cancellation corner cases, continue-as-new,
errors, timers, system calls, event queues), written fresh against duroxide_sim.

The first group pins what SPEC §3.8/§3.10 say about a turn that ends in continue-as-new: it is
finalization case 2, so dropped-future reconciliation (which writes ``dropped_future``
breadcrumbs and their side effects) does not run. A race loser dropped in that turn is closed
like any other still-open schedule of an ending execution (§3.1 step 9, §3.9): subscriptions
get ``orchestration_terminal`` before ``OrchestrationContinuedAsNew``, activities get
``orchestration_terminal_continued_as_new`` after it, and children are left alone.

The rest are passing checks of scenarios the suite did not cover in this form.
"""

from __future__ import annotations

import pytest

from duroxide_sim import RuntimeOptions
from duroxide_sim.core.events import ActivityCompletedMsg

from tests.conftest import make_world

from ._helpers import events_of, kinds


def _cancel_reasons(world, instance, kind, source_id, execution_id=1):
    return [e["data"].get("reason") for e in events_of(world, instance, kind, execution_id) if e["source_event_id"] == source_id]


def _index_of(world, instance, kind, execution_id=1):
    """Position of the first event of ``kind`` in the execution's history."""
    return kinds(world, instance, execution_id).index(kind)


def _open_race_then_fire_timer(world, instance):
    """Run the first turn (the race is scheduled), then let the 10 ms timer come due."""
    world.run_for(1)
    world.clock.advance(20)


# ---------------------------------------------------------------------------------------------
# continue-as-new turns do not reconcile dropped futures (SPEC §3.8 case 2, §3.10)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cache", [True, False], ids=["warm", "cold"])
def test_queue_race_loser_in_continue_as_new_turn_gets_terminal_breadcrumb_not_dropped_future(cache):
    """Reference: cancellation_corner_cases::ms4_sqlite_continue_as_new_preserves_unconsumed_queue_messages
    (asserts "continue-as-new writes no dropped_future rows").

    A dequeue loses a race to a timer and the code continues-as-new in the same turn. SPEC §3.8:
    a pending ContinueAsNew is finalization case 2; §3.10 reconciliation (the `dropped_future`
    breadcrumbs) runs only for cases 3-4. §3.9 ContinueAsNew: unmatched queue arrivals are
    collected, then the still-open subscription is closed like on any terminal turn
    (`QueueSubscriptionCancelled{orchestration_terminal}`), then OrchestrationContinuedAsNew. The
    message the loser never read is carried into execution 2 (§6.2)."""
    world = make_world(None if cache else RuntimeOptions(instance_cache_size=0))

    @world.runtime.register_orchestration("Mailbox")
    def mailbox(ctx, _):
        if ctx.execution_id == 1:
            yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
            yield ctx.continue_as_new("successor")
        return (yield ctx.dequeue_event("q"))

    world.client.start_orchestration("mb", "Mailbox")
    _open_race_then_fire_timer(world, "mb")
    world.client.enqueue_event("mb", "q", "m1")
    world.run()

    st = world.result("mb")
    assert (st.status, st.output) == ("Completed", "m1")
    sub_id = events_of(world, "mb", "QueueSubscribed")[0]["event_id"]
    reasons = _cancel_reasons(world, "mb", "QueueSubscriptionCancelled", sub_id)
    assert "dropped_future" not in reasons, kinds(world, "mb")
    assert reasons == ["orchestration_terminal"]
    assert _index_of(world, "mb", "QueueSubscriptionCancelled") < _index_of(world, "mb", "OrchestrationContinuedAsNew")


def test_positional_race_loser_in_continue_as_new_turn_gets_terminal_breadcrumb_not_dropped_future():
    """Reference: cancellation_corner_cases::positional_drop_before_continue_as_new_replays_for_both_policies
    (asserts "continue-as-new writes no dropped_future rows").

    A wait_for_event loses a race to a timer and the code continues-as-new in that turn. SPEC §3.8
    case 2 / §3.10: no `ExternalSubscribedCancelled{dropped_future}`; §3.9: the open wait is
    closed with `orchestration_terminal` before OrchestrationContinuedAsNew."""
    world = make_world()

    @world.runtime.register_orchestration("Waiter")
    def waiter(ctx, _):
        if ctx.execution_id == 1:
            yield ctx.race(ctx.wait_for_event("s"), ctx.schedule_timer(10))
            yield ctx.continue_as_new("next")
        return "second-execution"

    world.client.start_orchestration("w", "Waiter")
    _open_race_then_fire_timer(world, "w")
    world.run()

    assert world.result("w").output == "second-execution"
    sub_id = events_of(world, "w", "ExternalSubscribed")[0]["event_id"]
    reasons = _cancel_reasons(world, "w", "ExternalSubscribedCancelled", sub_id)
    assert "dropped_future" not in reasons, kinds(world, "w")
    assert reasons == ["orchestration_terminal"]


@pytest.mark.parametrize("cache", [True, False], ids=["warm", "cold"])
def test_activity_race_loser_in_continue_as_new_turn_is_cancelled_as_terminal_not_dropped(cache):
    """Reference: cancellation_corner_cases::continue_as_new_writes_no_drop_cancellations_or_child_side_effects.

    An activity loses a race to a timer (no worker runs it) and the code continues-as-new in the
    same turn. SPEC §3.8 case 2 / §3.10: no `ActivityCancelRequested{dropped_future}`. §3.1 step 9
    / §8: the execution ends ContinuedAsNew, so the still-open activity gets
    `ActivityCancelRequested{orchestration_terminal_continued_as_new}`, appended after
    OrchestrationContinuedAsNew (⚠ order kept), and its worker row is deleted."""
    options = dict(worker_concurrency=0)
    if not cache:
        options["instance_cache_size"] = 0
    world = make_world(RuntimeOptions(**options))

    @world.runtime.register_activity("Slow")
    def slow(ctx, _):
        return "late"

    @world.runtime.register_orchestration("Racer")
    def racer(ctx, _):
        if ctx.execution_id == 1:
            yield ctx.race(ctx.schedule_activity("Slow", ""), ctx.schedule_timer(10))
            yield ctx.continue_as_new("next")
        return "second-execution"

    world.client.start_orchestration("r", "Racer")
    _open_race_then_fire_timer(world, "r")
    world.run()

    assert world.result("r").output == "second-execution"
    act_id = events_of(world, "r", "ActivityScheduled")[0]["event_id"]
    reasons = _cancel_reasons(world, "r", "ActivityCancelRequested", act_id)
    assert reasons == ["orchestration_terminal_continued_as_new"], kinds(world, "r")
    assert kinds(world, "r")[-2:] == ["OrchestrationContinuedAsNew", "ActivityCancelRequested"]
    assert world.client.get_queue_depths().worker_queue == 0


def test_sub_orchestration_race_loser_in_continue_as_new_turn_is_not_cancelled():
    """Reference: cancellation_corner_cases::continue_as_new_writes_no_drop_cancellations_or_child_side_effects
    (no SubOrchestrationCancelRequested, no child side effects on a continue-as-new turn).

    A child loses a race to a timer and the parent continues-as-new in the same turn. SPEC §3.10
    (reconciliation only for finalization cases 3-4) and §3.9 ContinueAsNew (no CancelInstance to
    children; only the Cancelled result cancels outstanding children): the parent writes no
    `SubOrchestrationCancelRequested{dropped_future}` and the child keeps running."""
    world = make_world()

    @world.runtime.register_orchestration("Child")
    def child(ctx, _):
        return (yield ctx.wait_for_event("never"))

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        if ctx.execution_id == 1:
            yield ctx.race(ctx.schedule_sub_orchestration("Child", ""), ctx.schedule_timer(10))
            yield ctx.continue_as_new("next")
        return "second-execution"

    world.client.start_orchestration("p", "Parent")
    _open_race_then_fire_timer(world, "p")
    world.run()

    assert world.result("p").output == "second-execution"
    assert "SubOrchestrationCancelRequested" not in kinds(world, "p"), kinds(world, "p")
    child_id = "p::" + events_of(world, "p", "SubOrchestrationScheduled")[0]["data"]["instance"]
    st = world.client.get_status(child_id)
    assert st.status == "Running", (st.status, st.error)


# ---------------------------------------------------------------------------------------------
# passing scenarios not covered elsewhere in this form
# ---------------------------------------------------------------------------------------------


def test_unread_queue_messages_carry_across_two_continue_as_new():
    """Reference: cancellation_corner_cases::sqlite_unread_messages_carry_across_two_continue_as_new_for_both_policies.

    Three messages arrive with the start; each execution reads one and continues-as-new. SPEC §6.2:
    per name the first k arrivals are consumed (k = active subscriptions), the rest are carried
    forward as the next execution's first QueueEventDelivered events, again at the next CAN."""
    world = make_world()

    @world.runtime.register_orchestration("Reader")
    def reader(ctx, seen):
        got = yield ctx.dequeue_event("q")
        seen = got if ctx.execution_id == 1 else f"{seen},{got}"
        if ctx.execution_id < 3:
            yield ctx.continue_as_new(seen)
        return seen

    world.client.start_orchestration("rd", "Reader")
    for m in ("a", "b", "c"):
        world.client.enqueue_event("rd", "q", m)
    st = world.result("rd")
    assert (st.status, st.output) == ("Completed", "a,b,c")
    assert world.client.list_executions("rd") == [1, 2, 3]
    assert kinds(world, "rd", 3)[:2] == ["OrchestrationStarted", "QueueEventDelivered"]


@pytest.mark.parametrize("cache", [True, False], ids=["warm", "cold"])
def test_select3_of_two_dequeues_keeps_second_message_for_next_dequeue(cache):
    """Reference: cancellation_corner_cases::q2_first_dequeue_wins_dropped_sibling_preserves_second_message.

    select3(dequeue q, dequeue q, timer) with "first" and "second" arriving in one batch: the first
    dequeue wins with "first", its dropped sibling consumes nothing (SPEC §4, §6.2) and the next
    dequeue reads "second", the same on a cold replay."""
    world = make_world(None if cache else RuntimeOptions(instance_cache_size=0))

    @world.runtime.register_orchestration("Fifo")
    def fifo(ctx, _):
        won = yield ctx.select3(ctx.dequeue_event("q"), ctx.dequeue_event("q"), ctx.schedule_timer(60_000))
        nxt = yield ctx.dequeue_event("q")
        return [won.index(), won.into_tuple()[1], nxt]

    world.client.start_orchestration("f", "Fifo")
    world.run_for(1)
    world.client.enqueue_event("f", "q", "first")
    world.client.enqueue_event("f", "q", "second")
    world.run_for(1)
    st = world.client.get_status("f")
    assert (st.status, st.output) == ("Completed", [0, "first", "second"])
    assert [e["data"]["reason"] for e in events_of(world, "f", "QueueSubscriptionCancelled")] == ["dropped_future"]


def test_completions_for_other_executions_are_dropped_silently(world):
    """Reference: continue_as_new_tests::old_execution_completions_are_ignored /
    future_execution_completions_are_ignored.

    An ActivityCompleted for execution 0 or 999 while execution 1 runs is dropped by the execution
    filter (SPEC §3.3 step 1, §3.12): no history change, the instance keeps running."""

    @world.runtime.register_orchestration("Waits")
    def waits(ctx, _):
        yield ctx.wait_for_event("go")
        return "done"

    world.client.start_orchestration("x", "Waits")
    world.run()
    before = kinds(world, "x")
    for execution_id, activity_id in ((0, 999), (999, 1)):
        world.provider.enqueue_for_orchestrator(
            ActivityCompletedMsg(instance="x", execution_id=execution_id, id=activity_id, result="stale")
        )
        world.run()
    assert kinds(world, "x") == before
    world.client.raise_event("x", "go", "1")
    assert world.result("x").output == "done"
