"""Approval with a deadline and escalation.

What it models
    ``request_approval`` (typed input ``ApprovalRequest``, e.g. a purchase over a limit):

    1. ``notify`` the approver;
    2. ``select2(wait_for_event("approve"), timer(deadline))`` - the approver's ``Decision``
       (approve or reject) or the deadline, whichever is first in history;
    3. on the deadline: an escalation sub-orchestration (``escalate``, explicit id
       ``<request instance>::escalation``) notifies the manager and waits for *their* ``approve``
       event with its own deadline; no answer -> auto-rejected;
    4. ``record_decision`` (``put_if_absent``: one decision per request, whatever the
       re-deliveries) and ``notify`` the requester.

    A decision that arrives after the deadline finds no subscription: it is kept in history for
    audit only and changes nothing (positional events, SPEC §6.1); a second click on "approve"
    likewise.

Requests (virtual times from the start; deadline 2 h, escalation deadline 4 h)
    req-1 approved at 30 min; req-2 rejected at 45 min; req-3: the approver answers late (3 h),
    the manager approves the escalation at 4 h; req-4: nobody answers -> auto-rejected (~6 h);
    req-5: the approver clicks "approve" twice (20 and 21 min).

Why this spec is fault-transparent (and not ``fault_transparent=False``)
    Faults are injected only during the first 10 virtual minutes, and they shift a workflow by
    at most that window plus lock time-outs (a delayed client message: 5 s; a lock-expiry jump:
    30 s; a crash: up to 2 s plus a lock time-out). Every signal is at least 9 minutes later
    than the latest possible subscription and at least 45 minutes from any deadline, so under
    any fault plan each event meets the same subscription as without faults: outcomes and the
    world must be identical, and the outcome and idempotency checkers stay on. The faults hit
    the first notification and the creation of the subscriptions and timers (crashes, lost
    commits, duplicate deliveries, lock theft). Making the deadlines shorter than the fault
    window would make the outcome legitimately depend on the faults (an approval raised before
    the subscription exists is lost); that spec would need ``fault_transparent=False`` and
    invariants only, losing the two strongest checkers.

Properties
    ``expected_outcomes``; ``one_decision_per_request`` (the recorded decision equals the
    returned one); ``escalated_iff_deadline_passed`` (an escalation instance exists exactly for
    the requests whose approver missed the deadline).

Planted bug (``VARIANTS``)
    ``rolling-deploy``: v2 of the workflow sends the approver a reminder right after the first
    notification. It is deployed in place - same name, same version - by a rolling restart: a
    process started after the initial fleet (the code reads a module-level boot counter at
    registration time) runs v2, the others v1. In-flight approvals started under v1 are then
    replayed by v2 on whichever process picks them up: ``schedule mismatch`` (nondeterminism).
    The determinism checker catches it under ``FaultPlan.only("crash")``: crashes restart
    processes, and restarted processes run the new code. The fix: register the change as a new
    version (``register_orchestration_versioned``) so in-flight histories keep running v1.
"""

from __future__ import annotations

import weakref

import attrs

from duroxide_sim.sim.harness import Signal, SimSpec, Start
from scenarios._common import instances_of, poisoned, status_of


class Names:
    class Orchestrations:
        REQUEST_APPROVAL = "approvals::orchestration::request_approval"
        ESCALATE = "approvals::orchestration::escalate"

    class Activities:
        NOTIFY = "approvals::activity::notify"
        RECORD_DECISION = "approvals::activity::record_decision"

    class Events:
        APPROVE = "approve"


# --- typed payloads ---------------------------------------------------------------------------


@attrs.define
class ApprovalRequest:
    request_id: str
    requester: str
    approver: str
    manager: str
    amount_cents: int
    deadline_ms: int
    escalation_deadline_ms: int


@attrs.define
class Decision:
    approved: bool
    by: str
    comment: str = ""


@attrs.define
class Escalation:
    request_id: str
    manager: str
    amount_cents: int
    deadline_ms: int


@attrs.define
class Notification:
    request_id: str
    to: str
    kind: str  # "approval-needed" | "reminder" | "escalated" | "decided"


@attrs.define
class RecordedDecision:
    request_id: str
    approved: bool
    by: str
    escalated: bool


@attrs.define
class ApprovalOutcome:
    request_id: str
    status: str  # "approved" | "rejected" | "auto-rejected"
    decided_by: str
    escalated: bool


# --- handlers -----------------------------------------------------------------------------------


def register_activities(rt, world):
    @rt.register_activity_typed(Names.Activities.NOTIFY)
    def notify(ctx, note: Notification) -> None:
        # The mail service de-duplicates on a message key: one e-mail per (request, recipient, kind).
        world.put_if_absent(f"mail:{note.request_id}:{note.to}:{note.kind}", note.kind)

    @rt.register_activity_typed(Names.Activities.RECORD_DECISION)
    def record_decision(ctx, rec: RecordedDecision) -> None:
        world.put_if_absent(f"decision:{rec.request_id}", attrs.asdict(rec))


def escalate(ctx, esc: Escalation):
    yield ctx.schedule_activity_typed(Names.Activities.NOTIFY, Notification(esc.request_id, esc.manager, "escalated"))
    winner = yield ctx.select2(
        ctx.wait_for_event_typed(Names.Events.APPROVE, result_type=Decision), ctx.schedule_timer(esc.deadline_ms)
    )
    if winner.index() == 0:
        return winner.value
    ctx.trace_warn(f"[{esc.request_id}] manager {esc.manager} did not answer; auto-rejecting")
    return Decision(False, "system", "no decision before the escalation deadline")


def make_request_approval(*, send_reminder: bool = False):
    def request_approval(ctx, req: ApprovalRequest):
        yield ctx.schedule_activity_typed(Names.Activities.NOTIFY, Notification(req.request_id, req.approver, "approval-needed"))
        if send_reminder:  # v2, deployed in place (BUG: same name and version as v1)
            yield ctx.schedule_activity_typed(Names.Activities.NOTIFY, Notification(req.request_id, req.approver, "reminder"))
        winner = yield ctx.select2(
            ctx.wait_for_event_typed(Names.Events.APPROVE, result_type=Decision), ctx.schedule_timer(req.deadline_ms)
        )
        escalated = winner.index() == 1
        if escalated:
            ctx.trace_info(f"[{req.request_id}] {req.approver} missed the deadline; escalating to {req.manager}")
            decision = yield ctx.schedule_sub_orchestration_with_id_typed(
                Names.Orchestrations.ESCALATE, f"{ctx.instance_id}::escalation",
                Escalation(req.request_id, req.manager, req.amount_cents, req.escalation_deadline_ms), result_type=Decision,
            )
        else:
            decision = winner.value
        ctx.trace_info(f"[{req.request_id}] {'approved' if decision.approved else 'rejected'} by {decision.by}")
        yield ctx.schedule_activity_typed(
            Names.Activities.RECORD_DECISION, RecordedDecision(req.request_id, decision.approved, decision.by, escalated)
        )
        yield ctx.schedule_activity_typed(Names.Activities.NOTIFY, Notification(req.request_id, req.requester, "decided"))
        status = "approved" if decision.approved else ("auto-rejected" if decision.by == "system" else "rejected")
        return ApprovalOutcome(req.request_id, status, decision.by, escalated)

    return request_approval


def register(rt, world, *, send_reminder: bool = False):
    register_activities(rt, world)
    rt.register_orchestration_typed(Names.Orchestrations.REQUEST_APPROVAL, make_request_approval(send_reminder=send_reminder))
    rt.register_orchestration_typed(Names.Orchestrations.ESCALATE, escalate)


# --- the scenario ---------------------------------------------------------------------------------


@attrs.frozen
class Params:
    deadline_ms: int
    escalation_deadline_ms: int
    #: request -> [(event target: "approver" | "manager", at_ms, Decision)]
    decisions: dict


_MIN = 60_000
SIM_PARAMS = Params(
    deadline_ms=120 * _MIN,
    escalation_deadline_ms=240 * _MIN,
    decisions={
        "req-1": [("approver", 30 * _MIN, Decision(True, "alice", "within budget"))],
        "req-2": [("approver", 45 * _MIN, Decision(False, "alice", "not this quarter"))],
        "req-3": [("approver", 180 * _MIN, Decision(True, "alice", "sorry, late")),
                  ("manager", 240 * _MIN, Decision(True, "bob", "approved on escalation"))],
        "req-4": [],
        "req-5": [("approver", 20 * _MIN, Decision(True, "alice", "")), ("approver", 21 * _MIN, Decision(False, "alice", "clicked twice"))],
    },
)
#: Wall-clock version: every signal stays >= 0.6 s away from the subscription or deadline it must
#: (not) meet, so scheduling jitter on a loaded machine cannot change an outcome.
PRODUCTION_PARAMS = Params(
    deadline_ms=800,
    escalation_deadline_ms=2_500,
    decisions={
        "req-1": [("approver", 200, Decision(True, "alice", "within budget"))],
        "req-2": [("approver", 300, Decision(False, "alice", "not this quarter"))],
        "req-3": [("approver", 1_600, Decision(True, "alice", "sorry, late")),
                  ("manager", 1_800, Decision(True, "bob", "approved on escalation"))],
        "req-4": [],
        "req-5": [("approver", 200, Decision(True, "alice", "")), ("approver", 250, Decision(False, "alice", "clicked twice"))],
    },
)

#: request -> (status, decided_by, escalated)
EXPECTED = {
    "req-1": ("approved", "alice", False),
    "req-2": ("rejected", "alice", False),
    "req-3": ("approved", "bob", True),
    "req-4": ("auto-rejected", "system", True),
    "req-5": ("approved", "alice", False),
}


def _instance(req: str) -> str:
    return f"approval-{req}"


def expected_outcomes(result):
    for req, (status, by, escalated) in EXPECTED.items():
        if poisoned(result, _instance(req)):
            continue
        got = status_of(result, _instance(req))
        want = ("Completed", {"request_id": req, "status": status, "decided_by": by, "escalated": escalated})
        if got != want:
            return f"{_instance(req)}: expected {want!r}, got {got[0]} {str(got[1]).splitlines()[0]!r}"
    return None


def one_decision_per_request(result):
    for req in EXPECTED:
        status, output = status_of(result, _instance(req))
        if status != "Completed":
            continue
        recorded = result.world.get(f"decision:{req}")
        want = {"request_id": req, "approved": output["status"] == "approved", "by": output["decided_by"], "escalated": output["escalated"]}
        if recorded != want:
            return f"{req}: recorded decision {recorded!r} differs from the outcome {want!r}"
    return None


def escalated_iff_deadline_passed(result):
    escalations = set(instances_of(result, Names.Orchestrations.ESCALATE))
    for req in EXPECTED:
        status, output = status_of(result, _instance(req))
        if status != "Completed":
            continue
        has = f"{_instance(req)}::escalation" in escalations
        if has != output["escalated"]:
            return f"{req}: escalation instance {'exists' if has else 'missing'} but escalated={output['escalated']}"
    return None


def make_spec(p: Params, *, name: str, ref: str, setup=None) -> SimSpec:
    def default_setup(rt, world):
        register(rt, world)

    starts = [
        Start(instance=_instance(req), orchestration=Names.Orchestrations.REQUEST_APPROVAL,
              input=ApprovalRequest(req, "carol", "alice", "bob", 250_000 + 1_000 * i, p.deadline_ms, p.escalation_deadline_ms))
        for i, req in enumerate(EXPECTED)
    ]
    signals = [
        Signal(instance=_instance(req) + ("::escalation" if who == "manager" else ""), name=Names.Events.APPROVE, data=decision,
               at_ms=at_ms, kind="raise")
        for req, events in p.decisions.items() for who, at_ms, decision in events
    ]
    return SimSpec(
        name=name,
        setup=setup or default_setup,
        starts=starts,
        signals=signals,
        invariants=[expected_outcomes, one_decision_per_request, escalated_iff_deadline_passed],
        ref=ref,
    )


SPEC = make_spec(SIM_PARAMS, name="approval", ref="scenarios/approval.py:SPEC")
PRODUCTION = make_spec(PRODUCTION_PARAMS, name="approval-production", ref="scenarios/approval.py:PRODUCTION")

# --- planted bugs ---------------------------------------------------------------------------------

#: Processes booted so far, per simulated world (a plain module-level counter, scoped to the
#: world so that every run - and its fault-free twin - starts counting from zero).
_BOOTS: "weakref.WeakKeyDictionary[object, int]" = weakref.WeakKeyDictionary()
#: The processes of the first deployment; any process started later is "the new build".
INITIAL_FLEET = 2


def _rolling_deploy_setup(rt, world):
    boot = _BOOTS[world] = _BOOTS.get(world, 0) + 1
    register(rt, world, send_reminder=boot > INITIAL_FLEET)  # BUG: v2 replaces v1 in place


ROLLING_DEPLOY = make_spec(SIM_PARAMS, name="approval/rolling-deploy", ref="scenarios/approval.py:ROLLING_DEPLOY",
                           setup=_rolling_deploy_setup)

VARIANTS = {"rolling-deploy": ROLLING_DEPLOY}
