"""Generative probe of the USER'S PROPERTY-TEST WORKFLOW, end to end, as a user meets it: a test
module written against the public testing API exactly as README ("Testing integrations",
"A failing seed is reported with its fault plan shrunk") and the plugin / strategies docstrings
document it, run by pytest (``pytester``), its failure output read as a user reads it.

What it generates (Hypothesis, derandomized): small user test modules, each over one small
realistic workflow - ``Order``, 1-3 steps drawn from an activity (``Step``: writes the world,
guarded by ``put_if_absent`` like README's ``Ship``), a durable timer and a persistent-queue
message (``dequeue_event``, the message enqueued at an arbitrary time: ``Signal(at_ms=None)``),
for 1-2 instances - and optionally ONE planted bug a user could really write:

* ``non_idempotent``  the activity appends to the world without a guard (caught by
  ``idempotency`` under ``crash_after_effect`` / lock expiry re-executions);
* ``exactly_once``    an at-least-once audit log (``fault_transparent=False``, so only the user's
  own invariant judges it) and an invariant that assumes exactly one audit entry per activity;
* ``clock_and_random``  orchestration code reading ``time.time()`` and ``random.randint``
  (``sandbox``, with ``--sim-sandbox``; both calls named);
* ``early_event``     a positional event raised at t=0 that the orchestration only subscribes to
  after a timer (dropped: ``liveness``, with no fault at all).

Each module holds a plain unrelated test, a ``simulate``-fixture test (seeds from
``--sim-runs``, faults from ``--sim-faults``), and a ``@simulation_test(SPEC, ...)`` property
(Hypothesis seeds x scripted fault plans); correct modules also run ``simulate(SPEC,
faults=...)`` under every offered form (``all``, ``swarm``, ``none``, JSON, a ``FaultPlan``).
The command line draws ``--sim-faults`` from all/swarm/none/a crash_after_effect JSON plan and
``--sim-sandbox`` on or off.

Model / checks: (1) correct workflows pass every test under every fault option (no false
positive); (2) a planted bug fails ``@simulation_test`` (and the ``simulate`` test wherever the
options make it certain), the plain test still passes, and the output names the checker (and the
invariant), the seed, the plan (Hypothesis' ``Falsifying example`` / ``Failing test case``) and a ``duroxide-sim
reproduce`` line (plus the plugin's ``reproduce with pytest`` line and summary for ``simulate``);
(3) the reported plan is minimal: the same seed with any one of its faults removed passes
(in-process, ``run_and_check``), and a fault-free bug shrinks to the empty plan; (4) the printed
``duroxide-sim reproduce`` command fails the same way (CLI ``main``), re-running the same pytest
command gives the same failure lines, and the printed pytest repro line fails identically;
(5) bad usage - wrong option values, strategies given wrong argument types, a spec whose setup
raises - is a clear error, not an internal traceback; (6) a plain test in the same module and
session passes, and a passing session gets no warning at all (failing ones are not checked: a
failing Hypothesis test's "explain" phase imports libcst, whose DeprecationWarnings are not the
plugin's).

Runtime: about 50 s (six pytest subprocesses of the generated modules, the rest in-process).

Found (both fixed; each test failed before its fix): ``simulation_test`` given a spec reference
string (what ``duroxide-sim reproduce`` takes) or the setup function failed at decoration with
``AttributeError: 'str' object has no attribute 'name'`` from inside strategies.py
(``simulate()`` names ``SimSpec`` for the same slip); ``fault_plans(kinds="crash")`` /
``simulation_test(SPEC, kinds="crash")`` treated the string as its characters and reported
``unknown fault kinds ['c', 'r', 'a', 's', 'h']``. The strategies' other arguments are now
checked at the call too (they reached Hypothesis and failed only when drawn).
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from duroxide_sim.cli import load_spec, main
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation

pytest_plugins = ["pytester"]

# (no shrinking: every example is a pytest subprocess of a few seconds)
SETTINGS = dict(derandomize=True, deadline=None, database=None, max_examples=1, phases=[Phase.explicit, Phase.generate],
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

CRASHY = '{"rates": {"crash_after_effect": 0.5}}'
FAULT_OPTIONS = ["all", "swarm", "none", CRASHY]
BUGS = [None, "non_idempotent", "exactly_once", "clock_and_random", "early_event"]
SANDBOX_BUGS = ("clock_and_random",)
#: What names each planted bug's failure.
#: What names each planted bug's failure: the checker (first) and what else must be named.
CHECKER = {"non_idempotent": ("idempotency", "activity 'Step'"),
           "exactly_once": ("invariants", "exactly_one_audit_per_step"),
           "clock_and_random": ("sandbox", "time.time()", "random.randint()"),
           "early_event": ("liveness", "waits for event 'go'")}
SUMMARY = "duroxide-sim: reproduce failing simulations"


# --- the user's module -----------------------------------------------------------------------------


def user_module(case: dict[str, Any]) -> tuple[str, str]:
    """(the spec module - the user's app-side sim file - and the test module importing it)"""
    bug, steps, n = case["bug"], case["steps"], case["n_orders"]
    if bug == "early_event":
        steps = ["timer", "event"]
    if bug in ("non_idempotent", "exactly_once") and "act" not in steps:
        steps = ["act", *steps]
    effect = ("world.append(f'log:{oid}', i)   # BUG: a re-execution logs twice" if bug == "non_idempotent" else
              "if world.put_if_absent(f'done:{oid}:{i}', True):\n            world.append(f'log:{oid}', i)")
    if bug == "exactly_once":
        effect += "\n        world.append('audit', [oid, i])   # at-least-once audit log (fine by itself)"
    body = []
    if bug == "clock_and_random":
        body.append("started = time.time()   # BUG: wall clock in orchestration code")
        body.append("jitter = random.randint(0, 0)   # BUG: module random in orchestration code")
    signals = []
    for i, s in enumerate(steps):
        if s == "act":
            body.append(f"out.append((yield ctx.schedule_activity('Step', [oid, {i}])))")
        elif s == "timer":
            body.append(f"yield ctx.schedule_timer({1000 * (i + 1)})\nout.append('t{i}')")
        elif s == "queue":
            body.append("out.append((yield ctx.dequeue_event('inbox')))")
            signals.append(f"Signal(instance=f'o{{k}}', name='inbox', data='m{i}', kind='enqueue', at_ms=None)")
        elif s == "event":  # (only the early_event bug: raised at t=0, subscribed after the timer)
            body.append("out.append((yield ctx.wait_for_event('go')))")
            signals.append("Signal(instance=f'o{k}', name='go', data='go', at_ms=0)")
    body_src = textwrap.indent("\n".join(body), " " * 8)
    sig_list = " + ".join(f"[{s} for k in range(N)]" for s in signals) or "[]"
    acts = sum(1 for s in steps if s == "act")
    extra = ""
    if bug is None:
        extra = '''
@pytest.mark.simulation
@pytest.mark.parametrize("faults", ["all", "swarm", "none", '{"rates": {"crash_after_effect": 0.3, "duplicate": 0.3}}',
                                    FaultPlan.only("crash_after_effect", "lock_expiry", "reorder", rate=0.3)])
def test_every_fault_form(simulate, faults):
    results = simulate(SPEC, seeds=range(3), faults=faults)
    assert [r.seed for r in results] == [0, 1, 2]
'''
    spec_src = f'''
import collections
import os
import random
import time

from duroxide_sim.sim.harness import Signal, SimSpec, Start

N = {n}


def setup(rt, world):
    @rt.register_activity("Step")
    def step(ctx, arg):
        oid, i = arg
        {effect}
        return f"{{oid}}-{{i}}"

    @rt.register_orchestration("Order")
    def order(ctx, oid):
        out = []
{body_src}
        return out


def exactly_one_audit_per_step(result):
    counts = collections.Counter(tuple(x) for x in result.world.get("audit", []))
    wrong = {{k: c for k, c in counts.items() if c != 1}}
    if len(counts) != N * {acts} or wrong:
        return f"audit entries per step: {{dict(counts)}}"
    return None


SPEC = SimSpec(name="gen", setup=setup,
               starts=[Start(instance=f"o{{k}}", orchestration="Order", input=f"o{{k}}") for k in range(N)],
               signals={sig_list},
               invariants=[exactly_one_audit_per_step] if {bug == "exactly_once"} else [],
               fault_transparent={bug != "exactly_once"},
               ref=os.path.abspath(__file__) + ":SPEC")
'''
    test_src = f'''
import pytest
from hypothesis import settings

from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.testing import simulation_test
from {case["spec_module"]} import N, SPEC


def test_plain_unrelated():
    assert sorted({{3: 1, 1: 2}}) == [1, 3]


@pytest.mark.simulation
def test_fixture(simulate):
    results = simulate(SPEC)
    assert all(r.statuses[f"o{{k}}"].status == "Completed" for r in results for k in range(N))


@simulation_test(SPEC, hypothesis_settings=settings(derandomize=True, database=None), max_examples={case["examples"]}, max_opportunity=4)
def test_property(result):
    assert result.statuses["o0"].status == "Completed" or result.budget_exhausted
{extra}'''
    return spec_src, test_src


# --- reading a run ---------------------------------------------------------------------------------


def _out(result: pytest.RunResult) -> str:
    return result.stdout.str() + "\n" + result.stderr.str()


def _section(out: str, test: str) -> str:
    """The FAILURES block of one test."""
    m = re.search(rf"_{{3,}} {re.escape(test)}(\[[^\]]*\])? _{{3,}}\n(.*?)(?=\n_{{3,}} \w|\n={{5,}} )", out, re.S)
    assert m, f"no failure section for {test}:\n{out[-4000:]}"
    return m.group(2)


def _reproduce_cmd(text: str) -> str:
    cmds = re.findall(r"reproduce: (duroxide-sim reproduce .*)$", text, re.M)
    assert cmds, f"no 'reproduce: duroxide-sim reproduce ...' line in:\n{text[-3000:]}"
    return cmds[-1]


def _plan_of(cmd: str) -> tuple[str, int, FaultPlan, bool]:
    argv = shlex.split(cmd)
    ref = argv[2]
    seed = int(argv[argv.index("--seed") + 1])
    plan = FaultPlan.from_json(argv[argv.index("--faults") + 1])
    return ref, seed, plan, "--sandbox" in argv


def _cli(cmd: str) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(shlex.split(cmd)[1:])
    return code, out.getvalue() + err.getvalue()


def _e_lines(out: str) -> list[str]:
    """The assertion lines pytest printed (without addresses and timings)."""
    return [re.sub(r"0x[0-9a-f]+", "0x", ln) for ln in out.splitlines() if ln.startswith("E ")]


def _check_minimal(ref: str, seed: int, plan: FaultPlan, sandbox: bool, checker: str) -> None:
    """README: shrunk to the fewest faults - the same seed without any one of them passes."""
    spec = load_spec(ref)
    full = run_and_check(Simulation(spec, seed, plan, sandbox=sandbox))
    assert any(f.checker == checker for f in full.failures), (plan, full.failures)
    for entry in plan.script:
        fewer = FaultPlan.scripted([e for e in plan.script if e != entry], plan.until_ms)
        again = run_and_check(Simulation(spec, seed, fewer, sandbox=sandbox))
        assert not again.failures, (f"plan {plan.describe()} is not minimal: without {entry} seed {seed} still fails:\n"
                                    + again.failures[0].render())


# --- (1)-(4), (6): generated user modules -----------------------------------------------------------

cases = st.fixed_dictionaries({
    "n_orders": st.integers(1, 2),
    "steps": st.lists(st.sampled_from(["act", "timer", "queue"]), min_size=1, max_size=3),
    "faults": st.sampled_from(FAULT_OPTIONS),
    "sandbox": st.booleans(),
    "runs": st.integers(2, 6),
    # (a default @simulation_test over a 1-3 step workflow: max_opportunity=4 and 40+ examples,
    # else the derandomized search can miss a one-fault bug - search power, not a finding)
    "examples": st.sampled_from([40, 60]),
})

_counter = iter(range(10**6))


@pytest.mark.parametrize("bug", BUGS)
@settings(**SETTINGS)
@given(case=cases)
def test_generated_user_module(pytester: pytest.Pytester, bug: str | None, case: dict[str, Any]) -> None:
    case = {**case, "bug": bug}
    if bug in SANDBOX_BUGS:
        case["sandbox"] = True  # (a user hunting clock/random reads turns the sandbox on)
    k = next(_counter)
    name = f"test_gen_{bug or 'ok'}_{k}"
    case["spec_module"] = f"sim_{bug or 'ok'}_{k}"
    spec_src, test_src = user_module(case)
    pytester.makepyfile(**{case["spec_module"]: spec_src})
    path = pytester.makepyfile(**{name: test_src})
    args = ["-p", "no:cacheprovider", "-W", "default", "--sim-runs", str(case["runs"]), "--sim-faults", case["faults"]]
    if case["sandbox"]:
        args.append("--sim-sandbox")
    # a subprocess: the module's @simulation_test must not run nested in this @given
    result = pytester.runpytest_subprocess(*args, str(path))
    out = _out(result)
    outcomes = result.parseoutcomes()
    assert "Traceback (most recent call last)" not in out, out[-4000:]
    assert "INTERNALERROR" not in out, out[-4000:]
    # (6) the plain test passes beside them
    assert re.search(rf"FAILED {name}\.py::test_plain_unrelated", out) is None
    if bug is None:  # (1) no false positives, (6) and no warning added to the session
        # (only here: a failing Hypothesis test's "explain" phase imports libcst, whose own
        # DeprecationWarnings are Hypothesis', not the plugin's)
        assert "warnings" not in outcomes and "warning" not in outcomes, out[-4000:]
        assert result.ret == 0 and outcomes.get("failed", 0) == 0, out[-5000:]
        assert outcomes["passed"] == 3 + 5, out[-3000:]
        assert SUMMARY not in out
        return
    assert result.ret == 1, out[-4000:]
    checker, detail, *more = CHECKER[bug]
    # (2) the property test fails, naming checker, seed, plan and a reproduce command
    prop = _section(out, "test_property")
    assert re.search(rf"^E +AssertionError: {checker}\b.*\(seed \d+\).*{re.escape(detail)}", prop, re.M), prop[-3000:]
    assert all(d in prop for d in more), prop[-3000:]  # (every flagged call is named)
    # (Hypothesis' heading: "Falsifying example" before 6.16x, "Failing test case" since)
    assert re.search(r"(Falsifying example|Failing test case): test_property\(", prop) and re.search(
        r"^E +plan=FaultPlan\(", prop, re.M), prop[-3000:]
    cmd = _reproduce_cmd(prop)
    ref, seed, plan, sandbox = _plan_of(cmd)
    assert sandbox == case["sandbox"]
    assert re.search(rf"\(seed {seed}\)", prop), prop[-3000:]
    # (3) minimal: a fault-free bug shrinks to no fault; otherwise no fault can go
    if bug in ("early_event", *SANDBOX_BUGS):
        assert plan.script == () and not plan.rates, plan
    else:
        assert plan.script, plan
    _check_minimal(ref, seed, plan, sandbox, checker)
    # (4) the printed duroxide-sim command fails the same way
    code, cli_out = _cli(cmd)
    assert code == 1 and checker in cli_out and detail in cli_out, cli_out[-3000:]
    # the simulate-fixture test: certain to fail when the bug needs no fault, or under the crashy plan
    certain = bug == "early_event" or (bug in SANDBOX_BUGS) or (bug in ("non_idempotent", "exactly_once")
                                                                 and case["faults"] == CRASHY)
    immune = bug in ("non_idempotent", "exactly_once") and case["faults"] == "none"
    fixture_failed = re.search(rf"FAILED {name}\.py::test_fixture\b", out) is not None
    if certain:
        assert fixture_failed, out[-4000:]
    if immune:
        assert not fixture_failed, out[-4000:]
    if fixture_failed:
        fx = _section(out, "test_fixture")
        assert checker in fx and detail in fx and "reproduce with pytest: pytest " in fx, fx[-3000:]
        assert SUMMARY in out
        assert re.search(rf"^pytest {name}\.py::test_fixture --sim-seed \d+", out, re.M), out[-3000:]
        _reproduce_cmd(fx)


# --- (4) determinism and the printed pytest repro line ----------------------------------------------


def test_rerun_and_pytest_repro_line_fail_identically(pytester: pytest.Pytester) -> None:
    case = {"bug": "non_idempotent", "steps": ["act", "timer"], "n_orders": 1, "examples": 40,
            "spec_module": "usersim"}
    spec_src, test_src = user_module(case)
    pytester.makepyfile(usersim=spec_src, test_user=test_src)
    args = ["-p", "no:cacheprovider", "--sim-runs", "6", "--sim-faults", "swarm", "test_user.py"]
    # (in-process: this test is not itself a Hypothesis test, so the module's may run here)
    first = pytester.runpytest_inprocess(*args)
    second = pytester.runpytest_inprocess(*args)
    assert first.ret == second.ret == 1
    e1, e2 = _e_lines(_out(first)), _e_lines(_out(second))
    assert e1 and e1 == e2
    out = _out(first)
    repro = [ln for ln in out.splitlines()[out.splitlines().index(next(
        ln for ln in out.splitlines() if SUMMARY in ln)):] if ln.startswith("pytest ")]
    assert len(repro) == 1 and "--sim-faults" in repro[0], repro
    argv = shlex.split(repro[0])[1:]
    again = pytester.runpytest_inprocess("-p", "no:cacheprovider", *argv)
    again.assert_outcomes(failed=1)
    fx1 = [ln for ln in _e_lines(_section(out, "test_fixture")) if "idempotency" in ln]
    fx2 = [ln for ln in _e_lines(_section(_out(again), "test_fixture")) if "idempotency" in ln]
    assert fx1 and fx1 == fx2
    assert repro[0] in _out(again)  # the same repro line is printed again


# --- (5) bad usage --------------------------------------------------------------------------------


@pytest.mark.parametrize("args, must_say", [
    (["--sim-runs", "many"], "--sim-runs: expected a positive integer"),
    (["--sim-seed", "seven"], "--sim-seed"),
    (["--sim-faults", "sometimes"], "--sim-faults: expected 'all', 'swarm', 'none' or a fault plan"),
    (["--sim-faults", '{"rates": {"crash": 2}}'], "must be a number within [0, 1]"),
    (["--sim-faults", '{"script": [[0, "crash"]]}'], "start at 1"),
    (["--sim-faults", '{"rate": {"crash": 0.1}}'], "unknown key"),
])
def test_bad_option_values_are_usage_errors(pytester: pytest.Pytester, args: list[str], must_say: str) -> None:
    pytester.makepyfile(test_plain="def test_x():\n    assert True\n")
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, _out(result)[-2000:]
    out = _out(result)
    assert must_say in out, out[-2000:]
    assert "Traceback" not in out and "INTERNALERROR" not in out


BAD_USAGE = '''
import pytest
from hypothesis import settings
from duroxide_sim.sim.harness import SimSpec, Start
from duroxide_sim.testing import simulation_test
from duroxide_sim.testing.strategies import fault_plans, seeds

def bad_setup(rt, world):
    rt.register_orchestration("Hello", lambda ctx, x: x)
    raise RuntimeError("database URL missing from the test config")

BROKEN = SimSpec(name="broken", setup=bad_setup, starts=[Start(instance="a", orchestration="Hello", input=1)])

def test_fixture_setup_raises(simulate):
    simulate(BROKEN, seeds=[0])

def test_fault_plans_bad_kind():
    with pytest.raises(ValueError, match="unknown fault kinds .'meteor'.; known:"):
        fault_plans(kinds=["meteor"])
'''


def test_setup_that_raises_and_bad_strategy_arguments_are_clear(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_bad=BAD_USAGE)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    out = _out(result)
    result.assert_outcomes(failed=1, passed=1)
    sec = _section(out, "test_fixture_setup_raises")
    # the user's own error, its message and its line (in the user's setup) are what is shown
    assert re.search(r"^E +RuntimeError: database URL missing from the test config", sec, re.M), sec[-3000:]
    assert "test_bad.py:9: RuntimeError" in sec, sec[-3000:]
    assert "INTERNALERROR" not in out


# --- found bugs ----------------------------------------------------------------------------------


def test_simulation_test_with_a_spec_reference_is_refused_naming_simspec(pytester: pytest.Pytester) -> None:
    """README: ``@simulation_test(SPEC)`` is a one-line property test over a ``SimSpec``. Passing
    a spec reference string (what ``duroxide-sim reproduce`` takes) or the setup function is
    refused at decoration with an error naming ``SimSpec``, as the plugin's ``simulate()`` does.
    (Found by this probe: it failed at collection with ``AttributeError: 'str' object has no
    attribute 'name'`` raised inside duroxide_sim/testing/strategies.py.)"""
    pytester.makepyfile(test_ref='''
from duroxide_sim.testing import simulation_test

@simulation_test("specmod.py:SPEC")
def test_p(result):
    pass
''')
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    out = _out(result)
    assert result.ret != 0
    assert "has no attribute 'name'" not in out, out[-2500:]
    assert re.search(r"^E .*@simulation_test needs a SimSpec, got str \(a 'file.py:NAME' reference", out, re.M), out[-2500:]


def test_fault_kinds_given_as_one_string_are_refused_by_name() -> None:
    """``fault_plans(kinds)`` and ``simulation_test(SPEC, kinds=...)`` take a list of fault kind
    names. One kind as a plain string - ``kinds="crash"``, the natural slip for "only crashes" -
    is refused with the fix in the message. (Found by this probe: it was iterated character by
    character and reported as ``unknown fault kinds ['c', 'r', 'a', 's', 'h']``.) A list, a
    tuple or a generator of names is taken as given."""
    from duroxide_sim.sim.harness import SimSpec
    from duroxide_sim.testing.strategies import fault_plans, simulation_test

    for call in (lambda: fault_plans(kinds="crash"),
                 lambda: simulation_test(SimSpec(name="s", setup=lambda rt, world: None), kinds="crash")):
        with pytest.raises(TypeError, match=r"kinds must be a list of fault kind names such as \['crash'\], got 'crash'"):
            call()
    for kinds in (["crash"], ("crash", "duplicate"), (k for k in ["crash"])):
        assert fault_plans(kinds=kinds) is not None


def test_strategy_arguments_of_the_wrong_type_are_refused_at_the_call() -> None:
    """``fault_plans(max_faults="3")``, ``fault_plans(max_opportunity=0)`` and ``seeds(-1)`` are
    refused by the library where they are called, naming the argument (pinned at first: they
    reached Hypothesis and failed with its ``InvalidArgument`` only when a value was drawn)."""
    from duroxide_sim.testing.strategies import fault_plans, seeds

    with pytest.raises(ValueError, match="max_faults must be an integer >= 0, got '3'"):
        fault_plans(max_faults="3")
    with pytest.raises(ValueError, match="max_opportunity must be an integer >= 1, got 0"):
        fault_plans(max_opportunity=0)
    with pytest.raises(ValueError, match="max_value must be an integer >= 0, got -1"):
        seeds(-1)
