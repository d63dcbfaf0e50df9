"""Catch-up of a cached engine that is behind the fetched history (replay.EngineCache).

Several runtimes (one ``EngineCache`` each) take turns of one instance. A runtime whose parked
engine produced a prefix of the fetched history resumes it and walks the suffix the others
wrote as replay, instead of re-running the code from scratch. Every turn here is also computed
from scratch (no cache) and must be identical; the cache counters are checked too, so that no
test passes by quietly falling back to a full replay.
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from typing import Any

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st

from duroxide_sim.core.events import (
    ActivityCancelRequested,
    ActivityExecute,
    ActivityScheduled,
    CancelInstance,
    ExternalSubscribedCancelled,
    HistoryEvent,
    OrchestrationCancelRequested,
    QueueSubscriptionCancelled,
    StartOrchestration,
    TimerFiredMsg,
    WorkItem,
)
from duroxide_sim.core.registry import Registry
from duroxide_sim.core.replay import EngineCache, TurnInput, TurnResult, execute_turn
from tests.core.histories import (
    INSTANCE,
    act_done,
    act_fail,
    cancel,
    child_done,
    enqueued,
    external_cancelled,
    external_subscribed,
    fired,
    line_of,
    raised,
    registry,
    start_msg,
    started,
    timer_created,
)

STEP_MS = 100  # the world clock moves this much per turn
BASE_MS = 1_000_000

#: Everything a turn commits or reports (the engine aside).
FIELDS = ("kind", "execution_id", "delta", "worker_items", "orchestrator_items", "cancelled", "status", "output",
          "error", "logs", "message")


# --- orchestrations ------------------------------------------------------------------------------


def sequential(ctx, n):
    """Activities one after another. Each step writes a KV value and prunes by a cutoff read
    from an activity result, so the code takes another path unless ``ctx_now()`` returns the
    recorded timestamps while the suffix is replayed (as in a cold replay)."""
    out = []
    for i in range(n):
        ctx.trace_info(f"step {i}")
        now = yield ctx.schedule_activity("clock", i)
        ctx.set_kv_value(f"k{i}", str(i))
        pruned = ctx.prune_kv_values_updated_before(now + 1)
        out.append((yield ctx.schedule_activity(f"step-{pruned}", i)))
    return out


def fan_out(ctx, n):
    first = yield ctx.all([ctx.schedule_activity("a", i) for i in range(n)])
    ctx.set_custom_status(f"first {len(first)}")
    second = yield ctx.all([ctx.schedule_activity("b", i) for i in range(n)] + [ctx.schedule_timer(250)])
    child = yield ctx.schedule_sub_orchestration("Child", {"n": n})
    mixed = yield ctx.all([ctx.schedule_activity("fail", 0), ctx.schedule_activity("c", 1)])
    ctx.trace_info("fanned out")
    return {"first": first, "second": second, "child": child, "mixed": mixed}


def events_and_timers(ctx, _):
    yield ctx.schedule_timer(1_000)
    first = yield ctx.wait_for_event("go")
    ctx.set_kv_value("first", first)
    r = yield ctx.schedule_activity("after", first)
    yield ctx.schedule_timer(300)
    q = yield ctx.dequeue_event("inbox")
    second = yield ctx.wait_for_event("go")
    return [first, r, q, second, ctx.get_kv_value("first")]


EVENTS_SCRIPT = (
    (BASE_MS + 1_500, raised("go", '"one"')),
    (BASE_MS + 1_600, enqueued("inbox", '"mail"')),
    (BASE_MS + 4_000, raised("go", '"two"')),
)


def drops(ctx, _):
    """Futures dropped by races: every kind of dropped-future breadcrumb gets written."""
    out = []
    # A wait that loses to a timer: ExternalSubscribedCancelled(dropped_future).
    out.append((yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(1_000))))
    # An activity that loses to a timer: ActivityCancelRequested(dropped_future); its late
    # completion is recorded, not delivered.
    out.append((yield ctx.race(ctx.schedule_activity("slow", 1), ctx.schedule_timer(10))))
    out.append((yield ctx.schedule_activity("step", 2)))
    # A timer that loses to an event (timers get no breadcrumb).
    out.append((yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(100_000))))
    # A dequeue that loses to a timer: QueueSubscriptionCancelled(dropped_future).
    out.append((yield ctx.race(ctx.dequeue_event("q"), ctx.schedule_timer(10))))
    out.append((yield ctx.schedule_activity("step", 3)))
    return out


DROPS_SCRIPT = ((BASE_MS + 3_000, raised("approve", '"yes"')),)


def cancellable(ctx, n):
    for i in range(n):
        yield ctx.schedule_activity("step", i)
    yield ctx.all([ctx.schedule_activity("slow", n), ctx.schedule_sub_orchestration("Child", n)])
    yield ctx.wait_for_event("never")


CANCEL_SCRIPT = ((BASE_MS + 550, cancel("stop")),)


def _child(ctx, inp):
    return inp


REG = registry(Sequential=sequential, FanOut=fan_out, Events=events_and_timers, Drops=drops,
               Cancellable=cancellable, Child=_child)

#: name -> (input, script of (due ms, message)) for the worlds below.
ORCHESTRATIONS: dict[str, tuple[Any, tuple[tuple[int, WorkItem], ...]]] = {
    "Sequential": (4, ()),
    "FanOut": (3, ()),
    "Events": (None, EVENTS_SCRIPT),
    "Drops": (None, DROPS_SCRIPT),
    "Cancellable": (3, CANCEL_SCRIPT),
}


# --- a tiny world: one instance, several runtimes, a clock and a message queue -------------------


def assert_same_turn(got: TurnResult, want: TurnResult, what: str = "") -> None:
    for name in FIELDS:
        assert getattr(got, name) == getattr(want, name), f"{what}: {name} differs from a from-scratch replay"


class World:
    """Drives one instance turn by turn; each turn is taken by the runtime the caller names.

    Activities complete at once (``slow`` ones 250 ms later, ``fail`` ones fail), timers fire at
    their time, sub-orchestrations complete 400 ms later, scripted messages arrive at their time.
    Every turn is checked against ``execute_turn`` without a cache, and classified by what the
    runtime's cache must have done with it."""

    def __init__(self, name: str, input: Any = None, script: tuple[tuple[int, WorkItem], ...] = (), *,
                 runtimes: int = 2, reg: Registry = REG) -> None:
        self.name = name
        self.reg = reg
        self.caches = [EngineCache(16) for _ in range(runtimes)]
        self.parked: list[int | None] = [None] * runtimes  # history length of each parked engine
        self.engines: list[Any] = [None] * runtimes  # the engine each runtime parked last
        self.history: list[HistoryEvent] = []
        self.pending: deque[WorkItem] = deque([start_msg(json.dumps(input), name=name)])
        self.future: list[tuple[int, int, WorkItem]] = []
        self.seq = 0
        self.now = BASE_MS
        for due, msg in script:
            self._later(due, msg)
        self.delivered: list[WorkItem] = []  # completions delivered, for re-deliveries
        self.kinds: list[str] = []  # per turn: cold | warm | catchup
        self.suffixes: list[list[HistoryEvent]] = []  # what each catch-up walked as replay
        self.result: TurnResult | None = None  # the terminal turn

    def _later(self, due: int, msg: WorkItem) -> None:
        heapq.heappush(self.future, (due, self.seq, msg))
        self.seq += 1

    def _batch(self, size: int) -> list[WorkItem] | None:
        while True:
            while self.future and self.future[0][0] <= self.now:
                self.pending.append(heapq.heappop(self.future)[2])
            if self.pending:
                return [self.pending.popleft() for _ in range(min(size, len(self.pending)))]
            if not self.future:
                return None
            self.now = self.future[0][0]

    def turn(self, runtime: int, size: int = 1, duplicate: bool = False) -> str | None:
        """Take one turn on ``runtime``; the kind of cache use, or None when there is nothing to do."""
        if self.result is not None:
            return None
        msgs = self._batch(size)
        if msgs is None:
            return None
        if duplicate and self.delivered:
            msgs.append(self.delivered[len(self.history) % len(self.delivered)])  # a re-delivered completion
        inp = TurnInput(instance=INSTANCE, execution_id=1, orchestration_name=self.name, version=None,
                        history=list(self.history), messages=msgs, now_ms=self.now, kv_snapshot={})
        cache = self.caches[runtime]
        hits, catchups, misses = cache.hits, cache.catchups, cache.misses
        parked = self.parked[runtime]
        result = execute_turn(inp, self.reg, cache)
        assert_same_turn(result, execute_turn(inp, self.reg), f"turn {len(self.kinds)} on runtime {runtime}")
        if not self.history:
            kind = "cold"  # a first turn never looks at the cache
            assert (cache.hits, cache.catchups, cache.misses) == (hits, catchups, misses)
        elif parked is not None and parked < len(self.history):
            kind = "catchup"
            assert (cache.hits, cache.catchups, cache.misses) == (hits + 1, catchups + 1, misses), \
                "a parked engine behind the history must be caught up, not replayed from scratch"
            self.suffixes.append(self.history[parked:])
        elif parked == len(self.history):
            kind = "warm"
            assert (cache.hits, cache.catchups, cache.misses) == (hits + 1, catchups, misses)
        else:
            kind = "cold"
            assert (cache.hits, cache.catchups, cache.misses) == (hits, catchups, misses + 1)
        self.kinds.append(kind)
        if self.history:
            self.parked[runtime] = None  # taken (or dropped as unusable) by this turn
        self.delivered += [m for m in msgs if type(m).__name__.endswith(("CompletedMsg", "FailedMsg"))]
        self.history += result.delta
        if result.engine is not None:
            cache.put(INSTANCE, result.engine)
            self.parked[runtime] = len(self.history)
            self.engines[runtime] = result.engine
        self._respond(result)
        self.now += STEP_MS
        if result.kind != "continue":
            self.result = result
        return kind

    def _respond(self, result: TurnResult) -> None:
        for item in result.worker_items:
            assert isinstance(item, ActivityExecute)
            if item.name == "fail":
                self.pending.append(act_fail(item.id, "boom"))
            elif item.name == "clock":  # the time of the turn that will read the result
                self.pending.append(act_done(item.id, json.dumps(self.now + STEP_MS)))
            elif item.name == "slow":
                self._later(self.now + 250, act_done(item.id, json.dumps(["slow", json.loads(item.input)])))
            else:
                self.pending.append(act_done(item.id, json.dumps([item.name, json.loads(item.input)])))
        for item in result.orchestrator_items:
            if isinstance(item, TimerFiredMsg):
                self._later(item.fire_at_ms, item)
            elif isinstance(item, StartOrchestration) and item.parent_id is not None:
                self._later(self.now + 400, child_done(item.parent_id, json.dumps(["child", json.loads(item.input)])))

    def run(self, who, *, max_turns: int = 200) -> TurnResult | None:
        """Take turns on runtime ``who(turn_index)`` until the instance ends or nothing is left."""
        for t in range(max_turns):
            if self.turn(who(t)) is None:
                break
        return self.result


def _walked(world: World) -> set[type]:
    return {type(e) for suffix in world.suffixes for e in suffix}


# --- 1. runtimes alternating turns -----------------------------------------------------------------


def _run_alternating(name: str, runtimes: int) -> World:
    input, script = ORCHESTRATIONS[name]
    world = World(name, input, script, runtimes=runtimes)
    world.run(lambda t: t % runtimes)
    assert world.result is not None, "the instance must end"
    n = len(world.kinds)
    # Round robin: turn t's runtime last took turn t - runtimes and parked its engine then, so
    # every turn from the runtimes-th on finds its engine behind by the others' turns.
    assert world.kinds[runtimes:] == ["catchup"] * (n - runtimes), world.kinds
    assert sum(c.catchups for c in world.caches) == n - runtimes > 0
    return world


def test_sequential_activities_caught_up_by_two_and_three_runtimes():
    for runtimes in (2, 3):
        world = _run_alternating("Sequential", runtimes)
        assert world.result.kind == "completed"
        # Each step pruned exactly its own KV write: the replayed polls saw the recorded times.
        assert [r[0] for r in json.loads(world.result.output)] == ["step-1"] * 4


def test_fan_out_with_timer_sub_orchestration_and_failure_caught_up():
    world = _run_alternating("FanOut", 2)
    assert world.result.kind == "completed"
    out = json.loads(world.result.output)
    assert out["child"] == ["child", {"n": 3}]
    assert "err" in out["mixed"][0] and out["mixed"][1] == {"ok": ["c", 1]}


def test_timers_external_events_and_queue_caught_up():
    world = _run_alternating("Events", 2)
    assert world.result.kind == "completed"
    assert json.loads(world.result.output) == ["one", ["after", "one"], "mail", "two", "one"]


def test_dropped_future_breadcrumbs_in_the_walked_suffix():
    world = _run_alternating("Drops", 2)
    assert world.result.kind == "completed"
    # The breadcrumbs the other runtime wrote were walked by catch-ups (and checked like a
    # cold replay checks persisted ones).
    assert {ExternalSubscribedCancelled, ActivityCancelRequested, QueueSubscriptionCancelled} <= _walked(world)
    out = json.loads(world.result.output)
    assert [o["index"] for o in out if isinstance(o, dict)] == [1, 1, 0, 1]


def test_cancel_request_in_a_caught_up_turn():
    world = _run_alternating("Cancellable", 2)
    assert world.result.kind == "cancelled"
    assert world.kinds[-1] == "catchup"
    assert any(isinstance(i, CancelInstance) for i in world.result.orchestrator_items)  # the open child
    assert any(isinstance(e, ActivityCancelRequested) for e in world.result.delta)  # the open activity


def test_cancel_request_in_the_walked_suffix():
    """A cancel request already in the suffix (written without the turn ending, which a real
    runtime never commits) decides the turn exactly as in a cold replay."""
    world = World("Sequential", 4)
    for t in range(4):
        world.turn(t % 2)
    assert world.parked[0] is not None and world.parked[0] < len(world.history)
    stamp = dict(instance_id=INSTANCE, execution_id=1, timestamp_ms=world.now)
    history = [*world.history, OrchestrationCancelRequested(event_id=world.history[-1].event_id + 1, reason="late", **stamp)]
    inp = TurnInput(instance=INSTANCE, execution_id=1, orchestration_name="Sequential", version=None,
                    history=history, messages=[], now_ms=world.now, kv_snapshot={})
    cache = world.caches[0]
    got = execute_turn(inp, REG, cache)
    assert cache.catchups == 2
    assert got.kind == "cancelled" and got.error.reason == "late"
    assert_same_turn(got, execute_turn(inp, REG))


def test_history_len_of_a_parked_engine_counts_the_breadcrumbs_its_turn_wrote():
    """The engine of a turn that wrote a dropped-future breadcrumb vouches for the history with
    that breadcrumb: the next turn on the same runtime is warm, not behind."""
    world = World("Drops", None, DROPS_SCRIPT, runtimes=1)
    world.run(lambda t: 0)
    assert world.result.kind == "completed"
    assert "cold" not in world.kinds[1:] and "catchup" not in world.kinds, world.kinds
    assert world.caches[0].hits == len(world.kinds) - 1


def race_later(ctx, _):
    first = yield ctx.race(ctx.wait_for_event("approve"), ctx.schedule_timer(1_000))
    second = yield ctx.wait_for_event("next")
    return [first, second]


def test_breadcrumbs_of_the_prefix_are_known_to_a_caught_up_engine():
    """A breadcrumb already in the prefix (written there for another reason) is not written
    again when the code drops that future during a catch-up - as in a cold replay."""
    reg = registry(RaceLater=race_later)
    caches = [EngineCache(4), EngineCache(4)]

    def take(runtime: int, history: list[HistoryEvent], msg: WorkItem, now: int) -> TurnResult:
        inp = TurnInput(instance=INSTANCE, execution_id=1, orchestration_name="RaceLater", version=None,
                        history=history, messages=[msg], now_ms=now, kv_snapshot={})
        got = execute_turn(inp, reg, caches[runtime])
        assert_same_turn(got, execute_turn(inp, reg))
        if got.engine is not None:
            caches[runtime].put(INSTANCE, got.engine)
        return got

    history: list[HistoryEvent] = [
        started(name="RaceLater", input="null"), external_subscribed(2, "approve"),
        timer_created(3, BASE_MS + 1_000), external_cancelled(4, 2, reason="superseded"),
    ]
    history += take(0, history, raised("other", '"x"'), BASE_MS).delta  # runtime 0 parks
    history += take(1, history, raised("other", '"y"'), BASE_MS + 100).delta
    # Runtime 0 catches up; the timer wins and drops the wait its prefix already has a crumb for.
    got = take(0, history, fired(3, BASE_MS + 1_000), BASE_MS + 1_000)
    assert caches[0].catchups == 1
    assert got.kind == "continue"
    assert [type(e).__name__ for e in got.delta] == ["TimerFired", "ExternalSubscribed"]


# --- 2. code that changed between the cached prefix and the suffix ---------------------------------


MODE = {"switch": 99, "race": True}


def drifting(ctx, n):
    """Nondeterministic on purpose: reads module state the test changes between turns."""
    for i in range(n):
        name = "b" if i >= MODE["switch"] else "a"
        yield ctx.schedule_activity(name, i)  # SITE: drifting-schedule
    return n


def drifting_drop(ctx, _):
    yield ctx.schedule_activity("step", 0)  # the race/join decision is taken after this
    wait, timer = ctx.wait_for_event("approve"), ctx.schedule_timer(1_000)
    if MODE["race"]:
        yield ctx.race(wait, timer)  # the timer wins: the wait is dropped (a breadcrumb is written)
    else:
        yield ctx.all([wait, timer])  # the same schedules, but nothing is dropped
    return (yield ctx.wait_for_event("again"))  # then both wait for another event


DRIFT = registry(Drifting=drifting, DriftingDrop=drifting_drop)


def _nondeterminism(result: TurnResult) -> str:
    assert result.kind == "failed", result
    assert result.error.kind == "Nondeterminism", result.error
    return result.error.message


def test_schedule_divergence_in_the_suffix_fails_like_a_cold_replay():
    MODE.update(switch=99)
    try:
        world = World("Drifting", 6, reg=DRIFT)
        for t in range(6):  # runtime 0 parks after turn 2; runtime 1 writes steps 2..3 with "a"
            world.turn(0 if t < 3 else 1)
        assert world.parked[0] is not None and world.parked[0] < len(world.history)
        MODE.update(switch=3)  # the code now schedules "b" at step 3, already written as "a"
        cache = world.caches[0]
        msgs = world._batch(1)
        inp = TurnInput(instance=INSTANCE, execution_id=1, orchestration_name="Drifting", version=None,
                        history=list(world.history), messages=msgs, now_ms=world.now, kv_snapshot={})
        got = execute_turn(inp, DRIFT, cache)
        assert cache.catchups == 1, "the divergence must be found by the catch-up itself"
        want = execute_turn(inp, DRIFT)
        assert _nondeterminism(got) == _nondeterminism(want)
        step3 = next(e for e in world.history if isinstance(e, ActivityScheduled) and e.input == "3")
        file, line = line_of(drifting, "SITE: drifting-schedule")
        assert f"at event_id={step3.event_id}, code did " in _nondeterminism(got)
        assert _nondeterminism(got).endswith(f"at {file}:{line} (instance 'i', execution 1)")
        assert_same_turn(got, want)
        assert got.engine is None
    finally:
        MODE.update(switch=99)


def test_dropped_future_mismatch_in_the_suffix_fails_like_a_cold_replay():
    MODE.update(race=True)
    try:
        world = World("DriftingDrop", None, runtimes=2, reg=DRIFT)
        world.turn(0)  # schedules the activity; runtime 0 parks
        world.turn(1)  # the activity completes: subscribes and starts the timer
        world._later(world.future[0][0], raised("approve", '"late"'))  # arrives with the timer, after it
        world.turn(1, size=2)  # the timer fires: the race drops the wait (breadcrumb), the late event
        assert isinstance(world.history[-1], ExternalSubscribedCancelled)  # is kept for audit only
        # The code now joins instead of racing, and drops nothing: the late event completes the
        # join. (The decision is taken in the suffix: runtime 0's engine had not got there yet.)
        MODE.update(race=False)
        inp = TurnInput(instance=INSTANCE, execution_id=1, orchestration_name="DriftingDrop", version=None,
                        history=list(world.history), messages=[raised("noise", '"x"')], now_ms=world.now,
                        kv_snapshot={})
        cache = world.caches[0]
        got = execute_turn(inp, DRIFT, cache)
        assert cache.catchups == 1
        want = execute_turn(inp, DRIFT)
        assert _nondeterminism(want).startswith("cancellation mismatch (external waits): history dropped [4], code dropped []")
        assert _nondeterminism(got) == _nondeterminism(want)
        assert_same_turn(got, want)
    finally:
        MODE.update(race=True)


# --- 3. histories that do not extend the parked engine's ---------------------------------------------


def _parked_world() -> World:
    """Runtime 0 parked after turn 1; runtime 1 took turns 2 and 3."""
    world = World("Sequential", 4)
    for t in range(4):
        world.turn(0 if t < 2 else 1)
    assert 0 < world.parked[0] < len(world.history)
    return world


def _next_input(world: World, history: list[HistoryEvent], execution_id: int = 1) -> TurnInput:
    return TurnInput(instance=INSTANCE, execution_id=execution_id, orchestration_name="Sequential", version=None,
                     history=history, messages=world._batch(1), now_ms=world.now, kv_snapshot={})


def _renumbered(history: list[HistoryEvent], offset: int) -> list[HistoryEvent]:
    out = []
    for e in history:
        changes: dict[str, Any] = {"event_id": e.event_id + offset}
        if e.source_event_id is not None:
            changes["source_event_id"] = e.source_event_id + offset
        out.append(attrs.evolve(e, **changes))
    return out


def test_a_different_event_id_at_the_engines_last_position_is_replayed_from_scratch():
    world = _parked_world()
    hl = world.parked[0]
    history = _renumbered(world.history, 100)  # odd ids are accepted by replay; no prefix of ours
    assert history[hl - 1].event_id != world.engines[0].last_event_id
    inp = _next_input(world, history)
    inp = attrs.evolve(inp, messages=[attrs.evolve(m, id=m.id + 100) for m in inp.messages])
    cache = world.caches[0]
    before = (cache.hits, cache.catchups, cache.misses)
    got = execute_turn(inp, REG, cache)
    assert (cache.hits, cache.catchups, cache.misses) == (before[0], before[1], before[2] + 1)
    assert got.kind == "continue"
    assert_same_turn(got, execute_turn(inp, REG))


def test_a_different_execution_is_replayed_from_scratch():
    world = _parked_world()
    engine = world.engines[0]
    history = [attrs.evolve(e, execution_id=2) for e in world.history]
    inp = _next_input(world, history, execution_id=2)
    inp = attrs.evolve(inp, messages=[attrs.evolve(m, execution_id=2) for m in inp.messages])
    assert history[engine.history_len - 1].event_id == engine.last_event_id  # only the execution differs
    cache = world.caches[0]
    before = (cache.hits, cache.catchups, cache.misses)
    got = execute_turn(inp, REG, cache)
    assert (cache.hits, cache.catchups, cache.misses) == (before[0], before[1], before[2] + 1)
    assert_same_turn(got, execute_turn(inp, REG))


def test_another_handler_or_a_shorter_history_is_not_caught_up():
    world = _parked_world()
    cache = world.caches[0]
    engine = world.engines[0]
    hits, catchups, misses = cache.hits, cache.catchups, cache.misses
    other = registry(Sequential=sequential)  # same code, another handler object (a redeploy)
    inp = _next_input(world, list(world.history))
    got = execute_turn(inp, other, cache)
    assert (cache.hits, cache.catchups, cache.misses) == (hits, catchups, misses + 1)
    assert_same_turn(got, execute_turn(inp, other))
    # An engine ahead of the fetched history is not used either...
    cache.put(INSTANCE, engine)
    assert cache.take(INSTANCE, 1, world.history[: engine.history_len - 1], engine.handler) is None
    assert (cache.hits, cache.catchups, cache.misses) == (hits, catchups, misses + 2)
    # ...while the full history it is behind is.
    cache.put(INSTANCE, engine)
    assert cache.take(INSTANCE, 1, world.history, engine.handler) is engine
    assert (cache.hits, cache.catchups, cache.misses) == (hits + 1, catchups + 1, misses + 2)


# --- 4. random interleavings ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, database=None, derandomize=True)
@given(
    name=st.sampled_from(sorted(ORCHESTRATIONS)),
    runtimes=st.integers(min_value=2, max_value=3),
    plan=st.lists(st.tuples(st.integers(min_value=0, max_value=2), st.integers(min_value=1, max_value=3), st.booleans()),
                  min_size=8, max_size=60),
)
def test_random_interleavings_match_replays_from_scratch(name, runtimes, plan):
    """Each turn goes to a random runtime with a random batch size, sometimes with a re-delivered
    completion; every turn equals the from-scratch one and every stale engine is caught up."""
    input, script = ORCHESTRATIONS[name]
    world = World(name, input, script, runtimes=runtimes)
    for who, size, duplicate in plan:
        if world.turn(who % runtimes, size, duplicate) is None:
            break
    # World.turn asserted the counters per turn; overall, catch-ups are exactly the stale turns.
    assert sum(c.catchups for c in world.caches) == world.kinds.count("catchup")
    assert sum(c.hits for c in world.caches) == world.kinds.count("catchup") + world.kinds.count("warm")


def test_an_instance_created_again_under_the_same_id_is_replayed_from_scratch():
    """Deleted and started again: same id, execution 1 and consecutive event ids, so the parked
    engine's last event id matches - but its OrchestrationStarted does not (another start
    time, or another input), and the new history is not walked by the old engine."""
    for change in ({"timestamp_ms": 7}, {"input": '"other"'}):
        world = _parked_world()
        engine = world.engines[0]
        history = list(world.history)
        history[0] = attrs.evolve(history[0], **change)
        assert history[engine.history_len - 1].event_id == engine.last_event_id
        cache = world.caches[0]
        cache.put(INSTANCE, engine)
        assert not cache.vouches(INSTANCE, 1, history[: engine.history_len])
        before = (cache.hits, cache.catchups, cache.misses)
        assert cache.take(INSTANCE, 1, history, engine.handler) is None
        assert (cache.hits, cache.catchups, cache.misses) == (before[0], before[1], before[2] + 1)
        # The same engine is taken for the history it did start from.
        cache.put(INSTANCE, engine)
        assert cache.vouches(INSTANCE, 1, world.history[: engine.history_len])
        assert cache.take(INSTANCE, 1, world.history, engine.handler) is engine
