"""The production world: wall clock, uuid4, threads. The ONLY module that touches them.

* :class:`SystemClock` - integer ms since the epoch from ``time.time_ns``.
* :class:`UuidIds` - GUIDs for ``ctx.new_guid()`` and runtime ids from ``uuid4``.
* :class:`ThreadRenewer` - one background thread renewing the locks of running work and
  reporting lost locks (activity cancellation, SPEC §11.2).
* :class:`ThreadDriver` - runs dispatcher ``step()``s on ``orchestration_concurrency`` +
  ``worker_concurrency`` threads. Idle threads sleep until the next poll interval **or** until
  the provider reports new in-process work (wake-up listener), so work started in the same
  process begins immediately instead of after a poll.
* :func:`run_coroutine` - runs an ``async def`` activity on a per-thread event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
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


class UuidIds:
    def new_guid(self) -> str:
        return str(uuid.uuid4())


def new_runtime_id() -> str:
    return "rt-" + uuid.uuid4().hex[:12]


def sleep_ms(ms: float) -> None:
    time.sleep(max(ms, 0) / 1000.0)


class CommitWaiter:
    """A client's sleep that ends early when the provider reports a commit in this process.

    ``sleep(ms)`` returns after ``ms`` or as soon as an orchestration ack commits, whichever
    comes first, so a waiting client sees a completion within microseconds instead of its next
    poll. Work committed by other processes is still seen by polling."""

    def __init__(self, provider: Any) -> None:
        self._event = threading.Event()
        self._generation = 0
        add = getattr(provider, "add_wakeup_listener", None)
        if add is not None:
            add(self._on_commit)

    def _on_commit(self, kind: str) -> None:
        if kind == "committed":
            self._event.set()

    def __call__(self, ms: float) -> None:
        self._event.wait(max(ms, 0) / 1000.0)
        self._event.clear()


_loops = threading.local()


def run_coroutine(coro: Any) -> Any:
    """Run a coroutine to completion on this thread's private event loop."""
    loop = getattr(_loops, "loop", None)
    if loop is None or loop.is_closed():
        loop = asyncio.new_event_loop()
        _loops.loop = loop
    return loop.run_until_complete(coro)


class ThreadRenewer:
    """Renews watched locks in the background at the SPEC §1 renewal period."""

    def __init__(self, provider: Any, clock: SystemClock, *, orch_buffer_ms: int, worker_buffer_ms: int, tick_ms: int = 100) -> None:
        self._provider = provider
        self._clock = clock
        self._buffers = {"orchestration": orch_buffer_ms, "worker": worker_buffer_ms}
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
        period = renewal_period_ms(timeout_ms, self._buffers[kind])
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
                    _log.warning("lock renewal failed (will retry): %s", exc)
                with self._lock:
                    if token in self._watched:
                        self._watched[token][3] = now + period


class ThreadDriver:
    """Runs dispatcher steps on threads until ``stop()``."""

    def __init__(
        self,
        *,
        orchestration_step: Callable[[], bool],
        worker_step: Callable[[], bool],
        orchestration_threads: int,
        worker_threads: int,
        poll_interval_ms: int,
        maintenance: Callable[[], None] | None = None,
        maintenance_interval_ms: int = 1_000,
    ) -> None:
        self._orch_step = orchestration_step
        self._worker_step = worker_step
        self._n_orch = orchestration_threads
        self._n_worker = worker_threads
        self._poll = poll_interval_ms / 1000.0
        self._maintenance = maintenance
        self._maintenance_interval = maintenance_interval_ms / 1000.0
        self._stop = threading.Event()
        self._wake = {"orchestrator": threading.Event(), "worker": threading.Event()}
        self._threads: list[threading.Thread] = []
        self._busy = 0
        self._busy_lock = threading.Lock()

    def wake(self, queue: str) -> None:
        event = self._wake.get(queue)
        if event is not None:
            event.set()

    def start(self) -> None:
        for i in range(self._n_orch):
            self._spawn(f"duroxide-orch-{i}", self._orch_step, self._wake["orchestrator"])
        for i in range(self._n_worker):
            self._spawn(f"duroxide-worker-{i}", self._worker_step, self._wake["worker"])
        if self._maintenance is not None:
            t = threading.Thread(target=self._maintain, name="duroxide-maintenance", daemon=True)
            t.start()
            self._threads.append(t)

    def _spawn(self, name: str, step: Callable[[], bool], wake: threading.Event) -> None:
        t = threading.Thread(target=self._loop, args=(step, wake), name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _loop(self, step: Callable[[], bool], wake: threading.Event) -> None:
        failures = 0
        while not self._stop.is_set():
            wake.clear()
            try:
                with self._busy_lock:
                    self._busy += 1
                try:
                    did = step()
                finally:
                    with self._busy_lock:
                        self._busy -= 1
                failures = 0
            except ProviderError as exc:
                # SPEC §14: fetch errors back off min(100*2^n, 3000) ms when retryable, else 100 ms.
                failures += 1
                delay = min(100 * 2 ** min(failures, 5), 3000) if exc.retryable else 100
                _log.warning("dispatcher provider error (backing off %d ms): %s", delay, exc)
                self._stop.wait(delay / 1000.0)
                continue
            except Exception:  # noqa: BLE001 - keep the dispatcher alive; report loudly
                _log.exception("dispatcher step crashed; continuing")
                self._stop.wait(0.1)
                continue
            if not did:
                wake.wait(self._poll)

    def _maintain(self) -> None:
        while not self._stop.wait(self._maintenance_interval):
            try:
                assert self._maintenance is not None
                self._maintenance()
            except Exception:  # noqa: BLE001
                _log.exception("maintenance task failed")

    def stop(self, timeout_ms: int | None = None) -> bool:
        """Signal threads to stop after their current step; wait up to ``timeout_ms``.
        Returns True when every thread finished."""
        self._stop.set()
        for event in self._wake.values():
            event.set()
        deadline = time.monotonic() + (1.0 if timeout_ms is None else timeout_ms / 1000.0)
        for t in self._threads:
            t.join(timeout=max(deadline - time.monotonic(), 0))
        return all(not t.is_alive() for t in self._threads)
