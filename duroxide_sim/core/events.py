"""History events, work items, actions and error details: the engine's data model (SPEC §2).

Everything here is a frozen attrs record with a stable JSON form (``to_dict``/``from_dict``,
``dumps``/``loads``): keys sorted, compact separators, ``None`` fields omitted, a ``kind`` tag
naming the record. The same bytes come out for the same record on every run and machine,
which is what lets histories be diffed, exported, committed and replayed in CI.

This module is pure: stdlib and attrs only. It never assigns ids or reads a clock; the replay
engine stamps ids and ``timestamp_ms`` (which it receives as data).
"""

from __future__ import annotations

import json
import json.scanner
from typing import Any, ClassVar

import attrs

from ..errors import SerializationError

__all__ = [
    "ENGINE_VERSION",
    "ErrorDetails",
    "ApplicationError",
    "ConfigurationErrorDetails",
    "InfrastructureError",
    "PoisonError",
    "HistoryEvent",
    "OrchestrationStarted",
    "OrchestrationCompleted",
    "OrchestrationFailed",
    "OrchestrationContinuedAsNew",
    "OrchestrationCancelRequested",
    "ActivityScheduled",
    "ActivityCompleted",
    "ActivityFailed",
    "ActivityCancelRequested",
    "TimerCreated",
    "TimerFired",
    "ExternalSubscribed",
    "ExternalEvent",
    "ExternalSubscribedCancelled",
    "QueueSubscribed",
    "QueueEventDelivered",
    "QueueSubscriptionCancelled",
    "SubOrchestrationScheduled",
    "SubOrchestrationCompleted",
    "SubOrchestrationFailed",
    "SubOrchestrationCancelRequested",
    "OrchestrationChained",
    "CustomStatusUpdated",
    "KeyValueSet",
    "KeyValueCleared",
    "KeyValuesCleared",
    "WorkItem",
    "StartOrchestration",
    "ContinueAsNew",
    "ActivityExecute",
    "ActivityCompletedMsg",
    "ActivityFailedMsg",
    "TimerFiredMsg",
    "ExternalRaised",
    "QueueMessage",
    "SubOrchCompletedMsg",
    "SubOrchFailedMsg",
    "CancelInstance",
    "Action",
    "CallActivity",
    "CreateTimer",
    "WaitExternal",
    "DequeueEvent",
    "StartSubOrchestration",
    "StartOrchestrationDetached",
    "ContinueAsNewAction",
    "UpdateCustomStatus",
    "SetKeyValue",
    "ClearKeyValue",
    "ClearKeyValues",
    "TERMINAL_EVENTS",
    "SCHEDULE_EVENTS",
    "COMPLETION_EVENTS",
    "to_dict",
    "from_dict",
    "dumps",
    "loads",
]

#: Semver written into every event's ``duroxide_version``; the value on
#: ``OrchestrationStarted`` pins the execution (capability filtering, SPEC §12).
ENGINE_VERSION = "0.1.0"

# kind tag -> class, filled by the @_record decorator. Order of registration is irrelevant:
# lookups are by exact tag only.
# Families keep tags apart: the event ``ActivityCompleted`` and the work item of the same
# name are different records.
_KINDS: dict[tuple[str, str], type] = {}


def _record(tag: str | None = None):
    """Register a record class under its family and serialized tag (default: class name)."""

    def deco(cls: type) -> type:
        cls.KIND = cls.__name__ if tag is None else tag  # type: ignore[attr-defined]
        _KINDS[(cls.FAMILY, cls.KIND)] = cls  # type: ignore[attr-defined]
        return cls

    return deco


# ---------------------------------------------------------------------------------------------
# Error details (SPEC §2.3)
# ---------------------------------------------------------------------------------------------


def _storable(text: Any) -> Any:
    """Error text as every store can hold it: a lone surrogate (undecodable bytes decoded with
    ``surrogateescape``, e.g. a file name in an exception message) becomes its backslash escape.
    Error texts are for people; everything else in them is kept as it is."""
    if type(text) is not str or text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


@attrs.frozen(kw_only=True)
class ErrorDetails:
    """Base of the four error categories. ``display_message()`` is the text users see."""

    KIND: ClassVar[str]
    FAMILY: ClassVar[str] = "error"
    category: ClassVar[str] = ""

    def display_message(self) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def retryable(self) -> bool:
        return False


@_record("Application")
@attrs.frozen(kw_only=True)
class ApplicationError(ErrorDetails):
    """Errors user code sees: ActivityFailed | OrchestrationFailed | Panicked | Cancelled."""

    category: ClassVar[str] = "application"
    kind: str  # "ActivityFailed" | "OrchestrationFailed" | "Panicked" | "Cancelled"
    message: str = attrs.field(default="", converter=_storable)
    reason: str | None = attrs.field(default=None, converter=_storable)  # only for kind == "Cancelled"

    def display_message(self) -> str:
        if self.kind == "Cancelled":
            return f"canceled: {self.reason or ''}"
        if self.kind == "Panicked":
            return f"orchestration panicked: {self.message}"
        return self.message


@_record("Configuration")
@attrs.frozen(kw_only=True)
class ConfigurationErrorDetails(ErrorDetails):
    """Nondeterminism (the only configuration error the engine produces)."""

    category: ClassVar[str] = "configuration"
    kind: str = "Nondeterminism"
    resource: str = ""
    message: str | None = attrs.field(default=None, converter=_storable)

    def display_message(self) -> str:
        return f"nondeterministic: {self.message or ''}"


@_record("Infrastructure")
@attrs.frozen(kw_only=True)
class InfrastructureError(ErrorDetails):
    category: ClassVar[str] = "infrastructure"
    operation: str
    message: str = attrs.field(converter=_storable)
    is_retryable: bool = False

    @property
    def retryable(self) -> bool:
        return self.is_retryable

    def display_message(self) -> str:
        return f"infrastructure:{self.operation}: {self.message}"


@_record("Poison")
@attrs.frozen(kw_only=True)
class PoisonError(ErrorDetails):
    """A message delivered more than ``max_attempts`` times.

    ``message_type`` is one of ``Orchestration`` / ``Activity`` / ``FailedDeserialization``
    with the identifying fields of SPEC §2.3 alongside.
    """

    category: ClassVar[str] = "poison"
    attempt_count: int
    max_attempts: int
    message_type: str
    instance: str
    execution_id: int
    activity_name: str | None = None
    activity_id: int | None = None
    error: str | None = attrs.field(default=None, converter=_storable)
    message: str = attrs.field(default="", converter=_storable)

    def display_message(self) -> str:
        n, m = self.attempt_count, self.max_attempts
        if self.message_type == "Activity":
            return f"poison: activity {self.activity_name}#{self.activity_id} exceeded {n} attempts (max {m})"
        if self.message_type == "FailedDeserialization":
            return (
                f"poison: orchestration {self.instance} history deserialization failed after "
                f"{n} attempts (max {m}): {self.error}"
            )
        return f"poison: orchestration {self.instance} exceeded {n} attempts (max {m})"


# ---------------------------------------------------------------------------------------------
# History events (SPEC §2.1, §2.2)
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class HistoryEvent:
    """Envelope shared by every history event."""

    KIND: ClassVar[str]
    FAMILY: ClassVar[str] = "event"
    event_id: int
    instance_id: str = ""
    execution_id: int = 1
    timestamp_ms: int = 0
    source_event_id: int | None = None
    duroxide_version: str = ENGINE_VERSION


@_record()
@attrs.frozen(kw_only=True)
class OrchestrationStarted(HistoryEvent):
    name: str
    version: str
    input: str
    parent_instance: str | None = None
    parent_id: int | None = None
    carry_forward_events: tuple[tuple[str, str], ...] | None = None
    initial_custom_status: str | None = None
    # Extension: the parent execution that scheduled this child, so the child's result is
    # addressed to it even after the parent's process restarted (fixes SPEC §7's quirk).
    parent_execution_id: int | None = None


@_record()
@attrs.frozen(kw_only=True)
class OrchestrationCompleted(HistoryEvent):
    output: str


@_record()
@attrs.frozen(kw_only=True)
class OrchestrationFailed(HistoryEvent):
    details: ErrorDetails


@_record()
@attrs.frozen(kw_only=True)
class OrchestrationContinuedAsNew(HistoryEvent):
    input: str


@_record()
@attrs.frozen(kw_only=True)
class OrchestrationCancelRequested(HistoryEvent):
    reason: str


@_record()
@attrs.frozen(kw_only=True)
class ActivityScheduled(HistoryEvent):
    name: str
    input: str
    session_id: str | None = None
    tag: str | None = None


@_record()
@attrs.frozen(kw_only=True)
class ActivityCompleted(HistoryEvent):
    result: str


@_record()
@attrs.frozen(kw_only=True)
class ActivityFailed(HistoryEvent):
    details: ErrorDetails


@_record()
@attrs.frozen(kw_only=True)
class ActivityCancelRequested(HistoryEvent):
    reason: str


@_record()
@attrs.frozen(kw_only=True)
class TimerCreated(HistoryEvent):
    fire_at_ms: int


@_record()
@attrs.frozen(kw_only=True)
class TimerFired(HistoryEvent):
    fire_at_ms: int


@_record()
@attrs.frozen(kw_only=True)
class ExternalSubscribed(HistoryEvent):
    name: str


@_record()
@attrs.frozen(kw_only=True)
class ExternalEvent(HistoryEvent):
    name: str
    data: str


@_record()
@attrs.frozen(kw_only=True)
class ExternalSubscribedCancelled(HistoryEvent):
    reason: str


@_record("ExternalSubscribedPersistent")
@attrs.frozen(kw_only=True)
class QueueSubscribed(HistoryEvent):
    name: str


@_record("ExternalEventPersistent")
@attrs.frozen(kw_only=True)
class QueueEventDelivered(HistoryEvent):
    name: str
    data: str


@_record("ExternalSubscribedPersistentCancelled")
@attrs.frozen(kw_only=True)
class QueueSubscriptionCancelled(HistoryEvent):
    reason: str


@_record()
@attrs.frozen(kw_only=True)
class SubOrchestrationScheduled(HistoryEvent):
    name: str
    instance: str
    input: str


@_record()
@attrs.frozen(kw_only=True)
class SubOrchestrationCompleted(HistoryEvent):
    result: str


@_record()
@attrs.frozen(kw_only=True)
class SubOrchestrationFailed(HistoryEvent):
    details: ErrorDetails


@_record()
@attrs.frozen(kw_only=True)
class SubOrchestrationCancelRequested(HistoryEvent):
    reason: str


@_record()
@attrs.frozen(kw_only=True)
class OrchestrationChained(HistoryEvent):
    name: str
    instance: str
    input: str


@_record()
@attrs.frozen(kw_only=True)
class CustomStatusUpdated(HistoryEvent):
    status: str | None = None


@_record()
@attrs.frozen(kw_only=True)
class KeyValueSet(HistoryEvent):
    key: str
    value: str
    last_updated_at_ms: int


@_record()
@attrs.frozen(kw_only=True)
class KeyValueCleared(HistoryEvent):
    key: str


@_record()
@attrs.frozen(kw_only=True)
class KeyValuesCleared(HistoryEvent):
    pass


TERMINAL_EVENTS = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)
#: Events that resolve a schedule (they carry its id as ``source_event_id``).
COMPLETION_EVENTS = (ActivityCompleted, ActivityFailed, TimerFired, SubOrchestrationCompleted, SubOrchestrationFailed)
SCHEDULE_EVENTS = (
    ActivityScheduled,
    TimerCreated,
    ExternalSubscribed,
    QueueSubscribed,
    SubOrchestrationScheduled,
    OrchestrationChained,
)

# ---------------------------------------------------------------------------------------------
# Work items (SPEC §2.4). Class names end in ``Msg`` where they would clash with events; the
# serialized tag is the spec's name.
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class WorkItem:
    KIND: ClassVar[str]
    FAMILY: ClassVar[str] = "work"

    @property
    def target_instance(self) -> str:
        """The instance whose orchestrator queue (or worker row) this item belongs to."""
        return self.instance  # type: ignore[attr-defined]


@_record()
@attrs.frozen(kw_only=True)
class StartOrchestration(WorkItem):
    instance: str
    orchestration: str
    input: str
    version: str | None = None
    parent_instance: str | None = None
    parent_id: int | None = None
    execution_id: int = 1
    parent_execution_id: int | None = None


@_record()
@attrs.frozen(kw_only=True)
class ContinueAsNew(WorkItem):
    instance: str
    orchestration: str
    input: str
    version: str | None = None
    carry_forward_events: tuple[tuple[str, str], ...] = ()
    initial_custom_status: str | None = None
    # Recommend (SPEC §7): carry the parent link through continue-as-new.
    parent_instance: str | None = None
    parent_id: int | None = None
    parent_execution_id: int | None = None
    execution_id: int = 1  # the execution that continued; the new one is execution_id + 1


@_record()
@attrs.frozen(kw_only=True)
class ActivityExecute(WorkItem):
    instance: str
    execution_id: int
    id: int
    name: str
    input: str
    session_id: str | None = None
    tag: str | None = None
    # Not in the reference's item; carried so the worker can fill ActivityContext without
    # another provider read.
    orchestration_name: str = ""
    orchestration_version: str = ""


@_record("ActivityCompleted")
@attrs.frozen(kw_only=True)
class ActivityCompletedMsg(WorkItem):
    instance: str
    execution_id: int
    id: int
    result: str


@_record("ActivityFailed")
@attrs.frozen(kw_only=True)
class ActivityFailedMsg(WorkItem):
    instance: str
    execution_id: int
    id: int
    details: ErrorDetails


@_record("TimerFired")
@attrs.frozen(kw_only=True)
class TimerFiredMsg(WorkItem):
    instance: str
    execution_id: int
    id: int
    fire_at_ms: int


@_record()
@attrs.frozen(kw_only=True)
class ExternalRaised(WorkItem):
    instance: str
    name: str
    data: str


@_record()
@attrs.frozen(kw_only=True)
class QueueMessage(WorkItem):
    instance: str
    name: str
    data: str


@_record("SubOrchCompleted")
@attrs.frozen(kw_only=True)
class SubOrchCompletedMsg(WorkItem):
    parent_instance: str
    parent_execution_id: int
    parent_id: int
    result: str

    @property
    def target_instance(self) -> str:
        return self.parent_instance


@_record("SubOrchFailed")
@attrs.frozen(kw_only=True)
class SubOrchFailedMsg(WorkItem):
    parent_instance: str
    parent_execution_id: int
    parent_id: int
    details: ErrorDetails

    @property
    def target_instance(self) -> str:
        return self.parent_instance


@_record()
@attrs.frozen(kw_only=True)
class CancelInstance(WorkItem):
    instance: str
    reason: str


# ---------------------------------------------------------------------------------------------
# Actions (SPEC §2.5): what orchestration code emits. Matched against history or turned into
# new events + work items by the replay engine.
# ---------------------------------------------------------------------------------------------


@attrs.frozen(kw_only=True)
class Action:
    KIND: ClassVar[str]
    FAMILY: ClassVar[str] = "action"


@_record("CallActivity")
@attrs.frozen(kw_only=True)
class CallActivity(Action):
    name: str
    input: str
    session_id: str | None = None
    tag: str | None = None


@_record("CreateTimer")
@attrs.frozen(kw_only=True)
class CreateTimer(Action):
    fire_at_ms: int


@_record("WaitExternal")
@attrs.frozen(kw_only=True)
class WaitExternal(Action):
    name: str


@_record("DequeueEvent")
@attrs.frozen(kw_only=True)
class DequeueEvent(Action):
    name: str


@_record("StartSubOrchestration")
@attrs.frozen(kw_only=True)
class StartSubOrchestration(Action):
    name: str
    instance: str
    input: str
    version: str | None = None


@_record("StartOrchestrationDetached")
@attrs.frozen(kw_only=True)
class StartOrchestrationDetached(Action):
    name: str
    instance: str
    input: str
    version: str | None = None


@_record("ContinueAsNewAction")
@attrs.frozen(kw_only=True)
class ContinueAsNewAction(Action):
    input: str
    version: str | None = None


@_record("UpdateCustomStatus")
@attrs.frozen(kw_only=True)
class UpdateCustomStatus(Action):
    status: str | None = None


@_record("SetKeyValue")
@attrs.frozen(kw_only=True)
class SetKeyValue(Action):
    key: str
    value: str
    ts: int


@_record("ClearKeyValue")
@attrs.frozen(kw_only=True)
class ClearKeyValue(Action):
    key: str


@_record("ClearKeyValues")
@attrs.frozen(kw_only=True)
class ClearKeyValues(Action):
    pass


# ---------------------------------------------------------------------------------------------
# Stable JSON form
# ---------------------------------------------------------------------------------------------

_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _fields(cls: type) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = tuple(f.name for f in attrs.fields(cls))
        _FIELD_NAMES[cls] = names
    return names


def to_dict(record: Any) -> dict[str, Any]:
    """Record -> plain dict with a ``kind`` tag (``type`` for error details, whose own
    ``kind`` field is data); ``None`` fields are left out; keys in sorted order."""
    return _sorted_dict(record)


def from_dict(data: dict[str, Any], family: str = "event") -> Any:
    """Inverse of :func:`to_dict` for one family (``event``, ``work``, ``action``, ``error``).

    Raises ``SerializationError`` naming what is wrong.
    """
    if not isinstance(data, dict):
        raise SerializationError(f"expected a JSON object for a record, got {type(data).__name__}")
    tag_key = "type" if family == "error" else "kind"
    kwargs: dict[str, Any] = dict(data)
    kind = kwargs.pop(tag_key, None)
    cls = _KINDS.get((family, kind)) if isinstance(kind, str) else None
    if cls is None:
        raise SerializationError(f"unknown {family} kind {kind!r}")
    if "details" in kwargs:
        kwargs["details"] = from_dict(kwargs["details"], "error")
    carry = kwargs.get("carry_forward_events")
    if carry is not None:
        kwargs["carry_forward_events"] = tuple((str(n), str(d)) for n, d in carry)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise SerializationError(f"malformed {kind} record: {exc}") from exc


def _refuse(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: Compact, non-ASCII-escaping JSON encoder built once. Records are flat (or hold one nested
#: error record), so no circular-reference bookkeeping is needed.
_ENCODE_RECORD = (
    json.encoder.c_make_encoder(None, _refuse, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    if json.encoder.c_make_encoder is not None
    else None
)
#: Per record class: (tag key, kind, field names) with the names in sorted key order and the
#: tag key's place among them marked by ``None``.
_SORTED_PLAN: dict[type, tuple[str, str, tuple[str | None, ...]]] = {}


def _sorted_plan(cls: type) -> tuple[str, str, tuple[str | None, ...]]:
    plan = _SORTED_PLAN.get(cls)
    if plan is None:
        tag = "type" if cls.FAMILY == "error" else "kind"  # type: ignore[attr-defined]
        order = sorted([*_fields(cls), tag])
        plan = (tag, cls.KIND, tuple(None if n == tag else n for n in order))  # type: ignore[attr-defined]
        _SORTED_PLAN[cls] = plan
    return plan


def _sorted_dict(record: Any) -> dict[str, Any]:
    """:func:`to_dict` with the keys already in sorted order (what ``sort_keys`` would give)."""
    tag, kind, order = _sorted_plan(type(record))
    out: dict[str, Any] = {}
    for name in order:
        if name is None:
            out[tag] = kind
            continue
        value = getattr(record, name)
        if value is None:
            continue
        if isinstance(value, ErrorDetails):
            value = _sorted_dict(value)
        elif name == "carry_forward_events":
            value = [[n, d] for n, d in value]
        out[name] = value
    return out


def dumps(record: Any) -> str:
    """Canonical JSON text of a record (sorted keys, compact, UTF-8 kept as is)."""
    if _ENCODE_RECORD is not None:
        return "".join(_ENCODE_RECORD(_sorted_dict(record), 0))
    return json.dumps(to_dict(record), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


#: The C scanner behind ``json.loads``, called directly: records are written compact (no
#: surrounding whitespace), so the wrapper's two whitespace regex matches are skipped.
_SCAN_JSON = json.scanner.c_make_scanner(json.JSONDecoder()) if json.scanner.c_make_scanner is not None else None


def loads(text: str, family: str = "event") -> Any:
    try:
        data, end = _SCAN_JSON(text, 0)  # type: ignore[misc]
        if end != len(text):
            raise ValueError("not one compact JSON value")
    except Exception:  # noqa: BLE001 - anything unusual: let json.loads decide (and word the error)
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise SerializationError(f"record is not valid JSON: {exc}") from exc
    return from_dict(data, family)
