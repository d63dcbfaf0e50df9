"""The pytest plugin as users meet it: option validation, the fixtures, repro lines, cleanup.

Every test asserts what a demanding pytest user would expect. Found by a probe in session 6 and
fixed: a bad ``--sim-faults`` was an error per test instead of a usage error at start-up; a
plan with a misspelt key or negative limits was accepted (injecting nothing); the repro line
was not relative to the directory pytest ran in; ``simulate(faults="none"/"all")`` was refused.
"""

import re
import shlex
import threading

import pytest

pytest_plugins = ["pytester"]

SPEC_MODULE = '''
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
'''

TESTS = '''
import pytest
from specmod import SPEC, OK

def test_pay(simulate):
    simulate(SPEC)

def test_plain():
    pass
'''

CRASHY = '{"rates": {"crash_after_effect": 0.5}}'


def _repro_lines(result: pytest.RunResult) -> list[str]:
    """The lines of the plugin's terminal summary section."""
    lines = result.stdout.lines
    start = next(i for i, ln in enumerate(lines) if "duroxide-sim: reproduce failing simulations" in ln)
    return [ln for ln in lines[start + 1:] if ln.startswith("pytest ")]


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(specmod=SPEC_MODULE, test_pay=TESTS)
    pytester.syspathinsert()
    return pytester


# --- option validation -----------------------------------------------------------------------------


@pytest.mark.parametrize("faults", ["{bad json", "[1, 2]", '{"rates": {"meteor": 1}}', "ALL"])
def test_invalid_sim_faults_is_a_usage_error_like_sim_runs(project: pytest.Pytester, faults: str) -> None:
    """--sim-runs 0 stops the session with a usage error (exit 4); --sim-faults should too,
    once, instead of failing every simulation test with a traceback (and passing the rest)."""
    result = project.runpytest("-p", "no:cacheprovider", "--sim-faults", faults)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:]
    assert "--sim-faults" in result.stderr.str()


@pytest.mark.parametrize(
    "faults",
    [
        '{"rate": {"crash_after_effect": 0.5}}',  # misspelled key: silently no faults at all
        '{"rates": {"crash_after_effect": 0.5}, "until_ms": -1}',  # fault window before time 0
        '{"rates": {"crash_after_effect": 0.5}, "max_faults": -3}',
    ],
)
def test_sim_faults_plan_that_cannot_inject_anything_is_rejected(project: pytest.Pytester, faults: str) -> None:
    """A plan JSON with a misspelled key or a negative window/budget must not quietly become
    'no faults' (the non-idempotent Pay then passes every seed)."""
    control = project.runpytest("-p", "no:cacheprovider", "--sim-faults", CRASHY, "--sim-runs", "5", "test_pay.py::test_pay")
    control.assert_outcomes(failed=1)
    result = project.runpytest("-p", "no:cacheprovider", "--sim-faults", faults, "--sim-runs", "5", "test_pay.py::test_pay")
    assert result.ret != pytest.ExitCode.OK, f"--sim-faults {faults} was accepted and the buggy spec passed"
    assert "--sim-faults" in result.stdout.str() + result.stderr.str()


def test_sim_runs_sim_seed_and_faults_none_are_honoured(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(specmod=SPEC_MODULE, test_opts='''
from specmod import OK

def test_runs(simulate, request):
    results = simulate(OK)
    seed = request.config.getoption("--sim-seed")
    want = [seed] if seed is not None else list(range(request.config.getoption("--sim-runs")))
    assert [r.seed for r in results] == want
    if request.config.getoption("--sim-faults") == "none":
        assert all(not r.plan.enabled() for r in results)
''')
    pytester.syspathinsert()
    pytester.runpytest("-p", "no:cacheprovider", "--sim-runs", "3").assert_outcomes(passed=1)
    pytester.runpytest("-p", "no:cacheprovider", "--sim-seed", "-7").assert_outcomes(passed=1)
    pytester.runpytest("-p", "no:cacheprovider", "--sim-faults", "none").assert_outcomes(passed=1)
    bad = pytester.runpytest("-p", "no:cacheprovider", "--sim-seed", "x")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR


# --- the simulate fixture --------------------------------------------------------------------------


def test_simulate_accepts_the_option_vocabulary_for_faults(pytester: pytest.Pytester) -> None:
    """--sim-faults takes all | swarm | none | JSON; simulate(spec, faults=...) should take the
    same words (faults='none' is the natural way to ask for a fault-free run)."""
    pytester.makepyfile(specmod=SPEC_MODULE, test_words='''
import pytest
from specmod import OK

@pytest.mark.parametrize("word", ["none", "all", "swarm"])
def test_word(simulate, word):
    results = simulate(OK, seeds=[0, 1], faults=word)
    if word == "none":
        assert all(not r.plan.enabled() for r in results)
''')
    pytester.syspathinsert()
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


def test_swarm_repro_line_reproduces_the_failure(project: pytest.Pytester) -> None:
    result = project.runpytest("-p", "no:cacheprovider", "--sim-faults", "swarm", "--sim-runs", "40", "test_pay.py::test_pay")
    result.assert_outcomes(failed=1)
    line = _repro_lines(result)[0]
    args = shlex.split(line)[1:]
    again = project.runpytest("-p", "no:cacheprovider", *args)
    again.assert_outcomes(failed=1)
    seed = args[args.index("--sim-seed") + 1]
    assert f"(seed {seed})" in again.stdout.str()


def test_parametrized_test_repro_line_reproduces(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(specmod=SPEC_MODULE, test_par='''
import pytest
from specmod import SPEC

@pytest.mark.parametrize("label", ["a b", "c'd"])
def test_pay(simulate, label):
    simulate(SPEC)
''')
    pytester.syspathinsert()
    result = pytester.runpytest("-p", "no:cacheprovider", "--sim-faults", CRASHY, "--sim-runs", "10")
    result.assert_outcomes(failed=2)
    lines = _repro_lines(result)
    assert len(lines) == 2
    again = pytester.runpytest("-p", "no:cacheprovider", *shlex.split(lines[1])[1:])
    again.assert_outcomes(failed=1)


def test_repro_line_works_from_a_subdirectory(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Running pytest from a sub-directory of the rootdir: the printed command, pasted into the
    same shell, must find the test (pytest itself prints cwd-relative node ids)."""
    pytester.makeini("[pytest]\n")
    sub = pytester.mkpydir("sub")
    (sub / "specmod.py").write_text(SPEC_MODULE)
    (sub / "test_sub.py").write_text(
        "import os, sys\nsys.path.insert(0, os.path.dirname(__file__))\nfrom specmod import SPEC\n\n"
        "def test_pay(simulate):\n    simulate(SPEC)\n"
    )
    monkeypatch.chdir(sub)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "test_sub.py", "--sim-faults", CRASHY, "--sim-runs", "10")
    result.assert_outcomes(failed=1)
    line = _repro_lines(result)[0]
    again = pytester.runpytest_subprocess("-p", "no:cacheprovider", *shlex.split(line)[1:])
    assert "not found" not in again.stdout.str() + again.stderr.str(), line
    again.assert_outcomes(failed=1)


def test_sim_sandbox_flags_clock_calls_and_repro_keeps_the_flag(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_box='''
import time
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world):
    @rt.register_orchestration("Clock")
    def clock(ctx, _):
        return int(time.time() > 0)   # BUG: wall clock in orchestration code

SPEC = SimSpec(name="clock", setup=setup, starts=[Start(instance="c", orchestration="Clock")])

def test_clock(simulate):
    simulate(SPEC, seeds=[0])
''')
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=1)
    result = pytester.runpytest("-p", "no:cacheprovider", "--sim-sandbox")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "sandbox" in out and "time.time" in out
    assert re.search(r"^pytest test_box\.py::test_clock --sim-seed 0 .*--sim-sandbox$", out, re.M), out


def test_spec_whose_setup_raises_names_the_cause(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad='''
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world):
    raise RuntimeError("config missing: PAYMENTS_URL")

SPEC = SimSpec(name="bad", setup=setup, starts=[Start(instance="a", orchestration="Hello")])

def test_bad(simulate):
    simulate(SPEC, seeds=[0])
''')
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "RuntimeError: config missing: PAYMENTS_URL" in out
    assert re.search(r"^test_bad\.py:\d+: RuntimeError$", out, re.M), out  # the user's raising line


# --- fixture cleanup -------------------------------------------------------------------------------


@pytest.mark.realtime
def test_runtime_fixtures_stop_their_threads_when_the_test_fails(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_rt='''
import pytest

@pytest.mark.parametrize("name", ["memory_runtime", "sqlite_runtime"])
def test_fails(request, name):
    h = request.getfixturevalue(name)
    h.runtime.register_activity("Greet", lambda ctx, n: f"Hello, {n}!")

    @h.runtime.register_orchestration("Hello")
    def hello(ctx, n):
        return (yield ctx.schedule_activity("Greet", n))

    h.start()
    h.client.start_orchestration("h", "Hello", "W")
    assert h.client.wait_for_orchestration("h", 5_000).output == "Hello, W!"
    assert False, "planted failure"

def test_sim_world_fails(sim_world):
    @sim_world.runtime.register_orchestration("T")
    def t(ctx, _):
        yield ctx.schedule_timer(1_000)
        return 1
    sim_world.client.start_orchestration("t", "T")
    assert False, "planted failure"
''')
    before = {t.ident for t in threading.enumerate()}
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(failed=3)
    left = [t.name for t in threading.enumerate() if t.ident not in before and t.is_alive()]
    assert left == [], left
