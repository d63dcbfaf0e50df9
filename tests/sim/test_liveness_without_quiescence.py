"""Liveness verdicts for runs that never go quiet (an eternal orchestration beside the others).

An eternal monitor - ``loop: timer, check, continue-as-new`` - is the commonest durable
pattern, and a spec that starts one never reaches quiescence: the run ends at the horizon with
the monitor's next timer queued. The liveness checker used to judge only quiescent runs, so a
single eternal instance switched it off for every other instance of the spec: a child that
never starts, an activity or timer whose work item the store lost, a continue-as-new whose
next execution never starts - none was reported.

Now, when a run ends with work still queued, an instance is judged on what the store still
holds for it: an instance with nothing queued (no message for it, no activity of it queued or
in flight) and no client operation still to come is not going to move again, so an open
schedule of it that nothing can complete is reported stuck - exactly as a quiescent run
reports it. An instance with anything queued is work in flight: no verdict.

Each planted bug below sits beside an eternal monitor; each is caught, with both providers;
correct specs with a monitor pass under every fault kind.
"""

from __future__ import annotations

import random

import pytest

from duroxide_sim.core.events import ActivityExecute, ContinueAsNew, StartOrchestration, TimerFiredMsg
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.providers.sqlite import SqliteProvider
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, Simulation, SimSpec, Start

REF = "tests/sim/test_liveness_without_quiescence.py"
HOUR = 3_600_000
PROVIDERS = ["memory", "sqlite"]


def _monitor(rt) -> None:
    @rt.register_orchestration("Mon::orchestration::monitor")
    def monitor(ctx, n):
        for _ in range(3):
            yield ctx.schedule_timer(60_000)
            yield ctx.schedule_activity("Mon::activity::probe", n)
        yield ctx.continue_as_new(n + 1)  # eternal: never completes

    @rt.register_activity("Mon::activity::probe")
    def probe(ctx, n):
        return n


MONITOR = Start(instance="monitor", orchestration="Mon::orchestration::monitor", input=0)


# --- planted: two parents share an explicit child id (a user bug) -----------------------------


def _shared_child_setup(rt, world):
    _monitor(rt)

    @rt.register_orchestration("Shared::orchestration::child")
    def child(ctx, x):
        yield ctx.schedule_timer(10)
        return x

    @rt.register_orchestration("Shared::orchestration::parent")
    def parent(ctx, x):
        # A fixed child id: the second parent's start lands on the first one's child. (It used to
        # wait forever - the planted bug of the stuck-child test; the runtime now fails it at
        # once, so that test plants a store that loses a child's start instead.)
        return (yield ctx.schedule_sub_orchestration_with_id("Shared::orchestration::child", "shared-child", x))


SHARED_CHILD_BESIDE_MONITOR = SimSpec(
    name="shared-child-beside-monitor",
    setup=_shared_child_setup,
    starts=[MONITOR] + [Start(instance=f"p{i}", orchestration="Shared::orchestration::parent", input=i) for i in range(2)],
    fault_transparent=False,
    horizon_ms=HOUR,
    ref=f"{REF}:SHARED_CHILD_BESIDE_MONITOR",
)


# --- a correct spec with a monitor: activity, timer, retry, sub-orchestration, CAN, events -----


def _work_setup(rt, world):
    _monitor(rt)

    @rt.register_activity("Work::activity::step")
    def step(ctx, x):
        world.put_if_absent(f"step:{x}", x)
        return x + 1

    @rt.register_orchestration("Work::orchestration::child")
    def child(ctx, x):
        yield ctx.schedule_timer(1_000)
        return (yield ctx.schedule_activity("Work::activity::step", x))

    @rt.register_orchestration("Work::orchestration::job")
    def job(ctx, args):
        x, rounds = args
        x = yield ctx.schedule_activity("Work::activity::step", x)
        yield ctx.schedule_timer(5_000)
        x = yield ctx.schedule_sub_orchestration("Work::orchestration::child", x)
        # A queue keeps messages sent before it waits. Which message a round gets is not used: a
        # client retrying an enqueue whose commit was lost sends it twice (at-least-once).
        yield ctx.dequeue_event("go")
        if rounds < 1:
            yield ctx.continue_as_new([x, rounds + 1])
        return x

    @rt.register_orchestration("Work::orchestration::late")
    def late(ctx, x):
        # Still waiting on a timer past the horizon when the run ends: in flight, not stuck.
        yield ctx.schedule_timer(2 * HOUR)
        return x


WORK_BESIDE_MONITOR = SimSpec(
    name="work-beside-monitor",
    setup=_work_setup,
    starts=[MONITOR, Start(instance="late", orchestration="Work::orchestration::late", input=1)]
    + [Start(instance=f"j{i}", orchestration="Work::orchestration::job", input=[i, 0]) for i in range(3)],
    signals=[Signal(instance=f"j{i}", name="go", data=k, at_ms=None, kind="enqueue") for i in range(3) for k in (1, 2)],
    horizon_ms=HOUR,
    ref=f"{REF}:WORK_BESIDE_MONITOR",
)


# --- planted store bugs: a work item lost at ack ------------------------------------------------


def _lose(monkeypatch: pytest.MonkeyPatch, provider: str, keep) -> None:
    """Plant a store bug: ``ack_orchestration_item`` silently drops the items ``keep`` refuses."""
    cls = InMemoryProvider if provider == "memory" else SqliteProvider
    real = cls.ack_orchestration_item

    def ack(self, lock_token, execution_id, history_delta, worker_items, orchestrator_items, metadata, cancelled=()):
        return real(self, lock_token, execution_id, history_delta, [w for w in worker_items if keep(w)],
                    [o for o in orchestrator_items if keep(o)], metadata, cancelled)

    monkeypatch.setattr(cls, "ack_orchestration_item", ack)


def _liveness(spec: SimSpec, provider: str, seeds: range, plan: FaultPlan | None = None):
    out = []
    for seed in seeds:
        result = run_and_check(Simulation(spec, seed, plan or FaultPlan.none(), provider=provider))
        out.append((result, [f for f in result.failures if f.checker == "liveness"]))
    return out


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_shared_child_id_fails_the_second_parent_beside_an_eternal_monitor(provider: str) -> None:
    """The second parent's child start collides with the first parent's child: it fails at once
    with the reason (no liveness verdict needed), the first parent completes."""
    for result, hits in _liveness(SHARED_CHILD_BESIDE_MONITOR, provider, range(3)):
        assert not result.quiescent, "the monitor keeps the run going to the horizon"
        assert hits == [], [f.render() for f in hits]
        outcomes = sorted((result.statuses[p].status, "already exists" in (result.statuses[p].error or ""))
                          for p in ("p0", "p1"))
        assert outcomes == [("Completed", False), ("Failed", True)], outcomes


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_child_that_never_starts_is_reported_beside_an_eternal_monitor(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _lose(monkeypatch, provider, lambda w: not (isinstance(w, StartOrchestration) and w.parent_instance == "j0"))
    for result, hits in _liveness(WORK_BESIDE_MONITOR, provider, range(2)):
        assert not result.quiescent, "the monitor keeps the run going to the horizon"
        assert hits, f"seed {result.seed}: no liveness verdict"
        assert [f.instance for f in hits] == ["j0"], [f.render() for f in hits]
        assert "stuck: SubOrchestrationScheduled" in hits[0].message and "never completed" in hits[0].message


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_lost_activity_item_is_reported_beside_an_eternal_monitor(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _lose(monkeypatch, provider, lambda w: not (isinstance(w, ActivityExecute) and w.instance == "j1"))
    for result, hits in _liveness(WORK_BESIDE_MONITOR, provider, range(2)):
        assert [(f.instance, f.message) for f in hits] == [
            ("j1", "stuck: ActivityScheduled id 2 (Work::activity::step) never completed")], result.seed


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_lost_timer_is_reported_beside_an_eternal_monitor(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _lose(monkeypatch, provider, lambda w: not (isinstance(w, TimerFiredMsg) and w.instance == "j2"))
    for result, hits in _liveness(WORK_BESIDE_MONITOR, provider, range(2)):
        assert [(f.instance, f.message) for f in hits] == [("j2", "stuck: TimerCreated id 4 () never completed")], result.seed


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_lost_continue_as_new_is_reported_beside_an_eternal_monitor(provider: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _lose(monkeypatch, provider, lambda w: not (isinstance(w, ContinueAsNew) and w.instance == "j0"))
    for result, hits in _liveness(WORK_BESIDE_MONITOR, provider, range(2)):
        assert [(f.instance, f.message) for f in hits] == [
            ("j0", "continued-as-new but the next execution never started")], result.seed


@pytest.mark.parametrize("provider", PROVIDERS)
def test_correct_work_beside_a_monitor_passes_every_fault_kind(provider: str) -> None:
    seeds = range(12) if provider == "memory" else range(4)
    for kind in ("none", "all", "heavy", "swarm"):
        for seed in seeds:
            plan = {"none": FaultPlan.none(), "all": FaultPlan.all(0.05), "heavy": FaultPlan.all(0.2),
                    "swarm": FaultPlan.swarm(random.Random(seed))}[kind]
            result = run_and_check(Simulation(WORK_BESIDE_MONITOR, seed, plan, provider=provider))
            assert not result.quiescent
            assert result.ok, [f.render() for f in result.failures]
            # the horizon cut the run: the monitor and the late instance are still running, the
            # jobs are done (their signals were all delivered within the hour)
            for inst in ("late", "monitor"):  # (or poisoned, when heavy faults used up a delivery budget)
                st = result.statuses[inst]
                assert st.status == "Running" or (kind != "none" and str(st.error).startswith("poison:")), (inst, st)
            for i in range(3):  # done: completed, or poisoned when heavy faults used up its delivery budget
                st = result.statuses[f"j{i}"]
                assert st.status == "Completed" or (kind != "none" and str(st.error).startswith("poison:")), result.outputs()


def test_an_instance_with_a_signal_still_to_come_is_not_judged() -> None:
    """An event the spec sends after the horizon could still move the instance: no verdict."""

    def setup(rt, world):
        _monitor(rt)

        @rt.register_orchestration("Wait::orchestration::w")
        def w(ctx, x):
            got = yield ctx.wait_for_event("go")
            return got

    spec = SimSpec(name="signal-after-horizon", setup=setup,
                   starts=[MONITOR, Start(instance="w", orchestration="Wait::orchestration::w", input=0)],
                   signals=[Signal(instance="w", name="go", data=1, at_ms=2 * HOUR)], horizon_ms=HOUR)
    for result, hits in _liveness(spec, "memory", range(3)):
        assert not hits and result.ok, [f.render() for f in result.failures]


def _auto_child_setup(rt, world):
    @rt.register_orchestration("Auto::orchestration::child")
    def child(ctx, x):
        return (yield ctx.wait_for_event("signed"))  # nobody signs: allowed to wait

    @rt.register_orchestration("Auto::orchestration::parent")
    def parent(ctx, x):
        return (yield ctx.schedule_sub_orchestration("Auto::orchestration::child", x))  # an auto id: sub::2


AUTO_ID_CHILD_WAITING = SimSpec(
    name="auto-id-child-waiting", setup=_auto_child_setup,
    starts=[Start(instance="k1", orchestration="Auto::orchestration::parent", input=1)],
    ref=f"{REF}:AUTO_ID_CHILD_WAITING",
)


def test_parent_of_an_auto_id_child_waiting_for_an_event_is_not_stuck() -> None:
    """The checker looked the child up by its recorded id (``sub::2``) instead of its full id
    (``k1::sub::2``): it found no such instance, so the parent of any auto-id child still running
    - waiting for a signal nobody sends, which is allowed - was reported stuck."""
    for result, hits in _liveness(AUTO_ID_CHILD_WAITING, "memory", range(3)):
        assert result.quiescent
        assert result.statuses["k1::sub::2"].status == "Running"
        assert not hits, [f.render() for f in hits]


def test_a_step_budget_spent_by_an_eternal_monitor_says_how_far_time_got() -> None:
    """A monitor with a 1-minute timer over the default 7-day horizon needs ~10,000 cycles: the
    step budget runs out first. That is reported (the run proves nothing about the later
    days), and the message tells it apart from a livelock: the clock moved, to where."""
    def setup(rt, world):
        _monitor(rt)

    spec = SimSpec(name="monitor-only", setup=setup, starts=[MONITOR])
    result = run_and_check(Simulation(spec, 0, FaultPlan.none(), max_steps=3_000))
    (hit,) = [f for f in result.failures if f.checker == "liveness"]
    assert hit.message.startswith("no quiescence within 3000 steps (livelock?); virtual time reached ")
    assert "of the 7.0 d horizon (an eternal orchestration needs a shorter horizon_ms or a larger max_steps)" in hit.message
