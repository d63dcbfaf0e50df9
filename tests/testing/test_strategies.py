"""Hypothesis strategies: failing runs shrink to minimal fault schedules; one-line tests; type round trips."""

from __future__ import annotations

import attrs
import pytest
from hypothesis import HealthCheck, find, settings

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation
from duroxide_sim.testing.strategies import check_type_round_trips, fault_plans, simulation_test
from tests.sim import specs

KINDS = ("crash_after_effect", "transient", "duplicate", "reorder", "delay")


def _broken(plan: FaultPlan) -> bool:
    return not run_and_check(Simulation(specs.TWO_FAULT_BUG, 0, plan)).ok


def test_single_faults_do_not_show_the_two_fault_bug() -> None:
    """One re-delivery of the rate-limited call is harmless (so the bug really needs two)."""
    for n in range(1, 12):
        assert not _broken(FaultPlan.scripted([(n, "crash_after_effect")]))
    assert not _broken(FaultPlan.none())


def test_two_fault_bug_is_found_and_shrunk_to_at_most_two_faults() -> None:
    """Hypothesis finds a failing plan among random scripts and shrinks it to <= 2 faults."""
    plan = find(
        fault_plans(KINDS, max_faults=8, max_opportunity=12),
        _broken,
        settings=settings(max_examples=2000, database=None, derandomize=True, suppress_health_check=list(HealthCheck)),
    )
    assert len(plan.script) <= 2, plan.script
    assert {kind for _, kind in plan.script} == {"crash_after_effect"}
    result = run_and_check(Simulation(specs.TWO_FAULT_BUG, 0, plan))
    assert any("both shipped and refunded" in f.message for f in result.failures)


def test_simulation_test_decorator_fails_with_the_report() -> None:
    """@simulation_test turns a spec into a property test whose failure carries the repro line."""

    @simulation_test(specs.TWO_FAULT_BUG, kinds=("crash_after_effect",), max_faults=3, max_opportunity=6,
                     hypothesis_settings=settings(max_examples=200, derandomize=True, database=None))
    def test_inner(result) -> None:
        pass

    with pytest.raises(AssertionError) as err:
        test_inner()
    assert "shipped_xor_refunded" in str(err.value)
    assert "reproduce: duroxide-sim reproduce tests/sim/specs.py:TWO_FAULT_BUG" in str(err.value)


@simulation_test(specs.ORDERS_OK, max_faults=4, max_examples=20)
def test_correct_workflow_holds_under_generated_fault_plans(result) -> None:
    """The one-line form over a correct workflow passes."""
    assert result.statuses


@attrs.frozen
class Address:
    street: str
    zip_code: str


@attrs.frozen
class Order:
    id: str
    items: list[int]
    ship_to: Address | None = None


@attrs.frozen
class Receipt:
    order_id: str
    total: int


@attrs.frozen
class Upload:
    name: str
    payload: bytes


def _typed_app(rt) -> None:
    @rt.register_activity_typed("Shop::activity::price")
    def price(ctx, order: Order) -> Receipt:
        return Receipt(order.id, sum(order.items))

    @rt.register_orchestration_typed("Shop::orchestration::checkout")
    def checkout(ctx, order: Order) -> Receipt:
        return (yield ctx.schedule_activity_typed("Shop::activity::price", order, result_type=Receipt))


def test_type_round_trips_cover_every_registered_record_type() -> None:
    checked = check_type_round_trips(_typed_app, max_examples=25)
    assert {c.__name__ for c in checked} == {"Order", "Receipt"}


def test_type_round_trip_catches_a_lossy_type() -> None:
    """Planted: a record with a bytes field, which JSON cannot carry."""

    def app(rt) -> None:
        @rt.register_activity_typed("Up::activity::store")
        def store(ctx, upload: Upload) -> int:
            return len(upload.payload)

    with pytest.raises(AssertionError, match="Upload did not round-trip"):
        check_type_round_trips(app, max_examples=25)
