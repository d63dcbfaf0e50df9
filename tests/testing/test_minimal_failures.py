"""Quality of the minimal failures the harness reports, on planted bugs that need specific faults.

Each planted bug needs a known number of faults to show: a non-idempotent activity (one
re-execution), a race of two activities (one reordered completion), an activity racing a
timeout (one lock expiry), a rate-limited carrier (two re-deliveries together), an off-by-one
(no fault at all) and an engine without duplicate filtering (one duplicate delivery). For each
we check what a user relies on:

1. the reported plan is minimal: removing any one of its faults makes the failure go away, and
   it has the fewest faults that can cause the bug; its faults really are the cause (the same
   seed without faults behaves like the fault-free reference);
2. the printed ``duroxide-sim reproduce ...`` command, run in a subprocess, gives exactly the
   same failures (checker, instance, step, message);
3. ``@simulation_test`` shrinks to that plan, and Hypothesis' example database replays it on
   the next run;
4. a corrected workflow passes under the same settings;
5. misuse (bad plan JSON, unknown fault kinds, a spec without ref, a setup that raises) gets a
   clear error.

Written as a probe; the defects it found were fixed with it: a harmless (dropped) duplicate was
blamed for an outcome the seed's schedule gives without faults (the checkers now ask that run);
``run``/``explore`` reported the whole random plan (they now shrink it); plan JSON with
``1.5`` opportunities, string rates or malformed scripts was truncated or refused unclearly.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.database import DirectoryBasedExampleDatabase

import duroxide_sim
from duroxide_sim.cli import load_spec, main
from duroxide_sim.core import replay
from duroxide_sim.sim.checkers import fault_free_twin, run_and_check
from duroxide_sim.sim.faults import FAULT_KINDS, FaultPlan
from duroxide_sim.sim.harness import SimSpec, Simulation, Start
from duroxide_sim.testing.strategies import fault_plans, simulation_test

pytest_plugins = ["pytester"]

ROOT = pathlib.Path(duroxide_sim.__file__).resolve().parent.parent
QUIET = dict(deadline=None, suppress_health_check=list(HealthCheck))
#: Hypothesis seed of the searches without a database (derandomize would derive one from the
#: test's digest, which holds the spec's ref - a tmp path that changes with every session).
HSEED = int(os.environ.get("MINIMAL_FAILURES_HSEED", "0"))

# --- planted bugs (and their corrected twins), written to a file so repro lines can import them --

BUGS = '''
import os
from duroxide_sim.sim.harness import SimSpec, Start

HERE = os.path.abspath(__file__)


def _spec(name, setup, starts, **kw):
    return SimSpec(name=name.lower(), setup=setup, starts=starts, ref=f"{HERE}:{name}", **kw)


# PAY: Pay appends without checking - one re-execution pays twice.
def pay_setup(rt, world, *, fixed=False):
    @rt.register_activity("Reserve")
    def reserve(ctx, oid):
        world.put_if_absent(f"reserved:{oid}", True)
        return "ok"

    @rt.register_activity("Pay")
    def pay(ctx, oid):
        if not fixed or world.put_if_absent(f"paid:{oid}", True):
            world.append("payments", oid)
        return "paid"

    @rt.register_orchestration("Order")
    def order(ctx, oid):
        yield ctx.schedule_activity("Reserve", oid)
        return (yield ctx.schedule_activity("Pay", oid))


ORDERS = [Start(instance=f"o{i}", orchestration="Order", input=i) for i in range(2)]
PAY = _spec("PAY", pay_setup, ORDERS)
PAY_OK = _spec("PAY_OK", lambda rt, world: pay_setup(rt, world, fixed=True), ORDERS)


# RACE: the first of two activities to complete wins - assumes Fast always lands first.
def race_setup(rt, world, *, fixed=False):
    @rt.register_activity("Fast")
    def fast(ctx, x):
        return "fast"

    @rt.register_activity("Slow")
    def slow(ctx, x):
        return "slow"

    @rt.register_orchestration("Race")
    def race(ctx, _):
        if fixed:
            return (yield ctx.all([ctx.schedule_activity("Fast", 1), ctx.schedule_activity("Slow", 2)]))
        winner = yield ctx.select2(ctx.schedule_activity("Fast", 1), ctx.schedule_activity("Slow", 2))
        return winner.index()


RACE = _spec("RACE", race_setup, [Start(instance="r", orchestration="Race")])
RACE_OK = _spec("RACE_OK", lambda rt, world: race_setup(rt, world, fixed=True), [Start(instance="r", orchestration="Race")])


# DEADLINE: an activity raced against a 10 s timer - a lost lock (30 s) makes it "time out".
def deadline_setup(rt, world, *, fixed=False):
    @rt.register_activity("Work")
    def work(ctx, x):
        return "done"

    @rt.register_orchestration("Deadline")
    def deadline(ctx, _):
        if fixed:
            return (yield ctx.schedule_activity("Work", 1))
        winner = yield ctx.select2(ctx.schedule_activity("Work", 1), ctx.schedule_timer(10_000))
        return "done" if winner.index() == 0 else "timed out"


DEADLINE = _spec("DEADLINE", deadline_setup, [Start(instance="d", orchestration="Deadline")])
DEADLINE_OK = _spec("DEADLINE_OK", lambda rt, world: deadline_setup(rt, world, fixed=True),
                    [Start(instance="d", orchestration="Deadline")])


# THIRD: the carrier refuses a third call for a parcel; one re-delivery is harmless, two are not.
def third_setup(rt, world, *, fixed=False):
    @rt.register_activity("Ship")
    def ship(ctx, oid):
        if ctx.attempt >= 3 and not fixed:
            raise RuntimeError("carrier: too many requests for this parcel")
        world.put_if_absent(f"shipped:{oid}", True)
        return "shipped"

    @rt.register_orchestration("Ship")
    def shipping(ctx, oid):
        try:
            return (yield ctx.schedule_activity("Ship", oid))
        except Exception:
            return "gave up"


THIRD = _spec("THIRD", third_setup, [Start(instance="s", orchestration="Ship", input=1)])
THIRD_OK = _spec("THIRD_OK", lambda rt, world: third_setup(rt, world, fixed=True),
                 [Start(instance="s", orchestration="Ship", input=1)])


# SUM: an off-by-one that shows on every run, faults or not.
def sum_setup(rt, world, *, fixed=False):
    @rt.register_activity("Add")
    def add(ctx, x):
        world.put_if_absent(f"item:{x}", x)
        return x

    @rt.register_orchestration("Sum")
    def total(ctx, n):
        acc = 0
        for i in range(n):
            acc += yield ctx.schedule_activity("Add", i)
        return acc if fixed else acc + 1


def total_is_three(result):
    got = result.statuses["sum"].output
    if got != 3:
        return f"sum returned {got!r}, expected 3"


SUM = _spec("SUM", sum_setup, [Start(instance="sum", orchestration="Sum", input=3)], invariants=[total_is_three])
SUM_OK = _spec("SUM_OK", lambda rt, world: sum_setup(rt, world, fixed=True),
               [Start(instance="sum", orchestration="Sum", input=3)], invariants=[total_is_three])
'''

# An engine without duplicate filtering (planted when the module is imported, so that the
# subprocess a repro line starts has the same bug).
DUP_ENGINE_BUG = '''
import os
from duroxide_sim.core import replay
from duroxide_sim.sim.harness import SimSpec, Start

replay._already_completed = lambda source_id, completed: False   # planted: no de-duplication


def setup(rt, world):
    @rt.register_activity("Step")
    def step(ctx, i):
        return i

    @rt.register_orchestration("Chain")
    def chain(ctx, n):
        acc = 0
        for i in range(n):
            acc += yield ctx.schedule_activity("Step", i)
        return acc


SPEC = SimSpec(name="dup-engine", setup=setup, starts=[Start(instance="c", orchestration="Chain", input=3)],
               ref=os.path.abspath(__file__) + ":SPEC")
'''

REDELIVERY_KINDS = {"crash_after_effect", "crash", "lock_expiry", "transient", "commit_lost"}


@pytest.fixture(scope="module")
def bugs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, SimSpec]:
    path = tmp_path_factory.mktemp("planted") / "bugs.py"
    path.write_text(textwrap.dedent(BUGS))
    names = ["PAY", "PAY_OK", "RACE", "RACE_OK", "DEADLINE", "DEADLINE_OK", "THIRD", "THIRD_OK", "SUM", "SUM_OK"]
    return {name: load_spec(f"{path}:{name}") for name in names}


# --- helpers ---------------------------------------------------------------------------------------


def hypothesis_report(spec: SimSpec, *, max_examples: int = 150, database: Any = None,
                      phases: tuple[Phase, ...] = tuple(Phase), **kw: Any) -> str:
    """Run ``@simulation_test(spec, **kw)`` (deterministically) and return its failure report."""

    @simulation_test(spec, hypothesis_settings=settings(max_examples=max_examples, database=database, phases=phases,
                                                        **QUIET), **kw)
    def test_planted(result) -> None:
        pass

    if database is None:  # (Hypothesis saves nothing for a test with an explicit seed)
        test_planted = hypothesis_seed(HSEED)(test_planted)

    with pytest.raises(AssertionError) as err:
        test_planted()
    return str(err.value)


def repro_of(report: str) -> str:
    lines = [ln[len("reproduce: "):] for ln in report.splitlines() if ln.startswith("reproduce: ")]
    assert lines, f"no 'reproduce:' line in:\n{report}"
    assert lines[0].startswith("duroxide-sim reproduce "), lines[0]
    return lines[0]


def parse_repro(repro: str) -> tuple[int, FaultPlan, dict[str, Any]]:
    args = shlex.split(repro)
    opt = {args[i]: args[i + 1] for i in range(3, len(args) - 1) if args[i].startswith("--")}
    kw: dict[str, Any] = {"provider": opt.get("--provider", "memory"), "nodes": int(opt.get("--nodes", 2))}
    if "--max-steps" in opt:
        kw["max_steps"] = int(opt["--max-steps"])
    return int(opt["--seed"]), FaultPlan.from_json(opt["--faults"]), kw


def headers(report: str) -> list[str]:
    """The 'checker [instance] at step N (seed S): message' lines of a report."""
    return [ln for ln in report.splitlines() if re.match(r"^\w+( \[[^\]]*\])?( at step \d+)? \(seed \d+\): ", ln)]


def rendered(failures: list[dict[str, Any]], seed: int) -> list[str]:
    out = []
    for f in failures:
        inst = f" [{f['instance']}]" if f["instance"] else ""
        where = f" at step {f['step']}" if f["step"] is not None else ""
        out.append(f"{f['checker']}{inst}{where} (seed {seed}): {f['message']}")
    return out


def reproduce_in_subprocess(repro: str, cwd: pathlib.Path) -> tuple[int, dict[str, Any]]:
    """Run the printed command as a user would paste it (``python -m duroxide_sim`` is the same
    program), with another hash seed than this process."""
    args = shlex.split(repro)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "PYTHONHASHSEED": "4242"}
    proc = subprocess.run([sys.executable, "-m", "duroxide_sim", *args[1:], "--json"], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)
    assert proc.stdout.strip(), f"{repro}\nexit {proc.returncode}\n{proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def without(plan: FaultPlan, entry: tuple[int, str]) -> FaultPlan:
    return FaultPlan.scripted([e for e in plan.script if e != entry], plan.until_ms)


def normalized(value: Any) -> Any:
    if isinstance(value, list):
        return sorted((normalized(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True, default=repr))
    if isinstance(value, dict):
        return {k: normalized(v) for k, v in value.items()}
    return value


def assert_minimal_and_causal(spec: SimSpec, seed: int, plan: FaultPlan, sim_kw: dict[str, Any]) -> Any:
    """The plan fails; without any one of its faults the same failure is gone; and when the
    failure compares with the fault-free reference, the seed without faults matches it (the
    faults, not the scheduling, made the difference)."""
    result = run_and_check(Simulation(spec, seed, plan, **sim_kw))
    assert result.failures, f"seed {seed}, {plan.describe()} does not fail"
    broken = {(f.checker, f.instance) for f in result.failures}
    for entry in plan.script:
        smaller = without(plan, entry)
        again = run_and_check(Simulation(spec, seed, smaller, **sim_kw))
        still = broken & {(f.checker, f.instance) for f in again.failures}
        assert not still, (f"seed {seed}: the plan {plan.describe()} is not minimal: without {entry[1]}@{entry[0]} "
                           f"it still fails: {[f.render() for f in again.failures]}")
    if plan.script and any(checker in ("outcome", "idempotency") for checker, _ in broken):
        bare = run_and_check(Simulation(spec, seed, None, **sim_kw))
        reference = fault_free_twin(Simulation(spec, seed, plan, **sim_kw), bare.realized)
        assert bare.outputs() == reference.outputs(), (
            f"seed {seed}: reported as broken by {plan.describe()}, but the same seed without any fault already "
            f"ends with {bare.outputs()} instead of the fault-free reference {reference.outputs()}: the fault is "
            "not the cause (the outcome check only runs when a fault was injected)")
        assert normalized(bare.world.state) == normalized(reference.world.state), (
            f"seed {seed}: without faults the world is already {bare.world.state} vs reference {reference.world.state}")
    return result


def assert_reproduces(report: str, cwd: pathlib.Path) -> None:
    """The report's repro line, in a subprocess: exit 1 and exactly the failures in-process."""
    repro = repro_of(report)
    seed, plan, sim_kw = parse_repro(repro)
    code, out = reproduce_in_subprocess(repro, cwd)
    assert code == 1, out
    again = rendered(out["failures"], seed)
    assert headers(report)[0] in again, f"report:\n{report}\nsubprocess:\n{again}"
    spec = load_spec(shlex.split(repro)[2])
    here = run_and_check(Simulation(spec, seed, plan, **sim_kw))
    assert [f.render().split("\nreproduce:")[0] for f in here.failures] == again
    assert out["trace_sha256"] == here.trace_hash


# --- 1-3: each planted bug shrinks to its minimal plan, which reproduces ---------------------------


def test_non_idempotent_activity_shrinks_to_one_redelivery(bugs, tmp_path) -> None:
    report = hypothesis_report(bugs["PAY"])
    assert headers(report)[0].startswith("idempotency") and "'Pay'" in headers(report)[0], report
    seed, plan, kw = parse_repro(repro_of(report))
    assert plan.rates == {} and len(plan.script) == 1, plan.describe()
    assert plan.script[0][1] in REDELIVERY_KINDS, plan.describe()
    assert_minimal_and_causal(bugs["PAY"], seed, plan, kw)
    assert_reproduces(report, tmp_path)


def test_crash_after_effect_only_shrinks_to_the_earliest_opportunity(bugs) -> None:
    """With only crash_after_effect: one fault, at the first opportunity that hits Pay (the two
    earlier executions are the idempotent Reserve)."""
    report = hypothesis_report(bugs["PAY"], kinds=("crash_after_effect",))
    seed, plan, kw = parse_repro(repro_of(report))
    assert len(plan.script) == 1, plan.describe()
    n, kind = plan.script[0]
    assert kind == "crash_after_effect"
    for earlier in range(1, n):
        assert run_and_check(Simulation(bugs["PAY"], seed, FaultPlan.scripted([(earlier, kind)]), **kw)).ok, (
            f"seed {seed}: {kind}@{earlier} also fails, but the report says {kind}@{n}")
    assert_minimal_and_causal(bugs["PAY"], seed, plan, kw)


def test_reordered_completions_shrink_to_one_reorder(bugs, tmp_path) -> None:
    report = hypothesis_report(bugs["RACE"], kinds=("reorder",))
    assert headers(report)[0].startswith("outcome [r]"), report
    seed, plan, kw = parse_repro(repro_of(report))
    assert plan.script and len(plan.script) == 1 and plan.script[0][1] == "reorder", plan.describe()
    assert_minimal_and_causal(bugs["RACE"], seed, plan, kw)
    assert_reproduces(report, tmp_path)


def test_lock_expiry_bug_shrinks_to_one_lock_expiry(bugs, tmp_path) -> None:
    report = hypothesis_report(bugs["DEADLINE"], kinds=("lock_expiry",))
    assert "'timed out'" in headers(report)[0], report
    seed, plan, kw = parse_repro(repro_of(report))
    assert [k for _, k in plan.script] == ["lock_expiry"], plan.describe()
    assert_minimal_and_causal(bugs["DEADLINE"], seed, plan, kw)
    assert_reproduces(report, tmp_path)


def test_lock_expiry_bug_on_sqlite_with_three_nodes_reproduces(bugs, tmp_path) -> None:
    """Simulation options given to @simulation_test travel in the repro line."""
    report = hypothesis_report(bugs["DEADLINE"], kinds=("lock_expiry", "crash_after_effect"), provider="sqlite",
                               nodes=3, max_steps=5_000, max_examples=60)
    repro = repro_of(report)
    assert "--provider sqlite --nodes 3 --max-steps 5000" in repro, repro
    seed, plan, kw = parse_repro(repro)
    assert len(plan.script) == 1, plan.describe()
    assert_minimal_and_causal(bugs["DEADLINE"], seed, plan, kw)
    assert_reproduces(report, tmp_path)


def test_two_fault_bug_shrinks_to_two_faults_each_needed(bugs, tmp_path) -> None:
    kinds = ("crash_after_effect", "lock_expiry", "transient")
    report = hypothesis_report(bugs["THIRD"], kinds=kinds, max_faults=4, max_opportunity=6, max_examples=300)
    assert "'gave up'" in headers(report)[0], report
    seed, plan, kw = parse_repro(repro_of(report))
    assert len(plan.script) == 2, plan.describe()
    assert_minimal_and_causal(bugs["THIRD"], seed, plan, kw)
    for n in range(1, 9):  # and no single fault does it, on this seed
        for kind in kinds:
            alone = run_and_check(Simulation(bugs["THIRD"], seed, FaultPlan.scripted([(n, kind)]), **kw))
            assert alone.ok, f"seed {seed}: {kind}@{n} alone fails, yet the report has two faults"
    assert_reproduces(report, tmp_path)


def test_bug_without_faults_shrinks_to_the_empty_plan(bugs, tmp_path) -> None:
    report = hypothesis_report(bugs["SUM"])
    assert headers(report)[0] == "invariants (seed 0): total_is_three: sum returned 4, expected 3", report
    seed, plan, kw = parse_repro(repro_of(report))
    assert seed == 0 and plan.script == () and plan.rates == {} and not plan.enabled(), plan
    assert_reproduces(report, tmp_path)


def test_engine_without_dedup_shrinks_to_one_duplicate(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(replay, "_already_completed", replay._already_completed)  # restored afterwards
    path = tmp_path / "dup_engine.py"
    path.write_text(textwrap.dedent(DUP_ENGINE_BUG))
    spec = load_spec(f"{path}:SPEC")
    report = hypothesis_report(spec, max_examples=100)
    assert "applied twice" in report, report
    seed, plan, kw = parse_repro(repro_of(report))
    assert plan.script and [k for _, k in plan.script] == ["duplicate"], plan.describe()
    assert_minimal_and_causal(spec, seed, plan, kw)
    assert_reproduces(report, tmp_path)


# --- a harmless fault must not be blamed for what scheduling did ----------------------------------


def _scheduling_only_seed(spec: SimSpec) -> tuple[int, Any, Any]:
    """A seed whose fault-free run already ends unlike the fault-free reference (two processes
    pick up the two completions in the other order)."""
    for seed in range(60):
        bare = run_and_check(Simulation(spec, seed, None))
        reference = fault_free_twin(Simulation(spec, seed, FaultPlan.scripted([(1, "duplicate")])), bare.realized)
        if bare.outputs() != reference.outputs():
            return seed, bare, reference
    raise AssertionError("no seed in 0..59 where scheduling alone changes the race's winner")


def test_a_dropped_duplicate_is_not_reported_as_changing_the_outcome(bugs) -> None:
    """The engine drops duplicate completions, so a plan whose only fault is a duplicate cannot
    change an outcome. On a seed where scheduling alone picks the other winner, the verdict with
    that harmless duplicate must be the verdict without it (either both report the race, or
    neither does) - not an 'outcome under faults' failure whose minimal plan is the duplicate."""
    seed, bare, reference = _scheduling_only_seed(bugs["RACE"])
    dup = run_and_check(Simulation(bugs["RACE"], seed, FaultPlan.scripted([(1, "duplicate")])))
    assert dup.faults_injected == {"duplicate": 1}
    assert dup.outputs() == bare.outputs()  # the duplicate changed nothing
    blamed = [f.render() for f in dup.failures if f.checker == "outcome"]
    unfaulted = [f.render() for f in bare.failures if f.checker == "outcome"]
    assert bool(blamed) == bool(unfaulted), (
        f"seed {seed}: without faults the run ends {bare.outputs()} (reference {reference.outputs()}) and passes; "
        f"with one dropped duplicate the same ending is reported as caused by it:\n{blamed[0] if blamed else ''}")


def test_simulation_test_does_not_blame_a_harmless_duplicate(bugs) -> None:
    """Through @simulation_test with duplicates only: either nothing is reported (duplicates
    are harmless) or the reported plan's faults are the cause."""

    @hypothesis_seed(HSEED)
    @simulation_test(bugs["RACE"], kinds=("duplicate",), max_opportunity=3,
                     hypothesis_settings=settings(max_examples=100, database=None, **QUIET))
    def test_planted(result) -> None:
        pass

    try:
        test_planted()
    except AssertionError as err:
        seed, plan, kw = parse_repro(repro_of(str(err)))
        assert_minimal_and_causal(bugs["RACE"], seed, plan, kw)


# --- 3: Hypothesis' example database replays the minimal failure --------------------------------


@pytest.mark.parametrize("name, kw", [
    ("PAY", {"kinds": ("crash_after_effect",)}),
    ("THIRD", {"kinds": ("crash_after_effect", "lock_expiry"), "max_faults": 4, "max_opportunity": 6}),
    ("SUM", {}),
])
def test_example_database_replays_the_minimal_failure(bugs, tmp_path, name, kw) -> None:
    db = DirectoryBasedExampleDatabase(str(tmp_path / "examples"))
    first = hypothesis_report(bugs[name], database=db, max_examples=300, **kw)
    # The next run: only the saved examples are tried (no generation, no shrinking).
    second = hypothesis_report(bugs[name], database=db, phases=(Phase.explicit, Phase.reuse), **kw)
    assert headers(second) == headers(first)
    assert repro_of(second) == repro_of(first)
    # and a passing test of the corrected workflow, run in between on the same database, does not
    # lose the saved failure (each test keeps its own entries)
    @simulation_test(bugs[name + "_OK"], hypothesis_settings=settings(database=db, max_examples=20, **QUIET), **kw)
    def test_planted(result) -> None:
        pass

    test_planted()
    third = hypothesis_report(bugs[name], database=db, phases=(Phase.explicit, Phase.reuse), **kw)
    assert repro_of(third) == repro_of(first)


# --- 4: the corrected workflows pass under the same settings --------------------------------------


@pytest.mark.parametrize("name, kw", [
    ("PAY_OK", {}),
    ("RACE_OK", {}),
    ("DEADLINE_OK", {"kinds": ("lock_expiry", "crash_after_effect", "crash")}),
    ("THIRD_OK", {"kinds": ("crash_after_effect", "lock_expiry", "transient"), "max_faults": 4, "max_opportunity": 6}),
    ("SUM_OK", {}),
])
def test_corrected_workflow_passes_the_same_search(bugs, name, kw) -> None:
    seen: list[int] = []

    @hypothesis_seed(HSEED)
    @simulation_test(bugs[name], hypothesis_settings=settings(max_examples=150, database=None, **QUIET), **kw)
    def test_fixed(result) -> None:
        seen.append(sum(result.faults_injected.values()))

    test_fixed()
    assert sum(seen) > 0, "the search never injected a fault"


def test_engine_with_dedup_passes_duplicates(tmp_path) -> None:
    source = textwrap.dedent(DUP_ENGINE_BUG).replace(
        "replay._already_completed = lambda source_id, completed: False", "pass")
    path = tmp_path / "dup_ok.py"
    path.write_text(source)
    spec = load_spec(f"{path}:SPEC")

    @hypothesis_seed(HSEED)
    @simulation_test(spec, kinds=("duplicate", "reorder"),
                     hypothesis_settings=settings(max_examples=100, database=None, **QUIET))
    def test_fixed(result) -> None:
        pass

    test_fixed()


# --- the pytest plugin replays a minimal plan -----------------------------------------------------


def test_plugin_reproduces_the_shrunk_plan_and_passes_without_it(bugs, pytester: pytest.Pytester) -> None:
    report = hypothesis_report(bugs["PAY"], kinds=("crash_after_effect",))
    seed, plan, _kw = parse_repro(repro_of(report))
    ref = bugs["PAY"].ref
    pytester.makepyfile(test_pay=f'''
from duroxide_sim.cli import load_spec
SPEC = load_spec({ref!r})

def test_pay(simulate):
    simulate(SPEC)
''')
    failing = pytester.runpytest("-p", "no:cacheprovider", "--sim-seed", str(seed), "--sim-faults", plan.to_json())
    failing.assert_outcomes(failed=1)
    out = failing.stdout.str()
    assert headers(report)[0] in out, out[-3000:]
    line = re.search(r"^pytest test_pay\.py::test_pay --sim-seed (\S+) --sim-faults (.+)$", out, re.M)
    assert line, out[-3000:]
    again = pytester.runpytest("-p", "no:cacheprovider", *shlex.split(line.group(0))[1:])
    again.assert_outcomes(failed=1)
    assert headers(report)[0] in again.stdout.str()
    pytester.runpytest("-p", "no:cacheprovider", "--sim-seed", str(seed), "--sim-faults",
                       without(plan, plan.script[0]).to_json()).assert_outcomes(passed=1)


# --- run / explore ----------------------------------------------------------------------------------


def _scenario_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    d = tmp_path / "scenarios"
    d.mkdir()
    source = textwrap.dedent(BUGS) + "\nSPEC = PAY\n"
    (d / "pay.py").write_text(source)
    return d


def _first_failure(command: str, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> str:
    d = _scenario_dir(tmp_path)
    extra = ["--budget-s", "20"] if command == "explore" else ["--seeds", "10"]
    capsys.readouterr()
    code = main([command, str(d), "--json", *extra])
    out = capsys.readouterr().out
    assert code == 1, out
    row = json.loads(out)["scenarios"][0]
    assert row["first_failure"], row
    return row["first_failure"]


@pytest.mark.parametrize("command", ["run", "explore"])
def test_cli_repro_line_reproduces_the_same_failure_in_a_subprocess(command, tmp_path, capsys) -> None:
    first = _first_failure(command, tmp_path, capsys)
    assert headers(first) and headers(first)[0].startswith("idempotency"), first
    code, out = reproduce_in_subprocess(repro_of(first), tmp_path)
    assert code == 1
    seed, _plan, _kw = parse_repro(repro_of(first))
    assert headers(first)[0] == rendered(out["failures"], seed)[0]


@pytest.mark.parametrize("command", ["run", "explore"])
def test_cli_reports_a_minimal_plan(bugs, command, tmp_path, capsys) -> None:
    """run/explore report the failing seed's plan; a bug that one re-execution shows should be
    reported with a plan of one fault (shrunk), not the whole random plan the seed ran with."""
    first = _first_failure(command, tmp_path, capsys)
    seed, plan, kw = parse_repro(repro_of(first))
    injected = run_and_check(Simulation(bugs["PAY"], seed, plan, **kw)).faults_injected
    assert plan.rates == {} and len(plan.script) == 1, (
        f"{command} reported seed {seed} with {plan.describe()} ({sum(injected.values())} faults injected: {injected}) "
        "instead of a shrunk plan; one crash_after_effect suffices")


def test_cli_shrinks_a_swarm_plan(bugs, tmp_path, capsys) -> None:
    """``run --faults swarm``: each seed draws its own plan; the failing seed's plan is shrunk
    like any other. The shrinker was handed the word "swarm" instead of the plan the seed drew
    and reported "(could not shrink its plan: AttributeError: 'str' object has no attribute
    'describe')" with the whole random plan."""
    d = _scenario_dir(tmp_path)
    capsys.readouterr()
    code = main(["run", str(d), "--json", "--seeds", "30", "--faults", "swarm"])
    out = capsys.readouterr().out
    assert code == 1, out
    first = json.loads(out)["scenarios"][0]["first_failure"]
    assert "could not shrink" not in first, first
    seed, plan, kw = parse_repro(repro_of(first))
    assert plan.rates == {} and len(plan.script) == 1, first
    assert not run_and_check(Simulation(bugs["PAY"], seed, plan, **kw)).ok


# --- 5: misuse gets clear errors -------------------------------------------------------------------


@pytest.mark.parametrize("faults, must_mention", [
    ("{bad", "fault plan"),
    ("[1]", "JSON object"),
    ('{"scrip": []}', "'scrip'"),
    ('{"script": [[0, "crash"]]}', "start at 1"),
    ('{"script": [[1, "meteor"]]}', "crash_after_effect"),        # names the known kinds
    ('{"script": [[1.5, "crash"]]}', "1.5"),                     # not silently crash@1
    ('{"rates": {"crash": "high"}}', "crash"),                   # names the offending rate
    ('{"script": "crash"}', "script"),                           # names the offending field
    ('{"script": [[1, "crash", 5]]}', "script"),
])
def test_reproduce_refuses_a_bad_plan_with_a_clear_message(bugs, tmp_path, faults, must_mention) -> None:
    code, _out, err = _cli_subprocess(["reproduce", bugs["PAY"].ref, "--seed", "0", "--faults", faults], tmp_path)
    assert code == 2, f"--faults {faults} was accepted:\n{_out}"
    assert err.startswith("duroxide-sim: not a fault plan: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert must_mention in err, f"--faults {faults}: the message does not say what is wrong: {err.strip()}"


def _cli_subprocess(args: list[str], cwd: pathlib.Path) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "duroxide_sim", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.mark.parametrize("make", [
    lambda: FaultPlan.scripted([(1, "crash-after-effect")]),
    lambda: FaultPlan.only("crash-after-effect"),
    lambda: FaultPlan.from_json('{"script": [[1, "crash-after-effect"]]}'),
    lambda: FaultPlan.from_json('{"rates": {"crash-after-effect": 0.1}}'),
    lambda: fault_plans(["crash-after-effect"]),
    lambda: simulation_test(SimSpec(name="x", setup=lambda rt, world: None), kinds=("crash-after-effect",))(lambda result: None),
], ids=["scripted", "only", "json-script", "json-rates", "fault_plans", "simulation_test"])
def test_unknown_fault_kind_is_named_with_the_known_ones(make) -> None:
    with pytest.raises(ValueError) as err:
        make()
    text = str(err.value)
    assert "crash-after-effect" in text, text
    assert all(kind in text for kind in FAULT_KINDS), f"the known kinds are not listed: {text}"


def test_spec_without_ref_says_how_to_get_a_command() -> None:
    """A spec built inside a function has no importable name: the report must say so instead of
    printing a command that cannot run."""

    def setup(rt, world):
        @rt.register_activity("Pay")
        def pay(ctx, oid):
            world.append("payments", oid)
            return "paid"

        @rt.register_orchestration("Order")
        def order(ctx, oid):
            return (yield ctx.schedule_activity("Pay", oid))

    spec = SimSpec(name="local", setup=setup, starts=[Start(instance="o", orchestration="Order", input=1)])
    report = hypothesis_report(spec, kinds=("crash_after_effect",), max_examples=50)
    line = next(ln for ln in report.splitlines() if ln.startswith("reproduce: "))
    assert "duroxide-sim reproduce" not in line, line
    assert "has no ref" in line and "ref='path/to/file.py:NAME'" in line, line
    seed = int(re.search(r"seed (\d+), faults", line).group(1))
    plan = FaultPlan.from_json(line.split(", faults ", 1)[1])
    assert len(plan.script) == 1 and run_and_check(Simulation(spec, seed, plan)).failures  # still usable by hand


SETUP_RAISES = '''
from duroxide_sim.sim.harness import SimSpec, Start

def setup(rt, world):
    raise RuntimeError("config missing: PAYMENTS_URL")

SPEC = SimSpec(name="bad", setup=setup, starts=[Start(instance="a", orchestration="Hello")])
'''


def test_setup_that_raises_is_reported_with_its_cause(tmp_path) -> None:
    path = tmp_path / "bad.py"
    path.write_text(textwrap.dedent(SETUP_RAISES))
    code, _out, err = _cli_subprocess(["reproduce", f"{path}:SPEC", "--seed", "3", "--faults", "none"], tmp_path)
    assert code == 2
    assert err.strip() == f"duroxide-sim: {path}:SPEC seed 3 cannot run: RuntimeError: config missing: PAYMENTS_URL", err
    spec = load_spec(f"{path}:SPEC")

    @simulation_test(spec, hypothesis_settings=settings(max_examples=5, database=None, **QUIET))
    def test_bad(result) -> None:
        pass

    with pytest.raises(RuntimeError, match="config missing: PAYMENTS_URL"):
        test_bad()
