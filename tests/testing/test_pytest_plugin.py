"""The pytest plugin, exercised through pytester: repro lines, --sim-seed, loading paths, fixtures."""

from __future__ import annotations

import re

import pytest

pytest_plugins = ["pytester"]

SPEC_MODULE = '''
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world):
    @rt.register_activity("Ship::activity::ship")
    def ship(ctx, oid):
        world.append("shipments", oid)   # BUG: not idempotent
        return "shipped"

    @rt.register_orchestration("Ship::orchestration::order")
    def order(ctx, oid):
        return (yield ctx.schedule_activity("Ship::activity::ship", oid))

SPEC = SimSpec(name="ship", setup=setup,
               starts=[Start(instance=f"o{i}", orchestration="Ship::orchestration::order", input=i) for i in range(3)])
'''

FAILING_TEST = '''
import pytest
from specmod import SPEC

@pytest.mark.simulation
def test_orders(simulate):
    simulate(SPEC)
'''


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(specmod=SPEC_MODULE, test_orders=FAILING_TEST)
    pytester.syspathinsert()
    return pytester


def test_failing_property_prints_a_repro_line_that_reproduces_it(project: pytest.Pytester) -> None:
    result = project.runpytest("--sim-faults", '{"rates": {"crash_after_effect": 0.5}}', "--sim-runs", "30")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "duroxide-sim: reproduce failing simulations" in out
    match = re.search(r"pytest test_orders\.py::test_orders --sim-seed (\d+) --sim-faults (\S+)", out)
    assert match, out
    assert "idempotency" in out and "Ship::activity::ship" in out
    seed = match.group(1)
    again = project.runpytest("--sim-seed", seed, "--sim-faults", '{"rates": {"crash_after_effect": 0.5}}')
    again.assert_outcomes(failed=1)
    assert f"--sim-seed {seed}" in again.stdout.str()
    assert "Ship::activity::ship" in again.stdout.str()


def test_passing_seed_passes(project: pytest.Pytester) -> None:
    project.runpytest("--sim-faults", "none").assert_outcomes(passed=1)


def test_plugin_loads_from_entry_point_and_from_conftest_without_conflict(pytester: pytest.Pytester) -> None:
    """Installed (entry point) and listed in a conftest's pytest_plugins: loads once, no error."""
    pytester.makeconftest('pytest_plugins = ["duroxide_sim.testing.pytest_plugin"]')
    pytester.makepyfile(test_x="def test_fixture(sim_world):\n    assert sim_world.client is not None\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "already registered" not in result.stdout.str() + result.stderr.str()


def test_plugin_loads_from_source_tree_when_autoload_is_off(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """With entry points disabled, the conftest reference alone loads the plugin."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makeconftest('pytest_plugins = ["duroxide_sim.testing.pytest_plugin"]')
    pytester.makepyfile(test_x="def test_opt(request):\n    assert request.config.getoption('--sim-runs') == 20\n")
    pytester.runpytest_subprocess().assert_outcomes(passed=1)


def test_sim_world_fixture_runs_timers_instantly(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_w='''
def test_timer(sim_world):
    @sim_world.runtime.register_orchestration("T")
    def t(ctx, _):
        yield ctx.schedule_timer(30 * 24 * 3600 * 1000)
        return "a month later"
    sim_world.client.start_orchestration("t", "T")
    assert sim_world.client.wait_for_orchestration("t", 10**12).output == "a month later"
''')
    pytester.runpytest().assert_outcomes(passed=1)


def test_bad_fault_option_is_a_usage_error(project: pytest.Pytester) -> None:
    result = project.runpytest("--sim-faults", '{"rates": {"meteor": 1}}')
    assert result.ret != 0
    assert "unknown fault kind" in result.stdout.str() + result.stderr.str()


@pytest.mark.realtime
def test_production_runtime_fixtures(pytester: pytest.Pytester) -> None:
    """memory_runtime and sqlite_runtime are started production runtimes with a client."""
    pytester.makepyfile(test_rt='''
import pytest

@pytest.mark.parametrize("name", ["memory_runtime", "sqlite_runtime"])
def test_hello(request, name):
    handle = request.getfixturevalue(name)
    handle.runtime.register_activity("Greet", lambda ctx, n: f"Hello, {n}!")

    @handle.runtime.register_orchestration("Hello")
    def hello(ctx, n):
        return (yield ctx.schedule_activity("Greet", n))

    handle.start()
    handle.client.start_orchestration("h", "Hello", "World")
    assert handle.client.wait_for_orchestration("h", 10_000).output == "Hello, World!"
''')
    pytester.runpytest().assert_outcomes(passed=2)


@pytest.mark.parametrize("runs", ["0", "-2", "x"])
def test_sim_runs_must_be_positive(project: pytest.Pytester, runs: str) -> None:
    """--sim-runs 0 used to run no seed, so every simulation test passed, broken or not."""
    result = project.runpytest("--sim-runs", runs)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--sim-runs: expected a positive integer" in result.stderr.str()


def test_simulate_refuses_an_empty_seed_list_and_keeps_sandbox_for_every_seed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_s='''
import pytest
from duroxide_sim.sim import harness
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world):
    rt.register_orchestration("Hello", lambda ctx, x: x)

SPEC = SimSpec(name="s", setup=setup, starts=[Start(instance="a", orchestration="Hello", input=1)])

def test_no_seeds(simulate):
    with pytest.raises(ValueError, match="no seeds"):
        simulate(SPEC, seeds=[])

def test_sandbox_for_every_seed(simulate, monkeypatch):
    seen = []
    real = harness.Simulation.__init__
    def spy(self, *a, **kw):
        if "sandbox" in kw:  # the runs simulate() makes (a fault-free twin passes none)
            seen.append(kw["sandbox"])
        real(self, *a, **kw)
    monkeypatch.setattr(harness.Simulation, "__init__", spy)
    simulate(SPEC, seeds=[0, 1, 2], sandbox=True)
    assert seen == [True, True, True]
''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")  # a fresh interpreter: the spy sees every run
    result.assert_outcomes(passed=2)
