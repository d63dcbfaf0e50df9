"""End-to-end: durable timers, utc_now/new_guid system calls and replay-safe logging (SPEC §5)."""

from __future__ import annotations

import re

import pytest

from ._helpers import STYLES, events_of, kinds, pick

DAY_MS = 24 * 60 * 60 * 1000


@pytest.mark.parametrize("style", STYLES)
def test_timer_resolves_with_none_after_delay(world, style):
    """A timer resolves with None once the clock reaches fire_at = now + delay."""

    def gen(ctx, _):
        value = yield ctx.schedule_timer(5_000)
        return {"value": value}

    async def coro(ctx, _):
        value = await ctx.schedule_timer(5_000)
        return {"value": value}

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    t0 = world.clock.now_ms()
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == {"value": None}
    created = events_of(world, "i1", "TimerCreated")
    fired = events_of(world, "i1", "TimerFired")
    assert created[0]["data"]["fireAtMs"] == t0 + 5_000
    assert created[0]["data"]["fireAtMs"] - created[0]["timestamp_ms"] == 5_000
    assert fired[0]["source_event_id"] == created[0]["event_id"]
    assert fired[0]["timestamp_ms"] >= t0 + 5_000


@pytest.mark.parametrize("style", STYLES)
def test_thirty_day_timer_completes_on_sim_clock(world, style):
    """A 30-day durable timer completes (instantly in wall time) with the clock 30 days later."""

    @world.runtime.register_activity("Now")
    def now(ctx, _):
        return world.clock.now_ms()

    def gen(ctx, _):
        before = yield ctx.schedule_activity("Now")
        yield ctx.schedule_timer(30 * DAY_MS)
        after = yield ctx.schedule_activity("Now")
        return after - before

    async def coro(ctx, _):
        before = await ctx.schedule_activity("Now")
        await ctx.schedule_timer(30 * DAY_MS)
        after = await ctx.schedule_activity("Now")
        return after - before

    world.runtime.register_orchestration("Month", pick(style, gen, coro))
    world.client.start_orchestration("i1", "Month")
    st = world.result("i1")
    assert st.status == "Completed"
    assert st.output >= 30 * DAY_MS


def test_timer_not_fired_before_due(world):
    """Until its fire time, a timer keeps the instance Running."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_timer(60_000)
        return "woke"

    world.client.start_orchestration("i1", "O")
    world.run_for(59_000)
    assert world.client.get_status("i1").status == "Running"
    assert "TimerFired" not in kinds(world, "i1")
    world.run_for(2_000)
    assert world.client.get_status("i1").output == "woke"


def test_zero_delay_timer(world):
    """A zero-delay timer is valid and fires right away."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_timer(0)
        return "done"

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "done"


def test_timers_fire_in_due_order(world):
    """Concurrent timers complete in fire-time order, not creation order."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        slow = ctx.schedule_timer(3_000)
        fast = ctx.schedule_timer(1_000)
        first = yield ctx.race(slow, fast)
        return first["index"]

    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == 1


@pytest.mark.parametrize("delay", [-1, 1.5, "10", True])
def test_invalid_timer_delay_fails_orchestration(world, delay):
    """A negative or non-integer delay raises TypeError in the orchestration (failing it if uncaught)."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, d):
        yield ctx.schedule_timer(d)

    world.client.start_orchestration("i1", "O", delay)
    st = world.result("i1")
    assert st.status == "Failed"
    assert "TypeError" in st.error and "schedule_timer" in st.error


@pytest.mark.parametrize("style", STYLES)
def test_utc_now_is_deterministic_across_replay(replay_world, style):
    """utc_now returns the clock at first execution and the same value on every later replay."""
    world = replay_world  # the instance cache is off: every turn replays from scratch
    seen = []

    def gen(ctx, _):
        t1 = yield ctx.utc_now()
        seen.append(t1)
        yield ctx.schedule_timer(10_000)
        t2 = yield ctx.utc_now()
        seen.append(t2)
        yield ctx.schedule_timer(10_000)
        return [t1, t2]

    async def coro(ctx, _):
        t1 = await ctx.utc_now()
        seen.append(t1)
        await ctx.schedule_timer(10_000)
        t2 = await ctx.utc_now()
        seen.append(t2)
        await ctx.schedule_timer(10_000)
        return [t1, t2]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    start = world.clock.now_ms()
    world.client.start_orchestration("i1", "O")
    t1, t2 = world.result("i1").output
    assert isinstance(t1, int) and isinstance(t2, int)
    assert t1 == start
    assert t2 >= t1 + 10_000
    # the code replayed on several turns, always seeing the recorded values
    assert seen.count(t1) >= 3 and seen.count(t2) >= 2
    assert set(seen) == {t1, t2}
    # system calls are activities with reserved names
    names = [e["data"]["name"] for e in events_of(world, "i1", "ActivityScheduled")]
    assert names == ["__duroxide_syscall:utc_now_ms"] * 2


@pytest.mark.parametrize("style", STYLES)
def test_new_guid_is_deterministic_across_replay(replay_world, style):
    """new_guid returns distinct UUID-shaped strings, each stable across replays."""
    world = replay_world  # the instance cache is off: every turn replays from scratch
    seen = []

    def gen(ctx, _):
        a = yield ctx.new_guid()
        seen.append(a)
        yield ctx.schedule_timer(1_000)
        b = yield ctx.new_guid()
        seen.append(b)
        yield ctx.schedule_timer(1_000)
        return [a, b]

    async def coro(ctx, _):
        a = await ctx.new_guid()
        seen.append(a)
        await ctx.schedule_timer(1_000)
        b = await ctx.new_guid()
        seen.append(b)
        await ctx.schedule_timer(1_000)
        return [a, b]

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    a, b = world.result("i1").output
    uuid_re = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
    assert uuid_re.match(a) and uuid_re.match(b)
    assert a != b
    assert seen.count(a) >= 3 and seen.count(b) >= 2
    assert set(seen) == {a, b}


@pytest.mark.parametrize("style", STYLES)
def test_trace_info_logged_once_despite_replays(world, style, caplog):
    """trace_* messages are emitted once each even though the code replays over several turns."""

    @world.runtime.register_activity("Step")
    def step(ctx, x):
        return x

    def gen(ctx, _):
        ctx.trace_info("start")
        for i in range(3):
            yield ctx.schedule_activity("Step", i)
            ctx.trace_info(f"step {i} done")
        ctx.trace_warn("warned")
        ctx.trace_error("errored")
        return "ok"

    async def coro(ctx, _):
        ctx.trace_info("start")
        for i in range(3):
            await ctx.schedule_activity("Step", i)
            ctx.trace_info(f"step {i} done")
        ctx.trace_warn("warned")
        ctx.trace_error("errored")
        return "ok"

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    caplog.set_level("DEBUG", logger="duroxide_sim.orchestration")
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "ok"
    records = [r for r in caplog.records if r.name == "duroxide_sim.orchestration"]
    assert [r.getMessage() for r in records] == ["start", "step 0 done", "step 1 done", "step 2 done", "warned", "errored"]
    assert [r.levelname for r in records][-2:] == ["WARNING", "ERROR"]


def test_trace_with_level_and_debug(world, caplog):
    """``trace(level, msg)`` and ``trace_debug`` log at the given level; unknown levels raise ValueError."""

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        ctx.trace("warn", "via trace")
        ctx.trace_debug("dbg")
        try:
            ctx.trace("loud", "x")
        except ValueError:
            return "rejected"
        yield ctx.schedule_timer(1)

    caplog.set_level("DEBUG", logger="duroxide_sim.orchestration")
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == "rejected"
    got = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "duroxide_sim.orchestration"]
    assert got == [("WARNING", "via trace"), ("DEBUG", "dbg")]


@pytest.mark.parametrize("style", STYLES)
def test_is_replaying_true_only_on_replayed_steps(replay_world, style):
    """is_replaying() is False on the first turn, True while re-executing recorded steps."""
    world = replay_world  # the instance cache is off: every turn replays from scratch
    observed = []

    def gen(ctx, _):
        observed.append(("before", ctx.is_replaying()))
        yield ctx.schedule_timer(1)
        observed.append(("after", ctx.is_replaying()))
        yield ctx.schedule_timer(1)
        return None

    async def coro(ctx, _):
        observed.append(("before", ctx.is_replaying()))
        await ctx.schedule_timer(1)
        observed.append(("after", ctx.is_replaying()))
        await ctx.schedule_timer(1)
        return None

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    world.result("i1")
    assert observed == [
        ("before", False),  # turn 1
        ("before", True), ("after", False),  # turn 2
        ("before", True), ("after", True),  # turn 3
    ]


@pytest.mark.parametrize("style", STYLES)
def test_utc_now_difference_equals_timer_delay(world, style):
    """Two utc_now calls around a one-day timer differ by exactly the delay on the simulated clock."""

    def gen(ctx, _):
        a = yield ctx.utc_now()
        yield ctx.schedule_timer(DAY_MS)
        b = yield ctx.utc_now()
        return b - a

    async def coro(ctx, _):
        a = await ctx.utc_now()
        await ctx.schedule_timer(DAY_MS)
        b = await ctx.utc_now()
        return b - a

    world.runtime.register_orchestration("O", pick(style, gen, coro))
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == DAY_MS


def test_finally_block_logs_once(world, caplog):
    """A trace in a ``finally`` block is logged once, when the orchestration really finishes."""
    import gc

    @world.runtime.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_timer(1)
            yield ctx.schedule_timer(1)
        finally:
            ctx.trace_info("cleanup")
        return 1

    caplog.set_level("INFO", logger="duroxide_sim.orchestration")
    world.client.start_orchestration("i1", "O")
    assert world.result("i1").output == 1
    gc.collect()
    assert [r.getMessage() for r in caplog.records if r.name == "duroxide_sim.orchestration"] == ["cleanup"]
