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

__all__ = ["nondeterminism_message", "describe_event", "describe_action"]



class _Divergence(Exception):
    """Internal: the code and the history disagree; carries the finished message."""




def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_event(ev: HistoryEvent) -> str:
    parts = []
    for field in ("name", "instance", "input", "session_id", "tag", "key", "value", "fire_at_ms"):
        if hasattr(ev, field) and getattr(ev, field) is not None:
            parts.append(f"{field}={_short(str(getattr(ev, field)))!r}" if field != "fire_at_ms" else f"{field}={ev.fire_at_ms}")  # type: ignore[attr-defined]
    return f"{type(ev).__name__}({', '.join(parts)})"


def describe_action(action: Action) -> str:
    parts = []
    for field in ("name", "instance", "input", "session_id", "tag", "key", "value", "fire_at_ms"):
        value = getattr(action, field, None)
        if value is not None:
            parts.append(f"{field}={_short(str(value))!r}" if field != "fire_at_ms" else f"{field}={value}")
    return f"{type(action).KIND}({', '.join(parts)})"


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
