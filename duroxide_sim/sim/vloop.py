"""Async activities on virtual time: the event loop a simulated process runs them on.

In production an ``async def`` activity runs on a fresh event loop (``realtime.run_coroutine``,
as ``asyncio.run``), and ``await asyncio.sleep(5)`` takes five seconds. In a simulation that
would make a run's real duration depend on its activities' sleeps, and the outcome of
``asyncio.wait_for(..., timeout)`` or of racing sleeps depend on the machine's speed: the same
seed could give a different trace. So a simulated process runs them on
:class:`VirtualTimeLoop`, an ``asyncio`` selector loop whose clock is virtual:

* ``loop.time()`` (seconds, like ``time.monotonic()`` with its own origin: the simulation's
  start) starts at the simulation's current virtual time and moves only when the loop
  has nothing to do but wait for its next timer: it then jumps to that timer instead of
  sleeping. Sleeps, timeouts and ``call_later`` cost no real time and always fire in the same
  order. (The activity still runs within one simulation step: its virtual time is its own and
  does not move the simulation's clock.)
* Work handed to threads (``run_in_executor``, ``asyncio.to_thread``) is waited for in real
  time, and virtual time stands still meanwhile: a thread's work takes no virtual time, so a
  ``wait_for(to_thread(f), 30)`` does not time out merely because the thread had not finished
  when the loop looked. If the thread has not called back within ``THREAD_WAIT_S`` real seconds
  while a timer is pending, the timer fires (the thread may be waiting for it). Threads started
  any other way (``pool.submit`` wrapped in ``asyncio.wrap_future``, a bare ``threading.Thread``)
  are not known to the loop and are not waited for while a timer is pending.
* An activity that can never finish fails with :class:`VirtualLoopStuck` instead of hanging the
  run: nothing can wake its loop (no timer, no executor work, no call-back within
  ``STUCK_AFTER_S`` real seconds), it sleeps forever, or its timers loop without end.
* Real network I/O has no place in a simulated activity (simulate the outside world with an
  :class:`~duroxide_sim.sim.world.ExternalWorld`): with a timer pending, the loop does not wait
  for sockets, so a read with a timeout times out at once.

Runs like ``asyncio.run`` (``asyncio.Runner``): leftover tasks are cancelled and the loop is
closed when the activity returns.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import math
import selectors
import threading
from collections.abc import Callable
from typing import Any

from ..runtime.realtime import run_coroutine

__all__ = ["VirtualTimeLoop", "VirtualLoopStuck", "run_virtual", "virtual_run_coroutine"]


class _VirtualSelector(selectors.BaseSelector):
    """A real selector that, instead of blocking until a timer is due, reports nothing and
    moves its loop's virtual clock to that timer."""

    def __init__(self) -> None:
        self._real = selectors.DefaultSelector()
        self.loop: VirtualTimeLoop | None = None

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.register(fileobj, events, data)

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._real.unregister(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        return self._real.modify(fileobj, events, data)

    def get_map(self) -> Any:
        return self._real.get_map()

    def close(self) -> None:
        self._real.close()

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        loop = self.loop
        assert loop is not None
        if timeout is not None and timeout <= 0:
            return self._real.select(0)  # callbacks are ready: just poll
        if loop._threads:
            # Executor work is pending: it takes no virtual time, so wait for it for real. Only
            # up to THREAD_WAIT_S while a timer is pending: the thread may be waiting for that
            # timer (a queue another task fills after a sleep), and time must then move.
            events = self._real.select(None if timeout is None else THREAD_WAIT_S)
            if not events and timeout is not None:
                loop._advance(timeout)
            return events
        if timeout is None:
            # No timer, no executor work: only I/O or another thread can wake the loop. In a
            # simulation nothing will: give a stray thread STUCK_AFTER_S, then fail the activity
            # instead of hanging the run.
            events = self._real.select(STUCK_AFTER_S)
            if not events:
                raise VirtualLoopStuck(
                    "the async activity waits for something nothing can deliver in simulation (no timer "
                    f"pending, no executor work, no I/O or thread call-back within {STUCK_AFTER_S:g} s real time): "
                    "an awaited future or event nobody sets?"
                )
            return events
        events = self._real.select(0)
        if not events:
            loop._advance(timeout)  # the next timer is due now
        return events


#: Real seconds to wait for executor work before letting a pending timer fire instead.
THREAD_WAIT_S = 1.0
#: Real seconds an activity with nothing to wait for (no timer, no executor work) is given
#: before it fails as stuck.
STUCK_AFTER_S = 2.0
#: Virtual-time jumps one activity may make (an endless loop of timers fails it, instead of
#: spinning the run forever).
MAX_ADVANCES = 1_000_000


class VirtualLoopStuck(RuntimeError):
    """An async activity in simulation can never finish (nothing can wake its loop, it sleeps
    forever, or it loops on timers without end): it fails with this instead of hanging the run."""


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual (see the module docstring)."""

    def __init__(self, start_s: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = float(start_s)
        self._clock_resolution = max(1e-9, 2 * math.ulp(self._now))  # timers within this of now are due
        self._threads = 0  # executor jobs in flight
        self._advances = 0

    def time(self) -> float:
        return self._now

    def _advance(self, timeout: float) -> None:
        # To the due time of the earliest timer exactly: ``now + (when - now)`` can round to
        # just below ``when`` and leave the timer not due. (The selector was asked to wait
        # ``timeout`` = that timer's distance, or less when asyncio caps long waits.)
        scheduled = self._scheduled  # asyncio's heap of TimerHandles, earliest first
        due = scheduled[0].when() if scheduled else None
        self._advances += 1
        if due == math.inf or self._advances > MAX_ADVANCES:
            raise VirtualLoopStuck(
                "the async activity sleeps forever" if due == math.inf else
                f"the async activity's timers moved virtual time {MAX_ADVANCES:,} times without it finishing "
                "(an endless loop of sleeps?)"
            )
        if due is not None and due - self._now <= timeout:
            self._now = max(self._now, due)
        else:
            self._now += timeout
        # asyncio runs the timers due before now + resolution: that sum must exceed now.
        self._clock_resolution = max(1e-9, 2 * math.ulp(self._now))

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        # In the caller's context (as asyncio.to_thread does): the simulation's log sink is a
        # context variable, and a thread's trace_* lines belong in the trace.
        if executor is None or isinstance(executor, concurrent.futures.ThreadPoolExecutor):
            future = super().run_in_executor(executor, contextvars.copy_context().run, func, *args)
        else:  # another process (a context does not pickle, and a process has its own)
            future = super().run_in_executor(executor, func, *args)
        self._threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: Any) -> None:
        self._threads -= 1


def run_virtual(coro: Any, on_start: Callable[[Callable[[], None]], None] | None, start_ms: int) -> Any:
    """Run an async activity as production does (``realtime.run_coroutine``: as ``asyncio.run``,
    with the cancel hook), on a fresh :class:`VirtualTimeLoop` whose clock starts at
    ``start_ms``. ``on_start`` receives a function that cancels the activity. A simulation run
    from async code (an ``async def`` test, a notebook) has a loop running in this thread, where
    no other loop may run: the activity then runs in a thread of its own (in this context)."""

    def run() -> Any:
        return run_coroutine(coro, on_start, loop_factory=lambda: VirtualTimeLoop(start_ms / 1000.0))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run()
    outcome: list[Any] = []

    def target() -> None:
        try:
            outcome.append((True, run()))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome.append((False, exc))

    thread = threading.Thread(target=contextvars.copy_context().run, args=(target,), name="duroxide-sim-async-activity")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value


def virtual_run_coroutine(now_ms: Callable[[], int]) -> Callable[..., Any]:
    """A ``run_coroutine(coro, on_start)`` for a simulated runtime (each activity on its own
    loop, starting at the simulation's current time ``now_ms()``)."""

    def run(coro: Any, on_start: Callable[[Callable[[], None]], None] | None = None) -> Any:
        return run_virtual(coro, on_start, now_ms())

    return run
