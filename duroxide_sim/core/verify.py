"""Replay verification: does the current code reproduce a recorded history? (SPEC §16 J33)

:func:`verify_execution` replays one execution's recorded events from scratch against the
registered code, with no new messages, and compares what the code does with what was recorded:

* the code must match every recorded schedule (else the engine's nondeterminism message);
* a terminal history must end the same way (same output, same error text, same
  continue-as-new input);
* a running history must not make the code emit work that is missing from the history.

Failures not produced by the code (poison, infrastructure) are not re-derivable and are
accepted as recorded. Used by the simulation's determinism checker and the CI replay checker.
Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from .events import (
    SCHEDULE_EVENTS,
    ConfigurationErrorDetails,
    HistoryEvent,
    OrchestrationCompleted,
    OrchestrationContinuedAsNew,
    OrchestrationFailed,
    OrchestrationStarted,
)
from .registry import Registry
from .replay import TurnInput, execute_turn

__all__ = ["verify_execution"]

_TERMINAL = (OrchestrationCompleted, OrchestrationFailed, OrchestrationContinuedAsNew)


def verify_execution(
    instance: str,
    execution_id: int,
    history: Sequence[HistoryEvent],
    registry: Registry,
    kv_snapshot: dict[str, tuple[str, int]] | None = None,
) -> str | None:
    """None when the code replays the history faithfully, else a description of the divergence."""
    if not history:
        return None
    first = history[0]
    if not isinstance(first, OrchestrationStarted):
        return f"instance {instance!r} execution {execution_id}: first event is {type(first).__name__}, not OrchestrationStarted"
    terminal_at = next((i for i, e in enumerate(history) if isinstance(e, _TERMINAL)), None)
    terminal = history[terminal_at] if terminal_at is not None else None
    if isinstance(terminal, OrchestrationFailed) and terminal.details.category in ("poison", "infrastructure"):
        return None
    if isinstance(terminal, OrchestrationFailed) and terminal.event_id == 99999:
        return None
    persisted = list(history[:terminal_at]) if terminal_at is not None else list(history)
    now = history[-1].timestamp_ms
    result = execute_turn(
        TurnInput(
            instance=instance,
            execution_id=execution_id,
            orchestration_name=first.name,
            version=first.version,
            history=persisted,
            messages=(),
            now_ms=now,
            kv_snapshot=kv_snapshot or {},
        ),
        registry,
    )
    where = f"instance {instance!r} execution {execution_id}"
    if result.kind == "unregistered":
        return f"{where}: {result.message}"
    if result.kind == "failed" and isinstance(result.error, ConfigurationErrorDetails):
        recorded = terminal.details.display_message() if isinstance(terminal, OrchestrationFailed) else None
        if recorded != result.error.display_message():
            return result.error.display_message()  # already names instance, execution, event, line
        return None
    if terminal is None:
        new_work = [e for e in result.delta if isinstance(e, SCHEDULE_EVENTS)]
        if result.kind != "continue" or new_work:
            got = ", ".join(type(e).__name__ for e in new_work) or result.kind
            return f"{where}: replay of a running history produced new work ({got}) that the history lacks"
        return None
    if isinstance(terminal, OrchestrationCompleted):
        if result.kind != "completed" or result.output != terminal.output:
            return f"{where}: recorded Completed({terminal.output!r}), replay gave {result.kind}({result.output!r})"
    elif isinstance(terminal, OrchestrationContinuedAsNew):
        if result.kind != "continued_as_new" or result.output != terminal.input:
            return f"{where}: recorded ContinuedAsNew({terminal.input!r}), replay gave {result.kind}({result.output!r})"
    else:
        assert isinstance(terminal, OrchestrationFailed)
        want = terminal.details.display_message()
        got = result.error.display_message() if result.error is not None else None
        if result.kind not in ("failed", "cancelled") or got != want:
            return f"{where}: recorded Failed({want!r}), replay gave {result.kind}({got!r})"
    return None
