"""Scenarios from the reference's replay-engine suites (action-to-event recording, KV replay,
positional and queue races) and its versioning suites, written fresh against duroxide_sim.

The first group fails: a race between two queue waits whose messages are both already buffered
when the race is decided. The engine binds both subscriptions, both take a message from the
buffer, and the race then picks the first child. The loser is never dropped because it counts as
done. So it keeps the message it took and gets no `QueueSubscriptionCancelled` breadcrumb. SPEC
§4 and §6.2 say a race loser's queue subscription is cancelled and consumes nothing. A replay of
the same history binds the subscriptions one event at a time, drops the loser and reaches a
different outcome, so the live run and its replay disagree (SPEC §18: identical outcomes on replay).

The rest are passing checks of reference scenarios the suite did not cover in this form.
"""

from __future__ import annotations

import attrs

from duroxide_sim.core.events import ConfigurationErrorDetails, QueueSubscriptionCancelled

from tests.conftest import make_world
from tests.core import histories as H

from ._helpers import events_of, kinds


def _kinds(events) -> list[str]:
    return [type(e).__name__ for e in events]


# ---------------------------------------------------------------------------------------------
# race between two queue waits whose messages are both buffered: the loser must be cancelled
# ---------------------------------------------------------------------------------------------


def _pick_then_take_b(ctx, _):
    r = yield ctx.race(ctx.dequeue_event("a"), ctx.dequeue_event("b"))
    later = yield ctx.dequeue_event("b")
    return f"{r['index']}:{r['value']}|{later}"


def test_queue_race_loser_does_not_keep_the_buffered_message():
    """Reference: replay_engine/positional_unbound_races::ms18_lazy_queue_variant_* and
    queue_races (race of queue waits against buffered messages).

    `race(dequeue a, dequeue b)` runs while both `a` and `b` are already buffered. `a` wins
    (first child). The loser `dequeue b` is dropped: SPEC §4 ("queue wait → QueueSubscriptionCancelled"),
    §3.10 step 2 (a `dropped_future` breadcrumb) and §6.2 ("Cancelled subscriptions are skipped and
    consume nothing"; buffered messages resolve later subscriptions in the same turn, §3.7).
    So the next `dequeue b` gets "B" in the same turn, and the instance completes `0:A|B`.
    Ours: the loser keeps "B" and gets no breadcrumb. The instance stays Running until a
    second message arrives, then returns `0:A|B2`, so message "B" is lost."""
    world = make_world()
    @world.runtime.register_orchestration("PickLater")
    def pick_later(ctx, inp):
        yield ctx.schedule_timer(10)  # both messages are buffered by the time the race runs
        return (yield from _pick_then_take_b(ctx, inp))

    world.client.start_orchestration("p", "PickLater", None)
    world.run_for(1)
    world.client.enqueue_event("p", "a", "A")
    world.client.enqueue_event("p", "b", "B")
    world.run()

    st = world.client.get_status("p")
    assert st.status == "Completed", f"{st.status}: history {kinds(world, 'p')}"
    assert st.output == "0:A|B"
    crumbs = events_of(world, "p", "QueueSubscriptionCancelled")
    losers = [e["data"] for e in events_of(world, "p", "QueueSubscribed") if e["data"]["name"] == "b"]
    assert len(losers) == 2 and len(crumbs) == 1, crumbs
    assert crumbs[0]["data"]["reason"] == "dropped_future"


def test_queue_race_on_buffered_messages_replays_to_the_same_result():
    """Reference: replay_engine/queue_races (a replayed turn must make the same choice and add
    no rows) and positional_unbound_races::assert_live_and_replay.

    First turn: the start plus two messages for the same queue, and the code
    `race(dequeue q, dequeue q)` then `dequeue q`. Both messages are buffered, so by SPEC §3.7,
    §4 and §6.2 the turn completes `0:first,second`: the loser is cancelled and the last dequeue
    gets "second". SPEC §18 (identical outcomes on replay): replaying the events the live turn
    wrote up to its decision reaches the same decision and writes the same closing events. (The
    live turn returned Continue: the loser kept "second" and got no breadcrumb, while a replay
    of that history completed `0:first,second`.)"""

    def orch(ctx, _):
        r = yield ctx.race(ctx.dequeue_event("q"), ctx.dequeue_event("q"))
        last = yield ctx.dequeue_event("q")
        return f"{r['index']}:{r['value']},{last}"

    live = H.turn(orch, [H.started()], [H.enqueued("q", "first"), H.enqueued("q", "second")])
    assert live.kind == "completed" and live.output == '"0:first,second"', (live.kind, _kinds(live.delta))
    closing = _kinds(live.delta)[-2:]
    assert closing == ["QueueSubscriptionCancelled", "OrchestrationCompleted"], _kinds(live.delta)
    replay = H.turn(orch, [H.started(), *live.delta[:-2]])
    assert (replay.kind, replay.output) == (live.kind, live.output), (replay.kind, _kinds(replay.delta))
    assert _kinds(replay.delta) == closing
    assert [attrs.asdict(e) for e in replay.delta] == [attrs.asdict(e) for e in live.delta[-2:]]


def test_queue_race_loser_message_is_carried_forward_by_continue_as_new():
    """Reference: queue race scenarios + SPEC §6.2 carry-forward.

    `race(dequeue a, dequeue b)` runs with both messages buffered, then the code continues as new.
    The loser subscription is cancelled (SPEC §4, §3.10) and so consumes nothing (§6.2). At the
    continue-as-new, "on CAN, per name the first k arrivals are consumed (k = active
    subscriptions); the rest ... are carried forward". No subscription on `b` is still active,
    so "B" must be in the ContinueAsNew item's carry-forward list. Ours counts the loser as
    active, so "B" is consumed and dropped for good."""

    def orch(ctx, inp):
        yield ctx.race(ctx.dequeue_event("a"), ctx.dequeue_event("b"))
        yield ctx.continue_as_new("next")

    r = H.turn(orch, [H.started()], [H.enqueued("a", "A"), H.enqueued("b", "B")])
    assert r.kind == "continued_as_new"
    (can,) = [w for w in r.orchestrator_items if type(w).__name__ == "ContinueAsNew"]
    assert list(can.carry_forward_events) == [("b", "B")], (can.carry_forward_events, _kinds(r.delta))


# ---------------------------------------------------------------------------------------------
# passing checks of reference scenarios
# ---------------------------------------------------------------------------------------------


def test_queue_timer_race_with_timer_then_message_in_one_batch_replays_identically():
    """Reference: replay_engine/queue_races::queue_timer_race_replays_timer_then_message_same_batch.

    A loop of `race(dequeue q, timer)` gets the timer's firing and a message in one batch. The
    timer wins that race (its completion comes first, SPEC §4), so the dequeue is dropped with a
    `dropped_future` breadcrumb and consumes nothing (§6.2). The message goes to the next
    iteration's dequeue. Replaying the persisted turn adds nothing, and a second message
    completes `1:first,second`."""

    def orch(ctx, _):
        got, timers = [], 0
        while len(got) < 2:
            r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(20))
            if r["index"] == 0:
                got.append(r["value"])
            else:
                timers += 1
        return f"{timers}:{','.join(got)}"

    history = [H.started()]
    first = H.turn(orch, history)
    history += first.delta
    timer = next(e for e in history if type(e).__name__ == "TimerCreated")
    second = H.turn(orch, history, [H.fired(timer.event_id, timer.fire_at_ms), H.enqueued("q", "first")])
    assert second.kind == "continue"
    assert [e.reason for e in second.delta if isinstance(e, QueueSubscriptionCancelled)] == ["dropped_future"]
    history += second.delta
    again = H.turn(orch, history)
    assert again.kind == "continue" and list(again.delta) == []
    last = H.turn(orch, history, [H.enqueued("q", "second")])
    assert last.kind == "completed" and last.output == '"1:first,second"'


def test_kv_event_in_history_where_code_now_schedules_an_activity_is_nondeterminism():
    """Reference: replay_engine/kv::replay_set_value_mismatch_nondeterminism and
    replay_clear_value_mismatch_nondeterminism.

    History records a KV set (or clear), then an activity. The new code skips the KV call and
    only schedules the activity. SPEC §3.4: a KV event pops the front action, and an action of
    another kind is `kv set mismatch` / `kv clear mismatch`. That is a Configuration
    nondeterminism failure (§3.11), not a silently accepted history."""

    def orch(ctx, _):
        return (yield ctx.schedule_activity("Task", "input"))

    for recorded, problem in ((H.kv_set(2, "A", "1"), "kv set mismatch"), (H.kv_cleared(2, "A"), "kv clear mismatch")):
        r = H.turn(orch, [H.started(), recorded, H.activity_scheduled(3, "Task", '"input"'), H.activity_completed(4, 3, '"r"')])
        assert r.kind == "failed"
        assert isinstance(r.error, ConfigurationErrorDetails) and r.error.kind == "Nondeterminism"
        assert problem in r.error.message


def test_history_from_an_older_engine_replays_and_upgrades_by_continue_as_new():
    """Reference: scenarios/replay_versioning::e2e_upgrade_with_preexisting_v1_history.

    Execution 1 was written by an older engine (its Started event carries an older
    `duroxide_version`) and waits for its third `approval`. The current runtime replays it
    (older pins are compatible, SPEC §12). It takes the third event and continues as new with
    an explicit version 2.0.0 (exact match, §8). The new execution is pinned to the current
    engine. The old Started event keeps its stamp (the provider never rewrites history, §15.1)."""
    world = make_world()

    @world.runtime.register_orchestration("Upgrader")
    def v1(ctx, _):
        got = []
        for _ in range(3):
            got.append((yield ctx.wait_for_event("approval")))
        yield ctx.continue_as_new_versioned(",".join(got), "2.0.0")

    @world.runtime.register_orchestration_versioned("Upgrader", "2.0.0")
    def v2(ctx, inp):
        got = inp.split(",")
        for _ in range(2):
            got.append((yield ctx.wait_for_event("approval")))
        return "upgraded:" + "+".join(got)

    inst = "upgrade-hist"

    def old(ev):
        return attrs.evolve(ev, instance_id=inst, duroxide_version="0.0.9")

    world.provider.import_history(inst, [(1, [
        old(H.started(name="Upgrader", input='"seed"', version="1.0.0")),
        old(H.external_subscribed(2, "approval")),
        old(H.external_event(3, "approval", '"old-0"')),
        old(H.external_subscribed(4, "approval")),
        old(H.external_event(5, "approval", '"old-1"')),
        old(H.external_subscribed(6, "approval")),
    ])])
    world.client.raise_event(inst, "approval", "old-2")
    world.run()
    for i in range(2):
        world.client.raise_event(inst, "approval", f"new-{i}")
        world.run()

    st = world.client.get_status(inst)
    assert (st.status, st.output) == ("Completed", "upgraded:old-0+old-1+old-2+new-0+new-1"), st
    first, second = world.provider.read_with_execution(inst, 1), world.provider.read_with_execution(inst, 2)
    assert first[0].duroxide_version == "0.0.9"
    assert type(first[-1]).__name__ == "OrchestrationContinuedAsNew"
    assert second[0].version == "2.0.0"
    assert second[0].duroxide_version == H.new(H.started())[0].duroxide_version != "0.0.9"


def test_queue_race_loser_gets_a_breadcrumb_when_the_winner_is_already_complete():
    """Reference: positional_unbound_races::ms18_* (a race decided while both children are ready).

    An activity that already completed in an earlier turn races a queue wait whose message is
    buffered. The activity is the first child and wins. The loser queue wait is dropped, so it
    gets `QueueSubscriptionCancelled{dropped_future}` in this turn (SPEC §3.10 step 2, §4), and the
    message stays for a later `dequeue q` (§6.2). (Passes: only a race between two queue waits
    that are both ready shows the defect above.)"""

    def orch(ctx, _):
        first = ctx.schedule_activity("A", "x")
        yield first
        r = yield ctx.race(first, ctx.dequeue_event("q"))
        msg = yield ctx.dequeue_event("q")
        return f"{r['index']}:{r['value']}|{msg}"

    history = [H.started(), H.activity_scheduled(2, "A", '"x"')]
    r = H.turn(orch, history, [H.enqueued("q", "M"), H.act_done(2, '"done"')])
    assert r.kind == "completed" and r.output == '"0:done|M"', (r.kind, r.output, _kinds(r.delta))
    crumbs = [e for e in r.delta if isinstance(e, QueueSubscriptionCancelled)]
    assert [c.reason for c in crumbs] == ["dropped_future"], _kinds(r.delta)


def test_a_join_of_many_dequeues_on_buffered_messages_is_still_one_quiescence_iteration():
    """Binding each dequeue before the next one (so a race's loser is dropped before it takes a
    message) polls between them; those polls belong to one quiescence iteration (SPEC §3.7: the
    limit of 100 counts iterations that add new actions), so a join of 250 dequeues on 250
    buffered messages completes in one turn, in order, and its replay agrees."""

    def orch(ctx, _):
        got = yield ctx.all([ctx.dequeue_event("q") for _ in range(250)])
        return [g["ok"] for g in got] == [f"m{i}" for i in range(250)]

    msgs = [H.enqueued("q", f'"m{i}"') for i in range(250)]
    live = H.turn(orch, [H.started()], msgs)
    assert (live.kind, live.output) == ("completed", "true"), (live.kind, live.error)
    replay = H.turn(orch, [H.started(), *live.delta[:-1]])
    assert (replay.kind, replay.output) == ("completed", "true")
