"""The simulation runs on the production SQLite provider too, with the same results."""

from __future__ import annotations

from duroxide_sim.core.events import to_dict
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation
from tests.sim import specs


def _histories(result):
    return {i: {e: [to_dict(ev) for ev in evs] for e, evs in ex.items()} for i, ex in result.histories.items()}


def test_fault_free_sqlite_and_memory_runs_write_identical_histories() -> None:
    """Same seed, fault-free plan: every history, output and trace line is the same on both providers."""
    for seed in range(10):
        mem = Simulation(specs.ORDERS_OK, seed, None, provider="memory").run()
        sql = Simulation(specs.ORDERS_OK, seed, None, provider="sqlite").run()
        assert _histories(sql) == _histories(mem), f"seed {seed}"
        assert sql.outputs() == mem.outputs()
        assert sql.trace == mem.trace


def test_sqlite_simulation_with_faults_keeps_every_property() -> None:
    for seed in range(20):
        result = run_and_check(Simulation(specs.ORDERS_OK, seed, FaultPlan.all(0.05), provider="sqlite"))
        assert result.ok, [f.render() for f in result.failures]


def test_sqlite_simulation_finds_the_planted_bug_too() -> None:
    for seed in range(30):
        result = run_and_check(Simulation(specs.ORDERS_NON_IDEMPOTENT, seed, FaultPlan.only("crash_after_effect", rate=0.3), provider="sqlite"))
        if any(f.checker == "idempotency" for f in result.failures):
            return
    raise AssertionError("the SQLite-backed simulation never found the non-idempotent ship")
