"""The production world: wall clock, uuid4, threads. The ONLY module that touches them.

* :class:`SystemClock` - integer ms since the epoch from ``time.time_ns``.
* :class:`UuidIds` - GUIDs for ``ctx.new_guid()`` and runtime ids from ``uuid4``.
* :class:`ThreadRenewer` - one background thread renewing the locks of running work and
  reporting lost locks (activity cancellation, SPEC §11.2).
* :class:`ThreadDriver` - runs dispatcher ``step()``s on ``orchestration_concurrency`` +
  ``worker_concurrency`` threads. Idle threads sleep until the next poll interval **or** until
  the provider reports new in-process work (wake-up listener), so work started in the same
  process begins immediately instead of after a poll. A report wakes ONE idle thread of its
  queue (waking all made the others race for the same item and poll an empty queue); a
  thread whose ack fetched the next item for a different instance or activity wakes one
  more, so a backlog spreads over the threads.
* :func:`run_coroutine` - runs an ``async def`` activity on its own event loop (as ``asyncio.run``).
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from ..errors import LockLostError, ProviderError
from .options import renewal_period_ms

__all__ = ["SystemClock", "UuidIds", "ThreadRenewer", "ThreadDriver", "CommitWaiter", "run_coroutine", "sleep_ms", "new_runtime_id"]

_log = logging.getLogger("duroxide_sim.runtime")


class SystemClock:
    """Wall-clock time in integer milliseconds."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


def is_virtual_clock(clock: object) -> bool:
    """A clock that moves only when told (it has ``advance(ms)``: SimClock, ConformanceClock).
    Any other clock, the wall clock included, is taken for real time."""
    return clock is not None and callable(getattr(clock, "advance", None))


def monotonic_ms() -> float:
    """Elapsed-time source for timeouts measured in real time: a step of the wall clock (NTP,
    an operator) neither stretches nor cuts them."""
    return time.monotonic() * 1000.0


class UuidIds:
    def new_guid(self) -> str:
        return str(uuid.uuid4())


def utc_iso_ms(seconds: float) -> str:
    """A wall-clock instant (seconds since the epoch, e.g. ``LogRecord.created``) as
    ``YYYY-MM-DDTHH:MM:SS.mmmZ``: the log file's timestamps (:mod:`.tracing`)."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole)) + f".{int((seconds - whole) * 1000):03d}Z"


def new_runtime_id() -> str:
    return "rt-" + uuid.uuid4().hex[:12]


def sleep_ms(ms: float) -> None:
    time.sleep(max(ms, 0) / 1000.0)


class Signal:
    """A wake-up flag for ONE waiting thread: ``set()`` wakes it, or makes its next ``wait``
    return at once; ``wait`` consumes the flag. Built on a raw lock (held while the flag is
    clear) instead of ``threading.Event``, whose Python-level condition machinery cost ~10 us of
    CPU per wait and per set on every hand-off between the dispatcher threads."""

    __slots__ = ("_lock",)

    def __init__(self) -> None:
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:
            pass  # already set (an atomic check: concurrent set() calls cannot double-release)

    def is_set(self) -> bool:
        return not self._lock.locked()

    def clear(self) -> None:
        self._lock.acquire(False)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Until set (True, flag consumed) or ``timeout_s`` passes (False)."""
        if timeout_s is None:
            return self._lock.acquire()
        # (a poll interval of centuries is a wait without end, not an OverflowError)
        return self._lock.acquire(True, min(max(timeout_s, 0.0), threading.TIMEOUT_MAX))


def _weak_callback(method: Any) -> Callable[[Any], None]:
    """A callback that calls the bound ``method`` while its object lives, and does nothing after."""
    ref = weakref.WeakMethod(method)

    def callback(arg: Any) -> None:
        target = ref()
        if target is not None:
            target(arg)

    return callback


class CommitWaiter:
    """A client's sleep that ends early when the provider reports a commit in this process.

    ``sleep(ms)`` returns after ``ms`` or as soon as an orchestration ack commits, whichever
    comes first, so a waiting client sees a completion within microseconds instead of its next
    poll. ``wait_for(ms, instance)`` wakes only for commits of that instance when the provider
    names them (``add_commit_listener``); otherwise for every commit. ``wait_for(ms, instance,
    final_only=True)`` (a wait for the instance's end) wakes only for the ack that ended it when
    the provider reports ends apart (``add_final_commit_listener``): a chain of continue-as-new
    executions or a long orchestration no longer wakes its waiter, which then reads the status
    for nothing, on every turn. Work committed by other processes is still seen by polling.

    Each waiting thread has its own event, registered with the instance it waits for until
    ``done()``: a commit that lands between the caller's check and its next sleep is not lost."""

    def __init__(self, provider: Any) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[Signal, tuple[str | None, bool]] = {}  # -> (instance, final_only)
        self._local = threading.local()
        # The provider holds only a weak reference to this waiter: a Client dropped by its
        # owner (one per request, one per ``ctx.get_client()``) is freed, and its callback is
        # taken off the provider then. Before, every Client stayed registered forever, and each
        # commit called all of them.
        add_commit = getattr(provider, "add_commit_listener", None)
        add_final = getattr(provider, "add_final_commit_listener", None) if add_commit is not None else None
        registrations: list[tuple[Any, Any, Any]] = []
        if add_commit is not None and add_final is not None:
            # Every ack wakes the waiters that want every change; the ack that ends an
            # instance wakes all of its waiters.
            registrations += [(add_commit, getattr(provider, "remove_commit_listener", None), self._wake_turn),
                              (add_final, getattr(provider, "remove_final_commit_listener", None), self._wake)]
        elif add_commit is not None:
            registrations.append((add_commit, getattr(provider, "remove_commit_listener", None), self._wake))
        else:
            registrations.append((getattr(provider, "add_wakeup_listener", None),
                                  getattr(provider, "remove_wakeup_listener", None), self._on_commit))
        for add, remove, method in registrations:
            if add is not None:
                callback = _weak_callback(method)
                add(callback)
                if remove is not None:
                    weakref.finalize(self, remove, callback)

    def _on_commit(self, kind: str) -> None:
        if kind == "committed":
            self._wake(None)

    def _wake(self, instance: str | None, ended: bool = True) -> None:
        """A commit for ``instance`` (None: some instance): wake the waiters watching it or
        everything; when the ack did not end it (``ended`` False), only those that want every
        change, not just the end."""
        with self._lock:
            for event, (watching, final_only) in self._waiters.items():
                if (ended or not final_only) and (instance is None or watching is None or watching == instance):
                    event.set()

    def _wake_turn(self, instance: str | None) -> None:
        """An ack that did not end ``instance``."""
        self._wake(instance, False)

    def _event(self, instance: str | None, final_only: bool = False) -> Signal:
        event = getattr(self._local, "event", None)
        if event is None:
            event = self._local.event = Signal()
        key = (instance, final_only and instance is not None)
        with self._lock:
            if self._waiters.get(event) != key:
                self._waiters[event] = key
        return event

    def wait_for(self, ms: float, instance: str | None, final_only: bool = False) -> None:
        self._event(instance, final_only).wait(max(ms, 0) / 1000.0)  # consumes a commit report, if any

    def __call__(self, ms: float) -> None:
        self.wait_for(ms, None)

    def done(self) -> None:
        """The calling thread stopped waiting: forget its registration."""
        event = getattr(self._local, "event", None)
        if event is not None:
            with self._lock:
                self._waiters.pop(event, None)


def run_coroutine(coro: Any, on_start: Callable[[Callable[[], None]], None] | None = None,
                  loop_factory: Callable[[], Any] | None = None) -> Any:
    """Run an async activity to completion as ``asyncio.run`` does: on a fresh event loop that
    is closed when it returns, after cancelling the tasks it left behind and shutting down its
    default executor. A task the activity started and did not await never resumes inside a
    later activity, and no loop or executor thread outlives the activity (or the runtime).
    ``on_start`` receives a function that cancels the activity from any thread (lock loss after
    the grace period, runtime shutdown). ``loop_factory`` makes the loop (default: asyncio's;
    the simulation passes a virtual-time one, ``sim/vloop.py``)."""
    import asyncio  # on first use: asyncio (with ssl) costs ~8 MiB of RSS and ~25 ms to import

    # Production loops get an executor whose threads do not hold the process or the worker once
    # the activity is cancelled (the simulation's virtual-time loop keeps its own executor).
    executor = _activity_executor() if loop_factory is None else None

    def cancel(loop: Any, task: Any) -> None:
        if executor is not None:
            executor.abandon()
        loop.call_soon_threadsafe(task.cancel)

    async def main() -> Any:
        loop = asyncio.get_running_loop()
        if executor is not None:
            loop.set_default_executor(executor)
        if on_start is not None:
            task = asyncio.current_task()
            assert task is not None
            on_start(lambda: cancel(loop, task))
        return await coro

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())


def _activity_executor() -> Any:
    """A new :class:`_ActivityExecutor` (its class is built on first use: it derives from
    ``concurrent.futures.ThreadPoolExecutor``, which asyncio requires of a default executor and
    which this module does not import until an async activity runs)."""
    global _ActivityExecutorClass
    if _ActivityExecutorClass is None:
        import concurrent.futures

        _ActivityExecutorClass = type("_ActivityExecutor", (_ActivityExecutor, concurrent.futures.ThreadPoolExecutor), {})
    return _ActivityExecutorClass()


_ActivityExecutorClass: Any = None


class _ActivityExecutor:
    """An async activity's default executor (``asyncio.to_thread``, ``run_in_executor(None,
    ...)``): one daemon thread per job. Closing the loop waits for its jobs, as ``asyncio.run``
    does - unless the activity was cancelled (lock lost, runtime shut down): then nothing waits
    for a job still running (a thread cannot be stopped). Before, the worker thread sat in the
    loop's close until the job ended (its item not given back) and a ThreadPoolExecutor thread
    kept the process from exiting."""

    def __init__(self) -> None:
        # (ThreadPoolExecutor.__init__ is not called: none of its pool is used)
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._abandoned = False

    def abandon(self) -> None:
        self._abandoned = True

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        import concurrent.futures

        future: concurrent.futures.Future[Any] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting coroutine
                future.set_exception(exc)
            else:
                future.set_result(result)

        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            thread = threading.Thread(target=run, name="duroxide-activity-executor", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        if wait and not self._abandoned:
            for thread in threads:
                thread.join()


#: After a failed renewal, the next try comes this soon (or at the period, if shorter).
_RENEW_RETRY_MS = 100  # the renewer's next tick: within RENEWAL_MARGIN_MS of a renewal that failed


class ThreadRenewer:
    """Renews watched locks in the background at the SPEC §1 renewal period."""

    def __init__(self, provider: Any, clock: SystemClock, *, orch_buffer_ms: int, worker_buffer_ms: int, tick_ms: int = 100) -> None:
        self._provider = provider
        self._clock = clock
        self._buffers = {"orchestration": orch_buffer_ms, "worker": worker_buffer_ms}
        self._periods: dict[tuple[str, int], int] = {}  # (kind, timeout) -> renewal period
        self._tick = tick_ms / 1000.0
        self._lock = threading.Lock()
        # token -> [kind, timeout_ms, period_ms, next_due_ms, on_lost]
        self._watched: dict[str, list[Any]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="duroxide-renewer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def watch(self, kind: str, token: str, timeout_ms: int, on_lost: Callable[[], None]) -> None:
        period = self._periods.get((kind, timeout_ms))
        if period is None:
            period = self._periods[(kind, timeout_ms)] = renewal_period_ms(timeout_ms, self._buffers[kind])
        with self._lock:
            self._watched[token] = [kind, timeout_ms, period, self._clock.now_ms() + period, on_lost]

    def unwatch(self, token: str) -> None:
        with self._lock:
            self._watched.pop(token, None)

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            now = self._clock.now_ms()
            with self._lock:
                due = [(t, w) for t, w in self._watched.items() if w[3] <= now]
            for token, (kind, timeout_ms, period, _, on_lost) in due:
                try:
                    if kind == "worker":
                        self._provider.renew_work_item_lock(token, timeout_ms)
                    else:
                        self._provider.renew_orchestration_item_lock(token, timeout_ms)
                except LockLostError:
                    self.unwatch(token)
                    on_lost()
                    continue
                except ProviderError as exc:
                    # Retry soon, not a whole period later (by then the lock has expired: one
                    # renewal lost to a dropped connection re-ran the activity elsewhere).
                    _log.warning("lock renewal failed (will retry): %s", exc)
                    with self._lock:
                        if token in self._watched:
                            self._watched[token][3] = now + min(period, _RENEW_RETRY_MS)
                    continue
                with self._lock:
                    if token in self._watched:
                        self._watched[token][3] = now + period


#: Idle threads other than a queue's poller look at the queue this many poll intervals apart
#: (at most _MAX_SLOW_POLL_S, never less often than every poll interval).
_SLOW_POLL_FACTOR = 20
_MAX_SLOW_POLL_S = 1.0


class _Lane:
    """The idle threads of one queue. ``wake()`` wakes exactly one of them; with none idle it
    leaves a mark so the next thread about to park looks once more instead (no lost wake-up:
    a report either reaches an idle thread, which then fetches, or a busy one, which fetches
    before parking).

    Polling (for work that reports nothing in-process: other processes, timers coming due) is
    done by one idle thread per queue at the poll interval; the other idle threads look only
    every ``_SLOW_POLL_FACTOR`` intervals, so an idle runtime does not hammer the database with
    empty fetches from every thread. Work found by polling spreads through ``wake_helper``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[Signal] = []
        self._pending = False
        self._poller: Signal | None = None
        #: Set by wake_all (the driver stops): no thread parks any more. A single pending mark
        #: was not enough: of several threads finishing an empty step after the stop, only the
        #: first skipped its park; the others slept a whole poll interval past shutdown().
        self._stopped = False

    def wake(self) -> None:
        with self._lock:
            if self._idle:
                self._idle.pop().set()
            else:
                self._pending = True

    def wake_helper(self) -> None:
        """Wake one idle thread if there is one (no mark otherwise: the caller is busy)."""
        with self._lock:
            if self._idle:
                self._idle.pop().set()

    def park(self, event: Signal, poll_s: float) -> None:
        with self._lock:
            if self._stopped:
                return
            if self._pending:
                self._pending = False
                return
            event.clear()
            self._idle.append(event)
            if self._poller is None:
                self._poller = event
                timeout_s = poll_s
            else:
                timeout_s = max(poll_s, min(poll_s * _SLOW_POLL_FACTOR, _MAX_SLOW_POLL_S))
        event.wait(timeout_s)
        with self._lock:
            if event in self._idle:
                self._idle.remove(event)
            if self._poller is event:
                self._poller = None

    def wake_all(self) -> None:
        """Wake every parked thread and keep the others from parking (the driver stops)."""
        with self._lock:
            for event in self._idle:
                event.set()
            self._idle.clear()
            self._pending = True
            self._stopped = True


class ThreadDriver:
    """Runs dispatcher steps on threads until ``stop()``.

    ``step(carry)`` gets a per-thread dict (see ``dispatchers.Carry``): a dispatcher that acks
    and fetches the next item in one provider call leaves that item in ``carry["item"]`` for
    the thread's next step, sets ``carry["empty"]`` when that fetch found nothing (the thread
    then parks at once, as after an empty poll) and ``carry["backlog"]`` when it found work for
    another instance or activity (one more idle thread is woken). ``release(carry)`` gives back
    a prefetched item when the thread stops."""

    def __init__(
        self,
        *,
        orchestration_step: Callable[[dict], bool],
        worker_step: Callable[[dict], bool],
        orchestration_threads: int,
        worker_threads: int,
        poll_interval_ms: int,
        maintenance: Callable[[], None] | None = None,
        maintenance_interval_ms: int = 1_000,
        orchestration_release: Callable[[dict], None] | None = None,
        worker_release: Callable[[dict], None] | None = None,
    ) -> None:
        self._orch_step = orchestration_step
        self._worker_step = worker_step
        self._orch_release = orchestration_release
        self._worker_release = worker_release
        self._n_orch = orchestration_threads
        self._n_worker = worker_threads
        self._poll = poll_interval_ms / 1000.0
        self._maintenance = maintenance
        self._maintenance_interval = maintenance_interval_ms / 1000.0
        self._stop = threading.Event()
        self._lanes = {"orchestrator": _Lane(), "worker": _Lane()}
        self._threads: list[threading.Thread] = []
        self._deadline = float("inf")  # when a stop() in progress gives up waiting (time.monotonic())
        self._cap = float("inf")  # the earliest deadline another caller asked for (shorten)

    def wake(self, queue: str) -> None:
        lane = self._lanes.get(queue)
        if lane is not None:
            lane.wake()

    def start(self) -> None:
        for i in range(self._n_orch):
            self._spawn(f"duroxide-orch-{i}", self._orch_step, self._orch_release, self._lanes["orchestrator"])
        for i in range(self._n_worker):
            self._spawn(f"duroxide-worker-{i}", self._worker_step, self._worker_release, self._lanes["worker"], slot=i)
        if self._maintenance is not None:
            t = threading.Thread(target=self._maintain, name="duroxide-maintenance", daemon=True)
            t.start()
            self._threads.append(t)

    def _spawn(self, name: str, step: Callable[[dict], bool], release: Callable[[dict], None] | None,
               lane: _Lane, slot: int | None = None) -> None:
        t = threading.Thread(target=self._loop, args=(step, release, lane, slot), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _loop(self, step: Callable[[dict], bool], release: Callable[[dict], None] | None, lane: _Lane,
              slot: int | None = None) -> None:
        failures = 0
        event = Signal()
        # The thread's carry: a prefetched item between steps, and a worker thread's slot number
        # (its own worker identity when no worker_node_id is set: WorkerDispatcher.slot_owner).
        carry: dict[str, Any] = {} if slot is None else {"slot": slot}
        try:
            while not self._stop.is_set():
                try:
                    did = step(carry)
                    if failures:
                        _log.info("dispatcher recovered after %d provider error(s)", failures)
                        failures = 0
                except ProviderError as exc:
                    # SPEC §14: fetch errors back off min(100*2^n, 3000) ms when retryable, else 100 ms.
                    failures += 1
                    delay = min(100 * 2 ** min(failures, 5), 3000) if exc.retryable else 100
                    # One warning per outage (and a reminder every 100 errors), not one per
                    # back-off: a long outage logged ~1,200 lines an hour per thread.
                    _log.log(logging.WARNING if failures == 1 or failures % 100 == 0 else logging.DEBUG,
                             "dispatcher provider error %d of this outage (backing off %d ms): %s", failures, delay, exc)
                    self._stop.wait(delay / 1000.0)
                    continue
                except BaseException:  # noqa: BLE001 - keep the dispatcher alive; report loudly
                    # (BaseException too: a SystemExit escaping a step would end this thread
                    # silently and leave the runtime with one dispatcher fewer.)
                    _log.exception("dispatcher step crashed; continuing")
                    self._stop.wait(0.1)
                    continue
                if carry.pop("backlog", False):
                    lane.wake_helper()  # more work than this thread: let one more idle thread in
                if not did or carry.pop("empty", False):
                    lane.park(event, self._poll)
        finally:
            if carry.get("item") is not None and release is not None:
                try:
                    release(carry)
                except Exception:  # noqa: BLE001 - the lock expires anyway
                    _log.warning("could not give back a prefetched item on stop", exc_info=True)

    def _maintain(self) -> None:
        failing = False
        while not self._stop.wait(self._maintenance_interval * (5 if failing else 1)):
            try:
                assert self._maintenance is not None
                self._maintenance()
            except Exception as exc:  # noqa: BLE001
                # One report per outage (with the traceback), then quiet until it works again.
                if not failing and isinstance(exc, ProviderError) and exc.retryable:
                    # A transient store problem (a dropped connection): one line, no traceback.
                    _log.warning("maintenance task failed, will retry (further failures are not logged until it "
                                 "succeeds): %s", exc)
                elif not failing:
                    _log.exception("maintenance task failed (further failures are not logged until it succeeds)")
                else:
                    _log.debug("maintenance task still failing: %s", exc)
                failing = True
                continue
            if failing:
                _log.warning("maintenance task works again")
                failing = False

    def stop(self, timeout_ms: int | None = None) -> bool:
        """Signal threads to stop after their current step; wait up to ``timeout_ms``.
        Returns True when every thread finished."""
        self._stop.set()
        for lane in self._lanes.values():
            lane.wake_all()
        self._deadline = min(time.monotonic() + (1.0 if timeout_ms is None else timeout_ms / 1000.0), self._cap)
        me = threading.current_thread()
        for t in self._threads:
            if t is me:  # shutdown() called by an activity: its own thread ends after it
                continue
            # Joined in slices, so that another caller's shorter deadline (shorten) is seen.
            while t.is_alive():
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    break
                t.join(timeout=min(remaining, 0.05))
        return all(not t.is_alive() for t in self._threads if t is not me)

    def shorten(self, within_s: float) -> None:
        """End a :meth:`stop` in progress within ``within_s`` seconds at the latest: a second
        ``shutdown(0)`` cuts short a graceful shutdown another thread is waiting in."""
        deadline = time.monotonic() + within_s
        self._cap = min(self._cap, deadline)  # (also for a stop() that has not begun waiting yet)
        self._deadline = min(self._deadline, deadline)
