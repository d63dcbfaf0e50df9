"""Audit of the simulation harness: every fault kind and every checker, planted bug vs correct twin.

The project's standard: "Every checker and fault type has a test that plants the bug it exists
to catch and shows that it is caught, and a test that shows a correct workflow passes", and
"the same seed must give the byte-identical trace".

Part 1 (one parametrized case per fault kind of ``FAULT_KINDS``): the planted bug is found with
ONLY that kind enabled, within a small fixed seed budget (searched in order, so deterministic);
the test also asserts the mechanism (the fault of that kind actually fired where it matters),
that the same seed without faults passes (the fault is what exposes it), and that the failing
seed reruns to the byte-identical trace and the same verdict. Its correct twin passes the same
seeds with the same plan, the fault firing there too.

Part 2 (one case per checker of ``CHECKERS``, plus the repeat check and ``budget_exhausted``):
a planted bug that only that checker reports (every failure is attributed to its name), and a
correct twin that it passes.

Part 3: gaps found by the audit, asserting the behaviour each fault kind and checker exists for.

Specs are module-level so their repro lines resolve:
``duroxide-sim reproduce tests/sim/test_fault_and_checker_audit.py:NAME --seed N --faults ...``.

Found by this audit and fixed (each test failed before): a duplicate completion always landed
in the original's batch, so no fault exercised the history half of the dedup (every other one
now comes later); a fired reorder fault took the oldest item about half the time (recorded, yet
nothing reordered); an instance only the faulty run created was not reported; the shipped
instance_actor scenario failed an invariant on a poisoned actor.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import attrs
import pytest

from duroxide_sim import RuntimeOptions
from duroxide_sim.core import replay
from duroxide_sim.core.events import ActivityCompleted, ActivityCompletedMsg, OrchestrationCompleted
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.sim.checkers import CHECKERS, run_and_check
from duroxide_sim.sim.faults import FAULT_KINDS, FaultPlan
from duroxide_sim.sim.harness import Signal, Simulation, SimSpec, Start
from tests.sim import specs

REF = "tests/sim/test_fault_and_checker_audit.py"


# =================================================================================================
# helpers
# =================================================================================================


def _records(result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.trace]


def _checkers(result) -> set[str]:
    return {f.checker for f in result.failures}


def _first(spec, plan, seeds, checker, **kw):
    """(seed, result, failure) of the first seed in 0..seeds-1 with a ``checker`` failure."""
    for seed in range(seeds):
        result = run_and_check(Simulation(spec, seed, plan, **kw))
        hits = [f for f in result.failures if f.checker == checker]
        if hits:
            return seed, result, hits[0]
    return None, None, None


def _renders(result) -> list[str]:
    return [f.render() for f in result.failures]


def _execs(recs, instance, activity):
    """Indexes (into recs) of the work_exec records of ``activity`` for ``instance``."""
    return [i for i, r in enumerate(recs)
            if r["op"] == "work_exec" and r["instance"] == instance and r["activity"] == activity]


# =================================================================================================
# Specs: planted bugs and their correct twins
# =================================================================================================

# --- a non-idempotent shipping activity (re-delivery faults: transient, lock_expiry, crash,
#     crash_after_effect). No continue-as-new, so (instance, activity id) names one delivery. ----


def _ship_setup(rt, world, *, idempotent: bool):
    @rt.register_activity("Audit::activity::charge")
    def charge(ctx, order):
        world.put_if_absent(f"charged:{order}", True)
        return "charged"

    @rt.register_activity("Audit::activity::ship")
    def ship(ctx, order):
        if idempotent:
            if world.put_if_absent(f"shipped:{order}", True):
                world.append("shipments", order)
        else:
            world.append("shipments", order)  # BUG: a re-delivery ships the order again
        return "shipped"

    @rt.register_orchestration("Audit::orchestration::order")
    def order(ctx, oid):
        a = yield ctx.schedule_activity("Audit::activity::charge", oid)
        b = yield ctx.schedule_activity("Audit::activity::ship", oid)
        return [a, b]


_SHIP_STARTS = [Start(instance=f"o{i}", orchestration="Audit::orchestration::order", input=i) for i in range(4)]
SHIP_NON_IDEMPOTENT = SimSpec(name="audit-ship-non-idempotent", setup=lambda rt, w: _ship_setup(rt, w, idempotent=False),
                              starts=_SHIP_STARTS, ref=f"{REF}:SHIP_NON_IDEMPOTENT")
SHIP_OK = SimSpec(name="audit-ship-ok", setup=lambda rt, w: _ship_setup(rt, w, idempotent=True),
                  starts=_SHIP_STARTS, ref=f"{REF}:SHIP_OK")


# --- commit_lost: the client's re-sent vote is de-duplicated (twin of specs.VOTES_COUNTING) ----


def _votes_dedup_setup(rt, world):
    @rt.register_orchestration("Votes::orchestration::tally")
    def tally(ctx, needed):
        votes: list = []
        while len(votes) < needed:
            vote = yield ctx.dequeue_event("vote")
            if vote not in votes:  # a vote re-sent after a lost commit report counts once
                votes.append(vote)
        return sorted(votes)


VOTES_DEDUP = SimSpec(
    name="audit-votes-dedup", setup=_votes_dedup_setup, ref=f"{REF}:VOTES_DEDUP",
    starts=[Start(instance="poll", orchestration="Votes::orchestration::tally", input=3)],
    signals=[Signal(instance="poll", name="vote", data=v, at_ms=10 + i, kind="enqueue") for i, v in enumerate("abc")],
)


# --- reorder: two concurrent writes whose result does not depend on the order (twin of
#     specs.REORDER_ASSUMPTION; still two completions in flight, so reorder has opportunities) ---


def _reorder_tolerant_setup(rt, world):
    @rt.register_activity("Race::activity::write")
    def write(ctx, who):
        world.put(f"wrote:{who}", True)
        return who

    @rt.register_orchestration("Race::orchestration::two_writers")
    def two_writers(ctx, _):
        done = yield ctx.all([ctx.schedule_activity("Race::activity::write", "A"),
                              ctx.schedule_activity("Race::activity::write", "B")])
        return sorted(r["ok"] for r in done)


REORDER_TOLERANT = SimSpec(name="audit-reorder-tolerant", setup=_reorder_tolerant_setup, ref=f"{REF}:REORDER_TOLERANT",
                           starts=[Start(instance="w", orchestration="Race::orchestration::two_writers")])


# --- delay: a deadline far beyond any message delay, the approval sent well after the start
#     (twin of specs.APPROVAL_DEADLINE) ---------------------------------------------------------


def _approval_patient_setup(rt, world):
    @rt.register_orchestration("Approval::orchestration::request")
    def request(ctx, _):
        winner = yield ctx.select2(ctx.wait_for_event("approve"), ctx.schedule_timer(3_600_000))
        return "approved" if winner.index() == 0 else "auto-rejected"


APPROVAL_PATIENT = SimSpec(
    name="audit-approval-patient", setup=_approval_patient_setup, ref=f"{REF}:APPROVAL_PATIENT",
    starts=[Start(instance="req", orchestration="Approval::orchestration::request")],
    signals=[Signal(instance="req", name="approve", data=True, at_ms=60_000)],
)


# --- duplicate: an activity result consumed, then a timer (the planted bug is in the engine) ---


def _dup_setup(rt, world):
    @rt.register_activity("Dup::activity::lookup")
    def lookup(ctx, x):
        return x * 10

    @rt.register_orchestration("Dup::orchestration::main")
    def main(ctx, x):
        a = yield ctx.schedule_activity("Dup::activity::lookup", x)
        yield ctx.schedule_timer(60_000)
        b = yield ctx.schedule_activity("Dup::activity::lookup", x + 1)
        return a + b


_DUP_STARTS = [Start(instance=f"d{i}", orchestration="Dup::orchestration::main", input=i) for i in range(3)]
#: Two spec objects (the fault-free twin is cached per spec): one run under a planted engine bug,
#: one with the real engine.
DUP_PLANTED = SimSpec(name="audit-dup-planted", setup=_dup_setup, starts=_DUP_STARTS, ref=f"{REF}:DUP_PLANTED")
DUP_OK = SimSpec(name="audit-dup-ok", setup=_dup_setup, starts=_DUP_STARTS, ref=f"{REF}:DUP_OK")


def _engine_without_dedup(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted engine bug: duplicate completions are never filtered (SPEC §3.3 step 2)."""
    monkeypatch.setattr(replay, "_already_completed", lambda sid, completed: False)


def _engine_dedup_forgets_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted engine bug: duplicates are filtered within a batch only; a completion whose
    schedule already completed in persisted history is applied again (SPEC §3.3 step 2, first
    clause - the production case: a redelivered completion arriving in a later turn)."""
    monkeypatch.setattr(replay, "_already_completed", lambda sid, completed: sid in completed.batch)


# =================================================================================================
# Part 1: one case per fault kind
# =================================================================================================


def _mech_transient(recs, result, failure) -> None:
    # An activity ack failed before doing anything; the worker abandoned it and it ran again.
    assert any(r["op"] == "fault" and r["kind"] == "transient" and r["operation"] == "ack_work_item" for r in recs)
    assert any(r["op"] == "work_ack" and r["committed"] is False for r in recs)
    assert len(_execs(recs, failure.instance, "Audit::activity::ship")) >= 2


def _mech_lock_expiry(recs, result, failure) -> None:
    # The clock jumped past the worker lock while the blamed ship was fetched and not acked.
    runs = _execs(recs, failure.instance, "Audit::activity::ship")
    assert len(runs) >= 2, runs
    fetch = next(i for i, r in enumerate(recs) if r["op"] == "work_fetch" and r["instance"] == failure.instance
                 and r["activity"] == "Audit::activity::ship")
    assert any(r["op"] == "lock_expiry" for r in recs[fetch:runs[1]]), "no lock expiry between fetch and re-execution"


def _mech_crash(recs, result, failure) -> None:
    # A process crashed with work in flight between the two executions of the blamed ship.
    runs = _execs(recs, failure.instance, "Audit::activity::ship")
    assert len(runs) >= 2, runs
    assert any(r["op"] == "crash" and r["reason"] == "injected crash" and r["lost_work"] >= 1
               for r in recs[runs[0]:runs[1]])


def _mech_crash_after_effect(recs, result, failure) -> None:
    runs = _execs(recs, failure.instance, "Audit::activity::ship")
    assert len(runs) >= 2, runs
    nxt = [r for r in recs[runs[0] + 1:runs[0] + 3] if r["op"] == "crash"]
    assert nxt and "after activity side effect" in nxt[0]["reason"], recs[runs[0]:runs[0] + 3]


def _mech_commit_lost(recs, result, failure) -> None:
    # A vote's enqueue committed, then reported failure; the client re-sent it.
    assert any(a["op"] == "fault" and a["kind"] == "commit_lost" and a["operation"] == "enqueue_for_orchestrator"
               and b["op"] == "client_retry" and b["instance"] == "poll" for a, b in zip(recs, recs[1:], strict=False))


def _mech_duplicate(recs, result, failure) -> None:
    assert any(r["op"] == "fault" and r["kind"] == "duplicate" and r["operation"] == "ack_work_item" for r in recs)


def _mech_reorder(recs, result, failure) -> None:
    assert any(r["op"] == "fault" and r["kind"] == "reorder" for r in recs)
    # The write that finished last in the fault-free run did not finish last here.
    assert result.world.state["last_writer"] == "A"


def _mech_delay(recs, result, failure) -> None:
    # The approval (not the start) was the delayed client message.
    assert any(a["op"] == "fault" and a["kind"] == "delay" and b["op"] == "client" and b["what"] == "raise"
               for a, b in zip(recs, recs[1:], strict=False))


@attrs.frozen
class KindCase:
    kind: str
    planted: SimSpec
    correct: SimSpec
    rate: float
    seeds: int  # the seed budget 0..seeds-1 (the planted search and the twin both use it)
    checker: str
    culprit: tuple[str, ...]
    mechanism: Callable[..., None]
    engine_bug: Callable[[pytest.MonkeyPatch], None] | None = None


KIND_CASES = [
    KindCase("transient", SHIP_NON_IDEMPOTENT, SHIP_OK, 0.2, 10, "idempotency",
             ("'Audit::activity::ship' changed the world when re-executed", "key 'shipments'"), _mech_transient),
    KindCase("commit_lost", specs.VOTES_COUNTING, VOTES_DEDUP, 0.3, 8, "outcome",
             ("differs from fault-free ('Completed', ['a', 'b', 'c'])",), _mech_commit_lost),
    KindCase("lock_expiry", SHIP_NON_IDEMPOTENT, SHIP_OK, 0.2, 12, "idempotency",
             ("'Audit::activity::ship' changed the world when re-executed", "key 'shipments'"), _mech_lock_expiry),
    KindCase("crash", SHIP_NON_IDEMPOTENT, SHIP_OK, 0.05, 8, "idempotency",
             ("'Audit::activity::ship' changed the world when re-executed", "key 'shipments'"), _mech_crash),
    KindCase("crash_after_effect", SHIP_NON_IDEMPOTENT, SHIP_OK, 0.3, 8, "idempotency",
             ("'Audit::activity::ship' changed the world when re-executed", "key 'shipments'"), _mech_crash_after_effect),
    KindCase("duplicate", DUP_PLANTED, DUP_OK, 0.5, 8, "well_formed",
             ("applied twice",), _mech_duplicate, engine_bug=_engine_without_dedup),
    KindCase("reorder", specs.REORDER_ASSUMPTION, REORDER_TOLERANT, 0.5, 12, "outcome",
             ("('Completed', 'A') differs from fault-free ('Completed', 'B')",), _mech_reorder),
    KindCase("delay", specs.APPROVAL_DEADLINE, APPROVAL_PATIENT, 0.5, 8, "outcome",
             ("'auto-rejected'", "'approved'"), _mech_delay),
]


def test_every_fault_kind_has_a_case() -> None:
    assert [c.kind for c in KIND_CASES] == list(FAULT_KINDS)


@pytest.mark.parametrize("case", KIND_CASES, ids=lambda c: c.kind)
def test_fault_kind_alone_exposes_its_planted_bug(case: KindCase, monkeypatch: pytest.MonkeyPatch) -> None:
    if case.engine_bug is not None:
        case.engine_bug(monkeypatch)
    plan = FaultPlan.only(case.kind, rate=case.rate)
    seed, result, failure = _first(case.planted, plan, case.seeds, case.checker)
    assert result is not None, f"{case.kind} alone found no {case.checker} failure in seeds 0..{case.seeds - 1}"
    for text in case.culprit:
        assert text in failure.message, failure.render()
    assert failure.repro.startswith(f"duroxide-sim reproduce {case.planted.ref} --seed {seed} ")
    # Only this kind was enabled, and it is what fired.
    assert set(result.faults_injected) == {case.kind}, result.faults_injected
    case.mechanism(_records(result), result, failure)
    # Without the fault the same seed passes: the fault is what exposes the bug.
    assert run_and_check(Simulation(case.planted, seed, FaultPlan.none())).ok
    # Same seed, byte-identical trace and the same verdict.
    again = run_and_check(Simulation(case.planted, seed, plan))
    assert list(again.trace) == list(result.trace) and again.trace_hash == result.trace_hash
    assert _renders(again) == _renders(result)


@pytest.mark.parametrize("case", KIND_CASES, ids=lambda c: c.kind)
def test_correct_twin_passes_the_same_seeds_with_only_that_kind(case: KindCase) -> None:
    plan = FaultPlan.only(case.kind, rate=case.rate)
    fired = 0
    for seed in range(case.seeds):
        result = run_and_check(Simulation(case.correct, seed, plan))
        assert result.ok, _renders(result)
        assert set(result.faults_injected) <= {case.kind}
        fired += result.faults_injected.get(case.kind, 0)
    assert fired > 0, f"{case.kind} never fired on the correct twin: the pass proves nothing"


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_a_scripted_fault_fires_exactly_at_its_opportunity(kind: str) -> None:
    """``FaultPlan.scripted([(2, kind)])`` injects exactly one fault, at the 2nd opportunity of
    that kind, and records it (the form shrunk plans and repro lines use)."""
    spec = specs.APPROVAL_DEADLINE if kind == "delay" else specs.ORDERS_OK  # (delay: its 2nd client message)
    result = Simulation(spec, 0, FaultPlan.scripted([(2, kind)])).run()
    assert result.fired == [(2, kind)]
    assert result.faults_injected == {kind: 1}
    assert [r["kind"] for r in _records(result) if r["op"] == "fault"] == [kind]


# --- transient: also a runtime/provider-level plant only it exposes -----------------------------


def test_transient_alone_exposes_a_provider_whose_abandon_loses_the_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted provider bug: ``abandon_work_item`` deletes the item instead of releasing it.
    Only a failed activity ack leads to an abandon, so transient faults expose it (the
    instance waits forever) and the liveness checker names the stuck activity; without
    faults, or with crashes (which abandon nothing), the same seeds pass."""

    def lossy_abandon(self, lock_token, delay_ms=None, ignore_attempt=False):
        with self._lock:
            row = self._work_row_for(lock_token, self._now(), "abandon_work_item", need_live=False)
            self._remove_work_row(row)  # BUG: dropped, not released

    monkeypatch.setattr(InMemoryProvider, "abandon_work_item", lossy_abandon)
    seed, result, failure = _first(SHIP_OK, FaultPlan.only("transient", rate=0.2), 10, "liveness")
    assert result is not None, "transient found no liveness failure in seeds 0..9"
    assert "stuck: ActivityScheduled" in failure.message and "never completed" in failure.message
    assert any(r["op"] == "fault" and r["kind"] == "transient" and r["operation"] == "ack_work_item"
               for r in _records(result))
    assert run_and_check(Simulation(SHIP_OK, seed, FaultPlan.none())).ok
    assert run_and_check(Simulation(SHIP_OK, seed, FaultPlan.only("crash", rate=0.05))).ok


# =================================================================================================
# Part 2: one case per checker
# =================================================================================================

# --- determinism (replay): different actions on replay -----------------------------------------


def _replay_branch_setup(rt, world, *, planted: bool):
    @rt.register_activity("Det::activity::step")
    def step(ctx, x):
        return x

    @rt.register_orchestration("Det::orchestration::main")
    def main(ctx, x):
        yield ctx.schedule_activity("Det::activity::step", "a")
        if planted and not ctx.is_replaying():  # BUG: schedules work only when not replaying
            yield ctx.schedule_activity("Det::activity::step", "metrics")
        yield ctx.schedule_timer(1_000)
        yield ctx.schedule_activity("Det::activity::step", "b")
        return x


_DET_STARTS = [Start(instance=f"z{i}", orchestration="Det::orchestration::main", input=i) for i in range(2)]
REPLAY_BRANCH = SimSpec(name="audit-replay-branch", setup=lambda rt, w: _replay_branch_setup(rt, w, planted=True),
                        starts=_DET_STARTS, fault_transparent=False, ref=f"{REF}:REPLAY_BRANCH")
REPLAY_OK = SimSpec(name="audit-replay-ok", setup=lambda rt, w: _replay_branch_setup(rt, w, planted=False),
                    starts=_DET_STARTS, ref=f"{REF}:REPLAY_OK")

# --- repeat (same seed, same trace): hidden state that survives between runs ------------------

_LEAK = {"n": 0}


def _leak_setup(rt, world, *, planted: bool):
    @rt.register_activity("Leak::activity::next_number")
    def next_number(ctx, _):
        if planted:
            _LEAK["n"] += 1  # BUG: process-global counter, survives across runs of a seed
            return _LEAK["n"]
        return world.incr("invoice-seq")  # the world is fresh for every run

    @rt.register_orchestration("Leak::orchestration::invoice")
    def invoice(ctx, _):
        return (yield ctx.schedule_activity("Leak::activity::next_number", None))


_LEAK_STARTS = [Start(instance="inv", orchestration="Leak::orchestration::invoice")]
LEAKY = SimSpec(name="audit-leaky", setup=lambda rt, w: _leak_setup(rt, w, planted=True), starts=_LEAK_STARTS,
                ref=f"{REF}:LEAKY")
NOT_LEAKY = SimSpec(name="audit-not-leaky", setup=lambda rt, w: _leak_setup(rt, w, planted=False), starts=_LEAK_STARTS,
                    ref=f"{REF}:NOT_LEAKY")

# --- liveness: a provider that loses child completions (specs.STUCK_CHILD + its plant) vs a
#     correct run; a loop that never waits (no quiescence) vs one that does ----------------------


def _unique_child_setup(rt, world):
    @rt.register_orchestration("Stuck::orchestration::child")
    def child(ctx, x):
        yield ctx.schedule_timer(10)
        return x

    @rt.register_orchestration("Stuck::orchestration::parent")
    def parent(ctx, x):
        return (yield ctx.schedule_sub_orchestration_with_id("Stuck::orchestration::child", f"{ctx.instance_id}::child", x))


UNIQUE_CHILD = SimSpec(name="audit-unique-child", setup=_unique_child_setup, fault_transparent=False, ref=f"{REF}:UNIQUE_CHILD",
                       starts=[Start(instance=f"p{i}", orchestration="Stuck::orchestration::parent", input=i) for i in range(2)])


def _spin_setup(rt, world, *, planted: bool):
    @rt.register_orchestration("Spin::orchestration::poller")
    def poller(ctx, n):
        if not planted:
            if n >= 20:
                return n
            yield ctx.schedule_timer(1_000)
        yield ctx.continue_as_new(n + 1)  # planted: BUG, polls again at once, forever


SPIN = SimSpec(name="audit-spin", setup=lambda rt, w: _spin_setup(rt, w, planted=True), ref=f"{REF}:SPIN",
               starts=[Start(instance="poll", orchestration="Spin::orchestration::poller", input=0)])
SPIN_OK = SimSpec(name="audit-spin-ok", setup=lambda rt, w: _spin_setup(rt, w, planted=False), ref=f"{REF}:SPIN_OK",
                  starts=[Start(instance="poll", orchestration="Spin::orchestration::poller", input=0)])

# --- invariants: the saga (specs.SAGA_SKIPPED_COMPENSATION) vs the fixed saga; a raising one ---


_saga_fixed_setup = specs.saga_fixed_setup  # the corrected twin of specs.SAGA_SKIPPED_COMPENSATION


SAGA_FIXED = SimSpec(name="audit-saga-fixed", setup=_saga_fixed_setup, ref=f"{REF}:SAGA_FIXED",
                     invariants=[specs.money_charged_iff_shipped_or_refunded],
                     starts=[Start(instance=f"s{i}", orchestration="Saga::orchestration::order", input=i) for i in range(1, 7)])


def _shipments_per_order(result):
    shipments = result.world.state.get("shipments", [])
    return None if len(shipments) == len(set(shipments)) else f"an order shipped twice: {sorted(shipments)}"


def _crashing_invariant(result):
    return result.world.state["no-such-key"]  # BUG in the property itself: raises KeyError


# --- sandbox: a wall-clock read whose value changes nothing else --------------------------------


def _clock_setup(rt, world, *, planted: bool):
    @rt.register_activity("Clock::activity::stamp")
    def stamp(ctx, x):
        return [x, time.time() > 0]  # activities may read the clock

    @rt.register_orchestration("Clock::orchestration::main")
    def main(ctx, x):
        if planted:
            started = time.time()  # BUG: wall clock in orchestration code (unused: only the sandbox notices)
            del started
        else:
            time.gmtime(0)  # formatting a given time is pure
        return (yield ctx.schedule_activity("Clock::activity::stamp", x))


CLOCK_IN_ORCHESTRATION = SimSpec(name="audit-clock", setup=lambda rt, w: _clock_setup(rt, w, planted=True),
                                 starts=[Start(instance="c", orchestration="Clock::orchestration::main", input=1)],
                                 ref=f"{REF}:CLOCK_IN_ORCHESTRATION")
CLOCK_OK = SimSpec(name="audit-clock-ok", setup=lambda rt, w: _clock_setup(rt, w, planted=False),
                   starts=[Start(instance="c", orchestration="Clock::orchestration::main", input=1)], ref=f"{REF}:CLOCK_OK")

# --- well_formed: a provider that writes the terminal event twice --------------------------------

WELL_FORMED_PLANTED = SimSpec(name="audit-well-formed", setup=lambda rt, w: _ship_setup(rt, w, idempotent=True),
                              starts=_SHIP_STARTS, ref=f"{REF}:WELL_FORMED_PLANTED")


def _provider_writes_terminal_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    original = InMemoryProvider.ack_orchestration_item

    def ack(self, lock_token, execution_id, history_delta, *args, **kwargs):
        delta = list(history_delta)
        if delta and isinstance(delta[-1], OrchestrationCompleted):
            delta.append(attrs.evolve(delta[-1], event_id=delta[-1].event_id + 1))  # BUG: appended twice
        return original(self, lock_token, execution_id, delta, *args, **kwargs)

    monkeypatch.setattr(InMemoryProvider, "ack_orchestration_item", ack)


# --- budget_exhausted: an instance the faults poison half-way, and one that reads its effect ----


def _budget_setup(rt, world):
    rt.register_activity("mark", lambda ctx, key: world.put(key, True) or True)
    rt.register_activity("read", lambda ctx, key: world.get(key, False))

    def a(ctx, _):
        yield ctx.schedule_activity("mark", "a1")
        yield ctx.schedule_activity("mark", "a2")
        return "a"

    def b(ctx, _):
        return (yield ctx.schedule_activity("read", "a2"))

    rt.register_orchestration("A", a)
    rt.register_orchestration("B", b)


def _b_saw_a2(result):
    status = result.statuses.get("b")
    return None if status is not None and status.output is True else "b did not see a2"


_BUDGET_STARTS = [Start(instance="a", orchestration="A"), Start(instance="b", orchestration="B", at_ms=3_600_000)]
BUDGET = SimSpec(name="audit-budget", setup=_budget_setup, options=RuntimeOptions(max_attempts=1), starts=_BUDGET_STARTS,
                 ref=f"{REF}:BUDGET")
BUDGET_WITH_INVARIANT = SimSpec(name="audit-budget-invariant", setup=_budget_setup, options=RuntimeOptions(max_attempts=1),
                                starts=_BUDGET_STARTS, invariants=[_b_saw_a2], ref=f"{REF}:BUDGET_WITH_INVARIANT")


def test_every_checker_has_a_case() -> None:
    covered = {"determinism", "idempotency", "outcome", "liveness", "well_formed", "invariants", "sandbox",
               # SPEC §18's lock invariants: planted store bugs and correct twins in test_spec18_invariants.py
               "one_turn_per_fetch", "cancelled_activity"}
    assert covered == set(CHECKERS)


def test_determinism_checker_alone_reports_different_actions_on_replay() -> None:
    result = run_and_check(Simulation(REPLAY_BRANCH, 0, FaultPlan.none()))
    assert _checkers(result) == {"determinism"}, _renders(result)
    assert all("schedule mismatch" in f.message for f in result.failures), _renders(result)
    for seed in range(4):
        ok = run_and_check(Simulation(REPLAY_OK, seed, FaultPlan.all(0.05)))
        assert ok.ok, _renders(ok)


def test_repeat_check_alone_reports_state_that_survives_between_runs() -> None:
    plain = run_and_check(Simulation(LEAKY, 0, FaultPlan.none()))
    assert plain.ok, "without the repeat check nothing can see it"
    result = run_and_check(Simulation(LEAKY, 0, FaultPlan.none()), check_repeat=True)
    assert _checkers(result) == {"determinism"}, _renders(result)
    assert "same seed gave a different trace" in result.failures[0].message
    ok = run_and_check(Simulation(NOT_LEAKY, 0, FaultPlan.all(0.05)), check_repeat=True)
    assert ok.ok, _renders(ok)


def test_idempotency_checker_alone_reports_a_re_executed_effect() -> None:
    plan = FaultPlan.only("crash_after_effect", rate=0.3)
    seed, result, failure = _first(SHIP_NON_IDEMPOTENT, plan, 8, "idempotency")
    assert result is not None
    assert _checkers(result) == {"idempotency"}, _renders(result)
    assert failure.message.startswith("activity 'Audit::activity::ship' changed the world when re-executed")
    assert run_and_check(Simulation(SHIP_OK, seed, plan)).ok


def test_outcome_checker_alone_reports_a_changed_result() -> None:
    plan = FaultPlan.only("commit_lost", rate=0.3)
    seed, result, failure = _first(specs.VOTES_COUNTING, plan, 8, "outcome")
    assert result is not None
    assert _checkers(result) == {"outcome"}, _renders(result)
    assert failure.instance == "poll"
    assert run_and_check(Simulation(VOTES_DEDUP, seed, plan)).ok


def test_liveness_checker_alone_reports_a_stuck_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_and_check(Simulation(specs.STUCK_CHILD, 0, FaultPlan.none())).ok  # (before the plant)
    specs.plant_lost_child_completions(monkeypatch)
    result = run_and_check(Simulation(specs.STUCK_CHILD, 0, FaultPlan.none()))
    assert _checkers(result) == {"liveness"}, _renders(result)
    assert "stuck: SubOrchestrationScheduled" in result.failures[0].message
    monkeypatch.undo()
    for seed in range(4):
        ok = run_and_check(Simulation(UNIQUE_CHILD, seed, FaultPlan.all(0.05)))
        assert ok.ok, _renders(ok)


def test_liveness_checker_alone_reports_a_livelock() -> None:
    result = run_and_check(Simulation(SPIN, 0, FaultPlan.none(), max_steps=1_500))
    assert _checkers(result) == {"liveness"}, _renders(result)
    assert "no quiescence within 1500 steps (livelock?)" in result.failures[0].message
    ok = run_and_check(Simulation(SPIN_OK, 0, FaultPlan.all(0.05), max_steps=1_500))
    assert ok.ok, _renders(ok)


def test_well_formed_checker_alone_reports_a_malformed_history(monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_and_check(Simulation(WELL_FORMED_PLANTED, 0, FaultPlan.none())).ok  # (before the plant)
    _provider_writes_terminal_twice(monkeypatch)
    result = run_and_check(Simulation(WELL_FORMED_PLANTED, 0, FaultPlan.none()))
    assert _checkers(result) == {"well_formed"}, _renders(result)
    messages = {f.message for f in result.failures}
    assert "second terminal event" in messages
    assert "OrchestrationCompleted after terminal OrchestrationCompleted" in messages


def test_invariants_checker_alone_reports_a_broken_user_property() -> None:
    result = run_and_check(Simulation(specs.SAGA_SKIPPED_COMPENSATION, 0, FaultPlan.none()))
    assert _checkers(result) == {"invariants"}, _renders(result)
    assert "money_charged_iff_shipped_or_refunded: order 6 was charged but neither shipped nor refunded" in result.failures[0].message
    for seed in range(4):
        ok = run_and_check(Simulation(SAGA_FIXED, seed, FaultPlan.all(0.05)))
        assert ok.ok, _renders(ok)


def test_invariants_checker_reports_a_property_that_raises_with_where() -> None:
    spec = attrs.evolve(SHIP_OK, name="audit-raising-invariant", invariants=[_crashing_invariant])
    result = run_and_check(Simulation(spec, 0, FaultPlan.none()))
    assert _checkers(result) == {"invariants"}, _renders(result)
    message = result.failures[0].message
    assert message.startswith("_crashing_invariant: raised KeyError: 'no-such-key' (at ")
    assert "test_fault_and_checker_audit.py:" in message


def test_invariants_checker_reports_a_real_duplicate_that_the_twin_checks_cannot_see() -> None:
    """fault_transparent=False turns off the twin comparisons; a user invariant still judges."""
    spec = attrs.evolve(SHIP_NON_IDEMPOTENT, name="audit-ship-invariant", fault_transparent=False,
                        invariants=[_shipments_per_order])
    seed, result, failure = _first(spec, FaultPlan.only("crash_after_effect", rate=0.3), 8, "invariants")
    assert result is not None
    assert _checkers(result) == {"invariants"}, _renders(result)
    assert "an order shipped twice" in failure.message


def test_sandbox_checker_alone_reports_a_clock_read_in_orchestration_code() -> None:
    result = run_and_check(Simulation(CLOCK_IN_ORCHESTRATION, 0, FaultPlan.none(), sandbox=True))
    assert _checkers(result) == {"sandbox"}, _renders(result)
    assert "orchestration 'Clock::orchestration::main' called time.time()" in result.failures[0].message
    assert "test_fault_and_checker_audit.py:" in result.failures[0].message
    assert run_and_check(Simulation(CLOCK_IN_ORCHESTRATION, 0, FaultPlan.none())).ok  # only the sandbox sees it
    ok = run_and_check(Simulation(CLOCK_OK, 0, FaultPlan.all(0.05), sandbox=True))
    assert ok.ok, _renders(ok)


def test_budget_exhausted_is_counted_not_failed_and_invariants_still_judge() -> None:
    plan = FaultPlan.scripted([(1, "crash_after_effect")])
    result = run_and_check(Simulation(BUDGET, 0, plan, nodes=1))
    assert result.fired == [(1, "crash_after_effect")]
    assert str(result.outputs()["a"][1]).startswith("poison:")
    assert result.outputs()["b"] == ("Completed", False)  # the fault-free twin says True
    assert result.budget_exhausted == ["a"] and result.failures == []
    # The exemption covers the twin comparisons only: the spec's own invariants still apply.
    judged = run_and_check(Simulation(BUDGET_WITH_INVARIANT, 0, plan, nodes=1))
    assert judged.budget_exhausted == ["a"]
    assert _checkers(judged) == {"invariants"}, _renders(judged)
    # With the retry budget intact the same crash is tolerated: nothing exempt, nothing failed.
    intact = attrs.evolve(BUDGET, name="audit-budget-intact", options=RuntimeOptions(max_attempts=10))
    ok = run_and_check(Simulation(intact, 0, plan, nodes=1))
    assert ok.budget_exhausted == [] and ok.ok, _renders(ok)


# =================================================================================================
# Part 3: gaps found by the audit (these assert the documented behaviour)
# =================================================================================================


def test_duplicate_delivery_exposes_an_engine_whose_dedup_forgets_history(monkeypatch: pytest.MonkeyPatch) -> None:
    """The duplicate fault exists to catch an engine that does not drop a completion whose
    schedule already completed (SPEC §3.3 step 2; replay.py's ``_already_completed`` says so).
    Its first clause - a completion already in *persisted history* - is the production case: a
    redelivered completion arriving in a later turn. Planted: the filter forgets history (keeps
    the in-batch check). Duplicate faults alone must find it within a small seed budget, and a
    duplicated completion must be able to reach the orchestration after the original was
    recorded."""
    _engine_dedup_forgets_history(monkeypatch)
    late = {"n": 0}
    original_fetch = InMemoryProvider.fetch_orchestration_item

    def spy(self, *args, **kwargs):
        item = original_fetch(self, *args, **kwargs)
        if item is not None:
            done = {e.source_event_id for e in item.history if isinstance(e, ActivityCompleted)}
            late["n"] += sum(1 for m in item.messages if isinstance(m, ActivityCompletedMsg) and m.id in done)
        return item

    monkeypatch.setattr(InMemoryProvider, "fetch_orchestration_item", spy)
    plan = FaultPlan.only("duplicate", rate=1.0)
    injected = 0
    found = None
    for seed in range(12):
        result = run_and_check(Simulation(DUP_PLANTED, seed, plan))
        injected += result.faults_injected.get("duplicate", 0)
        if result.failures:
            found = result
            break
    assert found is not None, (
        f"duplicate alone never exposed the history-blind dedup in seeds 0..11: {injected} duplicates injected, "
        f"{late['n']} of them reached the orchestrator after the original completion was in history "
        "(each duplicate is enqueued in the same step as the ack, so it always lands in the original's batch)")
    assert late["n"] > 0


def _reorder_noop_faults(result) -> tuple[int, int]:
    """(reorder faults that acted on the oldest in-flight item, reorder faults that did not)."""
    recs = _records(result)
    leases: dict[str, list] = {}
    executed: dict[str, list] = {}
    orch: dict[str, list] = {}
    noop = real = 0
    pending = False
    for rec in recs:
        op, node = rec["op"], rec.get("node")
        if op == "fault" and rec["kind"] == "reorder":
            pending = True
            continue
        if op in ("work_fetch", "work_exec", "work_ack"):
            key = (rec["instance"], rec["id"])
        if op == "work_fetch":
            leases.setdefault(node, []).append(key)
            continue
        if op == "orch_fetch":
            orch.setdefault(node, []).append(rec["instance"])
            continue
        if op == "crash":
            leases[node], executed[node], orch[node] = [], [], []
            continue
        if op == "work_exec":
            queue, key = leases[node], (rec["instance"], rec["id"])
        elif op == "work_ack":
            queue, key = executed[node], (rec["instance"], rec["id"])
        elif op == "orch_turn":
            queue, key = orch[node], rec["instance"]
        else:
            continue
        if pending:
            noop, real = (noop + 1, real) if queue[0] == key else (noop, real + 1)
            pending = False
        queue.remove(key)
        if op == "work_exec":
            executed.setdefault(node, []).append(key)
    return noop, real


def test_a_reorder_fault_reorders_when_it_fires() -> None:
    """faults.py: 'reorder: in-flight completions are acknowledged in a random order'; harness
    ``_pick``: 'oldest first unless the reorder fault fires'. A reorder counted in
    ``faults_injected``/``fired`` (and kept by a shrunk plan) must act on an item other than
    the oldest; otherwise the plan names a fault that changed nothing and turns on the
    outcome/idempotency comparisons for a run the fault did not perturb."""
    noop = real = 0
    for seed in range(4):
        result = Simulation(specs.ORDERS_OK, seed, FaultPlan.only("reorder", rate=1.0)).run()
        n, r = _reorder_noop_faults(result)
        noop, real = noop + n, real + r
    assert real > 0
    assert noop == 0, f"{noop} of {noop + real} injected reorder faults acted on the oldest item (no reordering)"


def _followup_setup(rt, world):
    @rt.register_activity("Billing::activity::open_dispute")
    def open_dispute(ctx, case):
        # BUG: the follow-up's id carries the delivery attempt, so a re-delivery opens a second one
        ctx.get_client().start_orchestration(f"dispute-{case}-{ctx.attempt}", "Billing::orchestration::dispute", case)
        return True

    @rt.register_orchestration("Billing::orchestration::dispute")
    def dispute(ctx, case):
        yield ctx.schedule_timer(10)
        return case

    @rt.register_orchestration("Billing::orchestration::chargeback")
    def chargeback(ctx, case):
        yield ctx.schedule_activity("Billing::activity::open_dispute", case)
        return "opened"


EXTRA_FOLLOWUP = SimSpec(name="audit-extra-followup", setup=_followup_setup, ref=f"{REF}:EXTRA_FOLLOWUP",
                         starts=[Start(instance="cb", orchestration="Billing::orchestration::chargeback", input=7)])


def test_an_instance_that_exists_only_under_faults_is_reported() -> None:
    """crash_after_effect exists to expose a non-idempotent activity. Here the activity's effect
    is a started workflow: re-delivered, it opens a second dispute. The faulty run then has an
    instance the fault-free run does not ('dispute-7-2'); the opposite case - an instance missing
    under faults - is reported as an outcome difference (test_checker_realistic_specs), and a
    duplicated effect must be reported whichever way it shows."""
    result = run_and_check(Simulation(EXTRA_FOLLOWUP, 0, FaultPlan.scripted([(1, "crash_after_effect")]), nodes=1))
    assert result.fired == [(1, "crash_after_effect")]
    outputs = result.outputs()
    assert outputs["dispute-7-1"] == ("Completed", 7) and outputs["dispute-7-2"] == ("Completed", 7)
    hits = [f for f in result.failures if f.checker in ("outcome", "idempotency") and "dispute-7-2" in f.render()]
    assert hits, f"a second dispute opened by a re-delivered activity went unreported: failures={_renders(result)}"


def test_instance_actor_scenario_tolerates_a_poisoned_long_actor() -> None:
    """Found by this audit and fixed: the shipped instance_actor scenario's
    long_actor_ran_all_iterations invariant failed when lock expiries poisoned the long actor
    (counted as budget_exhausted: its sibling invariants already skipped poisoned actors)."""
    from scenarios import instance_actor

    plan = FaultPlan.from_json(json.dumps({"rates": {"lock_expiry": 0.3}}))
    result = run_and_check(Simulation(instance_actor.SPEC, 0, plan))
    assert result.budget_exhausted, "the seed no longer poisons the actor: pick another"
    assert result.ok, [f.render()[:300] for f in result.failures]
