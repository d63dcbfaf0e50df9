"""The ``simulate`` fixture shrinks a failing seed's fault plan before reporting it.

A seed that fails under the default plan (every fault kind at 5 %) has usually injected many
faults; the user should read the one or two that cause the failure, and get a repro line that
replays exactly those. Checked through pytester on a planted non-idempotent activity (one
redelivery pays twice):

* the report says it was shrunk and from how many faults, the repro line carries the shrunk plan
  (``--sim-plan``) with fewer faults, and running that line fails the same way, without shrinking
  again; the same seed with the plan's faults removed passes;
* ``--sim-plan`` overrides a test's own ``faults=`` (else a shrunk repro could not replay it);
* ``--sim-shrink-runs 0`` reports the failure as found (the whole plan);
* the corrected activity passes; bad ``--sim-plan`` / ``--sim-shrink-runs`` are usage errors.
"""

from __future__ import annotations

import json
import re
import shlex

import pytest

pytest_plugins = ["pytester"]

SPEC_MODULE = '''
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world, fixed=False):
    @rt.register_activity("Charge")
    def charge(ctx, oid):
        if fixed:
            world.put_if_absent(f"charged:{oid}", 1)
        else:
            world.incr(f"charged:{oid}")   # BUG: a second delivery charges again
        return "charged"

    @rt.register_orchestration("Order")
    def order(ctx, oid):
        yield ctx.schedule_timer(10)
        return (yield ctx.schedule_activity("Charge", oid))

STARTS = [Start(instance=f"o{i}", orchestration="Order", input=i) for i in range(4)]
SPEC = SimSpec(name="charge", setup=setup, starts=STARTS)
FIXED = SimSpec(name="charge-fixed", setup=lambda rt, world: setup(rt, world, fixed=True), starts=STARTS)
'''

TESTS = '''
from duroxide_sim.sim.faults import FaultPlan
from specmod import SPEC, FIXED

def test_orders(simulate):
    simulate(SPEC)

def test_orders_own_plan(simulate):
    simulate(SPEC, faults=FaultPlan.all(0.05))

def test_fixed(simulate):
    simulate(FIXED)
'''

#: The repro line as the plugin's terminal summary prints it (its own line, after the section title).
REPRO = re.compile(r"duroxide-sim: reproduce failing simulations =+\n(pytest .*)$", re.M)


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    pytester.makepyfile(specmod=SPEC_MODULE, test_orders=TESTS)
    pytester.syspathinsert()
    return pytester


def _failing(project: pytest.Pytester, test: str, *args: str) -> tuple[str, str]:
    result = project.runpytest("-p", "no:cacheprovider", f"test_orders.py::{test}", *args)
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    found = REPRO.search(out)
    assert found, out[-4000:]
    return out, found.group(1)


@pytest.mark.parametrize("test", ["test_orders", "test_orders_own_plan"])
def test_a_failing_seed_is_reported_with_its_shrunk_plan(project: pytest.Pytester, test: str) -> None:
    out, repro = _failing(project, test)
    assert "idempotency" in out and "Charge" in out, out[-4000:]
    shrunk = re.search(r"\(shrunk: seed (\d+)'s plan \(.*?\) injected (\d+) faults?;", out)
    assert shrunk, out[-4000:]
    seed, injected = shrunk.group(1), int(shrunk.group(2))
    args = shlex.split(repro)
    assert args[1] == f"test_orders.py::{test}" and args[2:4] == ["--sim-seed", seed], repro
    assert args[4] == "--sim-plan", repro
    plan = json.loads(args[5])
    assert 1 <= len(plan["script"]) < injected and plan["rates"] == {}, (plan, injected)
    assert "(the seed with its whole plan: pytest" in out

    again = project.runpytest("-p", "no:cacheprovider", *args[1:])
    again.assert_outcomes(failed=1)
    rerun = again.stdout.str()
    assert "idempotency" in rerun and "Charge" in rerun, rerun[-4000:]
    assert "shrunk:" not in rerun  # a replayed plan is reported as it is
    assert REPRO.search(rerun).group(1) == repro  # and its repro line is the same line

    # the shrunk plan's faults are the cause: the same seed without them passes
    project.runpytest("-p", "no:cacheprovider", args[1], "--sim-seed", seed, "--sim-plan", "none").assert_outcomes(passed=1)


def test_shrinking_can_be_turned_off(project: pytest.Pytester) -> None:
    out, repro = _failing(project, "test_orders", "--sim-shrink-runs", "0")
    assert "shrunk:" not in out
    assert "--sim-plan" not in repro and "--sim-seed" in repro, repro


def test_the_corrected_activity_passes(project: pytest.Pytester) -> None:
    project.runpytest("-p", "no:cacheprovider", "test_orders.py::test_fixed").assert_outcomes(passed=1)


@pytest.mark.parametrize(("args", "message"), [
    (["--sim-plan", '{"rates": {"meteor": 1}}'], "--sim-plan: "),
    (["--sim-plan", "sometimes"], "--sim-plan: expected"),
    (["--sim-shrink-runs", "-1"], "--sim-shrink-runs: expected 0 or a positive integer"),
    (["--sim-shrink-runs", "many"], "--sim-shrink-runs: expected 0 or a positive integer"),
])
def test_bad_shrink_options_are_usage_errors(project: pytest.Pytester, args: list[str], message: str) -> None:
    result = project.runpytest("-p", "no:cacheprovider", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stdout.str() + result.stderr.str()
