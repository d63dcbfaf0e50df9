"""The scheduler loop's shortcuts rest on properties checked here; none of them changes a trace.

* the step is drawn with ``Random._randbelow(n)``, which is what ``randrange(n)`` does for n > 0
  (same value, same generator state afterwards);
* the runnable steps are listed in a fixed, documented order (the draw indexes that list), and
  the cached per-node step tuples always name the node's current incarnation;
* once the fault window has closed for good, the run stops asking for faults (no kind active,
  storage calls passed straight through): the trace is what asking would have produced;
* ``FaultyProvider.stop_injecting`` makes the faultable operations the inner provider's own.
"""

from __future__ import annotations

import random

import attrs

from duroxide_sim.core.events import StartOrchestration
from duroxide_sim.providers.faulty import FAULTABLE_OPERATIONS, FaultyProvider
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.runtime.options import RuntimeOptions
from duroxide_sim.sim.clock import SimClock
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation, Start, _Run

from .specs import ORDERS_OK


def test_randbelow_draws_exactly_like_randrange():
    for seed in ("sched:0", "sched:7", 12345):
        a, b = random.Random(seed), random.Random(seed)
        for n in [1, 2, 3, 5, 7, 8, 11, 16, 17, 100, 2**31 + 3] * 20:
            assert a.randrange(n) == b._randbelow(n)
        assert a.getstate() == b.getstate()


def _busy_run(faults: FaultPlan | None = None) -> _Run:
    spec = attrs.evolve(ORDERS_OK, options=RuntimeOptions(orchestration_concurrency=2, worker_concurrency=3))
    sim = Simulation(spec, 0, faults, nodes=3)
    run = _Run(sim, sim.plan)
    run.pending = [Start(instance="x", orchestration="Orders::orchestration::order", input=1)]
    n0, n1, n2 = run.nodes
    # n0: every kind runnable; n1: crashed and due for restart; n2: fetchers idle, one of each in flight.
    n0.orch_items, n0.leases, n0.executed = ["item"], ["lease"], [("lease", "outcome")]
    n1.alive, n1.restart_at = False, run.clock.now_ms()
    n2.orch_idle = n2.work_idle = True
    n2.orch_items, n2.leases, n2.executed = ["item"], ["lease"], [("lease", "outcome")]
    return run


def test_runnable_steps_come_in_the_documented_order():
    run = _busy_run()
    acts = run._runnable()
    assert [(kind, None if node is None else node.index) for kind, node, _ in acts] == [
        ("client", None),
        ("orch_fetch", 0), ("orch_turn", 0), ("work_fetch", 0), ("work_exec", 0), ("work_ack", 0),
        ("restart", 1),
        ("orch_turn", 2), ("work_exec", 2), ("work_ack", 2),
    ]
    assert [handler.__name__ for _, _, handler in acts[:7]] == [
        "_client_step", "_orch_fetch", "_orch_turn", "_work_fetch", "_work_exec", "_work_ack", "_restart_step",
    ]
    assert run._runnable() == acts  # a pure function of the state: listing twice changes nothing


def test_slots_limit_the_fetch_steps():
    run = _busy_run()
    n0 = run.nodes[0]
    n0.orch_items = ["a", "b"]  # orchestration_concurrency = 2: full
    n0.leases, n0.executed = ["l", "m"], [("l", "o")]  # worker_concurrency = 3: full
    kinds = [kind for kind, node, _ in run._runnable() if node is n0]
    assert kinds == ["orch_turn", "work_exec", "work_ack"]


def test_step_tuples_name_the_current_incarnation_after_a_restart():
    run = _busy_run()
    old = run.nodes[1]
    (restart,) = [a for a in run._runnable() if a[0] == "restart"]
    restart[2](restart[1])
    fresh = run.nodes[1]
    assert fresh is not old and fresh.incarnation == old.incarnation + 1
    for _, node, _ in run._runnable():
        if node is not None:
            assert node is run.nodes[node.index]  # never a dead incarnation's tuple
    assert fresh.act_orch_fetch[1] is fresh


def test_closing_the_fault_window_changes_no_trace():
    """The shortcut taken when the window closes is invisible: a run that keeps the fault
    wrapper and keeps counting (and rolling nothing, as the window is closed) traces the same."""

    class KeepAsking(_Run):
        def _close_faults(self) -> None:
            self.faults_open = False  # skip only the step-boundary kinds, which cannot fire now

    for seed in range(6):
        plan = FaultPlan.all(0.1, until_ms=3_000)
        fast = _Run(Simulation(ORDERS_OK, seed, plan), plan)
        slow = KeepAsking(Simulation(ORDERS_OK, seed, plan), plan)
        a, b = fast.execute(), slow.execute()
        assert not fast.faults_open and not fast.active_kinds  # the window did close
        assert a.trace == b.trace and a.faults_injected == b.faults_injected
        assert sum(b.faults_injected.values()) > 0
        assert sum(slow.kind_opportunities.values()) > sum(fast.kind_opportunities.values())  # asked more, to no effect


def test_the_window_also_closes_when_the_fault_budget_is_spent():
    plan = FaultPlan({"transient": 1.0, "crash": 1.0}, until_ms=10**9, max_faults=3)
    run = _Run(Simulation(ORDERS_OK, 1, plan), plan)
    result = run.execute()
    assert sum(result.faults_injected.values()) == 3
    assert not run.faults_open
    again = Simulation(ORDERS_OK, 1, plan).run()
    assert again.trace == result.trace


def test_same_seed_same_trace_with_every_fault_kind_on_and_three_nodes():
    plan = FaultPlan.all(0.1)
    for seed in range(5):
        a = Simulation(ORDERS_OK, seed, plan, nodes=3).run()
        b = Simulation(ORDERS_OK, seed, plan, nodes=3).run()
        assert a.trace == b.trace and a.faults_injected == b.faults_injected


def test_stop_injecting_makes_the_faultable_operations_plain_pass_throughs():
    clock = SimClock()
    inner = InMemoryProvider(clock)
    asked: list[tuple[str, str]] = []
    wrapped = FaultyProvider(inner, lambda kind, op: asked.append((kind, op)) or False)
    wrapped.enqueue_for_orchestrator(StartOrchestration(instance="i", orchestration="o", input=None))
    assert asked  # the wrapper consults decide
    asked.clear()
    wrapped.stop_injecting()
    for op in FAULTABLE_OPERATIONS:
        assert getattr(wrapped, op) == getattr(inner, op)
    wrapped.enqueue_for_orchestrator(StartOrchestration(instance="j", orchestration="o", input=None))
    item = wrapped.fetch_orchestration_item(30_000)
    assert item is not None and item.instance == "i" and not asked
