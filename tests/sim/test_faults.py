"""Each fault kind finds the bug it exists to find, and a correct workflow survives them all.

For every kind, the planted bug is run with only that fault enabled; the test states the seed
budget within which the harness must find it (the search is deterministic: same seeds, same
verdicts).
"""

from __future__ import annotations

import pytest

from duroxide_sim.core import replay
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FAULT_KINDS, FaultPlan
from duroxide_sim.sim.harness import Simulation
from tests.sim import specs


def first_failure(spec, plan: FaultPlan, seeds: int, **kw):
    for seed in range(seeds):
        result = run_and_check(Simulation(spec, seed, plan, **kw))
        if result.failures:
            return seed, result
    return None, None


@pytest.mark.parametrize("kind", ["crash", "crash_after_effect", "lock_expiry", "transient"])
def test_redelivery_faults_expose_a_non_idempotent_activity(kind: str) -> None:
    """Crashes, lock expiry and transient ack failures re-deliver activities: the unchecked
    append ships an order twice, and the idempotency checker names the activity."""
    seed, result = first_failure(specs.ORDERS_NON_IDEMPOTENT, FaultPlan.only(kind, rate=0.2), seeds=30)
    assert result is not None, f"{kind} never exposed the bug in 30 seeds"
    failure = next(f for f in result.failures if f.checker == "idempotency")
    assert "'Orders::activity::ship' changed the world when re-executed" in failure.message
    assert "key 'shipments'" in failure.message
    assert failure.repro.startswith("duroxide-sim reproduce tests/sim/specs.py:ORDERS_NON_IDEMPOTENT")


def test_reorder_exposes_an_assumed_completion_order() -> None:
    """Acknowledging completions out of order breaks a workflow that assumes A lands before B."""
    seed, result = first_failure(specs.REORDER_ASSUMPTION, FaultPlan.only("reorder", rate=0.5), seeds=30)
    assert result is not None
    failure = next(f for f in result.failures if f.checker == "outcome")
    assert "('Completed', 'A') differs from fault-free ('Completed', 'B')" in failure.message


def test_commit_lost_exposes_counting_resent_messages() -> None:
    """A client send that commits but reports failure is retried; the tally counts a vote twice."""
    seed, result = first_failure(specs.VOTES_COUNTING, FaultPlan.only("commit_lost", rate=0.3), seeds=30)
    assert result is not None
    failure = next(f for f in result.failures if f.checker == "outcome")
    assert failure.instance == "poll"
    assert "differs from fault-free ('Completed', ['a', 'b', 'c'])" in failure.message


def test_delay_exposes_a_deadline_race() -> None:
    """A late approval loses the race against the timer: 'auto-rejected' instead of 'approved'."""
    seed, result = first_failure(specs.APPROVAL_DEADLINE, FaultPlan.only("delay", rate=0.5), seeds=30)
    assert result is not None
    failure = next(f for f in result.failures if f.checker == "outcome")
    assert "'auto-rejected'" in failure.message and "'approved'" in failure.message


def test_duplicate_delivery_exposes_an_engine_without_dedup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted engine bug: duplicate completions are not filtered. Duplicated deliveries then
    apply a completion twice, which the well-formedness checker reports."""
    monkeypatch.setattr(replay, "_already_completed", lambda sid, completed: False)
    seed, result = first_failure(specs.ORDERS_OK, FaultPlan.only("duplicate", rate=0.5), seeds=30)
    assert result is not None
    assert any(f.checker == "well_formed" and "applied twice" in f.message for f in result.failures)


def test_duplicate_delivery_is_harmless_with_the_real_engine() -> None:
    """With the engine's duplicate filter in place, the same seeds pass."""
    for seed in range(30):
        result = run_and_check(Simulation(specs.ORDERS_OK, seed, FaultPlan.only("duplicate", rate=0.5)))
        assert result.ok, [f.render() for f in result.failures]
        assert result.faults_injected.get("duplicate", 0) > 0 or seed > 0


def test_every_fault_kind_is_injected_by_the_all_plan() -> None:
    """Across a few seeds with every kind enabled, every kind actually fires."""
    seen: set[str] = set()
    for seed in range(10):
        result = Simulation(specs.ORDERS_OK, seed, FaultPlan.all(0.1)).run()
        seen.update(result.faults_injected)
    assert seen == set(FAULT_KINDS)


def test_swarm_plans_differ_between_seeds() -> None:
    """Swarm plans enable different subsets of fault kinds for different seeds."""
    subsets = {tuple(Simulation(specs.ORDERS_OK, seed).plan.enabled()) for seed in range(40)}
    assert len(subsets) >= 10


def test_correct_workflow_passes_500_seeds_with_all_faults() -> None:
    """The idempotent order workflow keeps every property under every fault kind."""
    failures = []
    injected = 0
    for seed in range(500):
        result = run_and_check(Simulation(specs.ORDERS_OK, seed, FaultPlan.all(0.05)))
        injected += sum(result.faults_injected.values())
        failures.extend(f.render() for f in result.failures)
    assert not failures, failures[:3]
    assert injected > 5_000, "the run must actually have been faulty"
