"""An orchestration engine the runtime is done with is freed by reference counting, without the
cycle collector.

A live engine sits in reference cycles (engine -> generator frame -> ``ctx`` -> engine; slot ->
owner engine; task <-> slot). The engine cache evicts engines (LRU) and every finished execution
drops its engine; left to the cycle collector, engines that had been cached reached the oldest
generation and piled up by the thousand until a full collection (W4 with 2,000 instances peaked
at ~50 MiB instead of ~34). The cache now releases the engines it drops and a finished turn
releases its own (``_Engine.release``). These tests run with the collector disabled and watch
the contexts the code received through weak references: each must die as soon as its engine is
evicted or its execution ends.

(Error paths are not covered: an exception caught in a frame whose locals lead back to it -
the engine's, a retry loop's, user code's - forms a small cycle of its own, which is garbage as
soon as the turn ends and goes in the collector's youngest generation.)
"""

from __future__ import annotations

import gc
import weakref

import pytest

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.core.events import StartOrchestration
from duroxide_sim.core.registry import Registry
from duroxide_sim.core.replay import EngineCache, TurnInput, execute_turn
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock

CACHE = 4


@pytest.fixture
def no_cycle_collector():
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _live(refs: list[weakref.ref]) -> int:
    return sum(1 for ref in refs if ref() is not None)


class World:
    def __init__(self) -> None:
        self.clock = SimClock()
        self.provider = InMemoryProvider(self.clock)
        self.runtime = Runtime(self.provider, RuntimeOptions(instance_cache_size=CACHE), clock=self.clock,
                               ids=SequentialIds(0))
        self.driver = SequentialDriver(self.runtime, self.clock)
        self.client = Client(self.provider, clock=self.clock, sleep=self.driver.sleep)
        self.contexts: list[weakref.ref] = []  # every context an orchestration run received
        self.closed: list[tuple[str, bool]] = []  # (instance, is_replaying) from `finally:` blocks

        @self.runtime.register_activity("Inc")
        def inc(ctx, x):
            return x + 1

        @self.runtime.register_activity("Times10")
        def times10(ctx, x):
            return x * 10

        @self.runtime.register_orchestration("Wait")
        def wait(ctx, _):
            self.contexts.append(weakref.ref(ctx))
            try:
                return (yield ctx.wait_for_event("go"))
            finally:
                self.closed.append((ctx.instance_id, ctx.is_replaying()))

        @self.runtime.register_orchestration("Chain")
        def chain(ctx, n):
            self.contexts.append(weakref.ref(ctx))
            x = 0
            for _ in range(n):
                x = yield ctx.schedule_activity("Inc", x)
            return x

        @self.runtime.register_orchestration("Mixed")
        def mixed(ctx, n):
            # A retry task inside a join (an engine fiber), a race that drops its loser, a
            # child orchestration, then continue-as-new once.
            self.contexts.append(weakref.ref(ctx))
            retry = {"max_attempts": 3, "backoff": "fixed"}
            both = yield ctx.all([ctx.schedule_activity_with_retry("Times10", n + 1, retry),
                                  ctx.schedule_activity("Inc", n)])
            raced = yield ctx.race(ctx.schedule_timer(5), ctx.wait_for_event("never"))
            child = yield ctx.schedule_sub_orchestration("Chain", 2)
            if n == 0:
                return (yield ctx.continue_as_new(1))
            return [both[0]["ok"], both[1]["ok"], raced["index"], child]

    def run(self) -> None:
        self.driver.run_until_quiet()


def test_evicted_engines_are_freed_at_once_and_their_code_closed_as_replay(no_cycle_collector):
    world = World()
    names = [f"w{n}" for n in range(12)]
    for name in names:
        world.client.start_orchestration(name, "Wait")
    world.run()
    cache = world.runtime.orchestration_dispatcher.cache
    assert len(cache) == CACHE
    # Only the cached engines' contexts are alive; the evicted ones' generators were closed
    # when they left the cache (in eviction order), their `finally:` running as replay.
    assert _live(world.contexts) == CACHE
    assert world.closed == [(name, True) for name in names[:-CACHE]]
    for name in names:
        world.client.raise_event(name, "go", name.upper())
    world.run()
    for name in names:
        status = world.client.get_orchestration_status(name)
        assert (status.status, status.output) == ("Completed", name.upper())
    assert _live(world.contexts) == 0  # finished: every engine released, none left in a cycle
    assert len(cache) == 0


@pytest.mark.parametrize("orchestration, arg, output", [
    ("Chain", 5, 5),
    ("Mixed", 0, [20, 2, 0, 2]),  # (the continue-as-new's second execution returns)
])
def test_finished_and_evicted_engines_leave_no_cycles(no_cycle_collector, orchestration, arg, output):
    world = World()
    names = [f"{orchestration.lower()}{n}" for n in range(10)]
    for name in names:
        world.client.start_orchestration(name, orchestration, arg)
    world.run()
    for name in names:
        status = world.client.get_orchestration_status(name)
        assert (status.status, status.output) == ("Completed", output), status
    assert world.runtime.orchestration_dispatcher.cache.misses > 0  # some engines were evicted
    assert len(world.contexts) > len(names)
    assert _live(world.contexts) == 0


def test_an_engine_the_cache_pushes_out_is_freed_without_the_collector(no_cycle_collector):
    reg = Registry()
    contexts: list[weakref.ref] = []

    def wait(ctx, _):
        contexts.append(weakref.ref(ctx))
        return (yield ctx.wait_for_event("go"))

    reg.add_orchestration("Wait", wait)
    cache = EngineCache(1)
    for instance in ("a", "b"):
        result = execute_turn(TurnInput(
            instance=instance, execution_id=1, orchestration_name="Wait", version=None, history=[],
            messages=[StartOrchestration(instance=instance, orchestration="Wait", input="null")], now_ms=1_000,
            kv_snapshot={}), reg, cache)
        assert result.kind == "continue" and result.engine is not None
        cache.put(instance, result.engine)
        del result
    assert [ref() is not None for ref in contexts] == [False, True]  # "a" was pushed out by "b"
    cache.clear()
    assert _live(contexts) == 0
