"""Finalization: turn the replay's outcome into history events, work items and cancellations
(SPEC §3.8–§3.10, §10.2, §10.3): dropped-future reconciliation, breadcrumbs, parent notification,
limits, corrupt-history and poison turns. Pure: no clock, no I/O."""

from __future__ import annotations

from typing import Any

from .context import (
    ContinueAsNewTask,
)
from .engine import _Engine
from .events import (
    TERMINAL_EVENTS,
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityExecute,
    ActivityFailed,
    ActivityScheduled,
    ApplicationError,
    CancelInstance,
    ConfigurationErrorDetails,
    ContinueAsNew,
    CustomStatusUpdated,
    ErrorDetails,
    ExternalEvent,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    HistoryEvent,
    KeyValueSet,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    PoisonError,
    QueueEventDelivered,
    QueueSubscribed,
    QueueSubscriptionCancelled,
    StartOrchestration,
    SubOrchCompletedMsg,
    SubOrchestrationCancelRequested,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    SubOrchestrationScheduled,
    SubOrchFailedMsg,
    TimerCreated,
    TimerFiredMsg,
    WorkItem,
)
from .nondeterminism import _Divergence, describe_event, nondeterminism_message
from .turn import LIMITS, TurnInput, TurnResult, batch_start, child_instance_id

__all__ = ["poison_turn"]



#: Dropped-future breadcrumb event per slot kind, and how a mismatch names the kind.
_CRUMB_TYPES: dict[str, type] = {
    "activity": ActivityCancelRequested,
    "sub": SubOrchestrationCancelRequested,
    "wait": ExternalSubscribedCancelled,
    "queue": QueueSubscriptionCancelled,
}
_CRUMB_LABELS = {"activity": "activities", "sub": "sub-orchestrations", "wait": "external waits", "queue": "persistent waits"}
_CRUMB_CLASSES = tuple(_CRUMB_TYPES.values())
_NO_CRUMBS: frozenset[tuple[type, int | None]] = frozenset()


def _reconcile_dropped(
    engine: _Engine, history: list[HistoryEvent], delta: list[HistoryEvent], add: Any, *, warm: bool = False,
    walked_from: int = 0, walked_to: int | None = None,
) -> None:
    """SPEC §3.10: check persisted dropped-future breadcrumbs, then add missing ones.

    A *warm* engine (cached from the previous turn) already checked the persisted breadcrumbs
    when it walked them, and knows every breadcrumb written so far (``engine.crumbs``). A
    *caught-up* engine (``walked_from`` > 0: cached from an earlier turn, it replayed
    ``history[walked_from:]`` this turn) knows the breadcrumbs before ``walked_from`` the same
    way; the persisted ones from ``walked_from`` on are checked like a cold replay checks them,
    against the futures it dropped this turn.

    ``walked_to``: where in ``history`` the walk stopped because the code returned (SPEC §3.4
    step 2: the rest of the history is ignored). Breadcrumbs there are not compared with the
    code's drops: they belong to steps the code did not reach in this walk - in a replay of a
    finished history, the last turn's own drops of work the code asked for just before it
    returned (a race's losing retry re-scheduled in the turn the race was won)."""
    if not engine.dropped and (warm or not engine.crumbs):
        # Nothing dropped to record, and nothing persisted to check: a warm engine checked the
        # breadcrumbs when it walked them, and one that walked none knows none (the engine
        # records every breadcrumb it walks in engine.crumbs). The common turn.
        return
    crumb_types = _CRUMB_TYPES
    labels = _CRUMB_LABELS
    crumb_classes = _CRUMB_CLASSES
    # Breadcrumbs already written: those the engine knows (a warm or caught-up one; looked up
    # in place, not copied: an actor's crumbs grow with its history), plus one pass over the
    # events this engine did not walk before, plus this turn's.
    known = engine.crumbs if warm or walked_from else _NO_CRUMBS
    existing: set[tuple[type, int | None]] = set()
    persisted_dropped: dict[type, set[int]] = {}
    if not warm:
        if walked_to is None:
            walked, unwalked = history[walked_from:] if walked_from else history, ()
        else:
            walked, unwalked = history[walked_from:walked_to], history[walked_to:]
        for e in walked:
            if isinstance(e, crumb_classes):
                existing.add((type(e), e.source_event_id))
                if e.reason == "dropped_future":  # type: ignore[attr-defined]
                    persisted_dropped.setdefault(type(e), set()).add(e.source_event_id)  # type: ignore[arg-type]
        for e in unwalked:  # (past the stop: known breadcrumbs, not compared)
            if isinstance(e, crumb_classes):
                existing.add((type(e), e.source_event_id))
    for e in delta:
        if isinstance(e, crumb_classes):
            existing.add((type(e), e.source_event_id))
    if persisted_dropped:
        persisted_ids = {e.event_id for e in history}
        for kind, cls in crumb_types.items():
            b = persisted_dropped.get(cls, set())
            c = {s.event_id for s in engine.dropped if s.kind == kind and s.event_id in persisted_ids}
            if b and not b <= c:
                # Name the first one the code no longer drops: its schedule and where the code
                # asked for it (the slot's yield site, when this replay bound it).
                first = min(b - c)
                schedule = next((e for e in history if e.event_id == first), None)
                slot = engine.by_id.get(first)
                raise _Divergence(
                    nondeterminism_message(
                        f"cancellation mismatch ({labels[kind]}): history dropped {sorted(b)}, code dropped {sorted(c)}",
                        instance=engine.instance,
                        execution_id=engine.execution_id,
                        event_id=first,
                        expected=None if schedule is None else describe_event(schedule),
                        actual="no drop (the code still waits for it)" if slot is not None else None,
                        site=getattr(slot, "site", None),
                    )
                )
    for slot in engine.dropped:
        cls = crumb_types.get(slot.kind)
        if cls is None or slot.event_id is None or (cls, slot.event_id) in existing or (cls, slot.event_id) in known:
            continue
        # (A slot that had completed when the code dropped it is not in engine.dropped. One whose
        # completion was applied after the drop - later in the same batch - still gets its
        # breadcrumb, as the reference records it: the drop came first.)
        add(cls, source_event_id=slot.event_id, reason="dropped_future")
        existing.add((cls, slot.event_id))
        engine.add_crumb(cls, slot.event_id)


def _open_schedules(events: list[HistoryEvent], cls: type, done_types: tuple[type, ...]) -> list[HistoryEvent]:
    closed = {e.source_event_id for e in events if isinstance(e, done_types)}
    return [e for e in events if isinstance(e, cls) and e.event_id not in closed]


#: Subscription event -> its cancel breadcrumb, and slot kind -> the same breadcrumb.
_SUB_CRUMB: dict[type, type] = {ExternalSubscribed: ExternalSubscribedCancelled, QueueSubscribed: QueueSubscriptionCancelled}
_SLOT_CRUMB: dict[str, type] = {"wait": ExternalSubscribedCancelled, "queue": QueueSubscriptionCancelled}


def _closing_subscriptions(
    engine: _Engine, history: list[HistoryEvent], delta: list[HistoryEvent], *, ran_code: bool
) -> list[tuple[type, int]]:
    """SPEC §3.9: the subscriptions a turn that ends the execution closes, as (breadcrumb type,
    subscription id) in subscription id order: every positional and queue subscription still
    open - not resolved by an arrival, not cancelled by a breadcrumb.

    An engine that ran the code over every event (``ran_code`` and nothing left unwalked) has
    bound every subscription of the execution to a slot (a warm or caught-up engine in earlier
    turns, a cold one now), and its slots say what the code saw: they are the answer. Otherwise
    the slots do not cover the history - the code diverged from it (``ran_code`` False: the
    walk stopped at the divergence, or never ran), or it returned before the walk reached the
    end (``engine.unwalked`` events left: changed code that returns or raises earlier), so
    subscriptions recorded after that point were never bound, and arrivals there never applied
    - and the open ones are read from the events themselves (:func:`_open_subscriptions`). With
    ``ran_code``, a subscription the code resolved or dropped stays closed."""
    if ran_code:
        bound = [
            (_SLOT_CRUMB[slot.kind], slot.event_id)
            for slot in engine.by_id.values()
            if (slot.kind == "wait" or slot.kind == "queue") and not slot.done and not slot.cancelled
        ]
        unwalked = engine.unwalked
        if not unwalked:
            return bound  # type: ignore[return-value]
        # The unwalked events are the end of the walk (history, then this turn's new events); a
        # subscription the code did not bind can only be among them. Without one, and without an
        # open slot that an unwalked arrival might have resolved, the slots are still the answer.
        by_id = engine.by_id
        tail = history[max(0, len(history) - unwalked):]
        if not bound and not any(
            type(e) in _SUB_CRUMB and e.event_id not in by_id for events in (tail, delta) for e in events
        ):
            return bound  # type: ignore[return-value]
    found = _open_subscriptions([*history, *delta])
    if not ran_code:
        return found
    closed = [
        slot.event_id for slot in engine.by_id.values()
        if (slot.kind == "wait" or slot.kind == "queue") and (slot.done or slot.cancelled)
    ]
    if not closed:
        return found
    skip = set(closed)
    return [(cls, sid) for cls, sid in found if sid not in skip]


def _open_subscriptions(events: list[HistoryEvent]) -> list[tuple[type, int]]:
    """The subscriptions ``events`` (one execution's, in order) leave open, as (breadcrumb type,
    subscription id) in subscription id order, paired from the events alone.

    Positional (SPEC §6.1): an arrival joins its name's arrival list only if the name's active
    subscriptions created before it outnumber the arrivals joined so far (else it is audit-only);
    active subscriptions pair with joined arrivals in creation order, so one is resolved when
    its arrival exists. Queues (SPEC §6.2): every arrival is buffered; a subscription's arrival
    index is the number of active same-name subscriptions created before it, and it is resolved
    once that arrival exists. A subscription with a breadcrumb of its kind is cancelled: not
    active, consumes nothing, not open.

    Active means never cancelled, for arrivals before the breadcrumb too. That is how the walk
    pairs them (SPEC §3.4): the code drops a subscription during the turn that records the
    breadcrumb, before the arrivals of that turn that come after the drop are applied, while
    the breadcrumb is written at the end of the turn. (A subscription that is active when an
    arrival that could reach it is applied takes that arrival, or an earlier subscription
    does, so it is never dropped afterwards: counting a later-cancelled subscription as
    cancelled all along gives the walk's pairing.)"""
    crumbs: set[tuple[type, int]] = set()  # (breadcrumb type, subscription id)
    for e in events:
        t = type(e)
        if t is ExternalSubscribedCancelled or t is QueueSubscriptionCancelled:
            crumbs.add((t, e.source_event_id))  # type: ignore[attr-defined]
    subs: list[tuple[type, int, tuple[type, str], int]] = []  # active: (crumb type, id, key, index)
    active: dict[tuple[type, str], int] = {}  # (crumb type, name) -> active subscriptions so far
    arrivals: dict[tuple[type, str], int] = {}  # joined (positional) / buffered (queue) arrivals
    for e in events:
        t = type(e)
        if t is ExternalSubscribed or t is QueueSubscribed:
            cls = _SUB_CRUMB[t]
            if (cls, e.event_id) in crumbs:
                continue  # cancelled
            key = (cls, e.name)  # type: ignore[attr-defined]
            n = active.get(key, 0)
            active[key] = n + 1
            subs.append((cls, e.event_id, key, n))
        elif t is ExternalEvent:
            key = (ExternalSubscribedCancelled, e.name)  # type: ignore[attr-defined]
            joined = arrivals.get(key, 0)
            if active.get(key, 0) > joined:
                arrivals[key] = joined + 1
        elif t is QueueEventDelivered:
            key = (QueueSubscriptionCancelled, e.name)  # type: ignore[attr-defined]
            arrivals[key] = arrivals.get(key, 0) + 1
    return [(cls, sid) for cls, sid, key, n in subs if n >= arrivals.get(key, 0)]


def _finish(
    engine: _Engine,
    history: list[HistoryEvent],
    delta: list[HistoryEvent],
    add: Any,
    outcome: tuple[str, Any],
    base: dict[str, Any],
    *,
    ran_code: bool,
) -> TurnResult:
    # The turn's code has run. Until the engine's next turn (begin_turn), or for good if it is
    # dropped, it runs no live code: a suspended generator closed later (by _Engine.release
    # when the cache evicts the engine or the execution ends, else by the garbage collector: no
    # cache, a from-scratch check) runs its `finally:` blocks as replay (no logs;
    # ctx.is_replaying() is True), not as live code.
    engine.is_replaying = True
    if outcome[0] == "continue":
        fast = _finish_continue(engine, history, delta, base, ran_code=ran_code)
        if fast is not None:
            return fast
    return _finish_general(engine, history, delta, add, outcome, base, ran_code=ran_code)


def _finish_general(
    engine: _Engine,
    history: list[HistoryEvent],
    delta: list[HistoryEvent],
    add: Any,
    outcome: tuple[str, Any],
    base: dict[str, Any],
    *,
    ran_code: bool,
) -> TurnResult:
    """Every other turn: terminal, continue-as-new, cancelled, or a waiting turn with dropped
    futures' side effects or a limit violation. (Apart from :func:`_finish` so the common turn
    does not pay for this function's closures.)"""
    kind, value = outcome
    inst, exe = engine.instance, engine.execution_id
    started = (history or delta)[0]
    assert isinstance(started, OrchestrationStarted)
    worker: list[ActivityExecute] = []
    orch: list[WorkItem] = []
    cancelled: list[tuple[str, int, int]] = []
    status: str | None = None
    output: str | None = None
    error: ErrorDetails | None = None

    def sub_breadcrumbs(dropped_too: bool = False) -> None:
        closing = _closing_subscriptions(engine, history, delta, ran_code=ran_code)
        if dropped_too and engine.dropped:
            # A cancelled or continue-as-new turn skips the dropped-future step (SPEC §3.8), so
            # a subscription the code dropped in it (a race it resolved before the cancel was
            # applied, or just before continuing as new) would stay open in history: it is
            # closed with the others.
            have = {sid for _, sid in closing}
            extra = [(_SLOT_CRUMB[s.kind], s.event_id) for s in engine.dropped
                     if (s.kind == "wait" or s.kind == "queue") and not s.done and s.event_id is not None
                     and s.event_id not in have and (_SLOT_CRUMB[s.kind], s.event_id) not in engine.crumbs]
            if extra:
                closing = sorted([*closing, *extra], key=lambda c: c[1])
        for cls, source_id in closing:
            add(cls, source_event_id=source_id, reason="orchestration_terminal")

    def activity_breadcrumbs(reason: str) -> None:
        events = [*history, *delta]
        for ev in _open_schedules(events, ActivityScheduled, (ActivityCompleted, ActivityFailed, ActivityCancelRequested)):
            add(ActivityCancelRequested, source_event_id=ev.event_id, reason=reason)
            cancelled.append((inst, exe, ev.event_id))

    def dropped_side_effects(dispatched: bool) -> None:
        # ``dispatched``: this turn's own schedules are sent (a turn that goes on waiting). A
        # final turn sends none, so a child it scheduled and dropped never starts: a cancel for
        # it would sit queued until an instance of that id appears (a retried tree re-using
        # the id) and cancel that one at once.
        fresh = () if dispatched else {e.event_id for e in delta if isinstance(e, SubOrchestrationScheduled)}
        for ev in delta:
            if isinstance(ev, ActivityCancelRequested) and ev.reason == "dropped_future":
                cancelled.append((inst, exe, ev.source_event_id))  # type: ignore[arg-type]
            elif (isinstance(ev, SubOrchestrationCancelRequested) and ev.reason == "dropped_future"
                  and ev.source_event_id not in fresh):
                # This turn's breadcrumbs come from _reconcile_dropped, for bound slots of
                # engine.dropped: the slot knows its child (a scan of the whole history per
                # dropped child made such turns grow with the history).
                child = next(s.child for s in engine.dropped if s.kind == "sub" and s.event_id == ev.source_event_id)
                orch.append(CancelInstance(instance=child_instance_id(inst, child), reason="parent dropped sub-orchestration future"))  # type: ignore[arg-type]

    def notify_parent(details: ErrorDetails | None, result: str | None) -> None:
        if started.parent_instance is None or started.parent_id is None:
            return
        pexec = started.parent_execution_id or 0  # 0 = "ask the provider" (dispatcher fills it)
        if details is None:
            orch.append(SubOrchCompletedMsg(parent_instance=started.parent_instance, parent_execution_id=pexec, parent_id=started.parent_id, result=result or "null"))
        else:
            orch.append(SubOrchFailedMsg(parent_instance=started.parent_instance, parent_execution_id=pexec, parent_id=started.parent_id, details=details))

    if kind == "continue":
        for ev in delta:
            orch_or_work = _dispatch(ev, inst, exe, started, engine.requested_versions)
            if isinstance(orch_or_work, ActivityExecute):
                worker.append(orch_or_work)
            elif orch_or_work is not None:
                orch.append(orch_or_work)
        dropped_side_effects(True)
    elif kind in ("completed", "failed"):
        # (a turn whose code diverged from its history - ran_code False - dispatches nothing, not
        # even the detached starts its wrong code asked for before the divergence was found)
        detached = [ev for ev in delta if isinstance(ev, OrchestrationChained)] if ran_code else []
        dropped_side_effects(False)
        orch.extend(_dispatch(ev, inst, exe, started, engine.requested_versions) for ev in detached)  # type: ignore[misc]
        sub_breadcrumbs()
        if kind == "completed":
            status, output = "Completed", value
            add(OrchestrationCompleted, output=value)
            notify_parent(None, value)
            activity_breadcrumbs("orchestration_terminal_completed")
        else:
            status, error = "Failed", value
            output = value.display_message()
            add(OrchestrationFailed, details=value)
            notify_parent(value, None)
            activity_breadcrumbs("orchestration_terminal_failed")
    elif kind == "can":
        task: ContinueAsNewTask = value
        carry = _carry_forward(engine, [*history, *delta])
        # No dropped-future step on a continue-as-new (SPEC §3.8 case 2): a future the code
        # dropped in this turn gets no `dropped_future` breadcrumb and no side effect (a dropped
        # child is not cancelled); an open subscription is closed like the others, and an open
        # activity gets the terminal breadcrumb after the terminal event (§3.9, §3.1 step 9).
        sub_breadcrumbs(dropped_too=True)
        status, output = "ContinuedAsNew", task.input
        add(OrchestrationContinuedAsNew, input=task.input)
        activity_breadcrumbs("orchestration_terminal_continued_as_new")
        orch.append(
            ContinueAsNew(
                instance=inst,
                orchestration=started.name,
                input=task.input,
                version=task.version,
                carry_forward_events=tuple(carry),
                initial_custom_status=engine.custom_status,
                parent_instance=started.parent_instance,
                parent_id=started.parent_id,
                parent_execution_id=started.parent_execution_id,
                execution_id=exe,
            )
        )
    else:  # cancelled
        reason = value
        sub_breadcrumbs(dropped_too=True)
        error = ApplicationError(kind="Cancelled", reason=reason, message="")
        status, output = "Failed", error.display_message()
        add(OrchestrationFailed, details=error)
        events = [*history, *delta]
        fresh = {e.event_id for e in delta}  # scheduled this turn: a cancelled turn starts none of them
        for ev in _open_schedules(events, SubOrchestrationScheduled, (SubOrchestrationCompleted, SubOrchestrationFailed)):
            if ev.event_id not in fresh:
                orch.append(CancelInstance(instance=child_instance_id(inst, ev.instance), reason="parent canceled"))  # type: ignore[attr-defined]
        notify_parent(error, None)
        activity_breadcrumbs("orchestration_terminal_failed")
        kind = "cancelled"

    violation = _check_limits(engine if ran_code else None, delta)
    if violation is not None:
        # SPEC §10.3 (⚠, as stated): OrchestrationFailed is appended to the delta - after the
        # turn's own terminal event when it has one (the last terminal event decides the
        # status) - and the turn's work items are discarded. Activities the turn left open get
        # their terminal breadcrumbs (once: those already written for the turn's own ending
        # count), and their rows are still cancelled.
        error = ApplicationError(kind="OrchestrationFailed", message=violation)
        status, output, kind = "Failed", violation, "failed"
        add(OrchestrationFailed, details=error)
        worker, orch = [], []
        notify_parent(error, None)
        activity_breadcrumbs("orchestration_terminal_failed")

    if kind == "continue":
        result_kind = "continue"
    elif kind == "can":
        result_kind = "continued_as_new"
    else:
        result_kind = kind
    return TurnResult(
        kind=result_kind,
        delta=tuple(delta),
        worker_items=tuple(worker),
        orchestrator_items=tuple(orch),
        cancelled=tuple(dict.fromkeys(cancelled)),
        status=status,
        output=output,
        error=error,
        logs=tuple(engine.logs),
        engine=engine if result_kind == "continue" and ran_code else None,
        **base,
    )


#: What the common turn does with a new event, by its (exact) class: 1 a dropped future's
#: breadcrumb (the general path takes the turn), 2 a schedule that becomes a work item
#: (:func:`_dispatch`); any other event is only recorded.
_CONTINUE_ROLE: dict[type, int] = {
    ActivityCancelRequested: 1, SubOrchestrationCancelRequested: 1,
    ActivityScheduled: 2, TimerCreated: 2, SubOrchestrationScheduled: 2, OrchestrationChained: 2,
}


def _finish_continue(
    engine: _Engine, history: list[HistoryEvent], delta: list[HistoryEvent], base: dict[str, Any], *, ran_code: bool
) -> TurnResult | None:
    """The common turn - the code is still waiting - without the terminal machinery: dispatch
    the new schedules, nothing else. None when the general path is needed (a dropped future's
    side effects, or a limit violation that fails the instance instead)."""
    started = (history or delta)[0]
    inst, exe = engine.instance, engine.execution_id
    worker: list[ActivityExecute] = []
    orch: list[WorkItem] = []
    versions = engine.requested_versions
    role_of = _CONTINUE_ROLE.get
    for ev in delta:
        role = role_of(type(ev))
        if role is None:
            continue
        if role == 1:
            return None
        item = _dispatch(ev, inst, exe, started, versions)  # type: ignore[arg-type]
        if type(item) is ActivityExecute:
            worker.append(item)
        else:
            orch.append(item)
    if _check_limits(engine if ran_code else None, delta) is not None:
        return None
    return TurnResult(
        kind="continue",
        delta=tuple(delta),
        worker_items=tuple(worker),
        orchestrator_items=tuple(orch),
        logs=tuple(engine.logs),
        engine=engine if ran_code else None,
        **base,
    )


def _dispatch(ev: HistoryEvent, inst: str, exe: int, started: OrchestrationStarted, versions: dict[int, str | None]) -> WorkItem | None:
    """Work item for a schedule event created this turn. Requested child versions are not part
    of history events (SPEC §2.2), so the engine keeps them beside the delta."""
    if isinstance(ev, ActivityScheduled):
        return ActivityExecute(
            instance=inst, execution_id=exe, id=ev.event_id, name=ev.name, input=ev.input,
            session_id=ev.session_id, tag=ev.tag, orchestration_name=started.name, orchestration_version=started.version,
        )
    if isinstance(ev, TimerCreated):
        return TimerFiredMsg(instance=inst, execution_id=exe, id=ev.event_id, fire_at_ms=ev.fire_at_ms)
    if isinstance(ev, SubOrchestrationScheduled):
        return StartOrchestration(
            instance=child_instance_id(inst, ev.instance), orchestration=ev.name, input=ev.input,
            version=versions.get(ev.event_id), parent_instance=inst, parent_id=ev.event_id, parent_execution_id=exe,
        )
    if isinstance(ev, OrchestrationChained):
        return StartOrchestration(instance=ev.instance, orchestration=ev.name, input=ev.input, version=versions.get(ev.event_id))
    return None


def _carry_forward(engine: _Engine, events: list[HistoryEvent]) -> list[tuple[str, str]]:
    """Queue arrivals not consumed by active subscriptions, in history order, at most 20."""
    skip: set[int] = set()
    for name, buffer in engine.q_buffer.items():
        active = [s for s in engine.q_subs.get(name, []) if not s.cancelled]
        for event_id, _ in buffer[: len(active)]:
            skip.add(event_id)
    carried = [(e.name, e.data) for e in events if isinstance(e, QueueEventDelivered) and e.event_id not in skip]
    if len(carried) > LIMITS["carry_forward"]:
        engine.logs.append((30, f"continue-as-new: {len(carried) - LIMITS['carry_forward']} queued message(s) over the carry-forward limit of {LIMITS['carry_forward']} were dropped"))
    return carried[: LIMITS["carry_forward"]]


def _check_limits(engine: _Engine | None, delta: list[HistoryEvent]) -> str | None:
    # The last status the turn set (a reset after it does not make an oversized value
    # acceptable: the reference checks what was set, as it fails such a turn) is checked first;
    # then tags and KV values in delta order. (One pass over the delta; events are exact classes.)
    last_status = None
    problem = None
    for ev in delta:
        t = type(ev)
        if t is ActivityScheduled:
            if problem is None and ev.tag is not None:
                n = len(ev.tag.encode("utf-8"))
                if n > LIMITS["tag_bytes"]:
                    problem = f"Activity '{ev.name}' tag size ({n} bytes) exceeds limit ({LIMITS['tag_bytes']} bytes)"
        elif t is CustomStatusUpdated:
            if ev.status is not None:
                last_status = ev
        elif t is KeyValueSet and problem is None:
            n = len(ev.value.encode("utf-8"))
            if n > LIMITS["kv_value_bytes"]:
                problem = f"KV value for key '{ev.key}' ({n} bytes) exceeds limit ({LIMITS['kv_value_bytes']} bytes)"
    if last_status is not None:
        n = len(last_status.status.encode("utf-8"))
        if n > LIMITS["custom_status_bytes"]:
            return f"Custom status size ({n} bytes) exceeds limit ({LIMITS['custom_status_bytes']} bytes)"
    if problem is not None:
        return problem
    if engine is not None and len(engine.kv) > LIMITS["kv_keys"]:
        return f"KV key count ({len(engine.kv)}) exceeds limit ({LIMITS['kv_keys']})"
    # Event ids are consecutive from 1, so the last new id is the execution's size after the turn.
    if delta and delta[-1].event_id > LIMITS["history_events"]:
        return (f"history size ({delta[-1].event_id} events) exceeds limit ({LIMITS['history_events']} events); "
                "use continue-as-new to bound history")
    return None


def _corrupt(inp: TurnInput, execution_id: int, history: list[HistoryEvent], message: str) -> TurnResult:
    details = ConfigurationErrorDetails(message=message)
    last = history[-1].event_id if history else 0
    ev = OrchestrationFailed(event_id=last + 1, instance_id=inp.instance, execution_id=execution_id, timestamp_ms=inp.now_ms, details=details)
    return TurnResult(kind="failed", execution_id=execution_id, delta=(ev,), status="Failed", output=details.display_message(), error=details)


def poison_turn(
    inp: TurnInput, *, attempt_count: int, max_attempts: int, history_error: str | None = None
) -> TurnResult:
    """SPEC §10.2: fail an instance whose batch was delivered too often (or whose history cannot
    be read). Writes ``OrchestrationStarted`` first when history is empty, so a never-started
    instance shows as Failed, and notifies a parent."""
    from .events import to_dict

    start = batch_start(inp.messages)  # (as the turn reads it: a ContinueAsNew beats a duplicate start)
    execution_id = inp.execution_id
    history = list(inp.history)
    if isinstance(start, ContinueAsNew) and any(isinstance(e, OrchestrationContinuedAsNew) for e in history):
        # A poisoned continue-as-new fails the *new* execution; the old one stays ContinuedAsNew.
        execution_id, history = inp.execution_id + 1, []
    elif history_error is None and any(isinstance(e, TERMINAL_EVENTS) for e in history):
        # The execution has ended (Completed / Failed - a cancel too - or ContinuedAsNew with no
        # next execution to start in this batch): its late messages are discarded however often
        # they were delivered (SPEC §3.1 step 3, §3.12), as on any other fetch. Poisoning here
        # appended a second ending after the first and rewrote the instance's outcome (a
        # cancelled instance became "poison: ..."; found by the generated cancellation probe).
        return TurnResult(kind="noop", execution_id=inp.execution_id, message="instance is already terminal")
    env = {"instance_id": inp.instance, "execution_id": execution_id, "timestamp_ms": inp.now_ms}
    delta: list[HistoryEvent] = []
    started: OrchestrationStarted | None = history[0] if history and isinstance(history[0], OrchestrationStarted) else None
    if history_error is not None:
        details: ErrorDetails = PoisonError(
            attempt_count=attempt_count, max_attempts=max_attempts, message_type="FailedDeserialization",
            instance=inp.instance, execution_id=execution_id, error=history_error,
        )
        delta.append(OrchestrationFailed(event_id=99999, details=details, **env))
    else:
        batch = [to_dict(m) for m in inp.messages]
        import json

        details = PoisonError(
            attempt_count=attempt_count, max_attempts=max_attempts, message_type="Orchestration",
            instance=inp.instance, execution_id=execution_id, message=json.dumps(batch, sort_keys=True),
        )
        next_id = history[-1].event_id + 1 if history else 1
        if not history:
            started = OrchestrationStarted(
                event_id=1, name=start.orchestration if start else inp.orchestration_name,
                version=(start.version if start else inp.version) or "", input=start.input if start else "",
                parent_instance=getattr(start, "parent_instance", None), parent_id=getattr(start, "parent_id", None),
                parent_execution_id=getattr(start, "parent_execution_id", None), **env,
            )
            delta.append(started)
            next_id = 2
        delta.append(OrchestrationFailed(event_id=next_id, details=details, **env))
    orch: list[WorkItem] = []
    if started is not None and started.parent_instance is not None and started.parent_id is not None:
        orch.append(SubOrchFailedMsg(parent_instance=started.parent_instance, parent_execution_id=started.parent_execution_id or 0, parent_id=started.parent_id, details=details))
    return TurnResult(
        kind="failed", execution_id=execution_id, delta=tuple(delta), orchestrator_items=tuple(orch),
        status="Failed", output=details.display_message(), error=details,
        orchestration_name=started.name if started else inp.orchestration_name,
        orchestration_version=started.version if started else inp.version,
        parent_instance=started.parent_instance if started else None,
        pinned_version=started.duroxide_version if started else None,
    )
