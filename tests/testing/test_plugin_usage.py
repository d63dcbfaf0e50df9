"""The pytest integration as a user meets it (fixtures, options, repro lines, cleanup): a probe
written in session 9, kept.

Each test asserts what the README ("Testing integrations") and the plugin/strategies docstrings
promise. Found and fixed (those tests failed before): ``simulate()`` given a spec reference string
or a setup function failed with an unrelated AttributeError; ``seeds=3`` with a bare TypeError; a
simulation failing inside a user's fixture was missing from the repro summary; ``--sim-sandbox``
did not reach ``@simulation_test``.
"""

import os
import re
import shlex
import threading

import pytest

pytest_plugins = ["pytester"]

SPEC_MODULE = '''
import time
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world):
    @rt.register_activity("Pay")
    def pay(ctx, oid):
        world.append("payments", oid)   # BUG: not idempotent
        return "paid"

    @rt.register_orchestration("Order")
    def order(ctx, oid):
        return (yield ctx.schedule_activity("Pay", oid))

SPEC = SimSpec(name="pay", setup=setup,
               starts=[Start(instance=f"o{i}", orchestration="Order", input=i) for i in range(3)])

def ok_setup(rt, world):
    rt.register_orchestration("Hello", lambda ctx, x: x)

OK = SimSpec(name="ok", setup=ok_setup, starts=[Start(instance="a", orchestration="Hello", input=1)])

def clock_setup(rt, world):
    @rt.register_orchestration("Clock")
    def clock(ctx, _):
        return int(time.time() > 0)   # BUG: wall clock in orchestration code

CLOCK = SimSpec(name="clock", setup=clock_setup, starts=[Start(instance="c", orchestration="Clock")])
'''

CRASHY = '{"rates": {"crash_after_effect": 0.5}}'
SUMMARY = "duroxide-sim: reproduce failing simulations"


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(specmod=SPEC_MODULE)
    pytester.syspathinsert()
    return pytester


def _summary_lines(result: pytest.RunResult) -> list[str]:
    lines = result.stdout.lines
    starts = [i for i, ln in enumerate(lines) if SUMMARY in ln]
    if not starts:
        return []
    return [ln for ln in lines[starts[0] + 1:] if ln.startswith("pytest ")]


# --- misuse of simulate() --------------------------------------------------------------------------


def test_simulate_with_something_that_is_not_a_simspec_says_so(project: pytest.Pytester) -> None:
    """A spec reference string (what `duroxide-sim run/reproduce` take) or the setup function
    instead of a SimSpec: the error should name the expected type, not fail deep inside the
    harness with an AttributeError about 'options' (the CLI reports 'a SPEC that is not a SimSpec')."""
    project.makepyfile(test_misuse='''
from specmod import ok_setup

def test_ref(simulate):
    simulate("specmod.py:OK", seeds=[0])

def test_setup_fn(simulate):
    simulate(ok_setup, seeds=[0])
''')
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "has no attribute 'options'" not in out, out[-3000:]
    assert len(re.findall(r"^E .*SimSpec", out, re.M)) >= 2, out[-3000:]


def test_simulate_with_an_integer_seeds_runs_that_many_or_names_the_argument(project: pytest.Pytester) -> None:
    """`duroxide-sim run --seeds N` takes a count, so `simulate(spec, seeds=3)` is a natural slip.
    It should either run 3 seeds or raise an error naming `seeds` - not the bare
    "'int' object is not iterable" from inside the fixture."""
    project.makepyfile(test_seeds='''
from specmod import OK

def test_count(simulate):
    results = simulate(OK, seeds=3)
    assert [r.seed for r in results] == [0, 1, 2]
''')
    result = project.runpytest("-p", "no:cacheprovider")
    if result.ret == 0:
        return
    out = result.stdout.str()
    assert "'int' object is not iterable" not in out, out[-3000:]
    assert re.search(r"^E .*seeds", out, re.M), out[-3000:]


def test_simulate_with_a_bad_faults_value_names_the_accepted_forms(project: pytest.Pytester) -> None:
    project.makepyfile(test_faults='''
from specmod import OK

def test_bad(simulate):
    simulate(OK, seeds=[0], faults=0.5)
''')
    result = project.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    assert "faults must be 'all', 'swarm', 'none'" in result.stdout.str()


# --- repro line --------------------------------------------------------------------------------------


def test_repro_summary_lists_a_simulation_that_fails_in_a_fixture(project: pytest.Pytester) -> None:
    """simulate() called from the user's own fixture: the failure is a setup error, and the
    'reproduce failing simulations' summary should still list its repro line (it lists the
    same failure when simulate() is called in the test body)."""
    project.makepyfile(test_fx='''
import pytest
from specmod import SPEC

@pytest.fixture
def results(simulate):
    return simulate(SPEC)

def test_uses(results):
    pass

def test_body(simulate):
    simulate(SPEC)
''')
    result = project.runpytest("-p", "no:cacheprovider", "--sim-faults", CRASHY, "--sim-runs", "10")
    result.assert_outcomes(failed=1, errors=1)
    lines = _summary_lines(result)
    assert any("test_fx.py::test_body" in ln for ln in lines), lines
    assert any("test_fx.py::test_uses" in ln for ln in lines), result.stdout.str()[-2500:]


def test_repro_line_of_a_test_method_in_a_class_reproduces(project: pytest.Pytester) -> None:
    project.makepyfile(test_cls='''
from specmod import SPEC

class TestPay:
    def test_pay(self, simulate):
        simulate(SPEC)
''')
    result = project.runpytest("-p", "no:cacheprovider", "--sim-faults", CRASHY, "--sim-runs", "10")
    result.assert_outcomes(failed=1)
    line = _summary_lines(result)[0]
    assert "test_cls.py::TestPay::test_pay" in line
    args = shlex.split(line)[1:]
    again = project.runpytest("-p", "no:cacheprovider", *args)
    again.assert_outcomes(failed=1)
    assert f"(seed {args[args.index('--sim-seed') + 1]})" in again.stdout.str()


# --- options -----------------------------------------------------------------------------------------


def test_sim_sandbox_option_reaches_simulation_test(project: pytest.Pytester) -> None:
    """The plugin's --sim-sandbox is documented as 'flag clock/random/I-O calls in orchestration
    code' for simulation tests; `@simulation_test(SPEC)` is the README's one-line simulation
    test, so `pytest --sim-sandbox` should flag the wall-clock call there too (simulate() does)."""
    project.makepyfile(test_st='''
from duroxide_sim.testing import simulation_test
from specmod import CLOCK

@simulation_test(CLOCK, max_examples=3)
def test_clock(result):
    pass

def test_fixture(simulate):
    simulate(CLOCK, seeds=[0])
''')
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=2)
    result = project.runpytest("-p", "no:cacheprovider", "--sim-sandbox")
    assert "test_st.py::test_fixture" in result.stdout.str() and result.ret != 0
    result.assert_outcomes(failed=2)


def test_help_lists_the_options(pytester: pytest.Pytester) -> None:
    out = pytester.runpytest("--help").stdout.str()
    for opt in ("--sim-seed", "--sim-runs", "--sim-faults", "--sim-sandbox"):
        assert opt in out
    assert "seeds per simulation test (default 20)" in out
    assert "all (default) | swarm | none | fault plan JSON" in out


def test_plugin_can_be_disabled_with_p_no(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_dis='''
def test_x(request):
    assert not request.config.pluginmanager.has_plugin("duroxide_sim.testing.pytest_plugin")

def test_y(sim_world):
    pass
''')
    result = pytester.runpytest("-p", "no:cacheprovider", "-p", "no:duroxide_sim.testing.pytest_plugin")
    result.assert_outcomes(passed=1, errors=1)
    assert "fixture 'sim_world' not found" in result.stdout.str()


@pytest.mark.parametrize("args", [["--sim-seed", "1.5"], ["--sim-seed", "x"], ["--sim-runs", "-1"], ["--sim-faults", "{bad"]])
def test_bad_option_values_are_usage_errors(project: pytest.Pytester, args: list[str]) -> None:
    project.makepyfile(test_o="def test_o():\n    pass\n")
    result = project.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert args[0] in result.stderr.str()


def test_hypothesis_profile_from_the_command_line_drives_simulation_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest('from hypothesis import settings\nsettings.register_profile("tiny", max_examples=3)\n')
    pytester.makepyfile(specmod=SPEC_MODULE, test_prof='''
from duroxide_sim.testing import simulation_test
from specmod import OK
CALLS = []

@simulation_test(OK)
def test_holds(result):
    CALLS.append(result.seed)

def test_count():
    assert len(CALLS) == 3
''')
    pytester.syspathinsert()
    pytester.runpytest("-p", "no:cacheprovider", "--hypothesis-profile", "tiny").assert_outcomes(passed=2)


# --- fixtures: async code, cleanup -------------------------------------------------------------------


def _open_db_files() -> list[str]:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.endswith((".db", ".db-wal", ".db-shm", "-journal")):
            out.append(target)
    return out


@pytest.mark.realtime
def test_async_orchestrations_through_every_fixture_and_clean_teardown(pytester: pytest.Pytester) -> None:
    """async def orchestrations/activities work through sim_world, memory_runtime and
    sqlite_runtime; failing and unstarted tests leave no threads and no open SQLite files."""
    pytester.makepyfile(test_async='''
import asyncio
import pytest

def register(rt):
    @rt.register_activity("Double")
    async def double(ctx, x):
        await asyncio.sleep(0.01)
        return x * 2

    @rt.register_orchestration("O")
    async def o(ctx, x):
        y = await ctx.schedule_activity("Double", x)
        await ctx.schedule_timer(10)
        return y + 1

def test_sim(sim_world):
    register(sim_world.runtime)
    sim_world.client.start_orchestration("o", "O", 3)
    assert sim_world.client.wait_for_orchestration("o", 10**9).output == 7

@pytest.mark.parametrize("name", ["memory_runtime", "sqlite_runtime"])
@pytest.mark.parametrize("fail", [False, True])
def test_rt(request, name, fail):
    h = request.getfixturevalue(name)
    register(h.runtime)
    h.start()
    h.client.start_orchestration("o", "O", 3)
    assert h.client.wait_for_orchestration("o", 5000).output == 7
    assert not fail, "planted failure"

def test_unstarted(sqlite_runtime, memory_runtime):
    pass

class TestInClass:
    def test_sqlite(self, sqlite_runtime):
        sqlite_runtime.start()
        assert sqlite_runtime.client.get_orchestration_status("nope").status == "NotFound"
''')
    before = {t.ident for t in threading.enumerate()}
    fds_before = _open_db_files()
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=5, failed=2)
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == [], left
    assert _open_db_files() == fds_before


def test_sandboxed_failure_leaves_no_hooks_behind(project: pytest.Pytester) -> None:
    project.makepyfile(test_box='''
import sys, time, random, uuid, builtins, os
from specmod import CLOCK

ORIG = (time.time, random.random, uuid.uuid4, builtins.open, os.urandom, sys.getprofile(), sys.gettrace())

def test_a(simulate):
    simulate(CLOCK, seeds=[0, 1], sandbox=True)

def test_b():
    assert (time.time, random.random, uuid.uuid4, builtins.open, os.urandom, sys.getprofile(), sys.gettrace()) == ORIG
''')
    project.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1)
