"""The production runtime (threads, wall clock, SQLite) as users meet it: async activities,
activity cancellation and its grace period, per-attempt timeouts, shutdown, restarts, client
waits.

Found by a probe in session 6 and fixed: an ``asyncio.CancelledError`` escaping an async
activity wedged its work item until poison; the cancellation grace period was never enforced (an
async activity ignoring cancellation held its worker forever); ``shutdown(timeout)`` left async
activities running and committing after it returned; per-thread event loops were never closed
(stray executor threads, "unclosed event loop" warnings); a task left behind by one async
activity resumed inside a later one; a lock of 1 s or less was renewed only after it expired
(SPEC §1's whole-second period; now half the timeout there); ``shutdown()`` called from an activity
raised and left the runtime half stopped.
"""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.errors import ConfigurationError, ProviderError

from ._helpers import SqliteRig
from ._helpers import wait_until as _wait_until


def _opts(**kw: Any) -> RuntimeOptions:
    base = dict(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=2_000, session_idle_timeout_ms=60_000)
    base.update(kw)
    return RuntimeOptions(**base)


@pytest.fixture
def rig(tmp_path) -> Iterator[SqliteRig]:
    r = SqliteRig(tmp_path / "probe.db", _opts)
    yield r
    r.close()


def _runtime_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())




# --- async activities under the thread driver -------------------------------------------------


def test_async_activity_with_gather_and_wait_for_under_threads(rig):
    rt = rig.runtime()

    @rt.register_activity("Gather")
    async def gather(ctx, n):
        async def one(i):
            await asyncio.sleep(0.01)
            return i * i

        parts = await asyncio.gather(*(one(i) for i in range(n)))
        fast = await asyncio.wait_for(one(3), timeout=2.0)
        return sum(parts) + fast

    @rt.register_orchestration("O")
    async def orch(ctx, n):
        return await ctx.schedule_activity("Gather", n)

    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("g", "O", 5)
    st = c.wait_for_orchestration("g", 10_000)
    assert (st.status, st.output) == ("Completed", 0 + 1 + 4 + 9 + 16 + 9)


def test_many_concurrent_async_activities_all_complete_with_their_own_results(rig):
    rt = rig.runtime(_opts(worker_concurrency=4))

    @rt.register_activity("Echo")
    async def echo(ctx, i):
        await asyncio.sleep(0.002 * (i % 5))
        return {"i": i, "id": ctx.activity_id}

    def orch(ctx, n):
        results = yield ctx.all([ctx.schedule_activity("Echo", i) for i in range(n)])
        return [r["ok"]["i"] for r in results]

    rt.register_orchestration("Fan", orch)
    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("fan", "Fan", 60)
    st = c.wait_for_orchestration("fan", 30_000)
    assert (st.status, st.output) == ("Completed", list(range(60)))


def test_async_activity_exception_text_matches_sync_under_threads(rig):
    rt = rig.runtime()

    @rt.register_activity("AsyncBoom")
    async def aboom(ctx, _):
        await asyncio.sleep(0.01)
        raise ValueError("bad input")

    @rt.register_activity("SyncBoom")
    def sboom(ctx, _):
        raise ValueError("bad input")

    @rt.register_activity("WaitForTimeout")
    async def wft(ctx, _):
        await asyncio.wait_for(asyncio.sleep(5), timeout=0.05)

    @rt.register_orchestration("O")
    async def orch(ctx, name):
        try:
            await ctx.schedule_activity(name)
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        return "no error"

    rt.start()
    c = Client(rt.provider)
    for name in ("AsyncBoom", "SyncBoom", "WaitForTimeout"):
        c.start_orchestration(name, "O", name)
    assert c.wait_for_orchestration("AsyncBoom", 10_000).output == "Activity 'AsyncBoom' call failed: ValueError: bad input"
    assert c.wait_for_orchestration("SyncBoom", 10_000).output == "Activity 'SyncBoom' call failed: ValueError: bad input"
    assert c.wait_for_orchestration("WaitForTimeout", 10_000).output == "Activity 'WaitForTimeout' call failed: TimeoutError: "


def test_async_activity_raising_cancelled_error_fails_the_activity_promptly(rig):
    """An async activity whose awaited task was cancelled (asyncio.CancelledError, a
    BaseException) must fail like any other activity error, not wedge the work item."""
    rt = rig.runtime()

    @rt.register_activity("AwaitsCancelledTask")
    async def awaits_cancelled(ctx, _):
        task = asyncio.ensure_future(asyncio.sleep(10))
        await asyncio.sleep(0)
        task.cancel()
        await task  # raises CancelledError

    @rt.register_orchestration("O")
    def orch(ctx, _):
        try:
            yield ctx.schedule_activity("AwaitsCancelledTask")
        except Exception as exc:  # noqa: BLE001
            return str(exc)
        return "no error"

    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("cx", "O")
    st = c.wait_for_orchestration("cx", 5_000)
    assert st.status == "Completed"
    assert st.output.startswith("Activity 'AwaitsCancelledTask' call failed: CancelledError")


@pytest.mark.parametrize("how", ["race_lost", "instance_cancelled"])
def test_async_activity_sees_is_cancelled(rig, how):
    """An ``async def`` activity polling ctx.is_cancelled() between awaits sees it become true
    when its orchestration no longer wants the result (a lost race; a cancelled instance)."""
    rt = rig.runtime()
    started = threading.Event()
    seen = threading.Event()
    release = threading.Event()

    @rt.register_activity("Background")
    async def background(ctx, _):
        started.set()
        while not release.is_set():
            if ctx.is_cancelled():
                seen.set()
                return "stopped"
            await asyncio.sleep(0.02)
        return "released"

    @rt.register_orchestration("O")
    async def orch(ctx, how):
        if how == "race_lost":
            r = await ctx.race(ctx.schedule_activity("Background"), ctx.schedule_timer(200))
            return r["index"]
        return await ctx.schedule_activity("Background")

    rt.start()
    c = Client(rt.provider)
    try:
        c.start_orchestration("bg", "O", how)
        if how == "instance_cancelled":
            assert started.wait(5.0)
            c.cancel_instance("bg", "stop")
            st = c.wait_for_orchestration("bg", 10_000)
            assert (st.status, st.error) == ("Failed", "canceled: stop")
        else:
            st = c.wait_for_orchestration("bg", 10_000)
            assert (st.status, st.output) == ("Completed", 1)
        assert seen.wait(5.0), "the async activity never saw is_cancelled()"
    finally:
        release.set()


def test_async_activity_that_ignores_cancellation_is_aborted_after_the_grace_period(rig):
    """SPEC §11.2: after lock loss the worker waits activity_cancellation_grace_period and then
    aborts a still-running activity. An ``async def`` activity can be aborted (its task
    cancelled), so the worker slot must come back for other work."""
    rt = rig.runtime(_opts(worker_concurrency=1, activity_cancellation_grace_period_ms=200))
    release = threading.Event()
    aborted = threading.Event()

    @rt.register_activity("Stubborn")
    async def stubborn(ctx, _):
        try:
            while not release.is_set():  # ignores ctx.is_cancelled()
                await asyncio.sleep(0.02)
        except asyncio.CancelledError:
            aborted.set()
            raise
        return "released"

    @rt.register_activity("Quick")
    def quick(ctx, x):
        return x + 1

    @rt.register_orchestration("Racer")
    def racer(ctx, _):
        r = yield ctx.race(ctx.schedule_activity("Stubborn"), ctx.schedule_timer(100))
        return r["index"]

    @rt.register_orchestration("Simple")
    def simple(ctx, x):
        return (yield ctx.schedule_activity("Quick", x))

    rt.start()
    c = Client(rt.provider)
    try:
        c.start_orchestration("racer", "Racer")
        assert c.wait_for_orchestration("racer", 10_000).output == 1
        c.start_orchestration("simple", "Simple", 41)
        # lock renewal notices the loss within ~1 s (2 s lock), then 0.2 s grace, then abort
        st = c.wait_for_orchestration("simple", 6_000)
        assert (st.status, st.output) == ("Completed", 42)
        assert aborted.is_set()
    finally:
        release.set()


# --- per-attempt timeouts against blocking / awaiting activities -----------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_retry_timeout_against_blocking_activity_fails_promptly_and_is_not_retried(rig, kind):
    rt = rig.runtime()
    runs: list[int] = []
    release = threading.Event()

    if kind == "sync":
        @rt.register_activity("Slow")
        def slow(ctx, _):
            runs.append(1)
            release.wait(3.0)
            return "late"
    else:
        @rt.register_activity("Slow")
        async def slow(ctx, _):
            runs.append(1)
            for _ in range(150):
                if release.is_set():
                    break
                await asyncio.sleep(0.02)
            return "late"

    @rt.register_orchestration("O")
    def orch(ctx, _):
        try:
            return (yield ctx.schedule_activity_with_retry("Slow", None, {"max_attempts": 3, "timeout_ms": 200}))
        except Exception as exc:  # noqa: BLE001
            return f"err: {exc}"

    rt.start()
    c = Client(rt.provider)
    try:
        c.start_orchestration("t", "O")
        t0 = time.monotonic()
        st = c.wait_for_orchestration("t", 10_000)
        took = time.monotonic() - t0
        assert (st.status, st.output) == ("Completed", "err: timeout: activity timed out")
        assert took < 2.5, took
    finally:
        release.set()
    time.sleep(0.3)
    assert runs == [1]
    kinds = [e["kind"] for e in c.read_execution_history("t", 1)]
    assert kinds.count("ActivityScheduled") == 1
    assert "ActivityCompleted" not in kinds


def test_retry_first_attempt_fails_second_times_out(rig):
    rt = rig.runtime()
    attempts: list[int] = []
    release = threading.Event()

    @rt.register_activity("Flaky")
    async def flaky(ctx, _):
        attempts.append(1)
        if len(attempts) == 1:
            raise ValueError("first")
        while not release.is_set():
            await asyncio.sleep(0.02)
        return "late"

    @rt.register_orchestration("O")
    async def orch(ctx, _):
        try:
            return await ctx.schedule_activity_with_retry(
                "Flaky", None, {"max_attempts": 3, "timeout_ms": 300, "backoff": "fixed"})
        except Exception as exc:  # noqa: BLE001
            return f"err: {exc}"

    rt.start()
    c = Client(rt.provider)
    try:
        c.start_orchestration("f", "O")
        st = c.wait_for_orchestration("f", 10_000)
        assert (st.status, st.output) == ("Completed", "err: timeout: activity timed out")
        assert len(attempts) == 2
    finally:
        release.set()


# --- shutdown, restart, resumption -----------------------------------------------------------


def test_shutdown_with_async_activity_in_flight_leaves_no_thread_and_work_resumes(rig):
    """SPEC §14: shutdown(timeout_ms) waits timeout_ms, then aborts. An ``async def`` activity
    still running then can be aborted (its task cancelled): after shutdown() returns, nothing
    of the old runtime keeps running user code, and a new runtime on the file finishes the work."""
    before = set(threading.enumerate())
    entered = threading.Event()
    finished_after_shutdown: list[str] = []
    shut = threading.Event()

    def register(rt: Runtime, slow: bool) -> None:
        @rt.register_activity("Effect")
        async def effect(ctx, key):
            if slow:
                entered.set()
                await asyncio.sleep(2.0)
                if shut.is_set():
                    finished_after_shutdown.append(key)
            return key

        @rt.register_orchestration("O")
        async def orch(ctx, key):
            await ctx.schedule_timer(50)
            return await ctx.schedule_activity("Effect", key)

    rt1 = rig.runtime()
    register(rt1, slow=True)
    rt1.start()
    c = Client(rt1.provider)
    c.start_orchestration("s", "O", "k")
    assert entered.wait(5.0)
    t0 = time.monotonic()
    rt1.shutdown(300)
    shut.set()
    took = time.monotonic() - t0
    assert took < 1.5, took
    left = _wait_until(lambda: not [n for n in _runtime_threads(before) if n.startswith("duroxide-")], 1.0)
    rt2 = rig.runtime()
    register(rt2, slow=False)
    rt2.start()
    st = Client(rig.provider()).wait_for_orchestration("s", 10_000)
    assert (st.status, st.output) == ("Completed", "k")
    time.sleep(2.0)
    assert (left, finished_after_shutdown) == (True, []), \
        "the shut-down runtime's thread kept running the activity to its end after shutdown(300)"


def test_a_task_left_behind_by_an_async_activity_does_not_resume_inside_a_later_activity(rig):
    """Async activities share one event loop per worker thread. A task an activity spawned
    and left pending must not resume (and run its side effects) in the middle of a later,
    unrelated activity - asyncio.run() would cancel it when its activity returns."""
    rt = rig.runtime(_opts(worker_concurrency=1))
    current: list[str | None] = [None]
    resumed_in: list[str | None] = []

    @rt.register_activity("Spawn")
    async def spawn(ctx, _):
        current[0] = "Spawn"

        async def background():
            await asyncio.sleep(0.05)
            resumed_in.append(current[0])

        asyncio.get_running_loop().create_task(background())
        current[0] = None
        return "spawned"

    @rt.register_activity("Probe")
    async def probe(ctx, _):
        current[0] = "Probe"
        await asyncio.sleep(0.1)
        current[0] = None
        return "probed"

    @rt.register_orchestration("O")
    def orch(ctx, _):
        yield ctx.schedule_activity("Spawn")
        yield ctx.schedule_timer(300)
        return (yield ctx.schedule_activity("Probe"))

    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("t", "O")
    assert c.wait_for_orchestration("t", 10_000).output == "probed"
    assert "Probe" not in resumed_in, resumed_in


def test_shutdown_with_sync_activity_and_timers_in_flight_then_new_runtime_finishes_everything(rig):
    before = set(threading.enumerate())
    runs: dict[str, int] = {}
    spans: list[tuple[str, float, float]] = []  # (key, began, returned) of each execution
    lock = threading.Lock()

    def register(rt: Runtime) -> None:
        @rt.register_activity("Work")
        def work(ctx, key):
            began = time.monotonic()
            with lock:
                runs[key] = runs.get(key, 0) + 1
            time.sleep(0.6)
            with lock:
                spans.append((key, began, time.monotonic()))
            return key.upper()

        @rt.register_orchestration("O")
        def orch(ctx, key):
            yield ctx.schedule_timer(400)
            a = yield ctx.schedule_activity("Work", key)
            yield ctx.schedule_timer(200)
            return a

    rt1 = rig.runtime(_opts(worker_concurrency=2))
    register(rt1)
    rt1.start()
    c = Client(rt1.provider)
    keys = [f"k{i}" for i in range(6)]
    for k in keys:
        c.start_orchestration(k, "O", k)
    time.sleep(0.6)  # timers fired, some activities are running
    rt1.shutdown(100)
    stopped = time.monotonic()
    # the running activities finish (a sync activity cannot be interrupted), then the threads end
    assert _wait_until(lambda: not [n for n in _runtime_threads(before) if n.startswith("duroxide-")], 3.0), \
        _runtime_threads(before)
    rt2 = rig.runtime(_opts(worker_concurrency=4))
    register(rt2)
    rt2.start()
    c2 = Client(rig.provider())
    results = [c2.wait_for_orchestration(k, 15_000) for k in keys]
    assert [(r.status, r.output) for r in results] == [("Completed", k.upper()) for k in keys]
    # What outlived the stopped runtime was not committed by it (as in the reference: a stopped
    # runtime writes nothing more), so the new runtime ran those activities again once their
    # locks expired; everything else ran once.
    outlived = {k for k, began, returned in spans if began < stopped < returned}
    assert outlived and runs == {k: 2 if k in outlived else 1 for k in keys}, (outlived, runs)


def test_shutdown_zero_returns_at_once_with_a_blocked_activity(rig):
    rt = rig.runtime()
    entered = threading.Event()
    release = threading.Event()

    @rt.register_activity("Block")
    def block(ctx, _):
        entered.set()
        release.wait(3.0)
        return 1

    @rt.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("Block"))

    rt.start()
    Client(rt.provider).start_orchestration("b", "O")
    try:
        assert entered.wait(5.0)
        t0 = time.monotonic()
        rt.shutdown(0)
        assert time.monotonic() - t0 < 1.0
    finally:
        release.set()


def test_async_activity_event_loops_are_closed_and_their_threads_gone_after_shutdown(rig):
    """Each worker thread runs async activities on its own event loop. After shutdown those
    loops must be closed (no ``unclosed event loop`` ResourceWarning when collected) and the
    default-executor threads an activity used through ``asyncio.to_thread`` must be gone."""
    before = set(threading.enumerate())
    rt = rig.runtime(_opts(worker_concurrency=2))

    @rt.register_activity("Off")
    async def off(ctx, x):
        return await asyncio.to_thread(lambda: x * 2)

    @rt.register_orchestration("O")
    def orch(ctx, n):
        rs = yield ctx.all([ctx.schedule_activity("Off", i) for i in range(n)])
        return [r["ok"] for r in rs]

    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("x", "O", 6)
    assert c.wait_for_orchestration("x", 10_000).output == [0, 2, 4, 6, 8, 10]
    rt.shutdown(2_000)
    time.sleep(0.3)
    left = _runtime_threads(before)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    unclosed = [str(w.message) for w in caught if "unclosed event loop" in str(w.message)]
    assert left == [] and unclosed == [], (left, unclosed)


def test_runtime_lifecycle_context_manager_double_start_double_shutdown_restart(rig):
    before = set(threading.enumerate())
    p = rig.provider()
    rt = rig.runtime(provider=p)

    @rt.register_activity("Inc")
    def inc(ctx, x):
        return x + 1

    @rt.register_orchestration("O")
    def orch(ctx, x):
        return (yield ctx.schedule_activity("Inc", x))

    c = Client(p)
    with rt as entered:
        assert entered is rt
        with pytest.raises(ConfigurationError):
            rt.start()
        c.start_orchestration("a", "O", 1)
        assert c.wait_for_orchestration("a", 10_000).output == 2
    assert _wait_until(lambda: not [n for n in _runtime_threads(before) if n.startswith("duroxide-")], 2.0)
    rt.shutdown()
    rt.shutdown(0)
    # restart the same runtime object
    rt.start()
    try:
        c.start_orchestration("b", "O", 10)
        assert c.wait_for_orchestration("b", 10_000).output == 11
    finally:
        rt.shutdown()
    assert _wait_until(lambda: not [n for n in _runtime_threads(before) if n.startswith("duroxide-")], 2.0)


def test_registering_after_start_takes_effect(rig):
    rt = rig.runtime()

    @rt.register_orchestration("Early")
    def early(ctx, x):
        return (yield ctx.schedule_activity("Late", x))

    rt.start()

    @rt.register_activity("Late")
    async def late(ctx, x):
        return x * 3

    @rt.register_orchestration("LateOrch")
    async def late_orch(ctx, x):
        return await ctx.schedule_activity("Late", x)

    c = Client(rt.provider)
    c.start_orchestration("e", "Early", 2)
    c.start_orchestration("l", "LateOrch", 5)
    assert c.wait_for_orchestration("e", 10_000).output == 6
    assert c.wait_for_orchestration("l", 10_000).output == 15


def test_two_runtimes_on_one_file_with_async_activities_and_timers_run_each_activity_once(rig):
    runs: dict[str, int] = {}
    lock = threading.Lock()
    rts = [rig.runtime(_opts(worker_concurrency=2)) for _ in range(2)]
    for rt in rts:
        @rt.register_activity("Step")
        async def step(ctx, key):
            with lock:
                runs[key] = runs.get(key, 0) + 1
            await asyncio.sleep(0.005)
            return key

        @rt.register_orchestration("O")
        async def orch(ctx, n):
            out = []
            for i in range(n):
                await ctx.schedule_timer(5)
                out.append(await ctx.schedule_activity("Step", f"{ctx.instance_id}-{i}"))
            return len(out)

    for rt in rts:
        rt.start()
    c = Client(rig.provider())
    for i in range(8):
        c.start_orchestration(f"i{i}", "O", 4)
    results = [c.wait_for_orchestration(f"i{i}", 30_000) for i in range(8)]
    assert [(r.status, r.output) for r in results] == [("Completed", 4)] * 8
    assert len(runs) == 32 and set(runs.values()) == {1}


# --- client waits: prompt return and timeouts ------------------------------------------------


def test_client_waits_return_promptly_after_the_change(rig):
    rt = rig.runtime(_opts(dispatcher_poll_interval_ms=5))

    @rt.register_orchestration("O")
    def orch(ctx, _):
        v = yield ctx.wait_for_event("go")
        ctx.set_custom_status("got it")
        ctx.set_kv_value("k", str(v))
        w = yield ctx.wait_for_event("end")
        return [v, w]

    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("w", "O")
    assert _wait_until(lambda: c.get_status("w").status == "Running", 10.0)  # (the turn that subscribes to "go")
    lat: dict[str, float] = {}

    def later(fn, delay):
        def run():
            time.sleep(delay)
            lat["t"] = time.monotonic()
            fn()
        t = threading.Thread(target=run)
        t.start()
        return t

    th = later(lambda: c.raise_event("w", "go", 7), 0.3)
    st = c.wait_for_status_change("w", 0, poll_interval_ms=10_000, timeout_ms=10_000)
    waited = time.monotonic() - lat["t"]
    th.join()
    assert st.custom_status == "got it" and waited < 1.0, waited
    assert c.wait_for_kv_value("w", "k", timeout_ms=2_000) == "7"
    th = later(lambda: c.raise_event("w", "end", 8), 0.3)
    st = c.wait_for_orchestration("w", 10_000)
    waited = time.monotonic() - lat["t"]
    th.join()
    assert (st.status, st.output) == ("Completed", [7, 8]) and waited < 1.0, waited


def test_client_wait_timeouts_raise_as_documented(rig):
    rt = rig.runtime()

    @rt.register_orchestration("Forever")
    def forever(ctx, _):
        yield ctx.wait_for_event("never")

    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("f", "Forever")
    for call in (lambda: c.wait_for_orchestration("f", 300),
                 lambda: c.wait_for_status_change("f", 0, 50, 300)):
        t0 = time.monotonic()
        with pytest.raises(RuntimeError, match="Operation timed out"):
            call()
        assert 0.25 <= time.monotonic() - t0 < 2.0
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        c.wait_for_kv_value("f", "nope", timeout_ms=300)
    assert 0.25 <= time.monotonic() - t0 < 2.0


# --- lock renewal across two runtimes; shutdown from inside user code ------------------------


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_long_activity_keeps_its_lock_and_runs_once_with_two_runtimes(rig, kind):
    """An activity running longer than worker_lock_timeout_ms is renewed in the background, so
    the other runtime on the same file never steals and re-runs it."""
    runs: list[str] = []
    lock = threading.Lock()
    rts = [rig.runtime(_opts(worker_lock_timeout_ms=2_000)) for _ in range(2)]
    _register_long(rts, kind, runs, lock, 3.5)
    for rt in rts:
        rt.start()
    c = Client(rig.provider())
    for k in ("a", "b"):
        c.start_orchestration(k, "O", k)
    sts = [c.wait_for_orchestration(k, 15_000) for k in ("a", "b")]
    assert [(s.status, s.output, s.error) for s in sts] == [("Completed", k, None) for k in ("a", "b")]
    assert sorted(runs) == ["a", "b"]


def test_a_one_second_worker_lock_is_either_refused_or_renewed_in_time(rig):
    """worker_lock_timeout_ms=1000 gives a renewal period (SPEC §1 formula, >= 1 s) equal to
    the lock timeout: every renewal comes after the lock expired. Such options must be refused
    at construction, or the lock must still be renewed before it expires; silently re-running a
    2.5 s activity until it is poisoned is neither."""
    try:
        opts = _opts(worker_lock_timeout_ms=1_000)
    except ConfigurationError:
        return
    runs: list[str] = []
    lock = threading.Lock()
    rts = [rig.runtime(opts)]
    _register_long(rts, "sync", runs, lock, 2.5)
    rts[0].start()
    c = Client(rts[0].provider)
    c.start_orchestration("a", "O", "a")
    _wait_until(lambda: c.get_status("a").is_terminal, 5.0)
    assert runs == ["a"]
    st = c.get_status("a")
    assert (st.status, st.output, st.error) == ("Completed", "a", None)


def _register_long(rts, kind, runs, lock, seconds):
    for rt in rts:
        if kind == "sync":
            @rt.register_activity("Long")
            def long_sync(ctx, key):
                with lock:
                    runs.append(key)
                time.sleep(seconds)
                return key
        else:
            @rt.register_activity("Long")
            async def long_async(ctx, key):
                with lock:
                    runs.append(key)
                await asyncio.sleep(seconds)
                return key

        @rt.register_orchestration("O")
        def orch(ctx, key):
            return (yield ctx.schedule_activity("Long", key))


def test_shutdown_called_from_inside_an_activity_stops_the_runtime_cleanly(rig):
    before = set(threading.enumerate())
    rt = rig.runtime()
    problems: list[BaseException] = []

    @rt.register_activity("StopMe")
    def stop_me(ctx, _):
        try:
            rt.shutdown(500)
        except BaseException as exc:  # noqa: BLE001
            problems.append(exc)
        return "asked"

    @rt.register_orchestration("O")
    def orch(ctx, _):
        return (yield ctx.schedule_activity("StopMe"))

    rt.start()
    Client(rt.provider).start_orchestration("s", "O")
    assert _wait_until(lambda: problems or rt._driver is None, 5.0)
    assert problems == []
    assert _wait_until(lambda: not [n for n in _runtime_threads(before) if n.startswith("duroxide-")], 2.0), \
        _runtime_threads(before)


@pytest.mark.parametrize(("timeout_ms", "buffer_ms"), [(2_001, 500), (1_050, 500), (1_000, 500), (20_000, 50), (15_000, 0)])
def test_renewal_comes_at_least_two_renewer_ticks_before_the_lock_expires(timeout_ms: int, buffer_ms: int) -> None:
    """SPEC §1's period ends 1-99 ms before the expiry for these timeouts, and the renewer looks
    only every 100 ms, so the lock lapsed before its renewal (a 2,001 ms worker lock cancelled
    and re-ran a long activity until poison). Periods now end RENEWAL_MARGIN_MS before it."""
    from duroxide_sim.runtime.options import RENEWAL_MARGIN_MS, renewal_period_ms

    period = renewal_period_ms(timeout_ms, buffer_ms)
    assert timeout_ms // 2 <= period <= timeout_ms - RENEWAL_MARGIN_MS
    assert RENEWAL_MARGIN_MS >= 200  # two ticks of the 100 ms renewer


def test_spec_renewal_periods_are_kept_where_they_leave_room() -> None:
    from duroxide_sim.runtime.options import renewal_period_ms

    assert renewal_period_ms(5_000, 2_000) == 3_000  # SPEC §1 defaults: 3 s / 25 s
    assert renewal_period_ms(30_000, 5_000) == 25_000
    assert renewal_period_ms(10_000, 0) == 5_000


def test_one_failed_renewal_is_retried_before_the_lock_expires(rig):
    """A renewal that fails with a retryable provider error (a dropped connection) used to be
    tried again a whole renewal period later - after the lock expired - so the activity's ack
    failed and it ran a second time. It is now retried within _RENEW_RETRY_MS."""
    opts = _opts(worker_lock_timeout_ms=2_001)
    rt = rig.runtime(opts)
    real = rt.provider.renew_work_item_lock
    failed: list[str] = []

    def flaky(token, extend_ms):
        if not failed:
            failed.append(token)
            raise ProviderError("connection lost", operation="renew_work_item_lock", retryable=True)
        return real(token, extend_ms)

    rt.provider.renew_work_item_lock = flaky
    runs: list[str] = []
    _register_long([rt], "sync", runs, threading.Lock(), 2.6)
    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("a", "O", "a")
    assert _wait_until(lambda: c.get_status("a").is_terminal, 10.0)
    assert failed, "the first renewal was not attempted"
    assert runs == ["a"]
    st = c.get_status("a")
    assert (st.status, st.output) == ("Completed", "a")
