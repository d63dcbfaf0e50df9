"""SPEC §18's lock invariants as simulation checkers: ``one_turn_per_fetch`` and ``cancelled_activity``.

SPEC §18 lists what the reference tests check: "one committed turn per fetch, strictly increasing
event ids, no completion for a cancelled-and-deleted activity, identical outcomes on replay".
Ids and replay had checkers (``well_formed``, ``determinism``); these two did not:

* ``one_turn_per_fetch``: a turn must commit under the instance's latest fetch. A store that
  accepts an ack with a taken-over lock token lets an older fetch's turn commit after another
  fetch (another node's, or the same node's after its own lock expired) locked the instance.
* ``cancelled_activity``: once the turn that writes an activity's ``ActivityCancelRequested``
  commits (deleting its work item in the same ack), no worker ack of that item may commit. A
  store whose worker ack does not fence on the row still enqueues the completion.

Each is shown to catch its planted store bug (that checker's finding, naming the instance and
the step, which the test checks against the trace), and a realistic workflow whose runs go
through exactly the situations a careless checker would misread (taken-over locks whose acks
are refused, acks that committed and then reported failure, cancelled activities whose acks
are refused, completions acked just before the cancel and recorded after its breadcrumb,
activity ids reused by the next execution after continue-as-new) passes under every fault kind.
Specs are module-level so their repro lines resolve:
``duroxide-sim reproduce tests/sim/test_spec18_invariants.py:NAME --seed N --faults ...``.
"""

from __future__ import annotations

import json
import types
from collections import Counter
from typing import Any

import pytest

from duroxide_sim.core.events import ActivityCancelRequested, ActivityCompleted
from duroxide_sim.errors import LockLostError
from duroxide_sim.providers.memory import InMemoryProvider
from duroxide_sim.sim.checkers import CHECKERS, check_lock_fencing, run_and_check
from duroxide_sim.sim.faults import FAULT_KINDS, FaultPlan
from duroxide_sim.sim.harness import Simulation, SimSpec, Start

REF = "tests/sim/test_spec18_invariants.py"

# =================================================================================================
# A realistic workflow: hedged supplier quotes, one SKU per execution
# =================================================================================================

#: Both suppliers quote the catalog price: whichever answers first, the outcome is the same.
CATALOG = {"sku-1": 120, "sku-2": 75, "sku-3": 310, "sku-4": 42, "sku-5": 18}


def _checkout_setup(rt, world):
    @rt.register_activity("Checkout::activity::quote")
    def quote(ctx, req):
        _supplier, sku = req
        return CATALOG[sku]  # a read: a call that lost the race (and was cancelled) changed nothing

    @rt.register_activity("Checkout::activity::reserve")
    def reserve(ctx, req):
        cart, sku, price = req
        world.put_if_absent(f"reserved:{cart}:{sku}", price)  # idempotent: a re-delivery reserves once
        return world.get(f"reserved:{cart}:{sku}")

    @rt.register_orchestration("Checkout::orchestration::cart")
    def cart(ctx, state):
        sku, rest = state["skus"][0], state["skus"][1:]
        # A hedged request: ask both suppliers, take the first answer; the slower call is cancelled
        # (its work item deleted in the ack of the turn that records ActivityCancelRequested).
        first = yield ctx.select2(ctx.schedule_activity("Checkout::activity::quote", ["alpha", sku]),
                                  ctx.schedule_activity("Checkout::activity::quote", ["beta", sku]))
        yield ctx.schedule_timer(1_000)  # the quote holds for a second
        held = yield ctx.schedule_activity("Checkout::activity::reserve", [ctx.instance_id, sku, first.value])
        total = state["total"] + held
        if rest:  # the next SKU in a new execution: the same activity ids again
            yield ctx.continue_as_new({"skus": rest, "total": total})
        return total


_CARTS = {"c1": ["sku-1", "sku-2"], "c2": ["sku-3"], "c3": ["sku-4", "sku-5", "sku-1"], "c4": ["sku-2"]}
CHECKOUT = SimSpec(
    name="spec18-checkout", setup=_checkout_setup, ref=f"{REF}:CHECKOUT",
    starts=[Start(instance=cart, orchestration="Checkout::orchestration::cart", input={"skus": skus, "total": 0})
            for cart, skus in _CARTS.items()],
)
#: The same workflow under a planted store bug (its own spec object: fault-free twins are cached
#: per spec, and a twin run under a plant must not serve the correct runs).
CHECKOUT_PLANTED = SimSpec(
    name="spec18-checkout-planted", setup=_checkout_setup, ref=f"{REF}:CHECKOUT_PLANTED",
    starts=CHECKOUT.starts,
)
_TOTALS = {"c1": 195, "c2": 310, "c3": 180, "c4": 75}

# =================================================================================================
# helpers
# =================================================================================================


def _records(result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.trace]


def _checkers(result) -> set[str]:
    return {f.checker for f in result.failures}


def _renders(result) -> list[str]:
    return [f.render() for f in result.failures]


def _first(spec, plan, seeds, checker, **kw):
    """(seed, result, failure) of the first seed in 0..seeds-1 with a ``checker`` failure."""
    for seed in range(seeds):
        result = run_and_check(Simulation(spec, seed, plan, **kw))
        hits = [f for f in result.failures if f.checker == checker]
        if hits:
            return seed, result, hits[0]
    raise AssertionError(f"{checker} found nothing in seeds 0..{seeds - 1}")


def _step_records(recs, step, op):
    return [r for r in recs if r["step"] == step and r["op"] == op]


# --- planted store bugs ---------------------------------------------------------------------------


def _plant_stale_lock_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted store bug: the orchestration ack fences on the instance's lock being held, not on
    the token's generation - a token taken over by a later fetch (after its lock expired) still
    commits its turn (and releases the new holder's lock)."""
    real_lock_batch = InMemoryProvider._lock_batch
    real_held = InMemoryProvider._held_orch_lock

    def lock_batch(self, instance, batch, meta, lock_timeout_ms, now):
        old = self._orch_locks.get(instance)
        if old is not None:  # a lock taken over: remember whose token it was
            self.__dict__.setdefault("_taken_over", {})[old.token] = instance
        return real_lock_batch(self, instance, batch, meta, lock_timeout_ms, now)

    def held(self, token, now, op):
        instance = self.__dict__.get("_taken_over", {}).get(token)
        if op == "ack_orchestration_item" and instance is not None and instance in self._orch_locks:
            del self._taken_over[token]
            return instance  # BUG: the stale token is accepted
        return real_held(self, token, now, op)

    monkeypatch.setattr(InMemoryProvider, "_lock_batch", lock_batch)
    monkeypatch.setattr(InMemoryProvider, "_held_orch_lock", held)


def _plant_unfenced_work_ack(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted store bug: the worker ack deletes the row by token and enqueues the completion
    without checking that a row was there (``DELETE ... WHERE token = ?`` ignoring the row count):
    the completion of an activity whose work item a cancelling turn deleted is still delivered."""
    real = InMemoryProvider.ack_work_item

    def ack(self, lock_token, completion):
        try:
            return real(self, lock_token, completion)
        except LockLostError:
            if completion is None:
                raise
            self.enqueue_for_orchestrator(completion)  # BUG: committed although the row is gone

    monkeypatch.setattr(InMemoryProvider, "ack_work_item", ack)


# --- spies: count the situations the checkers must not misread (behaviour unchanged) -------------


def _spy_on_refusals(monkeypatch: pytest.MonkeyPatch) -> Counter:
    """Counts, across the runs that follow: acks refused because their orchestration lock was
    taken over by a later fetch ("takeover_refused"); worker acks refused because a cancelling
    turn had deleted their item ("cancelled_refused")."""
    seen: Counter = Counter()
    real_lock_batch = InMemoryProvider._lock_batch
    real_ack_orch = InMemoryProvider.ack_orchestration_item
    real_ack_work = InMemoryProvider.ack_work_item

    def lock_batch(self, instance, batch, meta, lock_timeout_ms, now):
        old = self._orch_locks.get(instance)
        if old is not None:
            self.__dict__.setdefault("_spy_taken_over", set()).add(old.token)
        return real_lock_batch(self, instance, batch, meta, lock_timeout_ms, now)

    def ack_orch(self, lock_token, execution_id, delta, workers, orchs, metadata, cancelled=()):
        for ident in cancelled:
            for row in self._work.group((ident.instance, ident.execution_id, ident.activity_id)):
                if row.lock_token is not None:  # leased: its worker's ack is to be refused
                    self.__dict__.setdefault("_spy_cancelled", set()).add(row.lock_token)
        try:
            return real_ack_orch(self, lock_token, execution_id, delta, workers, orchs, metadata, cancelled)
        except LockLostError:
            if lock_token in self.__dict__.get("_spy_taken_over", ()):
                seen["takeover_refused"] += 1
            raise

    def ack_work(self, lock_token, completion):
        try:
            return real_ack_work(self, lock_token, completion)
        except LockLostError:
            if lock_token in self.__dict__.get("_spy_cancelled", ()):
                seen["cancelled_refused"] += 1
            raise

    monkeypatch.setattr(InMemoryProvider, "_lock_batch", lock_batch)
    monkeypatch.setattr(InMemoryProvider, "ack_orchestration_item", ack_orch)
    monkeypatch.setattr(InMemoryProvider, "ack_work_item", ack_work)
    return seen


def _late_completions(result) -> int:
    """Completions recorded after their activity's cancel breadcrumb (acked before the cancel
    committed: legitimate)."""
    n = 0
    for executions in result.histories.values():
        for events in executions.values():
            crumbs: set[int] = set()
            for e in events:
                if isinstance(e, ActivityCancelRequested):
                    crumbs.add(e.source_event_id)
                elif isinstance(e, ActivityCompleted) and e.source_event_id in crumbs:
                    n += 1
    return n


def _commits_reported_lost(recs) -> int:
    """Orchestration acks that committed and then reported failure (the turn shows no result)."""
    return sum(1 for a, b in zip(recs, recs[1:], strict=False)
               if a["op"] == "fault" and a["kind"] == "commit_lost" and a["operation"] == "ack_orchestration_item")


# =================================================================================================
# The checkers are registered
# =================================================================================================


def test_the_spec18_checkers_are_named_checkers() -> None:
    assert {"one_turn_per_fetch", "cancelled_activity"} <= set(CHECKERS)


# =================================================================================================
# one_turn_per_fetch
# =================================================================================================


@pytest.mark.parametrize("nodes", [2, 1], ids=["another-node-took-over", "own-later-fetch-took-over"])
def test_one_turn_per_fetch_reports_a_store_that_accepts_a_taken_over_lock_token(
        nodes: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stale turn is named by instance and step: a committed turn whose fetch a later fetch
    of the same instance (by the other node, or - one node holding two items - by its own)
    took over. Lock-expiry jumps expose it; without the plant the same seed passes."""
    _plant_stale_lock_tokens(monkeypatch)
    plan = FaultPlan.only("lock_expiry", rate=0.3)
    seed, result, failure = _first(CHECKOUT_PLANTED, plan, 8, "one_turn_per_fetch", nodes=nodes)
    assert _checkers(result) == {"one_turn_per_fetch"}, _renders(result)
    assert failure.repro.startswith(f"duroxide-sim reproduce {REF}:CHECKOUT_PLANTED --seed {seed} ")
    assert "committed a turn under a stale lock" in failure.message
    assert "SPEC §18: one committed turn per fetch" in failure.message
    recs = _records(result)
    # The named step is a committed turn of the named instance ...
    [turn] = _step_records(recs, failure.step, "orch_turn")
    assert turn["instance"] == failure.instance and turn["result"] is not None
    # ... whose fetch (the step the message names) a later fetch of the instance took over.
    fetched, taken = (int(s) for s in _between(failure.message, "fetch of the instance at step ", " at step "))
    [mine] = _step_records(recs, fetched, "orch_fetch")
    [later] = _step_records(recs, taken, "orch_fetch")
    assert mine["node"] == turn["node"] and mine["instance"] == later["instance"] == failure.instance
    assert fetched < taken < failure.step
    if nodes == 1:
        assert "its own later fetch" in failure.message
    else:
        assert any("'s fetch at step" in f.message for f in result.failures if f.checker == "one_turn_per_fetch")
    assert any(r["op"] == "lock_expiry" for r in recs if fetched <= r["step"] <= taken)
    monkeypatch.undo()
    assert run_and_check(Simulation(CHECKOUT_PLANTED, seed, plan, nodes=nodes)).ok


def _between(message: str, *marks: str) -> list[str]:
    """The numbers that follow each of ``marks`` in ``message``, in order."""
    out, at = [], 0
    for mark in marks:
        at = message.index(mark, at) + len(mark)
        end = at
        while end < len(message) and message[end].isdigit():
            end += 1
        out.append(message[at:end])
    return out


# =================================================================================================
# cancelled_activity
# =================================================================================================


def test_cancelled_activity_reports_a_store_that_acks_a_deleted_work_item(monkeypatch: pytest.MonkeyPatch) -> None:
    """No fault is needed: the hedged call that loses the race is cancelled while a worker holds
    it. The finding names the instance and the step of the ack that committed, after the turn
    that cancelled the activity."""
    _plant_unfenced_work_ack(monkeypatch)
    seed, result, failure = _first(CHECKOUT_PLANTED, FaultPlan.none(), 8, "cancelled_activity")
    assert _checkers(result) == {"cancelled_activity"}, _renders(result)
    assert failure.repro.startswith(f"duroxide-sim reproduce {REF}:CHECKOUT_PLANTED --seed {seed} ")
    assert "(Checkout::activity::quote) committed although the turn at step" in failure.message
    assert "cancelled-and-deleted activity (SPEC §18)" in failure.message
    recs = _records(result)
    [ack] = _step_records(recs, failure.step, "work_ack")
    assert ack["instance"] == failure.instance and ack["committed"] is True
    activity = int(_between(failure.message, "ack of activity id ")[0])
    assert ack["id"] == activity
    cancel_step, fetch_step = (int(s) for s in _between(failure.message, "the turn at step ", "last fetched at step "))
    [turn] = _step_records(recs, cancel_step, "orch_turn")
    assert turn["instance"] == failure.instance and turn["result"] is not None
    assert any(label.endswith(":ActivityCancelRequested") for label in turn["events"])
    [fetch] = _step_records(recs, fetch_step, "work_fetch")
    assert (fetch["instance"], fetch["id"]) == (failure.instance, activity)
    assert fetch_step < cancel_step < failure.step
    # The breadcrumb in history is for that activity.
    crumbs = {e.source_event_id for events in result.histories[failure.instance].values() for e in events
              if isinstance(e, ActivityCancelRequested)}
    assert activity in crumbs
    monkeypatch.undo()
    assert run_and_check(Simulation(CHECKOUT_PLANTED, seed, FaultPlan.none())).ok


# =================================================================================================
# The correct workflow passes: every fault kind, several seeds
# =================================================================================================

#: Crashes at every third step leave little work finished: a lower rate for them.
_RATES = {"crash": 0.05, "crash_after_effect": 0.1}
_PLANS = [(kind, FaultPlan.only(kind, rate=_RATES.get(kind, 0.3))) for kind in FAULT_KINDS] + [
    ("all", FaultPlan.all(0.05)), ("heavy", FaultPlan.all(0.2))]


@pytest.mark.parametrize("label,plan", _PLANS, ids=[label for label, _ in _PLANS])
def test_a_correct_workflow_passes_both_checkers_under_each_fault_kind(
        label: str, plan: FaultPlan, monkeypatch: pytest.MonkeyPatch) -> None:
    spied = _spy_on_refusals(monkeypatch)
    seen: Counter = Counter()
    late = lost = fired = 0
    for seed in range(6):
        result = run_and_check(Simulation(CHECKOUT, seed, plan))
        assert result.ok, _renders(result)
        # The same run once more, alone (run_and_check may also run the fault-free twin): what
        # the spies count is this run's. Same seed, same trace.
        before = spied.copy()
        assert Simulation(CHECKOUT, seed, plan).run().trace_hash == result.trace_hash
        seen += spied - before
        fired += sum(result.faults_injected.values())
        late += _late_completions(result)
        lost += _commits_reported_lost(_records(result))
        if not result.budget_exhausted:
            assert {i: result.outputs()[i] for i in _CARTS} == {i: ("Completed", t) for i, t in _TOTALS.items()}
    assert fired > 0, f"{label}: no fault fired - the pass proves nothing"
    # The situations a careless checker would misread occurred, and were not reported:
    assert seen["cancelled_refused"] > 0  # a cancelled activity's ack refused (the hedge's loser)
    assert late > 0  # a completion acked before the cancel committed, recorded after the breadcrumb
    if label in ("lock_expiry", "heavy"):
        assert seen["takeover_refused"] > 0  # a turn whose lock another fetch took over: ack refused
    if label == "commit_lost":
        assert lost > 0  # a turn that committed and then reported failure (no result in the trace)


def test_a_correct_workflow_passes_with_one_node_and_with_the_sqlite_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """One node holding two items of an instance (its own lock expired and it fetched again), and
    the SQLite store's lock fencing."""
    seen = _spy_on_refusals(monkeypatch)
    for seed in range(6):
        result = run_and_check(Simulation(CHECKOUT, seed, FaultPlan.only("lock_expiry", "reorder", rate=0.3), nodes=1))
        assert result.ok, _renders(result)
    assert seen["takeover_refused"] > 0
    for seed in range(3):
        for plan in (FaultPlan.all(0.2), FaultPlan.only("lock_expiry", rate=0.3)):
            result = run_and_check(Simulation(CHECKOUT, seed, plan, provider="sqlite"))
            assert result.ok, _renders(result)


# =================================================================================================
# The checker on hand-written traces: what it must not guess
# =================================================================================================


def _trace(*recs: dict[str, Any]) -> types.SimpleNamespace:
    return types.SimpleNamespace(trace=[json.dumps(r) for r in recs], histories={})


def _fetch(step, node, inst="x"):
    return {"step": step, "op": "orch_fetch", "node": node, "instance": inst, "execution": 1, "messages": []}


def _turn(step, node, result="continue", inst="x", events=()):
    return {"step": step, "op": "orch_turn", "node": node, "instance": inst, "result": result, "events": list(events)}


def test_stale_turn_rules_on_hand_written_traces() -> None:
    stale = lambda *recs: [(m.split(":")[0], i, s) for m, i, s in check_lock_fencing(_trace(*recs))[0]]  # noqa: E731
    # taken over by another node, whose ack then fails: fine (the stale ack was refused)
    assert stale(_fetch(1, "n0"), _fetch(2, "n1"), _turn(3, "n0", None), _turn(4, "n1")) == []
    # ... the stale ack committed: reported at its step
    assert stale(_fetch(1, "n0"), _fetch(2, "n1"), _turn(3, "n0"), _turn(4, "n1", None)) == [
        ("n0 committed a turn under a stale lock", "x", 3)]
    # a crash drops the node's items; its restarted incarnation (same name) fetches afresh
    assert stale(_fetch(1, "n0"), {"step": 2, "op": "crash", "node": "n0"}, _fetch(3, "n0"), _turn(4, "n0")) == []
    # one node holding two items of the instance: the oldest is taken (no reorder) - stale
    assert stale(_fetch(1, "n0"), _fetch(2, "n0"), _turn(3, "n0"), _turn(4, "n0", None)) == [
        ("n0 committed a turn under a stale lock", "x", 3)]
    # ... unless a reorder fired at that step, or a turn raised since (its item left unrecorded):
    # which item was taken is unknown, so the committed turn is not judged
    reorder = {"step": 3, "op": "fault", "kind": "reorder", "operation": "schedule"}
    assert stale(_fetch(1, "n0"), _fetch(2, "n0"), reorder, _turn(3, "n0"), _turn(4, "n0", None)) == []
    raised = {"step": 3, "op": "provider_error", "action": "orch_turn", "error": "boom"}
    assert stale(_fetch(1, "n0"), raised, _fetch(4, "n0"), _turn(5, "n0")) == []
    diverged = {"step": 3, "op": "replay_divergence", "instance": "x", "error": "boom"}
    assert stale(_fetch(1, "n0"), diverged, _fetch(4, "n0"), _turn(5, "n0")) == []
    # other instances' fetches take nothing over
    assert stale(_fetch(1, "n0"), _fetch(2, "n1", "y"), _turn(3, "n0"), _turn(4, "n1", inst="y")) == []


def test_cancelled_ack_rules_on_hand_written_traces() -> None:
    def cancelled(*recs):
        result = _trace(*recs)
        crumb = ActivityCancelRequested(event_id=5, source_event_id=2, reason="dropped_future")
        result.histories = {"x": {1: [crumb]}}
        return [(i, s) for _m, i, s in check_lock_fencing(result)[1]]

    def wfetch(step, act_id=2):
        return {"step": step, "op": "work_fetch", "node": "n1", "instance": "x", "activity": "a", "id": act_id}

    def wack(step, committed=True, act_id=2):
        return {"step": step, "op": "work_ack", "node": "n1", "instance": "x", "id": act_id, "committed": committed}

    cancel = [_fetch(3, "n0"), _turn(4, "n0", events=["4:ActivityCompleted", "5:ActivityCancelRequested"])]
    assert cancelled(wfetch(1), *cancel, wack(6)) == [("x", 6)]  # acked after the cancel committed
    assert cancelled(wfetch(1), *cancel, wack(6, committed=False)) == []  # refused: correct
    # acked before the cancel committed (even after the cancelling turn's fetch): legitimate
    assert cancelled(wfetch(1), _fetch(3, "n0"), wack(3), _turn(4, "n0", events=["5:ActivityCancelRequested"])) == []
    # fetched after the cancel: another item with the same id (the next execution's)
    assert cancelled(wfetch(1), *cancel, wfetch(5), wack(6)) == []
    # another activity of the instance
    assert cancelled(wfetch(1, act_id=3), *cancel, wack(6, act_id=3)) == []
    # a cancelling turn whose ack failed cancelled nothing
    assert cancelled(wfetch(1), _fetch(3, "n0"), _turn(4, "n0", None), wack(6)) == []


def test_the_checkers_read_a_trace_that_was_already_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading a trace encodes its records (the turns' event lists become labels): the findings
    are the same before and after."""
    _plant_unfenced_work_ack(monkeypatch)
    _plant_stale_lock_tokens(monkeypatch)
    found = 0
    for seed in range(4):
        result = Simulation(CHECKOUT_PLANTED, seed, FaultPlan.only("lock_expiry", rate=0.3)).run()
        before = check_lock_fencing(result)
        list(result.trace)  # encodes every record
        assert check_lock_fencing(result) == before
        found += len(before[0]) + len(before[1])
    assert found > 0
