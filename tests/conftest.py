"""Shared fixtures for the test suite.

``world`` builds a Runtime + Client on an InMemoryProvider, driven by the SequentialDriver on a
SimClock (no threads, no wall time; timers finish instantly). ``live_world`` builds the same on
the production thread driver and wall clock, for the few tests marked ``realtime``.
"""

from __future__ import annotations

from collections.abc import Iterator

import attrs
import pytest

from duroxide_sim import Client, InMemoryProvider, Runtime, RuntimeOptions
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock


@attrs.define
class World:
    provider: InMemoryProvider
    runtime: Runtime
    client: Client
    clock: object
    driver: SequentialDriver | None = None

    def run(self) -> None:
        """Run the simulated world until nothing is left to do (no-op for live worlds)."""
        if self.driver is not None:
            self.driver.run_until_quiet()

    def run_for(self, ms: int) -> None:
        if self.driver is not None:
            self.driver.run_until_quiet(ms)

    def result(self, instance: str, timeout_ms: int = 10**12):
        return self.client.wait_for_orchestration(instance, timeout_ms)


def make_world(options: RuntimeOptions | None = None) -> World:
    clock = SimClock()
    provider = InMemoryProvider(clock)
    runtime = Runtime(provider, options or RuntimeOptions(), clock=clock, ids=SequentialIds())
    driver = SequentialDriver(runtime, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    return World(provider, runtime, client, clock, driver)


@pytest.fixture
def world() -> World:
    w = make_world()
    yield w
    w.provider._check()


@pytest.fixture
def replay_world() -> World:
    """Like ``world`` but without the instance cache: every turn re-runs the code from scratch."""
    w = make_world(RuntimeOptions(instance_cache_size=0))
    yield w
    w.provider._check()


@pytest.fixture
def live_world() -> Iterator[World]:
    provider = InMemoryProvider()
    runtime = Runtime(provider, RuntimeOptions(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=2_000, session_idle_timeout_ms=60_000))
    client = Client(provider)
    w = World(provider, runtime, client, runtime.clock)
    yield w
    runtime.shutdown(2000)
