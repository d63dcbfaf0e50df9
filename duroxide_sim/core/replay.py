"""The turn executor: (history, new messages, now_ms) -> TurnResult (SPEC §3, §4, §6–§8, §10.3).

One *turn* takes the persisted history of an instance's current execution plus a batch of
queued messages, reruns the orchestration code from the start, and returns what to commit:
new history events, work items to dispatch, activities to cancel, execution metadata.

How the code is driven: orchestration code yields (or awaits) task descriptors. Yielding a task
*emits* its action(s) into a FIFO; walking history *matches* schedule events against that FIFO
in order; completion events *deliver* results to the matched tasks; the code is resumed ("polled")
only when something it may be waiting on changed. Exactly one completion is delivered between
polls, which makes a race's winner the child whose completion comes first in history. Actions
left in the FIFO after the walk are new work: they get the next event ids.

Every divergence between code and history becomes a ``Configuration{Nondeterminism}`` failure
whose message is built by :func:`nondeterminism_message` (kind, event id, both sides, the
orchestration's source line) so that all such messages read alike.

Pure: receives ``now_ms`` as data, never reads a clock, does no I/O; trace messages are returned
in ``TurnResult.logs`` for the dispatcher to emit once the turn is committed.

The turn is split by responsibility: this module reads the batch and walks history;
:mod:`.engine` interprets the orchestration code; :mod:`.finalize` maps the outcome to events
and work; :mod:`.turn` holds the records; :mod:`.nondeterminism` builds the messages.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs

from .engine import NO_FIFO, _Engine
from .events import (
    COMPLETION_EVENTS,
    SCHEDULE_EVENTS,
    ActivityCompleted,
    ActivityCompletedMsg,
    ActivityFailed,
    ActivityFailedMsg,
    ActivityScheduled,
    ApplicationError,
    CallActivity,
    CancelInstance,
    ClearKeyValue,
    ConfigurationErrorDetails,
    ContinueAsNew,
    CreateTimer,
    CustomStatusUpdated,
    DequeueEvent,
    ErrorDetails,
    ExternalEvent,
    ExternalRaised,
    ExternalSubscribed,
    HistoryEvent,
    InfrastructureError,
    KeyValueCleared,
    KeyValuesCleared,
    KeyValueSet,
    OrchestrationCancelRequested,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueEventDelivered,
    QueueMessage,
    QueueSubscribed,
    SetKeyValue,
    StartOrchestration,
    StartOrchestrationDetached,
    StartSubOrchestration,
    SubOrchCompletedMsg,
    SubOrchestrationCompleted,
    SubOrchestrationFailed,
    SubOrchestrationScheduled,
    SubOrchFailedMsg,
    TimerCreated,
    TimerFired,
    TimerFiredMsg,
    UpdateCustomStatus,
    WaitExternal,
    WorkItem,
)
from .finalize import _corrupt, _finish, _reconcile_dropped, poison_turn
from .nondeterminism import _Divergence, describe_action, describe_event, nondeterminism_message
from .registry import Registry
from .turn import LIMITS, TurnInput, TurnResult, _Builder, batch_start

__all__ = [
    "TurnInput",
    "TurnResult",
    "LIMITS",
    "execute_turn",
    "EngineCache",
    "poison_turn",
    "nondeterminism_message",
    "describe_event",
    "describe_action",
]




# The turn
# ---------------------------------------------------------------------------------------------


def _completion_id(msg: WorkItem) -> int | None:
    if isinstance(msg, (ActivityCompletedMsg, ActivityFailedMsg, TimerFiredMsg)):
        return msg.id
    if isinstance(msg, (SubOrchCompletedMsg, SubOrchFailedMsg)):
        return msg.parent_id
    return None


_SCHED_FOR = {
    ActivityCompletedMsg: (ActivityScheduled, "activity"),
    ActivityFailedMsg: (ActivityScheduled, "activity"),
    TimerFiredMsg: (TimerCreated, "timer"),
    SubOrchCompletedMsg: (SubOrchestrationScheduled, "suborchestration"),
    SubOrchFailedMsg: (SubOrchestrationScheduled, "suborchestration"),
}
_KIND_NAME = {ActivityScheduled: "activity", TimerCreated: "timer", SubOrchestrationScheduled: "suborchestration",
              ExternalSubscribed: "external", QueueSubscribed: "queue", OrchestrationChained: "detached"}


class _Completed:
    """Source ids already completed: in history (shared, never mutated here) or in this batch."""

    __slots__ = ("persisted", "batch")

    def __init__(self, persisted: set[int]) -> None:
        self.persisted = persisted
        self.batch: set[int] = set()

    def __contains__(self, source_id: object) -> bool:
        return source_id in self.batch or source_id in self.persisted

    def add(self, source_id: int) -> None:
        self.batch.add(source_id)


_TERMINAL = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)


def _already_completed(source_id: int, completed: Any) -> bool:
    """Duplicate filter (SPEC §3.3 step 2): a completion whose schedule already completed, in
    history or earlier in this batch, is dropped. The duplicate-delivery fault exists to catch
    an engine that gets this wrong."""
    return source_id in completed


class EngineCache:
    """Live orchestration engines kept between turns of the same execution.

    After a ``continue`` turn commits, the dispatcher puts the turn's engine here. The next turn
    of that execution then resumes the live generator/coroutine and applies only the new events,
    instead of re-running the code over the whole history: a turn costs its new events, not the
    history length. An engine is reused when the handler is the same object, the execution is
    the same, and the history it produced is a prefix of the fetched one (its length is at most
    the fetched length, the event at its last position carries the last event id it produced,
    and the first event is the OrchestrationStarted it began from: same timestamp and input, so
    an instance deleted and created again under the same id is not mistaken for it):

    - *warm*: the fetched history is exactly the one it produced; only the turn's new events
      are walked;
    - *catch-up*: other runtimes took turns of the instance since (the fetched history is the
      engine's plus a suffix); the engine walks the suffix as replay (schedules matched against
      the code's actions, completions delivered, exactly as a from-scratch replay walks them),
      then the turn's new events.

    Anything else (a crash, a redeploy, a continue-as-new, a history that does not extend the
    engine's) falls back to a full replay. Both reuses count as ``hits`` (catch-ups also as
    ``catchups``). Bounded: the least recently used engine is dropped beyond ``capacity``; the
    engines put as ``short`` (cheap to replay) have their own, smaller LRU bound
    ``short_capacity``, so stale ones (instances that another runtime runs now, or that were
    deleted) age out instead of filling the cache and keeping new ones out.
    """

    def __init__(self, capacity: int = 1024, lock: Any = None, short_capacity: int | None = None) -> None:
        self.capacity = capacity
        self.short_capacity = short_capacity
        self._short: OrderedDict[str, None] = OrderedDict()  # the short entries, LRU order
        self._items: OrderedDict[str, _Engine] = OrderedDict()
        self._lock = lock if lock is not None else contextlib.nullcontext()  # injected: core has no threads
        self.hits = 0  # warm turns and catch-ups
        self.misses = 0
        self.catchups = 0  # hits whose engine was behind the fetched history

    def __len__(self) -> int:
        return len(self._items)

    def vouches(self, instance: str, execution_id: int, history: Sequence[HistoryEvent]) -> bool:
        """True when a cached engine produced exactly this history (so it is not terminal)."""
        return self._voucher(instance, execution_id, history) is not None

    def _voucher(self, instance: str, execution_id: int, history: Sequence[HistoryEvent]) -> _Engine | None:
        """The cached engine that produced exactly this history (left in the cache), or None."""
        with self._lock:
            engine = self._items.get(instance)
        if (
            engine is not None
            and engine.execution_id == execution_id
            and engine.history_len == len(history)
            and history
            and engine.last_event_id == history[-1].event_id
            and _same_start(engine, history[0])
        ):
            return engine
        return None

    def take(self, instance: str, execution_id: int, history: Sequence[HistoryEvent], handler: Any,
             voucher: _Engine | None = None) -> _Engine | None:
        """Remove and return the engine that produced this history or a prefix of it, or None.

        The caller walks ``history[engine.history_len:]`` (empty for a warm engine) as replay.
        ``voucher``: what :meth:`_voucher` returned for this same history and execution earlier
        in the turn; when it is still the cached engine, only the handler is left to check."""
        with self._lock:
            engine = self._items.pop(instance, None)
            self._short.pop(instance, None)
        if engine is not None and engine is voucher and engine.handler is handler:
            self.hits += 1  # (warm: it produced exactly this history)
            return engine
        if (
            engine is None
            or engine.execution_id != execution_id
            or engine.handler is not handler
            or not 0 < engine.history_len <= len(history)
            or history[engine.history_len - 1].event_id != engine.last_event_id
            or not _same_start(engine, history[0])
        ):
            self.misses += 1
            if engine is not None:
                engine.release()  # (out of the cache, and of no use for this history)
            return None
        self.hits += 1
        if engine.history_len < len(history):
            self.catchups += 1
        return engine

    def put(self, instance: str, engine: _Engine, *, short: bool = False) -> None:
        gone: list[_Engine | None] = []  # the engines this put pushes out
        with self._lock:
            items, shorts = self._items, self._short
            gone.append(items.pop(instance, None))
            items[instance] = engine  # (last: the most recently used)
            if short and self.short_capacity is not None:
                shorts[instance] = None
                shorts.move_to_end(instance)
                while len(shorts) > self.short_capacity:
                    gone.append(items.pop(shorts.popitem(last=False)[0], None))
            else:
                shorts.pop(instance, None)
            while len(items) > self.capacity:
                instance_out, engine_out = items.popitem(last=False)
                shorts.pop(instance_out, None)
                gone.append(engine_out)
        _release(gone, engine)

    def evict(self, instance: str) -> None:
        with self._lock:
            engine = self._items.pop(instance, None)
            self._short.pop(instance, None)
        _release([engine])

    def clear(self) -> None:
        with self._lock:
            engines = list(self._items.values())
            self._items.clear()
            self._short.clear()
        _release(engines)


def _release(engines: list[_Engine | None], kept: _Engine | None = None) -> None:
    """Release the engines a cache dropped (see _Engine.release), outside its lock: releasing
    frees suspended generators, which runs the code's ``finally`` blocks."""
    for engine in engines:
        if engine is not None and engine is not kept:
            engine.release()


def _same_start(engine: _Engine, first: HistoryEvent) -> bool:
    """The history starts the way the engine's did: event ids alone cannot tell an instance
    deleted and created again (same id, same execution 1, consecutive event ids) from the one
    the engine belongs to."""
    return first.timestamp_ms == engine.started_ms and getattr(first, "input", None) == engine.input_text


def _start_collisions(inp: TurnInput) -> tuple[SubOrchFailedMsg, ...]:
    """Parents whose child start landed on an instance that is not their child.

    A ``StartOrchestration`` with a parent link is a sub-orchestration start. When the id
    already names an instance - finished, or running with another parent or none (two parents
    picked the same explicit child id; a client started ``p::sub::2`` itself) - the start is
    dropped or absorbed as any duplicate start is (SPEC §3.1 step 3, §3.2), and the parent
    waited for good for a child that would never report to it. It gets a failed child instead
    (its code sees the error like any child failure, §7). A redelivered start of the
    instance's own child link (same parent, call id and known parent execution) is an ordinary
    duplicate and gets nothing."""
    starts = [m for m in inp.messages if type(m) is StartOrchestration and m.parent_instance is not None
              and m.parent_id is not None]
    if not starts:
        return ()
    history = inp.history
    if history:
        own = history[0]
        own_link = (getattr(own, "parent_instance", None), getattr(own, "parent_id", None),
                    getattr(own, "parent_execution_id", None))
        finished = any(isinstance(e, _TERMINAL) for e in history)  # (rare: only on a start collision)
    else:
        first = next((m for m in inp.messages if isinstance(m, (StartOrchestration, ContinueAsNew))), None)
        if first is None or type(first) is not StartOrchestration:
            return ()
        own_link = (first.parent_instance, first.parent_id, first.parent_execution_id)
        starts = [m for m in starts if m is not first]
        finished = False
    out = []
    for m in starts:
        if (m.parent_instance, m.parent_id) == own_link[:2] and m.parent_execution_id and m.parent_execution_id == own_link[2]:
            # The instance's own start again: the same call of the same, known, parent
            # execution. A missing generation proves nothing (a later execution of the parent
            # reuses call ids), so such a start is told the id is taken, as the reference does.
            continue
        state = "has already finished" if finished else "is running for another caller"
        out.append(SubOrchFailedMsg(
            parent_instance=m.parent_instance, parent_execution_id=m.parent_execution_id or 0, parent_id=m.parent_id,
            details=ApplicationError(kind="OrchestrationFailed", message=(
                f"sub-orchestration instance {inp.instance!r} already exists ({state}); "
                "a sub-orchestration needs an instance id no other instance uses")),
        ))
    return tuple(out)


def execute_turn(
    inp: TurnInput, registry: Registry, cache: EngineCache | None = None, inspect: list[Any] | None = None
) -> TurnResult:
    """Run one turn (SPEC §3.1 steps 3–9). Never raises for user-code problems. A child start
    that collides with an existing instance fails its parent (:func:`_start_collisions`)."""
    ran: list[Any] = inspect if inspect is not None else []
    result = _execute_turn(inp, registry, cache, ran)
    if result.engine is None and ran and inspect is None:
        # The turn's engine is not handed on (its execution ended, or the turn ran no code):
        # no later turn resumes it, and nobody inspects it, so it is released now rather than
        # left in reference cycles for the collector (see _Engine.release).
        ran[0].release()
    for m in inp.messages:
        if type(m) is StartOrchestration and m.parent_instance is not None:
            notices = _start_collisions(inp)
            if notices:
                result = attrs.evolve(result, orchestrator_items=(*result.orchestrator_items, *notices),
                                      collisions=notices)
            break
    return result


def _execute_turn(
    inp: TurnInput, registry: Registry, cache: EngineCache | None = None, inspect: list[Any] | None = None
) -> TurnResult:
    """Run one turn (SPEC §3.1 steps 3–9). Never raises for user-code problems.

    With a ``cache``, a live engine from an earlier turn of this execution is resumed when the
    fetched history is the one it produced (warm) or extends it (catch-up: the missing suffix
    is walked as replay first); see :class:`EngineCache`. The result is the same either way.
    ``inspect`` (a list) receives the turn's engine, for tools that report where in the code
    something happened (:mod:`.verify`)."""
    history: Sequence[HistoryEvent] = inp.history
    start = batch_start(inp.messages)  # (one start item per batch: SPEC §3.2, see batch_start)
    # (a batch without a start item - the common turn - has no start message to leave out)
    rest: Sequence[WorkItem] = inp.messages if start is None else [
        msg for msg in inp.messages if not isinstance(msg, (StartOrchestration, ContinueAsNew))]

    # A history the cache vouches for was produced by a committed non-terminal turn of ours, so
    # the O(history) scan for a terminal event can be skipped. Otherwise one pass over the
    # history collects everything the prep step needs (terminal, schedules, completions, cancel).
    voucher = cache._voucher(inp.instance, inp.execution_id, history) if cache is not None else None
    terminal = None
    scan: tuple[dict[int, HistoryEvent], set[int], bool] | None = None
    if voucher is None:
        terminal, scan = _scan_history(history)
    is_can = isinstance(start, ContinueAsNew)
    if terminal is not None and not (is_can and isinstance(terminal, OrchestrationContinuedAsNew)):
        return TurnResult(kind="noop", execution_id=inp.execution_id, message="instance is already terminal")
    if is_can:
        assert isinstance(start, ContinueAsNew)
        execution_id = inp.execution_id + 1
        history = []
        carried = [QueueMessage(instance=inp.instance, name=n, data=d) for n, d in start.carry_forward_events]
        rest = carried + rest
    else:
        execution_id = inp.execution_id

    # Resolve the handler: pinned history version (Recommend, SPEC §3.2) > explicit > policy.
    if history:
        first = history[0]
        if not isinstance(first, OrchestrationStarted):
            return _corrupt(inp, execution_id, history, "corrupted history: first event must be OrchestrationStarted")
        name, version = first.name, first.version
    elif start is not None:
        name, version = start.orchestration, start.version
    else:
        return _corrupt(inp, execution_id, history, "corrupted history: empty")
    handler = registry.resolve(name, version)
    if handler is None:
        return TurnResult(kind="unregistered", execution_id=execution_id, message=registry.describe_missing(name, version))

    delta: list[HistoryEvent] = []
    add = _Builder(delta, history[-1].event_id if history else 0, inp.instance, execution_id, inp.now_ms)
    resumed = cache.take(inp.instance, execution_id, history, handler, voucher) if cache is not None and history else None
    # How much of the history the resumed engine has walked already: all of it (warm) or a
    # prefix (catch-up: the rest, written by other runtimes, is walked below as replay).
    walked_from = resumed.history_len if resumed is not None else 0
    warm = resumed if walked_from == len(history) else None

    if history:
        started = first  # (an OrchestrationStarted: checked above)
    else:
        assert start is not None
        started = add(
            OrchestrationStarted,
            name=name,
            version=handler.version,
            input=start.input,
            parent_instance=start.parent_instance,
            parent_id=start.parent_id,
            parent_execution_id=start.parent_execution_id,
            carry_forward_events=start.carry_forward_events if is_can and start.carry_forward_events else None,  # type: ignore[union-attr]
            initial_custom_status=start.initial_custom_status if is_can else None,  # type: ignore[union-attr]
        )  # type: ignore[assignment]

    # --- prep: messages -> events (SPEC §3.3) ---------------------------------------------
    abort: ErrorDetails | None = None
    if warm is not None:
        # The cached engine tracked these while walking the history it produced. (A catch-up
        # engine has not walked the suffix yet: it uses the full scan, like a cold replay.)
        schedules, cancel_seen = warm.schedules, warm.cancel_reason is not None
        completed = _Completed(warm.completed)
    elif scan is not None and history is inp.history:
        schedules, persisted_done, cancel_seen = scan
        completed = _Completed(persisted_done)
    else:
        _, (schedules, persisted_done, cancel_seen) = _scan_history(history)
        completed = _Completed(persisted_done)
    for msg in rest:
        sid = _completion_id(msg)
        if sid is not None:
            exec_of = msg.parent_execution_id if isinstance(msg, (SubOrchCompletedMsg, SubOrchFailedMsg)) else msg.execution_id  # type: ignore[attr-defined]
            if exec_of != execution_id:
                continue  # stale execution: dropped silently
            if _already_completed(sid, completed):
                continue  # duplicate (Recommend: any completion kind for an already-completed id)
            want, label = _SCHED_FOR[type(msg)]
            sched = schedules.get(sid)
            if sched is None:
                missing = {"activity": "completion", "timer": "timer", "suborchestration": "sub-orchestration"}[label]
                abort = abort or ConfigurationErrorDetails(message=f"no matching schedule for {missing} id={sid}")
                continue
            if not isinstance(sched, want):
                abort = abort or ConfigurationErrorDetails(
                    message=f"completion kind mismatch for id={sid}, expected '{_KIND_NAME[type(sched)]}', got '{label}'"
                )
                continue
            completed.add(sid)
            if isinstance(msg, ActivityCompletedMsg):
                add(ActivityCompleted, source_event_id=sid, result=msg.result)
            elif isinstance(msg, ActivityFailedMsg):
                add(ActivityFailed, source_event_id=sid, details=msg.details)
                if not isinstance(msg.details, ApplicationError):
                    abort = abort or msg.details
            elif isinstance(msg, TimerFiredMsg):
                add(TimerFired, source_event_id=sid, fire_at_ms=msg.fire_at_ms)
            elif isinstance(msg, SubOrchCompletedMsg):
                add(SubOrchestrationCompleted, source_event_id=sid, result=msg.result)
            else:
                assert isinstance(msg, SubOrchFailedMsg)
                add(SubOrchestrationFailed, source_event_id=sid, details=msg.details)
                if not isinstance(msg.details, ApplicationError):
                    abort = abort or msg.details
        elif isinstance(msg, ExternalRaised):
            add(ExternalEvent, name=msg.name, data=msg.data)
        elif isinstance(msg, QueueMessage):
            add(QueueEventDelivered, name=msg.name, data=msg.data)
        elif isinstance(msg, CancelInstance):
            if not cancel_seen:
                cancel_seen = True
                add(OrchestrationCancelRequested, reason=msg.reason)

    if resumed is not None:
        engine = resumed
        engine.begin_turn(inp)
    else:
        engine = _Engine(inp, handler, started, execution_id)
    if inspect is not None:
        inspect.append(engine)
    prior_cancel = engine.cancel_reason  # a cancel request among the events walked in earlier turns
    base = dict(
        execution_id=execution_id,
        orchestration_name=started.name,
        orchestration_version=started.version,
        parent_instance=started.parent_instance,
        pinned_version=started.duroxide_version,
    )
    if abort is not None:
        return _finish(engine, history, delta, add, ("failed", abort), base, ran_code=False)

    # --- replay loop (SPEC §3.4) -------------------------------------------------------------
    # A resumed engine already stands where the turn that cached it left it (settled, nothing to
    # poll): a warm one walks only this turn's events; a catch-up one first replays the history
    # written since by other runtimes. A cold one re-runs the code over the whole history.
    if warm is not None:
        events = delta
    elif walked_from:
        events = list(history[walked_from:]) + delta
    else:
        events = list(history) + delta
    engine.events = events
    persisted = len(history) - walked_from
    engine.is_replaying = persisted > 0
    must_poll = resumed is None
    engine.unwalked = 0
    try:
        for i, ev in enumerate(events):
            engine.cursor = i
            if i == persisted:  # (the rest are this turn's new events; nothing sets it back)
                engine.is_replaying = False
            if must_poll:
                engine.poll()
                must_poll = False
                if engine.output is not None:
                    engine.unwalked = len(events) - i
                    break
            if engine.apply(ev):
                must_poll = True
        engine.is_replaying = False
        engine.events = []  # walked: ctx_now() reads it only while replaying; a cached engine keeps no history
        engine.cursor = 0
        if must_poll and engine.output is None:
            engine.poll()
        # --- new actions and quiescence (SPEC §3.6, §3.7) -------------------------------------
        iterations = 0
        while True:
            poll_again = _convert_new(engine, add)
            if engine.output is not None or not poll_again:
                break
            if engine.fifo:
                # Stopped after a subscription the buffer could satisfy at once: the code sees
                # it before the rest are bound, as a replay walking these events would (a race
                # of two dequeues on buffered messages: the loser is dropped before it takes
                # one). Part of one iteration, not a new one.
                engine.poll()
                continue
            iterations += 1
            if iterations > LIMITS["quiescence_iterations"]:
                err = InfrastructureError(operation="quiescence_loop", message="orchestration did not settle within 100 iterations")
                return _finish(engine, history, delta, add, ("failed", err), base, ran_code=True)
            engine.poll()
    except _Divergence as div:
        return _finish(engine, history, delta, add, ("failed", ConfigurationErrorDetails(message=str(div))), base, ran_code=False)

    # --- finalization precedence (SPEC §3.8) ---------------------------------------------
    # The first cancel request of the execution decides the reason: one walked in an earlier turn
    # (a resumed engine's), else one in the events walked now (history suffix and new events).
    cancel = None
    if prior_cancel is not None:
        cancel = OrchestrationCancelRequested(event_id=0, reason=prior_cancel)
    elif cancel_seen:
        cancel = next((e for e in events if isinstance(e, OrchestrationCancelRequested)), None)
    if cancel is None and resumed is not None and engine.cancel_reason is not None:
        cancel = OrchestrationCancelRequested(event_id=0, reason=engine.cancel_reason)
    if cancel is not None:
        return _finish(engine, history, delta, add, ("cancelled", cancel.reason), base, ran_code=True)  # type: ignore[attr-defined]
    if engine.can is not None:
        # SPEC §3.8 case 2: a continue-as-new ends the execution without dropped-future
        # reconciliation (no `dropped_future` breadcrumbs, no child cancelled for a dropped
        # future); what is still open gets the end-of-execution breadcrumbs instead (§3.9).
        return _finish(engine, history, delta, add, ("can", engine.can), base, ran_code=True)
    # (the walk may have stopped inside the persisted history: the code returned first)
    # A turn that dropped nothing has nothing to record, and nothing persisted to check unless
    # it walked a breadcrumb (a warm engine checked those as it walked them; the engine records
    # every one it walks in engine.crumbs): the common turn, warm or replayed, skips this.
    if engine.dropped or (warm is None and engine.crumbs):
        walked_to = len(history) - max(0, engine.unwalked - (len(events) - persisted)) if engine.unwalked else None
        try:
            _reconcile_dropped(engine, history, delta, add, warm=warm is not None,
                               walked_from=0 if warm is not None else walked_from, walked_to=walked_to)
        except _Divergence as div:
            return _finish(engine, history, delta, add, ("failed", ConfigurationErrorDetails(message=str(div))), base, ran_code=False)
    # What the engine has walked or written once this turn commits, breadcrumbs included (a
    # cached engine is resumed only on a history that extends exactly this).
    engine.last_event_id = delta[-1].event_id if delta else (history[-1].event_id if history else 0)
    engine.history_len = len(history) + len(delta)
    if engine.output is not None:
        ok, value = engine.output
        return _finish(engine, history, delta, add, ("completed", value) if ok else ("failed", value), base, ran_code=True)
    return _finish(engine, history, delta, add, ("continue", None), base, ran_code=True)


#: Event class -> role in the prep step's single history pass (exact classes: events are final).
_ROLE: dict[type, int] = {
    **dict.fromkeys(SCHEDULE_EVENTS, 1),
    **dict.fromkeys(COMPLETION_EVENTS, 2),
    **dict.fromkeys(_TERMINAL, 3),
    OrchestrationCancelRequested: 4,
}


def _scan_history(history: Sequence[HistoryEvent]) -> tuple[HistoryEvent | None, tuple[dict[int, HistoryEvent], set[int], bool]]:
    """(first terminal event, (schedules by id, completed source ids, cancel requested))."""
    terminal = None
    schedules: dict[int, HistoryEvent] = {}
    completed: set[int] = set()
    cancel_seen = False
    role = _ROLE.get
    for e in history:
        r = role(type(e))
        if r is None:
            continue
        if r == 1:
            schedules[e.event_id] = e
        elif r == 2:
            completed.add(e.source_event_id)  # type: ignore[attr-defined]
        elif r == 3:
            if terminal is None:
                terminal = e
        else:
            cancel_seen = True
    return terminal, (schedules, completed, cancel_seen)


def _convert_new(engine: _Engine, add: Any) -> bool:
    """Turn FIFO actions into new events (SPEC §3.6). True if something became ready.

    Stops early (actions left in the FIFO) after binding a queue subscription while more actions
    wait: the caller polls first, exactly where a replay of these events polls (binding a
    ``QueueSubscribed`` may hand it a buffered message), so live turns and replays agree."""
    poll_again = False
    while engine.fifo:
        entry = engine.fifo.popleft()
        if isinstance(entry, tuple):
            action = entry[0]
            if isinstance(action, UpdateCustomStatus):
                add(CustomStatusUpdated, status=action.status)
            elif isinstance(action, SetKeyValue):
                add(KeyValueSet, key=action.key, value=action.value, last_updated_at_ms=action.ts)
            elif isinstance(action, ClearKeyValue):
                add(KeyValueCleared, key=action.key)
            else:
                add(KeyValuesCleared)
            continue
        slot, action = entry, entry.action
        if isinstance(action, CallActivity):
            ev = add(ActivityScheduled, name=action.name, input=action.input, session_id=action.session_id, tag=action.tag)
        elif isinstance(action, CreateTimer):
            ev = add(TimerCreated, fire_at_ms=action.fire_at_ms)
        elif isinstance(action, WaitExternal):
            ev = add(ExternalSubscribed, name=action.name)
        elif isinstance(action, DequeueEvent):
            ev = add(QueueSubscribed, name=action.name)
        elif isinstance(action, StartSubOrchestration):
            # Auto ids are `sub::{id}` (SPEC §7). Executions after a continue-as-new reuse event
            # ids, so they get `sub::e{execution}::{id}`: otherwise a new child would collide
            # with the previous execution's (completed) child and never start.
            if action.instance:
                child = action.instance
            elif engine.execution_id == 1:
                child = f"sub::{add.peek_id()}"
            else:
                child = f"sub::e{engine.execution_id}::{add.peek_id()}"
            ev = add(SubOrchestrationScheduled, name=action.name, instance=child, input=action.input)
            engine.request_version(ev.event_id, action.version)
        else:
            assert isinstance(action, StartOrchestrationDetached)
            ev = add(OrchestrationChained, name=action.name, instance=action.instance, input=action.input)
            engine.request_version(ev.event_id, action.version)
        if engine._bind(slot, ev):
            poll_again = True
            if engine.fifo and type(ev) is QueueSubscribed and engine.output is None:
                # (see above: poll before binding the rest - unless the code has returned: then
                # nothing can observe the binding, and the rest must still be converted; the
                # turn used to end here and drop the code's last status / KV / detached starts)
                return True
    engine.fifo = NO_FIFO  # drained: give the (empty) deque back
    return poll_again


