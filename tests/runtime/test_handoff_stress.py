"""Stress tests for the production driver's raw-lock hand-offs: ``realtime.Signal`` (idle
dispatcher threads, ``_Lane``, waiting clients through ``CommitWaiter``) and the SQLite
provider's group commit (``SqliteProvider._group_write``, followers woken through their
per-thread raw lock).

What is looked for: lost wake-ups, double releases (a ``RuntimeError`` escaping, or a stale
wake-up left behind), hangs, and results handed to the wrong caller.

Timing: the only timed assertions are generous bounds (4 s) on hand-offs whose work takes
milliseconds, with a dispatcher poll interval (30 s) far larger than the bound, so a lost
in-process wake-up shows up as a multi-second stall instead of being hidden by polling. Every
thread is a daemon joined with a timeout, so a hang fails the test instead of freezing the run.
Each stress loop repeats its scenario several times to catch rare interleavings.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.errors import OperationTimeout, ProviderError
from duroxide_sim.providers import sqlite as sqlite_mod
from duroxide_sim.runtime.realtime import CommitWaiter, Signal, ThreadDriver
from duroxide_sim.testing.conformance import ConformanceClock, start_item

#: A hand-off whose work takes milliseconds must complete within this (over ten times the worst
#: latency seen on a loaded 2-core machine, far below the 30 s poll interval that would hide a
#: lost wake-up).
BOUND_S = 4.0
#: Dispatcher poll interval for the runtime tests: a lost wake-up costs up to this long.
POLL_MS = 30_000
#: How long any joined thread may take before the test calls it hung.
HANG_S = 20.0


def _start(target: Callable[..., Any], *args: Any, name: str | None = None) -> threading.Thread:
    t = threading.Thread(target=target, args=args, name=name, daemon=True)
    t.start()
    return t


def _join_all(threads: list[threading.Thread], timeout_s: float = HANG_S) -> list[str]:
    """Join every thread within one shared deadline; the names of those still alive (hung)."""
    deadline = time.monotonic() + timeout_s
    for t in threads:
        t.join(max(deadline - time.monotonic(), 0.0))
    return [t.name for t in threads if t.is_alive()]


# --- Signal ----------------------------------------------------------------------------------


def test_signal_every_set_is_seen_by_a_wait_that_starts_after_it_with_many_concurrent_setters():
    """8 threads call ``set()`` concurrently (double releases race) while one thread waits in a
    loop. A setter counts its set BEFORE calling ``set()``, so when the waiter reads a count below
    the total, at least one ``set()`` is still to come after that read: the next wait must return
    True (a False after 5 s is a lost wake-up). No RuntimeError may escape any ``set()``."""
    for run in range(20):
        _setters_and_one_waiter(run)


def _setters_and_one_waiter(run: int) -> None:
    sig = Signal()
    setters, per_setter = 8, 250
    total = setters * per_setter
    produced = [0]
    count_lock = threading.Lock()
    errors: list[str] = []
    lost: list[str] = []
    start = threading.Barrier(setters + 1)

    def setter() -> None:
        try:
            start.wait()
            for i in range(per_setter):
                with count_lock:
                    produced[0] += 1
                sig.set()
                if i % 50 == 0:
                    time.sleep(0)  # let the waiter in between bursts
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    def waiter() -> None:
        try:
            start.wait()
            while True:
                with count_lock:
                    seen = produced[0]
                if seen >= total:
                    return
                if not sig.wait(5.0):
                    lost.append(f"run {run}: no wake-up after count {seen} of {total}")
                    return
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(repr(exc))

    threads = [_start(setter, name=f"setter-{i}") for i in range(setters)] + [_start(waiter, name="waiter")]
    hung = _join_all(threads)
    assert not hung, f"run {run}: threads hung: {hung}"
    assert not errors, f"run {run}: {errors[:3]}"
    assert not lost, lost
    # At most one wake-up can be left over, and a wait consumes it exactly once.
    sig.wait(0)
    assert not sig.is_set() and sig.wait(0) is False


def test_signal_ping_pong_with_short_timeouts_never_loses_or_doubles_a_set():
    """Two threads hand a token back and forth through two Signals, each waiting in a loop of
    short timed waits (0 to 1 ms), so timeouts race ``set()`` constantly and a ``set()`` often
    lands before the wait starts. One lost set freezes the exchange; one doubled or phantom
    wake-up lets a side run ahead, which also freezes it (its next set is absorbed) or leaves
    a flag set at the end."""
    rounds = 1_500
    for run in range(20):
        _ping_pong(run, rounds)


def _ping_pong(run: int, rounds: int) -> None:
    a, b = Signal(), Signal()
    rng = random.Random(run)
    timeouts = [rng.choice((0.0, 0.00001, 0.0001, 0.001)) for _ in range(64)]
    counts = {"a": 0, "b": 0}
    problems: list[str] = []
    deadline = time.monotonic() + HANG_S

    def side(me: str, mine: Signal, other: Signal, first: bool) -> None:
        try:
            k = 0
            for _ in range(rounds):
                if first:
                    other.set()
                while not mine.wait(timeouts[k % len(timeouts)]):
                    k += 1
                    if time.monotonic() > deadline:
                        problems.append(f"run {run}: {me} stuck after {counts[me]} rounds")
                        return
                k += 1
                counts[me] += 1
                if not first:
                    other.set()
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(repr(exc))

    threads = [_start(side, "a", a, b, True, name="ping"), _start(side, "b", b, a, False, name="pong")]
    hung = _join_all(threads)
    assert not hung and not problems, (hung, problems)
    assert counts == {"a": rounds, "b": rounds}
    assert not a.is_set() and not b.is_set(), "a wake-up was delivered twice (flag left set)"


def test_commit_waiter_never_loses_a_commit_report_under_concurrent_commits():
    """16 client threads each wait for their own instance through ONE ``CommitWaiter`` with a
    POLL_MS sleep, while 4 committer threads report commits of every instance (and of unrelated
    ones) concurrently. After its registration (a first ``wait_for(0, instance)``), a waiter
    that sees its instance unfinished must be woken within BOUND_S by the commit that finishes it
    (lost report: a sleep of POLL_MS). Each thread's own Signal, shared by no one, is woken only by
    commits of its instance or unrelated noise; never left hanging."""
    listeners: list[Callable[[str], None]] = []

    class Fake:
        def add_commit_listener(self, cb: Callable[[str], None]) -> None:
            listeners.append(cb)

    for run in range(10):
        _commit_waiter_run(run, listeners, Fake())


def _commit_waiter_run(run: int, listeners: list, fake: Any) -> None:
    listeners.clear()
    waiter = CommitWaiter(fake)
    n, target = 16, 40
    versions = {f"i{k}": 0 for k in range(n)}
    vlock = threading.Lock()
    problems: list[str] = []
    start = threading.Barrier(n + 4)

    def client(inst: str) -> None:
        try:
            waiter.wait_for(0, inst)  # register first: later commits can no longer be missed
            start.wait()
            while True:
                with vlock:
                    v = versions[inst]
                if v >= target:
                    break
                t0 = time.monotonic()
                waiter.wait_for(POLL_MS, inst)
                took = time.monotonic() - t0
                if took > BOUND_S:
                    problems.append(f"run {run}: {inst} slept {took:.2f}s at version {v} (lost commit report)")
                    break
            waiter.done()
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(repr(exc))

    def committer(j: int) -> None:
        try:
            start.wait()
            rng = random.Random(run * 10 + j)
            for step in range(n * target // 4):
                inst = f"i{(j + 4 * step) % n}"
                with vlock:
                    versions[inst] += 1
                listeners[0](inst)  # the provider reports the commit after it lands
                if rng.random() < 0.3:
                    listeners[0](f"other-{step}")  # commits of instances nobody waits for
                if rng.random() < 0.1:
                    time.sleep(0.0002)
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(repr(exc))

    threads = [_start(client, f"i{k}", name=f"client-{k}") for k in range(n)]
    threads += [_start(committer, j, name=f"committer-{j}") for j in range(4)]
    hung = _join_all(threads)
    assert not hung and not problems, (hung, problems[:3])
    assert all(v == target for v in versions.values())
    assert not waiter._waiters  # every thread's registration was dropped by done()


# --- group commit ----------------------------------------------------------------------------


class _WriteFailed(Exception):
    """An ordinary error raised by one write's body."""


class _WriteAborted(BaseException):
    """A non-Exception BaseException (not KeyboardInterrupt) raised by one write's body."""


def _insert(p: SqliteProvider, name: str) -> Callable[[Any], str]:
    def fn(db: Any) -> str:
        p._insert_orch(db, start_item(name), p._now(), p._now())
        return name
    return fn


def _insert_then_raise(p: SqliteProvider, name: str, exc: BaseException) -> Callable[[Any], str]:
    def fn(db: Any) -> str:
        p._insert_orch(db, start_item(name), p._now(), p._now())  # written, then must be rolled back
        raise exc
    return fn


def _queued(p: SqliteProvider) -> set[str]:
    with p._tx("test", write=False) as db:
        return {r[0] for r in db.execute("SELECT instance_id FROM orchestrator_queue")}


@pytest.fixture
def provider(tmp_path):
    p = SqliteProvider.open(tmp_path / "stress.db", clock=ConformanceClock())
    yield p
    p.close()


def test_group_commit_16_writers_each_get_exactly_their_own_result_or_error(provider):
    """16 threads write concurrently (groups form constantly); ~1 in 5 writes raises its own
    ordinary exception after writing a row. Every caller must get exactly its own result or
    the very exception object its body raised; the database holds exactly the rows of the
    writes reported successful; no thread hangs; the queue drains; and after every write the
    caller's wake-up lock is held again (no stale or doubled wake-up left behind)."""
    p = provider
    n_threads, per_thread = 16, 20
    expected_rows: set[str] = set()
    for run in range(8):
        _ordinary_errors_run(p, run, n_threads, per_thread, expected_rows)


def _ordinary_errors_run(p: SqliteProvider, run: int, n_threads: int, per_thread: int, expected_rows: set[str]) -> None:
    outcomes: dict[str, tuple[str, Any]] = {}
    raised: dict[str, BaseException] = {}
    problems: list[str] = []
    barrier = threading.Barrier(n_threads)

    def writer(t: int) -> None:
        rng = random.Random(run * 100 + t)
        try:
            barrier.wait()
            for i in range(per_thread):
                name = f"r{run}-t{t}-{i}"
                if rng.random() < 0.2:
                    exc = _WriteFailed(name)
                    raised[name] = exc
                    fn = _insert_then_raise(p, name, exc)
                else:
                    fn = _insert(p, name)
                try:
                    outcomes[name] = ("ok", p._group_write("stress", fn))
                except _WriteFailed as e:
                    outcomes[name] = ("err", e)
                if not sqlite_mod._thread_wake_lock().locked():
                    problems.append(f"{name}: a stale wake-up is left on the writer's lock")
                    sqlite_mod._thread_wake_lock().acquire()  # keep the rest of the run meaningful
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(f"t{t}: {exc!r}")

    hung = _join_all([_start(writer, t, name=f"writer-{t}") for t in range(n_threads)])
    assert not hung, f"run {run}: writers hung: {hung}"
    assert not problems, problems[:5]
    assert len(outcomes) == n_threads * per_thread
    for name, (kind, value) in outcomes.items():
        if name in raised:
            assert kind == "err" and value is raised[name], (name, kind, value)
        else:
            assert kind == "ok" and value == name, (name, kind, value)
    expected_rows |= {name for name, (kind, _) in outcomes.items() if kind == "ok"}
    assert _queued(p) == expected_rows
    assert not p._gc_queue


def test_group_commit_with_base_exceptions_never_hangs_and_never_mixes_up_results(provider):
    """As above, with some writes raising a non-Exception BaseException. Whatever the policy for
    those (see the next test), no writer may hang, nobody may receive another write's result or
    another write's ordinary exception, each BaseException may surface at most once, and the
    database holds exactly the rows of the writes reported successful."""
    p = provider
    n_threads, per_thread = 16, 15
    expected_rows: set[str] = set()
    for run in range(8):
        _base_exceptions_run(p, run, n_threads, per_thread, expected_rows)


def _base_exceptions_run(p: SqliteProvider, run: int, n_threads: int, per_thread: int, expected_rows: set[str]) -> None:
    outcomes: dict[str, tuple[str, Any]] = {}
    raised: dict[str, BaseException] = {}
    problems: list[str] = []
    barrier = threading.Barrier(n_threads)

    def writer(t: int) -> None:
        rng = random.Random(run * 1000 + t)
        try:
            barrier.wait()
            for i in range(per_thread):
                name = f"b{run}-t{t}-{i}"
                r = rng.random()
                if r < 0.1:
                    exc: BaseException = _WriteAborted(name)
                elif r < 0.25:
                    exc = _WriteFailed(name)
                else:
                    exc = None  # type: ignore[assignment]
                fn = _insert(p, name) if exc is None else _insert_then_raise(p, name, exc)
                if exc is not None:
                    raised[name] = exc
                try:
                    outcomes[name] = ("ok", p._group_write("stress", fn))
                except (_WriteFailed, _WriteAborted, ProviderError) as e:
                    outcomes[name] = ("err", e)
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(f"t{t}: {exc!r}")

    hung = _join_all([_start(writer, t, name=f"writer-{t}") for t in range(n_threads)])
    assert not hung, f"run {run}: writers hung: {hung}"
    assert not problems, problems[:5]
    assert len(outcomes) == n_threads * per_thread
    surfaced: dict[int, int] = {}
    for name, (kind, value) in outcomes.items():
        if kind == "ok":
            assert name not in raised and value == name, (name, value)
            continue
        if isinstance(value, _WriteFailed):
            assert value is raised.get(name), f"{name} got another write's error {value!r}"
        elif isinstance(value, _WriteAborted):
            surfaced[id(value)] = surfaced.get(id(value), 0) + 1
        else:
            assert isinstance(value, ProviderError)
    assert all(c == 1 for c in surfaced.values()), "one BaseException surfaced in several threads"
    expected_rows |= {name for name, (kind, _) in outcomes.items() if kind == "ok"}
    assert _queued(p) == expected_rows, "the rows stored differ from the writes reported successful"
    assert not p._gc_queue


def _queue_up(p: SqliteProvider, count: int) -> None:
    """Until ``count`` writes are queued (the leader's included)."""
    deadline = time.monotonic() + HANG_S
    while len(p._gc_queue) < count:
        assert time.monotonic() < deadline, "writers never queued"
        time.sleep(0.001)


def test_a_base_exception_from_one_write_reaches_its_own_caller_and_the_group_still_commits(provider):
    """Deterministic: a leader holds the writer while A, F and G queue up behind it, so A leads
    the next group [A, F, G] and F's body raises a (non-KeyboardInterrupt) BaseException.
    Correct: F's caller gets F's exception, A and G (valid writes) commit and get their own
    results, as for an ordinary exception ("a write that fails reports its error alone").

    Failed before the fix: ``_run_group`` catches only ``Exception`` per write, so the BaseException
    lands in the outer ``except BaseException``: the whole group is rolled back, ``_group_lost``
    gives F and G a non-retryable ``ProviderError("group commit failed")`` and the LEADER A -
    whose own write was valid - gets F's exception re-raised in its thread."""
    p = provider
    gate, entered = threading.Event(), threading.Event()
    out: dict[str, tuple[str, Any]] = {}

    def slow(db: Any) -> str:
        entered.set()
        gate.wait(HANG_S)
        return "L"

    def run(name: str, fn: Callable[[Any], Any]) -> None:
        try:
            out[name] = ("ok", p._group_write(name, fn))
        except BaseException as exc:  # noqa: BLE001 - compared below
            out[name] = ("err", exc)

    boom = _WriteAborted("F's own")
    threads = [_start(run, "L", slow, name="L")]
    assert entered.wait(HANG_S)
    for i, (name, fn) in enumerate((("A", _insert(p, "A")), ("F", _insert_then_raise(p, "F", boom)),
                                    ("G", _insert(p, "G")))):
        threads.append(_start(run, name, fn, name=name))
        _queue_up(p, i + 2)  # queue order A, F, G
    gate.set()
    assert not _join_all(threads)
    assert out["L"] == ("ok", "L")
    assert out["F"] == ("err", boom), f"F got {out['F']!r}"
    assert out["A"] == ("ok", "A"), f"A (a valid write) got {out['A']!r}"
    assert out["G"] == ("ok", "G"), f"G (a valid write) got {out['G']!r}"
    assert _queued(p) == {"A", "G"}
    assert not p._gc_queue


class _Interrupted(BaseException):
    """What a signal handler raises in the main thread (as Ctrl-C's KeyboardInterrupt does)."""


def test_a_writer_interrupted_while_waiting_for_its_group_does_not_block_later_writes(provider):
    """Deterministic: the main thread's write queues behind a leader and its wait is interrupted
    by a signal handler that raises (what Ctrl-C does, with KeyboardInterrupt). Correct: later
    writes of other threads still complete (the interrupted write may or may not be stored).

    Failed before the fix (hung, detected by a timeout): ``_group_write`` has no handler around the
    follower's ``wake.acquire()``, so the interrupted write stays in ``_gc_queue``. The leader's
    batch was taken before it queued, so when the leader finishes, the orphan is ``queue[0]``:
    the leader 'wakes' it as the next leader, nobody is there to lead, and every later write in
    the process (dispatcher acks, client starts, Runtime.shutdown's give-backs) queues behind it
    forever."""
    if threading.current_thread() is not threading.main_thread():  # pragma: no cover
        pytest.fail("signal handlers run in the main thread only; this test must run there")
    p = provider
    gate, entered = threading.Event(), threading.Event()

    def slow(db: Any) -> str:
        entered.set()
        gate.wait(HANG_S)
        return "L"

    leader = _start(lambda: p._group_write("leader", slow), name="leader")
    assert entered.wait(HANG_S)

    def handler(signum: int, frame: Any) -> None:
        raise _Interrupted()

    def poke() -> None:
        _queue_up(p, 2)  # the main thread's write is queued behind the leader
        time.sleep(0.05)  # and (almost certainly) asleep in its wait
        signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
        time.sleep(0.05)
        gate.set()  # the leader finishes (an implementation may finish the hand-off before raising)

    try:
        old = signal.signal(signal.SIGUSR1, handler)
        try:
            poker = _start(poke, name="poke")
            with pytest.raises(_Interrupted):
                p._group_write("interrupted", _insert(p, "interrupted"))
            poker.join(HANG_S)
        finally:
            signal.signal(signal.SIGUSR1, old)
            gate.set()
        assert not _join_all([leader])

        later: list[str] = []
        t = _start(lambda: later.append(p._group_write("later", _insert(p, "later"))), name="later")
        t.join(3.0)  # one insert: milliseconds
        hung = t.is_alive()
        if hung:  # unblock the stuck writer (test hygiene): drop the orphan and wake the next in line
            with p._gc_lock:
                while p._gc_queue and p._gc_queue[0].op == "interrupted":
                    p._gc_queue.popleft()
                if p._gc_queue:
                    sqlite_mod._wake(p._gc_queue[0].wake)
            t.join(HANG_S)
        assert not hung, "a write after an interrupted follower hung behind the orphaned write"
        assert later == ["later"] and "later" in _queued(p)
        assert not p._gc_queue
    finally:
        # Hygiene for later tests on this (main) thread: an interrupted wait may leave a stale
        # wake-up on the thread's group-commit lock (documented as possible); consume it.
        leader.join(HANG_S)
        sqlite_mod._thread_wake_lock().acquire(False)


# --- ThreadDriver / Runtime ------------------------------------------------------------------


def test_stop_ends_every_thread_even_when_several_finish_an_empty_step_after_the_stop():
    """Deterministic: two dispatcher threads are inside a step (an empty fetch) when ``stop()``
    is called, and return from it after ``stop()`` set the flag and woke the lane. Both must
    see the stop promptly: ``stop()`` returns True (every thread finished).

    Failed before the fix: ``_Lane.wake_all`` leaves a single ``_pending`` mark; the first thread to
    park consumes it, the second parks for a full poll interval (POLL_MS here) and outlives
    ``stop()``'s 1-3 s join. In ``Runtime.shutdown()`` this leaves dispatcher threads running
    (and fetching, with the runtime "stopped") for up to a poll interval."""
    in_step = threading.Barrier(3)
    released = threading.Event()

    def step(carry: dict) -> bool:
        if not released.is_set():
            in_step.wait(HANG_S)
            released.wait(HANG_S)
        return False  # the fetch found nothing: the thread parks

    driver = ThreadDriver(orchestration_step=step, worker_step=step, orchestration_threads=2, worker_threads=0,
                          poll_interval_ms=POLL_MS)
    lane = driver._lanes["orchestrator"]
    original_wake_all = lane.wake_all

    def wake_all_then_release() -> None:
        original_wake_all()
        released.set()  # the steps return only after stop() has woken the lane

    lane.wake_all = wake_all_then_release  # type: ignore[method-assign]
    driver.start()
    in_step.wait(HANG_S)  # both threads are inside their step
    t0 = time.monotonic()
    finished = driver.stop(timeout_ms=3_000)
    took = time.monotonic() - t0
    alive = [t.name for t in driver._threads if t.is_alive()]
    # (A thread still parked is a daemon: it ends by itself after its poll interval.)
    assert finished and not alive, f"stop() left {alive} parked after {took:.2f}s"


def _flow_runtime(path: Any) -> tuple[SqliteProvider, Runtime]:
    p = SqliteProvider.open(path)
    rt = Runtime(p, RuntimeOptions(dispatcher_poll_interval_ms=POLL_MS, orchestration_concurrency=4,
                                   worker_concurrency=4))

    @rt.register_activity("Inc")
    def inc(ctx: Any, x: int) -> int:
        return x + 1

    @rt.register_orchestration("Child")
    def child(ctx: Any, x: int) -> Any:
        return (yield ctx.schedule_activity("Inc", x))

    @rt.register_orchestration("Flow")
    def flow(ctx: Any, x: int) -> Any:
        # Fan-out (backlog hand-offs), custom status, an external event, KV, a queue message
        # (possibly enqueued while the instance is locked) and a sub-orchestration.
        vals = yield ctx.all_typed([ctx.schedule_activity("Inc", x + i) for i in range(3)])
        ctx.set_custom_status(f"ready:{sum(vals)}")
        go = yield ctx.wait_for_event("go")
        ctx.set_kv_value("k", f"{go}")
        msg = yield ctx.dequeue_event("q")
        c = yield ctx.schedule_sub_orchestration("Child", msg)
        return [sum(vals), go, msg, c]

    @rt.register_orchestration("Forever")
    def forever(ctx: Any, _: Any) -> Any:
        return (yield ctx.wait_for_event("never"))

    return p, rt


def test_16_clients_never_stall_on_a_lost_wake_up(tmp_path):
    """16 client threads on one SqliteProvider file and one started Runtime (poll interval POLL_MS)
    concurrently start instances, raise events, enqueue queue messages (half of them while the
    instance is still in its first turn) and wait (wait_for_status_change, wait_for_kv_value,
    wait_for_orchestration). Every hand-off is in-process, so every wait must end within BOUND_S
    (they take milliseconds); a lost dispatcher wake-up would stall until the poll (POLL_MS). Results
    must be exactly the expected ones."""
    n_clients, per_client = 16, 2
    for run in range(4):
        _clients_run(tmp_path, run, n_clients, per_client)


def _clients_run(tmp_path: Any, run: int, n_clients: int, per_client: int) -> None:
    p, rt = _flow_runtime(tmp_path / f"clients{run}.db")
    rt.start()
    slow: list[str] = []
    problems: list[str] = []
    barrier = threading.Barrier(n_clients)

    def timed(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.monotonic()
        try:
            return fn(*args, **kwargs)
        finally:
            took = time.monotonic() - t0
            if took > BOUND_S:
                slow.append(f"run {run}: {what} took {took:.2f}s")

    def client(t: int) -> None:
        c = Client(p)
        try:
            barrier.wait()
            for k in range(per_client):
                iid, x = f"r{run}-c{t}-{k}", t * 100 + k
                early = (t + k) % 2 == 0
                c.start_orchestration(iid, "Flow", x)
                if early:
                    c.enqueue_event(iid, "q", x * 7)  # races the instance's first turn
                st = timed(f"{iid} status", c.wait_for_status_change, iid, 0, timeout_ms=30_000)
                total = sum(x + i + 1 for i in range(3))
                assert st.custom_status in (f"ready:{total}", f'"ready:{total}"'), st
                c.raise_event(iid, "go", f"g{x}")
                kv = timed(f"{iid} kv", c.wait_for_kv_value, iid, "k", timeout_ms=30_000)
                assert kv in (f"g{x}", f'"g{x}"'), kv
                if not early:
                    c.enqueue_event(iid, "q", x * 7)
                res = timed(f"{iid} done", c.wait_for_orchestration, iid, timeout_ms=30_000)
                assert res.status == "Completed", res
                assert res.output == [total, f"g{x}", x * 7, x * 7 + 1], res
        except BaseException as exc:  # noqa: BLE001 - reported below
            problems.append(f"client {t}: {exc!r}")

    try:
        hung = _join_all([_start(client, t, name=f"client-{t}") for t in range(n_clients)], 60.0)
    finally:
        rt.shutdown()
        p.close()
    assert not hung, f"run {run}: clients hung: {hung}"
    assert not problems, problems[:3]
    assert not slow, slow[:5]


def test_shutdown_while_clients_wait_and_dispatchers_are_busy_or_parked_leaves_no_thread(tmp_path):
    """Repeatedly: a runtime (poll interval POLL_MS) with parked dispatchers, instances that never
    finish, clients waiting on them, and a burst of fresh work so some dispatchers are mid-step
    when ``shutdown()`` is called. ``shutdown()`` must return promptly and leave none of the
    runtime's threads alive; the waiting clients are unaffected (they time out normally) and
    no client thread hangs. (Hits the ``_Lane.wake_all`` single-mark race of the deterministic
    test above in a fraction of the runs.)"""
    for run in range(10):
        _shutdown_run(tmp_path, run)


def _shutdown_run(tmp_path: Any, run: int) -> None:
    p, rt = _flow_runtime(tmp_path / f"shutdown{run}.db")
    before = set(threading.enumerate())
    rt.start()
    c = Client(p)
    for k in range(3):
        c.start_orchestration(f"forever-{k}", "Forever")
    outcomes: list[str] = []

    def waiting_client(k: int) -> None:
        try:
            Client(p).wait_for_orchestration(f"forever-{k}", timeout_ms=400)
            outcomes.append("finished?!")
        except OperationTimeout:
            outcomes.append("timed out")
        except BaseException as exc:  # noqa: BLE001 - reported below
            outcomes.append(repr(exc))

    clients = [_start(waiting_client, k, name=f"waiting-client-{k}") for k in range(3)]
    time.sleep(0.05)  # the forever instances ran their first turn; dispatchers park
    for k in range(12):  # a burst: dispatchers are busy (and fetching) when the stop comes
        c.start_orchestration(f"burst-{k}", "Child", k)
    time.sleep(0.002 * (run % 5))
    t0 = time.monotonic()
    rt.shutdown()
    took = time.monotonic() - t0
    left = [t.name for t in threading.enumerate() if t not in before and t.name.startswith("duroxide-")
            and t.is_alive()]
    hung = _join_all(clients)
    p.close()  # (a runtime thread still parked is a daemon: it ends by itself after its poll)
    assert took < BOUND_S, f"run {run}: shutdown took {took:.2f}s"
    assert not left, f"run {run}: shutdown returned after {took:.2f}s with {left} still running"
    assert not hung, f"run {run}: waiting clients hung: {hung}"
    assert outcomes == ["timed out"] * 3, outcomes


