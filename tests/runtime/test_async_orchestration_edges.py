"""``async def`` orchestrations in edge cases (a probe written in session 9, kept), compared with the same code in generator style
(SPEC §3.4-3.8, §4, §8, §17; README "async def").

Every scenario runs in ``world`` (instance cache on) and ``replay_world`` (every turn replays
from scratch); the two must agree, and the async form must behave like the generator form or
fail with an error naming the problem. Found and fixed (those tests failed before): awaiting a
race's loser later left the instance Running for ever (both styles; now an error at the await);
asyncio.sleep / create_task / wait_for failed with "no running event loop", and gather /
ensure_future / Future() installed an event loop in the dispatcher's thread (asyncio's running
loop is now a guard during polls that names the problem).
"""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _setup(w):
    w.runtime.register_activity("Echo", lambda ctx, x: x)

    def fail(ctx, msg):
        raise ValueError(msg)

    w.runtime.register_activity("Fail", fail)


def _run(w, fn, inp=None, cancel_after_ms=None, name="O"):
    if w.runtime.registry.activity("Echo") is None:
        _setup(w)
    w.runtime.register_orchestration(name, fn)
    inst = f"i-{name}"
    w.client.start_orchestration(inst, name, inp)
    if cancel_after_ms is not None:
        w.run_for(cancel_after_ms)
        w.client.cancel_instance(inst, "stop")
    w.run()
    st = w.client.get_status(inst)
    return st.status, st.output, st.error, st.custom_status


def _both(world, replay_world, fn, **kw):
    """Run ``fn`` in the cached and the replay-only world; they must agree."""
    a = _run(world, fn, **kw)
    b = _run(replay_world, fn, **kw)
    assert a == b, f"cache and replay disagree:\n  cached: {a}\n  replay: {b}"
    return a


def _parity(world, replay_world, gen, coro, **kw):
    """The generator and the async form (registered under different names) give one outcome."""
    g = _both(world, replay_world, gen, name="G", **kw)
    a = _both(world, replay_world, coro, name="A", **kw)

    def norm(o):  # tracebacks name the function/line: compare the last line only
        status, out, err, cs = o
        return status, out, (err.splitlines()[-1] if err else err), cs

    assert norm(g) == norm(a), f"generator and async disagree:\n  gen:   {g}\n  async: {a}"
    return a


def _last_line(outcome):
    status, _, error, _ = outcome
    assert status == "Failed", outcome
    return error.splitlines()[-1]


_GC_NOISE = pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning", "ignore::RuntimeWarning", "ignore::ResourceWarning",
    "ignore::DeprecationWarning",
)


class ProbeError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# try / except / finally around awaits
# ---------------------------------------------------------------------------------------------


@_GC_NOISE
def test_caught_activity_failure_then_awaiting_finally_cleanup(world, replay_world):
    def gen(ctx, _):
        r = None
        try:
            yield ctx.schedule_activity("Fail", "boom")
        except Exception as e:
            ctx.set_custom_status("caught:" + str(e))
            r = yield ctx.schedule_activity("Echo", "recovered")
        finally:
            c = yield ctx.schedule_activity("Echo", "cleanup")
            ctx.set_custom_status(ctx.get_custom_status() + "|" + c)
        return r

    async def coro(ctx, _):
        r = None
        try:
            await ctx.schedule_activity("Fail", "boom")
        except Exception as e:
            ctx.set_custom_status("caught:" + str(e))
            r = await ctx.schedule_activity("Echo", "recovered")
        finally:
            c = await ctx.schedule_activity("Echo", "cleanup")
            ctx.set_custom_status(ctx.get_custom_status() + "|" + c)
        return r

    out = _parity(world, replay_world, gen, coro)
    assert out == ("Completed", "recovered", None, "caught:Activity 'Fail' call failed: ValueError: boom|cleanup")


@_GC_NOISE
def test_uncaught_failure_runs_an_awaiting_finally_then_fails_with_the_original_error(world, replay_world):
    def gen(ctx, _):
        try:
            yield ctx.schedule_activity("Fail", "boom")
        finally:
            ctx.set_custom_status((yield ctx.schedule_activity("Echo", "cleanup")))

    async def coro(ctx, _):
        try:
            await ctx.schedule_activity("Fail", "boom")
        finally:
            ctx.set_custom_status(await ctx.schedule_activity("Echo", "cleanup"))

    out = _parity(world, replay_world, gen, coro)
    assert _last_line(out) == "Exception: Activity 'Fail' call failed: ValueError: boom"
    assert out[3] == "cleanup"


@_GC_NOISE
def test_finally_on_cancellation_runs_only_as_replay_and_changes_nothing(world, replay_world):
    seen: list = []

    def gen(ctx, _):
        try:
            yield ctx.schedule_timer(60_000)
            return "late"
        finally:
            seen.append(("g", ctx.is_replaying()))

    async def coro(ctx, _):
        try:
            await ctx.schedule_timer(60_000)
            return "late"
        finally:
            seen.append(("a", ctx.is_replaying()))

    out = _parity(world, replay_world, gen, coro, cancel_after_ms=100)
    assert out[:3] == ("Failed", None, "canceled: stop")
    gc.collect()
    assert all(live is True for _, live in seen), seen
    assert sorted({s for s, _ in seen}) == ["a", "g"]


# ---------------------------------------------------------------------------------------------
# tasks created earlier, awaited later / twice; all / race results
# ---------------------------------------------------------------------------------------------


def test_tasks_created_early_awaited_out_of_order_and_twice(world, replay_world):
    def gen(ctx, _):
        a = ctx.schedule_activity("Echo", "a")
        b = ctx.schedule_activity("Echo", "b")
        t = ctx.schedule_timer(5)
        y = yield b
        yield t
        x = yield a
        x2 = yield a
        j = ctx.all([a, b, ctx.schedule_activity("Fail", "f")])
        r1 = yield j
        r2 = yield j
        race = yield ctx.race(ctx.schedule_timer(10_000), a)
        return [x, y, x2, r1, r1 == r2, race]

    async def coro(ctx, _):
        a = ctx.schedule_activity("Echo", "a")
        b = ctx.schedule_activity("Echo", "b")
        t = ctx.schedule_timer(5)
        y = await b
        await t
        x = await a
        x2 = await a
        j = ctx.all([a, b, ctx.schedule_activity("Fail", "f")])
        r1 = await j
        r2 = await j
        race = await ctx.race(ctx.schedule_timer(10_000), a)
        return [x, y, x2, r1, r1 == r2, race]

    out = _parity(world, replay_world, gen, coro)
    assert out[0] == "Completed", out
    assert out[1] == ["a", "b", "a", [{"ok": "a"}, {"ok": "b"}, {"err": "Activity 'Fail' call failed: ValueError: f"}],
                      True, {"index": 1, "value": "a"}]
    n_sched = [e["kind"] for e in world.client.read_execution_history("i-A", 1)].count("ActivityScheduled")
    assert n_sched == 3


@_GC_NOISE
def test_nested_coroutines_created_early_awaited_later(world, replay_world):
    def gen(ctx, _):
        def h(n):
            return (yield ctx.schedule_activity("Echo", n))
        g1, g2 = h(1), h(2)
        r2 = yield from g2
        r1 = yield from g1
        return [r1, r2]

    async def coro(ctx, _):
        async def h(n):
            return await ctx.schedule_activity("Echo", n)
        c1, c2 = h(1), h(2)
        r2 = await c2
        r1 = await c1
        return [r1, r2]

    assert _parity(world, replay_world, gen, coro)[:2] == ("Completed", [1, 2])


@_GC_NOISE
@pytest.mark.parametrize("loser", ["timer", "wait"])
def test_awaiting_a_race_loser_later_does_not_hang_silently(world, replay_world, loser):
    """A race loser is dropped (SPEC §4). Awaiting it afterwards must not leave the instance
    Running forever with nothing to wake it: either hand over its (late) result or fail naming
    the problem. Today a dropped timer's TimerFired is recorded but the waiting code is never
    resumed, and a dropped wait never completes."""
    def gen(ctx, _):
        t = ctx.schedule_timer(10_000) if loser == "timer" else ctx.wait_for_event("E")
        other = ctx.schedule_activity("Echo", "a") if loser == "timer" else ctx.schedule_timer(5)
        r = yield ctx.race(t, other)
        x = yield t
        return [r, x]

    async def coro(ctx, _):
        t = ctx.schedule_timer(10_000) if loser == "timer" else ctx.wait_for_event("E")
        other = ctx.schedule_activity("Echo", "a") if loser == "timer" else ctx.schedule_timer(5)
        r = await ctx.race(t, other)
        x = await t
        return [r, x]

    for w in (world, replay_world):
        _setup(w)
        for name, fn in (("G", gen), ("A", coro)):
            w.runtime.register_orchestration(name, fn)
            w.client.start_orchestration(name, name, None)
            w.run()
            w.client.raise_event(name, "E", "data")
            w.run()
            st = w.client.get_status(name)
            kinds = [e["kind"] for e in w.client.read_execution_history(name, 1)]
            assert st.status != "Running", f"{name}: awaiting the dropped {loser} hangs; history {kinds}"


# ---------------------------------------------------------------------------------------------
# async with / async for; misuse
# ---------------------------------------------------------------------------------------------


class _ACM:
    def __init__(self, ctx):
        self.ctx = ctx

    async def __aenter__(self):
        return await self.ctx.schedule_activity("Echo", "enter")

    async def __aexit__(self, *exc):
        self.ctx.set_custom_status(await self.ctx.schedule_activity("Echo", "exit"))


@_GC_NOISE
def test_async_generators_and_context_managers_awaiting_durable_tasks_work(world, replay_world):
    async def coro(ctx, _):
        async def agen():
            try:
                for i in range(4):
                    yield await ctx.schedule_activity("Echo", i)
            finally:
                ctx.trace_info("agen closed")
        got = []
        async for v in agen():
            if v == 2:
                break
            got.append(v)
        async with _ACM(ctx) as e:
            body = await ctx.schedule_activity("Echo", e + "-body")
        return [got, body]

    assert _both(world, replay_world, coro) == ("Completed", [[0, 1], "enter-body"], None, "exit")


@pytest.mark.parametrize("what", ["async_with", "async_for", "with"])
def test_async_with_and_async_for_on_tasks_fail_clearly(world, replay_world, what):
    async def coro(ctx, _):
        t = ctx.schedule_activity("Echo", 1)
        if what == "async_with":
            async with t:
                pass
        elif what == "async_for":
            async for _x in ctx.all([t]):
                pass
        else:
            with t:
                pass

    last = _last_line(_both(world, replay_world, coro))
    assert last.startswith("TypeError:") and ("ActivityTask" in last or "AllTask" in last), last


# ---------------------------------------------------------------------------------------------
# asyncio primitives must fail with a clear error naming the problem
# ---------------------------------------------------------------------------------------------


def _asyncio_case(what):
    async def coro(ctx, _):
        act = ctx.schedule_activity("Echo", 1)
        if what == "sleep1":
            await asyncio.sleep(1)
        elif what == "create_task":
            await asyncio.create_task(asyncio.sleep(0))
        elif what == "wait_for":
            await asyncio.wait_for(act, 5)
        elif what == "gather":
            await asyncio.gather(act)
        elif what == "ensure_future":
            await asyncio.ensure_future(act)
        elif what == "future":
            await asyncio.Future()
        return "not reached"

    return coro


@_GC_NOISE
@pytest.mark.parametrize("what", ["sleep1", "create_task", "wait_for", "gather", "ensure_future", "future"])
def test_awaiting_asyncio_primitives_fails_naming_the_problem(world, replay_world, what):
    """asyncio inside an orchestration is not durable; the error should say so (as it does for
    asyncio.sleep(0), an asyncio.Future and asyncio.gather), not "no running event loop" - which
    reads as if the user should start a loop."""
    last = _last_line(_both(world, replay_world, _asyncio_case(what)))
    assert "not durable" in last, last


@_GC_NOISE
@pytest.mark.parametrize("what", ["gather", "ensure_future", "future"])
def test_asyncio_in_orchestration_code_leaves_no_event_loop_installed_in_the_dispatcher_thread(world, what):
    """In the simulator orchestration code runs in the main thread, where asyncio.gather /
    ensure_future / Future() silently create and install a new event loop (never closed, holding
    a pending Task). In production (dispatcher thread) the same code fails with "There is no
    current event loop in thread 'duroxide-orch-0'" instead - the simulation does not model the
    production failure, and leaks a loop into the host process."""
    old_policy = asyncio.get_event_loop_policy()
    asyncio.set_event_loop_policy(asyncio.DefaultEventLoopPolicy())  # as in a fresh process
    try:
        out = _run(world, _asyncio_case(what))
        assert out[0] == "Failed"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            leaked = asyncio.get_event_loop_policy()._local._loop  # noqa: SLF001
        assert leaked is None, f"orchestration code installed an event loop in the thread: {leaked!r}"
    finally:
        loop = asyncio.get_event_loop_policy()._local._loop  # noqa: SLF001
        if loop is not None:
            loop.close()
        asyncio.set_event_loop_policy(old_policy)


# ---------------------------------------------------------------------------------------------
# returning an un-awaited coroutine; custom exceptions
# ---------------------------------------------------------------------------------------------


@_GC_NOISE
def test_returning_an_unawaited_coroutine_fails_naming_coroutine(world, replay_world):
    async def helper(ctx):
        return await ctx.schedule_activity("Echo", 1)

    async def coro(ctx, _):
        return helper(ctx)

    out = _both(world, replay_world, coro)
    assert out[0] == "Failed" and "coroutine" in out[2], out
    assert "ActivityScheduled" not in [e["kind"] for e in world.client.read_execution_history("i-O", 1)]


def test_plain_function_returning_a_coroutine_is_driven(world, replay_world):
    async def helper(ctx, x):
        return await ctx.schedule_activity("Echo", x)

    def orch(ctx, x):
        return helper(ctx, x)

    assert _both(world, replay_world, orch, inp=7)[:2] == ("Completed", 7)


@_GC_NOISE
def test_custom_exception_text_matches_generator_style(world, replay_world):
    def gen(ctx, _):
        def inner():
            yield ctx.schedule_activity("Echo", 1)
            raise ProbeError("custom text")
        try:
            yield ctx.schedule_activity("Fail", "x")
        except Exception:
            yield from inner()

    async def coro(ctx, _):
        async def inner():
            await ctx.schedule_activity("Echo", 1)
            raise ProbeError("custom text")
        try:
            await ctx.schedule_activity("Fail", "x")
        except Exception:
            await inner()

    out = _parity(world, replay_world, gen, coro)
    assert _last_line(out) == f"{__name__}.ProbeError: custom text"
    assert "in inner" in out[2]


# ---------------------------------------------------------------------------------------------
# recursion, many awaits
# ---------------------------------------------------------------------------------------------


def test_async_recursion_past_the_limit_fails_with_a_short_recursion_error(world, replay_world):
    async def coro(ctx, n):
        async def rec(k):
            if k == 0:
                return await ctx.schedule_activity("Echo", "leaf")
            return await rec(k - 1)
        return await rec(n)

    out = _both(world, replay_world, coro, inp=5_000)
    assert _last_line(out).startswith("RecursionError"), out
    assert len(out[2]) < 10_000


def test_thousands_of_awaits_in_one_execution(world, replay_world):
    def gen(ctx, n):
        done = ctx.schedule_activity("Echo", 1)
        s = 0
        for _ in range(n):
            s += yield done
        for i in range(200):
            s += yield ctx.schedule_activity("Echo", i)
        for _ in range(100):
            yield ctx.utc_now()
        return s

    async def coro(ctx, n):
        done = ctx.schedule_activity("Echo", 1)
        s = 0
        for _ in range(n):
            s += await done
        for i in range(200):
            s += await ctx.schedule_activity("Echo", i)
        for _ in range(100):
            await ctx.utc_now()
        return s

    assert _parity(world, replay_world, gen, coro, inp=5_000)[:2] == ("Completed", 5_000 + sum(range(200)))


# ---------------------------------------------------------------------------------------------
# continue-as-new from a nested helper
# ---------------------------------------------------------------------------------------------


@_GC_NOISE
def test_continue_as_new_from_a_nested_helper(world, replay_world):
    def gen(ctx, n):
        def helper(n):
            try:
                yield ctx.schedule_activity("Echo", n)
                if n < 3:
                    yield ctx.continue_as_new(n + 1)
                return n
            finally:
                ctx.set_custom_status(f"fin{n}")
        return (yield from helper(n))

    async def coro(ctx, n):
        async def helper(n):
            try:
                await ctx.schedule_activity("Echo", n)
                if n < 3:
                    await ctx.continue_as_new(n + 1)
                return n
            finally:
                ctx.set_custom_status(f"fin{n}")
        return await helper(n)

    async def coro_returned(ctx, n):
        async def helper(n):
            await ctx.schedule_activity("Echo", n)
            if n < 3:
                return ctx.continue_as_new(n + 1)
            return n
        return await helper(n)

    out = _parity(world, replay_world, gen, coro, inp=0)
    assert out[:2] == ("Completed", 3)
    assert world.client.list_executions("i-A") == [1, 2, 3, 4]
    assert _both(world, replay_world, coro_returned, inp=0, name="R")[:2] == ("Completed", 3)


# ---------------------------------------------------------------------------------------------
# determinism under the simulator with faults
# ---------------------------------------------------------------------------------------------


def _sim_setup(rt, world):
    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("AEcho")
    async def aecho(ctx, x):
        await asyncio.sleep(0.01)
        return x

    @rt.register_activity("Fail")
    def fail(ctx, msg):
        raise ValueError(msg)

    async def a_body(ctx, n):
        async def agen():
            for i in range(3):
                yield await ctx.schedule_activity("AEcho", i)
        got = [v async for v in agen()]
        try:
            await ctx.schedule_activity("Fail", "x")
        except Exception as e:
            got.append(str(e)[:8])
        finally:
            async with _ACM(ctx) as e:
                got.append(e)
        early = ctx.schedule_activity("Echo", "early")
        j = await ctx.all([ctx.schedule_activity("Echo", n), ctx.schedule_timer(3)])
        e2 = await early
        r = await ctx.race(ctx.schedule_timer(50_000), early)
        got += [j, r, e2]
        return got

    def g_body(ctx, n):
        def agen():
            out = []
            for i in range(3):
                out.append((yield ctx.schedule_activity("AEcho", i)))
            return out
        got = yield from agen()
        try:
            yield ctx.schedule_activity("Fail", "x")
        except Exception as e:
            got.append(str(e)[:8])
        finally:
            e = yield ctx.schedule_activity("Echo", "enter")
            got.append(e)
            ctx.set_custom_status((yield ctx.schedule_activity("Echo", "exit")))
        early = ctx.schedule_activity("Echo", "early")
        j = yield ctx.all([ctx.schedule_activity("Echo", n), ctx.schedule_timer(3)])
        e2 = yield early
        r = yield ctx.race(ctx.schedule_timer(50_000), early)
        got += [j, r, e2]
        return got

    @rt.register_orchestration("A")
    async def a(ctx, n):
        async def step(n):
            got = await a_body(ctx, n)
            if n < 2:
                await ctx.continue_as_new(n + 1)
            return got
        return await step(n)

    @rt.register_orchestration("G")
    def g(ctx, n):
        def step(n):
            got = yield from g_body(ctx, n)
            if n < 2:
                yield ctx.continue_as_new(n + 1)
            return got
        return (yield from step(n))


@_GC_NOISE
def test_async_and_generator_workflows_pass_every_checker_under_faults():
    spec = SimSpec(name="async-probe", setup=_sim_setup,
                   starts=[Start(instance=f"{k}{i}", orchestration=k, input=0) for k in ("A", "G") for i in range(2)])
    expected = [0, 1, 2, "Activity", "enter", [{"ok": 2}, {"ok": None}], {"index": 1, "value": "early"}, "early"]
    for seed in range(3):
        r = run_and_check(Simulation(spec, seed, FaultPlan.all(0.05)))
        assert r.ok, "\n".join(f.render() for f in r.failures)
        assert r.outputs() == {f"{k}{i}": ("Completed", expected) for k in ("A", "G") for i in range(2)}
