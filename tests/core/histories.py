"""Builders for hand-built histories, messages and turns used by the replay-engine tests.

Every event gets ``instance_id="i"`` and ``execution_id=1`` unless overridden through ``**kw``
(``timestamp_ms`` defaults to 0; events the engine writes carry ``timestamp_ms=NOW``, use
:func:`new` to stamp expected events that way). Message builders mirror the work items the
dispatcher would hand to a turn.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import attrs

from duroxide_sim.core.events import (
    ActivityCancelRequested,
    ActivityCompleted,
    ActivityCompletedMsg,
    ActivityFailed,
    ActivityFailedMsg,
    ActivityScheduled,
    ApplicationError,
    CancelInstance,
    ContinueAsNew,
    CustomStatusUpdated,
    ErrorDetails,
    ExternalEvent,
    ExternalRaised,
    ExternalSubscribed,
    ExternalSubscribedCancelled,
    HistoryEvent,
    KeyValueCleared,
    KeyValueSet,
    KeyValuesCleared,
    OrchestrationCancelRequested,
    OrchestrationChained,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
    QueueEventDelivered,
    QueueMessage,
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
    TimerFired,
    TimerFiredMsg,
    WorkItem,
)
from duroxide_sim.core.registry import Registry
from duroxide_sim.core.replay import TurnInput, TurnResult, execute_turn

INSTANCE = "i"
NOW = 1000


def _env(kw: dict[str, Any]) -> dict[str, Any]:
    kw.setdefault("instance_id", INSTANCE)
    kw.setdefault("execution_id", 1)
    return kw


def app_error(message: str, kind: str = "ActivityFailed") -> ApplicationError:
    return ApplicationError(kind=kind, message=message)


# --- events ------------------------------------------------------------------------------------


def started(name: str = "O", input: str = '"x"', version: str = "1.0.0", event_id: int = 1, **kw: Any) -> OrchestrationStarted:
    return OrchestrationStarted(event_id=event_id, name=name, input=input, version=version, **_env(kw))


def activity_scheduled(id: int, name: str, input: str, **kw: Any) -> ActivityScheduled:
    return ActivityScheduled(event_id=id, name=name, input=input, **_env(kw))


def activity_completed(id: int, source: int, result: str, **kw: Any) -> ActivityCompleted:
    return ActivityCompleted(event_id=id, source_event_id=source, result=result, **_env(kw))


def activity_failed(id: int, source: int, message: str | ErrorDetails, **kw: Any) -> ActivityFailed:
    details = app_error(message) if isinstance(message, str) else message
    return ActivityFailed(event_id=id, source_event_id=source, details=details, **_env(kw))


def activity_cancel_requested(id: int, source: int, reason: str = "dropped_future", **kw: Any) -> ActivityCancelRequested:
    return ActivityCancelRequested(event_id=id, source_event_id=source, reason=reason, **_env(kw))


def timer_created(id: int, fire_at: int, **kw: Any) -> TimerCreated:
    return TimerCreated(event_id=id, fire_at_ms=fire_at, **_env(kw))


def timer_fired(id: int, source: int, fire_at: int, **kw: Any) -> TimerFired:
    return TimerFired(event_id=id, source_event_id=source, fire_at_ms=fire_at, **_env(kw))


def external_subscribed(id: int, name: str, **kw: Any) -> ExternalSubscribed:
    return ExternalSubscribed(event_id=id, name=name, **_env(kw))


def external_event(id: int, name: str, data: str, **kw: Any) -> ExternalEvent:
    return ExternalEvent(event_id=id, name=name, data=data, **_env(kw))


def external_cancelled(id: int, source: int, reason: str = "dropped_future", **kw: Any) -> ExternalSubscribedCancelled:
    return ExternalSubscribedCancelled(event_id=id, source_event_id=source, reason=reason, **_env(kw))


def queue_subscribed(id: int, name: str, **kw: Any) -> QueueSubscribed:
    return QueueSubscribed(event_id=id, name=name, **_env(kw))


def queue_delivered(id: int, name: str, data: str, **kw: Any) -> QueueEventDelivered:
    return QueueEventDelivered(event_id=id, name=name, data=data, **_env(kw))


def queue_cancelled(id: int, source: int, reason: str = "dropped_future", **kw: Any) -> QueueSubscriptionCancelled:
    return QueueSubscriptionCancelled(event_id=id, source_event_id=source, reason=reason, **_env(kw))


def sub_scheduled(id: int, name: str, input: str, instance: str | None = None, **kw: Any) -> SubOrchestrationScheduled:
    return SubOrchestrationScheduled(event_id=id, name=name, input=input, instance=instance or f"sub::{id}", **_env(kw))


def sub_completed(id: int, source: int, result: str, **kw: Any) -> SubOrchestrationCompleted:
    return SubOrchestrationCompleted(event_id=id, source_event_id=source, result=result, **_env(kw))


def sub_failed(id: int, source: int, message: str | ErrorDetails, **kw: Any) -> SubOrchestrationFailed:
    details = app_error(message, "OrchestrationFailed") if isinstance(message, str) else message
    return SubOrchestrationFailed(event_id=id, source_event_id=source, details=details, **_env(kw))


def sub_cancel_requested(id: int, source: int, reason: str = "dropped_future", **kw: Any) -> SubOrchestrationCancelRequested:
    return SubOrchestrationCancelRequested(event_id=id, source_event_id=source, reason=reason, **_env(kw))


def chained(id: int, name: str, instance: str, input: str, **kw: Any) -> OrchestrationChained:
    return OrchestrationChained(event_id=id, name=name, instance=instance, input=input, **_env(kw))


def cancel_requested(id: int, reason: str, **kw: Any) -> OrchestrationCancelRequested:
    return OrchestrationCancelRequested(event_id=id, reason=reason, **_env(kw))


def completed(id: int, output: str, **kw: Any) -> OrchestrationCompleted:
    return OrchestrationCompleted(event_id=id, output=output, **_env(kw))


def failed(id: int, details: ErrorDetails, **kw: Any) -> OrchestrationFailed:
    return OrchestrationFailed(event_id=id, details=details, **_env(kw))


def continued_as_new(id: int, input: str, **kw: Any) -> OrchestrationContinuedAsNew:
    return OrchestrationContinuedAsNew(event_id=id, input=input, **_env(kw))


def custom_status(id: int, status: str | None, **kw: Any) -> CustomStatusUpdated:
    return CustomStatusUpdated(event_id=id, status=status, **_env(kw))


def kv_set(id: int, key: str, value: str, ts: int = 0, **kw: Any) -> KeyValueSet:
    return KeyValueSet(event_id=id, key=key, value=value, last_updated_at_ms=ts, **_env(kw))


def kv_cleared(id: int, key: str, **kw: Any) -> KeyValueCleared:
    return KeyValueCleared(event_id=id, key=key, **_env(kw))


def kv_all_cleared(id: int, **kw: Any) -> KeyValuesCleared:
    return KeyValuesCleared(event_id=id, **_env(kw))


def new(*events: HistoryEvent) -> list[HistoryEvent]:
    """Events as the engine writes them this turn: ``timestamp_ms = NOW``."""
    return [attrs.evolve(e, timestamp_ms=NOW) for e in events]


# --- messages ----------------------------------------------------------------------------------


def act_done(id: int, result: str, execution_id: int = 1) -> ActivityCompletedMsg:
    return ActivityCompletedMsg(instance=INSTANCE, execution_id=execution_id, id=id, result=result)


def act_fail(id: int, message: str | ErrorDetails, execution_id: int = 1) -> ActivityFailedMsg:
    details = app_error(message) if isinstance(message, str) else message
    return ActivityFailedMsg(instance=INSTANCE, execution_id=execution_id, id=id, details=details)


def fired(id: int, fire_at: int, execution_id: int = 1) -> TimerFiredMsg:
    return TimerFiredMsg(instance=INSTANCE, execution_id=execution_id, id=id, fire_at_ms=fire_at)


def raised(name: str, data: str) -> ExternalRaised:
    return ExternalRaised(instance=INSTANCE, name=name, data=data)


def enqueued(name: str, data: str) -> QueueMessage:
    return QueueMessage(instance=INSTANCE, name=name, data=data)


def cancel(reason: str) -> CancelInstance:
    return CancelInstance(instance=INSTANCE, reason=reason)


def child_done(parent_id: int, result: str, parent_execution_id: int = 1) -> SubOrchCompletedMsg:
    return SubOrchCompletedMsg(parent_instance=INSTANCE, parent_execution_id=parent_execution_id, parent_id=parent_id, result=result)


def child_fail(parent_id: int, message: str | ErrorDetails, parent_execution_id: int = 1) -> SubOrchFailedMsg:
    details = app_error(message, "OrchestrationFailed") if isinstance(message, str) else message
    return SubOrchFailedMsg(parent_instance=INSTANCE, parent_execution_id=parent_execution_id, parent_id=parent_id, details=details)


def nth(history: Sequence[HistoryEvent], kind: str, n: int) -> Any:
    """The ``n``-th event of type ``kind`` (its class name) in ``history``."""
    return [e for e in history if type(e).__name__ == kind][n]


def batch_messages(history: Sequence[HistoryEvent], batch: Iterable[tuple[str, Any]]) -> list[Any]:
    """Messages for a batch written as the reference's tests write them (``make_messages``):
    ``("timer", i)`` fires the i-th timer of ``history``, ``("activity"/"child", i)`` completes
    the i-th activity / sub-orchestration with ``"ok"``, ``("q"/"q2", v)`` enqueues ``v`` on
    that queue, any other ``(name, v)`` raises event ``name`` with ``v``."""
    out: list[Any] = []
    for what, arg in batch:
        if what == "timer":
            t = nth(history, "TimerCreated", arg)
            out.append(fired(t.event_id, t.fire_at_ms))
        elif what == "activity":
            out.append(act_done(nth(history, "ActivityScheduled", arg).event_id, '"ok"'))
        elif what == "child":
            out.append(child_done(nth(history, "SubOrchestrationScheduled", arg).event_id, '"ok"'))
        elif what in ("q", "q2"):
            out.append(enqueued(what, arg))
        else:
            out.append(raised(what, arg))
    return out


def start_msg(input: str = '"x"', name: str = "O", version: str | None = None, **kw: Any) -> StartOrchestration:
    return StartOrchestration(instance=INSTANCE, orchestration=name, input=input, version=version, **kw)


def can_msg(input: str, carry: Sequence[tuple[str, str]] = (), name: str = "O", execution_id: int = 1, **kw: Any) -> ContinueAsNew:
    return ContinueAsNew(instance=INSTANCE, orchestration=name, input=input, carry_forward_events=tuple(carry), execution_id=execution_id, **kw)


# --- registries and turns ----------------------------------------------------------------------


def registry(orch: Callable[..., Any] | None = None, name: str = "O", **more: Callable[..., Any]) -> Registry:
    """A registry with ``orch`` registered as ``name`` (version 1.0.0) plus ``more`` by name."""
    reg = Registry()
    if orch is not None:
        reg.add_orchestration(name, orch)
    for other, fn in more.items():
        reg.add_orchestration(other, fn)
    return reg


def turn(
    reg: Registry | Callable[..., Any],
    history: Iterable[HistoryEvent] = (),
    messages: Iterable[WorkItem] = (),
    *,
    now_ms: int = NOW,
    execution_id: int = 1,
    kv: dict[str, tuple[str, int]] | None = None,
) -> TurnResult:
    """``execute_turn`` on instance ``"i"``, orchestration ``"O"``; ``reg`` may be a bare function."""
    if not isinstance(reg, Registry):
        reg = registry(reg)
    inp = TurnInput(
        instance=INSTANCE,
        execution_id=execution_id,
        orchestration_name="O",
        version=None,
        history=list(history),
        messages=list(messages),
        now_ms=now_ms,
        kv_snapshot=kv or {},
    )
    return execute_turn(inp, reg)


def line_of(fn: Callable[..., Any], marker: str) -> tuple[str, int]:
    """(file, line) of the source line of ``fn`` that contains ``marker`` (a comment tag)."""
    lines, first = inspect.getsourcelines(fn)
    hits = [first + i for i, text in enumerate(lines) if marker in text]
    assert len(hits) == 1, f"marker {marker!r} found {len(hits)} times in {fn.__name__}"
    return inspect.getsourcefile(fn), hits[0]
