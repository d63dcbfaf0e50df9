"""End-to-end: external events (positional waits) and persistent event queues (SPEC §6)."""

from __future__ import annotations

import pytest

from ._helpers import STYLES, events_of, kinds, pick


def _waiter(world, style, name="Approval"):
    def gen(ctx, _):
        data = yield ctx.wait_for_event(name)
        return {"got": data}

    async def coro(ctx, _):
        data = await ctx.wait_for_event(name)
        return {"got": data}

    world.runtime.register_orchestration("Waiter", pick(style, gen, coro))


@pytest.mark.parametrize("style", STYLES)
def test_wait_for_event_receives_raised_data(world, style):
    """An event raised after the subscription exists resolves wait_for_event with its data."""
    _waiter(world, style)
    world.client.start_orchestration("i1", "Waiter")
    world.run()
    assert world.client.get_status("i1").status == "Running"
    world.client.raise_event("i1", "Approval", {"approved": True, "by": "ann"})
    st = world.result("i1")
    assert st.output == {"got": {"approved": True, "by": "ann"}}
    assert kinds(world, "i1") == [
        "OrchestrationStarted", "ExternalSubscribed", "ExternalEvent", "OrchestrationCompleted",
    ]


@pytest.mark.parametrize("style", STYLES)
def test_event_raised_before_subscription_is_lost(world, style):
    """An event arriving before the subscription is persisted is dropped (audit-only); a later one resolves."""
    _waiter(world, style)
    world.client.start_orchestration("i1", "Waiter")
    world.client.raise_event("i1", "Approval", "early")  # same batch as the start: no subscription yet
    world.run()
    assert world.client.get_status("i1").status == "Running"
    early = events_of(world, "i1", "ExternalEvent")
    assert [e["data"]["data"] for e in early] == ["early"]  # recorded for audit, not delivered
    world.client.raise_event("i1", "Approval", "late")
    assert world.result("i1").output == {"got": "late"}


def test_event_with_other_name_does_not_resolve_wait(world):
    """Only an event with the awaited name resolves the wait."""
    _waiter(world, "generator")
    world.client.start_orchestration("i1", "Waiter")
    world.run()
    world.client.raise_event("i1", "Other", 1)
    world.run()
    assert world.client.get_status("i1").status == "Running"
    world.client.raise_event("i1", "Approval", 2)
    assert world.result("i1").output == {"got": 2}


@pytest.mark.parametrize("style", STYLES)
def test_multiple_waits_on_one_name_match_first_to_first(world, style):
    """Several waits on one name are resolved by arrivals in order; equal payloads are distinct arrivals."""

    def gen(ctx, _):
        a = yield ctx.wait_for_event("tick")
        b = yield ctx.wait_for_event("tick")
        c = yield ctx.wait_for_event("tick")
        return [a, b, c]

    async def coro(ctx, _):
        a = await ctx.wait_for_event("tick")
        b = await ctx.wait_for_event("tick")
        c = await ctx.wait_for_event("tick")
        return [a, b, c]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    for value in ["x", "x", "y"]:
        world.run()
        world.client.raise_event("i1", "tick", value)
    assert world.result("i1").output == ["x", "x", "y"]


def test_concurrent_waits_resolve_in_subscription_order(world):
    """Two simultaneously pending waits on one name get the arrivals in subscription order."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        results = yield ctx.all([ctx.wait_for_event("e"), ctx.wait_for_event("e")])
        return [r["ok"] for r in results]

    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.raise_event("i1", "e", "first")
    world.client.raise_event("i1", "e", "second")
    assert world.result("i1").output == ["first", "second"]


def test_raise_event_with_no_data_delivers_none(world):
    """raise_event without data delivers None."""
    _waiter(world, "generator")
    world.client.start_orchestration("i1", "Waiter")
    world.run()
    world.client.raise_event("i1", "Approval")
    assert world.result("i1").output == {"got": None}


def test_schedule_wait_alias(world):
    """``schedule_wait`` is the Rust-named alias of wait_for_event."""

    @world.runtime.register_orchestration("O")
    async def orch(ctx, _):
        return await ctx.schedule_wait("go")

    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.raise_event("i1", "go", 5)
    assert world.result("i1").output == 5


def test_events_for_completed_instance_are_discarded(world):
    """An event raised at a completed instance changes nothing."""
    _waiter(world, "generator")
    world.client.start_orchestration("i1", "Waiter")
    world.run()
    world.client.raise_event("i1", "Approval", 1)
    world.result("i1")
    before = kinds(world, "i1")
    world.client.raise_event("i1", "Approval", 2)
    world.run()
    assert kinds(world, "i1") == before
    assert world.client.get_status("i1").output == {"got": 1}
    assert world.client.get_queue_depths().orchestrator_queue == 0


def test_event_to_unknown_instance_does_not_block_others(world):
    """A raise_event for a never-started instance does not stop other instances from running."""
    _waiter(world, "generator")
    world.client.raise_event("ghost", "Approval", 1)
    world.client.start_orchestration("i1", "Waiter")
    world.run()
    world.client.raise_event("i1", "Approval", 2)
    assert world.result("i1").output == {"got": 2}
    assert world.client.get_status("ghost").status == "NotFound"


# --- persistent queues ----------------------------------------------------------------------


@pytest.mark.parametrize("style", STYLES)
def test_queue_messages_buffered_before_dequeue_are_delivered_in_order(world, style):
    """Messages enqueued before dequeue_event is called are buffered and delivered in enqueue order."""

    def gen(ctx, n):
        yield ctx.schedule_timer(60_000)  # messages arrive while the code is elsewhere
        out = []
        for _ in range(n):
            out.append((yield ctx.dequeue_event("inbox")))
        return out

    async def coro(ctx, n):
        await ctx.schedule_timer(60_000)
        out = []
        for _ in range(n):
            out.append(await ctx.dequeue_event("inbox"))
        return out

    world.runtime.register_orchestration("Drain", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Drain", 3)
    world.run_for(1_000)
    for msg in ["a", {"b": 2}, 3]:
        world.client.enqueue_event("i1", "inbox", msg)
    world.run_for(1_000)
    assert world.client.get_status("i1").status == "Running"
    assert world.result("i1").output == ["a", {"b": 2}, 3]


@pytest.mark.parametrize("style", STYLES)
def test_queue_message_in_start_batch_is_kept(world, style):
    """Unlike a positional event, a queue message sent right after the start (same batch) is not lost."""

    def gen(ctx, _):
        return (yield ctx.dequeue_event("q"))

    async def coro(ctx, _):
        return await ctx.dequeue_event("q")

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    world.client.enqueue_event("i1", "q", "early bird")
    assert world.result("i1").output == "early bird"


def test_buffered_queue_drains_in_one_turn(world):
    """A dequeue loop consumes several already-buffered messages within a single turn."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        yield ctx.schedule_timer(1_000)
        out = []
        for _ in range(n):
            out.append((yield ctx.dequeue_event("q")))
        return out

    world.client.start_orchestration("i1", "O", 4)
    world.run_for(10)
    for i in range(4):
        world.client.enqueue_event("i1", "q", i)
    assert world.result("i1").output == [0, 1, 2, 3]
    # after the timer fired, a single turn subscribed four times and completed
    ks = kinds(world, "i1")
    fired = ks.index("TimerFired")
    assert ks[fired + 1:] == ["QueueSubscribed"] * 4 + ["OrchestrationCompleted"]


def _burst_actor(world, pause_every):
    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        yield ctx.schedule_timer(1_000)  # the burst arrives meanwhile: one batch of n messages
        out = []
        for i in range(n):
            if pause_every and i and i % pause_every == 0:
                yield ctx.schedule_timer(0)  # ends the turn: the next one drains the rest
            out.append((yield ctx.dequeue_event("q")))
        return out

    world.client.start_orchestration("i1", "O", 150)
    world.run_for(10)
    for i in range(150):
        world.client.enqueue_event("i1", "q", i)


def test_draining_more_than_100_buffered_messages_in_one_turn_fails_the_instance(world):
    """SPEC §3.7 (as the reference): each dequeue of a buffered message is one iteration of the
    turn's quiescence loop, and more than 100 fail the instance (documented in the README)."""
    _burst_actor(world, pause_every=0)
    st = world.result("i1")
    assert st.status == "Failed"
    assert "quiescence_loop" in str(st.error)


def test_a_timer_every_fifty_messages_drains_a_burst_of_150(world):
    """The README's workaround: a zero timer every < 100 messages ends the turn; nothing is lost."""
    _burst_actor(world, pause_every=50)
    assert world.result("i1").output == list(range(150))


def test_queues_are_independent_by_name(world):
    """Each queue name has its own buffer."""

    @world.runtime.register_orchestration("O")
    async def orch(ctx, _):
        a = await ctx.dequeue_event("a")
        b = await ctx.dequeue_event("b")
        a2 = await ctx.dequeue_event("a")
        return [a, b, a2]

    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.enqueue_event("i1", "b", "b1")
    world.client.enqueue_event("i1", "a", "a1")
    world.client.enqueue_event("i1", "a", "a2")
    assert world.result("i1").output == ["a1", "b1", "a2"]


def test_queue_message_to_unknown_instance_is_dropped(world):
    """enqueue_event to an instance that does not exist is discarded, never creating it."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.dequeue_event("q"))

    world.client.enqueue_event("nobody", "q", 1)
    world.run()
    assert world.client.get_status("nobody").status == "NotFound"
    assert world.client.get_queue_depths().orchestrator_queue == 0
    world.client.start_orchestration("nobody", "O")
    world.run()
    assert world.client.get_status("nobody").status == "Running"  # the old message is gone


def test_raise_event_persistent_alias(world):
    """``raise_event_persistent`` is the deprecated alias of enqueue_event."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.dequeue_event("q"))

    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.raise_event_persistent("i1", "q", "via alias")
    assert world.result("i1").output == "via alias"


@pytest.mark.parametrize("style", STYLES)
def test_event_vs_timer_timeout_pattern(world, style):
    """race(wait_for_event, timer) returns the timer (index 1) when no event arrives in time."""

    def gen(ctx, _):
        r = yield ctx.race(ctx.wait_for_event("reply"), ctx.schedule_timer(30_000))
        return r

    async def coro(ctx, _):
        return await ctx.race(ctx.wait_for_event("reply"), ctx.schedule_timer(30_000))

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("late", "O")
    assert world.result("late").output == {"index": 1, "value": None}
    crumbs = events_of(world, "late", "ExternalSubscribedCancelled")
    assert [c["data"]["reason"] for c in crumbs] == ["dropped_future"]

    world.client.start_orchestration("prompt", "O")
    world.run_for(1_000)
    world.client.raise_event("prompt", "reply", "yes")
    assert world.result("prompt").output == {"index": 0, "value": "yes"}


@pytest.mark.parametrize("style", STYLES)
def test_cancelled_queue_subscription_consumes_nothing(world, style):
    """A dequeue that lost a race consumes no message: the next dequeue gets the first one sent."""

    def gen(ctx, _):
        r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(100))
        m = yield ctx.dequeue_event("q")
        return [r["index"], m]

    async def coro(ctx, _):
        r = await ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(100))
        m = await ctx.dequeue_event("q")
        return [r["index"], m]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.enqueue_event("i1", "q", "m1")
    assert world.result("i1").output == [1, "m1"]
    assert [c["data"]["reason"] for c in events_of(world, "i1", "QueueSubscriptionCancelled")] == ["dropped_future"]


@pytest.mark.parametrize("style", STYLES)
def test_cancelled_wait_consumes_nothing(world, style):
    """A wait_for_event that lost a race consumes no event: the next wait gets the next arrival."""

    def gen(ctx, _):
        r = yield ctx.race(ctx.wait_for_event("e"), ctx.schedule_timer(100))
        m = yield ctx.wait_for_event("e")
        return [r["index"], m]

    async def coro(ctx, _):
        r = await ctx.race(ctx.wait_for_event("e"), ctx.schedule_timer(100))
        m = await ctx.wait_for_event("e")
        return [r["index"], m]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.raise_event("i1", "e", "m1")
    assert world.result("i1").output == [1, "m1"]
