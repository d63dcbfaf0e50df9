"""External events (SPEC §6.1), event queues (§6.2) and continue-as-new (§8)."""

from __future__ import annotations

import json
import logging

from duroxide_sim.core.events import ContinueAsNew, OrchestrationStarted
from duroxide_sim.core.registry import Registry
from tests.core.histories import (
    NOW,
    act_done,
    can_msg,
    completed,
    continued_as_new,
    custom_status,
    enqueued,
    external_cancelled,
    external_event,
    external_subscribed,
    fired,
    new,
    queue_delivered,
    queue_subscribed,
    raised,
    started,
    timer_created,
    timer_fired,
    turn,
)


# ---------------------------------------------------------------------------------------------
# §6.1 positional events
# ---------------------------------------------------------------------------------------------


def _wait_e(ctx, inp):
    return (yield ctx.wait_for_event("E"))


def test_event_in_same_batch_as_first_subscription_is_audit_only():
    """§6.1: an event raised before the subscription is persisted (here: in the batch of the turn
    that first subscribes) is recorded but never delivered."""
    r = turn(_wait_e, [started()], [raised("E", '"early"')])
    assert r.kind == "continue"
    assert list(r.delta) == new(external_event(2, "E", '"early"'), external_subscribed(3, "E"))

    history = [started()] + list(r.delta)
    assert turn(_wait_e, history).delta == ()  # stays audit-only on replay
    r = turn(_wait_e, history, [raised("E", '"late"')])
    assert r.kind == "completed"
    assert r.output == '"late"'
    assert list(r.delta) == new(external_event(4, "E", '"late"'), completed(5, '"late"'))


def test_event_persisted_before_subscription_is_never_delivered():
    """§6.1: an arrival joins the name's list only if active subscriptions outnumber delivered
    arrivals at its position in history."""
    history = [started(), external_event(2, "E", '"early"'), external_subscribed(3, "E")]
    r = turn(_wait_e, history)
    assert r.kind == "continue" and r.delta == ()


def test_two_waits_on_one_name_match_first_to_first():
    """§6.1: multiple waits on a name resolve first-to-first; identical payloads are distinct
    arrivals."""

    def orch(ctx, inp):
        return (yield ctx.all([ctx.wait_for_event("E"), ctx.wait_for_event("E"), ctx.wait_for_event("E")]))

    history = [started(), external_subscribed(2, "E"), external_subscribed(3, "E"), external_subscribed(4, "E")]
    r = turn(orch, history, [raised("E", '"one"'), raised("E", '"two"'), raised("E", '"two"')])
    assert r.kind == "completed"
    assert r.output == '[{"ok": "one"}, {"ok": "two"}, {"ok": "two"}]'


def test_sequential_waits_on_one_name():
    """§6.1: sequential waits each take the next arrival."""

    def orch(ctx, inp):
        a = yield ctx.wait_for_event("E")
        b = yield ctx.wait_for_event("E")
        return [a, b]

    history = [started(), external_subscribed(2, "E"), external_event(3, "E", "1"), external_subscribed(4, "E")]
    r = turn(orch, history, [raised("E", "2")])
    assert r.output == "[1, 2]"


def _race_then_wait(ctx, inp):
    won = yield ctx.race(ctx.wait_for_event("E"), ctx.schedule_timer(10))
    return [won["index"], (yield ctx.wait_for_event("E"))]


RACED = [started(), external_subscribed(2, "E"), timer_created(3, 1010), timer_fired(4, 3, 1010),
         external_cancelled(5, 2, "dropped_future"), external_subscribed(6, "E")]


def test_cancelled_subscription_consumes_nothing():
    """§6.1 / §4: a cancelled (dropped) subscription never resolves or consumes; the next arrival
    goes to the next active subscription."""
    r = turn(_race_then_wait, RACED, [raised("E", '"v"')])
    assert r.kind == "completed"
    assert r.output == '[1, "v"]'
    assert list(r.delta) == new(external_event(7, "E", '"v"'), completed(8, r.output))


def test_arrival_while_only_subscription_is_cancelled_is_lost():
    """§6.1: an arrival while every subscription of the name is cancelled is audit-only forever,
    even once a new subscription exists."""
    history = RACED[:5] + [external_event(6, "E", '"lost"'), external_subscribed(7, "E")]
    r = turn(_race_then_wait, history)
    assert r.kind == "continue" and r.delta == ()
    r = turn(_race_then_wait, history, [raised("E", '"kept"')])
    assert r.output == '[1, "kept"]'


# ---------------------------------------------------------------------------------------------
# §6.2 queues
# ---------------------------------------------------------------------------------------------


def _dequeue_q(ctx, inp):
    return (yield ctx.dequeue_event("q"))


def test_queue_message_buffered_before_subscription_resolves_it():
    """§6.2: every QueueEventDelivered is buffered regardless of subscriptions; a later
    subscription (same turn) takes it."""
    r = turn(_dequeue_q, [started()], [enqueued("q", '"m"')])
    assert r.kind == "completed"
    assert r.output == '"m"'
    assert list(r.delta) == new(queue_delivered(2, "q", '"m"'), queue_subscribed(3, "q"), completed(4, '"m"'))


def test_persisted_buffered_message_resolves_new_subscription():
    """§6.2: a message persisted in an earlier turn (before any subscription) is not lost."""

    def orch(ctx, inp):
        yield ctx.schedule_timer(5)
        return (yield ctx.dequeue_event("q"))

    history = [started(), timer_created(2, 1005), queue_delivered(3, "q", '"m"')]
    r = turn(orch, history, [fired(2, 1005)])
    assert r.kind == "completed" and r.output == '"m"'
    assert list(r.delta) == new(timer_fired(4, 2, 1005), queue_subscribed(5, "q"), completed(6, '"m"'))


def test_several_buffered_messages_drain_in_one_turn():
    """§6.2 / §3.7: `while: yield dequeue_event(q)` drains several buffered messages in ONE turn
    through the quiescence loop."""

    def orch(ctx, inp):
        got = []
        while True:
            item = yield ctx.dequeue_event("q")
            if item == "stop":
                return got
            got.append(item)

    msgs = [enqueued("q", '"a"'), enqueued("other", '"x"'), enqueued("q", '"b"'), enqueued("q", '"c"'), enqueued("q", '"stop"')]
    r = turn(orch, [started()], msgs)
    assert r.kind == "completed"
    assert r.output == '["a", "b", "c"]'
    assert list(r.delta) == new(
        queue_delivered(2, "q", '"a"'), queue_delivered(3, "other", '"x"'), queue_delivered(4, "q", '"b"'),
        queue_delivered(5, "q", '"c"'), queue_delivered(6, "q", '"stop"'),
        queue_subscribed(7, "q"), queue_subscribed(8, "q"), queue_subscribed(9, "q"), queue_subscribed(10, "q"),
        completed(11, '["a", "b", "c"]'),
    )


def test_partial_drain_leaves_subscription_pending():
    """§6.2: after draining the buffer the next subscription waits for a future message."""

    def orch(ctx, inp):
        a = yield ctx.dequeue_event("q")
        b = yield ctx.dequeue_event("q")
        return [a, b]

    r = turn(orch, [started()], [enqueued("q", "1")])
    assert r.kind == "continue"
    assert list(r.delta) == new(queue_delivered(2, "q", "1"), queue_subscribed(3, "q"), queue_subscribed(4, "q"))
    r = turn(orch, [started()] + list(r.delta), [enqueued("q", "2")])
    assert r.output == "[1, 2]"


def _take_one_then_can(ctx, inp):
    x = yield ctx.dequeue_event("q")
    yield ctx.continue_as_new(x)


def test_continue_as_new_carries_unconsumed_queue_messages():
    """§6.2 / §3.9 ContinueAsNew: per name the first k arrivals (k = active subscriptions) are
    consumed; the rest, in global history order, are carried forward."""
    msgs = [enqueued("q", '"a"'), enqueued("r", '"z"'), enqueued("q", '"b"'), enqueued("q", '"c"')]
    r = turn(_take_one_then_can, [started()], msgs)
    assert r.kind == "continued_as_new"
    assert r.output == '"a"'
    assert list(r.delta) == new(
        queue_delivered(2, "q", '"a"'), queue_delivered(3, "r", '"z"'), queue_delivered(4, "q", '"b"'),
        queue_delivered(5, "q", '"c"'), queue_subscribed(6, "q"), continued_as_new(7, '"a"'),
    )
    assert r.orchestrator_items == (
        ContinueAsNew(instance="i", orchestration="O", input='"a"', version=None,
                      carry_forward_events=(("r", '"z"'), ("q", '"b"'), ("q", '"c"')),
                      initial_custom_status=None, execution_id=1),
    )


def test_carry_forward_is_capped_at_20_with_a_warning():
    """§6.2 / §10.3: at most 20 messages are carried; the overflow is dropped with a warning."""
    msgs = [enqueued("q", json.dumps(f"m{n}")) for n in range(25)]
    r = turn(_take_one_then_can, [started()], msgs)
    assert r.kind == "continued_as_new"
    (item,) = r.orchestrator_items
    assert item.carry_forward_events == tuple(("q", json.dumps(f"m{n}")) for n in range(1, 21))
    warnings = [m for lvl, m in r.logs if lvl == logging.WARNING]
    assert len(warnings) == 1 and "4" in warnings[0]


def test_cancelled_queue_subscription_consumes_nothing_on_continue_as_new():
    """§6.2: a cancelled (dropped) queue subscription does not consume; its message is carried."""

    def orch(ctx, inp):
        yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
        yield ctx.continue_as_new(None)

    history = [started(), queue_subscribed(2, "q"), timer_created(3, 1010)]
    r = turn(orch, history, [fired(3, 1010), enqueued("q", '"keep"')])
    assert r.kind == "continued_as_new"
    assert [type(e).__name__ for e in r.delta] == [
        "TimerFired", "QueueEventDelivered", "QueueSubscriptionCancelled", "OrchestrationContinuedAsNew",
    ]
    assert r.orchestrator_items[0].carry_forward_events == (("q", '"keep"'),)


# ---------------------------------------------------------------------------------------------
# §8 continue-as-new
# ---------------------------------------------------------------------------------------------


def test_continue_as_new_item_carries_last_custom_status():
    """§8 / §3.9: the ContinueAsNew item carries initial_custom_status = the last value, whether set
    this execution or inherited from the Started event."""

    def setter(ctx, inp):
        ctx.set_custom_status("first")
        ctx.set_custom_status({"phase": 2})
        yield ctx.continue_as_new(inp)

    r = turn(setter, [started()])
    assert list(r.delta) == new(custom_status(2, "first"), custom_status(3, '{"phase": 2}'), continued_as_new(4, '"x"'))
    assert r.orchestrator_items[0].initial_custom_status == '{"phase": 2}'

    def inheritor(ctx, inp):
        yield ctx.continue_as_new(inp)

    r = turn(inheritor, [started(initial_custom_status="inherited")])
    assert r.orchestrator_items[0].initial_custom_status == "inherited"


def test_new_execution_from_continue_as_new_message():
    """§8 / §3.1 steps 4 and 6 / §3.2: processing a ContinueAsNew item starts execution_id + 1 with
    an OrchestrationStarted carrying carry_forward_events and initial_custom_status; the carried
    messages become the first QueueEventDelivered events; stale completions are dropped."""

    def orch(ctx, inp):
        first = yield ctx.dequeue_event("q")
        return [inp, first, ctx.get_custom_status(), ctx.execution_id]

    old = [started(), queue_subscribed(2, "q"), continued_as_new(3, "5")]
    carry = [("q", '"a"'), ("q", '"b"')]
    msgs = [can_msg("5", carry, initial_custom_status="st"), act_done(9, '"stale"', execution_id=1), enqueued("q", '"c"')]
    r = turn(orch, old, msgs)
    assert r.kind == "completed"
    assert r.execution_id == 2
    assert r.output == '[5, "a", "st", 2]'
    e2 = {"execution_id": 2}
    assert list(r.delta) == new(
        started(input="5", carry_forward_events=tuple(carry), initial_custom_status="st", **e2),
        queue_delivered(2, "q", '"a"', **e2),
        queue_delivered(3, "q", '"b"', **e2),
        queue_delivered(4, "q", '"c"', **e2),
        queue_subscribed(5, "q", **e2),
        completed(6, '[5, "a", "st", 2]', **e2),
    )


def test_new_execution_without_carry_has_no_carry_fields():
    """§8: a CAN item with no carried messages and no status writes a plain Started."""

    def orch(ctx, inp):
        return inp

    r = turn(orch, [started(), continued_as_new(2, "7")], [can_msg("7")])
    assert r.execution_id == 2
    assert r.delta[0] == new(started(input="7", execution_id=2))[0]
    assert r.delta[0].carry_forward_events is None and r.delta[0].initial_custom_status is None


def test_new_execution_version_follows_can_item_or_policy():
    """§8 / §12: CAN without version -> registry policy (Latest); with a version -> exact."""
    reg = Registry()
    reg.add_orchestration("O", lambda ctx, inp: "v1", version="1.0.0")
    reg.add_orchestration("O", lambda ctx, inp: "v2", version="2.0.0")
    old = [started(version="1.0.0"), continued_as_new(2, "null")]

    r = turn(reg, old, [can_msg("null")])
    assert isinstance(r.delta[0], OrchestrationStarted) and r.delta[0].version == "2.0.0"
    assert r.output == '"v2"' and r.orchestration_version == "2.0.0"

    r = turn(reg, old, [can_msg("null", version="1.0.0")])
    assert r.delta[0].version == "1.0.0" and r.output == '"v1"'


def test_can_item_for_a_completed_execution_is_discarded():
    """§3.1 step 3: a Completed execution discards the batch even with a CAN item in it."""
    r = turn(lambda ctx, inp: 1, [started(), completed(2, "1")], [can_msg("2")])
    assert r.kind == "noop" and r.delta == ()


def test_now_is_used_for_timers():
    """§5: fire_at_ms = now + delay; on replay the recorded value stands."""

    def orch(ctx, inp):
        yield ctx.schedule_timer(0)
        yield ctx.schedule_timer(30)

    r = turn(orch, [started()], now_ms=5000)
    assert list(r.delta) == [timer_created(2, 5000, timestamp_ms=5000)]
    history = [started(), timer_created(2, 42), timer_fired(3, 2, 42)]
    r = turn(orch, history, now_ms=NOW)
    assert list(r.delta) == new(timer_created(4, NOW + 30))
