"""End-to-end: all / all_typed / join / race / select2 / select3 (SPEC §4, §17)."""

from __future__ import annotations

import pytest

from duroxide_sim import Either2, Either3, TaskFailedError, parse_result

from ._helpers import STYLES, events_of, pick


@pytest.fixture
def acts(world):
    @world.runtime.register_activity("Echo")
    def echo(ctx, x):
        return x

    @world.runtime.register_activity("Fail")
    def fail(ctx, msg):
        raise ValueError(msg)

    @world.runtime.register_activity("Sleep")
    def sleep(ctx, ms):
        world.clock.advance(ms)  # takes `ms` of simulated time
        return ms

    return world


@pytest.mark.parametrize("style", STYLES)
def test_all_returns_ok_and_err_entries_in_input_order(acts, style):
    """all() waits for every task; results are {"ok": v} / {"err": msg} in input order, no short-circuit."""
    world = acts

    def gen(ctx, _):
        return (yield ctx.all([
            ctx.schedule_activity("Echo", "a"),
            ctx.schedule_activity("Fail", "boom"),
            ctx.schedule_timer(500),
            ctx.schedule_activity("Echo", {"k": 1}),
        ]))

    async def coro(ctx, _):
        return await ctx.all([
            ctx.schedule_activity("Echo", "a"),
            ctx.schedule_activity("Fail", "boom"),
            ctx.schedule_timer(500),
            ctx.schedule_activity("Echo", {"k": 1}),
        ])

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [
        {"ok": "a"},
        {"err": "Activity 'Fail' call failed: ValueError: boom"},
        {"ok": None},
        {"ok": {"k": 1}},
    ]


@pytest.mark.parametrize("style", STYLES)
def test_all_order_is_input_order_not_completion_order(acts, style):
    """Results follow the list order even when later tasks finish first."""
    world = acts

    def gen(ctx, _):
        return (yield ctx.all_typed([ctx.schedule_timer(3_000), ctx.schedule_activity("Echo", 1), ctx.schedule_timer(1_000)]))

    async def coro(ctx, _):
        return await ctx.all_typed([ctx.schedule_timer(3_000), ctx.schedule_activity("Echo", 1), ctx.schedule_timer(1_000)])

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [None, 1, None]


@pytest.mark.parametrize("style", STYLES)
def test_all_typed_unwraps_ok_values(acts, style):
    """all_typed returns the plain values of a successful fan-out."""
    world = acts

    def gen(ctx, n):
        return (yield ctx.all_typed([ctx.schedule_activity("Echo", i * i) for i in range(n)]))

    async def coro(ctx, n):
        return await ctx.all_typed([ctx.schedule_activity("Echo", i * i) for i in range(n)])

    world.runtime.register_orchestration("Fan", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Fan", 20)
    assert world.result("i1").output == [i * i for i in range(20)]


def test_all_typed_keeps_err_entries(acts):
    """all_typed leaves a failed entry as {"err": msg}."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.all_typed([ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Fail", "x")]))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [1, {"err": "Activity 'Fail' call failed: ValueError: x"}]


def test_parse_result_unwraps_and_raises(acts):
    """parse_result unwraps a list of ok entries, and raises TaskFailedError for an err entry."""
    assert parse_result([{"ok": 1}, {"ok": "b"}]) == [1, "b"]
    assert parse_result({"ok": 3}) == 3
    with pytest.raises(TaskFailedError, match="nope"):
        parse_result({"err": "nope"})


def test_all_of_empty_list(acts):
    """all([]) resolves immediately with an empty list."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.all([]))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == []


@pytest.mark.parametrize("style", STYLES)
def test_join_and_join2_aliases(acts, style):
    """join(list) equals all(); join2/join3 give tuples of entries."""
    world = acts

    def gen(ctx, _):
        j = yield ctx.join([ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Echo", 2)])
        j2 = yield ctx.join2(ctx.schedule_activity("Echo", "x"), ctx.schedule_timer(5))
        j3 = yield ctx.join3(ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Fail", "f"), ctx.schedule_timer(1))
        return {"join": j, "join2": [type(j2).__name__, list(j2)], "join3": list(j3)}

    async def coro(ctx, _):
        j = await ctx.join([ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Echo", 2)])
        j2 = await ctx.join2(ctx.schedule_activity("Echo", "x"), ctx.schedule_timer(5))
        j3 = await ctx.join3(ctx.schedule_activity("Echo", 1), ctx.schedule_activity("Fail", "f"), ctx.schedule_timer(1))
        return {"join": j, "join2": [type(j2).__name__, list(j2)], "join3": list(j3)}

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == {
        "join": [{"ok": 1}, {"ok": 2}],
        "join2": ["tuple", [{"ok": "x"}, {"ok": None}]],
        "join3": [{"ok": 1}, {"err": "Activity 'Fail' call failed: ValueError: f"}, {"ok": None}],
    }


@pytest.mark.parametrize("style", STYLES)
def test_race_returns_winner_index_and_value(acts, style):
    """race(a, b) returns {"index", "value"} of the first task to complete."""
    world = acts

    def gen(ctx, _):
        return (yield ctx.race(ctx.schedule_timer(60_000), ctx.schedule_activity("Echo", "fast")))

    async def coro(ctx, _):
        return await ctx.race(ctx.schedule_timer(60_000), ctx.schedule_activity("Echo", "fast"))

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == {"index": 1, "value": "fast"}


@pytest.mark.parametrize("style", STYLES)
def test_race_timer_winner_cancels_losing_activity(acts, style):
    """When the timer wins, the losing activity gets an ActivityCancelRequested(dropped_future) breadcrumb."""
    world = acts

    def gen(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("Sleep", 10_000), ctx.schedule_timer(100)))

    async def coro(ctx, _):
        return await ctx.race(ctx.schedule_activity("Sleep", 10_000), ctx.schedule_timer(100))

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == {"index": 1, "value": None}
    sched = events_of(world, "i1", "ActivityScheduled")[0]
    crumb = events_of(world, "i1", "ActivityCancelRequested")
    assert [(c["source_event_id"], c["data"]["reason"]) for c in crumb] == [(sched["event_id"], "dropped_future")]


def test_race_failing_winner_value_is_error_text(acts):
    """A failing race winner's error text arrives as ``value`` (no error flag)."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.race(ctx.schedule_activity("Fail", "bad"), ctx.schedule_timer(60_000)))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == {"index": 0, "value": "Activity 'Fail' call failed: ValueError: bad"}


@pytest.mark.parametrize("n", [1, 3])
def test_race_requires_exactly_two_tasks(acts, n):
    """race() with other than two tasks raises 'select currently supports exactly 2 tasks'."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, count):
        tasks = [ctx.schedule_timer(1) for _ in range(count)]
        yield ctx.race(*tasks)

    world.client.start_orchestration("i1", "O", n)
    st = world.result("i1")
    assert st.status == "Failed"
    assert "select currently supports exactly 2 tasks" in st.error


def test_race_accepts_a_list_of_two(acts):
    """race([a, b]) works like race(a, b)."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.race([ctx.schedule_activity("Echo", 7), ctx.schedule_timer(10_000)]))

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == {"index": 0, "value": 7}


@pytest.mark.parametrize("style", STYLES)
def test_select2_returns_either2(acts, style):
    """select2 returns an Either2 whose index() is the winner and whose value is its result."""
    world = acts
    seen = {}

    def gen(ctx, _):
        e = yield ctx.select2(ctx.schedule_activity("Echo", "a"), ctx.schedule_timer(10_000))
        seen["e"] = e
        return [e.index(), e.value, list(e.into_tuple()), e.is_first, e.is_second]

    async def coro(ctx, _):
        e = await ctx.select2(ctx.schedule_activity("Echo", "a"), ctx.schedule_timer(10_000))
        seen["e"] = e
        return [e.index(), e.value, list(e.into_tuple()), e.is_first, e.is_second]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [0, "a", [0, "a"], True, False]
    assert isinstance(seen["e"], Either2)


def test_select2_failed_winner_sets_error(acts):
    """A failing select2 winner has value None and the error text in ``error``."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        e = yield ctx.select2(ctx.schedule_timer(10_000), ctx.schedule_activity("Fail", "z"))
        return [e.index(), e.value, e.error]

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [1, None, "Activity 'Fail' call failed: ValueError: z"]


@pytest.mark.parametrize("style", STYLES)
def test_select3_picks_earliest_of_three(acts, style):
    """select3 returns an Either3 for the earliest of three tasks."""
    world = acts

    def gen(ctx, _):
        e = yield ctx.select3(ctx.schedule_timer(3_000), ctx.schedule_timer(2_000), ctx.schedule_timer(1_000))
        return [type(e).__name__, e.index(), e.is_third]

    async def coro(ctx, _):
        e = await ctx.select3(ctx.schedule_timer(3_000), ctx.schedule_timer(2_000), ctx.schedule_timer(1_000))
        return [type(e).__name__, e.index(), e.is_third]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == ["Either3", 2, True]
    assert Either3(2, None).is_third


def test_winner_is_first_completion_in_history(acts):
    """The race winner is the task whose completion is recorded first, not the first argument."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.race(ctx.wait_for_event("a"), ctx.wait_for_event("b")))

    world.client.start_orchestration("i1", "O")
    world.run()
    world.client.raise_event("i1", "b", "B")
    world.client.raise_event("i1", "a", "A")
    assert world.result("i1").output == {"index": 1, "value": "B"}


def test_nested_join_is_rejected(acts):
    """A join or select inside all()/race() raises 'nested join/select inside ... is not supported'."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        errors = []
        for build in (
            lambda: ctx.all([ctx.all([ctx.schedule_timer(1)])]),
            lambda: ctx.race(ctx.race(ctx.schedule_timer(1), ctx.schedule_timer(2)), ctx.schedule_timer(3)),
        ):
            try:
                build()
            except TypeError as exc:
                errors.append(str(exc))
        return errors
        yield

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == [
        "nested join/select inside join is not supported",
        "nested join/select inside select is not supported",
    ]


def test_continue_as_new_inside_join_is_rejected(acts):
    """continue_as_new and detached starts cannot be joined."""
    world = acts

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            ctx.all([ctx.continue_as_new(1)])
        except TypeError as exc:
            return str(exc)
        yield

    world.client.start_orchestration("i1", "O")
    assert "not supported" in world.result("i1").output


def test_losing_activity_work_item_is_deleted(acts):
    """A race-losing activity that no worker has picked up yet is removed from the worker queue."""
    world = acts
    calls = []

    @world.runtime.register_activity("Never")
    def never(ctx, _):
        calls.append(1)

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        # the tag is served by no worker here, so the activity stays queued until cancelled
        r = yield ctx.race(ctx.schedule_timer(10), ctx.schedule_activity("Never").with_tag("nobody"))
        return r["index"]

    world.client.start_orchestration("i1", "O")
    world.run_for(5)
    assert world.client.get_queue_depths().worker_queue == 1
    assert world.result("i1").output == 0
    assert world.client.get_queue_depths().worker_queue == 0
    assert calls == []
