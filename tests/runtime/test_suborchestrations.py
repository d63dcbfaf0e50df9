"""End-to-end: sub-orchestrations and detached orchestrations (SPEC §7)."""

from __future__ import annotations

import pytest

from duroxide_sim import TaskFailedError

from ._helpers import STYLES, events_of, pick


@pytest.fixture
def child_world(world):
    @world.runtime.register_activity("Square")
    def square(ctx, x):
        return x * x

    @world.runtime.register_activity("Boom")
    def boom(ctx, msg):
        raise ValueError(msg)

    @world.runtime.register_orchestration("Child")
    def child(ctx, x):
        sq = yield ctx.schedule_activity("Square", x)
        return {"input": x, "square": sq, "me": ctx.instance_id}

    @world.runtime.register_orchestration("FailingChild")
    def failing_child(ctx, msg):
        yield ctx.schedule_activity("Boom", msg)

    @world.runtime.register_orchestration("WaitingChild")
    def waiting_child(ctx, _):
        return (yield ctx.wait_for_event("go"))

    return world


@pytest.mark.parametrize("style", STYLES)
def test_sub_orchestration_result_is_decoded(child_world, style):
    """A child's JSON output arrives decoded in the parent."""
    world = child_world

    def gen(ctx, x):
        return (yield ctx.schedule_sub_orchestration("Child", x))

    async def coro(ctx, x):
        return await ctx.schedule_sub_orchestration("Child", x)

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent", 7)
    st = world.result("p")
    assert st.status == "Completed"
    assert st.output == {"input": 7, "square": 49, "me": "p::sub::2"}


@pytest.mark.parametrize("style", STYLES)
def test_auto_child_ids_use_schedule_event_id(child_world, style):
    """Children without explicit ids are named ``{parent}::sub::{schedule event id}``."""
    world = child_world

    def gen(ctx, _):
        a = yield ctx.schedule_sub_orchestration("Child", 1)
        yield ctx.schedule_timer(10)
        fan = yield ctx.all_typed([ctx.schedule_sub_orchestration("Child", i) for i in (2, 3)])
        return [a["me"]] + [f["me"] for f in fan]

    async def coro(ctx, _):
        a = await ctx.schedule_sub_orchestration("Child", 1)
        await ctx.schedule_timer(10)
        fan = await ctx.all_typed([ctx.schedule_sub_orchestration("Child", i) for i in (2, 3)])
        return [a["me"]] + [f["me"] for f in fan]

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent")
    ids = world.result("p").output
    sched = events_of(world, "p", "SubOrchestrationScheduled")
    assert ids == [f"p::sub::{e['event_id']}" for e in sched]
    assert [e["data"]["instance"] for e in sched] == [f"sub::{e['event_id']}" for e in sched]
    assert ids == ["p::sub::2", "p::sub::6", "p::sub::7"]
    for child in ids:
        assert world.client.get_status(child).status == "Completed"
        assert world.client.get_instance_info(child).parent_instance_id == "p"


@pytest.mark.parametrize("style", STYLES)
def test_explicit_child_id_is_used_verbatim(child_world, style):
    """schedule_sub_orchestration_with_id runs the child under exactly that id, linked to the parent."""
    world = child_world

    def gen(ctx, _):
        return (yield ctx.schedule_sub_orchestration_with_id("Child", "my-child", 3))

    async def coro(ctx, _):
        return await ctx.schedule_sub_orchestration_with_id("Child", "my-child", 3)

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent")
    assert world.result("p").output["me"] == "my-child"
    assert world.client.get_status("my-child").output == {"input": 3, "square": 9, "me": "my-child"}
    assert world.client.get_instance_info("my-child").parent_instance_id == "p"
    tree = world.client.get_instance_tree("p")
    assert tree.root_id == "p" and set(tree.all_ids) == {"p", "my-child"}


@pytest.mark.parametrize("style", STYLES)
def test_child_failure_is_task_failed_error_in_parent(child_world, style):
    """A failed child raises TaskFailedError in the parent carrying the child's error text."""
    world = child_world

    def gen(ctx, _):
        try:
            yield ctx.schedule_sub_orchestration("FailingChild", "kaput")
        except TaskFailedError as exc:
            return str(exc)

    async def coro(ctx, _):
        try:
            await ctx.schedule_sub_orchestration("FailingChild", "kaput")
        except TaskFailedError as exc:
            return str(exc)

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent")
    text = world.result("p").output
    child_error = world.client.get_status("p::sub::2").error
    assert text == child_error
    assert "Activity 'Boom' call failed: ValueError: kaput" in text


@pytest.mark.parametrize("style", STYLES)
def test_uncaught_child_failure_fails_parent(child_world, style):
    """A child failure the parent does not catch fails the parent too."""
    world = child_world

    def gen(ctx, _):
        yield ctx.schedule_sub_orchestration("FailingChild", "deep")
        return "not reached"

    async def coro(ctx, _):
        await ctx.schedule_sub_orchestration("FailingChild", "deep")
        return "not reached"

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent")
    st = world.result("p")
    assert st.status == "Failed"
    assert "Activity 'Boom' call failed: ValueError: deep" in st.error


def test_nested_sub_orchestrations(child_world):
    """Sub-orchestrations nest: grandchildren report through their parents."""
    world = child_world

    @world.runtime.register_orchestration("Middle")
    def middle(ctx, x):
        r = yield ctx.schedule_sub_orchestration("Child", x)
        return r["square"] + 1

    @world.runtime.register_orchestration("Top")
    async def top(ctx, x):
        return await ctx.schedule_sub_orchestration("Middle", x)

    world.client.start_orchestration("t", "Top", 4)
    assert world.result("t").output == 17
    assert world.client.get_status("t::sub::2::sub::2").status == "Completed"
    assert set(world.client.get_instance_tree("t").all_ids) == {"t", "t::sub::2", "t::sub::2::sub::2"}


def test_sub_orchestration_started_event_records_parent(child_world):
    """The child's OrchestrationStarted records parent_instance and parent_id (schedule id)."""
    world = child_world

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        yield ctx.schedule_timer(1)
        return (yield ctx.schedule_sub_orchestration_with_id("Child", "c1", 2))

    world.client.start_orchestration("p", "Parent")
    world.result("p")
    started = events_of(world, "c1", "OrchestrationStarted")[0]["data"]
    sched = events_of(world, "p", "SubOrchestrationScheduled")[0]
    assert started["parent_instance"] == "p"
    assert started["parent_id"] == sched["event_id"]


@pytest.mark.parametrize("style", STYLES)
def test_detached_orchestration_runs_independently(child_world, style):
    """ctx.start_orchestration starts another instance with no parent link; the starter does not wait."""
    world = child_world

    def gen(ctx, _):
        result = yield ctx.start_orchestration("WaitingChild", "detached-1", None)
        return {"start_result": result}

    async def coro(ctx, _):
        result = await ctx.start_orchestration("WaitingChild", "detached-1", None)
        return {"start_result": result}

    world.runtime.register_orchestration("Starter", pick(style, gen, coro))
    world.client.start_orchestration("s", "Starter")
    assert world.result("s").output == {"start_result": None}
    world.run()
    assert world.client.get_status("detached-1").status == "Running"
    info = world.client.get_instance_info("detached-1")
    assert info.parent_instance_id is None
    assert list(world.client.get_instance_tree("s").all_ids) == ["s"]
    chained = events_of(world, "s", "OrchestrationChained")[0]["data"]
    assert chained["instance"] == "detached-1" and chained["name"] == "WaitingChild"
    world.client.raise_event("detached-1", "go", "released")
    assert world.result("detached-1").output == "released"


def test_detached_orchestration_outlives_failed_starter(child_world):
    """A detached orchestration keeps running when its starter later fails."""
    world = child_world

    @world.runtime.register_orchestration("Starter")
    def starter(ctx, _):
        yield ctx.start_orchestration("Child", "independent", 5)
        yield ctx.schedule_activity("Boom", "starter dies")

    world.client.start_orchestration("s", "Starter")
    assert world.result("s").status == "Failed"
    assert world.result("independent").output["square"] == 25


def test_schedule_orchestration_alias(child_world):
    """``schedule_orchestration`` is the Rust name for a detached start."""
    world = child_world

    @world.runtime.register_orchestration("Starter")
    def starter(ctx, _):
        yield ctx.schedule_orchestration("Child", "aliased", 6)
        return "started"

    world.client.start_orchestration("s", "Starter")
    assert world.result("s").output == "started"
    assert world.result("aliased").output["square"] == 36


def test_parent_scheduling_child_and_returning_cancels_child(child_world):
    """A child started via race and dropped when the parent returns is cancelled ('parent dropped ...')."""
    world = child_world

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        r = yield ctx.race(ctx.schedule_sub_orchestration_with_id("WaitingChild", "dropped-child"), ctx.schedule_timer(100))
        return r["index"]

    world.client.start_orchestration("p", "Parent")
    assert world.result("p").output == 1
    st = world.result("dropped-child")
    assert st.status == "Failed"
    assert st.error == "canceled: parent dropped sub-orchestration future"
    crumbs = events_of(world, "p", "SubOrchestrationCancelRequested")
    assert [c["data"]["reason"] for c in crumbs] == ["dropped_future"]


def test_metrics_count_sub_orchestration_calls(child_world):
    """metrics_snapshot counts sub-orchestration calls, starts and completions."""
    world = child_world

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        yield ctx.all([ctx.schedule_sub_orchestration("Child", i) for i in range(3)])

    world.client.start_orchestration("p", "Parent")
    world.result("p")
    m = world.runtime.metrics_snapshot()
    assert m["suborchestration_calls"] == 3
    assert m["orch_starts"] == 4
    assert m["orch_completions"] == 4
    assert m["activity_success"] == 3


@pytest.mark.parametrize("style", STYLES)
def test_all_of_sub_orchestrations_collects_failures(child_world, style):
    """all() over children returns each child's result or error in order."""
    world = child_world

    def gen(ctx, _):
        return (yield ctx.all([
            ctx.schedule_sub_orchestration("Child", 2),
            ctx.schedule_sub_orchestration("FailingChild", "middle"),
            ctx.schedule_sub_orchestration("Child", 3),
        ]))

    async def coro(ctx, _):
        return await ctx.all([
            ctx.schedule_sub_orchestration("Child", 2),
            ctx.schedule_sub_orchestration("FailingChild", "middle"),
            ctx.schedule_sub_orchestration("Child", 3),
        ])

    world.runtime.register_orchestration("Parent", pick(style, gen, coro))
    world.client.start_orchestration("p", "Parent")
    out = world.result("p").output
    assert out[0] == {"ok": {"input": 2, "square": 4, "me": "p::sub::2"}}
    assert "Activity 'Boom' call failed: ValueError: middle" in out[1]["err"]
    assert out[2] == {"ok": {"input": 3, "square": 9, "me": "p::sub::4"}}


def test_child_continue_as_new_still_reports_to_parent(child_world):
    """A child that continues-as-new keeps its parent link and reports its final result (SPEC §7 Recommend)."""
    world = child_world

    @world.runtime.register_orchestration("Looping")
    def looping(ctx, n):
        yield ctx.schedule_timer(1)
        if n < 2:
            yield ctx.continue_as_new(n + 1)
        return n * 10

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        return (yield ctx.schedule_sub_orchestration("Looping", 0))

    world.client.start_orchestration("p", "Parent")
    assert world.result("p").output == 20
    assert world.client.list_executions("p::sub::2") == [1, 2, 3]


def test_detached_start_onto_running_instance_is_absorbed(child_world):
    """A detached start targeting an already running id does not restart it."""
    world = child_world

    @world.runtime.register_orchestration("Starter")
    def starter(ctx, _):
        yield ctx.start_orchestration("WaitingChild", "target", "second")
        return "ok"

    world.client.start_orchestration("target", "WaitingChild", "first")
    world.run()
    world.client.start_orchestration("s", "Starter")
    assert world.result("s").output == "ok"
    world.run()
    world.client.raise_event("target", "go", 1)
    assert world.result("target").output == 1
    assert [e["kind"] for e in world.client.read_execution_history("target", 1)].count("OrchestrationStarted") == 1
    started = events_of(world, "target", "OrchestrationStarted")[0]["data"]
    assert started["input"] == "first"


def test_parent_and_child_kv_are_isolated(child_world):
    """KV is instance-scoped: a child does not see its parent's keys and vice versa."""
    world = child_world

    @world.runtime.register_orchestration("KvChild")
    def kv_child(ctx, _):
        ctx.set_kv_value("mine", "child")
        yield ctx.schedule_timer(1)
        return ctx.get_kv_value("theirs")

    @world.runtime.register_orchestration("Parent")
    def parent(ctx, _):
        ctx.set_kv_value("theirs", "parent")
        seen_by_child = yield ctx.schedule_sub_orchestration("KvChild")
        return [seen_by_child, ctx.get_kv_value("mine")]

    world.client.start_orchestration("p", "Parent")
    assert world.result("p").output == [None, None]
    assert world.client.get_kv_value("p::sub::3", "mine") == "child"


def test_detached_start_with_a_reserved_id_raises_at_the_call(child_world):
    """A detached start is a root instance: its id may not start with ``sub::`` or contain
    ``::sub::`` (the marker of auto child ids; duroxide-python fails the orchestration for it).
    The code sees a ValueError where it calls start_orchestration; caught, it carries on, and
    nothing was started."""
    world = child_world

    @world.runtime.register_orchestration("Starter")
    def starter(ctx, target):
        try:
            start = ctx.start_orchestration("Child", target, 3)
        except ValueError as exc:
            return str(exc)
        yield start
        return "started"

    for i, target in enumerate(["sub::9", "x::sub::3"]):
        world.client.start_orchestration(f"s{i}", "Starter", target)
        st = world.result(f"s{i}")
        assert st.status == "Completed" and "reserved sub-orchestration marker 'sub::'" in st.output, st
        assert world.client.get_status(target).status == "NotFound"
    world.client.start_orchestration("s9", "Starter", "plain-target")
    assert world.result("s9").output == "started"
    world.run()
    assert world.result("plain-target").output["square"] == 9
