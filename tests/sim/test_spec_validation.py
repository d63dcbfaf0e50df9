"""A SimSpec, its records and a Simulation refuse values that cannot mean anything, up front
and with the reason (a typo'd orchestration name used to pass every seed without running)."""

from __future__ import annotations

import pytest

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start


def _setup(rt, world):
    rt.register_activity("inc", lambda ctx, x: x + 1)

    def hello(ctx, x):
        return (yield ctx.schedule_activity("inc", x))

    rt.register_orchestration("Hello", hello)


def _spec(**kw):
    return SimSpec(name="s", setup=_setup, **{"starts": [Start(instance="a", orchestration="Hello", input=1)], **kw})


@pytest.mark.parametrize("kwargs, message", [
    ({"seed": "1"}, "seed must be an integer"),
    ({"seed": 1.5}, "seed must be an integer"),
    ({"nodes": 0}, "nodes must be a positive integer"),
    ({"max_steps": -1}, "max_steps must be a positive integer"),
])
def test_simulation_arguments_are_checked(kwargs, message):
    args = {"seed": 1, **kwargs}
    seed = args.pop("seed")
    with pytest.raises(ValueError, match=message):
        Simulation(_spec(), seed, FaultPlan.none(), **args)


@pytest.mark.parametrize("make, message", [
    (lambda: Start(instance="a", orchestration="Hello", at_ms=-5), "at_ms must be a non-negative integer"),
    (lambda: Signal(instance="a", name="e", at_ms=1.5), "at_ms must be a non-negative integer of ms or None"),
    (lambda: Signal(instance="a", name="e", kind="raisee"), "Signal.kind must be 'raise', 'enqueue' or 'cancel'"),
    (lambda: _spec(horizon_ms=-1), "horizon_ms must be a non-negative integer"),
])
def test_records_refuse_impossible_values(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_a_start_of_an_unregistered_orchestration_is_refused_with_the_registered_names():
    spec = _spec(starts=[Start(instance="a", orchestration="Helo", input=1)])
    with pytest.raises(ValueError, match=r"'Helo', which its setup does not register \(registered: 'Hello'\)"):
        Simulation(spec, 0, FaultPlan.none()).run()
    versioned = _spec(starts=[Start(instance="a", orchestration="Hello", input=1, version="9.9.9")])
    with pytest.raises(ValueError, match="'Hello' version 9.9.9"):
        Simulation(versioned, 0, FaultPlan.none()).run()


def test_starts_drawn_per_seed_are_checked_too():
    spec = _spec(starts=lambda rng: [Start(instance="a", orchestration="Hello", input=1), "not a start"])
    with pytest.raises(ValueError, match="starts must be Start records"):
        Simulation(spec, 0, FaultPlan.none()).run()


def test_an_invariant_that_raises_is_reported_as_a_failure_not_a_crash():
    def crashes(result):
        return result.statuses["nobody"].status

    def holds(result):
        return None if result.statuses["a"].status == "Completed" else "a did not complete"

    result = run_and_check(Simulation(_spec(invariants=[crashes, holds]), 0, FaultPlan.none()))
    assert [(f.checker, f.message.split(" (at ")[0]) for f in result.failures] == [
        ("invariants", "crashes: raised KeyError: 'nobody'")]
    assert "test_spec_validation.py:" in result.failures[0].message  # where the property broke
    assert run_and_check(Simulation(_spec(invariants=[holds]), 0, FaultPlan.none())).failures == []
