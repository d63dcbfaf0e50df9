"""The one nondeterminism message builder, and short descriptions of events and actions.

Every divergence between orchestration code and its history is reported through
:func:`nondeterminism_message`, so all such messages read alike: the problem, the recorded event
(kind, name, input) with its id, what the code did, the source line of its yield/await, and the
instance and execution."""

from __future__ import annotations

from .events import (
    Action,
    HistoryEvent,
)

__all__ = ["nondeterminism_message", "describe_event", "describe_action", "describe_pair"]



class _Divergence(Exception):
    """Internal: the code and the history disagree; carries the finished message."""




def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _window(text: str, other: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` so that its first difference from ``other`` shows: two long
    inputs that differ past the usual cut (a record that gained a field) read the same there."""
    if len(text) <= limit:
        return text
    at = next((k for k, (a, b) in enumerate(zip(text, other, strict=False)) if a != b), min(len(text), len(other)))
    if at < limit - 3:
        return _short(text, limit)
    start = at - 40
    body = text[start:start + limit - 6]
    return "..." + body + ("..." if start + limit - 6 < len(text) else "")


_FIELDS = ("name", "instance", "input", "session_id", "tag", "key", "value", "fire_at_ms")


def _describe(obj: object, label: str, other: object | None = None) -> str:
    parts = []
    for field in _FIELDS:
        value = getattr(obj, field, None)
        if value is None:
            continue
        if field == "fire_at_ms":
            parts.append(f"{field}={value}")
            continue
        text, theirs = str(value), getattr(other, field, None)
        parts.append(f"{field}={(_window(text, str(theirs)) if theirs is not None else _short(text))!r}")
    return f"{label}({', '.join(parts)})"


def describe_event(ev: HistoryEvent) -> str:
    return _describe(ev, type(ev).__name__)


def describe_action(action: Action) -> str:
    return _describe(action, type(action).KIND)


def describe_pair(ev: HistoryEvent, action: Action) -> tuple[str, str]:
    """(event, action) described for a mismatch: long fields that differ are cut around their
    first difference on both sides."""
    return _describe(ev, type(ev).__name__, action), _describe(action, type(action).KIND, ev)


def nondeterminism_message(
    problem: str,
    *,
    instance: str,
    execution_id: int,
    event_id: int | None = None,
    expected: str | None = None,
    actual: str | None = None,
    site: tuple[str, int] | None = None,
) -> str:
    """The single format for every nondeterminism report.

    ``<problem>: history has <expected> at event_id=<n>, code did <actual> at <file:line>
    (instance '<id>', execution <n>)``. Parts that do not apply are left out.
    """
    text = problem
    details = []
    if expected is not None:
        details.append(f"history has {expected}" + (f" at event_id={event_id}" if event_id is not None else ""))
    elif event_id is not None:
        details.append(f"at event_id={event_id}")
    if actual is not None:
        details.append(f"code did {actual}")
    if site is not None:
        details.append(f"at {site[0]}:{site[1]}")
    if details:
        text += ": " + ", ".join(details)
    return f"{text} (instance {instance!r}, execution {execution_id})"


# ---------------------------------------------------------------------------------------------
