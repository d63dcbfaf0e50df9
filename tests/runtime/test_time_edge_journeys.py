"""Time at its edges, as a demanding production user meets it (SPEC §3-§5, §11, §14-§18).

Beyond test_timers*.py / test_retry_timers_production.py: odd delay types left uncaught on real
threads; 5,000 timers in one instance and 2,000 instances with a timer; races pending across an
aborting shutdown; activity-vs-timer and cancel-vs-timer in one batch; recorded fire times under
new code and after downtime; the wall clock stepping back an hour / forward a day through an
injected clock; simulations with signals at a timer's due time, the horizon, before time 0.
Every wait is bounded on time.monotonic, never on the clock under test.

Found by this file and fixed: any clock passed to Runtime was taken for a simulated one (an
explicit SystemClock, or a user's wrapper of the wall clock, made the activities' client waits
end at once and ack retries stop waiting; now only a clock with ``advance`` is virtual); a
client's wait timeout was measured on the wall clock (a step back of an hour stretched a 1.5 s
wait by the hour, a step forward cut it to nothing; now a monotonic duration when the client
sleeps in real time); a second maximum-length timer on a simulated clock past 2**62 ms overflowed
SQLite's 64-bit column (fire times are now capped). Left as the reference does: ``utc_now`` reads
the clock as it is, so a step back of the host's clock shows between two turns."""

from __future__ import annotations

import datetime
import decimal
import fractions
import json
import threading
import time
from typing import Any

import pytest

from duroxide_sim import MAX_TIMER_DELAY_MS, Client, InMemoryProvider, Runtime, RuntimeOptions, SqliteProvider
from duroxide_sim.runtime.realtime import SystemClock
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.clock import DEFAULT_EPOCH_MS
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start

from ..conftest import make_world
from ._helpers import SecondRuntime, wait_until

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


class SteppableClock:
    """The wall clock plus an offset a test steps, as NTP or an operator steps a host's clock.
    (No ``advance`` method on purpose: the Runtime would take it for a simulated clock.)"""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000 + self.offset_ms

    def step(self, ms: int) -> None:
        self.offset_ms += ms


def _opts() -> RuntimeOptions:
    return RuntimeOptions(dispatcher_poll_interval_ms=5, worker_lock_timeout_ms=2_000, session_idle_timeout_ms=60_000)


def wait_final(c: Client, inst: str, timeout_s: float = 10.0):
    wait_until(lambda: c.get_status(inst).status in ("Completed", "Failed"), timeout_s)
    return c.get_status(inst)


def hist(c: Any, inst: str) -> list[Any]:
    return list(c.read_execution_history(inst, 1))


def kinds_of(c: Any, inst: str) -> list[str]:
    return [e.kind for e in hist(c, inst)]


def data(e: Any) -> Any:
    return json.loads(e.data) if e.data else None


def assert_well_formed(h: list[Any]) -> None:
    """Increasing ids, Started first, <= 1 terminal event, each timer fired at most once with its
    recorded fire time, <= 1 completion per activity."""
    ids = [e.event_id for e in h]
    assert ids == sorted(set(ids)), ids
    assert h[0].kind == "OrchestrationStarted"
    assert sum(e.kind in ("OrchestrationCompleted", "OrchestrationFailed") for e in h) <= 1
    created = {e.event_id: data(e)["fireAtMs"] for e in h if e.kind == "TimerCreated"}
    fired = [e for e in h if e.kind == "TimerFired"]
    srcs = [e.source_event_id for e in fired]
    assert len(srcs) == len(set(srcs)), f"a timer fired twice: {srcs}"
    assert all(data(e)["fireAtMs"] == created[e.source_event_id] for e in fired)
    done = [e.source_event_id for e in h if e.kind in ("ActivityCompleted", "ActivityFailed")]
    assert len(done) == len(set(done)), f"an activity completed twice: {done}"


class Live:
    """A threaded Runtime + Client (SQLite or in-memory, optionally on a SteppableClock) with
    ``Sleep(ms)``, ``Work({"s", "v"})`` (sleeps s seconds on its first run, returns v), ``A(x)``."""

    def __init__(self, tmp_path, kind: str = "sqlite", stepped: bool = False) -> None:
        self.clock = SteppableClock() if stepped else None
        self.provider = (SqliteProvider.open(str(tmp_path / "t.db"), clock=self.clock) if kind == "sqlite"
                         else InMemoryProvider(self.clock))
        self.runtime = Runtime(self.provider, _opts(), clock=self.clock)
        self.client = Client(self.provider, clock=self.clock)
        self.runs: list[Any] = []
        self.started = threading.Event()
        reg = self.runtime

        @reg.register_orchestration("Sleep")
        def sleep_(ctx, ms):
            yield ctx.schedule_timer(ms)
            return ms

        @reg.register_activity("Work")
        def work(ctx, x):
            self.runs.append(x["v"])
            self.started.set()
            time.sleep(x["s"] if len(self.runs) == 1 else 0.05)
            return x["v"]

        @reg.register_orchestration("A")
        def a(ctx, x):
            return (yield ctx.schedule_activity("Work", x))

    def close(self) -> None:
        self.runtime.shutdown(2_000)
        getattr(self.provider, "close", lambda: None)()


@pytest.fixture
def live(tmp_path):
    made: list[Live] = []

    def make(kind: str = "sqlite", stepped: bool = False) -> Live:
        made.append(Live(tmp_path, kind, stepped))
        return made[-1]

    yield make
    for lv in made:
        lv.close()


# --- timer durations --------------------------------------------------------------------------

BAD = {"timedelta": datetime.timedelta(seconds=5), "decimal": decimal.Decimal("5"), "fraction": fractions.Fraction(10, 2),
       "float-whole": 5.0, "neg-zero": -0.0, "years-beyond-int64": 10**30, "huge-negative": -(2**70)}


def test_bad_delays_left_uncaught_fail_the_instance_clearly_and_the_runtime_keeps_going(live):
    """SPEC §5/§17: ``schedule_timer(delay_ms)`` takes integer ms. A timedelta, Decimal, Fraction,
    whole float, -0.0, 10**30 ms (beyond any 64-bit column) or -2**70 is refused at the call with
    an error naming ``schedule_timer`` and the value; uncaught, it fails the instance in its first
    turn (no TimerCreated, nothing poisoned) and the dispatcher threads live on: a 1 ms timer
    instance started after them completes."""
    lv = live()

    @lv.runtime.register_orchestration("Bad")
    def bad(ctx, key):
        yield ctx.schedule_timer(BAD[key])

    lv.runtime.start()
    c = lv.client
    for key in BAD:
        c.start_orchestration(f"bad-{key}", "Bad", key)
    for key, value in BAD.items():
        st = wait_final(c, f"bad-{key}")
        assert st.status == "Failed", (key, st)
        last = st.error.rstrip().splitlines()[-1]
        assert last.startswith(("TypeError: schedule_timer", "ValueError: schedule_timer")), (key, last)
        assert repr(value)[:20] in last or str(value)[:20] in last, (key, last)
        assert kinds_of(c, f"bad-{key}") == ["OrchestrationStarted", "OrchestrationFailed"]
    c.start_orchestration("ok", "Sleep", 1)
    assert wait_final(c, "ok", 5).output == 1


# --- many timers ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_five_thousand_timers_in_one_instance_fire_once_in_due_order_beside_a_quick_instance(live, kind):
    """A fan-out of 5,000 timers (due 200..1,200 ms) in one ``ctx.all``: each fires exactly once,
    never early, recorded in due order (batches are read by visible time, SPEC §3.2/§15.1); the
    join returns 5,000 ``{"ok": None}``; a 1 ms timer instance started meanwhile completes
    within 2 s."""
    lv, n = live(kind), 5_000

    @lv.runtime.register_orchestration("Fan")
    def fan(ctx, n):
        return (yield ctx.all([ctx.schedule_timer(200 + (i * 37) % 1_000) for i in range(n)]))

    lv.runtime.start()
    c, t0 = lv.client, time.monotonic()
    c.start_orchestration("fan", "Fan", n)
    assert wait_until(lambda: len(hist(c, "fan")) > n, 8)
    q0 = time.monotonic()
    c.start_orchestration("quick", "Sleep", 1)
    assert wait_final(c, "quick", 5).status == "Completed" and time.monotonic() - q0 < 2.0, time.monotonic() - q0
    st = wait_final(c, "fan", 12)
    assert st.status == "Completed" and st.output == [{"ok": None}] * n
    assert time.monotonic() - t0 < 12
    h = hist(c, "fan")
    assert_well_formed(h)
    fired = [e for e in h if e.kind == "TimerFired"]
    due = [data(e)["fireAtMs"] for e in fired]
    assert len(fired) == n and due == sorted(due), "timers missing or recorded out of due order"
    assert all(e.timestamp_ms >= data(e)["fireAtMs"] for e in fired), "a timer fired early"


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_two_thousand_instances_each_with_a_timer_all_fire_on_time(live, kind):
    """2,000 instances each sleep 300..1,000 ms then read utc_now: all complete; sampled timers
    fired once, not early, at most 5 s late on a loaded 2-core machine; utc_now >= fire time."""
    lv, n = live(kind), 2_000

    @lv.runtime.register_orchestration("One")
    def one(ctx, d):
        yield ctx.schedule_timer(d)
        return (yield ctx.utc_now())

    lv.runtime.start()
    c = lv.client
    for i in range(n):
        c.start_orchestration(f"i{i}", "One", 300 + (i * 13) % 700)
    for i in range(n):
        st = wait_final(c, f"i{i}", 12 if i == 0 else 3)
        assert st.status == "Completed", (i, st)
        if i % 50 == 0:
            h = hist(c, f"i{i}")
            assert_well_formed(h)
            (fired,) = [e for e in h if e.kind == "TimerFired"]
            fire_at = data(fired)["fireAtMs"]
            assert fire_at <= fired.timestamp_ms < fire_at + 5_000 and st.output >= fire_at


# --- restarts, replays, downtime ----------------------------------------------------------------


def test_races_pending_across_an_aborting_shutdown_resolve_once_after_the_restart(tmp_path):
    """30 instances race a 300 ms timer against an event, then sleep 200 ms. The runtime stops
    with ``shutdown(0)`` while they wait; two new runtimes start on the file once the races are
    due. Every instance completes with the timer as winner, each TimerCreated fires exactly once,
    and the second timer counts from the turn that created it (SPEC §5)."""
    path = str(tmp_path / "r.db")

    def runtime() -> Runtime:
        rt = Runtime(SqliteProvider.open(path), _opts())

        @rt.register_orchestration("R")
        def r(ctx, _):
            won = yield ctx.race(ctx.schedule_timer(300), ctx.wait_for_event("never"))
            yield ctx.schedule_timer(200)
            return won

        return rt.start()

    rt1, c = runtime(), Client(SqliteProvider.open(path))
    for i in range(30):
        c.start_orchestration(f"r{i}", "R")
    assert wait_until(lambda: all("TimerCreated" in kinds_of(c, f"r{i}") for i in range(30)), 5)
    rt1.shutdown(0)
    time.sleep(0.6)
    rts = [runtime(), runtime()]
    try:
        for i in range(30):
            st = wait_final(c, f"r{i}", 8)
            assert (st.status, st.output) == ("Completed", {"index": 0, "value": None}), (i, st)
            h = hist(c, f"r{i}")
            assert_well_formed(h)
            created = [e for e in h if e.kind == "TimerCreated"]
            assert len(created) == 2 and [e.kind for e in h].count("TimerFired") == 2
            assert data(created[1])["fireAtMs"] == created[1].timestamp_ms + 200
            assert created[1].timestamp_ms >= data(created[0])["fireAtMs"]
    finally:
        for rt in rts:
            rt.shutdown(1_000)


def test_recorded_fire_time_stands_under_new_code_and_a_timer_after_downtime_counts_from_its_turn(world):
    """SPEC §3.5: a timer matches any TimerCreated; the history's ``fire_at_ms`` is authoritative.
    Deployed code slept 1 h, the new deployment's sleeps 10 ms: a replaying turn (an unrelated
    event) keeps the 1 h fire time. The runtime is then down for 3 h; the resuming turn (TimerFired
    2 h overdue) creates a 30 min timer, due 30 min after that turn (SPEC §5 ``now + delay``),
    not at once (30 min after the first fire time is already past)."""

    @world.runtime.register_orchestration("S")
    def s1(ctx, _):
        yield ctx.schedule_timer(HOUR_MS)
        return "v1"

    world.client.start_orchestration("s", "S")
    world.run_for(1_000)
    v2 = SecondRuntime(world)

    @v2.runtime.register_orchestration("S")
    def s2(ctx, _):
        yield ctx.schedule_timer(10)
        yield ctx.schedule_timer(HOUR_MS // 2)
        return "v2"

    world.client.raise_event("s", "poke", 1)
    v2.driver.run_until_quiet(HOUR_MS // 2)
    created = [e for e in hist(world.client, "s") if e.kind == "TimerCreated"]
    assert len(created) == 1 and world.client.get_status("s").status == "Running"
    assert data(created[0])["fireAtMs"] == created[0].timestamp_ms + HOUR_MS
    world.clock.advance(3 * HOUR_MS)  # nothing runs: the runtime is down
    v2.driver.run_until_idle()
    created = [e for e in hist(world.client, "s") if e.kind == "TimerCreated"]
    assert data(created[1])["fireAtMs"] == world.clock.now_ms() + HOUR_MS // 2
    assert world.client.get_status("s").status == "Running"
    v2.run()
    assert v2.result("s").output == "v2"
    assert_well_formed(hist(world.client, "s"))


# --- timers racing completions and cancellation in one batch ------------------------------------


def _race_in_one_batch(world: Any, timer_first: bool, activity_done_at: int) -> str:
    """race(activity, 100 ms timer); the activity completes at +activity_done_at ms, the
    orchestrator next fetches at +200 ms (both completions in one batch). Returns the winner."""

    @world.runtime.register_activity("A")
    def a(ctx, _):
        return "act"

    @world.runtime.register_orchestration("R")
    def r(ctx, _):
        act, tim = ctx.schedule_activity("A"), ctx.schedule_timer(100)
        return (yield (ctx.race(tim, act) if timer_first else ctx.race(act, tim)))

    rt = world.runtime
    world.client.start_orchestration("r", "R")
    assert rt.orchestration_dispatcher.step()
    world.clock.advance(activity_done_at)
    assert rt.worker_dispatcher.step()
    world.clock.advance(200 - activity_done_at)
    assert rt.orchestration_dispatcher.step()
    world.run()
    out = world.result("r").output
    assert_well_formed(hist(world.client, "r"))
    winner = "timer" if out["index"] == (0 if timer_first else 1) else "activity"
    assert out["value"] == (None if winner == "timer" else "act")
    return winner


@pytest.mark.parametrize("timer_first", [True, False])
@pytest.mark.parametrize("done_at,winner", [(50, "activity"), (99, "activity"), (150, "timer")])
def test_activity_and_timer_ready_in_the_same_turn_the_earlier_one_wins(world, timer_first, done_at, winner):
    """SPEC §4: the race winner is the completion first in history; a batch is read in queue
    order by visible time (§3.2/§15.1: TimerFired visible at its fire time, a completion when
    enqueued). An activity done at +50/+99 ms beats the 100 ms timer, one done at +150 ms loses,
    whichever argument comes first - although the orchestrator saw both only at +200 ms. An exact
    tie (SPEC silent) must at least not depend on the argument order."""
    assert _race_in_one_batch(world, timer_first, done_at) == winner
    if timer_first and done_at == 50:
        assert _race_in_one_batch(make_world(), True, 100) == _race_in_one_batch(make_world(), False, 100)


def test_cancel_and_a_due_timer_in_one_batch_cancel_wins_and_nothing_after_the_timer_runs(world):
    """The 100 ms timer is due and a cancel arrives before the orchestrator fetches: both in one
    batch. SPEC §3.8: the cancel beats everything; the activity the code schedules after the
    timer is never dispatched (only Continue turns dispatch work, §3.9); ``canceled: stop``."""
    ran: list[str] = []

    @world.runtime.register_activity("After")
    def after(ctx, _):
        ran.append("after")

    @world.runtime.register_orchestration("C")
    def c(ctx, _):
        yield ctx.schedule_timer(100)
        return (yield ctx.schedule_activity("After"))

    world.client.start_orchestration("c", "C")
    assert world.runtime.orchestration_dispatcher.step()
    world.clock.advance(200)
    world.client.cancel_instance("c", "stop")
    world.run()
    st = world.client.get_status("c")
    assert (st.status, st.error) == ("Failed", "canceled: stop") and ran == []
    assert "OrchestrationCancelRequested" in kinds_of(world.client, "c")
    assert world.client.get_queue_depths().worker_queue == 0
    assert_well_formed(hist(world.client, "c"))


# --- the wall clock stepping (an injected clock: SPEC §18 routes every time through it) ---------


def test_clock_stepping_back_an_hour_delays_a_pending_timer_by_at_most_the_step(live):
    """An instance waits on a 400 ms timer when the clock steps back an hour. Acceptable: late by
    up to the step (fire times are wall-clock ms, SPEC §5/§15.1). Not acceptable: firing twice or
    never. A 200 ms timer created meanwhile fires as usual (nothing stuck); when the clock is
    stepped forward again the pending timer fires at once, once."""
    lv = live(stepped=True)
    lv.runtime.start()
    c = lv.client
    c.start_orchestration("old", "Sleep", 400)
    assert wait_until(lambda: "TimerCreated" in kinds_of(c, "old"), 5)
    lv.clock.step(-HOUR_MS)
    c.start_orchestration("new", "Sleep", 200)
    assert wait_final(c, "new", 5).output == 200
    time.sleep(0.6)
    assert c.get_status("old").status == "Running"  # late by up to the step: acceptable
    lv.clock.step(HOUR_MS)
    t = time.monotonic()
    assert wait_final(c, "old", 5).output == 400 and time.monotonic() - t < 2.0
    assert_well_formed(hist(c, "old"))


def test_clock_jumping_forward_a_day_fires_due_timers_and_a_leased_activity_completes_at_least_once(live):
    """The clock jumps a day forward while instance A runs a 1.5 s activity (lease 2 s, renewed
    every second) and B sleeps 1 h. Every lock is expired by the new clock: A's renewal fails (the
    worker sees cancellation, SPEC §11.2) and the activity may run again (at-least-once); B's
    timer is due and fires. Both complete with the right outputs, one ActivityCompleted."""
    lv = live(stepped=True)
    lv.runtime.start()
    c = lv.client
    c.start_orchestration("b", "Sleep", HOUR_MS)
    c.start_orchestration("a", "A", {"s": 1.5, "v": 42})
    assert lv.started.wait(5) and wait_until(lambda: "TimerCreated" in kinds_of(c, "b"), 5)
    time.sleep(0.2)
    lv.clock.step(DAY_MS)
    assert wait_final(c, "b", 5).output == HOUR_MS
    st = wait_final(c, "a", 10)
    assert (st.status, st.output) == ("Completed", 42) and 1 <= len(lv.runs) <= 3, lv.runs
    for inst in ("a", "b"):
        assert_well_formed(hist(c, inst))
    assert kinds_of(c, "a").count("ActivityCompleted") == 1


@pytest.mark.parametrize("back_for_s,max_runs", [(0.6, 1), (3.0, 2)])
def test_clock_stepping_back_an_hour_during_a_lease_then_corrected(live, back_for_s, max_runs):
    """The clock steps back an hour 0.3 s into a 3.5 s activity (lease 2 s, renewal every second)
    and is corrected ``back_for_s`` later. Within the lease (0.6 s): valid by both clocks, the
    activity runs exactly once (no spurious cancellation). After 3 s: no renewal was due on the
    stepped clock, so by the corrected one the lease ran out and the activity may run again
    (at-least-once: acceptable). Either way one completion with the right output."""
    lv = live(stepped=True)
    lv.runtime.start()
    lv.client.start_orchestration("a", "A", {"s": 3.5, "v": "done"})
    assert lv.started.wait(5)
    time.sleep(0.3)
    lv.clock.step(-HOUR_MS)
    time.sleep(back_for_s)
    lv.clock.step(HOUR_MS)
    st = wait_final(lv.client, "a", 10)
    assert (st.status, st.output) == ("Completed", "done") and 1 <= len(lv.runs) <= max_runs, lv.runs
    assert_well_formed(hist(lv.client, "a"))


def test_clock_jumping_forward_during_a_turn_loses_the_instance_lock_and_the_turn_is_redone(live):
    """The clock jumps a day forward while a turn computes (holding the 5 s instance lock): the
    ack finds the lock expired (SPEC §15.1), commits nothing; the turn is fetched again and
    committed once. The instance completes (not failed as an infrastructure error) with one
    OrchestrationStarted and one ActivityScheduled."""
    lv = live(stepped=True)
    turns: list[int] = []
    in_turn = threading.Event()

    @lv.runtime.register_orchestration("Slow")
    def slow(ctx, x):
        turns.append(1)
        if len(turns) == 1:
            in_turn.set()
            time.sleep(0.8)  # a CPU-heavy first turn
        return (yield ctx.schedule_activity("Work", x))

    lv.runtime.start()
    c = lv.client
    c.start_orchestration("s", "Slow", {"s": 0, "v": "x"})
    assert in_turn.wait(5)
    time.sleep(0.2)
    lv.clock.step(DAY_MS)
    st = wait_final(c, "s", 10)
    assert (st.status, st.output) == ("Completed", "x"), st
    ks = kinds_of(c, "s")
    assert ks.count("OrchestrationStarted") == 1 and ks.count("ActivityScheduled") == 1, ks
    assert_well_formed(hist(c, "s"))
    assert len(turns) >= 2  # the lock really was lost


@pytest.mark.parametrize("step_ms", [-HOUR_MS, DAY_MS], ids=["back-an-hour", "forward-a-day"])
def test_a_client_wait_timeout_is_a_duration_not_moved_by_a_clock_step(tmp_path, step_ms):
    """Judgement call: ``wait_for_orchestration(id, timeout_ms=1500)`` (SPEC §14/§17) while the
    client's clock steps. A timeout is a duration: it should end after about 1.5 s - not an hour
    later (back) and not at once (forward: an instance about to finish is reported as a
    timeout). duroxide's client measures it on a monotonic timer (tokio::time)."""
    clock = SteppableClock()
    p = SqliteProvider.open(str(tmp_path / "w.db"), clock=clock)
    c = Client(p, clock=clock)
    c.start_orchestration("never", "Unregistered")  # nothing runs it: the wait must time out
    took: list[float] = []

    def waiter() -> None:
        t = time.monotonic()
        try:
            c.wait_for_orchestration("never", 1_500)
        except Exception:  # noqa: BLE001 - OperationTimeout expected
            pass
        took.append(time.monotonic() - t)

    th = threading.Thread(target=waiter, daemon=True)
    th.start()
    time.sleep(0.2)
    clock.step(step_ms)
    th.join(4.0)
    clock.step(-step_ms)  # let a hung waiter end
    th.join(3.0)
    p.close()
    assert took and 1.3 <= took[0] < 3.0, f"a 1.5 s client wait took {took[0] if took else 'over 7'} s"


def test_an_explicit_system_clock_leaves_a_production_runtime_a_production_runtime(tmp_path):
    """``Runtime(provider, options, clock=SystemClock())`` - the default clock passed explicitly,
    as a user injecting or wrapping the wall clock does (runtime.py: "The clock, id source and
    driver are injectable") - on the threaded driver must behave as the default: an activity's
    ``ctx.get_client().wait_for_orchestration`` waits for the child (SPEC §17 get_client).
    Observed: any injected clock is taken for a simulation - the wait ends at once with "on a
    simulated clock no time passes while an activity runs" (and ack retries stop sleeping)."""
    p = SqliteProvider.open(str(tmp_path / "e.db"))
    rt = Runtime(p, _opts(), clock=SystemClock())

    @rt.register_activity("StartAndWait")
    def start_and_wait(ctx, _):
        client = ctx.get_client()
        client.start_orchestration("child", "Child")
        try:
            return client.wait_for_orchestration("child", 5_000).output
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {exc}"

    @rt.register_orchestration("Child")
    def child(ctx, _):
        yield ctx.schedule_timer(300)
        return "child-done"

    @rt.register_orchestration("P")
    def parent(ctx, _):
        return (yield ctx.schedule_activity("StartAndWait"))

    rt.start()
    try:
        c = Client(p)
        c.start_orchestration("p", "P")
        st = wait_final(c, "p", 10)
        assert (st.status, st.output) == ("Completed", "child-done"), st.output
    finally:
        rt.shutdown(1_000)
        p.close()


# --- simulation: long timers and signals at chosen virtual times --------------------------------


def _race_spec(signal_at: int | None, horizon_ms: int = 2 * DAY_MS) -> SimSpec:
    def setup(rt, world):
        @rt.register_orchestration("W")
        def w(ctx, _):
            r = yield ctx.race(ctx.schedule_timer(DAY_MS), ctx.wait_for_event("go"))
            return [r["index"], r["value"], (yield ctx.utc_now()) - DEFAULT_EPOCH_MS]

    signals = [] if signal_at is None else [Signal(instance="w", name="go", data="sig", at_ms=signal_at)]
    return SimSpec(name="race-day", setup=setup, starts=[Start(instance="w", orchestration="W")],
                   signals=signals, horizon_ms=horizon_ms)


@pytest.mark.parametrize("at,expected", [(DAY_MS - 1, [1, "sig", DAY_MS - 1]), (DAY_MS, [0, None, DAY_MS]),
                                         (DAY_MS + 1, [0, None, DAY_MS])], ids=["before", "exactly", "after"])
def test_sim_signal_around_a_day_timer_due_time_decides_the_race_the_same_for_every_seed(at, expected):
    """A day-long timer raced with an event signalled 1 ms before, exactly at, 1 ms after its due
    time. Before: the event wins; after: the timer. Exactly at: SPEC §4 (first completion in
    history) with §3.2/§15.1 (visible time, then enqueue order) makes the timer - enqueued a day
    earlier - the winner however the seeded scheduler interleaves the raise with the fetch: a
    fault-free outcome must not depend on the seed. utc_now reads the virtual time exactly, the
    checkers pass, a simulated day costs little real time."""
    began = time.perf_counter()
    for seed in range(10):
        r = run_and_check(Simulation(_race_spec(at), seed, None))
        assert r.ok, r.failures[0].render()
        assert r.outputs()["w"] == ("Completed", expected), (seed, r.outputs())
    assert time.perf_counter() - began < 8


def test_sim_same_seed_same_trace_with_a_long_timer_a_signal_and_faults():
    """Same seed and fault plan: byte-identical trace and the same outcome (SPEC §18); other seeds
    under faults keep the outcome (the event 5 s before the day timer wins) and pass the checkers."""
    spec, plan = _race_spec(DAY_MS - 5_000), FaultPlan.all(0.1)
    a, b = (run_and_check(Simulation(spec, 42, plan)) for _ in range(2))
    assert a.ok, a.failures[0].render()
    assert a.trace == b.trace and a.trace_hash == b.trace_hash and a.outputs() == b.outputs()
    for seed in range(6):
        r = run_and_check(Simulation(spec, seed, plan))
        assert r.ok, r.failures[0].render()
        if not r.budget_exhausted:
            assert r.outputs()["w"] == ("Completed", [1, "sig", DAY_MS - 5_000]), (seed, r.outputs())


@pytest.mark.parametrize("record", [Signal, Start])
@pytest.mark.parametrize("bad", [-1, -DAY_MS, 1.5, True, "10"])
def test_sim_client_operations_before_time_zero_or_not_integer_ms_are_refused(record, bad):
    """A Signal/Start at a negative virtual time (before the run starts) or a non-integer time is
    refused when the record is built, naming ``at_ms``."""
    kw = {"name": "go"} if record is Signal else {"orchestration": "W"}
    with pytest.raises((ValueError, TypeError), match="at_ms"):
        record(instance="w", at_ms=bad, **kw)


def test_sim_the_horizon_is_inclusive_for_signals_and_timers_and_later_signals_are_not_blamed():
    """``horizon_ms`` is the virtual time *after* which the run stops. A signal at exactly the
    horizon is delivered (and wins); a timer due exactly at it fires; a signal 1 ms after it never
    arrives - the instance is left Running without TimerFired, and liveness does not blame an
    instance a client message was still to reach (checkers pass)."""
    r = run_and_check(Simulation(_race_spec(DAY_MS // 2, horizon_ms=DAY_MS // 2), 3, None))
    assert r.ok and r.outputs()["w"] == ("Completed", [1, "sig", DAY_MS // 2]), r.outputs()
    r = run_and_check(Simulation(_race_spec(None, horizon_ms=DAY_MS), 5, None))
    assert r.ok and r.outputs()["w"] == ("Completed", [0, None, DAY_MS]), r.outputs()
    r = run_and_check(Simulation(_race_spec(DAY_MS // 2 + 1, horizon_ms=DAY_MS // 2), 3, None))
    assert r.ok, r.failures[0].render()
    assert r.statuses["w"].status == "Running" and r.end_ms <= DAY_MS // 2
    assert "TimerFired" not in [type(e).__name__ for e in r.histories["w"][1]]


@pytest.mark.parametrize("provider", ["memory", "sqlite"])
def test_sim_a_second_maximum_timer_is_due_at_the_latest_time_a_64_bit_column_holds(provider):
    """``MAX_TIMER_DELAY_MS`` keeps a fire time inside a signed 64-bit ms column from any real
    clock (context.py). On a simulated clock already 2**62 ms past the epoch (after one such
    timer) a second one would be due beyond 2**63 - 1: SQLite raised a raw OverflowError out of
    ``Simulation.run`` and the memory provider stored a fire time no 64-bit store holds. Now its
    fire time is capped at 3 * 2**61 (leaving room for lock expiries computed from a clock that
    got there) on every provider, the same on replay (it is recorded), and the run completes
    cleanly."""

    def setup(rt, world):
        @rt.register_orchestration("M")
        def m(ctx, _):
            yield ctx.schedule_timer(MAX_TIMER_DELAY_MS)
            yield ctx.schedule_timer(MAX_TIMER_DELAY_MS)
            return "fired"

    spec = SimSpec(name="max2", setup=setup, starts=[Start(instance="m", orchestration="M")], horizon_ms=2**63)
    r = run_and_check(Simulation(spec, 1, None, provider=provider))  # must not raise
    fire_ats = [e.fire_at_ms for e in r.histories["m"][1] if type(e).__name__ == "TimerCreated"]
    assert len(fire_ats) == 2 and fire_ats[1] == 3 * 2**61, fire_ats
    assert r.ok, [f.render() for f in r.failures]
    assert r.outputs()["m"] == ("Completed", "fired"), r.outputs()
