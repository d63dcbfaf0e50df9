"""Generative probe of the SCENARIO-AUTHOR WORKFLOW, end to end: write a scenario file, run it with
``duroxide-sim run`` (in-process ``cli.main`` and, for a few cases, the ``duroxide-sim`` program),
read the report, paste the ``reproduce`` line, look at the trace / timeline, shrink.

What is generated (Hypothesis, derandomized):

* **A user scenario file** written into ``tmp_path`` (one module per example, a unique file name,
  ``ref=__file__ + ":SPEC"``), in the house style of scenarios/README.md: a ``Names`` class,
  idempotent activities (check before acting), a retry policy, ``ctx.trace_*``-free straight-line
  orchestration code generated from 1-6 steps: ``charge`` (activity), ``retry`` (an activity that
  fails its first call - "inventory service busy" - under ``schedule_activity_with_retry``),
  ``timer`` (1 s .. 1 h), ``race`` (``select2(wait_for_event, timer(3 h))``: the approver answers
  1 h after the subscription, or never), ``sub`` (a payment sub-orchestration, auto id), ``kv``
  (``set_kv_value`` / ``get_kv_value``) and ``status`` (``set_custom_status``); 1-3 orders with
  their own amounts, start times and answers; sometimes a late answer after the deadline.
* **The user's properties** (invariants in the file): ``expected_outcomes`` (every order not
  poisoned completes with the model's output), ``revenue_matches_ledger`` /
  ``reserved_matches_ledger`` (counters = the idempotency keys written), ``custom_status_is_the_last_step``.
* **Optionally one planted bug** from :data:`BUGS`, each a mistake users really make:

  ==================== ===================================================== ============= ===============
  bug                  the mistake                                            plan (K seeds) checker
  ==================== ===================================================== ============= ===============
  non_idempotent       ``charge`` bills on every delivery (no check first)    crash_after_effect 0.3 (10)  idempotency
  retry_double_count   ``reserve`` counts before the call that fails first    none (1)      invariants
  wall_clock           ``time.time()`` in the orchestration (expiry check)    none, --sandbox (1) sandbox
  global_random        ``random.random()`` in the orchestration (audit 0 %)   none, --sandbox (1) sandbox
  race_assumed         approval at an arbitrary time vs a 5 min deadline; the none (10)    invariants
                       property assumes the approval always wins
  wrong_on_crashes     a property "each charge ran exactly once" (at-least-   crash_after_effect 0.3 (10)  invariants
                       once delivery makes it false under crashes)
  ==================== ===================================================== ============= ===============

The model (:func:`model`) computes each order's output, custom status and the signals' times
from the steps (answers 1 h after the subscription, deadline 3 h: far from the 10-minute fault
window, so the correct workflow is fault-transparent, as approval.py argues).

Checks: (1) a correct workflow passes every seed under ``all``, ``swarm``, ``--rate 0.2`` and a
generated JSON plan, and ``none`` gives exactly the model's outputs (the property is not vacuous);
(2) each planted bug is found within its seed budget, the report names the checker, the property
or the culprit, the seed and a one-line ``reproduce`` command; (3) that command (in-process, and
pasted into a shell for a few) reproduces the same failure line and the same trace bytes, equal
to the Python API's trace hash; (4) ``--jobs 1`` and ``--jobs 2`` give the same rows (failing
seeds, messages, shrunk failures); (5) the same seed gives byte-identical traces (API twice,
``check_repeat``, ``reproduce --trace`` twice); (6) the shrunk plan still fails with the same
checker, is locally minimal (removing any one scripted fault makes it pass that checker) and
says what it was shrunk from; (7) ``show TRACE.jsonl`` and ``--timeline`` work and are
deterministic; (8) bad scenario files give a one-line error and exit 2, never a traceback;
(9) exit codes 0 / 1.

Found (all fixed; each test below failed before its fix - the generators still use unique,
non-stdlib file names and no module that exits at import):

* a scenario module that calls ``sys.exit()`` / ``raise SystemExit`` while it is imported (a
  script's guard, argparse at module level) ended ``run DIR`` at once: the other scenarios never
  run and the exit code is the module's (0: a green CI job that checked nothing);
* a scenario file named like an already imported standard-library module (``copy.py``,
  ``operator.py``, ``platform.py``: a copy / operator / platform-provisioning workflow), run from
  its own directory, makes ``run`` crash with a traceback (the stdlib module is forgotten and the
  user's file imported in its place) or blame the scenario with a wrong reason;
* ``reproduce signal.py:SPEC`` (a relative ref, as README's ``ref="myapp/sim.py:SPEC"`` style
  gives when run from the directory) imports the standard library's ``signal`` and says the file
  has no ``SPEC``.
* ``SimSpec(name=42)`` (or ``None``) was accepted and ``run`` then died with a traceback in the
  report (exit 1) instead of a load error;
* ``run FILE --json`` on a file without ``SPEC`` exited 2 but its document said ``"ok": true``.

Also by design and steered around: faults act only in the first 10 virtual minutes, so a bug
that needs a fault is planted in a step inside that window (one after a one-hour timer is out of
reach of every plan).

Pinned (``test_pinned_*``, not specified): a set-iteration-order dependence is invisible to a
plain ``run`` in one process; ``run --hash-seed-check`` (added for it) finds it. A non-callable
invariant, pinned at first as a failing property, is now a load error.
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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from duroxide_sim.cli import load_spec
from duroxide_sim.cli import main as cli
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Simulation

SETTINGS = dict(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=list(HealthCheck))

SEC, MIN, HOUR = 1_000, 60_000, 3_600_000
DEADLINE = 3 * HOUR
ANSWER_AFTER = HOUR
RACE_BUG_DEADLINE = 5 * MIN
TIMERS = (SEC, 30 * SEC, 5 * MIN, HOUR)
STEP_KINDS = ("charge", "retry", "timer", "race", "sub", "kv", "status")
BIN = pathlib.Path(sys.executable).parent / "duroxide-sim"
_COUNTER = [0]


# --------------------------------------------------------------------------------------------------
# The scenario file a user writes
# --------------------------------------------------------------------------------------------------

TEMPLATE = '''"""Generated order workflow (duroxide_sim scenario)."""
import json
import random
import time

from duroxide_sim import Backoff, RetryPolicy
from duroxide_sim.sim.harness import Signal, SimSpec, Start


class Names:
    ORDER = "shop::orchestration::order"
    PAYMENT = "shop::orchestration::payment"
    CHARGE = "shop::activity::charge"
    RESERVE = "shop::activity::reserve"


RETRY = RetryPolicy(max_attempts=3, backoff=Backoff("fixed", base_ms=1_000))
EXPECTED = json.loads(@@EXPECTED@@)
STARTS = json.loads(@@STARTS@@)
SIGNALS = json.loads(@@SIGNALS@@)


def setup(rt, world):
    @rt.register_activity(Names.CHARGE)
    def charge(ctx, req):
@@CHARGE@@
        return req["amount"]

    @rt.register_activity(Names.RESERVE)
    def reserve(ctx, req):
@@RESERVE@@
        return req["qty"]

    @rt.register_orchestration(Names.PAYMENT)
    def payment(ctx, req):
        charged = yield ctx.schedule_activity(Names.CHARGE, {"key": req["key"] + ":child", "amount": req["amount"]})
        return {"child": req["key"], "charged": charged}

    @rt.register_orchestration(Names.ORDER)
    def order_flow(ctx, order):
        oid = order["id"]
        log = []
@@PROLOGUE@@
@@BODY@@
@@EPILOGUE@@
        return {"order": oid, "log": log}


def poisoned(result, instance):
    """Failed because faults used up the delivery budget (also through a poisoned child)."""
    st = result.statuses.get(instance)
    return st is not None and st.status == "Failed" and "poison:" in str(st.error)


def outcome(result, instance):
    st = result.statuses.get(instance)
    if st is None:
        return None
    return [st.status, st.output if st.status == "Completed" else st.error]


def expected_outcomes(result):
    for inst, want in EXPECTED["outputs"].items():
        if poisoned(result, inst):
            continue
        if outcome(result, inst) != ["Completed", want]:
            return f"{inst}: expected {want!r}, got {outcome(result, inst)!r}"
    return None


def revenue_matches_ledger(result):
    charged = sum(v for _k, v in result.world.items("charge:"))
    if result.world.get("revenue", 0) != charged:
        return f"revenue {result.world.get('revenue', 0)} != charges recorded {charged}"
    return None


def reserved_matches_ledger(result):
    booked = sum(v for _k, v in result.world.items("reserve:"))
    if result.world.get("reserved", 0) != booked:
        return f"reserved {result.world.get('reserved', 0)} != reservations recorded {booked}"
    return None


def custom_status_is_the_last_step(result):
    for inst, want in EXPECTED["status"].items():
        st = result.statuses.get(inst)
        if st is not None and st.status == "Completed" and st.custom_status != want:
            return f"{inst}: custom status {st.custom_status!r}, expected {want!r}"
    return None


@@EXTRA_PROPERTY@@

SPEC = SimSpec(
    name=@@NAME@@, setup=setup, ref=__file__ + ":SPEC", fault_transparent=@@TRANSPARENT@@,
    starts=[Start(instance=s["instance"], orchestration=Names.ORDER, input=s["input"], at_ms=s["at_ms"]) for s in STARTS],
    signals=[Signal(instance=s["instance"], name=s["name"], data=s["data"], at_ms=s["at_ms"]) for s in SIGNALS],
    invariants=[expected_outcomes, revenue_matches_ledger, reserved_matches_ledger, custom_status_is_the_last_step@@EXTRA@@],
)
'''

CHARGE_OK = '''\
        if world.put_if_absent(f"charge:{req['key']}", req["amount"]):
            world.incr("revenue", req["amount"])'''
CHARGE_BUG = '''\
        world.put(f"charge:{req['key']}", req["amount"])
        world.incr("revenue", req["amount"])            # BUG: bills on every delivery'''
RESERVE_OK = '''\
        if world.put_if_absent(f"busy:{req['key']}", True):
            raise RuntimeError("inventory service busy, try again")
        if world.put_if_absent(f"reserve:{req['key']}", req["qty"]):
            world.incr("reserved", req["qty"])'''
RESERVE_BUG = '''\
        world.incr("reserved", req["qty"])               # BUG: counted before the call that may fail
        if world.put_if_absent(f"busy:{req['key']}", True):
            raise RuntimeError("inventory service busy, try again")
        world.put_if_absent(f"reserve:{req['key']}", req["qty"])'''
WALL_CLOCK = ('        opened_at = time.time()                     # BUG: the wall clock in orchestration code',
              '        if time.time() - opened_at > 30 * 24 * 3600:\n'
              '            return {"order": oid, "expired": True}')
GLOBAL_RANDOM = ('        audit = random.random() < order.get("audit_rate", 0.0)   # BUG: global RNG in orchestration code',
                 '        if audit:\n            log.append(["audited"])')
RAN_ONCE = '''\
def each_charge_ran_once(result):
    """BUG (the property): activities are delivered at least once, not exactly once."""
    ran = result.world.executions.get(Names.CHARGE, 0)
    if ran != EXPECTED["charges"]:
        return f"the charge activity ran {ran} times for {EXPECTED['charges']} charges"
    return None
'''


def step_code(j: int, kind: str, arg: Any) -> list[str]:
    if kind == "charge":
        return [f'log.append(["charge", (yield ctx.schedule_activity(Names.CHARGE, '
                f'{{"key": f"{{oid}}:{j}", "amount": order["amounts"][{j}]}}))])']
    if kind == "retry":
        return [f'log.append(["reserve", (yield ctx.schedule_activity_with_retry(Names.RESERVE, '
                f'{{"key": f"{{oid}}:{j}", "qty": order["amounts"][{j}]}}, RETRY))])']
    if kind == "timer":
        return [f"yield ctx.schedule_timer({arg})", 'log.append(["timer"])']
    if kind == "race":
        return [f'won = yield ctx.select2(ctx.wait_for_event("approve-{j}"), ctx.schedule_timer(order["deadline_ms"]))',
                'log.append(["race", "approved" if won.index() == 0 else "timeout"])']
    if kind == "sub":
        return [f'log.append(["sub", (yield ctx.schedule_sub_orchestration(Names.PAYMENT, '
                f'{{"key": f"{{oid}}:{j}", "amount": order["amounts"][{j}]}}))])']
    if kind == "kv":
        return [f'ctx.set_kv_value("k{j}", f"v{j}-{{oid}}")', f'log.append(["kv", ctx.get_kv_value("k{j}")])']
    assert kind == "status"
    return [f'ctx.set_custom_status(f"step {j} of {{oid}}")']


def model(recipe: dict[str, Any]) -> dict[str, Any]:
    """Each order's output and final custom status, the starts and the signals (with times)."""
    steps, bug = recipe["steps"], recipe["bug"]
    deadline = RACE_BUG_DEADLINE if bug == "race_assumed" else DEADLINE
    outputs, status, starts, signals = {}, {}, [], []
    charges = 0
    for order in recipe["orders"]:
        oid, t, log, cs = order["id"], order["at_ms"], [], None
        for j, (kind, arg) in enumerate(steps):
            amount = order["amounts"][j]
            if kind == "charge":
                log.append(["charge", amount])
                charges += 1
            elif kind == "retry":
                log.append(["reserve", amount])
                t += SEC
            elif kind == "timer":
                t += arg
                log.append(["timer"])
            elif kind == "race":
                if bug == "race_assumed":  # the user's belief: the approver always answers in time
                    signals.append({"instance": oid, "name": f"approve-{j}", "data": {"by": "rita"}, "at_ms": None})
                    log.append(["race", "approved"])
                elif order["answers"][j]:
                    t += ANSWER_AFTER
                    signals.append({"instance": oid, "name": f"approve-{j}", "data": {"by": "rita"}, "at_ms": t})
                    log.append(["race", "approved"])
                else:
                    t += DEADLINE
                    if order["late"]:  # answered after the deadline: ignored
                        signals.append({"instance": oid, "name": f"approve-{j}", "data": {"by": "late"},
                                        "at_ms": t + ANSWER_AFTER})
                    log.append(["race", "timeout"])
            elif kind == "sub":
                log.append(["sub", {"child": f"{oid}:{j}", "charged": amount}])
                charges += 1
            elif kind == "kv":
                log.append(["kv", f"v{j}-{oid}"])
            elif kind == "status":
                cs = f"step {j} of {oid}"
        outputs[oid] = {"order": oid, "log": log}
        status[oid] = cs
        starts.append({"instance": oid, "at_ms": order["at_ms"],
                       "input": {"id": oid, "amounts": order["amounts"], "deadline_ms": deadline}})
    return {"outputs": outputs, "status": status, "charges": charges, "starts": starts, "signals": signals}


def scenario_source(recipe: dict[str, Any]) -> str:
    bug, m = recipe["bug"], model(recipe)
    body = [ln for j, (kind, arg) in enumerate(recipe["steps"]) for ln in step_code(j, kind, arg)]
    prologue, epilogue = {"wall_clock": WALL_CLOCK, "global_random": GLOBAL_RANDOM}.get(bug, ("", ""))
    expected = {"outputs": m["outputs"], "status": m["status"], "charges": m["charges"]}
    parts = {
        "@@EXPECTED@@": repr(json.dumps(expected, sort_keys=True)),
        "@@STARTS@@": repr(json.dumps(m["starts"], sort_keys=True)),
        "@@SIGNALS@@": repr(json.dumps(m["signals"], sort_keys=True)),
        "@@CHARGE@@": CHARGE_BUG if bug == "non_idempotent" else CHARGE_OK,
        "@@RESERVE@@": RESERVE_BUG if bug == "retry_double_count" else RESERVE_OK,
        "@@PROLOGUE@@": prologue,
        "@@BODY@@": "\n".join("        " + ln for ln in body),
        "@@EPILOGUE@@": epilogue,
        "@@EXTRA_PROPERTY@@": RAN_ONCE if bug == "wrong_on_crashes" else "",
        "@@EXTRA@@": ", each_charge_ran_once" if bug == "wrong_on_crashes" else "",
        "@@NAME@@": repr(recipe["name"]),
        "@@TRANSPARENT@@": "False" if bug == "race_assumed" else "True",
    }
    text = TEMPLATE
    for key, value in parts.items():
        text = text.replace(key, value)
    return text


def write_scenario(root: pathlib.Path, recipe: dict[str, Any], *, stem: str | None = None) -> pathlib.Path:
    """One directory per example, a unique module name that no installed module has (stdlib
    names have their own tests: test_a_stdlib_named_scenario_runs_from_its_own_directory)."""
    _COUNTER[0] += 1
    where = root / f"ex{_COUNTER[0]}"
    where.mkdir(parents=True)
    path = where / f"{stem or 'order_flow'}_{_COUNTER[0]}.py"
    path.write_text(scenario_source(recipe), encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------------

#: The planted bugs: how they are switched on, the plan and seed budget K that find them (seeds
#: 0..K-1 searched), the checker that must report them and what its report must name.
BUGS: dict[str, dict[str, Any]] = {
    "non_idempotent": dict(faults='{"rates": {"crash_after_effect": 0.3}}', seeds=10, sandbox=False,
                           checker="idempotency", names=("'shop::activity::charge'",), needs="charge"),
    "retry_double_count": dict(faults="none", seeds=1, sandbox=False, checker="invariants",
                               names=("reserved_matches_ledger: reserved",), needs="retry"),
    "wall_clock": dict(faults="none", seeds=1, sandbox=True, checker="sandbox",
                       names=("'shop::orchestration::order' called time.time()",), needs=None),
    "global_random": dict(faults="none", seeds=1, sandbox=True, checker="sandbox",
                          names=("'shop::orchestration::order' called random.random()",), needs=None),
    "race_assumed": dict(faults="none", seeds=10, sandbox=False, checker="invariants",
                         names=("expected_outcomes: order-", "'timeout'"), needs="race"),
    "wrong_on_crashes": dict(faults='{"rates": {"crash_after_effect": 0.3}}', seeds=10, sandbox=False,
                             checker="invariants", names=("each_charge_ran_once: the charge activity ran",), needs="charge"),
}

STEP = st.one_of(st.tuples(st.just("timer"), st.sampled_from(TIMERS)),
                 st.tuples(st.sampled_from([k for k in STEP_KINDS if k != "timer"]), st.none()))


@st.composite
def recipes(draw: Any, bug: str | None = None) -> dict[str, Any]:
    steps = [list(s) for s in draw(st.lists(STEP, min_size=1, max_size=6))]
    need = BUGS[bug]["needs"] if bug else None
    if need is not None:
        # Faults act only in the first 10 virtual minutes (FaultPlan.until_ms): a bug that needs a
        # fault needs its step inside that window, so one is placed before anything that waits
        # long (a race, a timer of an hour); steps after it are free.
        window, t = 0, 0
        while window < len(steps) and t < 5 * MIN:
            kind, arg = steps[window]
            t += arg if kind == "timer" else HOUR if kind == "race" else 0
            window += 1 if t < 5 * MIN else 0
        steps.insert(draw(st.integers(0, window)), [need, None])
    orders = []
    for i in range(draw(st.integers(1, 3))):
        orders.append({
            "id": f"order-{i + 1}",
            "at_ms": draw(st.sampled_from((0, SEC, 2 * MIN))),
            "amounts": draw(st.lists(st.integers(1, 99), min_size=len(steps), max_size=len(steps))),
            "answers": draw(st.lists(st.booleans(), min_size=len(steps), max_size=len(steps))),
            "late": draw(st.booleans()),
        })
    return {"name": "orders" if bug is None else f"orders/{bug}", "steps": steps, "orders": orders, "bug": bug}


FAULT_JSON = st.dictionaries(st.sampled_from(("transient", "commit_lost", "lock_expiry", "crash", "crash_after_effect",
                                              "duplicate", "reorder", "delay")),
                             st.sampled_from((0.05, 0.1, 0.3)), min_size=1, max_size=3).map(
                                 lambda rates: json.dumps({"rates": rates}, sort_keys=True))


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------

def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = cli(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any], str]:
    code, out, err = run_cli([*argv, "--json"], capsys)
    return code, json.loads(out), err


def repro_of(failure: str) -> str:
    lines = [ln[len("reproduce: "):] for ln in failure.splitlines() if ln.startswith("reproduce: ")]
    assert len(lines) == 1, failure
    assert lines[0].startswith("duroxide-sim reproduce "), lines[0]
    return lines[0]


def header(failure: str) -> str:
    return failure.splitlines()[0]


def parse_repro(repro: str) -> tuple[str, int, FaultPlan, dict[str, Any]]:
    args = shlex.split(repro)
    assert args[:2] == ["duroxide-sim", "reproduce"], args
    ref, rest = args[2], args[3:]
    opt: dict[str, str] = {}
    kw: dict[str, Any] = {"sandbox": False}
    i = 0
    while i < len(rest):
        if rest[i] == "--sandbox":
            kw["sandbox"] = True
            i += 1
        else:
            opt[rest[i]] = rest[i + 1]
            i += 2
    assert set(opt) <= {"--seed", "--provider", "--nodes", "--max-steps", "--faults"}, opt
    kw["provider"], kw["nodes"] = opt["--provider"], int(opt["--nodes"])
    if "--max-steps" in opt:
        kw["max_steps"] = int(opt["--max-steps"])
    return ref, int(opt["--seed"]), FaultPlan.from_json(opt["--faults"]), kw


def rendered(summary: dict[str, Any]) -> list[str]:
    out = []
    for f in summary["failures"]:
        inst = f" [{f['instance']}]" if f["instance"] else ""
        where = f" at step {f['step']}" if f["step"] is not None else ""
        out.append(f"{f['checker']}{inst}{where} (seed {summary['seed']}): {f['message']}")
    return out


def reproduce_in_process(repro: str, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code, out, err = run_cli([*shlex.split(repro)[1:], *extra], capsys)
    assert "Traceback" not in err, err
    return code, out


def without_seconds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def outcome(result: Any, inst: str) -> Any:
    st_ = result.statuses.get(inst)
    return None if st_ is None else (st_.status, st_.output if st_.status == "Completed" else st_.error)


def sub_env(hashseed: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    if hashseed is not None:
        env["PYTHONHASHSEED"] = hashseed
    return env


def program() -> list[str]:
    """The installed ``duroxide-sim`` script (``python -m duroxide_sim`` when it is missing)."""
    return [str(BIN)] if BIN.exists() else [sys.executable, "-m", "duroxide_sim"]


def run_program(args: list[str], cwd: pathlib.Path, *, hashseed: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*program(), *args], capture_output=True, text=True, cwd=cwd, env=sub_env(hashseed),
                          timeout=120)


def paste(line: str, cwd: pathlib.Path, *, extra: str = "", hashseed: str | None = None) -> subprocess.CompletedProcess[str]:
    """A printed ``duroxide-sim reproduce ...`` line pasted into a shell."""
    script = f"duroxide-sim() {{ {' '.join(map(shlex.quote, program()))} \"$@\"; }}\n{line} {extra}\n"
    return subprocess.run(["bash", "--norc", "--noprofile", "-c", script], capture_output=True, text=True, cwd=cwd,
                          env=sub_env(hashseed), timeout=120)


def assert_locally_minimal(spec: Any, seed: int, plan: FaultPlan, kw: dict[str, Any], checker: str) -> None:
    """The shrunk plan fails with ``checker``; without any one of its scripted faults it does not."""
    assert not plan.rates, f"a shrunk plan is a script, got {plan.describe()}"
    result = run_and_check(Simulation(spec, seed, plan, **kw))
    assert any(f.checker == checker for f in result.failures), (seed, plan.describe(), [f.render() for f in result.failures])
    for entry in plan.script:
        smaller = FaultPlan.scripted([e for e in plan.script if e != entry], plan.until_ms)
        again = run_and_check(Simulation(spec, seed, smaller, **kw))
        assert not any(f.checker == checker for f in again.failures), (
            f"seed {seed}: {plan.describe()} is not minimal: without {entry[1]}@{entry[0]} it still fails {checker}: "
            f"{[f.render() for f in again.failures]}")


# --------------------------------------------------------------------------------------------------
# (1), (5), (9): a correct workflow passes every seed under every plan offered; exit 0
# --------------------------------------------------------------------------------------------------

@settings(max_examples=30, **SETTINGS)
@given(recipe=recipes(), plan_json=FAULT_JSON)
def test_correct_workflows_pass_every_seed_under_every_fault_plan(tmp_path: pathlib.Path, capsys: Any,
                                                                   recipe: dict[str, Any], plan_json: str) -> None:
    path = write_scenario(tmp_path, recipe)
    spec = load_spec(f"{path}:SPEC")
    m = model(recipe)
    # Without faults the workflow does exactly what the model says (the user's properties are
    # not vacuous: they compare with these values).
    bare = run_and_check(Simulation(spec, 0, None))
    assert bare.ok, [f.render() for f in bare.failures]
    for oid, want in m["outputs"].items():
        assert outcome(bare, oid) == ("Completed", want), (oid, outcome(bare, oid), want)
        assert bare.statuses[oid].custom_status == m["status"][oid]
    amounts = [o["amounts"][j] for o in recipe["orders"] for j, (k, _) in enumerate(recipe["steps"]) if k in ("charge", "sub")]
    assert bare.world.get("revenue", 0) == sum(amounts)
    # (5) the same seed, twice, gives byte-identical traces (and check_repeat agrees)
    once = run_and_check(Simulation(spec, 3, "swarm"), check_repeat=True)
    assert once.ok, [f.render() for f in once.failures]
    again = Simulation(spec, 3, "swarm").run()
    assert list(again.trace) == list(once.trace) and again.trace_hash == once.trace_hash
    # (1) + (9): every plan offered, every seed passes, exit 0
    for faults in (["--faults", "all"], ["--faults", "swarm"], ["--faults", "all", "--rate", "0.2"], ["--faults", plan_json]):
        code, doc, err = run_json(["run", str(path), "--seeds", "6", *faults], capsys)
        assert code == 0, (faults, doc, err[-2000:])
        assert doc["ok"] is True and doc["load_errors"] == [], doc
        (row,) = doc["scenarios"]
        assert row["scenario"] == recipe["name"] and row["seeds"] == 6 and row["failures"] == 0, row
        assert row["first_failure"] is None and row["first_failing_seed"] is None
        for prop in ("expected_outcomes", "revenue_matches_ledger", "reserved_matches_ledger",
                     "custom_status_is_the_last_step", "determinism", "idempotency", "liveness"):
            assert prop in row["properties"], row["properties"]


# --------------------------------------------------------------------------------------------------
# (2), (3), (5), (6), (7), (9): each planted bug is found, reported, reproduced and shrunk
# --------------------------------------------------------------------------------------------------

def check_show_and_timeline(repro: str, tmp: pathlib.Path, capsys: Any, checker: str) -> None:
    """(7) ``reproduce --trace`` into a file, ``show`` it; ``--timeline`` twice: same bytes."""
    code, out = reproduce_in_process(repro, capsys, "--trace")
    assert code == 1
    trace = [ln for ln in out.splitlines() if ln.startswith("{")]
    trace_file = tmp / "run.jsonl"
    trace_file.write_text(out, encoding="utf-8")
    shown = []
    for _ in range(2):
        code, text, err = run_cli(["show", str(trace_file)], capsys)
        assert code == 0 and not err, err
        shown.append(text)
    assert shown[0] == shown[1]
    assert len(shown[0].splitlines()) == len(trace), "show prints one line per trace record"
    code, only, _ = run_cli(["show", str(trace_file), "--instance", "order-1"], capsys)
    others = [ln for ln in trace if json.loads(ln).get("instance") not in ("order-1", None)]
    assert code == 0 and len(only.splitlines()) == len(trace) - len(others)
    pages = []
    for name in ("a.html", "b.html"):
        code, out = reproduce_in_process(repro, capsys, "--timeline", str(tmp / name))
        assert code == 1 and f"timeline: {tmp / name}" in out, out[-500:]
        pages.append((tmp / name).read_bytes())
    assert pages[0] == pages[1], "the timeline of one seed is not deterministic"
    page = pages[0].decode("utf-8")
    assert page.lstrip().lower().startswith("<!doctype html") and f">{checker}</a>" in page


@pytest.mark.parametrize("bug", sorted(BUGS))
def test_planted_bug_is_found_reported_reproduced_and_shrunk(bug: str, tmp_path: pathlib.Path, capsys: Any) -> None:
    case = BUGS[bug]

    @settings(max_examples=12, **SETTINGS)
    @given(recipe=recipes(bug=bug))
    def probe(recipe: dict[str, Any]) -> None:
        path = write_scenario(tmp_path, recipe)
        argv = ["run", str(path), "--seeds", str(case["seeds"]), "--faults", case["faults"]]
        argv += ["--sandbox"] if case["sandbox"] else []
        code, doc, err = run_json(argv, capsys)
        # (9) exit 1; (2) found within the budget, named
        assert code == 1, (doc, err[-2000:])
        assert doc["ok"] is False and doc["load_errors"] == []
        (row,) = doc["scenarios"]
        seed = row["first_failing_seed"]
        assert row["failures"] >= 1 and isinstance(seed, int) and 0 <= seed < case["seeds"], row
        first, unshrunk = row["first_failure"], row["unshrunk_failure"]
        for failure in filter(None, (first, unshrunk)):
            assert re.match(rf"{case['checker']}( \[[^\]]+\])?( at step \d+)? \(seed {seed}\): ", header(failure)), failure
            for name in case["names"]:
                assert name in header(failure), (name, failure)
            repro = repro_of(failure)
            assert f" --seed {seed} " in repro and shlex.split(repro)[2] == f"{path}:SPEC", repro
            assert ("--sandbox" in shlex.split(repro)) == case["sandbox"]
        if case["checker"] == "sandbox":  # the line of the call, in the user's file
            line = int(re.search(rf"at {re.escape(str(path))}:(\d+)", header(first)).group(1))
            assert ("time.time()" if bug == "wall_clock" else "random.random()") in path.read_text().splitlines()[line - 1]
        # (6) the minimal failure: shrunk when faults were needed, locally minimal, same checker
        ref, rseed, plan, kw = parse_repro(repro_of(first))
        spec = load_spec(ref)
        if case["faults"] == "none":
            assert unshrunk is None and not plan.enabled(), row  # nothing to shrink
        else:
            assert unshrunk is not None, row
            note = first.splitlines()[-1]
            assert note.startswith(f"(shrunk: seed {seed}'s plan (crash_after_effect=0.3) injected "), note
            assert "limit of runs" not in note and 1 <= len(plan.script), note
            assert header(unshrunk).split(" ", 1)[0] == header(first).split(" ", 1)[0] == case["checker"]
            assert_locally_minimal(spec, rseed, plan, kw, case["checker"])
        # (3) the reproduce lines (shrunk and as found) give the same failure and the API's trace
        for failure in filter(None, (first, unshrunk)):
            repro = repro_of(failure)
            code, out = reproduce_in_process(repro, capsys, "--json")
            assert code == 1, out
            summary = json.loads(out)
            assert rendered(summary)[0] == header(failure), (rendered(summary), failure)
            _ref, s, p, k = parse_repro(repro)
            api = run_and_check(Simulation(spec, s, p, **k))
            assert summary["trace_sha256"] == api.trace_hash
            assert [f.render() for f in api.failures][0] == header(failure) + f"\nreproduce: {repro}"
        # (5) reproduce --trace twice: the same bytes
        traces = [reproduce_in_process(repro_of(first), capsys, "--trace")[1] for _ in range(2)]
        assert traces[0] == traces[1] and traces[0].count("\n{") >= 3
        # (7) show and timeline
        check_show_and_timeline(repro_of(first), path.parent, capsys, case["checker"])

    probe()


# --------------------------------------------------------------------------------------------------
# (4) --jobs 1 and --jobs 2: the same rows; (2)/(3)/(9) through the installed program
# --------------------------------------------------------------------------------------------------

SPARSE = '{"rates": {"crash_after_effect": 0.1}}'


@settings(max_examples=3, **SETTINGS)
@given(good=recipes(), bad=recipes(bug="non_idempotent"))
def test_jobs_1_and_2_report_the_same_failing_seeds_and_messages(tmp_path: pathlib.Path, capsys: Any,
                                                                  good: dict[str, Any], bad: dict[str, Any]) -> None:
    where = write_scenario(tmp_path, good).parent
    (where / "billing_bug.py").write_text(scenario_source(bad), encoding="utf-8")
    argv = ["run", str(where), "--seeds", "12", "--faults", SPARSE]
    rows = {}
    for jobs in ("1", "2"):
        code, doc, err = run_json([*argv, "--jobs", jobs], capsys)
        assert code in (0, 1) and "Traceback" not in err, err[-2000:]
        rows[jobs] = doc["scenarios"]
    assert without_seconds(rows["1"]) == without_seconds(rows["2"])
    # the rows agree with the Python API, seed by seed
    spec = load_spec(f"{where / 'billing_bug.py'}:SPEC")
    failing = [s for s in range(12) if not run_and_check(Simulation(spec, s, FaultPlan.from_json(SPARSE))).ok]
    row = next(r for r in rows["1"] if r["scenario"] == "orders/non_idempotent")
    assert row["failures"] == len(failing) and row["first_failing_seed"] == (failing[0] if failing else None), row
    assert next(r for r in rows["1"] if r["scenario"] == "orders")["failures"] == 0


def test_the_installed_program_runs_reports_and_its_reproduce_line_pastes(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Three subprocesses: ``duroxide-sim run`` of a correct file (exit 0), of a directory with a
    planted bug (exit 1, the table, FAILED, the reproduce line), and that line pasted into a
    shell under another PYTHONHASHSEED with ``--trace``: the same failure, the in-process bytes."""
    good = {"name": "orders", "bug": None, "steps": [["charge", None], ["retry", None], ["race", None], ["sub", None],
                                                     ["kv", None], ["status", None]],
            "orders": [{"id": f"order-{i}", "at_ms": i * SEC, "amounts": [5, 6, 0, 7, 0, 0],
                        "answers": [False, False, i % 2 == 0, False, False, False], "late": True} for i in (1, 2)]}
    bad = {**good, "name": "orders/non_idempotent", "bug": "non_idempotent"}
    path = write_scenario(tmp_path, good)
    proc = run_program(["run", str(path), "--seeds", "8"], cwd=tmp_path)
    assert proc.returncode == 0 and "all properties held" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "orders: 8/8 seeds, 0 failing" in proc.stderr and "Traceback" not in proc.stderr
    (path.parent / "billing_bug.py").write_text(scenario_source(bad), encoding="utf-8")
    proc = run_program(["run", str(path.parent), "--seeds", "8", "--faults", BUGS["non_idempotent"]["faults"]],
                       cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = proc.stdout
    assert re.search(r"FAILED orders/non_idempotent: \d+ of 8 seeds broke a property; first:", out), out
    assert "FAILED orders:" not in out and re.search(r"│ orders\s+│\s+8 │", out), out
    heads = [ln for ln in out.splitlines() if ln.startswith("idempotency [order-")]
    repros = [ln[len("reproduce: "):] for ln in out.splitlines() if ln.startswith("reproduce: ")]
    assert len(heads) == 1 and len(repros) == 1 and "'shop::activity::charge'" in heads[0], out
    pasted = paste(repros[0], cwd=tmp_path, extra="--trace", hashseed="4242")
    assert pasted.returncode == 1 and heads[0] in pasted.stdout.splitlines(), pasted.stdout[-2000:] + pasted.stderr
    code, here = reproduce_in_process(repros[0], capsys, "--trace")
    assert code == 1 and here == pasted.stdout


# --------------------------------------------------------------------------------------------------
# (8) bad scenario files: one clear line, exit 2, never a traceback
# --------------------------------------------------------------------------------------------------

MINI = '''from duroxide_sim.sim.harness import Signal, SimSpec, Start


def setup(rt, world):
    @rt.register_orchestration("shop::orchestration::order")
    def order(ctx, x):
        yield ctx.schedule_timer(10)
        return x
'''
GOOD_SPEC = 'SPEC = SimSpec(name="mini", setup=setup, starts=[Start(instance="i", orchestration="shop::orchestration::order")])\n'
BAD_FILES = {
    "syntax_error": ("def setup(:\n", "cannot load scenario {file}: SyntaxError: "),
    "import_error": ("import no_such_module_for_my_scenarios\n", "cannot load scenario {file}: ModuleNotFoundError: "),
    "missing_spec": (MINI + "SPECS = []\n", "no scenario modules (defining SPEC) in {file}"),
    "spec_wrong_type": (MINI + 'SPEC = {"name": "mini"}\n', "cannot load scenario {file}: SPEC is a dict, not a SimSpec"),
    "start_at_ms_text": (MINI + GOOD_SPEC.replace('order")', 'order", at_ms="soon")'),
                         "cannot load scenario {file}: ValueError: at_ms must be a non-negative integer"),
    "signal_kind": (MINI + GOOD_SPEC.replace("])\n", '])\nSPEC.signals = [Signal(instance="i", kind="shout")]\n'),
                    "cannot load scenario {file}: ValueError: Signal.kind must be"),
    "starts_as_dicts": (MINI + GOOD_SPEC.replace('Start(instance="i", orchestration="shop::orchestration::order")',
                                                 '{"instance": "i", "orchestration": "shop::orchestration::order"}'),
                        "scenario mini cannot run: ValueError: SimSpec 'mini': starts must be Start records"),
    "setup_raises": (MINI.replace('    @rt.register', '    raise RuntimeError("DATABASE_URL is not set")\n    @rt.register')
                     + GOOD_SPEC, "scenario mini cannot run: RuntimeError: DATABASE_URL is not set"),
    "unregistered_orchestration": (MINI + GOOD_SPEC.replace('orchestration="shop::orchestration::order"',
                                                            'orchestration="shop::orchestration::ordr"'),
                                   "scenario mini cannot run: ValueError: SimSpec 'mini': instance 'i' starts "
                                   "orchestration 'shop::orchestration::ordr', which its setup does not register"),
    "setup_not_callable": (MINI + GOOD_SPEC.replace("setup=setup", "setup=None"),
                           "cannot load scenario {file}: TypeError: SimSpec.setup must be a function setup(rt, world), got None"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_scenario_files_give_one_clear_line_and_exit_2(case: str, tmp_path: pathlib.Path, capsys: Any) -> None:
    text, want = BAD_FILES[case]
    path = tmp_path / f"{case}_flow.py"
    path.write_text(text, encoding="utf-8")
    code, out, err = run_cli(["run", str(path), "--seeds", "2"], capsys)
    assert code == 2, (code, out[-1000:], err[-2000:])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == [ln for ln in lines if ln.startswith("duroxide-sim: ")] and len(lines) == 1, err
    assert want.format(file=path) in lines[0], (want, lines[0])
    assert "Traceback" not in err + out
    # --json: the document says not ok and names the problem (a spec with no SPEC has none to list)
    code, out, err = run_cli(["run", str(path), "--seeds", "2", "--json"], capsys)
    doc = json.loads(out)
    assert code == 2 and doc["ok"] is False and doc["scenarios"] == []
    assert len(doc["load_errors"]) == 1
    # in a directory beside a correct scenario: that one still runs, the exit code is 2
    (tmp_path / "zz_good_flow.py").write_text(MINI + GOOD_SPEC.replace('"mini"', '"good"'), encoding="utf-8")
    code, doc, err = run_json(["run", str(tmp_path), "--seeds", "2"], capsys)
    # (a module without SPEC in a directory is not a scenario - a helper - and is skipped)
    assert code == (0 if case == "missing_spec" else 2), err
    assert [r["scenario"] for r in doc["scenarios"]] == ["good"] and doc["scenarios"][0]["failures"] == 0


def test_a_property_that_raises_is_a_broken_property_with_where_it_raised(tmp_path: pathlib.Path, capsys: Any) -> None:
    """README: an invariant that raises counts as failed, with where it raised: exit 1, not 2."""
    path = tmp_path / "raising_flow.py"
    path.write_text(MINI + "\n\ndef shipped(result):\n    return result.statuses['nobody'].output\n\n\n"
                    + GOOD_SPEC.replace("])\n", "], invariants=[shipped])\n"), encoding="utf-8")
    code, out, err = run_cli(["run", str(path), "--seeds", "3"], capsys)
    line = path.read_text().splitlines().index("    return result.statuses['nobody'].output") + 1
    assert code == 1 and "Traceback" not in err + out
    assert f"invariants (seed 0): shipped: raised KeyError: 'nobody' (at {path}:{line})" in out, out
    assert "FAILED mini: 3 of 3 seeds broke a property" in out and f"reproduce: duroxide-sim reproduce " in out


HOSTILE_NAMES = ("my orders (v2) 'eu' $HOME;ü.py", "-dash & \"quote\".py", "tab\tname.py")


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_file_names_run_and_their_reproduce_line_resolves(name: str, tmp_path: pathlib.Path, capsys: Any) -> None:
    recipe = {"name": "orders/retry_double_count", "bug": "retry_double_count", "steps": [["retry", None]],
              "orders": [{"id": "order-1", "at_ms": 0, "amounts": [3], "answers": [False], "late": False}]}
    path = tmp_path / name
    path.write_text(scenario_source(recipe), encoding="utf-8")
    code, doc, err = run_json(["run", str(path), "--seeds", "2", "--faults", "none"], capsys)
    assert code == 1, err
    first = doc["scenarios"][0]["first_failure"]
    repro = repro_of(first)
    assert shlex.split(repro)[2] == f"{path}:SPEC"
    code, out = reproduce_in_process(repro, capsys)
    assert code == 1 and header(first) in out.splitlines(), out
    # a broken file with that name: one line, the name shown escaped (never raw control characters)
    broken = tmp_path / ("broken\n" + name)
    broken.write_text("def setup(:\n", encoding="utf-8")
    code, out, err = run_cli(["run", str(broken)], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "broken\\n" in err and "\t" not in err, err


# --------------------------------------------------------------------------------------------------
# Bugs found (each failed before its fix)
# --------------------------------------------------------------------------------------------------

def test_a_scenario_module_that_exits_at_import_is_a_load_error(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Fixed; the defect as found:

    README (Command line): on a directory, "a module that cannot load (import error, ...) is
    reported with its file and reason and left out, the other scenarios still run, and the exit
    code is then 2". A module that raises ``SystemExit`` while imported (``sys.exit(0)`` in a
    script's guard, ``argparse`` parsing at module level) is not: ``_load_modules`` catches only
    ``Exception``, so ``run`` stops right there - the other scenarios (here one with a planted bug)
    never run, nothing is printed, and ``duroxide-sim run DIR`` exits with the module's code (0:
    a green CI job that checked nothing; in-process ``main`` raises SystemExit).
    Reproduce: a directory with ``a_script.py`` = ``import sys; sys.exit(0)`` and a failing
    scenario; ``duroxide-sim run DIR; echo $?`` -> 0."""
    (tmp_path / "a_script.py").write_text("import sys\n\nsys.exit(0)  # this file is meant to be run as a script\n")
    recipe = {"name": "orders/retry_double_count", "bug": "retry_double_count", "steps": [["retry", None]],
              "orders": [{"id": "order-1", "at_ms": 0, "amounts": [3], "answers": [False], "late": False}]}
    (tmp_path / "orders_flow.py").write_text(scenario_source(recipe), encoding="utf-8")
    capsys.readouterr()
    try:
        code: Any = cli(["run", str(tmp_path), "--seeds", "1", "--faults", "none"])
    except SystemExit as exc:
        code = f"SystemExit({exc.code!r}) out of main()"
    captured = capsys.readouterr()
    assert code == 1, code  # the failing scenario still ran and failed (with a load error reported: 1 wins over 2)
    assert "a_script.py" in captured.err and "FAILED orders/retry_double_count" in captured.out


def test_a_spec_name_that_is_not_a_string_is_a_load_error(tmp_path: pathlib.Path) -> None:
    """Fixed; the defect as found:

    README: a module whose ``SPEC`` is not usable is a load error (exit 2, file and reason);
    SimSpec validates its times, starts and signal kinds with clear messages. ``SimSpec(name=42)``
    (or ``name=None``) is accepted, and ``duroxide-sim run FILE`` then dies in the report with
    ``TypeError: 'int' object is not iterable`` in ``_printable`` - a traceback and exit 1, as if a
    property had failed. Reproduce: ``SPEC = SimSpec(name=42, setup=setup, starts=[...])``,
    ``duroxide-sim run file.py --seeds 1``."""
    path = tmp_path / "numbered_flow.py"
    path.write_text(MINI + GOOD_SPEC.replace('name="mini"', "name=42"), encoding="utf-8")
    proc = run_program(["run", str(path), "--seeds", "1"], cwd=tmp_path)
    assert "Traceback" not in proc.stderr, proc.stderr[-1500:]
    assert proc.returncode == 2 and str(path) in proc.stderr


def test_a_stdlib_named_scenario_runs_from_its_own_directory(tmp_path: pathlib.Path) -> None:
    """Fixed; the defect as found:

    README: ``duroxide-sim run PATH`` runs the scenario module(s) at PATH; a flat directory's
    modules are imported by file location and "a helper never shadows an installed module"
    (use_flat_directory). A correct scenario in ``operator.py`` (an operator workflow), run from
    its own directory (``cd flows && duroxide-sim run operator.py``), crashes: ``_load_modules``
    puts the current directory first on sys.path and ``use_flat_directory`` forgets the
    already-imported stdlib ``operator``, so the next ``import operator`` loads the user's file
    (which imports duroxide_sim half-way through its own import): a traceback, exit 1.
    ``copy.py`` does the same; ``platform.py`` is refused as "cannot run: AttributeError: module
    'platform' has no attribute 'system'". Run from elsewhere (an absolute path) it passes."""
    path = tmp_path / "operator.py"
    path.write_text(MINI + GOOD_SPEC, encoding="utf-8")
    elsewhere = run_program(["run", str(path), "--seeds", "2"], cwd=tmp_path.parent)
    assert elsewhere.returncode == 0, elsewhere.stderr[-1500:]
    here = run_program(["run", "operator.py", "--seeds", "2"], cwd=tmp_path)
    assert "Traceback" not in here.stderr, here.stderr[-1500:]
    assert here.returncode == 0 and "all properties held" in here.stdout


def test_reproduce_of_a_relative_stdlib_named_file_loads_that_file(tmp_path: pathlib.Path) -> None:
    """Fixed; the defect as found:

    README: ``duroxide-sim reproduce path/to/file.py:NAME`` re-runs the spec NAME of that file
    (README's example spec has ``ref="myapp/sim.py:SPEC"``, a relative path, which the printed
    reproduce line repeats). For a file named like a standard-library module already imported
    (``signal.py``: a workflow about signals), ``reproduce signal.py:SPEC`` run from its directory
    imports the stdlib ``signal`` by the dotted name and answers "signal.py has no attribute
    'SPEC'" (exit 2) although the file defines it; ``run signal.py`` in the same directory passes
    and prints that very reproduce line."""
    path = tmp_path / "signal.py"
    path.write_text(MINI + GOOD_SPEC.replace('name="mini"', 'name="mini", ref="signal.py:SPEC"'), encoding="utf-8")
    proc = run_program(["reproduce", "signal.py:SPEC", "--seed", "0", "--faults", "none"], cwd=tmp_path)
    assert "has no attribute 'SPEC'" not in proc.stderr, proc.stderr
    assert proc.returncode == 0 and "all properties hold" in proc.stdout


def test_run_json_of_a_file_without_spec_says_not_ok(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Fixed; the defect as found:

    README: exit code 2 is a usage or input error, and with ``--json`` a run that left a scenario
    out "says "ok": false". ``duroxide-sim run FILE --json`` on a file that defines no ``SPEC``
    (the user named it ``SPECS``) exits 2 with "no scenario modules (defining SPEC)" on stderr,
    but the JSON document on stdout is ``{"ok": true, "scenarios": [], "load_errors": []}``: a
    consumer reading only the document sees success, nothing checked."""
    path = tmp_path / "no_spec_flow.py"
    path.write_text(MINI + "SPECS = []\n", encoding="utf-8")
    code, doc, err = run_json(["run", str(path)], capsys)
    assert code == 2 and "no scenario modules" in err
    assert doc["ok"] is False, doc


# --------------------------------------------------------------------------------------------------
# Pinned (behaviour left open by README / SPEC)
# --------------------------------------------------------------------------------------------------

def test_a_non_callable_invariant_is_a_load_error(tmp_path: pathlib.Path, capsys: Any) -> None:
    """``invariants=["expected_outcomes"]`` (names instead of functions) is refused when the
    scenario loads: exit 2, the file and the value named. (It was pinned at first: every seed
    failed ``invariants`` with "raised TypeError: 'str' object is not callable", pointing at the
    library's line, not the user's file.)"""
    path = tmp_path / "named_props_flow.py"
    path.write_text(MINI + GOOD_SPEC.replace("])\n", '], invariants=["expected_outcomes"])\n'), encoding="utf-8")
    code, doc, err = run_json(["run", str(path), "--seeds", "2"], capsys)
    assert code == 2 and doc["ok"] is False and doc["scenarios"] == []
    assert [e["scenario"] for e in doc["load_errors"]] == [str(path)]
    assert "SimSpec.invariants must hold functions fn(result) -> str | None, got 'expected_outcomes'" in err, err


SET_ORDER = MINI.replace('''    @rt.register_orchestration("shop::orchestration::order")
    def order(ctx, x):
        yield ctx.schedule_timer(10)
        return x
''', '''    @rt.register_activity("shop::activity::pick")
    def pick(ctx, sku):
        world.put_if_absent(f"picked:{sku}", True)
        return sku

    @rt.register_orchestration("shop::orchestration::order")
    def order(ctx, x):
        picked = []
        for sku in {"apple", "banana", "cherry", "damson", "elder"}:   # BUG: set iteration order
            picked.append((yield ctx.schedule_activity("shop::activity::pick", sku)))
        return picked
''') + 'SPEC = SimSpec(name="picking", setup=setup, ref=__file__ + ":SPEC", starts=[Start(instance="i", orchestration="shop::orchestration::order")])\n'


def test_pinned_set_iteration_order_is_invisible_to_run_in_one_process(tmp_path: pathlib.Path, capsys: Any) -> None:
    """Pinned: an orchestration that schedules in a set's iteration order passes every seed of a
    plain ``run`` - one process, one string hash seed, replays agree - while the same seed
    reproduced under two PYTHONHASHSEEDs gives two different traces (the schedule order
    differs). ``run --hash-seed-check`` finds it (the next test)."""
    path = tmp_path / "picking_flow.py"
    path.write_text(SET_ORDER, encoding="utf-8")
    code, doc, err = run_json(["run", str(path), "--seeds", "10", "--faults", "all"], capsys)
    assert code == 0 and doc["scenarios"][0]["failures"] == 0, (doc, err[-1000:])
    hashes = set()
    for hashseed in ("0", "1"):
        proc = run_program(["reproduce", f"{path}:SPEC", "--seed", "0", "--faults", "none", "--json"], cwd=tmp_path,
                           hashseed=hashseed)
        assert proc.returncode == 0, proc.stderr
        hashes.add(json.loads(proc.stdout)["trace_sha256"])
    assert len(hashes) == 2


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_run_hash_seed_check_finds_set_order_dependence(tmp_path: pathlib.Path, capsys: Any, jobs: str) -> None:
    """``run --hash-seed-check`` reproduces each scenario's first seed, fault-free, under two
    PYTHONHASHSEEDs in subprocesses: the set-order workflow above (which every seed of a plain
    ``run`` passes) fails it - exit 1, the property named, both trace hashes and a reproduce line
    with the hash seed - while a correct scenario in the same directory passes it. ``explore``
    refuses the option (it has no fixed first seed)."""
    (tmp_path / "picking_flow.py").write_text(SET_ORDER, encoding="utf-8")
    (tmp_path / "mini_flow.py").write_text(MINI + GOOD_SPEC, encoding="utf-8")
    code, doc, err = run_json(["run", str(tmp_path), "--seeds", "3", "--hash-seed-check", "--jobs", jobs], capsys)
    rows = {r["scenario"]: r for r in doc["scenarios"]}
    assert code == 1 and doc["ok"] is False, (doc, err[-1000:])
    assert rows["mini"]["failures"] == 0 and rows["mini"]["hash_seed"] == "independent"
    assert "hash-seed independence" in rows["mini"]["properties"]
    picking = rows["picking"]
    assert picking["failures"] == 1 and picking["first_failing_seed"] == 0
    assert picking["first_failure"].startswith("hash-seed independence (seed 0): ")
    assert "the trace depends on PYTHONHASHSEED" in picking["hash_seed"]
    assert "PYTHONHASHSEED=1 duroxide-sim reproduce " in picking["hash_seed"]
    code, out, err = run_cli(["explore", str(tmp_path), "--budget-s", "1", "--hash-seed-check"], capsys)
    assert code == 2 and "--hash-seed-check does not apply here" in err
