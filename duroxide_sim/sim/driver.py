"""SequentialDriver: runs a Runtime's real dispatchers one step at a time on a SimClock.

It alternates orchestration and worker steps until neither finds work, then jumps the clock to
the provider's next deadline (a timer becoming visible, a lock expiring). Hours of durable
timers therefore pass in microseconds. The driver is single-threaded and deterministic; the
seeded scheduler of the fault-injecting simulation chooses among the same steps at random.

Use :meth:`sleep` as a :class:`~duroxide_sim.Client`'s ``sleep`` so that client waits drive
the simulation: ``Client(provider, clock=driver.clock, sleep=driver.sleep)``.
"""

from __future__ import annotations

from typing import Any

from .clock import SimClock

__all__ = ["SequentialDriver", "StuckError"]


class StuckError(RuntimeError):
    """The step budget ran out: something keeps producing work (a livelock)."""


class SequentialDriver:
    def __init__(self, runtime: Any, clock: SimClock, *, max_steps: int = 1_000_000) -> None:
        self.runtime = runtime
        self.clock = clock
        self.max_steps = max_steps
        self.steps = 0

    def _step_once(self) -> bool:
        did = self.runtime.orchestration_dispatcher.step()
        if self.runtime.options.worker_concurrency > 0 and self.runtime.options.worker_tag_filter.mode != "none":
            did = self.runtime.worker_dispatcher.step() or did
        if did:
            self.steps += 1
            if self.steps > self.max_steps:
                raise StuckError(f"no quiescence after {self.max_steps} steps")
        return did

    def run_until_idle(self) -> None:
        """Run steps until no work is visible *now* (the clock does not move)."""
        while self._step_once():
            pass

    def run_until_quiet(self, limit_ms: int | None = None) -> None:
        """Run, jumping the clock to each next deadline, until nothing is left to do or the
        clock would pass ``now + limit_ms``."""
        stop_at = None if limit_ms is None else self.clock.now_ms() + limit_ms
        while True:
            self.run_until_idle()
            nxt = self._next_deadline()
            if nxt is None or (stop_at is not None and nxt > stop_at):
                if stop_at is not None:
                    self.clock.advance_to(stop_at)
                return
            self.clock.advance_to(nxt)

    def _next_deadline(self) -> int | None:
        hint = getattr(self.runtime.provider, "next_wakeup_ms", None)
        return hint() if hint is not None else None

    def sleep(self, ms: float) -> None:
        """Client-wait hook: run everything runnable now, then jump to the next deadline (however
        far: time skipping) or, when nothing is scheduled, let ``ms`` virtual ms pass so client
        timeouts still expire. Client timeouts are in virtual time.

        If there was work to do right now, return after doing it without moving the clock, so
        the caller observes every intermediate state (e.g. each custom status between timers)."""
        if self._step_once():
            self.run_until_idle()
            return
        nxt = self._next_deadline()
        if nxt is not None and nxt > self.clock.now_ms():
            self.clock.advance_to(nxt)
        else:
            self.clock.advance(max(int(ms), 1))
        self.run_until_idle()
