"""Event and queue subscriptions pair with arrivals exactly as the plain definition says.

SPEC §6.1/§6.2: the n-th *active* (not cancelled) subscription of a name receives the n-th
arrival of that name. The engine keeps, per name, the list of active subscriptions and a
watermark below which every pair is already done, so an actor's n-th message costs O(1)
instead of a walk over all n subscriptions (before, a cold replay of an actor that waited 10,000
times took 96x as long as one that waited 1,000 times; ``bench/actor_replay.py`` prints the
figures). These tests compare it with a reference engine that checks the active list against
its definition (every bound, non-cancelled subscription of the name, in bind order) and walks
every pair from the first, on random actors (waits, dequeues, races that drop subscriptions,
joins, timers) with random arrivals, cold (every turn replays from scratch) and warm (cached
engines), and on hand-built histories whose breadcrumbs cancel subscriptions below the
watermark.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim import Client, Runtime, RuntimeOptions
from duroxide_sim.core import replay
from duroxide_sim.core.engine import _Engine
from duroxide_sim.sim import SequentialDriver, SequentialIds, SimClock
from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS
from duroxide_sim.providers.memory import InMemoryProvider

from .histories import (
    registry,
    turn,
    external_cancelled,
    external_event,
    external_subscribed,
    queue_cancelled,
    queue_delivered,
    queue_subscribed,
    started,
)


class _ReferenceEngine(_Engine):
    """The engine, checked at every settle against the definition: the maintained active list
    is every bound, non-cancelled subscription of the name in bind order; afterwards every pair
    below min(subscriptions, arrivals) is done, and each subscription resolved now got the
    arrival at its position."""

    __slots__ = ("resolved",)

    def _resolve_text(self, slot: Any, text: str) -> None:
        self.resolved.append((slot, text))
        super()._resolve_text(slot, text)

    def _settle(self, kind: str, name: str, active: Any, items: list[Any], pair: bool) -> None:
        expected = sorted(
            (s for s in self.by_id.values() if s.kind == kind and s.name == name and not s.cancelled),
            key=lambda s: s.event_id,
        )
        assert list(active) == expected, (kind, name)
        self.resolved = []
        super()._settle(kind, name, active, items, pair)
        texts = [item[1] if pair else item for item in items]
        for slot, text in self.resolved:
            assert text == texts[active.index(slot)], (kind, name, slot.event_id)
        for idx in range(min(len(active), len(items))):
            assert active[idx].done, (kind, name, idx)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["wait", "dequeue", "race_wait", "race_dequeue", "race_two", "join", "timer"]),
        st.sampled_from(["a", "b"]),
        st.integers(1, 3).map(lambda n: n * 1_000),
    ),
    min_size=1,
    max_size=12,
)
ARRIVALS = st.lists(
    st.tuples(st.sampled_from(["raise", "enqueue"]), st.sampled_from(["a", "b"]), st.integers(0, 2_500)),
    max_size=14,
)


def actor(ctx: Any, script: list[list[Any]]) -> Any:
    got: list[Any] = []
    for kind, name, delay in script:
        if kind == "wait":
            got.append((yield ctx.wait_for_event(name)))
        elif kind == "dequeue":
            got.append((yield ctx.dequeue_event(name)))
        elif kind == "race_wait":
            got.append((yield ctx.race(ctx.wait_for_event(name), ctx.schedule_timer(delay))))
        elif kind == "race_dequeue":
            got.append((yield ctx.race(ctx.dequeue_event(name), ctx.schedule_timer(delay))))
        elif kind == "race_two":
            got.append((yield ctx.race(ctx.wait_for_event(name), ctx.dequeue_event(name), ctx.schedule_timer(delay))))
        elif kind == "join":
            got.append((yield ctx.all([ctx.wait_for_event(name), ctx.dequeue_event(name)])))
        else:
            yield ctx.schedule_timer(delay)
    return got


def _run(script: list[Any], arrivals: list[Any], cache_size: int) -> tuple[Any, list[Any]]:
    clock = SimClock(DEFAULT_EPOCH_MS)
    provider = InMemoryProvider(clock)
    rt = Runtime(provider, RuntimeOptions(instance_cache_size=cache_size), clock=clock, ids=SequentialIds(0))
    rt.register_orchestration("Actor")(actor)
    driver = SequentialDriver(rt, clock)
    client = Client(provider, clock=clock, sleep=driver.sleep)
    client.start_orchestration("act", "Actor", [list(op) for op in script])
    driver.run_until_quiet(limit_ms=0)
    for n, (how, name, after_ms) in enumerate(arrivals):
        driver.run_until_quiet(limit_ms=after_ms)
        send = client.raise_event if how == "raise" else client.enqueue_event
        send("act", name, f"m{n}")
        driver.run_until_idle()
    driver.run_until_quiet(limit_ms=60_000)
    status = client.get_orchestration_status("act")
    return (status.status, status.output, status.error), client.read_execution_history("act", 1)


@pytest.mark.parametrize("cache_size", [0, 16], ids=["cold", "warm"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(script=OPS, arrivals=ARRIVALS)
def test_random_actors_pair_like_the_definition(cache_size: int, script: Any, arrivals: Any) -> None:
    fast = _run(script, arrivals, cache_size)
    original = replay._Engine
    replay._Engine = _ReferenceEngine  # type: ignore[misc]
    try:
        reference = _run(script, arrivals, cache_size)
    finally:
        replay._Engine = original  # type: ignore[misc]
    assert fast == reference


def test_an_actor_that_waits_thousands_of_times_gets_every_message_in_order() -> None:
    script = [["dequeue", "a", 1_000]] * 1_500
    arrivals = [("enqueue", "a", 0)] * 1_500
    (status, output, _), _history = _run(script, arrivals, 0)
    assert status == "Completed"
    assert output == [f"m{n}" for n in range(1_500)]


def _pos_history() -> list[Any]:
    # Three waits on "x" (ids 2-4) and arrivals at 5-6: the first two are done. A breadcrumb
    # (hostile: written for a wait that was not dropped) then cancels the *done* first wait,
    # below the watermark, so the later waits move up a position.
    return [
        started(input="null"),
        external_subscribed(2, "x"),
        external_subscribed(3, "x"),
        external_subscribed(4, "x"),
        external_event(5, "x", '"one"'),
        external_event(6, "x", '"two"'),
        external_cancelled(7, 2),
        external_event(8, "x", '"three"'),
    ]


def _queue_history() -> list[Any]:
    return [
        started(input="null"),
        queue_subscribed(2, "x"),
        queue_subscribed(3, "x"),
        queue_subscribed(4, "x"),
        queue_delivered(5, "x", '"one"'),
        queue_delivered(6, "x", '"two"'),
        queue_cancelled(7, 2),
        queue_delivered(8, "x", '"three"'),
    ]


def _three(kind: str) -> Any:
    def orch(ctx: Any, _input: Any) -> Any:
        make = ctx.wait_for_event if kind == "wait" else ctx.dequeue_event
        tasks = [make("x"), make("x"), make("x")]
        return (yield ctx.all(tasks))
    return orch


@pytest.mark.parametrize("kind,history", [("wait", _pos_history), ("queue", _queue_history)])
def test_a_breadcrumb_below_the_watermark_shifts_the_later_pairs_like_the_definition(kind: str, history: Any) -> None:
    reg = registry(_three(kind))
    fast = turn(reg, history())
    original = replay._Engine
    replay._Engine = _ReferenceEngine  # type: ignore[misc]
    try:
        reference = turn(reg, history())
    finally:
        replay._Engine = original  # type: ignore[misc]
    assert (fast.kind, fast.output, fast.delta) == (reference.kind, reference.output, reference.delta)
    # The code dropped nothing, so the history's breadcrumb is reported (after the walk) as a
    # cancellation mismatch; the walk before it paired the same way as the definition.
    assert fast.kind == "failed" and "cancellation mismatch" in str(fast.error)
