"""Result records the client and runtime return: attributes like duroxide-python's objects, and a
read-only mapping view as well.

duroxide-python returns objects (``event.kind``, ``metrics.orch_completions``,
``stats.history_event_count``); earlier versions of this package returned dicts
(``event["kind"]``). These records answer both, so code written either way keeps working, and
they compare equal to a dict with the same items.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from ..core.events import HistoryEvent, TimerCreated, TimerFired
from ..core.events import to_dict

__all__ = ["Event", "MetricsSnapshot", "OrchestrationStats", "event_record"]


class _Record(Mapping[str, Any]):
    """Fields as attributes and as a read-only mapping (``FIELDS`` names them, in order)."""

    FIELDS: tuple[str, ...] = ()
    __slots__ = ("_values",)

    def __init__(self, **values: Any) -> None:
        missing = [f for f in self.FIELDS if f not in values]
        if missing:
            raise TypeError(f"{type(self).__name__} needs {', '.join(missing)}")
        object.__setattr__(self, "_values", values)

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "_values")[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only")

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"{type(self).__name__}({inner})"

    def __reduce__(self) -> Any:
        return (_rebuild, (type(self), dict(self._values)))


def _rebuild(cls: type, values: dict[str, Any]) -> Any:
    return cls(**values)


class Event(_Record):
    """One history event as ``Client.read_execution_history`` returns it (duroxide-python's
    ``Event``): ``event_id``, ``kind`` (the event type's name), ``source_event_id``,
    ``timestamp_ms`` and ``data`` (JSON text, see :func:`event_record`)."""

    FIELDS = ("event_id", "kind", "source_event_id", "timestamp_ms", "data")
    __slots__ = ()


class MetricsSnapshot(_Record):
    """``Runtime.metrics_snapshot()``: the runtime's counters (SPEC §14), as attributes."""

    __slots__ = ()


class OrchestrationStats(_Record):
    """``Client.get_orchestration_stats(id)`` (duroxide-python's ``SystemStats``):
    ``history_event_count`` and ``history_size_bytes`` of the current execution,
    ``kv_user_key_count`` and ``kv_total_value_bytes`` (UTF-8) of its KV store,
    ``queue_pending_count`` (messages queued for it), plus ``instance_id``, ``status``,
    ``executions`` and ``custom_status_version``."""

    FIELDS = ("history_event_count", "history_size_bytes", "kv_user_key_count", "kv_total_value_bytes",
              "queue_pending_count")
    __slots__ = ()


#: Event fields that hold JSON text (a payload): ``data`` embeds them as JSON values.
_PAYLOADS = frozenset(("input", "result", "output", "data"))
_ENVELOPE = frozenset(("kind", "event_id", "source_event_id", "timestamp_ms", "instance_id", "execution_id",
                       "duroxide_version"))


def _embedded(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # (RecursionError: text of many "[")
        return text


_TIMER_EVENTS = (TimerCreated, TimerFired)


def event_record(ev: HistoryEvent) -> Event:
    """The public form of a history event. ``data`` is JSON text, as duroxide-python gives it:
    an event whose only field is a payload (an activity's result, an orchestration's output)
    has that payload as its data; otherwise an object of the event's set fields, with payloads
    (``input``, ``result``, ``output``, ``data``) embedded as JSON values rather than as
    strings holding JSON. None when the event has no fields of its own."""
    fields = {k: v for k, v in to_dict(ev).items() if k not in _ENVELOPE and v is not None}
    if type(ev) in _TIMER_EVENTS:
        # (duroxide-python names the due time fireAtMs - the one camelCase key of its event data)
        fields = {"fireAtMs": fields.pop("fire_at_ms", None), **fields}
    if not fields:
        data = None
    elif len(fields) == 1 and next(iter(fields)) in _PAYLOADS:
        value = next(iter(fields.values()))
        data = value if isinstance(value, str) and _is_json(value) else json.dumps(value)
    else:
        data = json.dumps({k: _embedded(v) if k in _PAYLOADS else v for k, v in fields.items()}, sort_keys=True)
    return Event(event_id=ev.event_id, kind=type(ev).__name__, source_event_id=ev.source_event_id,
                 timestamp_ms=ev.timestamp_ms, data=data)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True
