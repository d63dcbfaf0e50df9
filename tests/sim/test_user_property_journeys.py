"""User journeys: property tests of one's own workflows, as a user writes them from the README.

Every spec below is a realistic workflow with a planted bug and its corrected twin, written with
the public API only (``SimSpec``/``Start``/``Signal``, ``Simulation``, ``run_and_check``,
``FaultPlan``, ``duroxide-sim run|reproduce``, ``@simulation_test``, the ``simulate`` fixture and
the documented hash-seed check). For each planted bug we check what the README promises:

* it is caught within a small seed budget, by the checker that exists for it, and the report
  (``Failure.render()``) names the seed and the fault plan (the ``reproduce`` line carries it);
* ``run`` shrinks the failing seed's plan: no larger than what the seed injected, and minimal
  (without any one of its faults the failure is gone), and it says what it was shrunk from;
* ``Simulation(spec, seed, shrunk_plan)`` reproduces the same failure; the same seed + plan gives
  the byte-identical trace twice in one process and in two subprocesses with different
  ``PYTHONHASHSEED``; the printed ``reproduce`` line, pasted, gives the same failure;
* Hypothesis (``@simulation_test``) and the pytest plugin (``simulate``) find it and print a
  reproduction that works when pasted;
* the corrected workflow passes on the same seeds and plans, and over 30 seeds with all faults
  and with swarm faults.

Journeys: (1) a payment saga whose Charge is not idempotent; (2) a deadline whose timeout path
forgets to compensate, and (2b) a compensation that is itself not idempotent (two faults);
(3) orchestration code reading the outside world / a module-level global; (4) iterating a set to
decide the schedule order (documented: invisible in one process, caught by the hash-seed check);
(5) an external event raised before the orchestration subscribes (positional vs queue), and
(5b) parallel activities assumed to run in schedule order (reordered completions).

Specs are module-level with ``ref`` set, so their repro lines resolve in any directory.

Found by this file and fixed (the test failed before): ``run``'s
shrinker removes faults in a single pass (``cli/seeds.py:shrink_failure``), so a fault that became
removable after later ones were dropped stays in the reported plan: DOUBLE_REFUND seed 4 is
reported with 6 faults, one of which can be dropped (3 suffice); it now passes until none can go.

Not a harness defect, noted for users: the module-global bug (READS_GLOBAL) leaks its state into
later runs in the same process (the flag stays set), so only a fresh process - or a test that
resets the global - sees it; ``run``'s in-process shrinking then cannot shrink it.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import re
import shlex
import subprocess
import sys
import textwrap
from typing import Any

import attrs
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import seed as hypothesis_seed

from duroxide_sim.cli import main
from duroxide_sim.sim.checkers import run_and_check
from duroxide_sim.sim.faults import FaultPlan
from duroxide_sim.sim.harness import Signal, SimSpec, Simulation, Start
from duroxide_sim.testing import simulation_test
from duroxide_sim.testing.hashseed import check_hash_seed_independence

pytest_plugins = ["pytester"]

HERE = os.path.abspath(__file__)
ROOT = pathlib.Path(HERE).resolve().parents[2]
SEC = 1_000


def _ref(name: str) -> str:
    return f"{HERE}:{name}"


# =================================================================================================
# 1. Payment saga: Charge is not idempotent (a counter bumped on every delivery)
# =================================================================================================


def _checkout_setup(rt, world, *, idempotent: bool) -> None:
    @rt.register_activity("Shop::Reserve")
    def reserve(ctx, order):
        world.put_if_absent(f"reserved:{order['id']}", order["qty"])
        return "reserved"

    @rt.register_activity("Shop::Charge")
    def charge(ctx, req):
        if idempotent:
            # keyed by instance + saga step: a re-delivery finds its own earlier charge
            if world.put_if_absent(f"charge:{req['key']}", req["amount"]):
                world.incr("charged_cents", req["amount"])
        else:
            world.incr("charged_cents", req["amount"])  # BUG: a re-delivery charges again
        return {"charged": req["amount"]}

    @rt.register_activity("Shop::Ship")
    def ship(ctx, order):
        world.put_if_absent(f"shipped:{order['id']}", True)
        return "shipped"

    @rt.register_orchestration("Shop::Checkout")
    def checkout(ctx, order):
        yield ctx.schedule_activity("Shop::Reserve", order)
        receipt = yield ctx.schedule_activity(
            "Shop::Charge", {"key": f"{ctx.instance_id}:charge", "amount": order["qty"] * 250})
        yield ctx.schedule_activity("Shop::Ship", order)
        return {"order": order["id"], "charged": receipt["charged"]}


def _orders(n: int = 2) -> list[Start]:
    return [Start(instance=f"order-{i}", orchestration="Shop::Checkout", input={"id": i, "qty": i + 1})
            for i in range(n)]


def charged_exactly_once(result) -> str | None:
    """Never more money taken than the orders cost, and at least what the completed ones charged
    (an order the faults poisoned - ``budget_exhausted`` - may or may not have been charged)."""
    total = sum(op.input["qty"] * 250 for op in result.realized[0])
    completed = sum(s.output["charged"] for s in result.statuses.values() if s.status == "Completed")
    got = result.world.get("charged_cents", 0)
    if got > total:
        return f"charged {got} cents for orders that cost {total} in all"
    if got < completed:
        return f"charged {got} cents but the completed orders report {completed}"
    return None


DOUBLE_CHARGE = SimSpec(name="double-charge", setup=lambda rt, w: _checkout_setup(rt, w, idempotent=False),
                        starts=_orders(), invariants=[charged_exactly_once], ref=_ref("DOUBLE_CHARGE"))
CHARGE_ONCE = SimSpec(name="charge-once", setup=lambda rt, w: _checkout_setup(rt, w, idempotent=True),
                      starts=_orders(), invariants=[charged_exactly_once], ref=_ref("CHARGE_ONCE"))


# =================================================================================================
# 2. Shipping deadline: the timeout path forgets to refund and release (only a fault makes it run)
# =================================================================================================


def _deadline_setup(rt, world, *, compensates: bool) -> None:
    @rt.register_activity("Ship::Reserve")
    def reserve(ctx, oid):
        world.put_if_absent(f"reserved:{oid}", True)
        return True

    @rt.register_activity("Ship::Release")
    def release(ctx, oid):
        world.delete(f"reserved:{oid}")
        return True

    @rt.register_activity("Ship::Charge")
    def charge(ctx, oid):
        world.put_if_absent(f"charged:{oid}", 500)
        return 500

    @rt.register_activity("Ship::Refund")
    def refund(ctx, oid):
        world.put_if_absent(f"refunded:{oid}", 500)
        return True

    @rt.register_activity("Ship::Dispatch")
    def dispatch(ctx, oid):
        world.put_if_absent(f"dispatched:{oid}", True)
        return "dispatched"

    @rt.register_orchestration("Ship::Order")
    def order(ctx, oid):
        yield ctx.schedule_activity("Ship::Reserve", oid)
        yield ctx.schedule_activity("Ship::Charge", oid)
        # the carrier must answer within 10 s, else the order is cancelled
        winner = yield ctx.select2(ctx.schedule_activity("Ship::Dispatch", oid), ctx.schedule_timer(10 * SEC))
        if winner.index() == 0:
            return "shipped"
        if compensates:
            yield ctx.schedule_activity("Ship::Refund", oid)
            yield ctx.schedule_activity("Ship::Release", oid)
        return "cancelled"  # BUG (compensates=False): money and stock stay taken


def no_money_or_stock_kept_for_cancelled_orders(result) -> str | None:
    problems = []
    for inst, status in result.statuses.items():
        if status.status != "Completed" or status.output != "cancelled":
            continue
        oid = inst.split("-", 1)[1]
        if result.world.exists(f"charged:{oid}") and not result.world.exists(f"refunded:{oid}"):
            problems.append(f"{inst} cancelled but charged:{oid} was never refunded")
        if result.world.exists(f"reserved:{oid}"):
            problems.append(f"{inst} cancelled but reserved:{oid} was never released")
    return "; ".join(problems) or None


_SHIPMENTS = [Start(instance=f"ship-{i}", orchestration="Ship::Order", input=str(i)) for i in range(2)]
# A deadline makes the outcome depend on (virtual) time, which faults shift: not fault-transparent;
# the invariant is the property.
NO_REFUND = SimSpec(name="no-refund", setup=lambda rt, w: _deadline_setup(rt, w, compensates=False),
                    starts=_SHIPMENTS, invariants=[no_money_or_stock_kept_for_cancelled_orders],
                    fault_transparent=False, ref=_ref("NO_REFUND"))
REFUNDS = SimSpec(name="refunds", setup=lambda rt, w: _deadline_setup(rt, w, compensates=True),
                  starts=_SHIPMENTS, invariants=[no_money_or_stock_kept_for_cancelled_orders],
                  fault_transparent=False, ref=_ref("REFUNDS"))


# --- 2b. the compensation itself is not idempotent: it takes a timeout AND a re-delivery ----------


def _refund_setup(rt, world, *, idempotent_refund: bool) -> None:
    @rt.register_activity("Psp::Charge")
    def charge(ctx, oid):
        if world.put_if_absent(f"charge:{oid}", 500):
            world.incr("charged_cents", 500)
        return 500

    @rt.register_activity("Psp::Refund")
    def refund(ctx, oid):
        if not idempotent_refund or world.put_if_absent(f"refund:{oid}", 500):
            world.incr("refunded_cents", 500)  # BUG (idempotent_refund=False): a re-delivery refunds twice
        return True

    @rt.register_activity("Psp::Dispatch")
    def dispatch(ctx, oid):
        world.put_if_absent(f"dispatched:{oid}", True)
        return True

    @rt.register_orchestration("Psp::Order")
    def order(ctx, oid):
        yield ctx.schedule_activity("Psp::Charge", oid)
        winner = yield ctx.select2(ctx.schedule_activity("Psp::Dispatch", oid), ctx.schedule_timer(10 * SEC))
        if winner.index() == 0:
            return "shipped"
        yield ctx.schedule_activity("Psp::Refund", oid)
        return "refunded"


def never_refund_more_than_charged(result) -> str | None:
    charged, refunded = result.world.get("charged_cents", 0), result.world.get("refunded_cents", 0)
    if refunded > charged:
        return f"refunded {refunded} cents of {charged} charged"
    return None


_PSP = [Start(instance="psp-1", orchestration="Psp::Order", input="1")]
DOUBLE_REFUND = SimSpec(name="double-refund", setup=lambda rt, w: _refund_setup(rt, w, idempotent_refund=False),
                        starts=_PSP, invariants=[never_refund_more_than_charged], fault_transparent=False,
                        ref=_ref("DOUBLE_REFUND"))
REFUND_ONCE = SimSpec(name="refund-once", setup=lambda rt, w: _refund_setup(rt, w, idempotent_refund=True),
                      starts=_PSP, invariants=[never_refund_more_than_charged], fault_transparent=False,
                      ref=_ref("REFUND_ONCE"))


# =================================================================================================
# 3. Orchestration code reading mutable state: the world, and a module-level global
# =================================================================================================


def _invoice_setup(rt, world, *, reads_world: bool) -> None:
    @rt.register_activity("Billing::NextNumber")
    def next_number(ctx, _):
        return world.get("invoice_seq", 0)

    @rt.register_activity("Billing::Issue")
    def issue(ctx, number):
        if world.put_if_absent(f"invoice:{number}", True):
            world.incr("invoice_seq")
        return number

    @rt.register_orchestration("Billing::Invoice")
    def invoice(ctx, customer):
        if reads_world:
            number = world.get("invoice_seq", 0)  # BUG: orchestration code reads the outside world
        else:
            number = yield ctx.schedule_activity("Billing::NextNumber", None)
        yield ctx.schedule_activity("Billing::Issue", number)
        yield ctx.schedule_timer(1 * SEC)
        return number


_INVOICES = [Start(instance="inv-a", orchestration="Billing::Invoice", input="a")]
READS_WORLD = SimSpec(name="reads-world", setup=lambda rt, w: _invoice_setup(rt, w, reads_world=True),
                      starts=_INVOICES, ref=_ref("READS_WORLD"))
READS_VIA_ACTIVITY = SimSpec(name="reads-via-activity", setup=lambda rt, w: _invoice_setup(rt, w, reads_world=False),
                             starts=_INVOICES, ref=_ref("READS_VIA_ACTIVITY"))

#: A process-wide "feature flag" cache that orchestration code consults (BUG) and an activity flips.
FLAGS: dict[str, bool] = {}


def _flag_setup(rt, world) -> None:
    @rt.register_activity("Flags::EnableFastPath")
    def enable(ctx, _):
        FLAGS["fast_path"] = True
        return True

    @rt.register_activity("Flags::Work")
    def work(ctx, how):
        return how

    @rt.register_orchestration("Flags::Job")
    def job(ctx, _):
        how = "fast" if FLAGS.get("fast_path") else "slow"  # BUG: a global read in orchestration code
        yield ctx.schedule_activity("Flags::Work", how)
        yield ctx.schedule_activity("Flags::EnableFastPath", None)
        return how


READS_GLOBAL = SimSpec(name="reads-global", setup=_flag_setup,
                       starts=[Start(instance="job", orchestration="Flags::Job")], ref=_ref("READS_GLOBAL"))


# =================================================================================================
# 4. Set iteration deciding schedule order
# =================================================================================================

REGIONS = ("us-east", "us-west", "eu-west", "eu-north", "ap-south", "ap-east", "sa-east")


def _regions_setup(rt, world, *, sorted_order: bool) -> None:
    @rt.register_activity("Fleet::Provision")
    def provision(ctx, region):
        world.put_if_absent(f"provisioned:{region}", True)
        return region

    @rt.register_orchestration("Fleet::Rollout")
    def rollout(ctx, regions):
        pending = set(regions)
        order = sorted(pending) if sorted_order else pending  # BUG: set order depends on the hash seed
        done = []
        for region in order:
            done.append((yield ctx.schedule_activity("Fleet::Provision", region)))
        return done


_ROLLOUT = [Start(instance="rollout", orchestration="Fleet::Rollout", input=list(REGIONS))]
SET_ORDER = SimSpec(name="set-order-rollout", setup=lambda rt, w: _regions_setup(rt, w, sorted_order=False),
                    starts=_ROLLOUT, ref=_ref("SET_ORDER"))
SORTED_ORDER = SimSpec(name="sorted-rollout", setup=lambda rt, w: _regions_setup(rt, w, sorted_order=True),
                       starts=_ROLLOUT, ref=_ref("SORTED_ORDER"))


# =================================================================================================
# 5. A webhook raised before the orchestration subscribes (positional event vs queue)
# =================================================================================================


def _webhook_setup(rt, world, *, queue: bool) -> None:
    @rt.register_activity("Pay::StartPayment")
    def start_payment(ctx, oid):
        world.put_if_absent(f"payment-started:{oid}", True)  # the provider calls back "paid" later
        return True

    @rt.register_activity("Pay::Fulfil")
    def fulfil(ctx, oid):
        world.put_if_absent(f"fulfilled:{oid}", True)
        return True

    @rt.register_orchestration("Pay::Order")
    def order(ctx, oid):
        yield ctx.schedule_activity("Pay::StartPayment", oid)
        if queue:
            paid = yield ctx.dequeue_event("paid")  # kept until taken, whenever it arrived
        else:
            paid = yield ctx.wait_for_event("paid")  # BUG: dropped if it arrives before this
        yield ctx.schedule_activity("Pay::Fulfil", oid)
        return paid


LATE_SUBSCRIBE = SimSpec(
    name="late-subscribe", setup=lambda rt, w: _webhook_setup(rt, w, queue=False),
    starts=[Start(instance="pay-1", orchestration="Pay::Order", input="1")],
    signals=[Signal(instance="pay-1", name="paid", data={"txn": "t-1"}, at_ms=5 * SEC)],
    ref=_ref("LATE_SUBSCRIBE"))
QUEUED_WEBHOOK = SimSpec(
    name="queued-webhook", setup=lambda rt, w: _webhook_setup(rt, w, queue=True),
    starts=[Start(instance="pay-1", orchestration="Pay::Order", input="1")],
    signals=[Signal(instance="pay-1", name="paid", data={"txn": "t-1"}, at_ms=5 * SEC, kind="enqueue")],
    ref=_ref("QUEUED_WEBHOOK"))

# The webhook is raised the moment the order is placed: scheduling alone decides whether it lands
# before the subscription (no fault needed).
EARLY_WEBHOOK = SimSpec(
    name="early-webhook", setup=lambda rt, w: _webhook_setup(rt, w, queue=False),
    starts=[Start(instance="pay-1", orchestration="Pay::Order", input="1")],
    signals=[Signal(instance="pay-1", name="paid", data={"txn": "t-1"}, at_ms=0)],
    ref=_ref("EARLY_WEBHOOK"))
EARLY_WEBHOOK_QUEUED = SimSpec(
    name="early-webhook-queued", setup=lambda rt, w: _webhook_setup(rt, w, queue=True),
    starts=[Start(instance="pay-1", orchestration="Pay::Order", input="1")],
    signals=[Signal(instance="pay-1", name="paid", data={"txn": "t-1"}, at_ms=0, kind="enqueue")],
    ref=_ref("EARLY_WEBHOOK_QUEUED"))


# --- 5b. two activities run in parallel, the second relying on the first's effect ----------------


def _auth_setup(rt, world, *, sequential: bool) -> None:
    @rt.register_activity("Card::Authorize")
    def authorize(ctx, oid):
        world.put_if_absent(f"auth:{oid}", True)
        return "authorized"

    @rt.register_activity("Card::Capture")
    def capture(ctx, oid):
        if not world.exists(f"auth:{oid}"):
            raise RuntimeError(f"capture of {oid} refused: no authorization")
        world.put_if_absent(f"captured:{oid}", True)
        return "captured"

    @rt.register_orchestration("Card::Pay")
    def pay(ctx, oid):
        if sequential:
            yield ctx.schedule_activity("Card::Authorize", oid)
            yield ctx.schedule_activity("Card::Capture", oid)
        else:  # BUG: assumes the activities run in the order they were scheduled
            results = yield ctx.all([ctx.schedule_activity("Card::Authorize", oid),
                                     ctx.schedule_activity("Card::Capture", oid)])
            for r in results:
                if "err" in r:
                    raise RuntimeError(r["err"])
        return "paid"


def every_payment_completes(result) -> str | None:
    bad = {i: f"{s.status}: {str(s.error).splitlines()[-1] if s.error else ''}" for i, s in result.statuses.items()
           if s.status != "Completed" and i not in result.budget_exhausted}
    return f"not completed: {bad}" if bad else None


_CARDS = [Start(instance="card-1", orchestration="Card::Pay", input="1")]
PARALLEL_CAPTURE = SimSpec(name="parallel-capture", setup=lambda rt, w: _auth_setup(rt, w, sequential=False),
                           starts=_CARDS, invariants=[every_payment_completes], ref=_ref("PARALLEL_CAPTURE"))
SEQUENTIAL_CAPTURE = SimSpec(name="sequential-capture", setup=lambda rt, w: _auth_setup(rt, w, sequential=True),
                             starts=_CARDS, invariants=[every_payment_completes], ref=_ref("SEQUENTIAL_CAPTURE"))


# =================================================================================================
# Helpers (what a user would write once in a conftest)
# =================================================================================================

QUIET = dict(deadline=None, database=None, suppress_health_check=list(HealthCheck))
SPECS: dict[str, SimSpec] = {name: value for name, value in dict(globals()).items() if isinstance(value, SimSpec)}
_HEADER = re.compile(r"^(\w+)( \[[^\]]*\])?( at step \d+)? \(seed (\d+)\): ")


@attrs.frozen
class Bug:
    name: str                  # the planted bug's spec
    fixed: str                 # its corrected twin
    checkers: tuple[str, ...]  # the checker(s) that may report it first
    says: tuple[str, ...]      # what the failures must mention
    faults: str = "all"        # `duroxide-sim run --faults`


BUGS = [
    Bug("DOUBLE_CHARGE", "CHARGE_ONCE", ("idempotency", "invariants"), ("'Shop::Charge'", "charged_cents")),
    Bug("NO_REFUND", "REFUNDS", ("invariants",), ("no_money_or_stock_kept_for_cancelled_orders", "never refunded")),
    Bug("DOUBLE_REFUND", "REFUND_ONCE", ("invariants",), ("never_refund_more_than_charged", "refunded 1000")),
    Bug("READS_WORLD", "READS_VIA_ACTIVITY", ("determinism",), ("Billing::Issue", "test_user_property_journeys.py:")),
    Bug("LATE_SUBSCRIBE", "QUEUED_WEBHOOK", ("liveness",), ("waits for event 'paid'", "before it subscribed")),
    Bug("EARLY_WEBHOOK", "EARLY_WEBHOOK_QUEUED", ("liveness",), ("waits for event 'paid'", "before it subscribed")),
    Bug("PARALLEL_CAPTURE", "SEQUENTIAL_CAPTURE", ("outcome", "idempotency", "invariants"),
        ("no authorization",), faults='{"rates": {"reorder": 0.5}}'),
]
BUG_IDS = [b.name for b in BUGS]
SEEDS = 20


def headers(text: str) -> list[str]:
    """The ``checker [instance] at step N (seed S): message`` lines of a report."""
    return [ln for ln in text.splitlines() if _HEADER.match(ln)]


def checker_of(header: str) -> str:
    return _HEADER.match(header).group(1)


def repro_lines(text: str) -> list[str]:
    return [ln[len("reproduce: "):] for ln in text.splitlines() if ln.startswith("reproduce: ")]


def parse_repro(repro: str) -> tuple[str, int, FaultPlan, dict[str, Any]]:
    """(ref, seed, plan, Simulation keywords) of a ``duroxide-sim reproduce ...`` line."""
    args = shlex.split(repro)
    assert args[:2] == ["duroxide-sim", "reproduce"], repro
    opt = {args[i]: args[i + 1] for i in range(3, len(args) - 1) if args[i].startswith("--")}
    kw: dict[str, Any] = {"provider": opt.get("--provider", "memory"), "nodes": int(opt.get("--nodes", 2))}
    if "--max-steps" in opt:
        kw["max_steps"] = int(opt["--max-steps"])
    return args[2], int(opt["--seed"]), FaultPlan.from_json(opt["--faults"]), kw


def render_all(result) -> str:
    return "\n\n".join(f.render() for f in result.failures)


def fails_with(result, checker: str) -> bool:
    return any(f.checker == checker for f in result.failures)


_ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def paste(repro: str, hash_seed: int, cwd: pathlib.Path) -> tuple[int, list[str], dict[str, Any]]:
    """Run a printed ``duroxide-sim reproduce ...`` line as a user pastes it (``python -m
    duroxide_sim`` is the same program), with ``--trace --json``: (exit code, trace lines, summary)."""
    args = shlex.split(repro)
    proc = subprocess.run([sys.executable, "-m", "duroxide_sim", *args[1:], "--trace", "--json"], capture_output=True,
                          text=True, cwd=cwd, env={**_ENV, "PYTHONHASHSEED": str(hash_seed)}, timeout=120)
    lines = proc.stdout.splitlines()
    assert lines, f"{repro}: exit {proc.returncode}, no output\n{proc.stderr[-2000:]}"
    return proc.returncode, lines[:-1], json.loads(lines[-1])


def pasted_headers(summary: dict[str, Any]) -> list[str]:
    out = []
    for f in summary["failures"]:
        inst = f" [{f['instance']}]" if f["instance"] else ""
        where = f" at step {f['step']}" if f["step"] is not None else ""
        out.append(f"{f['checker']}{inst}{where} (seed {summary['seed']}): {f['message']}")
    return out


def cli_run(name: str, directory: pathlib.Path, *, seeds: int = SEEDS, faults: str = "all") -> tuple[int, dict[str, Any]]:
    """``duroxide-sim run <dir> --json --seeds N --faults F`` on a scenario module whose SPEC is ours."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"journey_{name.lower()}.py").write_text(textwrap.dedent(f"""\
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from tests.sim.test_user_property_journeys import {name} as SPEC
        """))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["run", str(directory), "--json", "--seeds", str(seeds), "--faults", faults])
    doc = json.loads(out.getvalue())
    assert doc["load_errors"] == [], doc["load_errors"]
    [row] = doc["scenarios"]
    return code, row


@pytest.fixture(scope="module")
def cli_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, dict[str, Any]]]:
    """`run` of every planted bug, once for the module."""
    base = tmp_path_factory.mktemp("journeys")
    return {b.name: cli_run(b.name, base / b.name.lower(), faults=b.faults) for b in BUGS}


def _reported(row: dict[str, Any]) -> tuple[str, str, int, FaultPlan, dict[str, Any]]:
    """(first failure text, its header, seed, plan, Simulation keywords) of a failing row."""
    first = row["first_failure"]
    assert first and headers(first), row
    ref, seed, plan, kw = parse_repro(repro_lines(first)[0])
    return first, headers(first)[0], seed, plan, kw


def _original(row: dict[str, Any]) -> tuple[int, FaultPlan, dict[str, Any]]:
    """The seed's plan as it ran (before shrinking)."""
    text = row.get("unshrunk_failure") or row["first_failure"]
    _ref_, seed, plan, kw = parse_repro(repro_lines(text)[0])
    return seed, plan, kw


# =================================================================================================
# 1-5: every planted bug is caught, named, shrunk to a minimal plan, and reproduces
# =================================================================================================


@pytest.mark.parametrize("bug", BUGS, ids=BUG_IDS)
def test_planted_bug_is_caught_and_the_report_names_seed_and_plan(bug: Bug, cli_rows) -> None:
    code, row = cli_rows[bug.name]
    assert code == 1, f"{bug.name}: `run --seeds {SEEDS} --faults {bug.faults}` did not catch it: {row}"
    first, header, seed, plan, kw = _reported(row)
    assert checker_of(header) in bug.checkers, first
    assert seed == row["first_failing_seed"] and f"(seed {seed})" in header, first
    # the reproduce line names the seed and the plan, and is one pasteable line
    repro = repro_lines(first)[0]
    assert f"--seed {seed} " in repro and "--faults " in repro and bug.name in repro, repro
    # and what it names does fail, mentioning the cause
    result = run_and_check(Simulation(SPECS[bug.name], seed, plan, **kw))
    text = render_all(result)
    assert all(word in text for word in bug.says), text
    for f in result.failures:
        assert f"(seed {seed})" in f.render() and f"--faults {shlex.quote(plan.to_json())}" in f.render(), f.render()


@pytest.mark.parametrize("bug", BUGS, ids=BUG_IDS)
def test_shrunk_plan_is_no_larger_than_the_original_and_minimal(bug: Bug, cli_rows) -> None:
    code, row = cli_rows[bug.name]
    assert code == 1
    first, header, seed, plan, kw = _reported(row)
    checker = checker_of(header)
    oseed, oplan, okw = _original(row)
    assert oseed == seed
    original = run_and_check(Simulation(SPECS[bug.name], seed, oplan, **okw))
    assert fails_with(original, checker), render_all(original)
    if row.get("unshrunk_failure"):
        assert f"(shrunk: seed {seed}'s plan ({oplan.describe()}) injected {len(original.fired)} fault" in first, first
    # no larger than what the seed injected, and no random rates left
    assert plan.rates == {} and len(plan.script) <= len(original.fired), (plan.describe(), original.fired)
    shrunk = run_and_check(Simulation(SPECS[bug.name], seed, plan, **kw))
    assert fails_with(shrunk, checker), render_all(shrunk)
    # minimal: without any single one of its faults, that failure is gone
    removable = []
    for entry in plan.script:
        smaller = FaultPlan.scripted([e for e in plan.script if e != entry], plan.until_ms)
        if fails_with(run_and_check(Simulation(SPECS[bug.name], seed, smaller, **kw)), checker):
            removable.append(entry)
    assert not removable, (
        f"{bug.name} seed {seed}: `run` reported the shrunk plan {plan.describe()} ({len(plan.script)} faults, shrunk "
        f"from {len(original.fired)} injected), but without any one of {removable} it still fails with {checker!r}: "
        "the reported plan is not minimal")


@pytest.mark.parametrize("bug", BUGS, ids=BUG_IDS)
def test_shrunk_failure_reproduces_byte_identically_in_process_and_across_hash_seeds(bug: Bug, cli_rows, tmp_path) -> None:
    code, row = cli_rows[bug.name]
    assert code == 1
    first, header, seed, plan, kw = _reported(row)
    a = run_and_check(Simulation(SPECS[bug.name], seed, plan, **kw))
    b = run_and_check(Simulation(SPECS[bug.name], seed, plan, **kw))
    assert [f.render() for f in a.failures] == [f.render() for f in b.failures]
    assert headers(render_all(a))[0] == header, (header, render_all(a))
    assert list(a.trace) == list(b.trace) and a.trace_hash == b.trace_hash
    repro = repro_lines(first)[0]
    for hash_seed in (0, 1):
        code, trace, summary = paste(repro, hash_seed, tmp_path)
        assert code == 1, summary
        assert pasted_headers(summary) == headers(render_all(a)), (hash_seed, summary["failures"])
        assert trace == list(a.trace), (
            f"PYTHONHASHSEED={hash_seed}: trace differs from the in-process run at line "
            f"{next((i for i, (x, y) in enumerate(zip(trace, a.trace, strict=False)) if x != y), min(len(trace), len(a.trace)))}")
        assert summary["trace_sha256"] == a.trace_hash


@pytest.mark.parametrize("bug", BUGS, ids=BUG_IDS)
def test_corrected_workflow_passes_the_same_seeds_and_plans(bug: Bug, cli_rows, tmp_path) -> None:
    code, row = cli_rows[bug.name]
    assert code == 1
    first, header, seed, plan, kw = _reported(row)
    oseed, oplan, okw = _original(row)
    fixed = SPECS[bug.fixed]
    for p in (plan, oplan):
        result = run_and_check(Simulation(fixed, seed, p, **kw))
        assert result.ok, render_all(result)
    fixed_code, fixed_row = cli_run(bug.fixed, tmp_path / "fixed", faults=bug.faults)
    assert fixed_code == 0 and not fixed_row["failures"], fixed_row.get("first_failure")


def test_same_seed_and_plan_give_the_same_trace_on_sqlite_across_hash_seeds(tmp_path) -> None:
    """The byte-identical trace holds on the SQLite provider too (the repro line carries it)."""
    plan = FaultPlan.all(0.05)
    seed = next(s for s in range(20) if not run_and_check(Simulation(DOUBLE_CHARGE, s, plan, provider="sqlite")).ok)
    a = run_and_check(Simulation(DOUBLE_CHARGE, seed, plan, provider="sqlite"))
    b = run_and_check(Simulation(DOUBLE_CHARGE, seed, plan, provider="sqlite"))
    assert list(a.trace) == list(b.trace)
    repro = a.failures[0].repro
    assert "--provider sqlite" in repro, repro
    for hash_seed in (0, 1):
        code, trace, summary = paste(repro, hash_seed, tmp_path)
        assert code == 1 and trace == list(a.trace), hash_seed
        assert pasted_headers(summary) == headers(render_all(a))


# --- 1. payment saga: which faults re-execute the charge ---------------------------------------


def test_double_charge_shows_under_crash_after_effect_alone_and_is_blamed_on_charge() -> None:
    hits = []
    for seed in range(10):
        result = run_and_check(Simulation(DOUBLE_CHARGE, seed, FaultPlan.only("crash_after_effect", rate=0.2)))
        hits += [f for f in result.failures if f.checker == "idempotency"]
    assert hits, "ten seeds with crash_after_effect at 20 % never re-executed a charge"
    for f in hits:
        assert "activity 'Shop::Charge' changed the world when re-executed" in f.message, f.render()
        assert f.instance in ("order-0", "order-1") and f.step is not None, f.render()


def test_duplicate_completions_alone_never_charge_twice() -> None:
    """README: duplicate completions of any kind are dropped - the `duplicate` fault re-delivers a
    completion, not the activity, so even the non-idempotent Charge is safe from it alone."""
    injected = 0
    for seed in range(15):
        result = run_and_check(Simulation(DOUBLE_CHARGE, seed, FaultPlan.only("duplicate", rate=0.5)))
        injected += result.faults_injected.get("duplicate", 0)
        assert result.ok, render_all(result)
    assert injected > 0


# --- 3. orchestration code reading a module-level global -----------------------------------------


def test_module_global_read_in_orchestration_is_caught_and_the_pasted_repro_fails_the_same(tmp_path) -> None:
    FLAGS.clear()  # the state a fresh process starts with
    result = run_and_check(Simulation(READS_GLOBAL, 3, FaultPlan.none()))
    FLAGS.clear()
    det = [f for f in result.failures if f.checker == "determinism"]
    assert det and det[0].instance == "job", render_all(result)
    assert "Flags::Work" in det[0].message and '"slow"' in det[0].message and '"fast"' in det[0].message, det[0].render()
    assert "test_user_property_journeys.py:" in det[0].message  # the source line of the yield
    # the repro, pasted (a fresh process: the flag starts unset), reports it the same way
    code, _trace, summary = paste(det[0].repro, 0, tmp_path)
    assert code == 1 and pasted_headers(summary) == headers(render_all(result)), summary["failures"]


def test_world_read_in_orchestration_is_caught_by_cache_verification_under_faults() -> None:
    """Every seed, with or without faults: the live turn or the from-scratch replay disagrees
    with the recorded ``Billing::Issue`` input."""
    for seed in range(5):
        for plan in (FaultPlan.none(), FaultPlan.all(0.05)):
            result = run_and_check(Simulation(READS_WORLD, seed, plan))
            det = [f for f in result.failures if f.checker == "determinism"]
            assert det and all(f.instance == "inv-a" for f in det), (seed, plan.describe(), render_all(result))
            fixed = run_and_check(Simulation(READS_VIA_ACTIVITY, seed, plan))
            assert fixed.ok, render_all(fixed)


# --- 4. set iteration order ----------------------------------------------------------------------


def test_set_order_is_invisible_to_the_in_process_checks_as_documented() -> None:
    """testing/hashseed.py: within one process set iteration is stable, so neither the replay
    check nor the same-seed repeat check can see it."""
    for seed in range(3):
        for plan in (FaultPlan.none(), FaultPlan.all(0.05)):
            result = run_and_check(Simulation(SET_ORDER, seed, plan), check_repeat=True)
            assert result.ok, render_all(result)


def test_set_order_is_caught_by_the_hash_seed_check_with_a_working_reproduce_line(tmp_path) -> None:
    ref = SET_ORDER.ref
    message = check_hash_seed_independence(ref, 0, hash_seeds=(0, 1), cwd=str(tmp_path))
    assert message is not None, "the rollout's order depends on the string hash seed, yet the check saw no difference"
    assert f"{ref} seed 0: the trace depends on PYTHONHASHSEED" in message, message
    assert "iteration over sets or hash-ordered collections" in message, message
    # the printed command, pasted with its hash seed, gives the hash the message reports for it
    m = re.search(r"\(0: ([0-9a-f]{16}), 1: ([0-9a-f]{16})\).*Reproduce: PYTHONHASHSEED=1 (duroxide-sim reproduce .*)$",
                  message, re.S)
    assert m, message
    args = shlex.split(m.group(3))
    proc = subprocess.run([sys.executable, "-m", "duroxide_sim", *args[1:], "--json"], capture_output=True, text=True,
                          cwd=tmp_path, env={**_ENV, "PYTHONHASHSEED": "1"}, timeout=120)
    summary = json.loads([ln for ln in proc.stdout.splitlines() if ln.startswith("{")][-1])
    assert summary["trace_sha256"].startswith(m.group(2)), (summary["trace_sha256"], message)
    # with faults as well, and the sorted rollout is independent of the hash seed
    faults = FaultPlan.all(0.05).to_json()
    assert check_hash_seed_independence(ref, 1, faults=faults, hash_seeds=(0, 1), cwd=str(tmp_path)) is not None
    assert check_hash_seed_independence(SORTED_ORDER.ref, 0, hash_seeds=(0, 1), cwd=str(tmp_path)) is None
    assert check_hash_seed_independence(SORTED_ORDER.ref, 1, faults=faults, hash_seeds=(0, 1), cwd=str(tmp_path)) is None


# --- 5. the webhook raised before the subscription ---------------------------------------------


def test_early_webhook_is_a_scheduling_bug_reported_without_any_fault() -> None:
    """Raised together with the start, the positional event is dropped on most schedules: the
    liveness checker says so on fault-free seeds; the queue version never loses it."""
    caught = 0
    for seed in range(10):
        result = run_and_check(Simulation(EARLY_WEBHOOK, seed, FaultPlan.none()))
        live = [f for f in result.failures if f.checker == "liveness"]
        if live:
            caught += 1
            assert live[0].instance == "pay-1" and "raised before it subscribed" in live[0].message
            assert result.statuses["pay-1"].status == "Running"
        fixed = run_and_check(Simulation(EARLY_WEBHOOK_QUEUED, seed, FaultPlan.none()))
        assert fixed.ok and fixed.statuses["pay-1"].output == {"txn": "t-1"}, render_all(fixed)
    assert caught >= 5, f"only {caught}/10 fault-free seeds lost the early webhook"


def test_late_subscribe_needs_a_fault_and_passes_without_one() -> None:
    for seed in range(10):
        result = run_and_check(Simulation(LATE_SUBSCRIBE, seed, FaultPlan.none()))
        assert result.ok, render_all(result)


# =================================================================================================
# 6. correct workflows pass everywhere
# =================================================================================================

CORRECT = ["CHARGE_ONCE", "REFUNDS", "REFUND_ONCE", "READS_VIA_ACTIVITY", "SORTED_ORDER", "QUEUED_WEBHOOK",
           "EARLY_WEBHOOK_QUEUED", "SEQUENTIAL_CAPTURE"]


@pytest.mark.parametrize("name", CORRECT)
def test_correct_workflow_passes_30_seeds_with_all_faults_and_with_swarm(name: str) -> None:
    spec = SPECS[name]
    bad, injected = [], 0
    for seed in range(30):
        for plan in (FaultPlan.all(0.05), "swarm"):
            result = run_and_check(Simulation(spec, seed, plan), check_repeat=seed < 2)
            injected += sum(result.faults_injected.values())
            bad += [f.render() for f in result.failures]
    assert not bad, bad[:2]
    assert injected > 30, f"only {injected} faults injected over 60 runs"


@pytest.mark.parametrize("name", ["CHARGE_ONCE", "REFUNDS", "QUEUED_WEBHOOK"])
def test_correct_workflow_passes_on_sqlite_too(name: str) -> None:
    for seed in range(3):
        result = run_and_check(Simulation(SPECS[name], seed, FaultPlan.all(0.05), provider="sqlite"))
        assert result.ok, render_all(result)


def test_simulate_fixture_passes_the_corrected_saga(simulate) -> None:
    results = simulate(CHARGE_ONCE)  # --sim-runs seeds (20), --sim-faults all
    assert len(results) == 20 and all(r.ok for r in results)
    results = simulate(REFUNDS, seeds=range(30), faults="swarm")
    assert len(results) == 30 and all(r.ok for r in results)


# =================================================================================================
# Hypothesis: @simulation_test finds each bug; its printed reproduction works when pasted
# =================================================================================================

HYPOTHESIS_BUGS = [b for b in BUGS if b.name in ("DOUBLE_CHARGE", "NO_REFUND", "DOUBLE_REFUND", "LATE_SUBSCRIBE",
                                                  "READS_WORLD", "PARALLEL_CAPTURE")]


def _search(spec: SimSpec, examples: int = 150, **kw: Any):
    @hypothesis_seed(0)
    @simulation_test(spec, hypothesis_settings=settings(max_examples=examples, **QUIET), **kw)
    def test_property(result) -> None:
        pass

    return test_property


@pytest.mark.parametrize("bug", HYPOTHESIS_BUGS, ids=[b.name for b in HYPOTHESIS_BUGS])
def test_simulation_test_finds_the_bug_with_a_minimal_plan_that_reproduces_when_pasted(bug: Bug, tmp_path) -> None:
    spec = SPECS[bug.name]
    # A bug that needs two faults together takes a longer search, and how much longer depends on
    # the Hypothesis version (6.155 found DOUBLE_REFUND within 150 examples, 6.170 needed ~300).
    examples = 600 if bug.name == "DOUBLE_REFUND" else 150
    with pytest.raises(AssertionError) as err:
        _search(spec, examples)()
    report = str(err.value)
    assert headers(report) and checker_of(headers(report)[0]) in bug.checkers, report
    ref, seed, plan, kw = parse_repro(repro_lines(report)[0])
    assert ref == spec.ref and plan.rates == {} and len(plan.script) <= 6, report
    result = run_and_check(Simulation(spec, seed, plan, **kw))
    checker = checker_of(headers(report)[0])
    assert fails_with(result, checker) and all(w in render_all(result) for w in bug.says), render_all(result)
    for entry in plan.script:  # minimal
        smaller = FaultPlan.scripted([e for e in plan.script if e != entry], plan.until_ms)
        assert not fails_with(run_and_check(Simulation(spec, seed, smaller, **kw)), checker), (plan.describe(), entry)
    code, _trace, summary = paste(repro_lines(report)[0], 7, tmp_path)
    assert code == 1 and headers(report)[0] in pasted_headers(summary), (report, summary["failures"])
    # the corrected workflow passes the same search
    seen: list[int] = []

    @hypothesis_seed(0)
    @simulation_test(SPECS[bug.fixed], hypothesis_settings=settings(max_examples=150, **QUIET))
    def test_fixed(result) -> None:
        seen.append(sum(result.faults_injected.values()))

    test_fixed()
    assert sum(seen) > 0


# =================================================================================================
# The pytest plugin: `simulate` fails with a pytest line that reproduces when pasted
# =================================================================================================


def test_simulate_fixture_repro_line_reproduces_and_the_fix_passes_it(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_orders=f'''
from duroxide_sim.cli import load_spec

BUGGY = load_spec({NO_REFUND.ref!r})
FIXED = load_spec({REFUNDS.ref!r})

def test_orders(simulate):
    simulate(BUGGY)

def test_orders_fixed(simulate):
    simulate(FIXED)
''')
    first = pytester.runpytest("-p", "no:cacheprovider", "--sim-runs", "20", "--sim-faults", "swarm")
    first.assert_outcomes(failed=1, passed=1)
    out = first.stdout.str()
    failure = re.search(r"invariants \(seed (\d+)\): no_money_or_stock_kept_for_cancelled_orders: [^\n]*", out)
    assert failure, out[-3000:]
    # (the swarm plan is shrunk first: the line replays the shrunk plan, with --sim-plan)
    line = re.search(r"^pytest test_orders\.py::test_orders --sim-seed (\d+) --sim-plan (.+)$", out, re.M)
    assert line and line.group(1) == failure.group(1), out[-3000:]
    pasted = shlex.split(line.group(0))[1:]
    again = pytester.runpytest("-p", "no:cacheprovider", *pasted)
    again.assert_outcomes(failed=1)
    assert failure.group(0) in again.stdout.str()
    fixed_args = [a.replace("test_orders.py::test_orders", "test_orders.py::test_orders_fixed") for a in pasted]
    pytester.runpytest("-p", "no:cacheprovider", *fixed_args).assert_outcomes(passed=1)
