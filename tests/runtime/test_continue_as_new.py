"""End-to-end: continue-as-new (SPEC §8, §6.2 carry-forward, §13 carried state)."""

from __future__ import annotations

import json

import pytest

from ._helpers import STYLES, events_of, kinds, pick


@pytest.mark.parametrize("style", STYLES)
def test_continue_as_new_loops_to_final_output(world, style):
    """Each continue-as-new starts a new execution with the new input; the last one's output is final."""
    seen = []

    def gen(ctx, n):
        seen.append((ctx.execution_id, n))
        yield ctx.schedule_timer(10)
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return f"finished at {n}"

    async def coro(ctx, n):
        seen.append((ctx.execution_id, n))
        await ctx.schedule_timer(10)
        if n < 3:
            await ctx.continue_as_new(n + 1)
        return f"finished at {n}"

    world.runtime.register_orchestration("Loop", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Loop", 0)
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output == "finished at 3"
    assert world.client.list_executions("i1") == [1, 2, 3, 4]
    assert sorted(set(seen)) == [(1, 0), (2, 1), (3, 2), (4, 3)]


def test_executions_record_continued_as_new(world):
    """Old executions end with OrchestrationContinuedAsNew(input) and report status ContinuedAsNew."""

    @world.runtime.register_orchestration("Loop")
    def loop(ctx, n):
        if n < 2:
            yield ctx.continue_as_new(n + 1)
        return n

    world.client.start_orchestration("i1", "Loop", 0)
    assert world.result("i1").output == 2
    for exe, nxt in [(1, 1), (2, 2)]:
        hist = world.client.read_execution_history("i1", exe)
        assert hist[-1]["kind"] == "OrchestrationContinuedAsNew"
        assert json.loads(hist[-1]["data"]) == nxt  # the continue-as-new input itself
        info = world.client.get_execution_info("i1", exe)
        assert info.status == "ContinuedAsNew"
        started = json.loads(hist[0]["data"])
        assert started["input"] == exe - 1
    assert world.client.get_execution_info("i1", 3).status == "Completed"
    assert world.client.get_instance_info("i1").current_execution_id == 3


def test_status_running_between_executions_and_wait_is_not_fooled(world):
    """A continued-as-new instance reads Running; wait_for_orchestration waits for the final result."""

    @world.runtime.register_orchestration("Loop")
    def loop(ctx, n):
        if n == 0:
            yield ctx.continue_as_new(1)
        return (yield ctx.wait_for_event("done"))

    world.client.start_orchestration("i1", "Loop", 0)
    world.run()
    assert world.client.get_status("i1").status == "Running"
    assert world.client.list_executions("i1") == [1, 2]
    world.client.raise_event("i1", "done", "yes")
    assert world.result("i1").output == "yes"


@pytest.mark.parametrize("style", STYLES)
def test_continue_as_new_never_resumes(world, style):
    """Code after a yielded continue_as_new never runs; even a later return value is ignored."""
    after = []

    def gen(ctx, n):
        if n == 0:
            yield ctx.continue_as_new(1)
            after.append("resumed")
            return "should not be output"
        return "second"

    async def coro(ctx, n):
        if n == 0:
            await ctx.continue_as_new(1)
            after.append("resumed")
            return "should not be output"
        return "second"

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O", 0)
    assert world.result("i1").output == "second"
    assert after == []


def test_returning_continue_as_new_task_continues(world):
    """``return ctx.continue_as_new(x)`` continues as new like yielding it."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        if n < 2:
            return ctx.continue_as_new(n + 1)
        return n

    world.client.start_orchestration("i1", "O", 0)
    assert world.result("i1").output == 2
    assert world.client.list_executions("i1") == [1, 2, 3]


@pytest.mark.parametrize("style", STYLES)
def test_unconsumed_queue_messages_carry_forward(world, style):
    """Queue messages not consumed before continue-as-new are delivered, in order, to the next execution."""

    def gen(ctx, state):
        got = yield ctx.dequeue_event("work")
        state = state + [got]
        if len(state) < 4:
            yield ctx.continue_as_new(state)
        return state

    async def coro(ctx, state):
        got = await ctx.dequeue_event("work")
        state = state + [got]
        if len(state) < 4:
            await ctx.continue_as_new(state)
        return state

    world.runtime.register_orchestration("Worker", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Worker", [])
    world.run()
    for item in ["a", "b", "c", "d"]:
        world.client.enqueue_event("i1", "work", item)
    assert world.result("i1").output == ["a", "b", "c", "d"]
    assert world.client.list_executions("i1") == [1, 2, 3, 4]
    started2 = events_of(world, "i1", "OrchestrationStarted", execution_id=2)[0]["data"]
    assert started2["carry_forward_events"] == [["work", '"b"'], ["work", '"c"'], ["work", '"d"']]
    delivered2 = [e["data"]["data"] for e in events_of(world, "i1", "QueueEventDelivered", execution_id=2)]
    assert delivered2 == ["b", "c", "d"]


def test_positional_events_are_not_carried(world):
    """External events raised for the old execution are not carried into the new one."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            yield ctx.schedule_timer(1_000)
            yield ctx.continue_as_new(1)
        return (yield ctx.wait_for_event("e"))

    world.client.start_orchestration("i1", "O", 0)
    world.run_for(10)
    world.client.raise_event("i1", "e", "old")  # no subscription in execution 1: lost
    world.run()
    assert world.client.get_status("i1").status == "Running"
    world.client.raise_event("i1", "e", "new")
    assert world.result("i1").output == "new"


@pytest.mark.parametrize("style", STYLES)
def test_custom_status_carries_across_continue_as_new(world, style):
    """The last custom status is visible to the next execution via get_custom_status()."""

    def gen(ctx, n):
        if n == 0:
            ctx.set_custom_status("phase-1")
            yield ctx.schedule_timer(1)
            yield ctx.continue_as_new(1)
        yield ctx.schedule_timer(1)
        return ctx.get_custom_status()

    async def coro(ctx, n):
        if n == 0:
            ctx.set_custom_status("phase-1")
            await ctx.schedule_timer(1)
            await ctx.continue_as_new(1)
        await ctx.schedule_timer(1)
        return ctx.get_custom_status()

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O", 0)
    st = world.result("i1")
    assert st.output == "phase-1"
    assert st.custom_status == "phase-1"
    assert st.custom_status_version == 1  # no new event in execution 2
    started2 = events_of(world, "i1", "OrchestrationStarted", execution_id=2)[0]["data"]
    assert started2["initial_custom_status"] == "phase-1"


@pytest.mark.parametrize("style", STYLES)
def test_kv_carries_across_continue_as_new(world, style):
    """KV values set in one execution are readable in the next (read-modify-write across CAN)."""

    def gen(ctx, n):
        count = int(ctx.get_kv_value("count") or 0)
        ctx.set_kv_value("count", str(count + 1))
        yield ctx.schedule_timer(1)
        if n < 3:
            yield ctx.continue_as_new(n + 1)
        return ctx.get_kv_all_values()

    async def coro(ctx, n):
        count = int(ctx.get_kv_value("count") or 0)
        ctx.set_kv_value("count", str(count + 1))
        await ctx.schedule_timer(1)
        if n < 3:
            await ctx.continue_as_new(n + 1)
        return ctx.get_kv_all_values()

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O", 0)
    assert world.result("i1").output == {"count": "4"}
    assert world.client.get_kv_value("i1", "count") == "4"


def test_dropped_activity_before_continue_as_new_is_removed(world):
    """An activity dropped before continue-as-new never runs; a built-but-unyielded task emits nothing."""

    calls = []

    @world.runtime.register_activity("Slow")
    def slow(ctx, _):
        calls.append(1)
        return "never"

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            ctx.schedule_activity("Slow").with_tag("nobody")  # built, not yielded: nothing happens
            yield ctx.race(ctx.schedule_activity("Slow").with_tag("nobody"), ctx.schedule_timer(5))
            yield ctx.continue_as_new(1)
        return "done"

    world.client.start_orchestration("i1", "O", 0)
    assert world.result("i1").output == "done"
    assert world.client.get_queue_depths().worker_queue == 0
    assert len(events_of(world, "i1", "ActivityScheduled")) == 1  # the unyielded task emitted nothing
    assert calls == []


def test_continue_as_new_typed_passes_raw_string(world):
    """continue_as_new_typed passes a str input through without re-encoding it."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, inp):
        if inp == "first":
            yield ctx.continue_as_new_typed("second")
        return inp

    world.client.start_orchestration_typed("i1", "O", "first")
    assert world.result("i1").output == "second"
    started2 = events_of(world, "i1", "OrchestrationStarted", execution_id=2)[0]["data"]
    assert started2["input"] == "second"


def test_metrics_count_continue_as_new(world):
    """metrics_snapshot counts continue-as-new turns."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        if n < 5:
            yield ctx.continue_as_new(n + 1)
        return n

    world.client.start_orchestration("i1", "O", 0)
    world.result("i1")
    assert world.runtime.metrics_snapshot()["orch_continue_as_new"] == 5


def test_kinds_of_continued_execution(world):
    """A continued execution's history ends with OrchestrationContinuedAsNew and nothing after it."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            yield ctx.continue_as_new(1)
        return n

    world.client.start_orchestration("i1", "O", 0)
    world.result("i1")
    assert kinds(world, "i1", 1) == ["OrchestrationStarted", "OrchestrationContinuedAsNew"]
    assert kinds(world, "i1", 2) == ["OrchestrationStarted", "OrchestrationCompleted"]


def test_stale_timer_from_previous_execution_is_ignored(world):
    """A timer from an earlier execution firing after continue-as-new does not disturb the new one."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            yield ctx.race(ctx.schedule_timer(1_000), ctx.wait_for_event("e"))  # event wins; timer left pending
            yield ctx.continue_as_new(1)
        yield ctx.schedule_timer(5_000)
        return "done"

    world.client.start_orchestration("i1", "O", 0)
    world.run_for(10)
    world.client.raise_event("i1", "e", 1)
    assert world.result("i1").output == "done"
    assert kinds(world, "i1", 2) == ["OrchestrationStarted", "TimerCreated", "TimerFired", "OrchestrationCompleted"]


def test_carry_forward_is_capped_at_twenty(world):
    """At most 20 unconsumed queue messages are carried into the next execution; extras are dropped."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        if n == 0:
            yield ctx.schedule_timer(1_000)
            yield ctx.continue_as_new(1)
        got = []
        while True:
            r = yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))
            if r["index"] == 1:
                return got
            got.append(r["value"])

    world.client.start_orchestration("i1", "O", 0)
    world.run_for(10)
    for i in range(25):
        world.client.enqueue_event("i1", "q", i)
    assert world.result("i1").output == list(range(20))


def test_client_sees_kv_merged_across_executions(world):
    """Client KV reads include keys set in every execution of a continued instance."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, n):
        ctx.set_kv_value(f"k{n}", str(n))
        if n < 2:
            yield ctx.continue_as_new(n + 1)
        yield ctx.wait_for_event("never")

    world.client.start_orchestration("i1", "O", 0)
    world.run()
    assert world.client.get_kv_all_values("i1") == {"k0": "0", "k1": "1", "k2": "2"}
