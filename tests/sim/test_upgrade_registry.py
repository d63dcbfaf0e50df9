"""The determinism checker replays each history with the code that wrote it.

A simulated process that restarts runs ``SimSpec.setup`` again, so a spec can model a code
upgrade: the restarted process registers versions its first incarnation did not have. The
from-scratch replay of the determinism checker must then use the registries of the processes
that committed turns of that execution (each that has the history's version, once per distinct
code), not the first booted process's registry: that one lacks the upgrade's versions and would
report every upgraded execution as "not registered" - a finding about the harness, not the
workflow. A restart that changes a version's code in place (a rolling deploy) is still found:
every writer's code must replay the history, and the failure names the process.
"""

from __future__ import annotations

from typing import Any

from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation, SimSpec, Start


def _incarnation(rt: Any) -> int:
    return int(rt.runtime_id.rsplit("-", 1)[1])


def _upgrade_setup(rt: Any, world: Any) -> None:
    rt.register_activity("Inc", lambda ctx, x: x + 1)

    def body(tag: str, steps: int) -> Any:
        def run(ctx: Any, x: int) -> Any:
            for _ in range(steps):
                x = yield ctx.schedule_activity("Inc", x)
            return f"{tag}:{x}"
        return run

    rt.register_orchestration_versioned("Up", "1.0.0", body("v1", 2))
    if _incarnation(rt) > 0:  # the upgrade: only a restarted process has 2.0.0 (Latest from then on)
        rt.register_orchestration_versioned("Up", "2.0.0", body("v2", 3))


def _spec(bug: bool = False) -> SimSpec:
    return SimSpec(
        name="upgrade-on-restart",
        setup=_upgrade_setup,
        # "early" starts before the crash (1.0.0), "late" long after the restart (2.0.0).
        starts=[Start(instance="early", orchestration="Up", input=0),
                Start(instance="late", orchestration="Up", input=0, at_ms=120_000)],
        fault_transparent=False,
    )


def _crash_once() -> FaultPlan:
    # (the 6th crash opportunity falls after "early" ran its first turn on 1.0.0)
    return FaultPlan.scripted([(6, "crash")], until_ms=60_000)


def test_an_execution_started_on_upgraded_code_is_replayed_with_that_code() -> None:
    result = run_and_check(Simulation(_spec(), 3, _crash_once(), nodes=1))
    assert result.faults_injected.get("crash") == 1, result.faults_injected
    assert result.histories["early"][1][0].version == "1.0.0"  # started before the crash ...
    assert result.statuses["early"].output == "v1:2"  # ... and kept its version after it
    assert result.histories["late"][1][0].version == "2.0.0"  # the upgrade ran the late instance
    assert result.statuses["late"].output == "v2:3"
    assert not result.failures, result.failures[0].render()


def test_registry_for_picks_a_writer_that_has_the_version() -> None:
    result = run_and_check(Simulation(_spec(), 3, _crash_once(), nodes=1))
    early, late = result.histories["early"][1], result.histories["late"][1]
    assert [w[0] for w in result.writers[("early", 1)]] == ["n0, incarnation 0", "n0, incarnation 1"]
    # (the same 1.0.0 code in both processes: replayed once)
    assert [p for p, _ in result.replay_registries("early", 1, early)] == ["n0, incarnation 1"]
    for inst, history in (("early", early), ("late", late)):
        registry = result.registry_for(inst, 1, history)
        assert registry.resolve("Up", history[0].version) is not None
    assert result.registry.resolve("Up", "2.0.0") is None  # the first process's code lacks it
    assert result.registry_for("nobody", 1) is result.registry


_CALLS = {"n": 0}


def test_a_nondeterministic_upgrade_is_still_reported() -> None:
    """The replay still runs the writer's code: an upgraded version that depends on hidden
    state (a module-level call counter) diverges when replayed from scratch, and is reported."""
    def setup(rt: Any, world: Any) -> None:
        rt.register_activity("Inc", lambda ctx, x: x + 1)

        def v1(ctx: Any, x: int) -> Any:
            x = yield ctx.schedule_activity("Inc", x)
            return x

        def v2(ctx: Any, x: int) -> Any:
            _CALLS["n"] += 1  # planted bug: each run of the code sees another count
            for _ in range(1 + _CALLS["n"] % 2):
                x = yield ctx.schedule_activity("Inc", x)
            x = yield ctx.schedule_activity("Inc", x)
            return x

        rt.register_orchestration_versioned("Up", "1.0.0", v1)
        if _incarnation(rt) > 0:
            rt.register_orchestration_versioned("Up", "2.0.0", v2)

    spec = SimSpec(name="upgrade-nondeterministic", setup=setup,
                   starts=[Start(instance="early", orchestration="Up", input=0),
                           Start(instance="late", orchestration="Up", input=0, at_ms=120_000)],
                   fault_transparent=False)
    _CALLS["n"] = 0
    result = run_and_check(Simulation(spec, 3, _crash_once(), nodes=1))
    assert result.histories["late"][1][0].version == "2.0.0"
    assert not any("not registered" in f.message for f in result.failures), [f.render() for f in result.failures]
    assert any(f.checker == "determinism" and f.instance == "late" for f in result.failures), \
        [f.render() for f in result.failures]


def test_code_changed_in_place_by_a_restart_is_reported_naming_the_process() -> None:
    """A rolling deploy: the restarted process registers *the same version* with other code (one
    more step). A history both processes wrote must replay with each one's code; the old code
    does not replay what the new code wrote, and the failure says whose code it was."""
    def setup(rt: Any, world: Any) -> None:
        rt.register_activity("Inc", lambda ctx, x: x + 1)
        extra = _incarnation(rt) > 0

        def run(ctx: Any, x: int) -> Any:
            x = yield ctx.schedule_activity("Inc", x)
            yield ctx.schedule_timer(60_000)
            if extra:  # the new build's extra step, under the old version number
                x = yield ctx.schedule_activity("Inc", x)
            x = yield ctx.schedule_activity("Inc", x)
            return x

        rt.register_orchestration_versioned("Up", "1.0.0", run)

    spec = SimSpec(name="rolling-deploy", setup=setup, starts=[Start(instance="i", orchestration="Up", input=0)],
                   fault_transparent=False)
    result = run_and_check(Simulation(spec, 3, FaultPlan.scripted([(6, "crash")], until_ms=30_000), nodes=1))
    assert [w[0] for w in result.writers[("i", 1)]] == ["n0, incarnation 0", "n0, incarnation 1"]
    assert result.statuses["i"].output == 3  # the new code finished what the old one started
    found = [f for f in result.failures if f.checker == "determinism"]
    assert found and "(with the code of process n0, incarnation 0)" in found[0].message, \
        [f.render() for f in result.failures]
