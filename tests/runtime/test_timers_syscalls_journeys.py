"""Timers, system calls and time, as a demanding user meets them (SPEC §5, §8, §12, §17, §18).

Production-shaped runs use the ``world`` / ``replay_world`` fixtures (InMemoryProvider on a
SimClock, sequential driver) and, for a few short-timer cases, real threads on SqliteProvider.
Simulation runs use ``Simulation`` / ``run_and_check``. Peer observations come from duroxide
0.2.2 (Rust core + Python SDK) run from /tmp/probe3 scripts.

Found by this file and fixed: ``ctx.new_guid().with_tag("gpu")`` was accepted and left the
instance waiting for good where no worker took the tag (system calls now refuse a tag; the
peer's syscall descriptors have no ``with_tag``). Found and left (issue note): in a simulation
(``SequentialIds``) a GUID is a function of (instance, execution, event id), so an instance
deleted and created again under the same id draws the same GUIDs as before (production draws
uuid4s); telling incarnations apart needs something both the faulty run and its fault-free twin
agree on, which the worker does not see today.
"""

from __future__ import annotations

import json
import logging
import re
import time

import pytest

from duroxide_sim import (
    MAX_TIMER_DELAY_MS,
    Client,
    Runtime,
    RuntimeOptions,
    SqliteProvider,
    TagFilter,
)
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start

from ..conftest import make_world
from ._helpers import events_of, history, kinds

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
DAY_MS = 24 * 3600 * 1000


def _trace_logs(result, message: str) -> list[dict]:
    out = []
    for line in result.trace:
        if '"op":"log"' in line:
            rec = json.loads(line)
            if rec.get("message") == message:
                out.append(rec)
    return out


def _sim_histories_fire_once(result) -> None:
    """Every TimerCreated of every execution has at most one TimerFired, and every TimerFired
    refers to a TimerCreated of the same execution."""
    for inst, execs in result.histories.items():
        for eid, events in execs.items():
            created = {e.event_id for e in events if type(e).__name__ == "TimerCreated"}
            fired = [e.source_event_id for e in events if type(e).__name__ == "TimerFired"]
            assert len(fired) == len(set(fired)), (inst, eid, fired)
            assert set(fired) <= created, (inst, eid, fired, created)


# --------------------------------------------------------------------------------------------
# utc_now / new_guid: shapes and values
# --------------------------------------------------------------------------------------------


def test_utc_now_is_an_int_of_virtual_ms_and_its_history_is_a_decimal_string(world):
    """User awaits ``ctx.utc_now()`` after a 5 s timer. SPEC §5/§17: an int of ms (not a datetime,
    not a str); history holds ActivityScheduled `__duroxide_syscall:utc_now_ms` with empty input
    and ActivityCompleted with the decimal string. Peer-observed: `{'t': 1795710593865, 'tt': 'int'}`,
    history `('ActivityCompleted', '1795710593865')`."""
    start = world.clock.now_ms()

    @world.runtime.register_orchestration("Now")
    def now(ctx, _):
        yield ctx.schedule_timer(5_000)
        t = yield ctx.utc_now()
        return {"t": t, "type": type(t).__name__}

    world.client.start_orchestration("n", "Now")
    out = world.result("n").output
    assert out["type"] == "int"
    assert out["t"] >= start + 5_000
    assert out["t"] <= world.clock.now_ms()
    sched = events_of(world, "n", "ActivityScheduled")
    assert [e["data"]["name"] for e in sched] == ["__duroxide_syscall:utc_now_ms"]
    done = [e for e in history(world, "n") if e["kind"] == "ActivityCompleted"]
    assert len(done) == 1
    assert done[0]["data"] == str(out["t"])  # the decimal string, as the peer records it


def test_new_guids_are_uuid_shaped_and_distinct_within_across_instances_and_executions(world):
    """User draws two GUIDs per execution, in three instances, each continuing-as-new once.
    SPEC §5: 36-char UUID-shaped strings; peer-observed: standard lowercase UUID strings,
    every call a new value. All 12 must be distinct (they are meant as unique ids)."""

    @world.runtime.register_orchestration("G")
    def g(ctx, inp):
        a = yield ctx.new_guid()
        b = yield ctx.new_guid()
        acc = (inp or []) + [a, b]
        if len(acc) < 4:
            yield ctx.continue_as_new(acc)
        return acc

    for i in range(3):
        world.client.start_orchestration(f"g{i}", "G")
    world.run()
    guids = []
    for i in range(3):
        out = world.result(f"g{i}").output
        assert len(out) == 4
        guids += out
    assert all(isinstance(x, str) and UUID_RE.match(x) for x in guids), guids
    assert len(set(guids)) == len(guids)


def test_utc_now_and_new_guid_replay_from_history_in_a_cache_off_world_async(replay_world):
    """``async def`` orchestration reads utc_now and new_guid, then sleeps a day on a timer; every
    turn re-runs from scratch (cache off). SPEC §12/§5: replay returns the recorded values, not
    fresh ones; exactly one syscall activity of each kind is in history."""
    w = replay_world
    seen = []

    @w.runtime.register_orchestration("A")
    async def a(ctx, _):
        t = await ctx.utc_now()
        g = await ctx.new_guid()
        seen.append((t, g))
        await ctx.schedule_timer(DAY_MS)
        await ctx.schedule_timer(DAY_MS)
        return [t, g]

    w.client.start_orchestration("a", "A")
    out = w.result("a").output
    assert len(seen) >= 3
    assert all(s == tuple(out) for s in seen), seen
    names = [e["data"]["name"] for e in events_of(w, "a", "ActivityScheduled")]
    assert names == ["__duroxide_syscall:utc_now_ms", "__duroxide_syscall:new_guid"]


# --------------------------------------------------------------------------------------------
# syscalls need a default-tag worker
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filt", ["gpu_only", "none"])
def test_syscalls_wait_when_the_worker_filter_excludes_default_work(filt):
    """User runs a runtime whose workers take only `gpu`-tagged work (or no work: TagFilter.NONE)
    and calls utc_now. Peer-observed (duroxide 0.2.2, `TagFilter.tags(["gpu"])` and
    `TagFilter.NONE`): the orchestration stays Running with only
    `ActivityScheduled __duroxide_syscall:utc_now_ms` in history (wait timed out). The syscall is
    default-tag work (SPEC §5 'require a worker'); it must not run on an excluding worker nor fail."""
    tf = TagFilter.tags(["gpu"]) if filt == "gpu_only" else TagFilter.NONE
    w = make_world(RuntimeOptions(worker_tag_filter=tf))

    @w.runtime.register_orchestration("U")
    def u(ctx, _):
        return (yield ctx.utc_now())

    w.client.start_orchestration("u", "U")
    w.run_for(60_000)
    assert w.client.get_status("u").status == "Running"
    assert kinds(w, "u") == ["OrchestrationStarted", "ActivityScheduled"]
    # a default-and-gpu worker then finishes it
    from ._helpers import SecondRuntime

    w2 = SecondRuntime(w, RuntimeOptions(worker_tag_filter=TagFilter.default_and(["gpu"])))
    w2.runtime.register_orchestration("U", u)
    assert isinstance(w2.result("u").output, int)


def test_tagging_a_syscall_is_refused_not_left_unfetchable(world):
    """User chains ``.with_tag("gpu")`` onto ``ctx.new_guid()`` as onto an activity, on a
    default-only worker. Peer-observed: `new_guid()` is a plain descriptor
    (`{'type': 'newGuid'}`) and `.with_tag` raises `AttributeError: 'dict' object has no
    attribute 'with_tag'` at the call (the code caught it and completed). A syscall is not a user
    activity (SPEC §5/§17: tags belong to `schedule_activity`); it must be refused at the call,
    not recorded as a gpu-tagged `__duroxide_syscall:new_guid` that leaves the instance Running
    forever on a default-only runtime."""

    @world.runtime.register_orchestration("T")
    def t(ctx, _):
        try:
            task = ctx.new_guid().with_tag("gpu")
        except Exception as exc:  # noqa: BLE001
            return f"refused: {type(exc).__name__}"
        return (yield task)

    world.client.start_orchestration("t", "T")
    world.run_for(120_000)
    st = world.client.get_status("t")
    assert st.status in ("Completed", "Failed"), (st.status, kinds(world, "t"))


# --------------------------------------------------------------------------------------------
# get_kv_value_from_instance
# --------------------------------------------------------------------------------------------


def test_get_kv_value_from_instance_unknown_own_and_other_instance(world):
    """User reads KV through the syscall: unknown instance → None; its own key set earlier in the
    same turn → the value; another running instance's key (still in that instance's delta) →
    the value; a non-string value comes back as its JSON text. Peer-observed: `[None, 'mine']`
    with history `ActivityCompleted 'null'` / `'"mine"'` (SPEC §5: result JSON null or string)."""

    @world.runtime.register_orchestration("Holder")
    def holder(ctx, _):
        ctx.set_kv_value("cfg", {"a": 1})
        yield ctx.wait_for_event("stop")
        return None

    @world.runtime.register_orchestration("Reader")
    def reader(ctx, _):
        v = yield ctx.get_kv_value_from_instance("nobody", "k")
        ctx.set_kv_value("k", "mine")
        own = yield ctx.get_kv_value_from_instance("r", "k")
        other = yield ctx.get_kv_value_from_instance("h", "cfg")
        return [v, own, other]

    world.client.start_orchestration("h", "Holder")
    world.run()
    world.client.start_orchestration("r", "Reader")
    out = world.result("r").output
    assert out[0] is None and out[1] == "mine"
    assert isinstance(out[2], str) and json.loads(out[2]) == {"a": 1}


@pytest.mark.parametrize("bad", [("", "k"), (None, "k"), ("x", 5)])
def test_get_kv_value_from_instance_bad_arguments_raise_at_the_call(world, bad):
    """User passes an empty / non-string instance id or a non-string key. It must raise at the
    call where the code can catch it, and the orchestration then carries on (no stuck syscall at
    a worker). (An empty key is a key, as in duroxide-python: see the KV tests.)"""

    @world.runtime.register_orchestration("B")
    def b(ctx, _):
        try:
            ctx.get_kv_value_from_instance(*bad)
        except (TypeError, ValueError) as exc:
            return type(exc).__name__
        return "accepted"

    world.client.start_orchestration("b", "B")
    assert world.result("b").output in ("TypeError", "ValueError")


# --------------------------------------------------------------------------------------------
# reserved names
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["decorator", "direct", "typed", "exact_syscall_name"])
def test_registering_an_activity_with_the_reserved_prefix_is_refused(how):
    """SPEC §5: registering a user activity with the `__duroxide_syscall:` prefix is an error, in
    every registration form, including the exact name of a real syscall (which would otherwise
    shadow utc_now). Peer-observed: the 0.2.2 SDK accepted it silently (SPEC rules here)."""
    rt = Runtime(SqliteProvider.in_memory(), RuntimeOptions())
    with pytest.raises(Exception) as ei:
        if how == "decorator":
            @rt.register_activity("__duroxide_syscall:mine")
            def mine(ctx, _):
                return 1
        elif how == "direct":
            rt.register_activity("__duroxide_syscall:mine", lambda ctx, _: 1)
        elif how == "typed":
            rt.register_activity_typed("__duroxide_syscall:mine", lambda ctx, x: 1)
        else:
            rt.register_activity("__duroxide_syscall:utc_now_ms", lambda ctx, _: 1)
    assert "__duroxide_syscall:" in str(ei.value)


# --------------------------------------------------------------------------------------------
# schedule_timer argument checking
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "delay",
    [-1, 1.5, 10.0, True, False, "10", None, float("inf"), float("nan"), MAX_TIMER_DELAY_MS + 1, 2**64],
)
def test_bad_timer_delays_raise_clearly_at_the_call_and_can_be_caught(world, delay):
    """User passes a bad delay. Peer-observed: the orchestration fails with
    `Invalid generator step result: invalid value: integer `-1`, expected u64` (also for 1.5,
    True, "10", None). Ours must refuse just as clearly, at the call (TypeError/ValueError naming
    the value), so a caught error lets the orchestration go on; no TimerCreated is recorded."""

    @world.runtime.register_orchestration("B")
    def b(ctx, _):
        try:
            ctx.schedule_timer(delay)
        except (TypeError, ValueError) as exc:
            return [type(exc).__name__, str(exc)]
        return "accepted"

    world.client.start_orchestration("b", "B")
    out = world.result("b").output
    assert out != "accepted"
    assert "schedule_timer" in out[1] or "delay" in out[1]
    assert "TimerCreated" not in kinds(world, "b")


def test_int_subclass_and_maximum_delay_are_accepted(world):
    """An IntEnum delay (a real int) is a valid delay; the documented maximum
    (MAX_TIMER_DELAY_MS) is accepted and its fire time fits a 64-bit column (races an event that
    wins; the instance completes and the provider stays consistent)."""
    import enum

    class D(enum.IntEnum):
        SHORT = 250

    @world.runtime.register_orchestration("M")
    def m(ctx, _):
        yield ctx.schedule_timer(D.SHORT)
        r = yield ctx.race(ctx.schedule_timer(MAX_TIMER_DELAY_MS), ctx.wait_for_event("go"))
        return r

    world.client.start_orchestration("m", "M")
    world.run_for(1_000)
    world.client.raise_event("m", "go", "x")
    assert world.result("m").output == {"index": 1, "value": "x"}
    fire = [e["data"]["fireAtMs"] for e in events_of(world, "m", "TimerCreated")]
    created = [e["timestamp_ms"] for e in events_of(world, "m", "TimerCreated")]
    assert fire[0] - created[0] == 250
    assert fire[1] - created[1] == MAX_TIMER_DELAY_MS and fire[1] < 2**63


# --------------------------------------------------------------------------------------------
# ordering and racing
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["generator", "async"])
def test_race_of_two_timers_the_shorter_wins_whatever_the_argument_order(world, style):
    """User races timer(50) against timer(10). Peer-observed: `{'index': 1, 'value': None}`,
    history TimerCreated(50), TimerCreated(10), TimerFired(for the 10 ms one), Completed. SPEC §4:
    the winner is the first completion in history."""

    if style == "generator":
        def o(ctx, _):
            return (yield ctx.race(ctx.schedule_timer(50), ctx.schedule_timer(10)))
    else:
        async def o(ctx, _):
            return await ctx.race(ctx.schedule_timer(50), ctx.schedule_timer(10))

    world.runtime.register_orchestration("R", o)
    world.client.start_orchestration("r", "R")
    assert world.result("r").output == {"index": 1, "value": None}
    ks = kinds(world, "r")
    assert ks == ["OrchestrationStarted", "TimerCreated", "TimerCreated", "TimerFired", "OrchestrationCompleted"]
    fired = events_of(world, "r", "TimerFired")
    assert fired[0]["source_event_id"] == 3


def test_all_of_timers_fire_in_due_order_results_in_list_order_ties_keep_schedule_order(world):
    """User schedules timers of 30, 10, 20, 0, 10 ms in one turn and joins them. Peer-observed
    (30,10,20,0): results `[{'ok': None}]*4`, TimerCreated in schedule order, TimerFired in due
    order. Two timers due at the same ms fire in schedule order."""

    @world.runtime.register_orchestration("A")
    def a(ctx, _):
        return (yield ctx.all([ctx.schedule_timer(d) for d in (30, 10, 20, 0, 10)]))

    world.client.start_orchestration("a", "A")
    assert world.result("a").output == [{"ok": None}] * 5
    created = {e["event_id"]: e["data"]["fireAtMs"] for e in events_of(world, "a", "TimerCreated")}
    assert list(created) == [2, 3, 4, 5, 6]
    fired = [e["source_event_id"] for e in events_of(world, "a", "TimerFired")]
    assert fired == [5, 3, 6, 4, 2]


def test_a_losing_timer_fires_later_and_is_recorded_harmlessly_cache_off(replay_world):
    """User races an activity against a 1 h timeout timer; the activity wins; the code then waits
    2 h on another timer. SPEC §3.10/§4: the loser timer gets no breadcrumb, fires later and its
    TimerFired is recorded harmlessly; every cache-off replay still succeeds."""
    w = replay_world

    @w.runtime.register_activity("Quick")
    def quick(ctx, _):
        return "q"

    @w.runtime.register_orchestration("L")
    def loser(ctx, _):
        r = yield ctx.race(ctx.schedule_activity("Quick"), ctx.schedule_timer(3_600_000))
        yield ctx.schedule_timer(7_200_000)
        return r

    w.client.start_orchestration("l", "L")
    assert w.result("l").output == {"index": 0, "value": "q"}
    ks = kinds(w, "l")
    assert ks.count("TimerFired") == 2
    assert "ActivityCancelRequested" not in ks
    fired_sources = [e["source_event_id"] for e in events_of(w, "l", "TimerFired")]
    assert fired_sources == [3, 5]


# --------------------------------------------------------------------------------------------
# continue-as-new and stale timers
# --------------------------------------------------------------------------------------------


def test_old_execution_timer_is_dropped_and_does_not_resolve_the_same_id_in_the_new_execution(world):
    """Execution 1 races timer(10 s) against event "go"; the event wins; it continues-as-new.
    Execution 2 does the same race with timer(60 s) at the *same* event id. SPEC §8/§3.3: the old
    execution's TimerFired (execution_id 1) is dropped as stale; it must not win execution 2's
    race at 10 s; execution 2 ends when its own 60 s timer fires."""

    @world.runtime.register_orchestration("C")
    def c(ctx, n):
        n = n or 0
        delay = 10_000 if n == 0 else 60_000
        r = yield ctx.race(ctx.schedule_timer(delay), ctx.wait_for_event("go"))
        if n == 0:
            yield ctx.continue_as_new(1)
        t = yield ctx.utc_now()
        return [r["index"], t]

    t0 = world.clock.now_ms()
    world.client.start_orchestration("c", "C", 0)
    world.run_for(1_000)
    world.client.raise_event("c", "go", None)
    world.run()
    out = world.result("c").output
    assert out[0] == 0
    assert out[1] >= t0 + 60_000, "execution 2's 60 s timer resolved early (by execution 1's timer?)"
    ex1 = events_of(world, "c", "TimerCreated", 1)
    ex2 = events_of(world, "c", "TimerCreated", 2)
    assert ex1[0]["event_id"] == ex2[0]["event_id"] == 2
    assert kinds(world, "c", 1)[-1] == "OrchestrationContinuedAsNew"
    assert "TimerFired" not in kinds(world, "c", 1)
    fired2 = events_of(world, "c", "TimerFired", 2)
    assert len(fired2) == 1 and fired2[0]["data"]["fireAtMs"] == ex2[0]["data"]["fireAtMs"]


def test_timer_scheduled_in_the_can_turn_is_not_carried_to_the_new_execution(world):
    """User schedules (without awaiting) a 1 s timer and continues-as-new in the same turn, five
    times. SPEC §8: timers are not carried; each execution's history ends in
    OrchestrationContinuedAsNew with no TimerFired; the final execution completes and nothing is
    left queued (no leftover timer resolving anything later)."""

    @world.runtime.register_orchestration("K")
    def k(ctx, n):
        if n < 5:
            ctx.schedule_timer(1_000)
            yield ctx.continue_as_new(n + 1)
        return n

    world.client.start_orchestration("k", "K", 0)
    assert world.result("k").output == 5
    world.run_for(10_000)
    for eid in range(1, 6):
        ks = kinds(world, "k", eid)
        assert ks[-1] == "OrchestrationContinuedAsNew" and "TimerFired" not in ks
    assert kinds(world, "k", 6) == ["OrchestrationStarted", "OrchestrationCompleted"]
    depths = world.client.get_queue_depths()
    assert depths.orchestrator_queue == 0


# --------------------------------------------------------------------------------------------
# is_replaying and trace_*
# --------------------------------------------------------------------------------------------


def test_is_replaying_in_each_phase_of_an_async_orchestration_with_the_cache_on(world):
    """``async def`` orchestration records ``ctx.is_replaying()`` at start, after a timer and after
    utc_now. SPEC §3.4/§16.40: false on the first turn and on code reacting to a completion new
    this turn. Cached or not, the first observation of each point is False (it is live), and any
    re-observation of a point that was already reached is True."""
    obs = []

    @world.runtime.register_orchestration("P")
    async def p(ctx, _):
        obs.append(("start", ctx.is_replaying()))
        await ctx.schedule_timer(10)
        obs.append(("timer", ctx.is_replaying()))
        await ctx.utc_now()
        obs.append(("now", ctx.is_replaying()))
        return None

    world.client.start_orchestration("p", "P")
    world.result("p")
    firsts = {}
    for point, val in obs:
        if point not in firsts:
            firsts[point] = val
            assert val is False, obs
        else:
            assert val is True, obs
    assert set(firsts) == {"start", "timer", "now"}


def test_trace_lines_once_per_call_across_cache_off_replays(replay_world, caplog):
    """Generator orchestration logs a line before each of four timers and after the last, with
    every turn replayed from scratch. SPEC §5: trace_* emits only when not replaying → exactly one
    record per message."""
    w = replay_world

    @w.runtime.register_orchestration("T")
    def t(ctx, _):
        for i in range(4):
            ctx.trace_info(f"step {i}")
            yield ctx.schedule_timer(1_000)
        ctx.trace_warn("done")
        return None

    with caplog.at_level(logging.DEBUG):
        w.client.start_orchestration("t", "T")
        w.result("t")
    msgs = [r.getMessage() for r in caplog.records]
    for m in ["step 0", "step 1", "step 2", "step 3", "done"]:
        assert sum(1 for x in msgs if x == m) == 1, (m, msgs)


def _logging_spec(n: int = 3) -> SimSpec:
    def setup(rt, world):
        @rt.register_orchestration("L")
        def logger_orch(ctx, _):
            for i in range(n):
                ctx.trace_info(f"tick {ctx.instance_id} {i}")
                yield ctx.schedule_timer(60_000)
            ctx.trace_info(f"end {ctx.instance_id}")
            return n

    return SimSpec(name="logging", setup=setup, starts=[Start(instance=f"l{i}", orchestration="L") for i in range(2)])


def test_sim_trace_lines_once_without_faults_although_every_turn_is_verified_by_replay():
    """Simulation (fault-free, verify_cache replays every cached turn from scratch, 2 nodes):
    each trace_info call appears exactly once in the trace, at the virtual time of its turn."""
    r = run_and_check(Simulation(_logging_spec(), 3, None))
    assert r.ok, r.failures[0].render()
    for inst in ("l0", "l1"):
        for i in range(3):
            recs = _trace_logs(r, f"tick {inst} {i}")
            assert len(recs) == 1, (inst, i, recs)
            assert recs[0]["t"] == i * 60_000
        assert len(_trace_logs(r, f"end {inst}")) == 1


def test_sim_crash_never_drops_a_trace_line_and_replays_do_not_repeat_committed_ones():
    """Same workflow under crash / lock-expiry faults for 20 seeds. A turn whose ack never
    committed legitimately logs again when redone, but each line must appear at least once, and a
    committed turn's lines are never re-emitted by later replays: at most one extra copy per
    injected fault."""
    for seed in range(20):
        r = run_and_check(Simulation(_logging_spec(), seed, FaultPlan.only("crash", "lock_expiry", rate=0.2)))
        assert r.ok, r.failures[0].render()
        extra_budget = sum(r.faults_injected.values())
        total_extra = 0
        for inst in ("l0", "l1"):
            if inst in r.budget_exhausted:
                continue  # poisoned by the faults: its remaining steps never run
            for msg in [f"tick {inst} {i}" for i in range(3)] + [f"end {inst}"]:
                c = len(_trace_logs(r, msg))
                assert c >= 1, (seed, msg)
                total_extra += c - 1
        assert total_extra <= extra_budget, (seed, total_extra, r.faults_injected)


# --------------------------------------------------------------------------------------------
# simulated clock
# --------------------------------------------------------------------------------------------


def test_sim_thirty_day_timer_is_instant_in_real_time_and_right_in_virtual_time():
    """Simulation of a 30-day timer followed by utc_now: real time well under a second; the run's
    end_ms is 30 days; utc_now minus the instance's start is exactly 30 days (SPEC §18 clock)."""

    def setup(rt, world):
        @rt.register_orchestration("Month")
        def month(ctx, _):
            t0 = yield ctx.utc_now()
            yield ctx.schedule_timer(30 * DAY_MS)
            t1 = yield ctx.utc_now()
            return t1 - t0

    spec = SimSpec(name="month", setup=setup, starts=[Start(instance="m", orchestration="Month")],
                   horizon_ms=40 * DAY_MS)
    began = time.perf_counter()
    r = run_and_check(Simulation(spec, 11, None))
    assert time.perf_counter() - began < 1.5
    assert r.ok, r.failures[0].render()
    assert r.outputs()["m"] == ("Completed", 30 * DAY_MS)
    assert r.end_ms == 30 * DAY_MS


def test_sim_timer_beyond_the_horizon_leaves_the_instance_running_not_failed():
    """A 30-day timer with the default 7-day horizon: the run stops at the horizon; the instance
    is Running (not Failed, no TimerFired), and the checkers do not call it a liveness failure."""

    def setup(rt, world):
        @rt.register_orchestration("Month")
        def month(ctx, _):
            yield ctx.schedule_timer(30 * DAY_MS)
            return "late"

    spec = SimSpec(name="month7", setup=setup, starts=[Start(instance="m", orchestration="Month")])
    r = run_and_check(Simulation(spec, 2, None))
    assert r.statuses["m"].status == "Running"
    assert "TimerFired" not in [type(e).__name__ for e in r.histories["m"][1]]
    assert r.ok, r.failures[0].render()


def _timer_fault_spec() -> SimSpec:
    def setup(rt, world):
        @rt.register_activity("Note")
        def note(ctx, x):
            if world.put_if_absent(f"note:{ctx.instance_id}:{ctx.execution_id}", True):
                world.append("notes", x)
            return x

        @rt.register_orchestration("Tick")
        def tick(ctx, n):
            got = []
            for i in range(3):
                r = yield ctx.race(ctx.schedule_timer(1_000 * (i + 1)), ctx.wait_for_event(f"e{i}"))
                got.append(r["index"])
            yield ctx.all([ctx.schedule_timer(500), ctx.schedule_timer(250), ctx.schedule_timer(500)])
            yield ctx.schedule_activity("Note", n)
            if n < 2:
                yield ctx.continue_as_new(n + 1)
            return got

    return SimSpec(
        name="timer-faults", setup=setup,
        starts=[Start(instance=f"t{i}", orchestration="Tick", input=0) for i in range(2)],
        signals=[Signal(instance="t0", name="e1", at_ms=1_500)],
    )


def test_sim_timers_fire_exactly_once_in_history_under_every_fault_kind():
    """Races of timers vs events, a join of three timers and continue-as-new, under all fault
    kinds at a high rate for 25 seeds: run_and_check passes (determinism, outcome equivalence,
    liveness) and no timer fires twice or for a schedule of another execution."""
    spec = _timer_fault_spec()
    for seed in range(25):
        r = run_and_check(Simulation(spec, seed, FaultPlan.all(0.15)))
        assert r.ok, r.failures[0].render()
        _sim_histories_fire_once(r)
        if not r.budget_exhausted:
            assert r.statuses["t1"].status == "Completed", (seed, r.outputs())


# --------------------------------------------------------------------------------------------
# production: real threads, short timers
# --------------------------------------------------------------------------------------------


def test_real_threads_short_timers_race_and_utc_now_on_sqlite(tmp_path):
    """Real Runtime + Client on a SQLite file: a 40 ms timer raced against a 2 s timer, then a
    join of 0/30/15 ms timers, then utc_now. The short timer wins, wall time is bounded, utc_now
    is an int ms between the start and the end of the run, the 2 s loser later fires harmlessly
    only if the instance is still running (it is completed here: no history change)."""
    p = SqliteProvider.open(str(tmp_path / "t.db"))
    rt = Runtime(p, RuntimeOptions(dispatcher_poll_interval_ms=5))

    @rt.register_orchestration("Q")
    def q(ctx, _):
        r = yield ctx.race(ctx.schedule_timer(2_000), ctx.schedule_timer(40))
        j = yield ctx.all([ctx.schedule_timer(0), ctx.schedule_timer(30), ctx.schedule_timer(15)])
        t = yield ctx.utc_now()
        return [r, j, t]

    rt.start()
    try:
        c = Client(p)
        before = int(time.time() * 1000)
        c.start_orchestration("q", "Q")
        res = c.wait_for_orchestration("q", 5_000)
        after = int(time.time() * 1000)
        assert res.status == "Completed", res.error
        r, j, t = res.output
        assert r == {"index": 1, "value": None}
        assert j == [{"ok": None}] * 3
        assert isinstance(t, int) and before + 40 <= t <= after
        n_events = len(c.read_execution_history("q", 1))
        assert after - before < 1_800
    finally:
        rt.shutdown(1_000)
    assert len(c.read_execution_history("q", 1)) == n_events
    p.close()


def test_cancel_during_a_pending_timer_then_its_late_fire_changes_nothing(world):
    """User cancels an instance sleeping on a 1 h timer. SPEC §11.1/§3.12: the instance fails
    with `canceled: {reason}`; the timer's TimerFired that comes due an hour later is discarded
    without history (anything for a Failed instance), and the queue ends empty."""

    @world.runtime.register_orchestration("S")
    def s(ctx, _):
        yield ctx.schedule_timer(3_600_000)
        return "woke"

    world.client.start_orchestration("s", "S")
    world.run_for(1_000)
    world.client.cancel_instance("s", "stop")
    world.run_for(1_000)
    st = world.client.get_status("s")
    assert st.status == "Failed" and st.error == "canceled: stop"
    before = kinds(world, "s")
    world.run_for(2 * 3_600_000)
    assert kinds(world, "s") == before
    assert "TimerFired" not in before
    assert world.client.get_queue_depths().orchestrator_queue == 0
