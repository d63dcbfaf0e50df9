"""Retry tasks as children of ``all`` / ``race`` (duroxide-python 0.2.2 runs them there).

A retry task inside a join or race runs its loop - attempts, per-attempt timeouts, back-off
timers - beside the orchestration code, and the join/race sees one child that finishes with the
loop's outcome. Peer-observed (duroxide 0.2.2 under bench/.peer): ``race(with_retry("Echo", 5,
{"max_attempts": 2}), timer(60 s))`` returned ``{'index': 0, 'value': 5}`` with history
ActivityScheduled, TimerCreated, ActivityCompleted; ``all([with_retry(...), activity])``
returned ``[{'ok': 5}, {'ok': 6}]``. These tests run on the cached engine (``world``) and with
every turn replayed from scratch (``replay_world``), and once under the fault-injecting simulator.
"""

from __future__ import annotations

import pytest

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation, SimSpec, Start

from ._helpers import SecondRuntime, events_of, kinds

RETRY2 = {"max_attempts": 2}
RETRY3 = {"max_attempts": 3, "backoff": "fixed"}  # 1 s between attempts


def _register_flaky(rt, calls: dict[str, int]) -> None:
    @rt.register_activity("FlakyTwice")
    def flaky(ctx, key):
        calls[key] = calls.get(key, 0) + 1
        if calls[key] <= 2:
            raise RuntimeError(f"transient {calls[key]}")
        return f"{key} ok after {calls[key]}"


def _register(world, calls: dict[str, int] | None = None):
    rt = world.runtime
    _register_flaky(rt, {} if calls is None else calls)

    @rt.register_activity("Echo")
    def echo(ctx, x):
        return x

    @rt.register_activity("Always")
    def always(ctx, x):
        raise ValueError(f"no {x}")

    @rt.register_activity("Slow")
    def slow(ctx, ms):
        world.clock.advance(ms)
        return ms

    return world


@pytest.fixture(params=["cached", "replayed"])
def w(request, world, replay_world):
    return _register(world if request.param == "cached" else replay_world)


def test_race_of_a_retry_task_and_a_timeout_matches_the_peer(w):
    """The peer's own example: the retrying activity wins against a long timer."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.race(ctx.schedule_activity_with_retry("Echo", 5, RETRY2), ctx.schedule_timer(60_000)))

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == {"index": 0, "value": 5}
    assert kinds(w, "i") == ["OrchestrationStarted", "ActivityScheduled", "TimerCreated", "ActivityCompleted",
                             "OrchestrationCompleted"]


def test_all_with_a_retry_task_matches_the_peer(w):
    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.all([ctx.schedule_activity_with_retry("Echo", 5, RETRY2), ctx.schedule_activity("Echo", 6)]))

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == [{"ok": 5}, {"ok": 6}]


def test_retries_inside_a_join_back_off_and_succeed(w):
    """Two failures, two back-off timers of 1 s, then success - while the other child of the
    join completes on its own; the join's entries are in list order."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.all([ctx.schedule_activity("Echo", "plain"),
                               ctx.schedule_activity_with_retry("FlakyTwice", "k", RETRY3)]))

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == [{"ok": "plain"}, {"ok": "k ok after 3"}]
    k = kinds(w, "i")
    assert k.count("ActivityScheduled") == 4 and k.count("ActivityFailed") == 2
    assert [e["data"]["fireAtMs"] - e["timestamp_ms"] for e in events_of(w, "i", "TimerCreated")] == [1000, 1000]


def test_exhausted_retry_task_is_an_error_entry_not_a_short_circuit(w):
    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.all([ctx.schedule_activity_with_retry("Always", "x", RETRY2), ctx.schedule_activity("Echo", 7)]))

    w.client.start_orchestration("i", "O")
    out = w.result("i").output
    assert out[1] == {"ok": 7}
    assert set(out[0]) == {"err"} and "ValueError: no x" in out[0]["err"], out
    assert kinds(w, "i").count("ActivityFailed") == 2


def test_a_retry_task_that_loses_a_race_is_cancelled_with_its_attempt(w):
    """The timer wins while the retrying activity's attempt runs: the attempt gets its
    ActivityCancelRequested(dropped_future) breadcrumb, and no further attempt is scheduled."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        return (yield ctx.race(ctx.schedule_activity_with_retry("Slow", 10_000, RETRY3), ctx.schedule_timer(100)))

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == {"index": 1, "value": None}
    crumbs = events_of(w, "i", "ActivityCancelRequested")
    scheduled = events_of(w, "i", "ActivityScheduled")
    assert len(scheduled) == 1
    assert [(c["source_event_id"], c["data"]["reason"]) for c in crumbs] == [(scheduled[0]["event_id"], "dropped_future")]


def test_a_retry_task_that_lost_a_race_cannot_be_yielded_again(w):
    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        retry = ctx.schedule_activity_with_retry("Slow", 10_000, RETRY2)
        yield ctx.race(retry, ctx.schedule_timer(100))
        try:
            yield retry
        except TypeError as exc:
            return str(exc)
        return "no error"

    w.client.start_orchestration("i", "O")
    assert "lost a race" in w.result("i").output


def test_a_retry_task_that_won_gives_its_value_when_yielded_again(w):
    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        retry = ctx.schedule_activity_with_retry("Echo", "v", RETRY2)
        first = yield ctx.race(retry, ctx.schedule_timer(60_000))
        again = yield retry
        return [first["value"], again]

    w.client.start_orchestration("i", "O")
    assert w.result("i").output == ["v", "v"]
    assert kinds(w, "i").count("ActivityScheduled") == 1


def test_per_attempt_timeout_inside_a_join(w):
    """A retry policy with a timeout races each attempt against its own timer inside the join."""

    @w.runtime.register_orchestration("O")
    def o(ctx, _):
        policy = {"max_attempts": 2, "timeout_ms": 50}
        return (yield ctx.all([ctx.schedule_activity_with_retry("Slow", 1_000, policy), ctx.schedule_activity("Echo", 1)]))

    w.client.start_orchestration("i", "O")
    out = w.result("i").output
    assert out[1] == {"ok": 1} and "timed out" in out[0]["err"].lower(), out


def test_a_new_runtime_finishes_a_join_of_retry_tasks_from_history(world):
    """A deployment change mid-flight: the first runtime runs only the first turn (both first
    attempts scheduled), a second runtime (fresh registry, same code) replays that history and
    finishes the join, retries included."""
    calls: dict[str, int] = {}
    _register(world, calls)

    def register(rt):
        @rt.register_orchestration("O")
        def o(ctx, _):
            return (yield ctx.all([ctx.schedule_activity_with_retry("FlakyTwice", "a", RETRY3),
                                   ctx.schedule_activity_with_retry("FlakyTwice", "b", RETRY3)]))

    register(world.runtime)
    world.client.start_orchestration("i", "O")
    assert world.runtime.orchestration_dispatcher.step()  # the first turn, nothing else
    assert kinds(world, "i") == ["OrchestrationStarted", "ActivityScheduled", "ActivityScheduled"]
    second = SecondRuntime(world)
    _register_flaky(second.runtime, calls)
    register(second.runtime)
    assert second.result("i").output == [{"ok": "a ok after 3"}, {"ok": "b ok after 3"}]
    assert calls == {"a": 3, "b": 3}


def _sim_spec() -> SimSpec:
    def setup(rt, world):
        @rt.register_activity("Flaky")
        def flaky(ctx, key):
            # Idempotent flakiness: the first attempt of each key (by its schedule id) fails, every
            # time it is executed; the retry's next attempt succeeds.
            world.put_if_absent(f"first/{ctx.instance_id}/{key}", ctx.activity_id)
            if world.get(f"first/{ctx.instance_id}/{key}") == ctx.activity_id:
                raise RuntimeError(f"first attempt of {key}")
            return key

        @rt.register_orchestration("Fan")
        def fan(ctx, n):
            policy = {"max_attempts": 4, "backoff": "fixed"}
            got = yield ctx.all([ctx.schedule_activity_with_retry("Flaky", f"k{i}", policy) for i in range(n)])
            won = yield ctx.race(ctx.schedule_activity_with_retry("Flaky", "r", policy), ctx.schedule_timer(3_600_000))
            return [sorted(e["ok"] for e in got), won["index"]]

    def all_done(result):
        for inst, st in result.statuses.items():
            if st.status == "Failed" and str(st.error).startswith("poison:") and result.faults_injected:
                continue
            if st.status != "Completed" or st.output != [["k0", "k1", "k2"], 0]:
                return f"{inst}: {st.status} {st.output if st.status == 'Completed' else st.error!r}"
        return None

    return SimSpec(name="retry-in-join", setup=setup,
                   starts=[Start(instance=f"fan-{i}", orchestration="Fan", input=3) for i in range(3)],
                   invariants=[all_done], ref=None)


@pytest.mark.parametrize("seed", range(6))
def test_retry_tasks_in_joins_and_races_under_faults(seed):
    """The simulator's checkers (determinism: cached turns vs from-scratch replays, replay of
    every execution, well-formed histories) hold for joins and races of retry tasks under
    every fault kind."""
    result = run_and_check(Simulation(_sim_spec(), seed, FaultPlan.all(0.05)))
    assert result.ok, result.failures[0].render()
