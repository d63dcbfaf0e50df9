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
  when the loop looked.
* Real network I/O has no place in a simulated activity (simulate the outside world with an
  :class:`~duroxide_sim.sim.world.ExternalWorld`): with a timer pending, the loop does not wait
  for sockets, so a read with a timeout times out at once.

Runs like ``asyncio.run`` (``asyncio.Runner``): leftover tasks are cancelled and the loop is
closed when the activity returns.
"""

from __future__ import annotations

import asyncio
import math
import selectors
from collections.abc import Callable
from typing import Any

from ..runtime.realtime import run_coroutine

__all__ = ["VirtualTimeLoop", "run_virtual", "virtual_run_coroutine"]


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
        if timeout is None or loop._threads:
            # Nothing scheduled (only I/O or another thread can wake the loop), or a thread's
            # work is pending (it takes no virtual time): wait for it for real.
            return self._real.select(None)
        events = self._real.select(0)
        if not events:
            loop._advance(timeout)  # the next timer is due now
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose ``time()`` is virtual (see the module docstring)."""

    def __init__(self, start_s: float = 0.0) -> None:
        selector = _VirtualSelector()
        super().__init__(selector)
        selector.loop = self
        self._now = float(start_s)
        self._clock_resolution = max(1e-9, 2 * math.ulp(self._now))  # timers within this of now are due
        self._threads = 0  # executor jobs in flight

    def time(self) -> float:
        return self._now

    def _advance(self, timeout: float) -> None:
        # To the due time of the earliest timer exactly: ``now + (when - now)`` can round to
        # just below ``when`` and leave the timer not due. (The selector was asked to wait
        # ``timeout`` = that timer's distance, or less when asyncio caps long waits.)
        scheduled = self._scheduled  # asyncio's heap of TimerHandles, earliest first
        due = scheduled[0].when() if scheduled else None
        if due is not None and due - self._now <= timeout:
            self._now = max(self._now, due)
        else:
            self._now += timeout
        # asyncio runs the timers due before now + resolution: that sum must exceed now.
        self._clock_resolution = max(1e-9, 2 * math.ulp(self._now))

    def run_in_executor(self, executor: Any, func: Callable[..., Any], *args: Any) -> asyncio.Future[Any]:
        future = super().run_in_executor(executor, func, *args)
        self._threads += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _future: Any) -> None:
        self._threads -= 1


def run_virtual(coro: Any, on_start: Callable[[Callable[[], None]], None] | None, start_ms: int) -> Any:
    """Run an async activity as production does (``realtime.run_coroutine``: as ``asyncio.run``,
    with the cancel hook), on a fresh :class:`VirtualTimeLoop` whose clock starts at
    ``start_ms``. ``on_start`` receives a function that cancels the activity."""
    return run_coroutine(coro, on_start, loop_factory=lambda: VirtualTimeLoop(start_ms / 1000.0))


def virtual_run_coroutine(now_ms: Callable[[], int]) -> Callable[..., Any]:
    """A ``run_coroutine(coro, on_start)`` for a simulated runtime (each activity on its own
    loop, starting at the simulation's current time ``now_ms()``)."""

    def run(coro: Any, on_start: Callable[[Callable[[], None]], None] | None = None) -> Any:
        return run_virtual(coro, on_start, now_ms())

    return run
