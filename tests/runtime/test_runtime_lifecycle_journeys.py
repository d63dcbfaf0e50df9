"""The production runtime's lifecycle as an operator meets it: a real ``Runtime`` on
``SqliteProvider.open(tmp_path/...)``, threads and wall clock, subprocesses for the
multi-process and crash journeys.

Covers what the neighbouring production tests do not: option validation against what breaks
the runtime later (types of the peer's string options, values the provider cannot store),
a path passed where a provider belongs, open files and the WAL after shutdown + close,
process exit after shutdown with an async activity blocked in ``asyncio.to_thread``,
what a shutdown with work in flight does to the attempt budget (SPEC §10.2, ``Runtime.shutdown``
docstring: "attempt not counted"), a sync activity that ignores cancellation across a
shutdown and a second runtime, an async activity that swallows the shutdown's cancellation, a
long orchestration turn across a shutdown, two runtimes sharing ONE provider object, two
runtime processes, SIGKILL of a runtime process in the middle of a batch, a client in another
process waiting across a shutdown, and the log lines for unregistered handlers, retries and
poison (once per attempt / once per poisoning, with the instance id; peer duroxide-python 0.2.2
logs "... exceeded max attempts, marking as poison instance=...").

Everything is bounded: runtime waits, client waits and subprocesses all carry timeouts.

Found by this file and fixed (each test failed before): non-string ``worker_node_id`` /
``log_*`` / ``service_*`` options, thread counts past 2**31 - 1 and timeouts whose expiry cannot
be stored were accepted (the last made every fetch fail); ``Runtime("app.db")`` started and
crashed in every step; an async activity blocked in ``asyncio.to_thread`` held the worker and the
process after shutdown (its executor is now daemon threads nobody waits for once cancelled); a
shutdown's abort counted the activity's attempt; poison was not logged.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import attrs
import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.errors import ConfigurationError

from ._helpers import SqliteRig
from ._helpers import wait_until as _wait_until

pytestmark = pytest.mark.realtime

ROOT = Path(__file__).resolve().parents[2]
TERMINAL_KINDS = ("OrchestrationCompleted", "OrchestrationFailed", "OrchestrationContinuedAsNew")


# --- helpers ------------------------------------------------------------------------------------


def _opts(**kw: Any) -> RuntimeOptions:
    base: dict[str, Any] = dict(dispatcher_poll_interval_ms=5)
    base.update(kw)
    return RuntimeOptions(**base)


@pytest.fixture
def rig(tmp_path):
    r = SqliteRig(tmp_path / "journeys.db", _opts, shutdown_ms=1_000)
    yield r
    r.close()


def _duroxide_threads(before: set[threading.Thread]) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t not in before and t.is_alive())


def _history_problems(client: Client, instance: str) -> list[str]:
    """Well-formedness of execution 1: ids 1..n, Started first, one terminal event (last), every
    activity / timer schedule completed exactly once."""
    h = client.read_execution_history(instance, 1)
    out: list[str] = []
    ids = [e.event_id for e in h]
    if ids != list(range(1, len(h) + 1)):
        out.append(f"{instance}: event ids {ids}")
    if not h or h[0].kind != "OrchestrationStarted":
        out.append(f"{instance}: first event {h[0].kind if h else None}")
    terminals = [e.kind for e in h if e.kind in TERMINAL_KINDS]
    if len(terminals) != 1 or h[-1].kind not in TERMINAL_KINDS:
        out.append(f"{instance}: terminal events {terminals}, last {h[-1].kind if h else None}")
    completions = Counter((e.kind, e.source_event_id) for e in h if e.source_event_id is not None)
    for e in h:
        if e.kind == "ActivityScheduled":
            n = completions[("ActivityCompleted", e.event_id)] + completions[("ActivityFailed", e.event_id)]
            if n != 1:
                out.append(f"{instance}: activity #{e.event_id} completed {n} times")
        if e.kind == "TimerCreated" and completions[("TimerFired", e.event_id)] != 1:
            out.append(f"{instance}: timer #{e.event_id} fired {completions[('TimerFired', e.event_id)]} times")
    return out


def _completed_events(client: Client, instance: str) -> int:
    return sum(1 for e in client.read_execution_history(instance, 1) if e.kind == "OrchestrationCompleted")


def _db_fds(directory: Path) -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(directory)):
            out.append(target)
    return sorted(out)


# --- 1. RuntimeOptions validation -------------------------------------------------------------


_INT_FIELDS_POSITIVE = ["dispatcher_poll_interval_ms", "worker_lock_timeout_ms", "max_sessions_per_runtime",
                        "session_idle_timeout_ms", "orchestrator_lock_timeout_ms", "max_attempts",
                        "session_lock_timeout_ms", "session_cleanup_interval_ms"]
_INT_FIELDS_NON_NEGATIVE = ["orchestration_concurrency", "worker_concurrency", "orchestrator_lock_renewal_buffer_ms",
                            "worker_lock_renewal_buffer_ms", "session_lock_renewal_buffer_ms",
                            "unregistered_backoff_base_ms", "unregistered_backoff_max_ms",
                            "activity_cancellation_grace_period_ms", "instance_cache_size"]


@pytest.mark.parametrize("value", [-1, "5", 1.5, True, float("nan"), [3]])
@pytest.mark.parametrize("field", _INT_FIELDS_POSITIVE + _INT_FIELDS_NON_NEGATIVE)
def test_integer_options_refuse_wrong_types_and_negatives_naming_the_option(field, value):
    """options.py: 'Values are validated at construction so a typo fails at start-up'. The
    peer refuses str/float with a TypeError naming the argument; here a ConfigurationError."""
    with pytest.raises((ConfigurationError, TypeError)) as info:
        RuntimeOptions(**{field: value})
    assert field in str(info.value)


@pytest.mark.parametrize("field", _INT_FIELDS_POSITIVE)
def test_options_that_must_be_positive_refuse_zero(field):
    with pytest.raises(ConfigurationError, match=field):
        RuntimeOptions(**{field: 0})


def test_none_means_the_default_as_in_the_peer_and_positional_order_matches():
    o = RuntimeOptions(None, None, None, None)
    assert (o.orchestration_concurrency, o.worker_concurrency, o.dispatcher_poll_interval_ms,
            o.worker_lock_timeout_ms) == (2, 2, 100, 30_000)
    o = RuntimeOptions(4, 8, 20)
    assert (o.orchestration_concurrency, o.worker_concurrency, o.dispatcher_poll_interval_ms) == (4, 8, 20)


def test_unknown_option_is_a_type_error_like_the_peer():
    with pytest.raises(TypeError, match="bogus_option"):
        RuntimeOptions(bogus_option=1)  # type: ignore[call-arg]


def test_string_options_refuse_non_strings_like_the_peer():
    """The peer (duroxide-python 0.2.2) refuses a non-string for each of its string options:
    ``TypeError: argument 'worker_node_id': 'int' object cannot be converted to 'PyString'``.
    ``worker_node_id`` is this runtime's session owner id (``WorkerDispatcher.owner_id``), so a
    typo there is not harmless either (``worker_node_id=0`` silently means "the runtime id")."""
    accepted = []
    for field in ("log_format", "log_level", "service_name", "service_version", "worker_node_id"):
        for value in (5, b"node", ["a"]):
            try:
                RuntimeOptions(**{field: value})
            except (ConfigurationError, TypeError) as exc:
                assert field in str(exc), exc
            else:
                accepted.append(f"{field}={value!r}")
    assert accepted == [], f"accepted without an error: {accepted}"


@pytest.mark.parametrize("field", ["orchestration_concurrency", "worker_concurrency"])
def test_absurd_concurrency_is_refused_at_construction_naming_the_option(field):
    """10**20 dispatcher threads cannot be started: the peer refuses anything above 2**31-1 at
    construction (OverflowError). Accepting it means ``start()`` tries to spawn them."""
    with pytest.raises((ConfigurationError, ValueError, OverflowError)) as info:
        RuntimeOptions(**{field: 10**20})
    assert field in str(info.value)


def _absurd_cases() -> list[Any]:
    return [
        pytest.param({"orchestrator_lock_timeout_ms": 10**19}, "plain", id="orchestrator_lock_timeout_ms"),
        pytest.param({"worker_lock_timeout_ms": 10**19}, "plain", id="worker_lock_timeout_ms"),
        pytest.param({"worker_lock_timeout_ms": 10**19, "session_idle_timeout_ms": 10**20}, "plain",
                     id="worker_lock_timeout_ms+idle"),
        pytest.param({"session_lock_timeout_ms": 10**19}, "session", id="session_lock_timeout_ms"),
        pytest.param({"unregistered_backoff_base_ms": 10**19, "unregistered_backoff_max_ms": 10**19}, "unregistered",
                     id="unregistered_backoff_ms"),
    ]


@pytest.mark.parametrize(("kw", "mode"), _absurd_cases())
def test_absurd_timeouts_are_refused_naming_the_option_or_the_runtime_still_works(rig, caplog, kw, mode):
    """A lock timeout / back-off the store cannot hold (now + 10**19 ms does not fit SQLite's
    64-bit INTEGER) must be refused at construction with the option's name, or the runtime
    must still run. Accepted and then failing on every fetch ("dispatcher step crashed;
    continuing", OverflowError) is a hang with a log flood."""
    first = next(iter(kw))
    try:
        opts = _opts(**kw)
    except (ConfigurationError, ValueError, OverflowError) as exc:
        assert first in str(exc), f"refused, but the message does not name {first}: {exc}"
        return
    caplog.set_level(logging.WARNING, logger="duroxide_sim")
    rt = rig.runtime(opts)
    rt.register_activity("A", lambda ctx, x: x + 1)

    @rt.register_orchestration("O")
    def orch(ctx, x):
        if mode == "session":
            return (yield ctx.schedule_activity_on_session("A", x, "s1"))
        if mode == "unregistered":
            return (yield ctx.schedule_activity("Missing", x))
        return (yield ctx.schedule_activity("A", x))

    rt.start()
    c = Client(rt.provider)
    c.start_orchestration("i", "O", 1)
    if mode == "unregistered":
        time.sleep(1.0)
    else:
        _wait_until(lambda: c.get_status("i").is_terminal, 3.0)
    rt.shutdown(500)
    crashed = [r.getMessage() + " " + (r.exc_text or str(r.exc_info[1] if r.exc_info else ""))
               for r in caplog.records if r.levelno >= logging.ERROR]
    assert crashed == [], f"{kw} accepted at construction, then: {crashed[0][:300]} (x{len(crashed)})"
    if mode != "unregistered":
        st = c.get_status("i")
        assert (st.status, st.output) == ("Completed", 2)


@pytest.mark.parametrize("bad", ["default_only ", '{"tags": []}', '{"tags": ["a","b","c","d","e","f"]}', 123])
def test_worker_tag_filter_values_outside_the_spec_are_refused(bad):
    """SPEC §10.3: worker tag filter 1-5 tags -> constructor error."""
    with pytest.raises(ConfigurationError):
        RuntimeOptions(worker_tag_filter=bad)


@pytest.mark.parametrize("bad", [("0.2.0", "0.1.0"), ("x", "1.0.0"), ("1.0.0",), "0.1.0"])
def test_supported_versions_outside_the_shape_are_refused(bad):
    with pytest.raises(ConfigurationError, match="supported_versions"):
        RuntimeOptions(supported_versions=bad)


def test_options_must_be_runtime_options():
    p = SqliteProvider.in_memory()
    with pytest.raises(ConfigurationError, match="RuntimeOptions"):
        Runtime(p, {"dispatcher_poll_interval_ms": 5})  # type: ignore[arg-type]


def test_a_path_instead_of_a_provider_is_refused_at_construction(tmp_path, caplog):
    """``Runtime("app.db")`` is an easy slip (README's first line is ``SqliteProvider.open("app.db")``).
    The peer fails at construction (``provider._native``). Accepting it means every dispatcher
    step crashes with ``AttributeError: 'str' object has no attribute 'fetch_orchestration_item'``,
    logged with a traceback every 100 ms per thread, forever."""
    caplog.set_level(logging.ERROR, logger="duroxide_sim")
    rt = None
    try:
        with pytest.raises((TypeError, ConfigurationError)):
            rt = Runtime(str(tmp_path / "app.db"), _opts())  # type: ignore[arg-type]
    finally:
        if rt is not None:
            rt.start()
            time.sleep(0.3)
            rt.shutdown(200)
            crashed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
            print(f"accepted; {len(crashed)} ERROR records in 0.3 s after start(): {crashed[:1]}")


# --- 2. start / shutdown / restart; threads, files, process exit --------------------------------


def test_lifecycle_shutdown_before_start_double_shutdown_then_files_released_and_wal_checkpointed(tmp_path):
    """shutdown() before start() is a no-op; after start/run/shutdown twice no runtime thread is
    left; after provider.close() no file descriptor points at the database, the WAL is folded
    back (no -wal left), the file can be deleted and a fresh database opened at the same path."""
    before = set(threading.enumerate())
    path = tmp_path / "life.db"
    p = SqliteProvider.open(path)
    rt = Runtime(p, _opts())
    rt.shutdown()  # before start: nothing to stop
    rt.shutdown(0)
    rt.register_activity("Inc", lambda ctx, x: x + 1)

    @rt.register_orchestration("O")
    def orch(ctx, x):
        a = yield ctx.schedule_activity("Inc", x)
        yield ctx.schedule_timer(5)
        return a

    rt.start()
    try:
        c = Client(p)
        for i in range(10):
            c.start_orchestration(f"i{i}", "O", i)
        assert [c.wait_for_orchestration(f"i{i}", 10_000).output for i in range(10)] == list(range(1, 11))
    finally:
        rt.shutdown(1_000)
    rt.shutdown(1_000)
    assert _wait_until(lambda: not _duroxide_threads(before), 2.0), _duroxide_threads(before)
    del c
    p.close()
    gc.collect()
    assert _db_fds(tmp_path) == [], _db_fds(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["life.db"], os.listdir(tmp_path)
    os.remove(path)
    fresh = SqliteProvider.open(path)
    try:
        assert Client(fresh).get_status("i0").status == "NotFound"
    finally:
        fresh.close()


def test_restart_after_a_shutdown_that_timed_out_on_a_sync_activity(rig):
    """shutdown(100) while a sync activity is still running (it cannot be interrupted), then
    start() on the same object: the new threads run; the old one finishes its activity and
    leaves; every instance completes once."""
    before = set(threading.enumerate())
    rt = rig.runtime(_opts(worker_lock_timeout_ms=5_000))
    entered = threading.Event()
    runs: Counter[str] = Counter()

    @rt.register_activity("Slow")
    def slow(ctx, key):
        runs[key] += 1
        if key == "first":
            entered.set()
            time.sleep(0.8)
        return key

    @rt.register_orchestration("O")
    def orch(ctx, key):
        return (yield ctx.schedule_activity("Slow", key))

    rt.start()
    c = Client(rig.provider())
    c.start_orchestration("first", "O", "first")
    assert entered.wait(5.0)
    rt.shutdown(100)
    rt.start()
    try:
        c.start_orchestration("second", "O", "second")
        sts = [c.wait_for_orchestration(k, 10_000) for k in ("first", "second")]
        assert [(s.status, s.output) for s in sts] == [("Completed", "first"), ("Completed", "second")]
        assert runs == {"first": 1, "second": 1}
        assert [_completed_events(c, k) for k in ("first", "second")] == [1, 1]
    finally:
        rt.shutdown(1_000)
    assert _wait_until(lambda: not _duroxide_threads(before), 3.0), _duroxide_threads(before)


_EXIT_SCRIPT = r'''
import asyncio, sys, threading, time
from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
mode, shutdown, path = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
p = SqliteProvider.open(path)
rt = Runtime(p, RuntimeOptions(dispatcher_poll_interval_ms=5))
entered = threading.Event()
if mode == "sync":
    @rt.register_activity("Slow")
    def slow(ctx, x):
        entered.set(); time.sleep(30); return x
elif mode == "async_sleep":
    @rt.register_activity("Slow")
    async def slow(ctx, x):
        entered.set(); await asyncio.sleep(30); return x
else:
    @rt.register_activity("Slow")
    async def slow(ctx, x):
        await asyncio.to_thread(lambda: (entered.set(), time.sleep(30))); return x
@rt.register_orchestration("O")
def orch(ctx, x):
    return (yield ctx.schedule_activity("Slow", x))
rt.start()
Client(p).start_orchestration("s", "O", 1)
assert entered.wait(10), "activity never started"
if shutdown:
    t0 = time.monotonic(); rt.shutdown(200)
    print("shutdown returned after %.2f s; threads left: %s" % (time.monotonic() - t0,
          sorted(t.name for t in threading.enumerate() if t is not threading.main_thread())), flush=True)
    p.close()
print("main done", flush=True)
'''


@pytest.mark.parametrize(("mode", "shutdown"), [
    ("sync", False), ("sync", True), ("async_sleep", False), ("async_sleep", True), ("async_to_thread", True)],
    ids=["sync-no_shutdown", "sync-shutdown", "async_sleep-no_shutdown", "async_sleep-shutdown", "async_to_thread-shutdown"])
def test_the_process_exits_promptly_with_a_long_activity_in_flight(tmp_path, mode, shutdown):
    """A service's main() returns (after ``shutdown(200)`` or forgetting it) while an activity
    runs for 30 s. The process must exit within a few seconds: the unfinished work item is
    redelivered after its lock expires, so nothing is gained by keeping the process alive.
    ``Runtime.shutdown``: async activities still running at the timeout are cancelled and their
    items given back; ``realtime.run_coroutine``: "no loop or executor thread outlives the
    activity (or the runtime)" - also for an async activity awaiting ``asyncio.to_thread``."""
    script = tmp_path / "exit_probe.py"
    script.write_text(_EXIT_SCRIPT)
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, str(script), mode, "1" if shutdown else "0", str(tmp_path / "e.db")],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=8)
        took = time.monotonic() - t0
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        took = float("inf")
    assert "main done" in out, (out, err[-2000:])
    assert took < 5.0, (("process had not exited 8 s after start (killed)" if took == float("inf") else
                         f"process took {took:.1f} s to exit") + f"; its main() had returned: {out.strip()!r}; "
                        f"stderr tail: {err[-500:]!r}")
    assert proc.returncode == 0, err[-2000:]


# --- 3. shutdown(timeout) with work in flight ---------------------------------------------------


def test_shutdown_with_a_sync_activity_that_ignores_cancellation_then_another_runtime_completes_it_once(rig):
    """The sync activity runs on past shutdown(200) (it cannot be interrupted) and its lock is no
    longer renewed; a second runtime takes the item after the lock expires and completes it.
    The old run's late ack must not add a second completion; the old thread must end after the
    activity does."""
    before = set(threading.enumerate())
    opts = _opts(worker_lock_timeout_ms=1_500)
    entered = threading.Event()
    runs: list[str] = []

    def register(rt: Runtime, who: str) -> None:
        @rt.register_activity("Stubborn")
        def stubborn(ctx, x):
            runs.append(who)
            if who == "old":
                entered.set()
                t_end = time.monotonic() + 2.5
                while time.monotonic() < t_end:  # ignores ctx.is_cancelled()
                    time.sleep(0.05)
            return f"{who}:{x}"

        @rt.register_orchestration("O")
        def orch(ctx, x):
            a = yield ctx.schedule_activity("Stubborn", x)
            yield ctx.schedule_timer(10)
            return a

    rt1 = rig.runtime(opts)
    register(rt1, "old")
    rt1.start()
    c = Client(rig.provider())
    c.start_orchestration("s", "O", 1)
    assert entered.wait(5.0)
    t0 = time.monotonic()
    rt1.shutdown(200)
    assert time.monotonic() - t0 < 2.0
    rt2 = rig.runtime(opts)
    register(rt2, "new")
    rt2.start()
    st = c.wait_for_orchestration("s", 15_000)
    time.sleep(max(0.0, 2.8 - (time.monotonic() - t0)))  # the old activity has finished and tried to ack
    st = c.get_status("s")
    assert (st.status, st.output) == ("Completed", "new:1")
    assert runs == ["old", "new"]
    assert _history_problems(c, "s") == []
    rt2.shutdown(1_000)
    assert _wait_until(lambda: not _duroxide_threads(before), 3.0), _duroxide_threads(before)


def test_shutdown_aborting_an_async_activity_does_not_spend_its_attempt(rig):
    """``Runtime.shutdown`` docstring: async activities still running at the timeout "are
    cancelled and their work items given back for another runtime (attempt not counted)"
    (also ``WorkerDispatcher.abort_running``). With max_attempts=1 the next runtime must run
    the activity, not poison it: a shutdown is not a failed delivery (and with the default 10,
    ten rolling restarts during one long activity would poison it)."""
    opts = _opts(max_attempts=1)
    entered = threading.Event()

    def register(rt: Runtime, slow: bool) -> None:
        @rt.register_activity("Long")
        async def long(ctx, x):
            if slow:
                entered.set()
                await asyncio.sleep(5)
            return x * 10

        @rt.register_orchestration("O")
        def orch(ctx, x):
            return (yield ctx.schedule_activity("Long", x))

    rt1 = rig.runtime(opts)
    register(rt1, True)
    rt1.start()
    c = Client(rig.provider())
    c.start_orchestration("a", "O", 4)
    assert entered.wait(5.0)
    rt1.shutdown(100)
    rt2 = rig.runtime(opts)
    register(rt2, False)
    rt2.start()
    st = c.wait_for_orchestration("a", 10_000)
    assert (st.status, st.output, st.error) == ("Completed", 40, None)


def test_an_async_activity_that_swallows_the_shutdown_cancellation_does_not_commit(rig):
    """The async activity catches the CancelledError of the shutdown abort and returns anyway:
    its result is not the activity's outcome (the lease is given back), so the history holds
    exactly the next runtime's completion."""
    entered = threading.Event()

    def register(rt: Runtime, who: str) -> None:
        @rt.register_activity("Sly")
        async def sly(ctx, x):
            if who == "old":
                entered.set()
                try:
                    await asyncio.sleep(5)
                except asyncio.CancelledError:
                    return "old-result"
            return f"{who}-result"

        @rt.register_orchestration("O")
        def orch(ctx, x):
            return (yield ctx.schedule_activity("Sly", x))

    rt1 = rig.runtime()
    register(rt1, "old")
    rt1.start()
    c = Client(rig.provider())
    c.start_orchestration("a", "O", 1)
    assert entered.wait(5.0)
    rt1.shutdown(100)
    time.sleep(0.3)
    assert c.get_status("a").status == "Running"
    rt2 = rig.runtime()
    register(rt2, "new")
    rt2.start()
    st = c.wait_for_orchestration("a", 10_000)
    assert (st.status, st.output) == ("Completed", "new-result")
    assert _history_problems(c, "a") == []


def test_shutdown_during_a_long_orchestration_turn_then_another_runtime_finishes_once(rig):
    """A turn that takes 1.6 s (CPU-heavy orchestration code) is running when shutdown(100)
    returns; the orchestrator lock (1 s) is no longer renewed, so a second runtime takes the
    instance over. The old turn's late ack fails; it must not fail the instance (SPEC §3.1 step
    10 applies to a turn that still holds its lock) nor add events twice."""
    before = set(threading.enumerate())
    opts = _opts(orchestrator_lock_timeout_ms=1_000)
    entered = threading.Event()

    def register(rt: Runtime, slow: bool) -> None:
        rt.register_activity("Dbl", lambda ctx, x: x * 2)

        @rt.register_orchestration("O")
        def orch(ctx, x):
            a = yield ctx.schedule_activity("Dbl", x)
            if slow and not ctx.is_replaying():
                entered.set()
                time.sleep(1.6)
            b = yield ctx.schedule_activity("Dbl", a)
            return b

    rt1 = rig.runtime(opts)
    register(rt1, True)
    rt1.start()
    c = Client(rig.provider())
    c.start_orchestration("t", "O", 3)
    assert entered.wait(5.0)
    rt1.shutdown(100)
    rt2 = rig.runtime(opts)
    register(rt2, False)
    rt2.start()
    st = c.wait_for_orchestration("t", 10_000)
    assert (st.status, st.output) == ("Completed", 12)
    time.sleep(1.0)  # the old turn has finished and tried to commit
    st = c.get_status("t")
    assert (st.status, st.output, st.error) == ("Completed", 12, None)
    assert _history_problems(c, "t") == []
    assert _completed_events(c, "t") == 1
    rt2.shutdown(1_000)
    assert _wait_until(lambda: not _duroxide_threads(before), 3.0), _duroxide_threads(before)


# --- 4. two runtimes in one process -------------------------------------------------------------


@pytest.mark.parametrize("sharing", ["two_providers", "one_shared_provider"])
def test_two_runtimes_in_one_process_complete_everything_once(rig, caplog, sharing):
    """Two runtimes on one file (each its own provider, or both on ONE provider object): every
    orchestration completes exactly once with its result, each activity runs once (no lock is
    lost: activities are short), and no 'database is locked' reaches a log or an instance."""
    caplog.set_level(logging.WARNING, logger="duroxide_sim")
    runs: Counter[str] = Counter()
    lock = threading.Lock()
    shared = rig.provider() if sharing == "one_shared_provider" else None
    rts = [rig.runtime(_opts(worker_concurrency=2, orchestration_concurrency=2), provider=shared) for _ in range(2)]
    for rt in rts:
        @rt.register_activity("Step")
        def step(ctx, key):
            with lock:
                runs[key] += 1
            return key

        @rt.register_orchestration("O")
        def orch(ctx, n):
            out = []
            for i in range(n):
                out.append((yield ctx.schedule_activity("Step", f"{ctx.instance_id}-{i}")))
                if i == 0:
                    yield ctx.schedule_timer(5)
            return len(out)

    for rt in rts:
        rt.start()
    c = Client(rig.provider())
    ids = [f"p{i}" for i in range(30)]
    for inst in ids:
        c.start_orchestration(inst, "O", 3)
    sts = [c.wait_for_orchestration(i, 30_000) for i in ids]
    assert [(s.status, s.output) for s in sts] == [("Completed", 3)] * len(ids)
    assert len(runs) == 90 and set(runs.values()) == {1}, {k: v for k, v in runs.items() if v != 1}
    assert [_completed_events(c, i) for i in ids] == [1] * len(ids)
    problems = [p for i in ids for p in _history_problems(c, i)]
    assert problems == []
    locked = [r.getMessage() for r in caplog.records if "locked" in r.getMessage().lower()]
    assert locked == [], locked[:3]
    total = sum(rt.metrics_snapshot().orch_completions for rt in rts)
    assert total == len(ids)


# --- 5. runtimes in separate processes; SIGKILL in the middle of a batch -----------------------

_WORKER_SCRIPT = r'''
import json, logging, os, signal, sys, threading, time
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")
from duroxide_sim import Runtime, RuntimeOptions, SqliteProvider
db, ledger, ready, orch_lock, worker_lock, act_ms = sys.argv[1:7]
p = SqliteProvider.open(db)
rt = Runtime(p, RuntimeOptions(dispatcher_poll_interval_ms=10, orchestrator_lock_timeout_ms=int(orch_lock),
                               worker_lock_timeout_ms=int(worker_lock), session_idle_timeout_ms=600_000))
fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
PID = os.getpid()

@rt.register_activity("Step")
def step(ctx, arg):
    inst, i = arg
    os.write(fd, ("%d %s %d\n" % (PID, inst, i)).encode())
    time.sleep(int(act_ms) / 1000.0)
    return "%s:%d" % (inst, i)

@rt.register_orchestration("Batch")
def batch(ctx, n):
    out = []
    for i in range(n):
        out.append((yield ctx.schedule_activity("Step", [ctx.instance_id, i])))
        if i == 0:
            yield ctx.schedule_timer(30)
    return out

stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *a: stop.set())
rt.start()
with open(ready + ".tmp", "w") as f:
    json.dump({"pid": PID}, f)
os.replace(ready + ".tmp", ready)
stop.wait(120)
rt.shutdown(2000)
p.close()
print("clean exit", flush=True)
'''


def _register_batch(rt: Runtime, ledger: Path) -> None:
    """The same workflow as the worker script, in this process (the 'new runtime')."""
    fd = os.open(ledger, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    pid = os.getpid()

    @rt.register_activity("Step")
    def step(ctx, arg):
        inst, i = arg
        os.write(fd, f"{pid} {inst} {i}\n".encode())
        return f"{inst}:{i}"

    @rt.register_orchestration("Batch")
    def batch(ctx, n):
        out = []
        for i in range(n):
            out.append((yield ctx.schedule_activity("Step", [ctx.instance_id, i])))
            if i == 0:
                yield ctx.schedule_timer(30)
        return out


class _Worker:
    def __init__(self, tmp: Path, name: str, db: Path, ledger: Path, orch_lock: int, worker_lock: int, act_ms: int) -> None:
        script = tmp / "worker_script.py"
        if not script.exists():
            script.write_text(_WORKER_SCRIPT)
        self.name = name
        self.ready = tmp / f"{name}.ready"
        self.err_path = tmp / f"{name}.stderr"
        self.out_path = tmp / f"{name}.stdout"
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen([sys.executable, str(script), str(db), str(ledger), str(self.ready),
                                          str(orch_lock), str(worker_lock), str(act_ms)],
                                         cwd=ROOT, stdout=out, stderr=err)

    def wait_ready(self, timeout_s: float = 20.0) -> int:
        deadline = time.monotonic() + timeout_s
        while not self.ready.exists():
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited early:\n{self.stderr()}")
            assert time.monotonic() < deadline, f"{self.name} not ready:\n{self.stderr()}"
            time.sleep(0.01)
        return json.loads(self.ready.read_text())["pid"]

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def stdout(self) -> str:
        try:
            return self.out_path.read_text(errors="replace")
        except OSError:
            return ""

    def terminate(self, timeout_s: float = 10.0) -> float:
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return float("inf")
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def reap(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def _ledger(ledger: Path) -> list[tuple[int, str, int]]:
    if not ledger.exists():
        return []
    rows = []
    for line in ledger.read_text().splitlines():
        pid, inst, i = line.split()
        rows.append((int(pid), inst, int(i)))
    return rows


def _wait_all_terminal(client: Client, ids: list[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    out: dict[str, Any] = {}
    for inst in ids:
        remaining_ms = max(int((deadline - time.monotonic()) * 1000), 1)
        try:
            out[inst] = client.wait_for_orchestration(inst, remaining_ms)
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            out[inst] = exc
    return out


def test_two_runtime_processes_on_one_file_complete_everything_once(tmp_path):
    db, ledger = tmp_path / "procs.db", tmp_path / "ledger.txt"
    provider = SqliteProvider.open(db)
    client = Client(provider)
    workers = [_Worker(tmp_path, f"w{i}", db, ledger, 5_000, 30_000, 2) for i in range(2)]
    try:
        pids = [w.wait_ready() for w in workers]
        ids = [f"b{i}" for i in range(40)]
        for inst in ids:
            client.start_orchestration(inst, "Batch", 3)
        results = _wait_all_terminal(client, ids, 40)
        bad = {k: (getattr(v, "status", v), getattr(v, "error", None)) for k, v in results.items()
               if getattr(v, "status", None) != "Completed"}
        assert bad == {}, bad
        assert all(results[i].output == [f"{i}:0", f"{i}:1", f"{i}:2"] for i in ids)
        exits = [w.terminate() for w in workers]
        assert all(t < 5.0 for t in exits), f"SIGTERM -> shutdown took {exits}"
        assert [w.proc.returncode for w in workers] == [0, 0], [w.stderr()[-1500:] for w in workers]
        assert all("clean exit" in w.stdout() for w in workers)
        runs = Counter((inst, i) for _, inst, i in _ledger(ledger))
        assert len(runs) == 120 and set(runs.values()) == {1}, {k: v for k, v in runs.items() if v != 1}
        by_pid = Counter(pid for pid, _, _ in _ledger(ledger))
        assert set(by_pid) <= set(pids)
        assert [_completed_events(client, i) for i in ids] == [1] * len(ids)
        assert [p for i in ids for p in _history_problems(client, i)] == []
        errs = "\n".join(w.stderr() for w in workers)
        assert "locked" not in errs.lower() and "Traceback" not in errs, errs[-3000:]
    finally:
        for w in workers:
            w.reap()
        provider.close()


def test_sigkill_mid_batch_then_a_new_runtime_completes_every_instance_exactly_once(tmp_path):
    """50 orchestrations (3 activities and a timer each) on a runtime process, SIGKILLed when
    about 40% of the activity runs happened. A new runtime (this process) completes every
    instance: one OrchestrationCompleted each, histories well formed, correct outputs; an
    activity ran twice only if the killed process had started it (a lock lost by death)."""
    db, ledger = tmp_path / "kill.db", tmp_path / "ledger.txt"
    provider = SqliteProvider.open(db)
    client = Client(provider)
    worker = _Worker(tmp_path, "victim", db, ledger, 1_000, 1_500, 15)
    rt = None
    try:
        victim_pid = worker.wait_ready()
        ids = [f"k{i:02d}" for i in range(50)]
        for inst in ids:
            client.start_orchestration(inst, "Batch", 3)
        assert _wait_until(lambda: len(_ledger(ledger)) >= 60, 30.0), f"no progress: {len(_ledger(ledger))}"
        worker.kill()
        at_kill = len(_ledger(ledger))
        unfinished = [i for i in ids if not client.get_status(i).is_terminal]
        assert unfinished, "the kill came after everything finished"

        rt = Runtime(provider, _opts(orchestrator_lock_timeout_ms=1_000, worker_lock_timeout_ms=1_500))
        _register_batch(rt, ledger)
        rt.start()
        results = _wait_all_terminal(client, ids, 40)
        bad = {k: (getattr(v, "status", v), getattr(v, "error", None)) for k, v in results.items()
               if getattr(v, "status", None) != "Completed"}
        assert bad == {}, bad
        assert all(results[i].output == [f"{i}:0", f"{i}:1", f"{i}:2"] for i in ids)
        assert [_completed_events(client, i) for i in ids] == [1] * len(ids)
        problems = [p for i in ids for p in _history_problems(client, i)]
        assert problems == [], problems[:10]
        rows = _ledger(ledger)
        runs = Counter((inst, i) for _, inst, i in rows)
        assert len(runs) == 150
        twice = {k for k, v in runs.items() if v > 1}
        by_victim = {(inst, i) for pid, inst, i in rows if pid == victim_pid}
        assert twice <= by_victim, f"re-ran without a lock loss: {sorted(twice - by_victim)[:5]}"
        assert all(v <= 2 for v in runs.values()), runs.most_common(3)
        assert _wait_until(lambda: (lambda d: d.orchestrator_queue + d.worker_queue)(provider.get_queue_depths()) == 0, 5.0)
        assert "Traceback" not in worker.stderr(), worker.stderr()[-2000:]
        print(f"\nkilled after {at_kill} activity runs, {len(unfinished)} unfinished; {len(twice)} re-run")
    finally:
        if rt is not None:
            rt.shutdown(1_000)
        worker.reap()
        provider.close()


# --- 6. clients waiting across a shutdown ---------------------------------------------------------

_CLIENT_SCRIPT = r'''
import json, sys, time
from duroxide_sim import Client, SqliteProvider
db = sys.argv[1]
c = Client(SqliteProvider.open(db))
out = {}
t0 = time.monotonic()
st = c.wait_for_orchestration("quick", 15000)
out["quick"] = [st.status, st.output, round(time.monotonic() - t0, 2)]
t0 = time.monotonic()
try:
    st = c.wait_for_orchestration("forever", 1500)
    out["forever"] = ["returned", st.status]
except Exception as exc:
    out["forever"] = [type(exc).__name__, isinstance(exc, RuntimeError), str(exc), round(time.monotonic() - t0, 2)]
print(json.dumps(out), flush=True)
'''


def test_clients_in_another_process_and_thread_waiting_across_a_shutdown_end_by_their_timeout(rig, tmp_path):
    """SPEC §17: wait timeouts raise RuntimeError('Operation timed out'). A client process waits
    for an instance the runtime completes (it sees it) and for one that never finishes while
    the runtime shuts down (it ends at its own timeout, not before, and never hangs); a client
    thread in the runtime's process does the same."""
    rt = rig.runtime()
    go = threading.Event()

    @rt.register_orchestration("Quick")
    def quick(ctx, x):
        yield ctx.schedule_timer(300)
        return x

    @rt.register_orchestration("Forever")
    def forever(ctx, _):
        yield ctx.wait_for_event("never")

    rt.start()
    c = Client(rig.provider())
    c.start_orchestration("forever", "Forever")
    script = tmp_path / "client_script.py"
    script.write_text(_CLIENT_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(rig.path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    thread_out: list[Any] = []

    def thread_waiter() -> None:
        go.wait(5)
        t0 = time.monotonic()
        try:
            c.wait_for_orchestration("forever", 1500)
            thread_out.append("returned")
        except RuntimeError as exc:
            thread_out.append((str(exc), time.monotonic() - t0))

    th = threading.Thread(target=thread_waiter, daemon=True)
    th.start()
    try:
        c.start_orchestration("quick", "Quick", "done")
        assert c.wait_for_orchestration("quick", 10_000).output == "done"
        go.set()
        time.sleep(0.3)
        rt.shutdown(500)  # while both clients wait for "forever"
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        raise AssertionError(f"client process hung: {out!r} {err[-1000:]!r}") from None
    th.join(5)
    assert not th.is_alive(), "client thread hung"
    res = json.loads(out.strip().splitlines()[-1])
    assert res["quick"][:2] == ["Completed", "done"]
    name, is_runtime_error, message, took = res["forever"]
    assert (is_runtime_error, message) == (True, "Operation timed out"), res
    assert 1.4 <= took < 4.0, took
    assert len(thread_out) == 1 and thread_out[0][0] == "Operation timed out" and 1.4 <= thread_out[0][1] < 4.0, thread_out


# --- 7. log lines: unregistered handlers, retries, poison ------------------------------------------


def _records(caplog, instance: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("duroxide_sim")
            and (instance in r.getMessage() or getattr(r, "instance_id", None) == instance)]


def test_unregistered_handlers_are_logged_once_per_delivery_with_the_instance_not_per_poll(rig, caplog):
    """SPEC §3.1 step 5 / §10.2: an unregistered orchestration or activity is abandoned with a
    back-off and poisoned on delivery max_attempts+1. The warning comes once per delivery (the
    peer: 'Orchestration not registered, abandoning with 1.0s backoff ... instance=...'), not
    once per 5 ms poll."""
    caplog.set_level(logging.DEBUG, logger="duroxide_sim")
    rt = rig.runtime(attrs.evolve(_opts(max_attempts=2), unregistered_backoff_base_ms=150, unregistered_backoff_max_ms=300))

    @rt.register_orchestration("UsesMissing")
    def uses_missing(ctx, x):
        return (yield ctx.schedule_activity("MissingActivity", x))

    rt.start()
    c = Client(rig.provider())
    c.start_orchestration("unreg-orch", "MissingOrchestration", 1)
    c.start_orchestration("unreg-act", "UsesMissing", 1)
    sts = {i: c.wait_for_orchestration(i, 10_000) for i in ("unreg-orch", "unreg-act")}
    assert sts["unreg-orch"].error == "poison: orchestration unreg-orch exceeded 3 attempts (max 2)"
    assert sts["unreg-act"].error == "poison: activity MissingActivity#2 exceeded 3 attempts (max 2)"
    time.sleep(0.2)
    for inst, what in (("unreg-orch", "MissingOrchestration"), ("unreg-act", "MissingActivity")):
        lines = [r.getMessage() for r in _records(caplog, inst) if "not registered" in r.getMessage()]
        assert len(lines) == 2, lines  # deliveries 1 and 2; the 3rd is poison
        assert all(what in m for m in lines), lines


def test_retry_warnings_are_logged_once_per_failed_attempt_with_the_instance(rig, caplog):
    caplog.set_level(logging.DEBUG, logger="duroxide_sim")
    rt = rig.runtime()

    @rt.register_activity("Boom")
    def boom(ctx, x):
        raise ValueError("boom")

    @rt.register_orchestration("R")
    def r(ctx, x):
        return (yield ctx.schedule_activity_with_retry("Boom", x, {"max_attempts": 3, "backoff": "linear"}))

    rt.start()
    c = Client(rig.provider())
    c.start_orchestration("retry-inst", "R", 1)
    st = c.wait_for_orchestration("retry-inst", 10_000)
    assert st.status == "Failed" and "boom" in st.error
    time.sleep(0.2)
    lines = [rec for rec in _records(caplog, "retry-inst") if "attempt" in rec.getMessage()]
    assert [rec.levelno for rec in lines] == [logging.WARNING] * 2, [rec.getMessage() for rec in lines]
    assert all(rec.name == "duroxide_sim.orchestration" for rec in lines)


def test_poison_is_logged_once_with_the_instance(rig, caplog):
    """An operator learns of a poisoned instance or activity from the logs. The peer logs it
    once at WARN: 'Orchestration message exceeded max attempts, marking as poison
    instance=unreg-orch attempt_count=3 max_attempts=2' / 'Activity message exceeded max
    attempts, marking as poison instance=unreg-act activity_name=Missing ...'. Here: one
    record each, naming the instance (message or ``instance_id`` attribute) and 'poison'."""
    caplog.set_level(logging.DEBUG, logger="duroxide_sim")
    rt = rig.runtime(attrs.evolve(_opts(max_attempts=2), unregistered_backoff_base_ms=100, unregistered_backoff_max_ms=100))

    @rt.register_orchestration("UsesMissing")
    def uses_missing(ctx, x):
        return (yield ctx.schedule_activity("MissingActivity", x))

    rt.start()
    c = Client(rig.provider())
    c.start_orchestration("pz-orch", "MissingOrchestration", 1)
    c.start_orchestration("pz-act", "UsesMissing", 1)
    for inst in ("pz-orch", "pz-act"):
        assert c.wait_for_orchestration(inst, 10_000).error.startswith("poison:")
    time.sleep(0.2)
    found = {}
    for inst in ("pz-orch", "pz-act"):
        found[inst] = [r.getMessage() for r in _records(caplog, inst)
                       if "poison" in r.getMessage().lower() and r.levelno >= logging.WARNING]
    assert {k: len(v) for k, v in found.items()} == {"pz-orch": 1, "pz-act": 1}, (
        found, [f"{r.name} {r.levelname} {r.getMessage()}" for r in caplog.records if r.name.startswith("duroxide_sim")])


def test_two_concurrent_shutdowns_both_wait_for_the_running_activity(tmp_path) -> None:
    """A service whose signal handler and main thread both call ``shutdown(10_000)``: neither may
    return while an activity is still running (the second call returned at once, telling its
    caller the work was over). Found by re-expressing the reference's shutdown tests."""
    import threading
    import time

    from ._helpers import SqliteRig

    rig = SqliteRig(tmp_path / "shutdown.db", lambda: RuntimeOptions(dispatcher_poll_interval_ms=5))
    try:
        rt = rig.runtime()
        started = threading.Event()
        finished: list[float] = []

        @rt.register_activity("Slow")
        def slow(ctx, _):
            started.set()
            time.sleep(0.6)
            finished.append(time.monotonic())
            return "done"

        @rt.register_orchestration("O")
        def o(ctx, _):
            return (yield ctx.schedule_activity("Slow", None))

        rt.start()
        rig.client().start_orchestration("s", "O")
        assert started.wait(5)
        returned: list[float] = []

        def stop() -> None:
            rt.shutdown(10_000)
            returned.append(time.monotonic())

        threads = [threading.Thread(target=stop) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
        assert len(returned) == 2 and len(finished) == 1
        assert min(returned) >= finished[0], (returned, finished)
    finally:
        rig.close()
