"""Probe: async activities in simulation (virtual-time event loop, ``sim/vloop.py``).

Every test asserts the correct behaviour. Code that may hang runs in a subprocess with a
timeout (a hang is reported as a failure, never waited out); the rest runs in a thread that is
joined with a timeout.

Written as a probe of the then-new loop; fixed with it: a thread waiting for a timer of the
loop (a queue another task fills after a sleep; run_coroutine_threadsafe back into the loop)
deadlocked the run; an activity awaiting a future nobody sets, or sleeping forever, hung it
(now it fails with VirtualLoopStuck); a simulation run from inside a running event loop failed
every async activity; trace_* lines from run_in_executor threads missed the trace. Left as
documented (README): threads started outside the loop's executor (``pool.submit`` wrapped in
``asyncio.wrap_future``, a bare ``threading.Thread`` calling back) are not waited for while a
timer is pending.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any

import attrs

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start
from duroxide_sim.sim.vloop import VirtualTimeLoop
from duroxide_sim.sim.world import ExternalWorld

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

#: Seconds a subprocess simulation may take. A correct product finishes each in well under 2 s.
_HANG_S = 5.0


# --- helpers ---------------------------------------------------------------------------------


def _spec(act: Any, n: int = 1, name: str = "probe") -> SimSpec:
    """One activity "A" (``act(ctx, x, world)``) called by a generator orchestration "O"."""

    def setup(rt: Any, world: Any) -> None:
        rt.register_activity("A", lambda ctx, x: act(ctx, x, world))

        @rt.register_orchestration("O")
        def o(ctx: Any, x: Any) -> Any:
            return (yield ctx.schedule_activity("A", x))

    return SimSpec(name=name, setup=setup, starts=[Start(instance=f"i{i}", orchestration="O", input=i) for i in range(n)])


def _guarded(fn: Any, timeout_s: float = 20.0) -> Any:
    """Run ``fn()`` in a daemon thread; fail (not hang) if it does not return in time."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), f"hang: did not finish within {timeout_s} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


_SCRIPT = """
import asyncio, concurrent.futures as cf, json, queue, sys, threading, time
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start

{body}

def setup(rt, world):
    rt.register_activity("A", lambda ctx, x: act(ctx, x, world))

    @rt.register_orchestration("O")
    def o(ctx, x):
        return (yield ctx.schedule_activity("A", x))

spec = SimSpec(name="probe", setup=setup, starts=[Start(instance="i0", orchestration="O", input=0)])
try:
    r = Simulation(spec, 1, FaultPlan.none()).run()
    st = r.statuses["i0"]
    out = {{"status": st.status, "output": getattr(st, "output", None),
           "error": (getattr(st, "error", None) or "").strip().splitlines()[-1:]}}
except BaseException as exc:
    out = {{"raised": f"{{type(exc).__name__}}: {{exc}}"}}
print("RESULT:" + json.dumps(out, default=repr), flush=True)
"""


def _isolated(body: str, timeout_s: float = _HANG_S) -> dict[str, Any] | None:
    """Run a one-activity simulation in a subprocess (``body`` defines ``async def act(ctx, x, world)``).
    Returns the instance's status as a dict, or None if it did not finish in ``timeout_s``."""
    code = _SCRIPT.format(body=textwrap.dedent(body))
    env = dict(os.environ, PYTHONPATH=_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout_s, cwd=_ROOT, env=env)
    except subprocess.TimeoutExpired:
        return None  # subprocess.run killed it
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT:")]
    assert lines, f"no result (rc={proc.returncode}); stderr:\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1][len("RESULT:"):])


def _prod(acts: dict[str, Any], calls: list[tuple[str, str, Any]], timeout_ms: int = 10_000) -> dict[str, tuple[Any, Any, Any]]:
    """Production: Runtime + InMemoryProvider on real threads. ``acts``: name -> ``act(ctx, x, world)``;
    ``calls``: (instance, activity name, input). Returns instance -> (status, output, last error line)."""
    world = ExternalWorld()
    provider = InMemoryProvider()
    rt = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5))
    for name, fn in acts.items():
        rt.register_activity(name, (lambda f: lambda ctx, x: f(ctx, x, world))(fn))

    @rt.register_orchestration("Call")
    def call(ctx: Any, arg: Any) -> Any:
        return (yield ctx.schedule_activity(arg["name"], arg["input"]))

    rt.start()
    try:
        client = Client(provider)
        for inst, name, x in calls:
            client.start_orchestration(inst, "Call", {"name": name, "input": x})
        out = {}
        for inst, _, _ in calls:
            st = client.wait_for_orchestration(inst, timeout_ms)
            out[inst] = (st.status, st.output, _last_line(st.error))
        return out
    finally:
        rt.shutdown(2_000)


def _sim_calls(acts: dict[str, Any], calls: list[tuple[str, str, Any]], seed: int = 1) -> dict[str, tuple[Any, Any, Any]]:
    def setup(rt: Any, world: Any) -> None:
        for name, fn in acts.items():
            rt.register_activity(name, (lambda f: lambda ctx, x: f(ctx, x, world))(fn))

        @rt.register_orchestration("Call")
        def call(ctx: Any, arg: Any) -> Any:
            return (yield ctx.schedule_activity(arg["name"], arg["input"]))

    spec = SimSpec(name="calls", setup=setup,
                   starts=[Start(instance=i, orchestration="Call", input={"name": n, "input": x}) for i, n, x in calls])
    r = Simulation(spec, seed, FaultPlan.none()).run()
    return {i: (r.statuses[i].status, r.statuses[i].output, _last_line(r.statuses[i].error)) for i, _, _ in calls}


def _last_line(text: str | None) -> str | None:
    return None if not text else text.strip().splitlines()[-1]


# --- defects: hangs and timeouts that production does not have --------------------------------


def test_thread_waiting_for_a_loop_timer_does_not_deadlock() -> None:
    """A to_thread consumer waits for an item a coroutine produces after a (virtual) sleep.
    Production: done in 0.1 s. The virtual loop must still fire the producer's timer while the
    thread waits (it cannot finish without it)."""
    got = _isolated("""
        async def act(ctx, x, world):
            q = queue.Queue()

            async def producer():
                await asyncio.sleep(0.1)
                q.put(41)

            _, item = await asyncio.gather(producer(), asyncio.to_thread(q.get))
            return item + 1
    """)
    assert got is not None, "hang: a to_thread worker waiting on a loop timer deadlocks the virtual loop"
    assert got == {"status": "Completed", "output": 42, "error": []}


def test_to_thread_worker_calling_back_into_the_loop_does_not_deadlock() -> None:
    """Sync code run in a thread calls back into the loop (run_coroutine_threadsafe) and the
    coroutine sleeps: production completes after 1 s; the simulation must not hang."""
    got = _isolated("""
        async def act(ctx, x, world):
            loop = asyncio.get_running_loop()

            def sync_library_call():
                return asyncio.run_coroutine_threadsafe(asyncio.sleep(1, result=7), loop).result()

            return await asyncio.to_thread(sync_library_call)
    """)
    assert got is not None, "hang: run_coroutine_threadsafe from a to_thread worker deadlocks the virtual loop"
    assert got == {"status": "Completed", "output": 7, "error": []}


def test_activity_awaiting_a_future_nobody_sets_fails_instead_of_hanging() -> None:
    """Nothing can ever wake the loop (no timer, no thread): a simulation must report it
    (the activity fails, or the run raises) instead of blocking forever in select()."""
    got = _isolated("""
        async def act(ctx, x, world):
            await asyncio.get_running_loop().create_future()
    """)
    assert got is not None, "hang: an async activity awaiting a never-set future blocks the whole simulation forever"
    assert "raised" in got or got["status"] == "Failed", got


def test_activity_sleeping_forever_does_not_hang_the_simulation() -> None:
    """``await asyncio.sleep(math.inf)`` ("serve forever"): the virtual clock steps 86,400 s at a
    time towards infinity, spinning a CPU forever. It must end (activity failed / run raised)."""
    got = _isolated("""
        async def act(ctx, x, world):
            await asyncio.sleep(float("inf"))
    """)
    assert got is not None, "hang: asyncio.sleep(inf) spins the virtual clock forever (100% CPU)"
    assert "raised" in got or got["status"] == "Failed", got


def test_simulation_can_run_from_inside_a_running_event_loop() -> None:
    """A simulation started from async code (an ``async def`` test, a notebook) must still run
    async activities: sync activities work there, async ones fail with
    "Cannot run the event loop while another loop is running"."""

    async def act(ctx: Any, x: int, world: Any) -> int:
        await asyncio.sleep(5)
        return x + 1

    async def caller() -> Any:
        return Simulation(_spec(act), 1, FaultPlan.none()).run()

    r = _guarded(lambda: asyncio.run(caller()))
    st = r.statuses["i0"]
    assert (st.status, st.output) == ("Completed", 1), st.error


def test_trace_lines_from_executor_threads_reach_the_trace() -> None:
    """``ctx.trace_*`` must reach the simulation's trace whichever thread of the activity emits
    it (README: the runtime's log lines reach the trace directly, not through ``logging``).
    Lines from ``asyncio.to_thread`` do; lines from ``loop.run_in_executor`` (default or an
    explicit pool) go to ``logging`` instead and are missing from the trace: the sink is a
    ContextVar that run_in_executor does not carry into the worker thread."""
    import logging

    async def act(ctx: Any, x: int, world: Any) -> int:
        loop = asyncio.get_running_loop()
        ctx.trace_info("line-in-loop")
        await asyncio.to_thread(ctx.trace_info, "line-to-thread")
        await loop.run_in_executor(None, ctx.trace_info, "line-default-executor")
        with cf.ThreadPoolExecutor(1) as pool:
            await loop.run_in_executor(pool, ctx.trace_info, "line-own-pool")
        return x

    leaked: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            leaked.append(record.getMessage())

    logger = logging.getLogger("duroxide_sim")
    handler, old_level = Catch(level=logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        r = _guarded(lambda: Simulation(_spec(act), 1, FaultPlan.none()).run())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    messages = [json.loads(line).get("message") for line in r.trace if '"op":"log"' in line.replace(" ", "")]
    want = ["line-in-loop", "line-to-thread", "line-default-executor", "line-own-pool"]
    assert [m for m in messages if m in want] == want, f"trace has {messages}; leaked to logging: {leaked}"
    assert not [m for m in leaked if m in want]


# --- what held ---------------------------------------------------------------------------------


def test_timing_primitives_on_virtual_time() -> None:
    async def act(ctx: Any, x: int, world: Any) -> str:
        loop = asyncio.get_running_loop()
        out: dict[str, Any] = {}
        t0 = loop.time()
        try:
            async with asyncio.timeout(5):
                await asyncio.sleep(10)
        except TimeoutError:
            out["timeout_cm"] = round(loop.time() - t0, 6)
        try:
            await asyncio.wait_for(asyncio.sleep(10), 2)
        except TimeoutError:
            out["wait_for"] = True

        async def f(d: float, fail: bool = False) -> float:
            await asyncio.sleep(d)
            if fail:
                raise RuntimeError(f"f{d}")
            return d

        tasks = [asyncio.ensure_future(f(d)) for d in (5, 2, 9)]
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        out["first"] = [t.result() for t in done]
        out["as_completed"] = [await c for c in asyncio.as_completed([f(3), f(1), f(2)])]
        out["gather"] = [repr(v) for v in await asyncio.gather(f(3), f(1, True), f(2), return_exceptions=True)]
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(f(1))
                tg.create_task(f(2, True))
                tg.create_task(f(100))
        except* RuntimeError as eg:
            out["taskgroup"] = [str(e) for e in eg.exceptions]
        fired: list[str] = []
        loop.call_at(loop.time() - 5, fired.append, "past")
        loop.call_later(3, fired.append, "later3")
        loop.call_later(1, fired.append, "later1")
        await asyncio.sleep(4)
        out["call_order"] = fired
        t1 = loop.time()
        await asyncio.sleep(1e-9)
        out["tiny"] = loop.time() - t1 > 0
        t1 = loop.time()
        await asyncio.sleep(30 * 86400)
        out["days"] = round(loop.time() - t1, 3)
        t1 = loop.time()
        await asyncio.sleep(1e9)
        out["huge"] = round(loop.time() - t1)
        world.put(f"r{x}", out)
        return "ok"

    t0 = time.perf_counter()
    r = _guarded(lambda: run_and_check(Simulation(_spec(act), 2, FaultPlan.none())))
    assert time.perf_counter() - t0 < 10
    assert r.ok, [f.render() for f in r.failures]
    assert r.world.state["r0"] == {
        "timeout_cm": 5.0, "wait_for": True, "first": [2], "as_completed": [1, 2, 3],
        "gather": ["3", "RuntimeError('f1')", "2"], "taskgroup": ["f2"],
        "call_order": ["past", "later1", "later3"], "tiny": True, "days": 30 * 86400.0, "huge": 10**9,
    }


async def _a_value_error(ctx: Any, x: Any, world: Any) -> Any:
    await asyncio.sleep(0.01)
    raise ValueError(f"boom {x}")


async def _a_wait_for_timeout(ctx: Any, x: Any, world: Any) -> Any:
    await asyncio.wait_for(asyncio.sleep(10), 0.01)


async def _a_taskgroup(ctx: Any, x: Any, world: Any) -> Any:
    async def f() -> None:
        await asyncio.sleep(0.01)
        raise KeyError("k")

    async with asyncio.TaskGroup() as tg:
        tg.create_task(f())


async def _a_self_cancel(ctx: Any, x: Any, world: Any) -> Any:
    asyncio.current_task().cancel()  # type: ignore[union-attr]
    await asyncio.sleep(0)


async def _a_system_exit(ctx: Any, x: Any, world: Any) -> Any:
    raise SystemExit(3)


async def _a_nested_asyncio_run(ctx: Any, x: Any, world: Any) -> Any:
    async def inner() -> int:
        return 1

    c = inner()
    try:
        return asyncio.run(c)
    finally:
        c.close()


async def _a_to_thread_raises(ctx: Any, x: Any, world: Any) -> Any:
    def bad() -> None:
        raise OSError(5, "io failed")

    await asyncio.to_thread(bad)


_ERROR_ACTS = {
    "ValueErr": _a_value_error, "WaitFor": _a_wait_for_timeout, "Group": _a_taskgroup, "SelfCancel": _a_self_cancel,
    "Exit": _a_system_exit, "NestedRun": _a_nested_asyncio_run, "ThreadRaises": _a_to_thread_raises,
}


def test_async_activity_errors_read_as_in_production() -> None:
    calls = [(f"e-{n}", n, 1) for n in _ERROR_ACTS]
    sim = _guarded(lambda: _sim_calls(_ERROR_ACTS, calls))
    prod = _guarded(lambda: _prod(_ERROR_ACTS, calls))
    assert sim == prod
    assert sim["e-ValueErr"] == ("Failed", None, "Exception: Activity 'ValueErr' call failed: ValueError: boom 1")


@attrs.define
class Order:
    oid: str
    qty: int


@attrs.define
class Receipt:
    oid: str
    total: float
    waited: float


def _typed_spec() -> SimSpec:
    def setup(rt: Any, world: Any) -> None:
        @rt.register_activity_typed("Price")
        async def price(ctx: Any, order: Order) -> Receipt:
            assert isinstance(order, Order)
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            await asyncio.sleep(order.qty * 60)
            total = await asyncio.to_thread(lambda: order.qty * 2.5)
            if world.put_if_absent(f"priced:{order.oid}", total):
                world.append("priced", order.oid)
            return Receipt(order.oid, total, round(loop.time() - t0, 6))

        @rt.register_orchestration_typed("Checkout")
        async def checkout(ctx: Any, order: Order) -> Any:
            r = await ctx.schedule_activity_typed("Price", order, result_type=Receipt)
            assert isinstance(r, Receipt)
            await ctx.schedule_timer(1_000)
            return {"total": r.total, "waited": r.waited}

    return SimSpec(name="typed-async", setup=setup,
                   starts=[Start(instance=f"c{i}", orchestration="Checkout", input=Order(f"o{i}", i + 1)) for i in range(4)])


def test_typed_async_activity_async_orchestration_sandbox_under_faults() -> None:
    spec = _typed_spec()

    def runs() -> list[Any]:
        return [run_and_check(Simulation(spec, seed, FaultPlan.all(0.05), sandbox=True)) for seed in range(5)]

    for r in _guarded(runs):
        assert r.ok, [f.render() for f in r.failures]
        assert {k: s.output for k, s in r.statuses.items()} == {
            f"c{i}": {"total": (i + 1) * 2.5, "waited": (i + 1) * 60.0} for i in range(4)}


def test_same_seed_same_trace_with_threads_and_timers() -> None:
    spec = _typed_spec()
    a, b = _guarded(lambda: (Simulation(spec, 11, FaultPlan.all(0.05)).run(), Simulation(spec, 11, FaultPlan.all(0.05)).run()))
    assert a.faults_injected  # faults did fire
    assert a.trace == b.trace


def test_single_fault_kinds_with_effectful_async_activity() -> None:
    async def act(ctx: Any, x: int, world: Any) -> int:
        await asyncio.sleep(2)
        v = await asyncio.to_thread(lambda: x * 3)
        if world.put_if_absent(f"k{x}", v):
            world.incr("count")
        return v

    spec = _spec(act, 3)

    def runs() -> list[Any]:
        return [run_and_check(Simulation(spec, s, FaultPlan.only(kind, rate=0.3)))
                for kind in ("crash_after_effect", "lock_expiry", "duplicate", "crash", "reorder") for s in range(2)]

    for r in _guarded(runs, 30):
        assert r.ok, [f.render() for f in r.failures]
        if not r.budget_exhausted:  # (lock expiry at this rate can poison an instance: legitimate)
            assert r.world.state["count"] == 3


def test_leftover_tasks_and_async_generators_are_finalized_inside_the_activity() -> None:
    async def act(ctx: Any, x: int, world: Any) -> int:
        async def forever() -> None:
            try:
                await asyncio.sleep(10**6)
            except asyncio.CancelledError:
                world.put(f"cancelled:{x}", True)
                raise

        async def gen() -> Any:
            try:
                yield 1
                yield 2
            finally:
                world.put(f"agen_closed:{x}", True)

        asyncio.get_running_loop().create_task(forever())
        async for v in gen():
            return v
        return -1

    def go() -> Any:
        return Simulation(_spec(act), 1, FaultPlan.none()).run()

    r = _guarded(go)
    assert r.statuses["i0"].output == 1
    assert r.world.state == {"cancelled:0": True, "agen_closed:0": True}
    # effects made while the loop shuts down are still attributed to the activity
    assert {e.activity for e in r.world.ledger} == {"A"}


def test_no_fd_or_thread_leak_and_explicit_executors() -> None:
    async def act(ctx: Any, x: int, world: Any) -> list[int]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(1)
        with cf.ThreadPoolExecutor(2) as pool:
            a = await asyncio.wait_for(loop.run_in_executor(pool, lambda: (time.sleep(0.002), x)[1]), 1)
        b = await asyncio.wait_for(asyncio.to_thread(lambda: x + 1), 1)
        return [a, b]

    def nfd() -> int:
        return len(os.listdir("/proc/self/fd"))

    def go() -> Any:
        Simulation(_spec(act, 2), 1, FaultPlan.none()).run()  # warm up (imports)
        fds, threads = nfd(), threading.active_count()
        r = Simulation(_spec(act, 60), 1, FaultPlan.none()).run()
        return r, nfd() - fds, threading.active_count() - threads

    r, dfd, dthreads = _guarded(go)
    assert all(s.output == [int(k[1:]), int(k[1:]) + 1] for k, s in r.statuses.items())
    assert dfd <= 0 and dthreads <= 0


def test_process_pool_executor_in_async_activity() -> None:
    got = _isolated("""
        async def act(ctx, x, world):
            loop = asyncio.get_running_loop()
            with cf.ProcessPoolExecutor(1) as pool:
                return await asyncio.wait_for(loop.run_in_executor(pool, abs, -5), 1)
    """, timeout_s=15)
    assert got == {"status": "Completed", "output": 5, "error": []}


def test_production_runtime_still_takes_real_time() -> None:
    async def act(ctx: Any, x: Any, world: Any) -> list[Any]:
        loop = asyncio.get_running_loop()
        t = time.perf_counter()
        await asyncio.sleep(0.05)
        return [isinstance(loop, VirtualTimeLoop), time.perf_counter() - t]

    out = _guarded(lambda: _prod({"Sleep": act}, [("p0", "Sleep", None)]))
    status, (virtual, took), _ = out["p0"]
    assert status == "Completed" and virtual is False and took >= 0.045
